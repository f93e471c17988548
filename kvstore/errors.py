"""The store's exception tree, rooted at ``KVStoreError``.

A cache miss is never an exception: gets and lookups return how many leading blocks hit.
Exceptions mean the caller asked for something invalid or the store cannot do it now.
"""

from __future__ import annotations


class KVStoreError(Exception):
    """Root of every error the store raises on purpose."""


class InvalidArgument(KVStoreError, ValueError):
    """The request itself is malformed: a key of the wrong length, a buffer too small."""


class NotFound(KVStoreError, LookupError):
    """A named thing that must exist does not (an unknown namespace, a reservation)."""


class CapacityExceeded(KVStoreError):
    """No slot can be freed for the request: every candidate is pinned or being read."""


class TierUnavailable(KVStoreError):
    """A tier cannot be used on this host (no CUDA device, unwritable or full directory)."""


class LeaseExpired(KVStoreError):
    """A reservation or lease was used after its deadline and has been reclaimed."""


class LeaseUnavailable(KVStoreError):
    """The transport cannot lease blocks (no store behind it): read them by key instead."""


class TransferFailed(KVStoreError):
    """Bytes could not be moved between tiers, processes or hosts."""


class ServiceUnavailable(KVStoreError):
    """A store node or peer cannot be reached, or stopped answering."""


class DeadlineExceeded(ServiceUnavailable):
    """A call did not complete within its deadline."""


class Unauthenticated(KVStoreError):
    """The call carried no valid token (or the wrong one for an admin call)."""


class ConfigError(KVStoreError, ValueError):
    """A configuration value is invalid. The message names the key and what is allowed."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
