"""Does the next turn's prompt reproduce the tokens of the previous prompt + answer?

The engine keeps a finished generation's KV for the next turn; a chat client sends the
answer back as text, re-rendered by the chat template. These pin down, per template, how
far the re-rendered prompt matches what was generated (see ``bench/chat_reuse.py``), so a
change in chat rendering, tokenizers or streamed text that costs reuse shows up here.
"""

from __future__ import annotations

import pytest

from bench.chat_reuse import (
    ANSWERS,
    BLOCK_TOKENS,
    BODY,
    CONVERSATIONS,
    INVALID_UTF8,
    Answer,
    ChatFormat,
    Reuse,
    formats,
    measure,
)
from engine.chat import encode_chat

KINDS = {a.kind: a for a in ANSWERS}
TRIMMED_AWAY = ("leading space", "leading newlines")
TRAILING = ("trailing newline", "trailing spaces")


@pytest.fixture(scope="module")
def fmt() -> dict[str, ChatFormat]:
    return {f.name: f for f in formats()}


def _generated(f: ChatFormat, answer: Answer, conversation: str = "user") -> list[int]:
    """P + A: turn 1's prompt, the answer's tokens and the end-of-turn token."""
    messages = CONVERSATIONS[conversation]
    prompt = encode_chat(f.tokenizer, f.template, messages, special_tokens=f.special_tokens)
    ids = f.tokenizer.encode(answer.text, add_special_tokens=False)
    return [*prompt, *ids, f.end_of_turn_id]


def _assert_exact(r: Reuse) -> None:
    """Reproduced up to and including the end-of-turn token: every block but the one
    holding the last generated token (never fed, so it has no KV) is reusable."""
    assert r.diverges_in == "", (r.generated, r.rerendered)
    assert r.common_tokens == r.prompt_tokens + r.answer_tokens
    assert r.reusable_blocks == r.ideal_blocks == (r.common_tokens - 1) // BLOCK_TOKENS


def test_tiny_reproduces_every_text_answer_exactly(fmt: dict[str, ChatFormat]) -> None:
    for answer in ANSWERS:
        r = measure(fmt["tiny"], "user", answer)
        _assert_exact(r)
        assert not r.sent_back_differs
    _assert_exact(measure(fmt["tiny"], "system+user", KINDS["ascii"]))


def test_invalid_utf8_loses_the_reuse_at_its_first_invalid_byte(
    fmt: dict[str, ChatFormat],
) -> None:
    """A random-weights model emits bytes that are no text; the client gets U+FFFD,
    which re-encodes as EF BF BD."""
    r = measure(fmt["tiny"], "user", INVALID_UTF8)
    assert INVALID_UTF8.emitted is not None
    first_bad = INVALID_UTF8.emitted.index(b"\xe4")
    assert r.diverges_in == "answer"
    assert r.common_tokens == r.prompt_tokens + first_bad
    assert "\ufffd" in r.sent_back
    assert r.rerendered == ("<0xEF>", "<0xBF>", "<0xBD>")
    assert r.reusable_blocks == r.common_tokens // BLOCK_TOKENS < r.ideal_blocks


def test_a_block_holding_the_last_generated_token_is_never_reusable(
    fmt: dict[str, ChatFormat],
) -> None:
    tiny = fmt["tiny"]
    prompt_tokens = len(_generated(tiny, Answer("empty", ""))) - 1
    fill = -(prompt_tokens + 1) % BLOCK_TOKENS or BLOCK_TOKENS
    r = measure(tiny, "user", Answer("fills a block", "x" * fill))
    _assert_exact(r)
    assert r.common_tokens % BLOCK_TOKENS == 0  # the end-of-turn token closes a block
    assert r.reusable_blocks == r.common_tokens // BLOCK_TOKENS - 1


@pytest.mark.parametrize("name", ["llama3", "qwen2"])
def test_byte_level_templates_reproduce_plain_answers_exactly(
    fmt: dict[str, ChatFormat], name: str
) -> None:
    """Llama-3 and ChatML re-render an ASCII or multi-byte answer exactly up to and
    including its end-of-turn token, with or without a system message."""
    for kind in ("ascii", "multi-byte"):
        _assert_exact(measure(fmt[name], "user", KINDS[kind]))
    _assert_exact(measure(fmt[name], "system+user", KINDS["ascii"]))


