"""Calibrating a GPU cost profile: time a random-weight Llama-3-8B-shaped model's prefill
and decode steps on the local GPU and write them as a profile's ``samples``.

The model is plain eager PyTorch in bf16 (no CUDA graphs, no fused kernels beyond
``scaled_dot_product_attention``): 32 layers, hidden 4096, 32 query and 8 KV heads of
128, SwiGLU 14336, vocabulary 128256, RoPE. Weights are random (timing does not depend
on their values). Measured, with CUDA events, median of several runs after warm-up:

* prefill: ``u`` new tokens on top of ``c`` cached ones (the cached K/V are random
  tensors of the right shape), logits of the last token only: samples
  ``[u, c, seconds]``;
* decode: one step of ``b`` sequences of ``ctx`` tokens each (grouped-query attention
  over the cache, logits of every sequence): samples ``[b, b * ctx, seconds]``.

Output: a JSON object in the shape ``engine/sim/profiles.py`` fits on load (``samples``),
plus the device, torch version and the raw timings. To ship it as a profile, copy it into
``engine/sim/profiles/`` and add ``name``, ``model``, ``hardware``, ``gpus_per_instance``,
``sources`` and ``uncertainty`` (``llama3-8b-h200-measured.json`` came from this script).
Device time: about a minute on an H200 once the machine is up.

Known limits (they are in that profile's uncertainty): attention runs on 3-D tensors, for
which PyTorch picks its unfused kernel (4-D ``[batch, heads, tokens, dim]`` inputs would
get FlashAttention), and decode runs eagerly, launch-bound without CUDA graphs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 32, 4096, 32, 8, 128, 14336, 128256
PREFILL_CASES = [
    (512, 0),
    (1024, 0),
    (2048, 0),
    (4096, 0),
    (8192, 0),
    (1024, 4096),
    (2048, 6144),
    (512, 7680),
    (4096, 4096),
]
DECODE_CASES = [
    (1, 1024),
    (1, 8192),
    (8, 2048),
    (16, 4096),
    (32, 1024),
    (32, 4096),
    (64, 2048),
    (128, 1024),
    (128, 2048),
]


def _weights(device: torch.device) -> list[dict[str, torch.Tensor]]:
    def w(rows: int, cols: int) -> torch.Tensor:
        return torch.empty(rows, cols, device=device, dtype=torch.bfloat16).normal_(0, 0.02)

    return [
        {
            "qkv": w(HIDDEN, (HEADS + 2 * KV_HEADS) * HEAD_DIM),
            "o": w(HEADS * HEAD_DIM, HIDDEN),
            "up": w(HIDDEN, 2 * FFN),
            "down": w(FFN, HIDDEN),
            "n1": torch.ones(HIDDEN, device=device, dtype=torch.bfloat16),
            "n2": torch.ones(HIDDEN, device=device, dtype=torch.bfloat16),
        }
        for _ in range(LAYERS)
    ]


def _rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    var = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(var + 1e-5)).to(x.dtype) * weight


def _rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    half = HEAD_DIM // 2
    freqs = 1.0 / (500000.0 ** (torch.arange(half, device=x.device, dtype=torch.float32) / half))
    angles = positions.float()[:, None] * freqs[None, :]
    cos = angles.cos().to(x.dtype)[:, None, :]  # broadcast over heads
    sin = angles.sin().to(x.dtype)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def _mlp(h: torch.Tensor, layer: dict[str, torch.Tensor]) -> torch.Tensor:
    gate, up = (_rms(h, layer["n2"]) @ layer["up"]).chunk(2, dim=-1)
    return h + (F.silu(gate) * up) @ layer["down"]


class Model(NamedTuple):
    layers: list[dict[str, torch.Tensor]]
    embed: torch.Tensor
    head: torch.Tensor


def prefill(
    model: Model, new: int, cached: int, cache_k: torch.Tensor, cache_v: torch.Tensor
) -> torch.Tensor:
    layers, embed, head = model
    device = embed.device
    h = embed[torch.randint(0, VOCAB, (new,), device=device)]
    positions = torch.arange(cached, cached + new, device=device)
    mask = None
    if cached:
        keys = torch.arange(cached + new, device=device)
        mask = keys[None, :] <= positions[:, None]
    for layer in layers:
        qkv = _rms(h, layer["n1"]) @ layer["qkv"]
        q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
        q = _rope(q.view(new, HEADS, HEAD_DIM), positions).transpose(0, 1)
        k = _rope(k.view(new, KV_HEADS, HEAD_DIM), positions).transpose(0, 1)
        v = v.view(new, KV_HEADS, HEAD_DIM).transpose(0, 1)
        if cached:
            k = torch.cat([cache_k[:, :cached], k], dim=1)
            v = torch.cat([cache_v[:, :cached], v], dim=1)
        k = k.repeat_interleave(HEADS // KV_HEADS, dim=0)
        v = v.repeat_interleave(HEADS // KV_HEADS, dim=0)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        h = h + attn.transpose(0, 1).reshape(new, HEADS * HEAD_DIM) @ layer["o"]
        h = _mlp(h, layer)
    return h[-1:] @ head


def decode(model: Model, batch: int, cache_k: torch.Tensor, cache_v: torch.Tensor) -> torch.Tensor:
    layers, embed, head = model
    device = embed.device
    h = embed[torch.randint(0, VOCAB, (batch,), device=device)]
    positions = torch.full((batch,), cache_k.shape[2], device=device)
    group = HEADS // KV_HEADS
    for layer in layers:
        qkv = _rms(h, layer["n1"]) @ layer["qkv"]
        q = qkv[:, : HEADS * HEAD_DIM].view(batch, HEADS, HEAD_DIM)
        q = _rope(q, positions).view(batch, KV_HEADS, group, HEAD_DIM)  # GQA: 4 queries a KV head
        attn = F.scaled_dot_product_attention(q, cache_k, cache_v)
        h = h + attn.reshape(batch, HEADS * HEAD_DIM) @ layer["o"]
        h = _mlp(h, layer)
    return h @ head


def _time(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    device = torch.device("cuda")
    started = time.time()
    torch.manual_seed(0)
    with torch.inference_mode():
        embed = torch.empty(VOCAB, HIDDEN, device=device, dtype=torch.bfloat16).normal_(0, 0.02)
        head = torch.empty(HIDDEN, VOCAB, device=device, dtype=torch.bfloat16).normal_(0, 0.02)
        model = Model(_weights(device), embed, head)
        longest = max(c for _, c in PREFILL_CASES)
        ck = torch.randn(KV_HEADS, longest, HEAD_DIM, device=device, dtype=torch.bfloat16)
        cv = torch.randn_like(ck)
        prefill_samples = []
        for new, cached in PREFILL_CASES:
            seconds = _time(lambda n=new, c=cached: prefill(model, n, c, ck, cv), args.repeats)
            prefill_samples.append([new, cached, seconds])
            print(f"prefill {new} on {cached}: {seconds * 1e3:.2f} ms", flush=True)
        decode_samples = []
        for batch, ctx in DECODE_CASES:
            k = torch.randn(batch, KV_HEADS, ctx, HEAD_DIM, device=device, dtype=torch.bfloat16)
            v = torch.randn_like(k)
            seconds = _time(lambda b=batch, k=k, v=v: decode(model, b, k, v), 3 * args.repeats)
            decode_samples.append([batch, batch * ctx, seconds])
            print(f"decode batch {batch} x {ctx}: {seconds * 1e3:.2f} ms", flush=True)
            del k, v
    out = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "model": "random-weight Llama-3-8B shape, bf16, eager PyTorch (no CUDA graphs)",
        "kv_bytes_per_token": LAYERS * 2 * KV_HEADS * HEAD_DIM * 2,
        "samples": {"prefill": prefill_samples, "decode": decode_samples},
        "seconds_total": time.time() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
