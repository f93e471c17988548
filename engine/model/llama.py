"""A compact Llama-family decoder (Llama, Mistral, Qwen2) over the paged KV cache.

One forward pass serves a batch of sequences, each bringing new tokens to append after
the tokens its pages already hold::

    SeqSlice(tokens=[t_start .. t_start+n), start, page_table)

Projections, norms and the MLP run on all new tokens at once; each layer writes the new
K and V into the sequence's pages, then attends over the whole context gathered from the
pages (causal, with Mistral's sliding window when configured). Decode steps (one new
token per sequence) share one attention call per layer over padded contexts. Numerics
follow the reference implementation: RMSNorm in float32, RoPE on q and k, SDPA with
1/sqrt(head_dim), grouped-query attention by repeating K/V heads.

``LayerHooks`` let a caller overlap work with compute: ``before_layer(i)`` runs before
layer i reads the cache (wait until a cached prefix's layer i has arrived),
``after_layer(i)`` after layer i wrote its new K/V (ship layer i while i + 1 computes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from engine.kv.cache import PagedKVCache
from engine.model.config import ModelConfig
from engine.model.rope import Rotary, apply_rotary


@dataclass
class SeqSlice:
    tokens: torch.Tensor  # [n] int64: the new tokens
    start: int  # how many tokens of this sequence the pages already hold
    page_table: Sequence[int]  # pages covering positions [0, start + n)


class LayerHooks(Protocol):
    def before_layer(self, layer: int) -> None: ...

    def after_layer(self, layer: int) -> None: ...


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, kv, d, bias = (
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
            config.attention_bias,
        )
        self.num_heads, self.num_kv_heads, self.head_dim = h, kv, d
        self.q_proj = nn.Linear(config.hidden_size, h * d, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, kv * d, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, kv * d, bias=bias)
        self.o_proj = nn.Linear(h * d, config.hidden_size, bias=False)
        self.window = config.sliding_window


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return out


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Backbone(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """Parameter names follow the checkpoints' (``model.layers.0.self_attn.q_proj.weight``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self._rotary: Rotary | None = None

    def rotary(self) -> Rotary:
        """The rotary tables on the weights' device, made again when the weights move;
        the first call on a device also picks its attention kernels."""
        device = self.model.embed_tokens.weight.device
        if self._rotary is None or self._rotary.inv_freq.device != device:
            self._rotary = Rotary(self.config, device)
            _choose_attention_kernels(device)
        return self._rotary

    @torch.inference_mode()
    def forward(
        self,
        seqs: Sequence[SeqSlice],
        cache: PagedKVCache,
        *,
        all_logits: bool = False,
        hooks: LayerHooks | None = None,
    ) -> list[torch.Tensor]:
        """Logits (float32) per sequence: of its last new token ``[vocab]``, or of every
        new token ``[n, vocab]`` with ``all_logits``."""
        device = self.model.embed_tokens.weight.device
        tokens = torch.cat([s.tokens for s in seqs]).to(device)
        positions = torch.cat([torch.arange(s.start, s.start + len(s.tokens)) for s in seqs])
        slots = torch.cat([cache.slots(s.page_table, s.start, len(s.tokens)) for s in seqs])
        slots = slots.to(cache.pages.device)  # once, not once a layer
        x = self.model.embed_tokens(tokens)
        cos, sin = self.rotary().cos_sin(positions, x.dtype)
        plan = _AttentionPlan.build(seqs, cache)
        layers: list[DecoderLayer] = list(self.model.layers)  # type: ignore[arg-type]
        for i, layer in enumerate(layers):
            if hooks is not None:
                hooks.before_layer(i)
            x = x + self._attention(
                i,
                layer.self_attn,
                layer.input_layernorm(x),
                cos=cos,
                sin=sin,
                slots=slots,
                plan=plan,
                cache=cache,
            )
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            if hooks is not None:
                hooks.after_layer(i)
        x = self.model.norm(x)
        out, offset = [], 0
        for s in seqs:
            n = len(s.tokens)
            rows = x[offset : offset + n] if all_logits else x[offset + n - 1 : offset + n]
            logits = self.lm_head(rows).float()
            out.append(logits if all_logits else logits[0])
            offset += n
        return out

    def _attention(
        self,
        index: int,
        attn: Attention,
        x: torch.Tensor,
        *,
        cos: torch.Tensor,
        sin: torch.Tensor,
        slots: torch.Tensor,
        plan: _AttentionPlan,
        cache: PagedKVCache,
    ) -> torch.Tensor:
        n = x.shape[0]
        q = apply_rotary(attn.q_proj(x).view(n, attn.num_heads, attn.head_dim), cos, sin)
        k = apply_rotary(attn.k_proj(x).view(n, attn.num_kv_heads, attn.head_dim), cos, sin)
        v = attn.v_proj(x).view(n, attn.num_kv_heads, attn.head_dim)
        cache.write(index, slots, k, v)
        out = plan.attend(index, q, cache, attn.window, attn.num_heads // attn.num_kv_heads)
        projected: torch.Tensor = attn.o_proj(out.reshape(n, attn.num_heads * attn.head_dim))
        return projected


@dataclass
class _AttentionPlan:
    """Which cache slots each query attends to, worked out once per forward.

    Slot indices and masks are built on the host once and moved to the cache's device
    once, so no layer waits on a host-to-device copy (on a GPU each such copy is a sync).
    Masks depend on the attention window, so they are kept per window.
    """

    seqs: Sequence[SeqSlice]
    context_slots: list[torch.Tensor]  # per sequence: slots of positions [0, start + n)
    decode: bool  # every sequence brings exactly one token: one batched call per layer
    padded: torch.Tensor | None  # batched decode: [B, longest] slots, padding 0
    _masks: dict[int | None, list[torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def build(cls, seqs: Sequence[SeqSlice], cache: PagedKVCache) -> _AttentionPlan:
        device = cache.pages.device
        context = [cache.slots(s.page_table, 0, s.start + len(s.tokens)) for s in seqs]
        decode = all(len(s.tokens) == 1 for s in seqs)
        padded = None
        if decode and len(seqs) > 1:
            padded = torch.zeros(len(context), max(len(c) for c in context), dtype=torch.long)
            for row, slots in enumerate(context):
                padded[row, : len(slots)] = slots
            padded = padded.to(device)
            context = []
        else:
            context = [c.to(device) for c in context]
        return cls(seqs, context, decode, padded)

    def attend(
        self, layer: int, q: torch.Tensor, cache: PagedKVCache, window: int | None, groups: int
    ) -> torch.Tensor:
        if self.padded is not None:
            return self._attend_decode(layer, q, cache, window, groups)
        masks = self._masks.get(window)
        if masks is None:
            masks = [
                _mask(seq.start, len(seq.tokens), len(slots), window, q.device)
                for seq, slots in zip(self.seqs, self.context_slots, strict=True)
            ]
            self._masks[window] = masks
        outs, offset = [], 0
        for seq, slots, mask in zip(self.seqs, self.context_slots, masks, strict=True):
            n = len(seq.tokens)
            k, v = cache.gather(layer, slots)  # [T, kv_heads, dim]
            outs.append(_sdpa(q[offset : offset + n], k, v, mask, groups))
            offset += n
        return torch.cat(outs)

    def _decode_mask(self, window: int | None, device: torch.device) -> torch.Tensor:
        """[B, 1, 1, longest] bool: each row's own context (within the window)."""
        masks = self._masks.get(window)
        if masks is None:
            assert self.padded is not None
            valid = torch.zeros(self.padded.shape, dtype=torch.bool)
            for row, seq in enumerate(self.seqs):
                length = seq.start + 1
                valid[row, max(0, length - window) if window else 0 : length] = True
            masks = [valid.to(device)[:, None, None, :]]
            self._masks[window] = masks
        return masks[0]

    def _attend_decode(
        self, layer: int, q: torch.Tensor, cache: PagedKVCache, window: int | None, groups: int
    ) -> torch.Tensor:
        assert self.padded is not None
        k, v = cache.gather(layer, self.padded)  # [B, T, kv_heads, dim]
        qb = q[:, :, None, :]  # [B, heads, 1, dim]
        kb = k.transpose(1, 2).repeat_interleave(groups, dim=1)
        vb = v.transpose(1, 2).repeat_interleave(groups, dim=1)
        mask = self._decode_mask(window, q.device)
        return F.scaled_dot_product_attention(qb, kb.to(q.dtype), vb.to(q.dtype), attn_mask=mask)[
            :, :, 0
        ]


def _choose_attention_kernels(device: torch.device) -> None:
    """Leave cuDNN's SDPA kernel out on CUDA devices (a process-wide torch setting).

    On an H200 (torch 2.11, CUDA 13) torch picked cuDNN attention for the engine's masked
    calls and each call spent ~10 ms of host time for ~50 us of device time (profiled by
    ``bench.cuda --part profile``): the engine's shapes change every step (the context
    grows), and cuDNN prepares a plan per shape. Flash, memory-efficient and math kernels
    remain, as torch orders them.
    """
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


def _mask(start: int, n: int, total: int, window: int | None, device: torch.device) -> torch.Tensor:
    """[n, total] bool: query at position start + i sees keys at positions <= start + i
    (and, with a window, > start + i - window)."""
    q_pos = torch.arange(start, start + n, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    visible = k_pos <= q_pos
    if window:
        visible &= k_pos > q_pos - window
    return visible


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, groups: int
) -> torch.Tensor:
    """q: [n, heads, dim]; k, v: [T, kv_heads, dim] -> [n, heads, dim]."""
    qh = q.transpose(0, 1)[None]  # [1, heads, n, dim]
    kh = k.transpose(0, 1).repeat_interleave(groups, dim=0)[None].to(q.dtype)
    vh = v.transpose(0, 1).repeat_interleave(groups, dim=0)[None].to(q.dtype)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask[None, None])
    return out[0].transpose(0, 1)
