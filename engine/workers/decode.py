"""The decode worker: continuous batching of decode steps, never a prefill.

Requests arrive prefilled (``admit``): their prompt's KV already in this worker's pages,
their first token already sampled. Each step feeds every running request its last token
(one forward pass for the batch, attention over each request's own pages), samples the
next, and streams it out; requests join and leave between steps. A request ends on an
EOS token of the checkpoint (unless ``ignore_eos``), a stop token, a stop string (cut from
the text, which is held back while it could still be the start of one), ``max_tokens``,
the end of the model's context, or ``cancel``; its pages go to the ``WriteBack`` (which
keeps its full blocks, the answer's included, for the next turn) or are freed at once.

Events (``TokenEvent``) are emitted from the worker's thread through each request's
callback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from engine.kv.cache import CacheFull, PagedKVCache
from engine.kv.write_back import WriteBack
from engine.model.llama import LlamaForCausalLM, SeqSlice
from engine.sampling import sample
from engine.tokenizer import Detokenizer, Tokenizer
from engine.workers.device import Device
from engine.workers.requests import FinishReason, GenerationRequest, TokenEvent
from engine.workers.thread_clock import ThreadClock

logger = logging.getLogger(__name__)

Emit = Callable[[TokenEvent], None]


@dataclass
class DecodeStats:
    requests: int = 0
    generated_tokens: int = 0
    steps: int = 0
    batched_tokens: int = 0  # sum of batch sizes over steps
    batched_context_tokens: int = 0  # sum over steps of the batch's context tokens
    max_batch: int = 0
    cancelled: int = 0
    step_s: float = 0.0  # wall seconds of steps: pages, forward, sampling, streaming out
    step_cpu_s: float = 0.0  # of which the decode thread was on a core
    step_wait_s: float = 0.0  # and of which it waited for a core (run queue)

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = dict(self.__dict__)
        out["mean_batch"] = self.batched_tokens / self.steps if self.steps else 0.0
        out["mean_step_ms"] = 1e3 * self.step_s / self.steps if self.steps else 0.0
        return out


@dataclass
class _Seq:
    request: GenerationRequest
    pages: list[int]
    emit: Emit
    first_token: int
    detok: Detokenizer | None
    generated: list[int] = field(default_factory=list)
    text: str = ""
    sent_chars: int = 0
    admitted_s: float = field(default_factory=time.perf_counter)

    @property
    def id(self) -> str:
        return self.request.request_id

    @property
    def length(self) -> int:
        """Tokens so far: the prompt's and the generated ones."""
        return len(self.request.prompt_token_ids) + len(self.generated)


