"""The OpenAI-compatible HTTP endpoint (FastAPI).

    POST /v1/chat/completions   chat (the model's template), streamed over SSE or not
    POST /v1/completions        a plain prompt (text or token ids), streamed or not
    GET  /v1/models             the served model
    POST /tokenize              a prompt or chat messages to token ids (as vLLM serves it)
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

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from engine.chat import ChatTemplateError, encode_chat
from engine.router.access_log import RequestLog, current_request, log_throughput
from engine.router.access_log import logger as access_logger
from engine.router.api_errors import ApiError
from engine.router.api_keys import ApiKeys
from engine.router.endpoints import mount
from engine.router.openai_schema import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    Sampling,
    TokenizeRequest,
    Unsupported,
)
from engine.router.responses import Reply, sse
from engine.router.router import BadRequest, Chunk, NoHealthyWorker, Overloaded, WorkerFailed
from engine.router.service import RouterService
from engine.sampling import InvalidSampling, SamplingParams
from engine.workers.requests import InvalidRequest, check_prompt


def create_app(
    open_service: Callable[[], Awaitable[RouterService]],
    *,
    api_keys: Sequence[str] = (),
    salt_by_api_key: bool = False,
    max_concurrency: int = 256,
    access_log: bool = True,
    log_interval_s: float = 10.0,
) -> FastAPI:
    """The app; ``open_service`` builds the router on the server's own event loop.
    ``api_keys``: any of them admits a client (none: the API is open);
    ``salt_by_api_key``: requests reuse KV only from requests with the same key. With
    ``access_log``, an INFO line per request and a throughput line every
    ``log_interval_s`` (see ``access_log``)."""
    api = _Api(open_service, api_keys, max_concurrency, salt_by_api_key, access_log)
    if access_log:
        access_logger.setLevel(logging.INFO)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        api.service = await open_service()
        throughput = (
            asyncio.create_task(log_throughput(api.service.router.metrics, log_interval_s))
            if access_log
            else None
        )
        try:
            yield
        finally:
            if throughput is not None:
                throughput.cancel()
            await api.service.close()

    return mount(FastAPI(title="Strata", lifespan=lifespan), api)


class _Api:
    def __init__(
        self,
        open_service: Callable[[], Awaitable[RouterService]],
        api_keys: Sequence[str],
        max_concurrency: int,
        salt_by_api_key: bool,
        access_log: bool,
    ) -> None:
        self.access_log = access_log
        self.open_service = open_service
        self.keys = ApiKeys(api_keys, salt_by_key=salt_by_api_key)
        self.max_concurrency = max_concurrency
        self.in_flight = 0
        self.service: RouterService | None = None

    def svc(self) -> RouterService:
        if self.service is None:
            raise ApiError(503, "starting up", kind="server_error")
        return self.service

    async def authenticate(self, request: Request, call_next: Any) -> Response:
        """Check the API key (``ApiKeys``); count the outcome of each ``/v1/*`` request."""
        api = request.url.path.startswith("/v1/")
        refused = self.keys.check(request)
        response: Response
        if refused is not None:
            response = refused.response()
        else:
            log = RequestLog(request.method, request.url.path) if api else None
            token = current_request.set(log)
            try:
                response = await call_next(request)
            finally:
                current_request.reset(token)
            if log is not None and self.access_log and not log.deferred:
                log.write(response.status_code)  # a stream is logged when it ends
        if api and self.service is not None:
            self.service.router.metrics.count_response(response.status_code)
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

    async def chat(self, body: ChatRequest, request: Request) -> Response:
        svc = self._check(body)
        tokens = _chat_tokens(svc, body.messages)
        return await self._generate(svc, body, tokens, request, chat=True)

    async def tokenize(self, body: TokenizeRequest) -> dict[str, Any]:
        """Token ids exactly as a chat or completion request would be tokenized, the
        store's model id and block size (what ``kvstore admin lookup/pin`` need)."""
        svc = self.svc()
        if body.model is not None and body.model not in (svc.model_name, svc.model.config.model_id):
            raise ApiError(404, f"model {body.model!r} does not exist", param="model")
        try:
            body.check_supported()
        except Unsupported as exc:
            raise ApiError(400, str(exc), param=exc.param) from None
        if body.messages is not None:
            tokens = _chat_tokens(svc, body.messages)
        else:
            tokens = list(svc.model.tokenizer.encode(body.prompt or ""))
        return {
            "tokens": tokens,
            "count": len(tokens),
            "max_model_len": svc.model.config.max_position_embeddings,
            "model_id": svc.model.config.model_id,
            "block_tokens": svc.router.block_tokens,
        }

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        svc = self._check(body)
        prompt = body.single_prompt()
        tokens = svc.model.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
        return await self._generate(svc, body, list(tokens), request, chat=False)

    def _check(self, body: Sampling) -> RouterService:
        svc = self.svc()
        if body.model not in (svc.model_name, svc.model.config.model_id):
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
        request: Request,
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
        salt = self.keys.cache_salt(body.cache_salt or "", request)
        try:
            placement = await svc.router.place(tokens, params.max_tokens, cache_salt=salt)
        except Overloaded as exc:
            raise _overloaded(str(exc), exc.retry_after_s) from None
        except WorkerFailed as exc:
            raise _unavailable(exc) from None
        reply = Reply(svc.model_name, chat, len(tokens))
        log = current_request.get() or RequestLog("-", "-")
        chunks = _observed(svc.router.stream(tokens, params, reply.id, placement=placement), log)
        self.in_flight += 1
        where = {"X-Strata-Prefill": placement.prefill.id, "X-Strata-Decode": placement.decode.id}
        if body.stream:
            log.deferred = True

            def finished() -> None:
                self._finished()
                if self.access_log:
                    log.add(reply.prompt_tokens, reply.cached_tokens, reply.completion_tokens)
                    log.write(200)

            return StreamingResponse(
                sse(reply, chunks, finished, body.wants_usage_chunk()),
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
            log.add(reply.prompt_tokens, reply.cached_tokens, reply.completion_tokens)
        return JSONResponse(reply.whole(), headers=where)

    def _finished(self) -> None:
        self.in_flight -= 1


async def _observed(chunks: AsyncIterator[Chunk], log: RequestLog) -> AsyncIterator[Chunk]:
    """The chunks, noting when the first arrives (the request's time to first token)."""
    try:
        async for chunk in chunks:
            log.first_token()
            yield chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


def _chat_tokens(svc: RouterService, messages: list[ChatMessage]) -> list[int]:
    """The conversation rendered with the model's chat template, as token ids."""
    try:
        rendered = [{"role": m.role, "content": m.text()} for m in messages]
        return encode_chat(
            svc.model.tokenizer,
            svc.model.chat_template,
            rendered,
            special_tokens=svc.model.special_tokens,
        )
    except Unsupported as exc:
        raise ApiError(400, str(exc), param=exc.param) from None
    except ChatTemplateError as exc:
        raise ApiError(400, str(exc), param="messages") from None


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
