"""Strata's bundled inference engine: a Llama-family model over a paged KV cache, with
prefill and decode workers that read and write KV through the store."""

from engine.llm import LLM, RequestOutput
from engine.sampling import InvalidSampling, SamplingParams
from engine.workers.requests import InvalidRequest

__all__ = ["LLM", "InvalidRequest", "InvalidSampling", "RequestOutput", "SamplingParams"]
