"""Rotary position embeddings, with the scalings checkpoints configure.

``rope_scaling`` in config.json picks the inverse frequencies (and an attention factor
that scales cos and sin), computed as the reference implementation does:

    default   inv_freq = 1 / theta^(2i / d)
    linear    inv_freq / factor                                  (positions stretched)
    llama3    low frequencies / factor, high ones kept, a smooth ramp between
    yarn      NTK-by-parts interpolation, cos/sin scaled by 0.1 ln(factor) + 1

"dynamic" NTK scaling changes with the sequence length, which a prefix cache cannot
follow (cached keys would have been rotated differently), so it is refused.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from engine.errors import EngineError
from engine.model.config import ModelConfig


class UnsupportedRope(EngineError, ValueError):
    pass


def inverse_frequencies(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """(inv_freq of length head_dim / 2, attention scaling) for ``config``."""
    dim, theta = config.head_dim, config.rope_theta
    base = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling: dict[str, Any] = dict(config.rope_scaling or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return base, 1.0
    if kind == "linear":
        return base / float(scaling["factor"]), 1.0
    if kind == "llama3":
        return _llama3(base, scaling), 1.0
    if kind == "yarn":
        return _yarn(config, scaling)
    raise UnsupportedRope(
        f"rope_scaling type {kind!r} is not supported (default, linear, llama3, yarn)"
    )


def _llama3(inv_freq: torch.Tensor, s: dict[str, Any]) -> torch.Tensor:
    factor = float(s["factor"])
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_context = float(s["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn(config: ModelConfig, s: dict[str, Any]) -> tuple[torch.Tensor, float]:
    dim, base = config.head_dim, config.rope_theta
    factor = float(s["factor"])
    old_context = float(s.get("original_max_position_embeddings") or config.max_position_embeddings)
    attention = s.get("attention_factor")
    if attention is None:
        attention = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    beta_fast, beta_slow = float(s.get("beta_fast", 32)), float(s.get("beta_slow", 1))

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(old_context / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = float(max(low, 0)), float(min(high, dim - 1))
    if low == high:
        high += 0.001
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation_factor = 1 - ramp
    inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
    return inv_freq, float(attention)


class Rotary:
    """cos and sin for any positions, and their application to q and k."""

    def __init__(self, config: ModelConfig, device: torch.device | str) -> None:
        inv_freq, self.scaling = inverse_frequencies(config)
        self.inv_freq = inv_freq.to(device)

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.to(self.inv_freq.device).float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x``: [tokens, heads, head_dim]; ``cos``/``sin``: [tokens, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]
