"""The model process: dynamic batching and the forward passes, apart from request handling.

`qvl serve` runs the models in a process of their own (started with ``spawn``). Requests
arrive already admitted, over a pipe, as ``core.pipe_messages``: text-only items as token ids
(the request process renders and tokenizes them), anything with media as raw items, decoded
and patchified here on a thread pool. One model thread takes batches from the ``Batcher``
and runs them; rows go back per batch. Work whose caller has gone or whose deadline has passed
is dropped before compute. Keeping the forward passes away from the event loop matters: in one
process every small torch call gives the GIL to the busy loop and waits to get it back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from vectorizer_service.core.batch_planning import is_clip_run, plan_batches, preparation_chunks
from vectorizer_service.core.call_context import CallContext
from vectorizer_service.core.errors import (
    CancelledError,
    ComputeError,
    DeadlineError,
    InputError,
    QvlError,
    UnavailableError,
)
from vectorizer_service.core.freed_memory import limit_malloc_arenas, release_free_memory
from vectorizer_service.core.items import Item
from vectorizer_service.core.logs import setup_logging
from vectorizer_service.core.parts import DocumentPage, VideoClip
from vectorizer_service.core.pipe_framing import encode, receive
from vectorizer_service.core.pipe_messages import (
    BatchStats,
    Cancel,
    CutRow,
    EmbedCall,
    Fail,
    FromModelProcess,
    LoadFailed,
    ProbeCall,
    Ready,
    RerankCall,
    Row,
    Rows,
    RowValue,
    Stop,
)
from vectorizer_service.core.settings import Settings
from vectorizer_service.engine.batcher import Batcher, Job, tensor_bytes
from vectorizer_service.model.contract import EmbeddingModel, RerankingModel, SequenceScorer
from vectorizer_service.model.decode_budget import DecodeBudget
from vectorizer_service.model.preprocessing import Encoded

log = logging.getLogger("qvl.model_process")
# Test-only fault injection, off unless set: an item (with media) whose text equals this value makes
# the model process exit at once, as a native crash would. The worker's tests use it to prove that a
# row which keeps killing the model process is isolated and failed while its neighbours are stored.
TEST_CRASH_ENV = "QVL_TEST_CRASH_ON_TEXT"


@dataclass
class ServedTasks:
    """The models the engine runs, as the contract it needs of them."""

    embedder: EmbeddingModel | None
    reranker: RerankingModel | None


class ModelProcess:
    def __init__(self, models: ServedTasks, settings: Settings, sock: socket.socket) -> None:
        self.models = models
        self.settings = settings
        self.sock = sock
        self.send_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(settings.decode_threads(beside_model=True), thread_name_prefix="qvl-preprocess")
        self.batcher = Batcher(settings)
        self.thread = threading.Thread(target=self._model_loop, name="qvl-model", daemon=True)
        self.crash_on_text = os.environ.get(TEST_CRASH_ENV) or None

    # -- the pipe ------------------------------------------------------------
    def send(self, message: FromModelProcess) -> None:
        data = encode(message)
        # A gone request process means EOF on our read side, and serve() ends.
        with self.send_lock, contextlib.suppress(OSError):
            self.sock.sendall(data)

    def serve(self) -> None:
        """Read messages until ``Stop`` or the request process goes away."""
        self.thread.start()
        try:
            while True:
                try:
                    batch = receive(self.sock)
                except (EOFError, OSError):
                    return
                for message in batch:
                    match message:
                        case Stop():
                            return
                        case Cancel(rid=rid):
                            self.batcher.cancel(rid)
                        case EmbedCall():
                            self._embed(message)
                        case ProbeCall():
                            self._probe(message)
                        case RerankCall():
                            self.batcher.open(message.rid, CallContext(message.deadline), len(message.documents))
                            self.pool.submit(self._guard, message.rid, self._rerank, message)
                        case _:
                            log.error("unknown message", extra={"kind": type(message).__name__})
        finally:
            self.close()

    def _guard(self, rid: int, work: Callable[..., None], *args: object) -> None:
        """A preparation task: an error of the request as a whole fails the request.

        An unexpected exception is INTERNAL, never UNAVAILABLE: it would fail again on a retry.
        (Items are isolated in ``_isolating``; what reaches here failed outside any one item.)
        """
        try:
            work(*args)
        except QvlError as err:
            self._fail(rid, err)
        except Exception as exc:  # never leave a request unanswered
            log.exception("preparation failed")
            self._fail(rid, ComputeError(f"preparation failed: {exc}"))

    def _fail(self, rid: int, err: QvlError) -> None:
        self.batcher.close(rid)
        self.send(Fail(rid, err))

    # -- preparation (decoding threads) --------------------------------------
    def _embed(self, call: EmbedCall) -> None:
        ctx = CallContext(call.deadline)
        self.batcher.open(call.rid, ctx, len(call.entries))
        ready = [(i, Encoded(p, [], [])) for i, p in call.entries if isinstance(p, list)]
        raw = [(i, p) for i, p in call.entries if isinstance(p, Item)]
        if self.crash_on_text is not None and any(self.crash_on_text in item.texts for _, item in raw):
            log.error("test-only crash: an item carries the %s text", TEST_CRASH_ENV)
            os._exit(70)
        if ready:
            self._enqueue("embed", call.rid, ctx, ready)
        if not raw:
            return
        embedder = self.models.embedder
        assert embedder is not None  # the request process sends embeddings only when one is served
        indices = [i for i, _ in raw]

        budget = DecodeBudget(self.settings, call.deadline)  # the request's pixels, shared by its chunks

        def prepare(start: int, chunk: list[Item]) -> None:
            prepared = embedder.prepare(chunk, call.instruction, budget, call.truncate)
            self._enqueue("embed", call.rid, ctx, list(zip(indices[start:start + len(chunk)], prepared, strict=True)))

        for start, chunk in preparation_chunks([item for _, item in raw]):
            if is_clip_run(chunk):
                self.pool.submit(self._guard, call.rid, self._clip_run, call, ctx, budget, start, chunk, indices)
            else:
                self.pool.submit(self._guard, call.rid, self._budgeted, ctx, call.rid, prepare, start, chunk, indices)

    def _clip_run(self, call: EmbedCall, ctx: CallContext, budget: DecodeBudget, start: int, chunk: list[Item],
                  indices: list[int]) -> None:
        """Windows of one video: decoded once, each queued as soon as it is prepared. Decoding waits
        while prepared tensors are over budget, so a long video's windows flow through memory."""
        embedder = self.models.embedder
        assert embedder is not None
        left = set(range(len(chunk)))
        windows = embedder.prepare_clips(chunk, call.instruction, budget, call.truncate)
        try:
            for k, prepared in windows:
                left.discard(k)
                self._enqueue("embed", call.rid, ctx, [(indices[start + k], prepared)])
                self.batcher.wait_for_budget(ctx)
                if ctx.cancelled or time.monotonic() > ctx.deadline:
                    break
        finally:
            windows.close()
            if left:
                failure = (CancelledError("the caller cancelled the request") if ctx.cancelled else
                           DeadlineError("the deadline passed before the work was done"))
                self._settle(call.rid, [(indices[start + k], failure) for k in sorted(left)])

    def _probe(self, call: ProbeCall) -> None:
        """Chunking's first step: each source's page count or length, one row each."""
        embedder = self.models.embedder
        assert embedder is not None
        ctx = CallContext(call.deadline)
        self.batcher.open(call.rid, ctx, len(call.entries))
        budget = DecodeBudget(self.settings, call.deadline)

        def probe(index: int, part: DocumentPage | VideoClip) -> None:
            try:
                value: RowValue = embedder.facts(part, budget)
            except InputError as err:
                value = err.at(item=index)
            except QvlError as err:
                value = err
            except Exception as exc:
                log.exception("reading a source failed")
                value = ComputeError(f"item {index}: reading it failed: {exc}")
            self._settle(call.rid, [(index, value)])

        for index, part in call.entries:
            self.pool.submit(probe, index, part)

    def _rerank(self, call: RerankCall) -> None:
        reranker = self.models.reranker
        assert reranker is not None
        budget = DecodeBudget(self.settings, call.deadline)
        try:  # a bad query fails the request (see _guard)
            decoded_query = reranker.decode_query(call.query, budget)
        except QvlError:
            raise
        except Exception as exc:
            log.exception("preparation failed")
            raise ComputeError(f"query: preparing it failed: {exc}") from None
        request = self.batcher.request(call.rid)
        if request is None:
            return
        ctx = request.ctx

        def prepare(start: int, chunk: list[Item]) -> None:
            pairs = reranker.pairs(decoded_query, reranker.decode_documents(chunk, budget), call.instruction)
            self._enqueue("rerank", call.rid, ctx, list(zip(range(start, start + len(chunk)), pairs, strict=True)))

        indices = list(range(len(call.documents)))
        chunks = preparation_chunks(call.documents)
        for start, chunk in chunks[1:]:
            self.pool.submit(self._guard, call.rid, self._budgeted, ctx, call.rid, prepare, start, chunk, indices)
        self._budgeted(ctx, call.rid, prepare, chunks[0][0], chunks[0][1], indices)

    def _budgeted(self, ctx: CallContext, rid: int, prepare: Callable[[int, list[Item]], None], start: int,
                  chunk: list[Item], indices: list[int]) -> None:
        """Wait while prepared tensors are over budget, then prepare and queue a chunk."""
        self.batcher.wait_for_budget(ctx)
        failure: QvlError | None = None
        if ctx.cancelled:
            failure = CancelledError("the caller cancelled the request")
        elif time.monotonic() > ctx.deadline:
            failure = DeadlineError("the deadline passed before the work was done")
        if failure is not None:
            self._settle(rid, [(indices[start + k], failure) for k in range(len(chunk))])
            return
        self._isolating(rid, prepare, start, chunk, indices)

    def _isolating(self, rid: int, prepare: Callable[[int, list[Item]], None], start: int, chunk: list[Item],
                   indices: list[int]) -> None:
        """``prepare``, but a chunk that raises is prepared again item by item, so an unexpected
        failure (input problems are ``InputError``s in place already) fails its own item only."""
        try:
            prepare(start, chunk)
        except QvlError:
            raise
        except Exception as exc:
            if len(chunk) > 1:
                for k in range(len(chunk)):
                    self._isolating(rid, prepare, start + k, chunk[k:k + 1], indices)
                return
            index = indices[start]
            log.exception("preparation failed", extra={"item": index})
            self._settle(rid, [(index, ComputeError(f"item {index}: preparing it failed: {exc}"))])

    def _enqueue(self, task: str, rid: int, ctx: CallContext,
                 prepared: Sequence[tuple[int, Encoded | QvlError]]) -> None:
        """Queue prepared sequences; errors are answered at once (named by their request index)."""
        jobs = [Job(p, ctx, rid, i, tensor_bytes(p)) for i, p in prepared if isinstance(p, Encoded)]
        errors: list[tuple[int, RowValue]] = [(i, p.at(item=i) if isinstance(p, InputError) else p)
                                              for i, p in prepared if not isinstance(p, Encoded)]
        self.batcher.enqueue(task, rid, jobs)
        if errors:
            self._settle(rid, errors)

    def _settle(self, rid: int, rows: list[tuple[int, RowValue]]) -> None:
        """Answer rows of one request that never reached the queue (they leave preparation here)."""
        self.batcher.left_preparation(rid, len(rows))
        self._answer([(rid, i, v) for i, v in rows])

    def _answer(self, rows: list[Row], *, stats: BatchStats | None = None) -> None:
        """Send the rows still owed (and the batch's statistics)."""
        live = self.batcher.answered(rows)
        if live or stats:
            self.send(Rows(live, stats))

    # -- the model thread ----------------------------------------------------
    def _model_loop(self) -> None:
        while (taken := self.batcher.next_batch()) is not None:
            task, jobs = taken
            try:
                self._run(task, jobs)
            except Exception as exc:  # never let the model thread die
                log.exception("batch failed")
                self.batcher.release(jobs)
                self._answer([(j.rid, j.index, UnavailableError(f"batch failed: {exc}")) for j in jobs])

    def _run(self, task: str, jobs: list[Job]) -> None:
        live: list[Job] = []
        gone: list[Job] = []
        answers: list[Row] = []
        dropped = {"cancelled": 0, "deadline": 0}
        now = time.monotonic()
        waits = []
        for job in jobs:
            if job.ctx.cancelled:
                dropped["cancelled"] += 1
                gone.append(job)
                answers.append((job.rid, job.index, CancelledError("the caller cancelled the request")))
            elif now > job.ctx.deadline:
                dropped["deadline"] += 1
                gone.append(job)
                answers.append((job.rid, job.index, DeadlineError("the deadline passed before compute")))
            else:
                waits.append(now - job.enqueued)
                live.append(job)
        if gone:
            self.batcher.release(gone)
            self._answer(answers, stats=self.batcher.stats(task, dropped=dropped))
        if not live:
            return
        model: SequenceScorer | None = self.models.embedder if task == "embed" else self.models.reranker
        assert model is not None
        # Rerank pairs of one request stay together so their query is a shared prefix.
        keys = [j.rid for j in live] if task == "rerank" else None
        plan = plan_batches([j.enc.length for j in live], [j.enc.vision_patches for j in live],
                            token_budget=self.settings.batch_tokens, max_items=self.settings.max_batch_items,
                            patch_budget=self.settings.batch_max_patches, keys=keys)
        for number, group in enumerate(plan):
            batch = [live[i] for i in group]
            started = time.perf_counter()
            rows = model.forward_isolating([j.enc for j in batch])
            seconds = time.perf_counter() - started
            self.batcher.release(batch)
            stats = self.batcher.stats(task, waits=waits if number == 0 else [], size=len(batch), seconds=seconds,
                                       padded=max(j.enc.length for j in batch) * len(batch),
                                       tokens=sum(j.enc.length for j in batch),
                                       failed=sum(isinstance(r, ComputeError) for r in rows))
            # A cut sequence's row says so: the caller is told which items lost text.
            self._answer([(j.rid, j.index, CutRow(row, j.enc.cut) if j.enc.cut and isinstance(row, np.ndarray)
                           else row) for j, row in zip(batch, rows, strict=True)], stats=stats)
            if any(j.nbytes for j in batch):
                release_free_memory()

    def close(self) -> None:
        self.batcher.stop()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        self.pool.shutdown(wait=False, cancel_futures=True)


