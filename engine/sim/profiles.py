"""Cost profiles: what a model costs on some hardware, as data files with their sources.

A profile is one JSON file in ``engine/sim/profiles/`` (or any path)::

    {
      "name": "llama3-70b-8xh100",
      "model": "Llama-3-70B", "hardware": "8x H100 SXM (TP8)", "gpus_per_instance": 8,
      "kv_bytes_per_token": 327680,
      "costs": {<every CostModel field except transfer_*>},   (or "samples", below)
      "uncertainty": "+-30% on prefill ...", "uncertainty_factor": 0.3,
      "sources": ["Splitwise (ISCA'24) Table ...", ...],
      "derivation": "how the numbers follow from the sources"
    }

Instead of ``costs``, a profile may carry raw measurements, fitted on load by the router's
own ``CostModel.fit`` (non-negative least squares)::

    "samples": {"prefill": [[uncached, cached, seconds], ...],
                "decode":  [[batch, context_tokens, seconds], ...]}

which is how a measured device run (``bench/sim_calibrate.py`` writes this shape) becomes a
profile: copy its JSON here with a ``name``, ``sources`` and ``uncertainty``.

Transfer costs are not part of a profile: they follow from the cluster's links and
``kv_bytes_per_token`` (``Profile.costs_for``). Invariants: every number is finite and
>= 0; ``kv_bytes_per_token >= 1``; ``gpus_per_instance >= 1``; ``sources`` is non-empty.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from engine.router.costs import CostModel
from kvstore.errors import ConfigError

PROFILE_DIR = Path(__file__).parent / "profiles"
_TRANSFER_FIELDS = ("transfer_base_s", "transfer_per_token_s")


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    model: str
    hardware: str
    gpus_per_instance: int
    kv_bytes_per_token: int
    costs: CostModel  # transfer_* are 0 here; see ``costs_for``
    uncertainty: str
    uncertainty_factor: float
    sources: tuple[str, ...]

    def costs_for(self, link_bytes_per_s: float, link_latency_s: float) -> CostModel:
        """The router's cost model on a cluster whose nodes are joined by this link."""
        return replace(
            self.costs,
            transfer_base_s=link_latency_s,
            transfer_per_token_s=self.kv_bytes_per_token / link_bytes_per_s,
        )


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name, or a profile file by path.

    Raises:
        ConfigError: unknown name (the message lists the shipped ones) or a bad file.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise ConfigError("profile", f"unknown {name_or_path!r}; shipped: {profile_names()}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(str(path), f"cannot read a profile: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "must hold a JSON object")
    return parse_profile(raw, str(path))


def parse_profile(raw: dict[str, object], source: str) -> Profile:
    """Raises ``ConfigError`` naming the first missing or invalid field."""
    sources = raw.get("sources")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise ConfigError(f"{source}.sources", "must be a non-empty list of strings")
    factor = _number(raw, "uncertainty_factor", source)
    return Profile(
        name=_text(raw, "name", source),
        model=_text(raw, "model", source),
        hardware=_text(raw, "hardware", source),
        gpus_per_instance=max(1, int(_number(raw, "gpus_per_instance", source))),
        kv_bytes_per_token=max(1, int(_number(raw, "kv_bytes_per_token", source))),
        costs=_costs(raw, source),
        uncertainty=_text(raw, "uncertainty", source),
        uncertainty_factor=factor,
        sources=tuple(sources),
    )


def _costs(raw: dict[str, object], source: str) -> CostModel:
    if "costs" in raw:
        costs = raw["costs"]
        if not isinstance(costs, dict):
            raise ConfigError(f"{source}.costs", "must be an object")
        full = {name: 0.0 for name in _TRANSFER_FIELDS} | costs
        return CostModel.from_dict(full, source=f"{source}.costs")
    samples = raw.get("samples")
    if not isinstance(samples, dict):
        raise ConfigError(source, "needs 'costs' or 'samples'")
    try:
        prefill = [(int(u), int(c), float(s)) for u, c, s in samples["prefill"]]
        decode = [(int(b), int(x), float(s)) for b, x, s in samples["decode"]]
        fitted = CostModel.fit(prefill, [(1, 0.0), (2, 0.0)], decode)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{source}.samples", f"cannot fit: {exc}") from exc
    return replace(fitted, transfer_base_s=0.0, transfer_per_token_s=0.0)


def _text(raw: dict[str, object], key: str, source: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}.{key}", f"must be a non-empty string, got {value!r}")
    return value


def _number(raw: dict[str, object], key: str, source: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{source}.{key}", f"must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{source}.{key}", f"must be a finite number >= 0, got {value!r}")
    return float(value)
