"""How much of a conversation's KV survives the round trip through the chat template.

The engine keeps the KV of a finished generation (prompt + answer) for the next turn, and
the next turn's prefill reuses every full block that matches token for token. Over the
OpenAI API the client sends the answer back as text: the chat template re-renders it and
the tokenizer re-encodes it, and reuse stops at the first token that differs::

    P  = encode_chat(messages)                       what turn 1 prefilled
    A  = the answer's tokens + the end-of-turn token  what the model generated
    N  = encode_chat(messages + [assistant: content, user: "next"])
    reuse = longest common prefix of N and P + A

``A`` is ``encode(answer)`` (a model emits the canonical tokens of its text, near enough),
or, for the byte tokenizer, raw bytes that need not be valid UTF-8 (a random-weights
model emits those). ``content`` is what the engine streamed for ``A``: the decode
worker's ``Detokenizer`` with the prompt as context, so it carries U+FFFD for invalid
bytes and keeps a SentencePiece answer's leading space, as the client receives it.

Reusable blocks: the last generated token is sampled, never fed, so its KV does not
exist; a block is reusable when its 16 tokens lie inside the common prefix and before
that last token: ``min(common, len(P + A) - 1) // 16``, against the ideal
``(len(P + A) - 1) // 16``.

Tokenizers: the tiny model's byte tokenizer; byte-level BPEs with Llama-3's and Qwen2's
own pre-tokenizer patterns (newline runs are one pre-token there, so "\\n\\n" after a
header is one token) and a SentencePiece-style BPE (Metaspace, byte fallback) for
Mistral (as the tests' stand-in: a "▁" prepended to the first piece only, not the
legacy per-segment normalizer), all trained here on a small corpus. Their vocabularies
are toys: where a divergence can start (the template's text around the answer, trimming,
pre-token boundaries) is set by the template and the pre-tokenizer, but the real merges
can move it by a token, and the token counts differ from the real checkpoints'.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import tokenizers
from rich.table import Table
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from bench.common import console, parser
from engine.chat import Message, encode_chat
from engine.model import tiny
from engine.tokenizer import END_TOKEN, ByteTokenizer, Detokenizer, HFTokenizer, Tokenizer

BLOCK_TOKENS = 16
SHOWN_TOKENS = 3  # tokens shown from a divergence on

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TRAINING_TEXT = (
    "The capital of France is Paris. It has about two million people, and the region"
    " around it about twelve million. It lies on the Seine, in the north of the country.\n"
    "What is the capital of France? Answer in a few sentences and name its river.\n"
    "The capital of France is Paris. It has about two million people.\n\n"
    "Sure, here it is:\n\n- one\n- two\n- three\n\nDone.\n"
    "  Indented line\n\n\nThree newlines, then text. What is the capital of France?\n"
    "Café ½ — naïve 世界 🎉 ok. Hello world, the quick brown fox jumps over the lazy dog.\n"
    "You are terse. Be helpful and answer the question in one sentence.\n"
)


@dataclass(frozen=True, slots=True)
class ChatFormat:
    """A checkpoint's chat side: template, tokenizer, template variables, end-of-turn token."""

    name: str
    template: str
    tokenizer: Tokenizer
    special_tokens: Mapping[str, str]
    end_of_turn_id: int


@dataclass(frozen=True, slots=True)
class Answer:
    """What the model answered. ``emitted``: raw byte tokens (byte tokenizer only), when
    they are not ``text``'s UTF-8."""

    kind: str
    text: str
    emitted: bytes | None = None