def run_model_process(sock: socket.socket, settings: Settings, log_level: str, log_format: str) -> None:
    """The model process's entry point (``multiprocessing`` spawn target)."""
    setup_logging(log_level, log_format)
    # Signals go to the request process, which drains and then stops us; Ctrl-C in a terminal
    # reaches the whole process group and must not kill the models mid-batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    limit_malloc_arenas()
    sys.setswitchinterval(settings.gil_switch_ms / 1000)
    try:
        import torch
        import transformers

        from vectorizer_service.model.checkpoint import resolve_device
        from vectorizer_service.model.served_models import load_models

        if resolve_device(settings).type == "cpu":
            # The request process needs a core; OpenMP threads that oversubscribe the machine
            # spin and slow every batch down.
            torch.set_num_threads(settings.torch_threads or max(1, (os.cpu_count() or 2) - 1))
        models = load_models(settings)
    except Exception as exc:  # the request process reports it and exits
        sock.sendall(encode(LoadFailed(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")))
        return
    served = {m.task: m.describe() for m in (models.embedder, models.reranker) if m is not None}
    process = ModelProcess(ServedTasks(models.embedder, models.reranker), settings, sock)
    process.send(Ready(served, str(torch.__version__), str(transformers.__version__), os.getpid()))
    log.info("model process ready", extra={"pid": os.getpid()})
    process.serve()
