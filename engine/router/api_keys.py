"""API keys at the router's HTTP endpoint (in front of the bundled workers or of vLLM
servers): which requests need one, whether a request presents one, and the cache salt a
key gives its requests.

``/v1/*`` and ``/tokenize`` need one of the keys while any is set (none: the API is
open). A presented key is compared with every key in constant time. Salting by key
(``router.salt_by_api_key``) puts a request's own ``cache_salt`` under a digest of its
key, so requests reuse KV only from requests with the same key; the key itself never
leaves the router.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from fastapi import Request

from engine.router.api_errors import ApiError

SALT_DOMAIN = b"strata.api-key.v1"


class ApiKeys:
    def __init__(self, keys: Sequence[str], *, salt_by_key: bool = False) -> None:
        self.keys = [k.encode() for k in keys if k]
        self.salt_by_key = salt_by_key

    def check(self, request: Request) -> ApiError | None:
        """Note the valid key ``request`` presents (``request.state.api_key``; ``b""``
        for none) and return the 401 to answer when its path needs one it lacks."""
        path = request.url.path
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        raw = presented.strip().encode() if scheme.lower() == "bearer" else b""
        matched = [hmac.compare_digest(raw, key) for key in self.keys]  # every key each time
        request.state.api_key = raw if any(matched) else b""
        guarded = path.startswith("/v1/") or path == "/tokenize"
        if guarded and self.keys and not any(matched):
            return ApiError(
                401,
                "a valid API key is required (Authorization: Bearer KEY)",
                kind="authentication_error",
                code="invalid_api_key",
            )
        return None

    def cache_salt(self, salt: str, request: Request) -> str:
        """The cache salt of ``request`` whose body asked for ``salt``: under its key's
        digest when salting by key (``check`` ran first)."""
        api_key: bytes = getattr(request.state, "api_key", b"")
        if self.salt_by_key and api_key:
            return hashlib.sha256(SALT_DOMAIN + api_key).hexdigest()[:32] + "/" + salt
        return salt
