"""Tokenizers: text to token ids and back, and streaming detokenization.

``Tokenizer`` is what the engine needs from one. Two implement it:

- ``ByteTokenizer``: token id = UTF-8 byte value (0-255), then the tiny model's special
  tokens. Needs no vocabulary file, so everything runs offline; any text round-trips::

      0 .. 255   bytes           258 <|system|>      261 <|end|>   (end of a turn)
      256 <|bos|>                259 <|user|>        262 .. 319 <|reserved_N|>
      257 <|eos|>                260 <|assistant|>

- ``HFTokenizer``: a checkpoint's ``tokenizer.json`` (the ``tokenizers`` library).

Special-token strings inside the text encode to their ids (as Hugging Face tokenizers do),
so a rendered chat template tokenizes to its role markers. Encode a rendered chat template
with ``add_special_tokens=False``: the template writes its own BOS.

``Detokenizer`` turns ids arriving one by one into text pieces whose concatenation equals
decoding all ids at once. A piece is held back while it ends in U+FFFD (an incomplete
UTF-8 sequence: a multi-byte character split across tokens); ``flush`` releases the rest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

import tokenizers

BYTE_VOCAB_SIZE = 256
BOS_TOKEN, EOS_TOKEN, END_TOKEN = "<|bos|>", "<|eos|>", "<|end|>"
SPECIAL_TOKENS: tuple[str, ...] = (
    BOS_TOKEN,
    EOS_TOKEN,
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    END_TOKEN,
)
VOCAB_SIZE = 320  # bytes, the special tokens above, reserved ids up to here
BOS_ID, EOS_ID, END_ID = 256, 257, 261


class Tokenizer(Protocol):
    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_token_id(self) -> int | None: ...

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


class ByteTokenizer:
    """Bytes plus special tokens. ``add_bos`` prepends ``<|bos|>`` when asked for special
    tokens (off by default, so ``encode`` is exactly the text's UTF-8 bytes)."""

    def __init__(self, *, add_bos: bool = False) -> None:
        self.add_bos = add_bos
        reserved = (
            f"<|reserved_{i}|>" for i in range(VOCAB_SIZE - BYTE_VOCAB_SIZE - len(SPECIAL_TOKENS))
        )
        self._names = (*SPECIAL_TOKENS, *reserved)
        self._ids = {name: BYTE_VOCAB_SIZE + i for i, name in enumerate(self._names)}
        self._split = re.compile("(" + "|".join(re.escape(name) for name in self._names) + ")")

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    @property
    def bos_token_id(self) -> int:
        return BOS_ID

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return (EOS_ID, END_ID)

    def token_id(self, name: str) -> int:
        """The id of a special token, e.g. ``"<|user|>"``."""
        return self._ids[name]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [BOS_ID] if add_special_tokens and self.add_bos else []
        for i, piece in enumerate(self._split.split(text)):
            ids.extend([self._ids[piece]] if i % 2 else piece.encode("utf-8"))
        return ids

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        if any(not 0 <= t < VOCAB_SIZE for t in token_ids):
            raise ValueError(f"byte tokenizer ids are 0..{VOCAB_SIZE - 1}")
        parts: list[str] = []
        pending = bytearray()
        for t in token_ids:
            if t < BYTE_VOCAB_SIZE:
                pending.append(t)
                continue
            parts.append(pending.decode("utf-8", errors="replace"))
            pending.clear()
            if not skip_special_tokens:
                parts.append(self._names[t - BYTE_VOCAB_SIZE])
        parts.append(pending.decode("utf-8", errors="replace"))
        return "".join(parts)


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` from a checkpoint's ``tokenizer.json``.

    BOS follows ``tokenizer.json``'s post-processor, as transformers 5 does (it ignores
    ``add_bos_token`` from tokenizer_config.json when tokenizer.json exists). One case
    differs: a tokenizer.json with no post-processor and an explicit ``add_bos_token: true``
    gets the BOS prepended, as transformers 4's Llama tokenizer did; a model trained with a
    BOS is served with one.
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token_ids: Sequence[int] = (),
        add_bos_token: bool = False,
    ) -> None:
        self._tokenizer = tokenizer
        self._bos_id = tokenizer.token_to_id(bos_token) if bos_token else None
        self._eos_ids = tuple(eos_token_ids)
        self._prepend_bos = bool(
            add_bos_token and self._bos_id is not None and tokenizer.post_processor is None
        )

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def bos_token_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos_ids

    def token_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self._prepend_bos and self._bos_id is not None:
            ids.insert(0, self._bos_id)
        return ids

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)


class Detokenizer:
    """Text from ids pushed one at a time (for streaming a generation).

    Decodes a short window: ids from ``prefix`` (the start of the last emitted piece) to
    the end, and emits what it adds beyond the text of ``prefix:read``. Decoding with the
    previous piece as context keeps what a tokenizer does at the start of a decode (e.g.
    SentencePiece dropping a leading space) from leaking into the middle of the text. Cost
    per id: one decode of a few ids. ``context`` (e.g. the prompt's ids) is not emitted;
    it only gives the first pieces their left context.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        skip_special_tokens: bool = True,
        context: Sequence[int] = (),
    ) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids = list(context)
        self._read = len(self._ids)
        self._prefix = max(0, self._read - 5)

    def push(self, token_id: int) -> str:
        """Add one id; returns the newly completed text (often ``""`` mid-character)."""
        self._ids.append(token_id)
        done = self._decode(self._prefix, self._read)
        text = self._decode(self._prefix, len(self._ids))
        if len(text) <= len(done) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(done) :]

    def flush(self) -> str:
        """Whatever is held back (an incomplete character decodes as U+FFFD)."""
        done = self._decode(self._prefix, self._read)
        text = self._decode(self._prefix, len(self._ids))
        self._prefix = self._read = len(self._ids)
        return text[len(done) :]

    def _decode(self, start: int, stop: int) -> str:
        return self._tokenizer.decode(self._ids[start:stop], skip_special_tokens=self._skip)
