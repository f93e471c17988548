"""Exceptions out of a gRPC servicer method become statuses: the decorator both the
store's and the engine's servicers use, each with its own ``abort`` (which maps an
exception to a status and aborts the call)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

F = TypeVar("F", bound=Callable[..., Any])
Abort = Callable[[grpc.aio.ServicerContext, Exception], Awaitable[None]]


def aborting_on_errors(abort: Abort) -> Callable[[F], F]:
    """Decorate a servicer method (unary or streaming) so that an exception it raises
    is handed to ``abort`` (aborts raised by the method itself pass through)."""

    def decorate(handler: F) -> F:
        if inspect.isasyncgenfunction(handler):

            @functools.wraps(handler)
            async def stream(
                self: object, request: object, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[object]:
                try:
                    async for item in handler(self, request, context):
                        yield item
                except (grpc.aio.AbortError, GeneratorExit):
                    raise
                except Exception as exc:
                    await abort(context, exc)

            return stream  # type: ignore[return-value]

        @functools.wraps(handler)
        async def unary(self: object, request: object, context: grpc.aio.ServicerContext) -> object:
            call: Awaitable[object] = handler(self, request, context)
            try:
                return await call
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await abort(context, exc)
                raise  # unreachable: abort raises

        return unary  # type: ignore[return-value]

    return decorate
