"""The engine benchmark's settings (``bench.engine`` and its ITL part ``bench.engine_itl``;
each figure's method is in ``bench.engine``'s docstring)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.models import ModelShape

MiB = 1 << 20


ENGINE_MODEL = ModelShape(  # a 4k prefill takes over a second here
    hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=2, intermediate_size=1408
)


@dataclass(frozen=True, slots=True)
class EngineBenchConfig:
    model: ModelShape = ENGINE_MODEL
    prompt_lengths: tuple[int, ...] = (1024, 4096)
    cached_percents: tuple[int, ...] = (0, 50, 90)
    ttft_repeats: int = 5
    decode_batches: tuple[int, ...] = (1, 8, 32)
    decode_prompt_tokens: int = 256
    decode_max_tokens: int = 128
    itl_streams: int = 8
    itl_prompt_tokens: int = 32
    itl_long_tokens: int = 4096
    itl_warmup_tokens: int = 8
    itl_tokens: int = 100  # measured tokens per stream and phase
    itl_rounds: int = 3  # loaded phases per arrangement
    cpu_check_s: float = 2.0
    kv_cache_bytes: int = 1024 * MiB
    store_bytes: int = 1024 * MiB


QUICK = EngineBenchConfig(ttft_repeats=3, decode_max_tokens=32, itl_tokens=20, itl_rounds=2)