def test_llama3_trims_leading_whitespace_and_loses_the_whole_answer(
    fmt: dict[str, ChatFormat],
) -> None:
    for kind in TRIMMED_AWAY:
        r = measure(fmt["llama3"], "user", KINDS[kind])
        assert r.diverges_in == "answer"
        assert r.common_tokens == r.prompt_tokens  # the answer's first token already differs
        assert r.rerendered[0] == "The"
        assert r.reusable_blocks == r.prompt_tokens // BLOCK_TOKENS < r.ideal_blocks


@pytest.mark.parametrize("name", ["llama3", "mistral-v0.3"])
def test_a_trimming_template_loses_only_the_trailing_whitespace(
    fmt: dict[str, ChatFormat], name: str
) -> None:
    """The re-rendered turn ends (its end-of-turn token) where the generated one still
    had whitespace: the last few tokens are lost, the answer before them is kept."""
    f = fmt[name]
    for kind in TRAILING:
        answer = KINDS[kind]
        r = measure(f, "user", answer)
        generated = _generated(f, answer)
        trimmed = _generated(f, Answer("trimmed", answer.text.rstrip()))
        kept = next(i for i, (a, b) in enumerate(zip(generated, trimmed, strict=False)) if a != b)
        assert r.diverges_in == "answer"
        assert r.common_tokens == kept  # the re-rendered answer is the trimmed answer
        end = f.tokenizer.decode([f.end_of_turn_id], skip_special_tokens=False)
        assert end in r.rerendered[:2]  # e.g. "." then the end of turn, not ".\n"
        assert 0 < len(generated) - r.common_tokens <= 3
        assert r.reusable_blocks >= (len(generated) - 4) // BLOCK_TOKENS


def test_chatml_keeps_whitespace_but_newlines_merge_with_the_header(
    fmt: dict[str, ChatFormat],
) -> None:
    """ChatML writes the answer untrimmed: leading spaces and trailing whitespace come back
    exactly. An answer opening with newlines does not: the header's "\\n" (the last
    prompt token) and the answer's newlines are one pre-token in the re-rendered text."""
    for kind in ("leading space", *TRAILING):
        _assert_exact(measure(fmt["qwen2"], "user", KINDS[kind]))
    r = measure(fmt["qwen2"], "user", KINDS["leading newlines"])
    assert r.diverges_in == "prompt"
    assert r.common_tokens == r.prompt_tokens - 1
    assert r.generated[:2] == ("\n", "\n\n")
    assert r.rerendered[0] == "\n\n\n"


def test_mistral_v02_adds_a_space_to_the_streamed_leading_space(
    fmt: dict[str, ChatFormat],
) -> None:
    """The engine streams a SentencePiece answer with its leading space (the prompt is the
    detokenizer's context); v0.2 writes ' ' + content, so the next prompt holds two
    spaces where the model generated one, and no answer token is reused. Sent back
    without that space, the answer is reproduced exactly."""
    for answer in ANSWERS:
        r = measure(fmt["mistral-v0.2"], "user", answer)
        assert r.diverges_in == "answer"
        assert r.common_tokens <= r.prompt_tokens + 1
        assert r.reusable_blocks <= r.prompt_tokens // BLOCK_TOKENS + 1
    ascii = measure(fmt["mistral-v0.2"], "user", KINDS["ascii"])
    assert ascii.sent_back == " " + BODY
    assert ascii.rerendered[:2] == (" ", " The")
    _assert_exact(measure(fmt["mistral-v0.2"], "user", KINDS["ascii"], sent_back=BODY))


def test_mistral_v03_trims_the_streamed_space_and_reproduces_the_answer(
    fmt: dict[str, ChatFormat],
) -> None:
    for kind in ("ascii", "leading space", "multi-byte"):
        r = measure(fmt["mistral-v0.3"], "user", KINDS[kind])
        _assert_exact(r)
    r = measure(fmt["mistral-v0.3"], "user", KINDS["leading newlines"])
    assert r.diverges_in == "answer"
    assert r.common_tokens == r.prompt_tokens


def test_mistral_v03_moves_the_system_message_and_loses_the_whole_conversation(
    fmt: dict[str, ChatFormat],
) -> None:
    """v0.3 writes the system message into the LAST user turn: turn 2's prompt differs
    from turn 1's right after "<s>[INST]"."""
    r = measure(fmt["mistral-v0.3"], "system+user", KINDS["ascii"])
    assert r.diverges_in == "prompt"
    assert r.common_tokens == 2
    assert r.reusable_blocks == 0 < r.ideal_blocks
    v02 = measure(fmt["mistral-v0.2"], "system+user", KINDS["ascii"])
    assert v02.common_tokens == v02.prompt_tokens  # v0.2 keeps it in the first user turn
