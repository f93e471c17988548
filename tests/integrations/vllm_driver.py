"""One vLLM instance (offline ``LLM``) for the vLLM connector's tests, run by the vLLM
environment's Python: greedy-generates from one prompt of token ids and prints a JSON
line with the tokens and vLLM's ``num_cached_tokens``.

    python -m tests.integrations.vllm_driver MODEL PROMPT_JSON MAX_TOKENS [STORE]

With STORE (HOST:PORT) vLLM runs with ``StrataConnector``; without it, plain vLLM.
"""

from __future__ import annotations

import json
import sys

BLOCK_SIZE = 32  # vLLM's CPU attention needs a multiple of 32


def main(argv: list[str]) -> None:
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    model, prompt_json, max_tokens = argv[0], argv[1], int(argv[2])
    store = argv[3] if len(argv) > 3 else ""
    transfer = None
    if store:
        transfer = KVTransferConfig(
            kv_connector="StrataConnector",
            kv_connector_module_path="kvstore.integrations.vllm",
            kv_role="kv_both",
            kv_connector_extra_config={"store": store, "retry_after_s": 1.0},
            kv_load_failure_policy="recompute",
        )
    llm = LLM(
        model=model,
        skip_tokenizer_init=True,
        block_size=BLOCK_SIZE,
        kv_cache_memory_bytes=64 << 20,
        enforce_eager=True,
        dtype="float32",
        max_model_len=1024,
        max_num_batched_tokens=1024,
        kv_transfer_config=transfer,
    )
    with open(prompt_json) as f:
        prompt = json.load(f)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    out = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
    result = {"tokens": list(out.outputs[0].token_ids), "num_cached_tokens": out.num_cached_tokens}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
