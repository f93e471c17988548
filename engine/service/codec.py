"""Engine messages to and from their protobuf form."""

from __future__ import annotations

from engine.sampling import SamplingParams
from engine.workers.requests import KVTarget
from kvstore._proto.strata.v1 import engine_pb2


def params_to_pb(params: SamplingParams) -> engine_pb2.SamplingParams:
    return engine_pb2.SamplingParams(
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        max_tokens=params.max_tokens,
        seed=params.effective_seed,
        stop=list(params.stop),
        stop_token_ids=list(params.stop_token_ids),
        ignore_eos=params.ignore_eos,
    )


def params_from_pb(pb: engine_pb2.SamplingParams) -> SamplingParams:
    """Unset fields take the defaults. Raises ``InvalidSampling`` naming a bad field."""
    given = {
        name: getattr(pb, name)
        for name in ("temperature", "top_p", "top_k", "max_tokens", "seed")
        if pb.HasField(name)
    }
    return SamplingParams(
        **given,
        stop=tuple(pb.stop),
        stop_token_ids=tuple(pb.stop_token_ids),
        ignore_eos=pb.ignore_eos,
    )


def target_to_pb(target: KVTarget) -> engine_pb2.KVTarget:
    return engine_pb2.KVTarget(
        addresses=list(target.addresses),
        pages=list(target.pages),
        transfer_id=target.transfer_id,
        segment=target.segment,
    )


def target_from_pb(pb: engine_pb2.KVTarget) -> KVTarget:
    return KVTarget(tuple(pb.addresses), tuple(pb.pages), pb.transfer_id, pb.segment or "kv")
