"""``kvengine chat``: a terminal chat with the endpoint, streamed as it is generated.

Keeps the conversation (so later turns reuse the earlier turns' KV), prints each reply
as it streams, then a dim line with its token counts and how much of the prompt was
cached. ``/reset`` starts over, ``/exit`` (or Ctrl-D) leaves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
from rich.console import Console

from engine.errors import EngineError


class ChatError(EngineError):
    pass


def stream_reply(
    client: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str]
) -> Iterator[dict[str, Any]]:
    """The server-sent chunks of one streamed chat completion."""
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            r.read()
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text
            raise ChatError(f"HTTP {r.status_code}: {message}")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                return
            chunk: dict[str, Any] = json.loads(data)
            if "error" in chunk:
                raise ChatError(chunk["error"]["message"])
            yield chunk


def run_chat(
    url: str,
    *,
    model: str = "",
    api_key: str = "",
    max_tokens: int = 256,
    temperature: float = 0.7,
    system: str = "",
) -> int:
    console = Console()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = url.rstrip("/")
    with httpx.Client(timeout=httpx.Timeout(600.0, connect=5.0)) as client:
        try:
            model = model or _served_model(client, url, headers)
        except (httpx.HTTPError, ChatError) as exc:
            console.print(f"[red]cannot reach {url}: {exc}[/red]")
            return 1
        console.print(
            f"[dim]chatting with {model} at {url}; /reset starts over, /exit leaves[/dim]"
        )
        history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        while True:
            try:
                text = console.input("[bold cyan]you> [/bold cyan]")
            except (EOFError, KeyboardInterrupt):
                console.print()
                return 0
            if text.strip() in ("/exit", "/quit"):
                return 0
            if text.strip() == "/reset":
                history = history[:1] if system else []
                continue
            if not text.strip():
                continue
            history.append({"role": "user", "content": text})
            body = {
                "model": model,
                "messages": history,
                "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": max_tokens,
                "temperature": temperature,
            }
            reply: list[str] = []
            usage: dict[str, Any] = {}
            start = time.perf_counter()
            console.print("[bold magenta]assistant> [/bold magenta]", end="")
            try:
                for chunk in stream_reply(client, url, body, headers):
                    for choice in chunk.get("choices", []):
                        piece = choice.get("delta", {}).get("content") or ""
                        reply.append(piece)
                        console.print(piece, end="", markup=False, highlight=False)
                    usage = chunk.get("usage") or usage
            except (httpx.HTTPError, ChatError) as exc:
                console.print(f"\n[red]{exc}[/red]")
                history.pop()
                continue
            except KeyboardInterrupt:  # stop this reply, keep chatting
                console.print("\n[dim](stopped)[/dim]")
            console.print()
            history.append({"role": "assistant", "content": "".join(reply)})
            if usage:
                cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
                console.print(
                    f"[dim]{usage['completion_tokens']} tokens in"
                    f" {time.perf_counter() - start:.2f} s; prompt {usage['prompt_tokens']}"
                    f" tokens, {cached} cached[/dim]"
                )


def _served_model(client: httpx.Client, url: str, headers: dict[str, str]) -> str:
    response = client.get(f"{url}/v1/models", headers=headers)
    if response.status_code != 200:
        raise ChatError(f"HTTP {response.status_code} from /v1/models")
    models = response.json()["data"]
    if not models:
        raise ChatError("the server lists no model")
    return str(models[0]["id"])
