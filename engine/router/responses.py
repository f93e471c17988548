"""OpenAI response bodies, whole or as server-sent events, assembled from chunks."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from engine.router.router import BadRequest, Chunk, Overloaded, WorkerFailed


class Reply:
    """An OpenAI response being assembled from chunks."""

    def __init__(self, model: str, chat: bool, prompt_tokens: int) -> None:
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.model, self.chat, self.prompt_tokens = model, chat, prompt_tokens
        self.created = int(time.time())
        self.completion_tokens, self.cached_tokens = 0, 0
        self.text: list[str] = []
        self.finish_reason: str | None = None

    def add(self, chunk: Chunk) -> None:
        if not self.completion_tokens and not self.text:
            self.cached_tokens = chunk.cached_tokens
        self.completion_tokens += len(chunk.token_ids)
        self.text.append(chunk.text)
        self.finish_reason = chunk.finish_reason or self.finish_reason

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }

    def whole(self) -> dict[str, Any]:
        text = "".join(self.text)
        choice: dict[str, Any] = {"index": 0, "finish_reason": self.finish_reason}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
            choice["logprobs"] = None
        else:
            choice["text"] = text
            choice["logprobs"] = None
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(),
        }

    def piece(self, text: str, finish_reason: str | None, first: bool) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
        if self.chat:
            delta: dict[str, Any] = {"content": text}
            if first:
                delta["role"] = "assistant"
            choice["delta"] = delta
        else:
            choice["text"] = text
        return {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }


async def sse(
    reply: Reply, chunks: AsyncIterator[Chunk], done: Callable[[], None], usage: bool
) -> AsyncIterator[str]:
    """The stream as server-sent events; ``done`` is called once when it ends, however.

    ``done`` runs as soon as the last chunk is in, before the trailing events: a client
    that hangs up after reading ``[DONE]`` may get the response cancelled while this
    generator waits at its last ``yield``, and then only garbage collection would close
    it (and call ``done``) — late, or for a generator caught in a cycle, much later."""
    ended = False

    def end() -> None:
        nonlocal ended
        if not ended:
            ended = True
            done()

    first = True
    try:
        try:
            async for chunk in chunks:
                reply.add(chunk)
                yield _event(reply.piece(chunk.text, chunk.finish_reason or None, first))
                first = False
        except (BadRequest, WorkerFailed, Overloaded) as exc:
            end()
            kind = "invalid_request_error" if isinstance(exc, BadRequest) else "server_error"
            yield _event(
                {"error": {"message": str(exc), "type": kind, "param": None, "code": None}}
            )
            return
        end()
        if usage:
            yield _event({**reply.piece("", None, False), "choices": [], "usage": reply.usage()})
        yield "data: [DONE]\n\n"
    finally:
        end()
        await chunks.aclose()  # type: ignore[attr-defined]


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
