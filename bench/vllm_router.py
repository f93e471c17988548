"""``kvengine router`` in front of two vLLM OpenAI servers sharing one Strata store node:
cache-aware routing against round robin on conversations (the question: what does
placing by the store's and the servers' caches buy over spreading requests blindly,
when every server can load any prefix from Strata anyway?).

Each conversation has a system prompt of its own and grows by a user turn and an
answer's worth of tokens per request, the way a chat re-sends its history. All
conversations run at once (``--concurrency``: fewer), each one request at a time, each
request answering one token through the router (``/v1/completions`` with token ids, so
its latency is the time to first token plus one HTTP hop). Every policy runs the same
requests under a ``cache_salt`` of its own, so neither vLLM's prefix cache nor the
store serves one run from another's. Default cost model (``CostModel.default()``).

Per policy: the share of prompt tokens the servers reused (``cached_tokens``: their
own cache or loaded from Strata; vLLM does not say which), the blocks the router
planned to load from the store, how often a conversation's turn ran on another server
than its previous turn, the busiest server's share of the requests, and the median and
p90 TTFT.

    python -m bench.vllm_router [--quick] [--concurrency N] [--json PATH]
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench.common import parser, report
from bench.models import ModelShape
from bench.procs import start_strata
from bench.vllm import BLOCK_TOKENS, ROOT, VLLM_ENV, VLLM_PYTHON
from engine.launch import Child, free_port

POLICIES = ("cache_aware", "round_robin")
KV_CACHE_BYTES = 64 << 20  # 32k tokens of the bench model's 2 KiB: every conversation fits


def start_server(model: Path, store: str) -> Child:
    """A vLLM OpenAI server with ``StrataConnector``, once ``/health`` answers."""
    port = free_port()
    strata = {
        "kv_connector": "StrataConnector",
        "kv_connector_module_path": "kvstore.integrations.vllm",
        "kv_role": "kv_both",
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": {"store": store},
    }
    args = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    args += ["--port", str(port), "--dtype", "float32", "--enforce-eager"]
    args += ["--block-size", str(BLOCK_TOKENS), "--kv-cache-memory-bytes", str(KV_CACHE_BYTES)]
    args += ["--max-model-len", "4096", "--enable-prompt-tokens-details"]
    args += ["--kv-transfer-config", json.dumps(strata)]
    server = Child("vLLM api_server", args, env=VLLM_ENV, cwd=ROOT, port=port)
    server.wait_until(lambda: answers(f"http://127.0.0.1:{port}/health"), 600, what="healthy")
    return server


def start_router(servers: list[Child], store: str, policy: str) -> Child:
    port = free_port()
    vllm = ",".join(f"127.0.0.1:{s.port}={store}" for s in servers)
    args = [sys.executable, "-m", "engine.cli", "router", "--log-level", "WARNING"]
    args += ["--router.vllm", vllm, "--router.port", str(port), "--router.policy", policy]
    args += ["--router.lookup_timeout_s", "0.5", "--router.access_log", "false"]
    router = Child("kvengine router", args, cwd=ROOT, port=port)
    router.wait_until(lambda: answers(f"http://127.0.0.1:{port}/health"), 120, what="up")
    return router


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def conversations(shape: dict[str, int], vocab: int, seed: int) -> list[list[list[int]]]:
    """Per conversation, its requests' prompts (``shape``: ``conversations``, ``turns``,
    ``system_tokens``, ``turn_tokens``)."""
    rng = random.Random(seed)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(10, vocab) for _ in range(n)]

    out = []
    for _ in range(shape["conversations"]):
        history = tokens(shape["system_tokens"])
        turns = []
        for _ in range(shape["turns"]):
            history = [*history, *tokens(shape["turn_tokens"])]
            turns.append(history)
        out.append(turns)
    return out


def replay(
    router: Child, model: str, chats: list[list[list[int]]], salt: str, concurrency: int
) -> list[list[dict[str, Any]]]:
    """``concurrency`` conversations at a time, each one request at a time; per
    conversation, per turn: the server, the time to the answer's token and the usage."""
    url = f"http://127.0.0.1:{router.port}/v1/completions"

    def ask(prompt: list[int]) -> dict[str, Any]:
        body = {"model": model, "prompt": prompt, "max_tokens": 1, "cache_salt": salt}
        request = urllib.request.Request(
            url, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=300) as response:
            answer = json.loads(response.read())
            server = response.headers["X-Strata-Prefill"]
        usage = answer["usage"]
        details = usage.get("prompt_tokens_details") or {}
        return {
            "server": server,
            "ttft_s": time.perf_counter() - start,
            "prompt_tokens": usage["prompt_tokens"],
            "cached_tokens": details.get("cached_tokens", 0),
        }

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda turns: [ask(p) for p in turns], chats))


def summary(chats: list[list[dict[str, Any]]], stats: dict[str, Any]) -> dict[str, float]:
    """The figures of one policy's run."""
    rows = [row for turns in chats for row in turns]
    ttfts = sorted(r["ttft_s"] for r in rows)
    prompt = sum(r["prompt_tokens"] for r in rows)
    per_server = Counter(r["server"] for r in rows)
    return {
        "reused_share": sum(r["cached_tokens"] for r in rows) / prompt,
        "ttft_median_s": statistics.median(ttfts),
        "ttft_p90_s": ttfts[int(0.9 * (len(ttfts) - 1))],
        "loaded_blocks_planned": float(stats.get("loaded_blocks", 0)),
        # a conversation's turn on another server than its previous turn
        "server_changes": float(
            sum(a["server"] != b["server"] for turns in chats for a, b in pairwise(turns))
        ),
        "busiest_server_share": max(per_server.values()) / len(rows),
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--concurrency", type=int, default=0, help="conversations at once (default: all)"
    )
    args = p.parse_args()
    num, turns = (3, 4) if args.quick else (5, 8)
    concurrency = args.concurrency or num
    shape = ModelShape()
    workload = {"conversations": num, "turns": turns, "system_tokens": 1024, "turn_tokens": 128}
    config = {
        **workload,
        "block_tokens": BLOCK_TOKENS,
        "servers": 2,
        "concurrency": concurrency,
        "policies": ",".join(POLICIES),
        "seed": args.seed,
    }
    prompts = conversations(workload, shape.vocab_size, args.seed)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        model = shape.write(Path(folder) / "llama", seed=args.seed)
        (model / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "w0"})
        )
        head_dim = shape.hidden_size // shape.num_heads
        block_bytes = shape.num_layers * 2 * BLOCK_TOKENS * shape.num_kv_heads * head_dim * 4
        store = start_strata(block_bytes, 1 << 30, 1 << 20)
        servers: list[Child] = []
        try:
            servers = [start_server(model, f"127.0.0.1:{store.port}") for _ in range(2)]
            for policy in POLICIES:
                router = start_router(servers, f"127.0.0.1:{store.port}", policy)
                try:
                    chats = replay(router, str(model), prompts, f"bench-{policy}", concurrency)
                    with urllib.request.urlopen(f"http://127.0.0.1:{router.port}/stats") as r:
                        stats = json.loads(r.read())
                finally:
                    router.stop()
                for key, value in summary(chats, stats).items():
                    results[f"{policy}.{key}"] = value
        finally:
            for server in servers:
                server.stop(grace_s=30.0)
            store.stop()
    report("vLLM behind the router", config, results, json_path=args.json)


if __name__ == "__main__":
    main()
