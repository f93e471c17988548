"""The router's endpoint in front of vLLM answers its own refusals in OpenAI's error body,
before any server is reached (the app without its lifespan: no vLLM here)."""

from fastapi.testclient import TestClient

from engine.config import load_engine_config
from engine.router.vllm_api import create_vllm_app


def client(**overrides: str) -> TestClient:
    config = load_engine_config(
        env={}, overrides={"router.vllm": "127.0.0.1:9=127.0.0.1:7600", **overrides}
    )
    return TestClient(create_vllm_app(config))


def test_refusals_come_in_openai_error_bodies() -> None:
    with_key = client(**{"router.api_key": "s3cret"})
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    refused = with_key.post("/v1/chat/completions", json=body)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    missing = with_key.get("/v2/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "no such endpoint: /v2/nothing"
    wrong = client().get("/v1/chat/completions")
    assert wrong.status_code == 405 and "GET is not allowed" in wrong.json()["error"]["message"]
    starting = client().post("/v1/chat/completions", json=body)
    assert starting.status_code == 503 and starting.json()["error"]["type"] == "server_error"
