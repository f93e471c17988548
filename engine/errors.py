"""The engine's exception tree, rooted at ``EngineError``.

Each error is defined next to the code that raises it; all share this root so that a
caller (the command line, a servicer) can tell the engine's deliberate refusals from
bugs, and from the store's own errors (``kvstore.errors.KVStoreError``, a separate tree:
the engine reaches the store through its client and sees the store's errors as such).

    EngineError
      ModelLoadError        engine/model/hf_config.py   a checkpoint that cannot be loaded
      UnsupportedRope       engine/model/rope.py        a RoPE scaling the model lacks
      InvalidSampling       engine/sampling.py          bad sampling parameters
      InvalidRequest        engine/workers/requests.py  a request the engine refuses
      CacheFull             engine/kv/cache.py          no free KV page
      PrefillUnavailable    engine/service/remote_prefill.py  no prefill worker could
      NoRoom                engine/kv/page_reservations.py  no KV room in time: busy
      Overloaded, WorkerFailed (NoHealthyWorker), BadRequest    engine/router/router.py
      ProfilingError        engine/router/profiling.py
      Unsupported           engine/router/openai_schema.py  an OpenAI field not served
      ChatTemplateError     engine/chat.py              a chat template that cannot render
      ApiError, ChatError   engine/router/api.py, chat_client.py  HTTP answers, both ways

The errors that describe bad input also subclass ``ValueError``. Which gRPC status each
becomes is decided in one place, ``engine/service/errors.py``.
"""

from __future__ import annotations


class EngineError(Exception):
    """Root of every error the engine raises on purpose."""