class DecodeWorker:
    def __init__(
        self,
        model: LlamaForCausalLM,
        cache: PagedKVCache,
        *,
        tokenizer: Tokenizer | None,
        max_batch: int = 32,
        device: Device | None = None,
        write_back: WriteBack | None = None,
    ) -> None:
        """``device``: shared with a prefill worker of this process (colocated)."""
        self.model = model
        self.cache = cache
        self.tokenizer = tokenizer
        self.write_back = write_back
        self.max_batch = max_batch
        self.max_context = model.config.max_position_embeddings
        self.stats = DecodeStats()
        self.device = device or Device()
        self._incoming: list[_Seq] = []
        self._cancels: set[str] = set()
        self._running: list[_Seq] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="strata-decode", daemon=True)

    def start(self) -> DecodeWorker:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        self.write_back = None  # stopping: nothing is kept
        for seq in [*self._running, *self._incoming]:
            self._end(seq, FinishReason.CANCELLED, error="decode worker stopped")
        self._running, self._incoming = [], []

    @property
    def num_running(self) -> int:
        return len(self._running) + len(self._incoming)

    def admit(
        self, request: GenerationRequest, pages: Sequence[int], first_token: int, emit: Emit
    ) -> None:
        """Take over a prefilled request: ``pages`` (now this worker's) hold its prompt's KV."""
        detok = None
        if self.tokenizer is not None:
            detok = Detokenizer(self.tokenizer, context=request.prompt_token_ids)
        seq = _Seq(request, list(pages), emit, first_token, detok)
        with self._wake:
            if self._stopping:
                raise RuntimeError("decode worker stopped")
            self._incoming.append(seq)
            self._wake.notify()

    def cancel(self, request_id: str) -> None:
        with self._wake:
            self._cancels.add(request_id)
            self._wake.notify()

    # -- the compute thread -----------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._wake:
                while not (self._running or self._incoming or self._stopping):
                    self._wake.wait()
                if self._stopping:
                    return
                incoming, self._incoming = self._incoming, []
                cancels, self._cancels = self._cancels, set()
            for seq in incoming:
                self.stats.requests += 1
                self._running.append(seq)
                self._accept(seq, seq.first_token)
            for seq in [s for s in self._running if s.id in cancels]:
                self.stats.cancelled += 1
                self._end(seq, FinishReason.CANCELLED)
            if self._running:
                try:
                    self._step(self._running[: self.max_batch])
                except Exception as exc:
                    logger.exception("decode step failed")
                    for seq in list(self._running):
                        self._end(seq, FinishReason.ERROR, error=str(exc))

    def _step(self, batch: list[_Seq]) -> None:
        start = ThreadClock.now()
        ready = []
        for seq in batch:
            if seq.length > len(seq.pages) * self.cache.page_tokens:
                try:
                    seq.pages += self.cache.allocate(1)
                except CacheFull:
                    self._end(seq, FinishReason.ERROR, error="the decode KV cache is full")
                    continue
            ready.append(seq)
        if not ready:
            return
        slices = [SeqSlice(torch.tensor([s.generated[-1]]), s.length - 1, s.pages) for s in ready]
        with self.device.turn():
            logits = self.model(slices, self.cache)
        self.stats.steps += 1
        self.stats.batched_tokens += len(ready)
        self.stats.batched_context_tokens += sum(s.length for s in ready)
        self.stats.max_batch = max(self.stats.max_batch, len(ready))
        for seq, out in zip(ready, logits, strict=True):
            self._accept(seq, sample(out, seq.request.params, len(seq.generated)))
        step = ThreadClock.now() - start
        self.stats.step_s += step.wall_s
        self.stats.step_cpu_s += step.cpu_s
        self.stats.step_wait_s += step.wait_s

    def _accept(self, seq: _Seq, token: int) -> None:
        """A new token: add it, find out whether the request is done, stream it out."""
        params = seq.request.params
        seq.generated.append(token)
        self.stats.generated_tokens += 1
        reason = None
        eos = () if params.ignore_eos else seq.request.eos_token_ids
        if token in params.stop_token_ids or token in eos:
            reason = FinishReason.STOP
        else:
            reason = self._add_text(seq, seq.detok.push(token) if seq.detok else "")
        if reason is None and (
            len(seq.generated) >= params.max_tokens or seq.length >= self.max_context
        ):
            reason = FinishReason.LENGTH
            if seq.detok is not None:
                self._add_text(seq, seq.detok.flush())
        hold = 0 if reason else max((len(s) for s in params.stop), default=1) - 1
        upto = max(seq.sent_chars, len(seq.text) - hold)
        piece, seq.sent_chars = seq.text[seq.sent_chars : upto], upto
        if reason is None:
            seq.emit(TokenEvent(seq.id, (token,), piece))
        else:
            self._end(seq, reason, piece=piece, tokens=(token,))

    def _add_text(self, seq: _Seq, piece: str) -> FinishReason | None:
        """Append text; cut it at a stop string if one now appears."""
        if not piece:
            return None
        stops = seq.request.params.stop
        start = max(0, len(seq.text) - max((len(s) for s in stops), default=0))
        seq.text += piece
        found = [i for i in (seq.text.find(s, start) for s in stops) if i >= 0]
        if not found:
            return None
        seq.text = seq.text[: min(found)]
        return FinishReason.STOP

    def _end(
        self,
        seq: _Seq,
        reason: FinishReason,
        *,
        piece: str = "",
        tokens: tuple[int, ...] = (),
        error: str = "",
    ) -> None:
        if seq in self._running:
            self._running.remove(seq)
        pages, seq.pages = seq.pages, []
        event = TokenEvent(seq.id, tokens, piece, reason, error)
        saving = None
        keep = reason is not FinishReason.ERROR and not seq.request.profiling
        if pages and self.write_back is not None and keep:
            prompt = seq.request.prompt_token_ids
            # the last token was sampled, never fed: its KV is not in the pages
            fed = [*prompt, *seq.generated[:-1]]
            saving = self.write_back.finished(fed, len(prompt), pages, seq.request.cache_salt)
        elif pages:
            self.cache.release(pages)
        if saving is not None and reason is not FinishReason.CANCELLED:
            # the last event leaves once the store holds the answer: a next turn finds it
            saving.add_done_callback(lambda _: seq.emit(event))
        else:
            seq.emit(event)
