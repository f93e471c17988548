"""Bearer-token authentication and rights, as a server interceptor.

Clients send ``authorization: Bearer <token>`` metadata; ``kvstore.access`` says which
role a token grants. Admin calls need the admin role, store calls that change what is
stored (``WRITE_METHODS``) the writer role, other store calls the reader role. No
token where one is needed -> UNAUTHENTICATED; a valid token whose role is too low ->
PERMISSION_DENIED. Health checks and reflection stay open, for orchestrators and tools.
Tokens are compared in constant time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from kvstore.access import Access, Role

ADMIN_PREFIX = "/strata.v1.AdminService/"
STORE_PREFIX = "/strata.v1.StoreService/"
WRITE_METHODS = frozenset(
    STORE_PREFIX + name
    for name in ("RegisterNamespace", "Put", "BatchPut", "Remove", "Pin", "Unpin")
)


if TYPE_CHECKING:  # the stubs make these generic; the runtime classes are not
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        access: Access,
        *,
        guarded: tuple[str, ...] = (STORE_PREFIX,),
        write_methods: frozenset[str] = WRITE_METHODS,
    ) -> None:
        """``guarded``: method prefixes that need at least the reader role (besides admin
        calls); ``write_methods``: guarded methods that need the writer role."""
        self._access = access
        self._guarded = guarded
        self._writes = write_methods

    def needed(self, method: str) -> Role | None:
        if method.startswith(ADMIN_PREFIX):
            return Role.ADMIN
        if method.startswith(self._guarded):
            return Role.WRITER if method in self._writes else Role.READER
        return None

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        needed = self.needed(handler_call_details.method or "")
        if needed is None:
            return handler
        presented = _bearer(handler_call_details.invocation_metadata or ())
        role = self._access.role_of(presented)
        if role is not None and role >= needed:
            return handler
        if presented is None:
            return _deny(handler, grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
        if not self._access.is_valid(presented):
            return _deny(handler, grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")
        what = {
            Role.ADMIN: "admin calls need the admin token",
            Role.WRITER: "writes need a writer token",
        }
        return _deny(handler, grpc.StatusCode.PERMISSION_DENIED, what.get(needed, "not allowed"))


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
