"""The exactness contract: our model, loaded by our loader, computes what transformers does.

For each architecture variant a tiny random transformers model (fixed seed; weights,
biases and norm scales all randomised so every tensor matters) is saved with
``save_pretrained`` (safetensors; some sharded) next to a word-level tokenizer.json, loaded
with ``engine.model.loader.load_model``, and compared:

(a) float32 logits within 1e-4 of transformers' for prompts of 1, 7, 16 and 37 tokens,
    computed in one forward, in chunks over 8-token pages (boundaries off the pages), and
    with all prompts prefilled together in one forward;
(b) 32 greedy tokens identical to ``generate(do_sample=False)`` (prefill, then one token
    per step over the paged cache);
(c) several sequences decoding together (the padded batched attention) equal to each
    decoding alone: same tokens, logits within 1e-5;
(d) bfloat16: logits within 0.1 of transformers' bfloat16 model, and no further from the
    float32 reference than transformers' own bfloat16 is (plus one bf16 step, 1/64); 32
    greedy tokens where every choice is transformers' argmax or within 1/16 of it (bf16
    logits tie often, so the sequences themselves may part: each of our choices is checked
    against transformers' bf16 logits on our own continuation).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from engine.kv.cache import PagedKVCache
from engine.model.llama import LlamaForCausalLM, SeqSlice
from engine.model.loader import LoadedModel, load_model
from tests.device import DEVICE

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB, PAGE_TOKENS = 300, 8
PROMPT_LENGTHS = (1, 7, 16, 37)
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
LINEAR_ROPE = {"rope_type": "linear", "factor": 4.0}
YARN_ROPE = {
    "rope_type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 32,
    "mscale": 1.0,
    "mscale_all_dim": 0.5,
}
# name: (config class, extra config, max shard size or None for one file)
CASES: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "llama": ("LlamaConfig", {}, None),
    "llama-rope-llama3": ("LlamaConfig", {"rope_scaling": LLAMA3_ROPE}, None),
    "llama-rope-linear": (
        "LlamaConfig",
        {"rope_scaling": {"rope_type": "linear", "factor": 4.0}},
        None,
    ),
    "llama-rope-yarn-mscale": ("LlamaConfig", {"rope_scaling": YARN_ROPE}, None),
    "llama-rope-yarn-untruncated": (
        "LlamaConfig",
        {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "truncate": False}},
        None,
    ),
    "mistral-window24": ("MistralConfig", {"sliding_window": 24}, "60KB"),
    "qwen2": ("Qwen2Config", {}, "100KB"),
    "qwen2-tied": ("Qwen2Config", {"tie_word_embeddings": True}, None),
}
BF16_CASES = ("llama", "mistral-window24", "qwen2")


@dataclasses.dataclass
class Reference:
    name: str
    hf: Any  # the transformers model (float32, eval)
    ours: LoadedModel
    folder: Path


def _randomise(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(0.8 + 0.4 * torch.rand(param.shape, generator=generator))
            else:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def _save_tokenizer(folder: Path) -> None:
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module", params=list(CASES))
def ref(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    config_class, extra, shard = CASES[request.param]
    config = getattr(transformers, config_class)(**COMMON, **extra)
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    _randomise(hf, seed=len(request.param))
    hf.to(DEVICE)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder, max_shard_size=shard or "50GB")
    _save_tokenizer(folder)
    if shard:
        assert (folder / "model.safetensors.index.json").is_file()
    return Reference(request.param, hf, load_model(folder, device=DEVICE), folder)


def _prompt(length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(
        0, VOCAB, (length,), generator=torch.Generator().manual_seed(seed + length)
    )


def _cache(
    model: LlamaForCausalLM, num_pages: int = 64, dtype: torch.dtype = torch.float32
) -> PagedKVCache:
    c = model.config
    return PagedKVCache(
        num_pages=num_pages,
        page_tokens=PAGE_TOKENS,
        num_layers=c.num_layers,
        num_kv_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        dtype=dtype,
        device=DEVICE,
    )


def _hf_logits(hf: Any, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(tokens[None].to(DEVICE)).logits[0].float()


def _chunked_logits(
    model: LlamaForCausalLM, tokens: torch.Tensor, cuts: Sequence[int]
) -> torch.Tensor:
    cache = _cache(model)
    pages = cache.allocate(cache.pages_for(len(tokens)))
    bounds = [0, *(c for c in cuts if 0 < c < len(tokens)), len(tokens)]
    outs = [
        model([SeqSlice(tokens[a:b], a, pages)], cache, all_logits=True)[0]
        for a, b in itertools.pairwise(bounds)
    ]
    return torch.cat(outs)


def greedy(
    model: LlamaForCausalLM, prompt: torch.Tensor, num_tokens: int, dtype: torch.dtype
) -> list[int]:
    """Prefill, then one token per step, always the argmax."""
    cache = _cache(model, dtype=dtype)
    pages = cache.allocate(cache.pages_for(len(prompt) + num_tokens))
    logits = model([SeqSlice(prompt, 0, pages)], cache)[0]
    out: list[int] = []
    for step in range(num_tokens):
        out.append(int(logits.argmax()))
        logits = model([SeqSlice(torch.tensor(out[-1:]), len(prompt) + step, pages)], cache)[0]
    return out


def _hf_greedy(hf: Any, prompt: torch.Tensor, num_tokens: int) -> list[int]:
    hf.generation_config.eos_token_id = None  # always 32 tokens: never stop early
    out = hf.generate(
        prompt[None].to(DEVICE), do_sample=False, max_new_tokens=num_tokens, pad_token_id=0
    )
    return [int(t) for t in out[0, len(prompt) :]]


def test_logits_match_in_one_forward_and_in_chunks(ref: Reference) -> None:
    model = ref.ours.model
    worst = 0.0
    for length in PROMPT_LENGTHS:
        tokens = _prompt(length)
        expected = _hf_logits(ref.hf, tokens)
        for cuts in ([], [5, 11, 30], [3, 4, 9, 24, 25]):
            got = _chunked_logits(model, tokens, cuts)
            assert got.shape == expected.shape
            worst = max(worst, float((got - expected).abs().max()))
    assert worst < 1e-4, worst
    print(f"{ref.name}: max |logit diff| float32 {worst:.2e}")


def test_prefilling_many_sequences_in_one_forward(ref: Reference) -> None:
    model = ref.ours.model
    cache = _cache(model)
    prompts = [_prompt(n) for n in PROMPT_LENGTHS]
    seqs = [SeqSlice(p, 0, cache.allocate(cache.pages_for(len(p)))) for p in prompts]
    outs = model(seqs, cache, all_logits=True)
    for prompt, got in zip(prompts, outs, strict=True):
        assert (got - _hf_logits(ref.hf, prompt)).abs().max() < 1e-4


@pytest.mark.parametrize("ref", ["mistral-window24"], indirect=True)
def test_sliding_window_is_exercised(ref: Reference) -> None:
    window = ref.ours.config.sliding_window
    assert window == 24
    unwindowed = LlamaForCausalLM(dataclasses.replace(ref.ours.config, sliding_window=None))
    unwindowed.to(DEVICE)
    unwindowed.load_state_dict(ref.ours.model.state_dict())
    tokens = _prompt(37)
    with_window = _chunked_logits(ref.ours.model, tokens, [])
    without = _chunked_logits(unwindowed, tokens, [])
    assert torch.equal(with_window[:window], without[:window])
    assert (with_window[window:] - without[window:]).abs().max() > 1e-3


@pytest.mark.parametrize("prompt_length", [7, 37])
def test_greedy_generation_equals_transformers(ref: Reference, prompt_length: int) -> None:
    prompt = _prompt(prompt_length)
    assert greedy(ref.ours.model, prompt, 32, torch.float32) == _hf_greedy(ref.hf, prompt, 32)


def test_batched_decode_equals_decoding_alone(ref: Reference) -> None:
    model, steps = ref.ours.model, 10
    prompts = [_prompt(n, seed=7) for n in (1, 16, 37, 5)]
    cache = _cache(model)
    tables = [cache.allocate(cache.pages_for(len(p) + steps)) for p in prompts]
    logits = model([SeqSlice(p, 0, t) for p, t in zip(prompts, tables, strict=True)], cache)
    together: list[list[int]] = [[] for _ in prompts]
    together_logits: list[list[torch.Tensor]] = [[] for _ in prompts]
    for step in range(steps):
        for i, row in enumerate(logits):
            together[i].append(int(row.argmax()))
            together_logits[i].append(row)
        seqs = [
            SeqSlice(torch.tensor(together[i][-1:]), len(p) + step, tables[i])
            for i, p in enumerate(prompts)
        ]
        logits = model(seqs, cache)
    for i, prompt in enumerate(prompts):
        assert together[i] == greedy(model, prompt, steps, torch.float32)
        alone = _alone_logits(model, prompt, together[i])
        assert (torch.stack(together_logits[i]) - alone).abs().max() < 1e-5


def _alone_logits(model: LlamaForCausalLM, prompt: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """Logits before each of ``tokens``, decoding this sequence alone."""
    cache = _cache(model)
    pages = cache.allocate(cache.pages_for(len(prompt) + len(tokens)))
    rows = [model([SeqSlice(prompt, 0, pages)], cache)[0]]
    for step, token in enumerate(tokens[:-1]):
        rows.append(model([SeqSlice(torch.tensor([token]), len(prompt) + step, pages)], cache)[0])
    return torch.stack(rows)


@pytest.mark.parametrize("ref", BF16_CASES, indirect=True)
def test_bfloat16_is_as_close_as_transformers_own(ref: Reference) -> None:
    ours = load_model(ref.folder, dtype=torch.bfloat16, device=DEVICE)
    assert ours.model.model.embed_tokens.weight.dtype == torch.bfloat16
    hf16 = copy.deepcopy(ref.hf).to(torch.bfloat16)
    tokens = _prompt(37)
    exact, theirs = _hf_logits(ref.hf, tokens), _hf_logits(hf16, tokens)
    cache = _cache(ours.model, dtype=torch.bfloat16)
    got = ours.model([SeqSlice(tokens, 0, cache.allocate(5))], cache, all_logits=True)[0]
    diff = float((got - theirs).abs().max())
    our_error, their_error = float((got - exact).abs().max()), float((theirs - exact).abs().max())
    print(
        f"{ref.name} bf16: max |logit diff| vs transformers bf16 {diff:.3f};"
        f" vs float32: ours {our_error:.3f}, theirs {their_error:.3f}"
    )
    assert diff < 0.1
    assert our_error <= their_error + 1 / 64
    _check_bf16_greedy(ours.model, hf16, _prompt(7))


def _check_bf16_greedy(model: LlamaForCausalLM, hf16: Any, prompt: torch.Tensor) -> None:
    tokens = greedy(model, prompt, 32, torch.bfloat16)
    full = torch.cat([prompt, torch.tensor(tokens)])
    theirs = _hf_logits(hf16, full)[len(prompt) - 1 : -1]  # their logits before each token
    chosen = theirs.gather(1, torch.tensor(tokens, device=theirs.device)[:, None])[:, 0]
    assert (theirs.max(dim=1).values - chosen).max() <= 1 / 16
    agree = sum(a == b for a, b in zip(tokens, _hf_greedy(hf16, prompt, 32), strict=True))
    print(f"bf16 greedy: {agree}/32 tokens equal to transformers' generate")
