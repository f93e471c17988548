"""Small, exact set-ups for the simulator's tests."""

from __future__ import annotations

from engine.router.costs import CostModel
from engine.sim.profiles import Profile
from engine.sim.workload import SimRequest, hash_key

# Round numbers so expected times are exact: a prefill costs 1 ms + 1 ms a token.
COSTS = CostModel(
    prefill_base_s=0.001,
    prefill_per_token_s=0.001,
    prefill_attention_s=0.0,
    transfer_base_s=0.0,
    transfer_per_token_s=0.0,
    decode_base_s=0.010,
    decode_per_seq_s=0.001,
    decode_per_context_token_s=0.0,
)
PROFILE = Profile(
    name="test",
    model="test",
    hardware="test",
    gpus_per_instance=1,
    kv_bytes_per_token=1000,
    costs=COSTS,
    uncertainty="exact by construction",
    uncertainty_factor=0.0,
    sources=("tests",),
)


def request(
    request_id: int, arrival_s: float, ids: list[int], tokens: int, output: int = 1
) -> SimRequest:
    return SimRequest(request_id, arrival_s, tokens, output, tuple(hash_key(h) for h in ids))
