"""The router's cost model: seconds as linear functions of work.

Three predictions, each linear in its coefficients so that it can be fitted by least
squares from measurements of the engine (or of a hardware profile, in simulation)::

    prefill_s(u, c)  = prefill_base + prefill_per_token * u + prefill_attention * u * (c + u/2)
    transfer_s(t)    = transfer_base + transfer_per_token * t              (0 when t = 0)
    tbt_s(b, ctx)    = decode_base + decode_per_seq * b + decode_per_context_token * ctx

``u`` tokens are computed on top of ``c`` cached ones: each new token attends to the cached
context and, causally, to half of the new ones on average, hence ``u * (c + u/2)`` token
pairs. ``t`` tokens of KV are moved between store nodes. ``b`` sequences decode in one
step whose attention reads ``ctx`` context tokens in all.

Fitting (``CostModel.fit``) is non-negative least squares, solved exactly by enumerating
supports: every subset of the (at most 3) columns gets an unconstrained least-squares
fit, fits with a negative coefficient are discarded, and the feasible one with the
smallest residual wins. The NNLS optimum is the unconstrained optimum on its own support,
so it is among the candidates. Cost: 2^3 tiny ``lstsq`` calls per part.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kvstore.errors import ConfigError

ABOUT = "about"  # the optional provenance field of a saved cost model


@dataclass(frozen=True, slots=True)
class CostModel:
    """Coefficients in seconds (per token, per token pair, per sequence); all >= 0."""

    prefill_base_s: float
    prefill_per_token_s: float
    prefill_attention_s: float  # per (new token x attended token) pair
    transfer_base_s: float
    transfer_per_token_s: float
    decode_base_s: float
    decode_per_seq_s: float
    decode_per_context_token_s: float

    def __post_init__(self) -> None:
        for name, value in self.to_dict().items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"CostModel.{name} must be a finite number >= 0, got {value}")

    # -- predictions ------------------------------------------------------------------

    def prefill_s(self, uncached: int, cached: int) -> float:
        """Seconds to compute ``uncached`` tokens after ``cached`` reused ones (0 for none)."""
        if uncached <= 0:
            return 0.0
        pairs = uncached * (cached + uncached / 2)
        return (
            self.prefill_base_s
            + self.prefill_per_token_s * uncached
            + self.prefill_attention_s * pairs
        )

    def transfer_s(self, tokens: int) -> float:
        """Seconds to move the KV of ``tokens`` tokens from one store node to another."""
        if tokens <= 0:
            return 0.0
        return self.transfer_base_s + self.transfer_per_token_s * tokens

    def tbt_s(self, batch: int, context_tokens: int) -> float:
        """Seconds per decode step of ``batch`` sequences holding ``context_tokens`` in all."""
        return (
            self.decode_base_s
            + self.decode_per_seq_s * batch
            + self.decode_per_context_token_s * context_tokens
        )

    # -- construction -----------------------------------------------------------------

    @classmethod
    def default(cls) -> CostModel:
        """Estimates for the tiny built-in model on a few CPU cores, used until profiling
        has run. Not measurements: a forward pass costs a few ms of Python and kernel
        launches, a token ~20 us, and a token's KV (2 KiB: 4 layers x K,V x 2 heads x 32
        dims x 4 bytes) moves at ~4 GB/s over TCP; so pulling a prefix is ~40x cheaper
        per token than recomputing it, as on real hardware."""
        return cls(
            prefill_base_s=4e-3,
            prefill_per_token_s=20e-6,
            prefill_attention_s=2e-9,
            transfer_base_s=0.5e-3,
            transfer_per_token_s=0.5e-6,
            decode_base_s=4e-3,
            decode_per_seq_s=0.2e-3,
            decode_per_context_token_s=5e-9,
        )

    @classmethod
    def fit(
        cls,
        prefill_samples: Sequence[tuple[int, int, float]],
        transfer_samples: Sequence[tuple[int, float]],
        decode_samples: Sequence[tuple[float, float, float]],
    ) -> CostModel:
        """Fit every coefficient by non-negative least squares (see the module docstring).

        Args:
            prefill_samples: ``(uncached, cached, seconds)`` per measured prefill.
            transfer_samples: ``(tokens, seconds)`` per measured transfer.
            decode_samples: ``(batch, context_tokens, seconds)`` per measured decode step
                (or means over a run of steps).

        Raises:
            ValueError: a part has fewer samples than coefficients, samples that do not
                vary enough to determine them, or a negative or non-finite value.
        """
        prefill = _nnls_fit(
            "prefill",
            [(1.0, u, u * (c + u / 2)) for u, c, _ in prefill_samples],
            [s for _, _, s in prefill_samples],
        )
        transfer = _nnls_fit(
            "transfer", [(1.0, t) for t, _ in transfer_samples], [s for _, s in transfer_samples]
        )
        decode = _nnls_fit(
            "decode",
            [(1.0, b, ctx) for b, ctx, _ in decode_samples],
            [s for _, _, s in decode_samples],
        )
        return cls(*prefill, *transfer, *decode)

    # -- persistence ------------------------------------------------------------------

    def to_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, object], source: str = "cost model") -> CostModel:
        """Raises ``ConfigError`` naming the first missing, unknown or invalid field. An
        ``about`` string (where the figures come from: machine, model, how measured) may
        stand beside the coefficients."""
        names = [f.name for f in dataclasses.fields(cls)]
        about = raw.get(ABOUT, "")
        if not isinstance(about, str):
            raise ConfigError(f"{source}.{ABOUT}", f"must be a string, got {about!r}")
        unknown = sorted(set(raw) - set(names) - {ABOUT})
        if unknown:
            raise ConfigError(f"{source}.{unknown[0]}", f"unknown field (fields: {names})")
        values: dict[str, float] = {}
        for name in names:
            key = f"{source}.{name}"
            if name not in raw:
                raise ConfigError(key, "missing")
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(key, f"must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ConfigError(key, f"must be a finite number >= 0, got {value!r}")
            values[name] = float(value)
        return cls(**values)

    def save(self, path: Path, about: str = "") -> None:
        """Write the coefficients as JSON, with ``about`` (provenance) when given."""
        raw: dict[str, object] = {ABOUT: about} if about else {}
        path.write_text(json.dumps({**raw, **self.to_dict()}, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> CostModel:
        """Raises ``ConfigError`` for a file that is not a JSON object of valid fields
        (``OSError`` if it cannot be read)."""
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(str(path), f"not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(str(path), f"must hold a JSON object, got {type(raw).__name__}")
        return cls.from_dict(raw, source=str(path))


def _nnls_fit(part: str, rows: Sequence[Sequence[float]], seconds: Sequence[float]) -> list[float]:
    """Non-negative least-squares coefficients of ``rows @ x ~ seconds``."""
    a = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    b = np.asarray(seconds, dtype=np.float64)
    num_coefs = a.shape[1]
    if len(rows) < num_coefs:
        raise ValueError(f"{part}: need at least {num_coefs} samples, got {len(rows)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or (a < 0).any() or (b < 0).any():
        raise ValueError(f"{part}: samples must be finite and >= 0")
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    a = a / scale  # columns span 1 .. 1e7: scale them to keep lstsq well conditioned
    rank = int(np.linalg.matrix_rank(a))
    if rank < num_coefs:
        raise ValueError(
            f"{part}: samples determine only {rank} of {num_coefs} coefficients;"
            " vary the work measured (tokens, cached tokens, batch, context)"
        )
    best, best_residual = np.zeros(num_coefs), float(b @ b)
    for size in range(1, num_coefs + 1):
        for support in itertools.combinations(range(num_coefs), size):
            cols = list(support)
            x_support = np.linalg.lstsq(a[:, cols], b, rcond=None)[0]
            if (x_support < 0).any():
                continue
            residual = float(np.sum((a[:, cols] @ x_support - b) ** 2))
            if residual < best_residual:
                best = np.zeros(num_coefs)
                best[cols] = x_support
                best_residual = residual
    return [float(v) for v in best / scale]
