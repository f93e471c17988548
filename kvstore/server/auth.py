"""Bearer-token authentication, as a server interceptor.

Clients send ``authorization: Bearer <token>`` metadata. With ``auth.token`` set, store
calls need it (or the admin token); with ``auth.admin_token`` set, admin calls need
exactly that. No token -> UNAUTHENTICATED; a valid store token on an admin call ->
PERMISSION_DENIED. Health checks and reflection stay open, for orchestrators and tools.
Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

ADMIN_PREFIX = "/strata.v1.AdminService/"
STORE_PREFIX = "/strata.v1.StoreService/"


if TYPE_CHECKING:  # the stubs make these generic; the runtime classes are not
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self, token: str, admin_token: str, *, guarded: tuple[str, ...] = (STORE_PREFIX,)
    ) -> None:
        """``guarded``: method prefixes that need ``token`` (besides admin calls)."""
        self._token = token.encode()
        self._admin = admin_token.encode()
        self._guarded = guarded

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method or ""
        presented = _bearer(handler_call_details.invocation_metadata or ())
        if method.startswith(ADMIN_PREFIX):
            needed = [self._admin] if self._admin else [self._token] if self._token else []
        elif method.startswith(self._guarded):
            needed = [t for t in (self._token, self._admin) if t] if self._token else []
        else:
            needed = []
        if not needed or any(
            presented is not None and hmac.compare_digest(presented, t) for t in needed
        ):
            return handler
        if presented is None:
            return _deny(handler, grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
        if method.startswith(ADMIN_PREFIX) and hmac.compare_digest(presented, self._token or b"\0"):
            return _deny(
                handler, grpc.StatusCode.PERMISSION_DENIED, "admin calls need the admin token"
            )
        return _deny(handler, grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")


def _bearer(metadata: Any) -> bytes | None:
    for key, value in metadata:
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token.encode() if scheme.lower() == "bearer" and token else b""
    return None


def _deny(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    async def abort(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    make: Any = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[handler.request_streaming, handler.response_streaming]
    denied: Handler = make(abort)  # a coroutine serves streaming kinds too in grpc.aio
    return denied
