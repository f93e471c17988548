"""``strata-tiny-v1``: the small default model that ships with the engine.

It makes everything run offline (tests, demos, the CLI) with no checkpoint on disk. The
weights are random, so **the text it generates is meaningless**; it exists to exercise
the serving path (prefill, decode, the paged cache and the store) exactly as a real
checkpoint would.

- tokenizer: ``ByteTokenizer`` (UTF-8 bytes 0-255, then ``<|bos|>`` 256, ``<|eos|>`` 257,
  role markers ``<|system|>`` ``<|user|>`` ``<|assistant|>`` 258-260, ``<|end|>`` 261;
  vocabulary 320).
- shape: Llama, hidden 128, 4 layers, 4 heads, 2 KV heads, head_dim 32, MLP 256, 2,048
  positions, output head tied to the embeddings (about 0.6 M parameters).
- weights: initialised as transformers initialises a Llama (normal, std 0.02; norms 1)
  from a ``torch.Generator`` seeded with ``SEED``, in parameter order, on the CPU, in
  float32, then cast. Same weights in every run and process; builds in milliseconds.
- chat: ``CHAT_TEMPLATE`` wraps each turn as ``<|role|>\\ncontent<|end|>\\n`` after a
  ``<|bos|>``; generation stops at ``<|end|>`` or ``<|eos|>``.
"""

from __future__ import annotations

import torch

from engine.model.config import Architecture, ModelConfig
from engine.model.llama import LlamaForCausalLM
from engine.tokenizer import BOS_ID, VOCAB_SIZE, ByteTokenizer

MODEL_ID = "strata-tiny-v1"
SEED = 20240601
INIT_STD = 0.02

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('strata-tiny-v1 knows the roles system, user and assistant') }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = {"bos_token": "<|bos|>", "eos_token": "<|eos|>"}

CONFIG = ModelConfig(
    architecture=Architecture.LLAMA,
    vocab_size=VOCAB_SIZE,
    hidden_size=128,
    intermediate_size=256,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    bos_token_id=BOS_ID,
    eos_token_ids=ByteTokenizer().eos_token_ids,
    torch_dtype="float32",
    model_id=MODEL_ID,
)


def build_tiny_model(
    *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> LlamaForCausalLM:
    """The tiny model in eval mode, with its fixed random weights."""
    with torch.device("meta"):
        model = LlamaForCausalLM(CONFIG)
    model.to_empty(device="cpu")
    model.lm_head.weight = model.model.embed_tokens.weight
    generator = torch.Generator(device="cpu").manual_seed(SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, INIT_STD, generator=generator)
    return model.to(device=device, dtype=dtype).requires_grad_(False).eval()