@dataclass(frozen=True, slots=True)
class Reuse:
    """How much of turn 1's prompt + answer the next turn's prompt reproduces."""

    template: str
    conversation: str
    answer: str
    prompt_tokens: int
    answer_tokens: int  # the end-of-turn token included
    common_tokens: int  # longest common prefix of N and P + A
    diverges_in: str  # "prompt", "answer", "end of turn" or "" (reproduced to the end)
    generated: tuple[str, ...]  # the first tokens of P + A from the divergence on, decoded
    rerendered: tuple[str, ...]  # the same of N
    reusable_blocks: int
    ideal_blocks: int
    sent_back: str  # the answer's text as the client got it and sends it back
    sent_back_differs: bool  # from the text the model meant (a leading space, U+FFFD)
    sent_back_streamed: bool  # the streamed text was sent back (not a chosen one)

    @property
    def exact(self) -> bool:
        return self.diverges_in == ""


BODY = (
    "The capital of France is Paris. It has about two million people, and the region"
    " around it about twelve million. It lies on the Seine, in the north of the country."
)
QUESTION = "What is the capital of France? Answer in a few sentences and name its river."
ANSWERS: tuple[Answer, ...] = (
    Answer("ascii", BODY),
    Answer("leading space", " " + BODY),
    Answer("leading newlines", "\n\n" + BODY + "\n- one\n- two"),
    Answer("trailing newline", BODY + "\n"),
    Answer("trailing spaces", BODY + "  "),
    Answer("multi-byte", "Café ½ — naïve 世界 🎉: " + BODY),
)
INVALID_UTF8 = Answer(
    "invalid utf-8", "", emitted=BODY[:40].encode() + b" \xe4\xb8 \xff\xfe " + BODY[40:].encode()
)
CONVERSATIONS: dict[str, list[Message]] = {
    "user": [{"role": "user", "content": QUESTION}],
    "system+user": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": QUESTION},
    ],
}
NEXT: Message = {"role": "user", "content": "next"}


def measure(
    fmt: ChatFormat, conversation: str, answer: Answer, *, sent_back: str | None = None
) -> Reuse:
    """Turn 1 (``CONVERSATIONS[conversation]`` answered by ``answer``), then turn 2.

    Args:
        sent_back: the assistant content of turn 2; by default the text the engine
            streamed for the answer.
    """
    messages = CONVERSATIONS[conversation]
    tokenizer, variables = fmt.tokenizer, fmt.special_tokens
    prompt = encode_chat(tokenizer, fmt.template, messages, special_tokens=variables)
    answer_ids = _emitted(tokenizer, answer)
    generated = [*prompt, *answer_ids, fmt.end_of_turn_id]
    content = _streamed(tokenizer, prompt, answer_ids) if sent_back is None else sent_back
    turn = [*messages, {"role": "assistant", "content": content}, NEXT]
    rerendered = encode_chat(tokenizer, fmt.template, turn, special_tokens=variables)
    common = _common_prefix(generated, rerendered)
    context = max(0, common - 2)
    return Reuse(
        template=fmt.name,
        conversation=conversation,
        answer=answer.kind if sent_back is None else f"{answer.kind}, as text",
        prompt_tokens=len(prompt),
        answer_tokens=len(generated) - len(prompt),
        common_tokens=common,
        diverges_in=_part(common, len(prompt), len(generated)),
        generated=_shown(tokenizer, generated[context:common], generated[common:]),
        rerendered=_shown(tokenizer, generated[context:common], rerendered[common:]),
        reusable_blocks=min(common, len(generated) - 1) // BLOCK_TOKENS,
        ideal_blocks=(len(generated) - 1) // BLOCK_TOKENS,
        sent_back=content,
        sent_back_differs=content != answer.text,
        sent_back_streamed=sent_back is None,
    )


def _emitted(tokenizer: Tokenizer, answer: Answer) -> list[int]:
    if answer.emitted is None:
        return tokenizer.encode(answer.text, add_special_tokens=False)
    if not isinstance(tokenizer, ByteTokenizer):
        raise ValueError("raw bytes are answers of the byte tokenizer only")
    return list(answer.emitted)


