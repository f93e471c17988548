"""API keys at the router's endpoints (the bundled workers' and vLLM's share them)."""

from starlette.requests import Request

from engine.router.api_keys import ApiKeys


def request(path: str, key: str | None = None) -> Request:
    headers = [] if key is None else [(b"authorization", f"Bearer {key}".encode())]
    return Request({"type": "http", "method": "POST", "path": path, "headers": headers})


def test_the_api_and_tokenize_need_one_of_the_keys_once_any_is_set() -> None:
    keys = ApiKeys(["k1", "k2"])
    for path in ("/v1/chat/completions", "/tokenize"):
        for presented in (None, "wrong", ""):
            refused = keys.check(request(path, presented))
            assert refused is not None and refused.status == 401, (path, presented)
        assert keys.check(request(path, "k2")) is None
    assert keys.check(request("/health")) is None  # the rest is open
    assert ApiKeys([]).check(request("/v1/completions")) is None  # no key: an open API


def test_salting_by_key_keeps_each_keys_requests_apart_and_never_shows_the_key() -> None:
    keys = ApiKeys(["alice", "bob"], salt_by_key=True)
    salts = {}
    for key in ("alice", "bob"):
        r = request("/v1/completions", key)
        assert keys.check(r) is None
        salts[key] = keys.cache_salt("doc", r)
    assert salts["alice"] != salts["bob"]
    assert all(s.endswith("/doc") and "alice" not in s and "bob" not in s for s in salts.values())
    again = request("/v1/completions", "alice")
    keys.check(again)
    assert keys.cache_salt("doc", again) == salts["alice"]
    assert keys.cache_salt("", again) + "doc" == salts["alice"]  # the key's root, then the salt
    unsalted = request("/v1/completions", "alice")
    assert ApiKeys(["alice"]).check(unsalted) is None
    assert ApiKeys(["alice"]).cache_salt("doc", unsalted) == "doc"
