"""The router's HTTP surface, the same whichever backends serve it (the bundled
workers, ``api.py``; vLLM servers, ``vllm_api.py``): its paths and methods, the API-key
middleware and OpenAI error bodies for every refusal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fastapi import FastAPI

from engine.router.api_errors import install_error_handlers


class Endpoints(Protocol):
    """What serves each path (``authenticate``: the HTTP middleware)."""

    @property
    def authenticate(self) -> Callable[..., Any]: ...

    @property
    def health(self) -> Callable[..., Any]: ...

    @property
    def metrics(self) -> Callable[..., Any]: ...

    @property
    def stats(self) -> Callable[..., Any]: ...

    @property
    def models(self) -> Callable[..., Any]: ...

    @property
    def tokenize(self) -> Callable[..., Any]: ...

    @property
    def chat(self) -> Callable[..., Any]: ...

    @property
    def completions(self) -> Callable[..., Any]: ...


def mount(app: FastAPI, api: Endpoints) -> FastAPI:
    install_error_handlers(app)
    app.middleware("http")(api.authenticate)
    app.add_api_route("/health", api.health, methods=["GET"])
    app.add_api_route("/metrics", api.metrics, methods=["GET"])
    app.add_api_route("/stats", api.stats, methods=["GET"])
    app.add_api_route("/v1/models", api.models, methods=["GET"])
    app.add_api_route("/tokenize", api.tokenize, methods=["POST"])
    app.add_api_route("/v1/chat/completions", api.chat, methods=["POST"], response_model=None)
    app.add_api_route("/v1/completions", api.completions, methods=["POST"], response_model=None)
    return app
