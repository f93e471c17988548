"""Tokens as the engine sees them: ask the serving endpoint's ``POST /tokenize``.

The store knows block keys, not text; only the model's own tokenizer and chat template
turn a prompt into the tokens a request carries. ``kvstore`` never imports the engine,
so the admin CLI asks the running endpoint (``kvengine up`` / ``kvengine router``, or
any server with vLLM's ``/tokenize``) over HTTP, with the standard library only.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, NamedTuple

from kvstore.errors import InvalidArgument, ServiceUnavailable


class Tokenized(NamedTuple):
    tokens: list[int]
    model_id: str | None  # the store namespace's model id, when the endpoint says it


def tokenize(url: str, api_key: str, body: dict[str, Any], timeout_s: float = 30.0) -> Tokenized:
    """``body`` is ``{"prompt": text}`` or ``{"messages": [...]}``.

    Raises:
        InvalidArgument: the endpoint refused the request (its message is kept).
        ServiceUnavailable: the endpoint could not be reached or answered nonsense.
    """
    request = urllib.request.Request(
        url.rstrip("/") + "/tokenize",
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {api_key}"} if api_key else {}),
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            reply = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise InvalidArgument(f"--router {url}: {_error_message(exc)}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ServiceUnavailable(f"--router {url}: cannot tokenize there: {exc}") from None
    tokens = reply.get("tokens") if isinstance(reply, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise ServiceUnavailable(f"--router {url}: /tokenize answered no token list")
    model_id = reply.get("model_id")
    return Tokenized(tokens, model_id if isinstance(model_id, str) else None)


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        error = json.loads(exc.read()).get("error", {})
        return f"{exc.code} {error.get('message') or exc.reason}"
    except (ValueError, AttributeError):
        return f"{exc.code} {exc.reason}"
