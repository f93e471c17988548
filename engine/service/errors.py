"""The one place where the workers' errors become gRPC statuses, and where callers read
them back.

    error                              status               strata-error         strata-role
    InvalidRequest, InvalidSampling    INVALID_ARGUMENT     invalid_request      the servicer's
    WrongNamespace                     FAILED_PRECONDITION  wrong_namespace      the servicer's
    NoRoom                             RESOURCE_EXHAUSTED   no_room              the servicer's
    PrefillUnavailable                 UNAVAILABLE          prefill_unavailable  prefill
    KVStoreError (sending KV failed)   UNAVAILABLE          kv_transfer_failed   the servicer's
    GenerationFailed                   INTERNAL             generation_failed    the servicer's
    any other exception                INTERNAL             internal             the servicer's
                                       (logged with its traceback)

Besides the status code and its message, every status a servicer sets carries two
trailing metadata entries: ``strata-error`` (the kind above) and ``strata-role`` (which
worker role failed: the servicer's own, unless the error names another, as a decode
worker's "no prefill worker could prefill it" names prefill). A caller (the router)
decides on these, never on the message, which is for people. A status without them did
not come from a servicer (a dead worker, a refused connection, a deadline): ``Failure``
then has ``role`` and ``kind`` None, and the worker that was called is the one to blame.
Authentication failures are the interceptor's (UNAUTHENTICATED, PERMISSION_DENIED).
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from engine.errors import EngineError
from engine.kv.page_reservations import NoRoom
from engine.roles import WorkerRole
from engine.sampling import InvalidSampling
from engine.service.remote_prefill import PrefillUnavailable
from engine.workers.requests import InvalidRequest
from kvstore.errors import KVStoreError
from kvstore.servicer_errors import aborting_on_errors

logger = logging.getLogger(__name__)
ROLE_KEY = "strata-role"
ERROR_KEY = "strata-error"


class ErrorKind(enum.StrEnum):
    """What went wrong, as ``strata-error`` spells it."""

    INVALID_REQUEST = "invalid_request"
    WRONG_NAMESPACE = "wrong_namespace"
    NO_ROOM = "no_room"
    PREFILL_UNAVAILABLE = "prefill_unavailable"
    KV_TRANSFER_FAILED = "kv_transfer_failed"
    GENERATION_FAILED = "generation_failed"
    INTERNAL = "internal"


class WrongNamespace(EngineError):
    """A decode worker asked a prefill worker of another model or page layout."""


class GenerationFailed(EngineError):
    """A generation ended with an error after it was admitted (the message says which)."""


@dataclass(frozen=True, slots=True)
class _Mapping:
    kind: type[Exception]
    code: grpc.StatusCode
    error: ErrorKind
    role: WorkerRole | None = None  # None: the servicer's own role
    what: str = ""  # put before the error's message


_MAPPINGS = (
    _Mapping(InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT, ErrorKind.INVALID_REQUEST),
    _Mapping(InvalidSampling, grpc.StatusCode.INVALID_ARGUMENT, ErrorKind.INVALID_REQUEST),
    _Mapping(WrongNamespace, grpc.StatusCode.FAILED_PRECONDITION, ErrorKind.WRONG_NAMESPACE),
    _Mapping(NoRoom, grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorKind.NO_ROOM),
    _Mapping(
        PrefillUnavailable,
        grpc.StatusCode.UNAVAILABLE,
        ErrorKind.PREFILL_UNAVAILABLE,
        WorkerRole.PREFILL,
    ),
    _Mapping(
        KVStoreError,
        grpc.StatusCode.UNAVAILABLE,
        ErrorKind.KV_TRANSFER_FAILED,
        what="sending KV failed: ",
    ),
    _Mapping(GenerationFailed, grpc.StatusCode.INTERNAL, ErrorKind.GENERATION_FAILED),
)
_INTERNAL = _Mapping(Exception, grpc.StatusCode.INTERNAL, ErrorKind.INTERNAL)


def _mapping_of(exc: Exception) -> _Mapping:
    """The first row of the table that ``exc`` is an instance of (rows are ordered)."""
    return next((m for m in _MAPPINGS if isinstance(exc, m.kind)), _INTERNAL)


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed call to a worker, as the caller sees it."""

    code: grpc.StatusCode
    role: WorkerRole | None  # the role that failed; None: not said (no servicer answered)
    kind: ErrorKind | None  # None: not said, or a kind this caller does not know
    message: str  # for people: logs and error answers, never for decisions


def failure_of(exc: grpc.aio.AioRpcError) -> Failure:
    """Read a worker's status back: its code and the structured ``strata-*`` entries."""
    entries = {key: value for key, value in exc.trailing_metadata() or () if isinstance(value, str)}
    return Failure(
        exc.code(),
        _member(WorkerRole, entries.get(ROLE_KEY)),
        _member(ErrorKind, entries.get(ERROR_KEY)),
        exc.details() or exc.code().name,
    )


E = TypeVar("E", bound=enum.Enum)


def _member(kind: type[E], value: str | None) -> E | None:
    try:
        return kind(value)
    except ValueError:
        return None


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, role: WorkerRole) -> None:
    mapping = _mapping_of(exc)
    metadata = ((ROLE_KEY, (mapping.role or role).value), (ERROR_KEY, mapping.error.value))
    message = f"{mapping.what}{exc}"
    if mapping is _INTERNAL:
        logger.exception("internal error in a %s worker's handler", role)
        message = f"internal error: {type(exc).__name__} (see the {role} worker's log)"
    await context.abort(mapping.code, message, metadata)


F = TypeVar("F", bound=Callable[..., Any])


def worker_errors(role: WorkerRole) -> Callable[[F], F]:
    """Decorate a ``role`` worker's servicer method (unary or streaming) so that its
    exceptions become statuses by the table above."""
    return aborting_on_errors(functools.partial(_abort, role=role))
