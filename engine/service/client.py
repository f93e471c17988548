"""A client of a decode worker: generate (streamed) and read its counters."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from engine.sampling import SamplingParams
from engine.service.codec import params_to_pb
from kvstore._proto.strata.v1 import engine_pb2, engine_pb2_grpc
from kvstore.access import bearer_metadata


class DecodeClient:
    def __init__(self, address: str, *, token: str = "") -> None:
        self.address = address
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = engine_pb2_grpc.DecodeServiceStub(self._channel)
        self._metadata = bearer_metadata(token)

    async def generate(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        *,
        request_id: str = "",
        prefill_address: str = "",
    ) -> AsyncIterator[engine_pb2.GenerateChunk]:
        """The generation's chunks as they stream in (raises ``grpc.aio.AioRpcError``).
        Closing the iterator early cancels the generation."""
        request = engine_pb2.GenerateRequest(
            request_id=request_id,
            sampling=params_to_pb(params or SamplingParams()),
            prefill_address=prefill_address,
        )
        if isinstance(prompt, str):
            request.prompt = prompt
        else:
            request.prompt_token_ids.extend(prompt)
        call = self._stub.Generate(request, metadata=self._metadata)
        try:
            async for chunk in call:
                yield chunk
        finally:
            call.cancel()  # a no-op when it ended; else the worker stops generating

    async def stats(self) -> dict[str, Any]:
        response = await self._stub.Stats(engine_pb2.EngineStatsRequest(), metadata=self._metadata)
        stats: dict[str, Any] = json.loads(response.json)
        return stats

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> DecodeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
