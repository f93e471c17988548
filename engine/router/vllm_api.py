"""The router's HTTP endpoint in front of vLLM OpenAI servers (``router.vllm`` set).

    POST /v1/chat/completions   placed by the policy, forwarded, streamed back as it comes
    POST /v1/completions        the same (a batch of prompts is placed by its first)
    GET  /v1/models             a healthy server's answer
    POST /tokenize              a healthy server's answer
    GET  /health                200 while a server is up, else 503
    GET  /metrics               Prometheus: TTFT, queue, decision time, prompt/cached tokens
    GET  /stats                 the router's counters and each server's accounts, as JSON

The body goes to the server unchanged (vLLM validates it and answers its own errors,
passed back as they are), except ``cache_salt`` under ``router.salt_by_api_key``: it is
replaced by the key's salt, so the connector's keys and the router's agree. Responses
name the server chosen (``X-Strata-Prefill``: it prefills and decodes). The router's own
refusals use OpenAI's error body: 401 a wrong API key, 400 a body that is not a JSON
object or a field of the wrong kind, 429 overload (``Retry-After``), 503 no server.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from engine.config import EngineConfig
from engine.router.access_log import RequestLog, log_throughput
from engine.router.access_log import logger as access_logger
from engine.router.api_errors import ApiError
from engine.router.api_keys import ApiKeys
from engine.router.costs import CostModel
from engine.router.endpoints import mount
from engine.router.router import NoHealthyWorker, Overloaded, WorkerFailed
from engine.router.service import configured_policy
from engine.router.vllm_backends import VllmPool, find_namespace
from engine.router.vllm_router import Forwarded, VllmError, VllmRouter

logger = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 600.0  # between two reads of an answer (a whole one, when not streamed)


async def open_vllm_router(config: EngineConfig, *, wait_s: float = 120.0) -> VllmRouter:
    """Reach the servers (waiting up to ``wait_s``), find their store namespace, load the
    cost model (``router.cost_model``, else ``CostModel.default()``) and build the router."""
    section = config.router
    # a server silent for READ_TIMEOUT_S mid-answer is taken as hung; the connections
    # are bounded by router.max_concurrency, not by the client
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    http = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=None))
    pool = VllmPool(section.vllm_servers, http, health_interval_s=section.health_interval_s)
    try:
        await pool.start(wait_s)
        model_id = section.vllm_model_id or pool.any().model_path
        namespace = await find_namespace(pool, model_id, token=config.engine.token)
    except BaseException:
        await pool.close()
        await http.aclose()
        raise
    if section.cost_model:
        costs = CostModel.load(Path(section.cost_model))
    else:
        costs = CostModel.default()
        logger.warning(
            "no router.cost_model: using the built-in estimates (the policy's ranking holds,"
            " its predicted seconds do not)"
        )
    policy = configured_policy(config, costs)
    logger.info(
        "routing to %d vLLM servers of %s (blocks of %d tokens), policy %s",
        len(pool.servers),
        namespace.model_id,
        namespace.block_tokens,
        policy.name,
    )
    return VllmRouter(
        pool,
        policy,
        costs,
        namespace,
        lookup_timeout_s=section.lookup_timeout_s,
        token=config.engine.token,
    )


def create_vllm_app(config: EngineConfig) -> FastAPI:
    api = _VllmApi(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        api.router = await open_vllm_router(config)
        throughput = None
        if config.router.access_log:
            access_logger.setLevel(logging.INFO)
            metrics, interval_s = api.router.metrics, config.router.log_interval_s
            throughput = asyncio.create_task(log_throughput(metrics, interval_s))
        try:
            yield
        finally:
            if throughput is not None:
                throughput.cancel()
            http = api.router.pool.http
            await api.router.close()
            await http.aclose()

    return mount(FastAPI(title="Strata router (vLLM)", lifespan=lifespan), api)


class _VllmApi:
    def __init__(self, config: EngineConfig) -> None:
        self.keys = ApiKeys(config.router.api_keys, salt_by_key=config.router.salt_by_api_key)
        self.max_concurrency = config.router.max_concurrency
        self.access_log = config.router.access_log
        self.in_flight = 0
        self.router: VllmRouter | None = None

    def svc(self) -> VllmRouter:
        if self.router is None:
            raise ApiError(503, "starting up", kind="server_error")
        return self.router

    async def authenticate(self, request: Request, call_next: Any) -> Response:
        """Check the API key (``ApiKeys``); count each ``/v1/*`` response by outcome."""
        api = request.url.path.startswith("/v1/")
        refused = self.keys.check(request)
        response = refused.response() if refused is not None else await call_next(request)
        if api and self.router is not None:
            self.router.metrics.count_response(response.status_code)
        return response

    async def health(self) -> JSONResponse:
        router = self.svc()
        up = len(router.pool.healthy())
        body = {"status": "ok" if up else "unavailable", "servers": up}
        return JSONResponse(body, 200 if up else 503)

    async def metrics(self) -> Response:
        body = self.svc().metrics.render()
        return Response(body, media_type="text/plain; version=0.0.4")

    async def stats(self) -> dict[str, Any]:
        return {**self.svc().stats(), "in_flight": self.in_flight}

    async def models(self) -> Response:
        return await self._ask_any("GET", "/v1/models", None)

    async def tokenize(self, request: Request) -> Response:
        return await self._ask_any("POST", "/tokenize", await _json_object(request))

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, "/v1/chat/completions", chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "/v1/completions", chat=False)

    async def _generate(self, request: Request, path: str, *, chat: bool) -> Response:
        router = self.svc()
        log = RequestLog(request.method, path)
        body = await _json_object(request)
        salt = self._cache_salt(body, request)
        if salt:
            body["cache_salt"] = salt
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        if not isinstance(max_tokens, int):
            raise ApiError(400, "max_tokens: an integer expected", param="max_tokens")
        if self.in_flight >= self.max_concurrency:
            raise _overloaded(f"{self.max_concurrency} requests in flight", 1.0)
        self.in_flight += 1
        try:
            tokens = await router.tokens(chat, body)
            placement = await router.place(tokens, max_tokens, salt)
            forwarded = await router.forward(path, body, placement)
        except VllmError as exc:  # the server refused the prompt: its own answer
            self.in_flight -= 1
            return Response(exc.body, exc.status, media_type="application/json")
        except BaseException as exc:
            self.in_flight -= 1
            raise _error(exc) from None
        headers = {"X-Strata-Prefill": forwarded.server.id}
        if forwarded.status == 200 and body.get("stream"):
            chunks = self._streamed(forwarded, log)
            return StreamingResponse(
                chunks, forwarded.status, headers, media_type=forwarded.media_type
            )
        content = b"".join([data async for data in self._streamed(forwarded, log)])
        return Response(content, forwarded.status, headers, media_type=forwarded.media_type)

    async def _streamed(self, forwarded: Forwarded, log: RequestLog) -> AsyncIterator[bytes]:
        """The body as it comes; the access line and the in-flight count when it ends."""
        try:
            async for data in forwarded.body:
                log.first_token()
                yield data
        finally:
            await forwarded.body.aclose()  # type: ignore[attr-defined]
            self.in_flight -= 1
            if self.access_log:
                usage = forwarded.usage
                log.add(usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens)
                log.write(forwarded.status)

    async def _ask_any(self, method: str, path: str, body: dict[str, Any] | None) -> Response:
        """A healthy server's answer to ``method path`` (one that cannot be reached is
        marked down and the next asked)."""
        router = self.svc()
        for server in router.pool.healthy():
            try:
                response = await router.pool.http.request(
                    method, f"{server.url}{path}", json=body, timeout=30.0
                )
            except httpx.TransportError as exc:
                router.pool.mark_down(server, str(exc) or type(exc).__name__)
                continue
            media_type = response.headers.get("content-type", "application/json")
            return Response(response.content, response.status_code, media_type=media_type)
        raise _error(NoHealthyWorker("no healthy vLLM server; retry shortly"))

    def _cache_salt(self, body: dict[str, Any], request: Request) -> str:
        """The request's ``cache_salt``, under its API key's digest when salting by key."""
        salt = body.get("cache_salt") or ""
        if not isinstance(salt, str):
            raise ApiError(400, "cache_salt: a string expected", param="cache_salt")
        return self.keys.cache_salt(salt, request)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def _error(exc: BaseException) -> BaseException:
    """The HTTP error of a routing failure (others unchanged)."""
    if isinstance(exc, Overloaded):
        return _overloaded(str(exc), exc.retry_after_s)
    if isinstance(exc, NoHealthyWorker):
        return ApiError(
            503,
            str(exc),
            kind="server_error",
            code="no_healthy_worker",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, WorkerFailed):
        return ApiError(503, str(exc), kind="server_error")
    return exc


def _overloaded(reason: str, retry_after_s: float) -> ApiError:
    seconds = max(1, math.ceil(retry_after_s))
    return ApiError(
        429,
        f"overloaded: {reason}; retry after {seconds} s",
        kind="rate_limit_error",
        code="overloaded",
        headers={"Retry-After": str(seconds)},
    )
