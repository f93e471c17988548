"""Which worker the router blames for a failed request, over real gRPC with fake workers:
the structured status detail decides (``strata-role``, ``strata-error``), whatever the
message says."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
import pytest

from engine.kv.page_reservations import NoRoom
from engine.roles import WorkerRole
from engine.router.costs import CostModel
from engine.router.global_view import GlobalView
from engine.router.policy import make_policy
from engine.router.router import Overloaded, Router
from engine.router.views import PolicyName
from engine.router.workers import WorkerPool
from engine.sampling import SamplingParams
from engine.service.errors import ErrorKind, failure_of, worker_errors
from engine.service.remote_prefill import PrefillUnavailable
from kvstore._proto.strata.v1 import engine_pb2, engine_pb2_grpc
from kvstore.types import NamespaceId

NAMESPACE = NamespaceId(b"n" * 16)
PARAMS = SamplingParams(max_tokens=1)
# a message that names neither role, and one that names the wrong one
VAGUE = "upstream went away; try again later"
MISLEADING = "the prefill worker is fine, but this one is not"

Failing = Callable[[engine_pb2.GenerateRequest, grpc.aio.ServicerContext], object]


def info(role: WorkerRole) -> engine_pb2.WorkerInfo:
    return engine_pb2.WorkerInfo(
        role=role.value,
        model_id="fake",
        namespace_id=NAMESPACE,
        page_tokens=16,
        kv_pages_total=64,
        max_batch=4,
    )


class FakePrefill(engine_pb2_grpc.PrefillServiceServicer):
    async def Info(
        self, request: engine_pb2.WorkerInfoRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.WorkerInfo:
        return info(WorkerRole.PREFILL)


@dataclass
class FakeDecode(engine_pb2_grpc.DecodeServiceServicer):
    """Fails Generate through ``fail`` while it is set, else answers one token."""

    fail: Failing | None = None
    asked: list[str] = field(default_factory=list)  # the prefill address of each Generate

    async def Info(
        self, request: engine_pb2.WorkerInfoRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.WorkerInfo:
        return info(WorkerRole.DECODE)

    @worker_errors(WorkerRole.DECODE)
    async def Generate(
        self, request: engine_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[engine_pb2.GenerateChunk]:
        self.asked.append(request.prefill_address)
        if self.fail is not None:
            await self.fail(request, context)  # type: ignore[misc]
        yield engine_pb2.GenerateChunk(token_ids=[7], text="x", finish_reason="length")


@dataclass
class Cluster:
    router: Router
    pool: WorkerPool
    decodes: dict[str, FakeDecode]


@asynccontextmanager
async def cluster(num_decode: int) -> AsyncIterator[Cluster]:
    servers: list[grpc.aio.Server] = []

    async def serve(servicer: object, add: Callable[[object, grpc.aio.Server], None]) -> str:
        server = grpc.aio.server()
        add(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    add_prefill = engine_pb2_grpc.add_PrefillServiceServicer_to_server
    add_decode = engine_pb2_grpc.add_DecodeServiceServicer_to_server
    prefills = [await serve(FakePrefill(), add_prefill) for _ in range(2)]
    decodes: dict[str, FakeDecode] = {}
    for _ in range(num_decode):
        decode = FakeDecode()
        decodes[await serve(decode, add_decode)] = decode
    pool = WorkerPool(prefills, list(decodes), health_interval_s=60.0)
    try:
        await pool.start(wait_s=5.0)
        view = GlobalView(pool, NAMESPACE)
        costs = CostModel.default()
        policy = make_policy(PolicyName.ROUND_ROBIN, costs)
        router = Router(pool, view, policy, costs, namespace_id=NAMESPACE, block_tokens=16)
        yield Cluster(router, pool, decodes)
    finally:
        await pool.close()
        for server in servers:
            await server.stop(None)


async def _tokens(router: Router, placement: object) -> list[int]:
    tokens: list[int] = []
    async for chunk in router.stream([1, 2, 3], PARAMS, placement=placement):  # type: ignore[arg-type]
        tokens += chunk.token_ids
    return tokens


async def test_a_prefill_failure_is_retried_on_another_prefill_worker_whatever_its_message() -> (
    None
):
    async with cluster(num_decode=1) as c:
        placement = await c.router.place([1, 2, 3], 1)
        broken = placement.prefill.id
        decode = c.decodes[placement.decode.id]

        async def fail(request: engine_pb2.GenerateRequest, context: object) -> None:
            if request.prefill_address == broken:
                raise PrefillUnavailable(VAGUE)

        decode.fail = fail
        assert await _tokens(c.router, placement) == [7]
        other = next(a for a in c.pool.prefill if a != broken)
        assert decode.asked == [broken, other]
        assert not c.pool.prefill[broken].healthy
        assert c.pool.prefill[other].healthy and placement.decode.healthy


async def test_a_decode_failure_without_a_role_blames_the_decode_worker() -> None:
    """A status no servicer labelled (here a bare abort; in life a dead worker) is the
    called decode worker's, even when its text mentions a prefill worker."""
    async with cluster(num_decode=2) as c:
        placement = await c.router.place([1, 2, 3], 1)
        broken = c.decodes[placement.decode.id]

        async def fail(
            request: engine_pb2.GenerateRequest, context: grpc.aio.ServicerContext
        ) -> None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, MISLEADING)

        broken.fail = fail
        assert await _tokens(c.router, placement) == [7]
        assert not placement.decode.healthy
        assert placement.prefill.healthy
        assert [len(d.asked) for d in c.decodes.values()].count(1) == 2  # one each


async def test_no_room_is_overloaded_whatever_its_message() -> None:
    async with cluster(num_decode=1) as c:
        (decode,) = c.decodes.values()

        async def fail(request: engine_pb2.GenerateRequest, context: object) -> None:
            raise NoRoom(VAGUE)

        decode.fail = fail
        with pytest.raises(Overloaded):
            await _tokens(c.router, None)
        assert all(w.healthy for w in c.pool.workers)


async def test_the_status_carries_the_failing_role_and_the_error_kind() -> None:
    async with cluster(num_decode=1) as c:
        ((address, decode),) = c.decodes.items()

        async def fail(request: engine_pb2.GenerateRequest, context: object) -> None:
            raise PrefillUnavailable(VAGUE)

        decode.fail = fail
        async with grpc.aio.insecure_channel(address) as channel:
            call = engine_pb2_grpc.DecodeServiceStub(channel).Generate(
                engine_pb2.GenerateRequest(prompt_token_ids=[1])
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in call:
                    pass
        failure = failure_of(err.value)
        assert failure.code is grpc.StatusCode.UNAVAILABLE
        assert (failure.role, failure.kind) == (WorkerRole.PREFILL, ErrorKind.PREFILL_UNAVAILABLE)
        assert failure.message == VAGUE
        metadata = dict(err.value.trailing_metadata() or ())
        assert metadata["strata-role"] == "prefill"
        assert metadata["strata-error"] == "prefill_unavailable"