def _streamed(tokenizer: Tokenizer, prompt: Sequence[int], answer_ids: Sequence[int]) -> str:
    """The text the decode worker streams for ``answer_ids``, as the client gets it. The
    generation ends on its end-of-turn token, and the worker does not flush then: an
    incomplete character at the very end is not sent."""
    detokenizer = Detokenizer(tokenizer, context=prompt)
    return "".join(detokenizer.push(t) for t in answer_ids)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _part(common: int, prompt_tokens: int, total_tokens: int) -> str:
    if common >= total_tokens:
        return ""
    if common < prompt_tokens:
        return "prompt"
    return "answer" if common < total_tokens - 1 else "end of turn"


def _shown(tokenizer: Tokenizer, context: Sequence[int], ids: Sequence[int]) -> tuple[str, ...]:
    """The first tokens of ``ids``, each decoded after ``context`` (so a SentencePiece
    token keeps its leading space); a non-ASCII byte of the byte tokenizer is <0xNN>."""
    pieces: list[str] = []
    done = tokenizer.decode(context, skip_special_tokens=False)
    for i in range(min(SHOWN_TOKENS, len(ids))):
        text = tokenizer.decode([*context, *ids[: i + 1]], skip_special_tokens=False)
        piece, done = text[len(done) :], text
        if isinstance(tokenizer, ByteTokenizer) and 0x80 <= ids[i] < 0x100:
            piece = f"<0x{ids[i]:02X}>"
        pieces.append(piece)
    return tuple(pieces)


# -- tokenizers -------------------------------------------------------------------------


