"""Rights: who may read, write and administer a store, and the tokens that grant them.

Three roles, each including the ones before it::

    READER  read and probe blocks: Get, BatchGet, Lookup, Exists, DataPlane; on the
            data plane READ_KEYS, ACQUIRE/RELEASE, and READ_RANGES of the arena only
            within blocks the caller holds a lease for
    WRITER  also change what is stored: RegisterNamespace, Put, BatchPut, Remove, Pin,
            Unpin; PUT_KEYS, RESERVE, WRITE_RANGES, COMMIT, ABORT
    ADMIN   also the AdminService (stats, eviction, flush, config)

A presented token is compared, in constant time, with every configured one. Without
a matching token a caller is anonymous: with no token configured at all, anonymous
callers hold every right (one machine, loopback); with only an admin token, they are
writers; with a writer or reader token configured, they hold none. (The store's config
refuses a writer or reader token without an admin token, so that no store token ever
grants admin powers.)

A client presents its token as gRPC metadata built by ``bearer_metadata``, the one place
that spells the header; ``server/auth.py`` reads it.
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass


class Role(enum.IntEnum):
    READER = 1
    WRITER = 2
    ADMIN = 3


@dataclass(frozen=True, slots=True)
class Access:
    """The configured tokens (empty: that role has no token of its own)."""

    admin_token: str = ""
    writer_token: str = ""
    reader_token: str = ""

    @property
    def anonymous(self) -> Role | None:
        """The role of a caller that presents no valid token."""
        if self.writer_token or self.reader_token:
            return None
        return Role.WRITER if self.admin_token else Role.ADMIN

    def role_of(self, presented: bytes | None) -> Role | None:
        """The highest role ``presented`` grants, else the anonymous role."""
        granted: Role | None = None
        for token, role in (
            (self.reader_token, Role.READER),
            (self.writer_token, Role.WRITER),
            (self.admin_token, Role.ADMIN),
        ):
            if token and presented is not None and hmac.compare_digest(presented, token.encode()):
                granted = role  # no early exit: every token is compared
        return granted if granted is not None else self.anonymous

    def is_valid(self, presented: bytes | None) -> bool:
        """Whether ``presented`` is one of the configured tokens."""
        return presented is not None and any(
            token and hmac.compare_digest(presented, token.encode())
            for token in (self.reader_token, self.writer_token, self.admin_token)
        )


Metadata = tuple[tuple[str, str], ...]


def bearer_metadata(token: str) -> Metadata:
    """The gRPC call metadata that presents ``token`` (``authorization: Bearer <token>``);
    none for an empty token, which makes the caller anonymous."""
    return (("authorization", f"Bearer {token}"),) if token else ()
