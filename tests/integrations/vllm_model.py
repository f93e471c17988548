"""The small random-weight Llama the vLLM tests run, as a folder vLLM's OpenAI server
loads: config, weights and a tokenizer (``tokenizer.json`` + ``tokenizer_config.json``).

The tokenizer is a word-level one: token ``i`` (3 to 255) is the word ``w<i>``, 0 to 2
are ``<unk>``, ``<s>`` and ``</s>``, and words are split on whitespace, so a prompt of N
words is exactly N tokens (no BOS is added) and an answer decodes to words again. Its
chat template joins the messages' contents, so a chat's tokens are its messages' words.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from tests.engine.checkpoints import LLAMA, write_checkpoint

VOCAB = 256
# head_dim 32: the smallest vLLM's CPU attention takes
MODEL = dict(
    LLAMA,
    vocab_size=VOCAB,
    hidden_size=128,
    intermediate_size=256,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    bos_token_id=1,
    eos_token_id=2,
)

CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"


def write_model(folder: Path) -> Path:
    """The checkpoint folder, with a tokenizer vLLM's server can load."""
    write_checkpoint(folder, MODEL)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # words joined by spaces
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def words(num_tokens: int, seed: int) -> str:
    """A prompt of exactly ``num_tokens`` tokens (random words, never a special one)."""
    rng = random.Random(seed)
    return " ".join(f"w{rng.randrange(3, VOCAB)}" for _ in range(num_tokens))