def byte_level_bpe(
    specials: Sequence[str], split_pattern: str, *, nfc: bool = False, vocab_size: int = 600
) -> tokenizers.Tokenizer:
    """A Llama-3 / Qwen2 style BPE: their split pattern, then bytes mapped to characters."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    if nfc:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(split_pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([TRAINING_TEXT] * 8, trainer)
    return tokenizer


def sentencepiece_bpe(
    control_tokens: Sequence[str] = (), vocab_size: int = 500
) -> tokenizers.Tokenizer:
    """A Llama 2 / Mistral style BPE: Metaspace (a "▁" before the first piece only), byte
    fallback for what the vocabulary lacks, a BOS post-processor. ``control_tokens`` are
    special tokens after ``<unk> <s> </s>`` (Mistral v0.3's ``[INST]``, ``[/INST]``)."""
    tokenizer = tokenizers.Tokenizer(
        models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    specials = ["<unk>", "<s>", "</s>", *control_tokens]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[*specials, *byte_tokens], show_progress=False
    )
    tokenizer.train_from_iterator([TRAINING_TEXT] * 8, trainer)
    # byte tokens are ordinary vocabulary (decoded, never skipped), as in Llama 2's
    spec = json.loads(tokenizer.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if not t["content"].startswith("<0x")]
    tokenizer = tokenizers.Tokenizer.from_str(json.dumps(spec))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tokenizer


def tiny_format() -> ChatFormat:
    tokenizer = ByteTokenizer()
    return ChatFormat(
        "tiny", tiny.CHAT_TEMPLATE, tokenizer, tiny.SPECIAL_TOKENS, tokenizer.token_id(END_TOKEN)
    )


def hf_format(
    name: str,
    template: str,
    backend: tokenizers.Tokenizer,
    special_tokens: Mapping[str, str],
    end: str,
) -> ChatFormat:
    """A ``tokenizer.json``-style tokenizer; the model stops on ``end``."""
    end_id = backend.token_to_id(end)
    if end_id is None:
        raise ValueError(f"{end!r} is not in the {name} vocabulary")
    tokenizer = HFTokenizer(
        backend, bos_token=special_tokens.get("bos_token"), eos_token_ids=(end_id,)
    )
    return ChatFormat(name, template, tokenizer, special_tokens, end_id)


def formats() -> list[ChatFormat]:
    """The chat templates the tests carry, each with a tokenizer of its family."""
    from tests.engine.test_tokenizer_chat import (
        LLAMA3_TEMPLATE,
        MISTRAL_V2_TEMPLATE,
        MISTRAL_V3_TEMPLATE,
        QWEN2_TEMPLATE,
    )

    mistral = {"bos_token": "<s>", "eos_token": "</s>"}
    return [
        tiny_format(),
        hf_format(
            "llama3",
            LLAMA3_TEMPLATE,
            byte_level_bpe(LLAMA3_SPECIALS, LLAMA3_SPLIT),
            {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
            "<|eot_id|>",
        ),
        hf_format(
            "qwen2",
            QWEN2_TEMPLATE,
            byte_level_bpe(CHATML_SPECIALS, QWEN2_SPLIT, nfc=True),
            {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
            "<|im_end|>",
        ),
        hf_format("mistral-v0.2", MISTRAL_V2_TEMPLATE, sentencepiece_bpe(), mistral, "</s>"),
        hf_format(
            "mistral-v0.3",
            MISTRAL_V3_TEMPLATE,
            sentencepiece_bpe(["[INST]", "[/INST]"]),
            mistral,
            "</s>",
        ),
    ]


def run(chat_formats: Sequence[ChatFormat]) -> list[Reuse]:
    """Every answer kind with a user-only turn 1, the ASCII answer after a system message,
    and, where the streamed text is not the answer's text, the text sent back instead."""
    rows: list[Reuse] = []
    for fmt in chat_formats:
        answers = [*ANSWERS, INVALID_UTF8] if isinstance(fmt.tokenizer, ByteTokenizer) else ANSWERS
        rows.extend(measure(fmt, "user", answer) for answer in answers)
        rows.append(measure(fmt, "system+user", ANSWERS[0]))
        if rows[-len(answers) - 1].sent_back_differs:  # e.g. a SentencePiece leading space
            rows.append(measure(fmt, "user", ANSWERS[0], sent_back=ANSWERS[0].text))
    return rows


def summary(rows: Sequence[Reuse]) -> dict[str, float]:
    """Per template: reusable blocks over the ideal, over the rows that send back the
    streamed text (as clients do)."""
    out: dict[str, float] = {}
    for name in dict.fromkeys(r.template for r in rows):
        mine = [r for r in rows if r.template == name and r.sent_back_streamed]
        ideal = sum(r.ideal_blocks for r in mine)
        out[f"{name}_reusable_share"] = sum(r.reusable_blocks for r in mine) / max(1, ideal)
    return out


def _table(rows: Sequence[Reuse]) -> Table:
    table = Table(show_header=True, header_style="bold")
    for column in ("template", "turn 1", "answer", "P", "A", "common", "diverges in"):
        table.add_column(column, justify="right" if column in ("P", "A", "common") else "left")
    table.add_column("generated -> re-rendered")
    table.add_column("sent back")
    table.add_column("blocks", justify="right")
    for r in rows:
        where = r.diverges_in or "-"
        shown = f"{_joined(r.generated)} -> {_joined(r.rerendered)}" if r.diverges_in else ""
        blocks = f"{r.reusable_blocks}/{r.ideal_blocks}"
        sent = repr(r.sent_back[:12]) + "…" if r.sent_back_differs else "the text"
        table.add_row(
            r.template,
            r.conversation,
            r.answer,
            str(r.prompt_tokens),
            str(r.answer_tokens),
            str(r.common_tokens),
            where,
            shown,
            sent,
            blocks,
        )
    return table


def _joined(pieces: Sequence[str]) -> str:
    return "|".join(repr(p)[1:-1] for p in pieces)


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    rows = run(formats())
    config = {"block_tokens": BLOCK_TOKENS, "next_user_message": NEXT["content"]}
    console.print("[bold]chat_reuse[/bold]  " + "  ".join(f"{k}={v!r}" for k, v in config.items()))
    console.print(_table(rows))
    results = summary(rows)
    for key, value in results.items():
        console.print(f"{key}: {value:.3f}")
    if args.json is not None:
        payload = {
            "benchmark": "chat_reuse",
            "config": config,
            "results": results,
            "rows": [asdict(r) for r in rows],
            "host": {"python": platform.python_version(), "machine": platform.machine()},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
