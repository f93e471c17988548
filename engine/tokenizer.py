"""Byte-level tokenizer: token id = UTF-8 byte value (0-255).

The tiny default model uses it, so everything runs offline without a vocabulary file.
Any text round-trips exactly; ids outside 0-255 are refused on decode.
"""

from __future__ import annotations

VOCAB_SIZE = 256


class ByteTokenizer:
    vocab_size = VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: list[int]) -> str:
        if any(not 0 <= t < VOCAB_SIZE for t in token_ids):
            raise ValueError(f"byte tokens are 0..{VOCAB_SIZE - 1}")
        return bytes(token_ids).decode("utf-8", errors="replace")
