"""Bearer metadata as clients build it and the server's interceptor reads it."""

from __future__ import annotations

from kvstore.access import Access, Role, bearer_metadata
from kvstore.server.auth import _bearer


def test_no_token_presents_nothing() -> None:
    assert bearer_metadata("") == ()
    assert _bearer(bearer_metadata("")) is None


def test_a_token_is_read_back_by_the_server_and_grants_its_role() -> None:
    metadata = bearer_metadata("writer-secret")
    assert metadata == (("authorization", "Bearer writer-secret"),)
    presented = _bearer(metadata)
    assert presented == b"writer-secret"
    assert Access(admin_token="a", writer_token="writer-secret").role_of(presented) is Role.WRITER
