"""The OpenAI-compatible HTTP endpoint (FastAPI).

    POST /v1/chat/completions   chat (the model's template), streamed over SSE or not
    POST /v1/completions        a plain prompt (text or token ids), streamed or not
    GET  /v1/models             the served model
    GET  /health                200 when a prefill and a decode worker are up, else 503
    GET  /metrics               Prometheus: TTFT, ITL, queue, hit tokens, rejections
    GET  /stats                 the router's counters and its workers' load, as JSON

Responses name the workers chosen for them (``X-Strata-Prefill``, ``X-Strata-Decode``; a
streamed request retried elsewhere may have moved since). Errors use OpenAI's body,
``{"error": {"message", "type", "param", "code"}}``: a malformed body or field 400
(naming the field), a wrong API key 401, an unknown model 404, overload 429 with
``Retry-After``, failing workers 503. A client that disconnects mid-stream cancels its
request; the decode worker frees its pages at its next step.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from engine.chat import ChatTemplateError, encode_chat
from engine.router.openai_schema import ChatRequest, CompletionRequest, Sampling, Unsupported
from engine.router.responses import Reply, sse
from engine.router.router import BadRequest, NoHealthyWorker, Overloaded, WorkerFailed
from engine.router.service import RouterService
from engine.sampling import InvalidSampling, SamplingParams
from engine.workers.requests import InvalidRequest, check_prompt


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status, headers=self.headers)


def create_app(
    open_service: Callable[[], Awaitable[RouterService]],
    *,
    api_key: str = "",
    max_concurrency: int = 256,
) -> FastAPI:
    """The app; ``open_service`` builds the router on the server's own event loop."""
    api = _Api(open_service, api_key, max_concurrency)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        api.service = await open_service()
        try:
            yield
        finally:
            await api.service.close()

    app = FastAPI(title="Strata", lifespan=lifespan)
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.middleware("http")(api.authenticate)
    app.add_api_route("/health", api.health, methods=["GET"])
    app.add_api_route("/metrics", api.metrics, methods=["GET"])
    app.add_api_route("/stats", api.stats, methods=["GET"])
    app.add_api_route("/v1/models", api.models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", api.chat, methods=["POST"], response_model=None)
    app.add_api_route("/v1/completions", api.completions, methods=["POST"], response_model=None)
    return app


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Errors raised by the framework itself (a body that is not UTF-8, an unknown path,
    a wrong method) in OpenAI's error shape too."""
    kind = "server_error" if exc.status_code >= 500 else "invalid_request_error"
    return ApiError(
        exc.status_code, str(exc.detail), kind=kind, headers=dict(exc.headers or {})
    ).response()


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid body"}
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {first.get('msg')}").response()
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    return ApiError(400, message, param=param).response()


class _Api:
    def __init__(
        self,
        open_service: Callable[[], Awaitable[RouterService]],
        api_key: str,
        max_concurrency: int,
    ) -> None:
        self.open_service = open_service
        self.api_key = api_key
        self.max_concurrency = max_concurrency
        self.in_flight = 0
        self.service: RouterService | None = None

    def svc(self) -> RouterService:
        if self.service is None:
            raise ApiError(503, "starting up", kind="server_error")
        return self.service

    async def authenticate(self, request: Request, call_next: Any) -> Response:
        guarded = self.api_key and request.url.path.startswith("/v1/")
        if guarded and request.headers.get("authorization", "") != f"Bearer {self.api_key}":
            return ApiError(
                401,
                "a valid API key is required (Authorization: Bearer KEY)",
                kind="authentication_error",
                code="invalid_api_key",
            ).response()
        response: Response = await call_next(request)
        return response

    async def health(self) -> JSONResponse:
        pool = self.svc().router.pool
        up = {
            "prefill": sum(w.healthy for w in pool.prefill.values()),
            "decode": sum(w.healthy for w in pool.decode.values()),
        }
        ok = up["prefill"] > 0 and up["decode"] > 0
        body = {"status": "ok" if ok else "unavailable", "workers": up}
        return JSONResponse(body, 200 if ok else 503)

    async def metrics(self) -> Response:
        body = self.svc().router.metrics.render()
        return Response(body, media_type="text/plain; version=0.0.4")

    async def stats(self) -> dict[str, Any]:
        """The router's counters and what each worker last reported."""
        router = self.svc().router
        workers = {
            w.id: {
                "role": w.role,
                "healthy": w.healthy,
                "queued": w.info.queued,
                "running": w.info.running,
                "kv_pages_free": w.info.kv_pages_free,
                "kv_pages_total": w.info.kv_pages_total,
            }
            for w in router.pool.workers
        }
        return {**router.stats(), "in_flight": self.in_flight, "reported": workers}

    async def models(self) -> dict[str, Any]:
        svc = self.svc()
        entry = {
            "id": svc.model_name,
            "object": "model",
            "created": svc.created,
            "owned_by": "strata",
        }
        return {"object": "list", "data": [entry]}

    async def chat(self, body: ChatRequest) -> Response:
        svc = self._check(body)
        try:
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            tokens = encode_chat(
                svc.model.tokenizer,
                svc.model.chat_template,
                messages,
                special_tokens=svc.model.special_tokens,
            )
        except Unsupported as exc:
            raise ApiError(400, str(exc), param=exc.param) from None
        except ChatTemplateError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        return await self._generate(svc, body, tokens, chat=True)

    async def completions(self, body: CompletionRequest) -> Response:
        svc = self._check(body)
        prompt = body.single_prompt()
        tokens = svc.model.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
        return await self._generate(svc, body, list(tokens), chat=False)

    def _check(self, body: Sampling) -> RouterService:
        svc = self.svc()
        if body.model != svc.model_name:
            raise ApiError(
                404,
                f"model {body.model!r} does not exist; this server serves {svc.model_name!r}",
                param="model",
                code="model_not_found",
            )
        try:
            body.check_supported()
        except Unsupported as exc:
            raise ApiError(400, str(exc), param=exc.param) from None
        return svc

    async def _generate(
        self,
        svc: RouterService,
        body: ChatRequest | CompletionRequest,
        tokens: list[int],
        *,
        chat: bool,
    ) -> Response:
        config = svc.model.config
        try:
            check_prompt(
                tokens, vocab_size=config.vocab_size, max_context=config.max_position_embeddings
            )
            params = _params(body, len(tokens), config.max_position_embeddings)
        except InvalidRequest as exc:
            raise ApiError(400, str(exc), param="messages" if chat else "prompt") from None
        except InvalidSampling as exc:
            raise ApiError(400, str(exc), param=str(exc).split(":")[0]) from None
        if self.in_flight >= self.max_concurrency:
            raise _overloaded(f"{self.max_concurrency} requests in flight", 1.0)
        try:
            placement = await svc.router.place(tokens, params.max_tokens)
        except Overloaded as exc:
            raise _overloaded(str(exc), exc.retry_after_s) from None
        except WorkerFailed as exc:
            raise _unavailable(exc) from None
        reply = Reply(svc.model_name, chat, len(tokens))
        chunks = svc.router.stream(tokens, params, reply.id, placement=placement)
        self.in_flight += 1
        where = {"X-Strata-Prefill": placement.prefill.id, "X-Strata-Decode": placement.decode.id}
        if body.stream:
            return StreamingResponse(
                sse(reply, chunks, self._finished, body.wants_usage_chunk()),
                media_type="text/event-stream",
                headers=where,
            )
        try:
            async for chunk in chunks:
                reply.add(chunk)
                where["X-Strata-Prefill"] = chunk.prefill  # where it ran, after any retry
        except BadRequest as exc:
            raise ApiError(400, str(exc)) from None
        except Overloaded as exc:  # a decode worker had no room after all
            raise _overloaded(str(exc), exc.retry_after_s) from None
        except WorkerFailed as exc:
            raise _unavailable(exc) from None
        finally:
            self._finished()
        return JSONResponse(reply.whole(), headers=where)

    def _finished(self) -> None:
        self.in_flight -= 1


def _params(
    body: ChatRequest | CompletionRequest, prompt_tokens: int, context: int
) -> SamplingParams:
    limit = min(body.limit(), max(1, context - prompt_tokens))
    return SamplingParams(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        max_tokens=limit,
        seed=body.seed,
        stop=body.stops(),
        stop_token_ids=tuple(body.stop_token_ids),
        ignore_eos=body.ignore_eos,
    )


def _unavailable(exc: WorkerFailed) -> ApiError:
    """503 in the OpenAI error shape; ``Retry-After`` while no worker of a role is up."""
    if isinstance(exc, NoHealthyWorker):
        return ApiError(
            503,
            str(exc),
            kind="server_error",
            code="no_healthy_worker",
            headers={"Retry-After": "1"},
        )
    return ApiError(503, str(exc), kind="server_error")


def _overloaded(reason: str, retry_after_s: float) -> ApiError:
    seconds = max(1, math.ceil(retry_after_s))
    return ApiError(
        429,
        f"overloaded: {reason}; retry after {seconds} s",
        kind="rate_limit_error",
        code="overloaded",
        headers={"Retry-After": str(seconds)},
    )
