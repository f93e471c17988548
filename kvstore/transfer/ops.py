"""The ops a data-plane server serves: one handler and the role it needs per op.

A server serves the segment ops (READ_RANGES, WRITE_RANGES) itself; whatever else it
serves is registered, the way a servicer is added to a gRPC server::

    server.register(Op.READ_KEYS, handler, role=Role.READER)

A handler gets the connection and the request (header, metadata, caller) once the
caller's role was checked against the op's; it sends its own reply, and may stream
bytes after it or receive bytes that follow the request. An op with no handler is
answered NOT_FOUND ("operation X is not served here"), never hung up on for that alone.
Ops with state that outlives a request (leases, reservations) attach a ``Service``: its
``run`` works while the server listens, its ``close`` ends what is still open.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from kvstore.access import Role
from kvstore.errors import InvalidArgument
from kvstore.transfer import frames
from kvstore.transfer.conn import ServerConn
from kvstore.transfer.frames import Op


@dataclass(frozen=True, slots=True)
class Caller:
    """One connection's identity: who it is (``owner``, what quotas count) and what its
    token allows."""

    owner: int
    role: Role


@dataclass(frozen=True, slots=True)
class Request:
    header: frames.Header
    payload: memoryview  # the op's metadata; bytes that follow it are still on the wire
    caller: Caller


Handler = Callable[[ServerConn, Request], Awaitable[None]]


class Service(Protocol):
    async def run(self) -> None:
        """Upkeep while the server listens (expiring what its holders abandoned);
        cancelled when the server closes."""
        ...

    async def close(self) -> None:
        """End what is still open, once the server has stopped serving."""
        ...


@dataclass(frozen=True, slots=True)
class Served:
    handler: Handler
    role: Role  # the least role a caller needs (kvstore.access)


class OpTable:
    """Which ops are served, by which handler, to which role. HELLO is the handshake,
    never an op to register; an op is registered once."""

    def __init__(self) -> None:
        self._served: dict[Op, Served] = {}

    def register(self, op: Op, handler: Handler, *, role: Role) -> None:
        if op is Op.HELLO:
            raise InvalidArgument("HELLO is the handshake; it cannot be registered")
        if op in self._served:
            raise InvalidArgument(f"{op.name} is already served here")
        self._served[op] = Served(handler, role)

    def get(self, op: Op) -> Served | None:
        return self._served.get(op)

    def not_served(self, op: Op) -> str:
        """The answer to a caller asking for ``op`` where it has no handler."""
        served = ", ".join(o.name for o in sorted(self._served))
        return f"operation {op.name} is not served here (this data plane serves {served})"


def capability_id() -> int:
    """An id a handler hands out for what a caller holds (a lease, a reservation):
    unguessable, so only its holder can use or end it. Never 0 (no capability)."""
    return secrets.randbits(63) + 1
