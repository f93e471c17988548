"""Chat templates: a list of messages rendered into one prompt string.

Checkpoints ship a Jinja template (``chat_template.jinja`` or ``chat_template`` in
tokenizer_config.json). It is rendered the way transformers' ``apply_chat_template(...,
tokenize=False)`` does: a sandboxed (immutable) environment with ``trim_blocks`` and
``lstrip_blocks``, the loop-controls extension, the ``raise_exception`` and
``strftime_now`` globals, a ``tojson`` filter that does not escape HTML, and the special
tokens (``bos_token``, ``eos_token``, ...) as variables. Templates are untrusted code: the
sandbox keeps them from reaching Python internals.

The rendered prompt already holds any BOS the template writes, so encode it with
``add_special_tokens=False`` (``encode_chat`` does).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.runtime
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import EngineError
from engine.tokenizer import Tokenizer

Message = Mapping[str, str]


class ChatTemplateError(EngineError, ValueError):
    """A chat request this checkpoint cannot serve: it has no chat template, or its
    template refused the messages (e.g. roles out of order)."""


def render_chat(
    template: str | None,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str | None] | None = None,
) -> str:
    """The prompt text for ``messages`` (``{"role": ..., "content": ...}`` each).

    Args:
        template: the checkpoint's chat template; ``None`` when it has none.
        messages: the conversation so far.
        add_generation_prompt: end with the header that opens the assistant's turn.
        special_tokens: template variables such as ``bos_token`` and ``eos_token``.

    Raises:
        ChatTemplateError: no template, a template that does not compile, or one that
            refused the conversation (``raise_exception``, e.g. roles out of order).
    """
    if template is None:
        raise ChatTemplateError(
            "this checkpoint has no chat template (no chat_template.jinja and no"
            " chat_template in tokenizer_config.json); send a plain prompt instead"
        )
    try:
        compiled = _compile(template)
        return compiled.render(
            messages=[dict(m) for m in messages],
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **(special_tokens or {}),
        )
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template failed: {exc}") from exc


def encode_chat(
    tokenizer: Tokenizer,
    template: str | None,
    messages: Sequence[Message],
    *,
    special_tokens: Mapping[str, str | None] | None = None,
) -> list[int]:
    """Token ids of the rendered conversation, ready for the assistant to answer."""
    text = render_chat(template, messages, special_tokens=special_tokens)
    return tokenizer.encode(text, add_special_tokens=False)


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (marks assistant text for training
    masks in transformers): rendered as its body."""

    tags = {"generation"}  # noqa: RUF012 (jinja's extension API)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _body(self, caller: jinja2.runtime.Macro) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: object,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)
