"""The model process: dynamic batching and the forward passes, apart from request handling.

`qvl serve` runs the models in a process of their own (started with ``spawn``). Requests
arrive already admitted, over a pipe, in lists of messages: text-only items as token ids (the
request process renders and tokenizes them), anything with media as raw items, decoded and
patchified here on a thread pool. One model thread takes sequences from the embed and rerank
queues (oldest head first, so neither starves), plans batches by token budget and runs them;
rows go back per batch. Work whose caller has gone or whose deadline has passed is dropped
before compute. Keeping the forward passes away from the event loop matters: in one process
every small torch call gives the GIL to the busy loop and waits to get it back.

Messages in: ``("embed", rid, deadline, instruction, [(index, ids | Item)])``,
``("rerank", rid, deadline, query, documents, instruction)``, ``("cancel", rid)``, ``("stop",)``.
Messages out: ``("ready", info)``, ``("failed", message)``, ``("rows", [(rid, index, value)], stats)``,
``("fail", rid, error)``.
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
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .batch_planning import plan_batches, preparation_chunks
from .calls import CallContext
from .errors import CancelledError, DeadlineError, InputError, QvlError, UnavailableError
from .items import Item
from .logs import setup_logging
from .memory import limit_malloc_arenas, release_free_memory
from .preprocess import Encoded
from .settings import Settings
from .wire import encode, receive

log = logging.getLogger("qvl.engine")


@dataclass
class _Job:
    enc: Encoded
    ctx: CallContext
    rid: int
    index: int
    nbytes: int
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class _Request:
    ctx: CallContext
    pending: int  # rows not answered yet
    unprepared: int  # sequences not queued or answered yet


def _tensor_bytes(enc: Encoded) -> int:
    return sum(p.pixel_values.element_size() * p.pixel_values.nelement() for p in (*enc.images, *enc.videos))


class Engine:
    def __init__(self, models: Any, settings: Settings, sock: socket.socket) -> None:
        self.embedder = models.embedder
        self.reranker = models.reranker
        self.settings = settings
        self.sock = sock
        self.send_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(settings.decode_threads(beside_model=True), thread_name_prefix="qvl-preprocess")
        self.queues: dict[str, deque[_Job]] = {"embed": deque(), "rerank": deque()}
        self.cv = threading.Condition()  # guards queues, requests, counters
        self.requests: dict[int, _Request] = {}
        self.prepared_bytes = 0
        self.preparing = 0  # sequences received and not queued yet (decoding, tokenizing)
        self.stopping = False
        self.thread = threading.Thread(target=self._model_loop, name="qvl-model", daemon=True)

    # -- the pipe ------------------------------------------------------------
    def send(self, message: tuple[Any, ...]) -> None:
        data = encode(message)
        # A gone request process means EOF on our read side, and serve() ends.
        with self.send_lock, contextlib.suppress(OSError):
            self.sock.sendall(data)

    def serve(self) -> None:
        """Read messages until ``stop`` or the request process goes away."""
        self.thread.start()
        try:
            while True:
                try:
                    batch = receive(self.sock)
                except (EOFError, OSError):
                    return
                for message in batch:
                    if message[0] == "stop":
                        return
                    self._handle(message)
        finally:
            self.close()

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "cancel":
            with self.cv:
                request = self.requests.get(message[1])
                if request is not None:
                    request.ctx.cancelled = True
                    self.cv.notify_all()
        elif kind == "embed":
            _, rid, deadline, instruction, entries = message
            self._embed(rid, CallContext(deadline), instruction, entries)
        elif kind == "rerank":
            _, rid, deadline, query, documents, instruction = message
            self._open(rid, CallContext(deadline), len(documents))
            self.pool.submit(self._guard, rid, self._rerank, rid, query, documents, instruction)
        else:
            log.error("unknown message", extra={"kind": kind})

    def _open(self, rid: int, ctx: CallContext, pending: int) -> None:
        with self.cv:
            self.requests[rid] = _Request(ctx, pending, pending)
            self.preparing += pending

    def _guard(self, rid: int, work: Callable[..., None], *args: Any) -> None:
        """A preparation task: an error of the request as a whole fails the request."""
        try:
            work(*args)
        except QvlError as err:
            self._fail(rid, err)
        except Exception as exc:  # never leave a request unanswered
            log.exception("preparation failed")
            self._fail(rid, UnavailableError(f"preparation failed: {exc}"))

    def _fail(self, rid: int, err: QvlError) -> None:
        with self.cv:
            request = self.requests.pop(rid, None)
            if request is not None:
                request.ctx.cancelled = True  # its queued sequences are dropped, unanswered
                self.preparing -= request.unprepared
        self.send(("fail", rid, err))

    # -- requests ------------------------------------------------------------
    def _embed(self, rid: int, ctx: CallContext, instruction: str | None, entries: list[tuple[int, Any]]) -> None:
        self._open(rid, ctx, len(entries))
        ready = [(i, Encoded(p, [], [])) for i, p in entries if isinstance(p, list)]
        raw = [(i, p) for i, p in entries if isinstance(p, Item)]
        if ready:
            self._enqueue("embed", rid, ctx, ready)
        if not raw:
            return
        embedder = self.embedder
        indices = [i for i, _ in raw]

        def prepare(start: int, chunk: list[Item]) -> None:
            prepared = embedder.prepare(chunk, instruction)
            self._enqueue("embed", rid, ctx, list(zip(indices[start:start + len(chunk)], prepared, strict=True)))

        for start, chunk in preparation_chunks([item for _, item in raw]):
            self.pool.submit(self._guard, rid, self._budgeted, ctx, rid, prepare, start, chunk, indices)

    def _rerank(self, rid: int, query: Item, documents: Sequence[Item], instruction: str | None) -> None:
        reranker = self.reranker
        decoded_query = reranker.decode_query(query)  # a bad query fails the request (see _guard)
        with self.cv:
            request = self.requests.get(rid)
        if request is None:
            return
        ctx = request.ctx

        def prepare(start: int, chunk: list[Item]) -> None:
            pairs = reranker.pairs(decoded_query, reranker.decode_documents(chunk), instruction)
            self._enqueue("rerank", rid, ctx, list(zip(range(start, start + len(chunk)), pairs, strict=True)))

        indices = list(range(len(documents)))
        chunks = preparation_chunks(documents)
        for start, chunk in chunks[1:]:
            self.pool.submit(self._guard, rid, self._budgeted, ctx, rid, prepare, start, chunk, indices)
        self._budgeted(ctx, rid, prepare, chunks[0][0], chunks[0][1], indices)

    def _budgeted(self, ctx: CallContext, rid: int, prepare: Callable[[int, list[Item]], None], start: int,
                  chunk: list[Item], indices: list[int]) -> None:
        """Wait while prepared tensors are over budget, then prepare and queue a chunk."""
        with self.cv:
            while self.prepared_bytes > self.settings.prepared_max_bytes and not self.stopping:
                if ctx.cancelled or time.monotonic() > ctx.deadline:
                    break
                self.cv.wait(timeout=0.1)
        failure: QvlError | None = None
        if ctx.cancelled:
            failure = CancelledError("the caller cancelled the request")
        elif time.monotonic() > ctx.deadline:
            failure = DeadlineError("the deadline passed before the work was done")
        if failure is not None:
            self._settle(rid, [(indices[start + k], failure) for k in range(len(chunk))], prepared=len(chunk))
            return
        prepare(start, chunk)

    def _enqueue(self, task: str, rid: int, ctx: CallContext, prepared: list[tuple[int, Any]]) -> None:
        """Queue prepared sequences; errors are answered at once (named by their request index)."""
        jobs = [_Job(p, ctx, rid, i, _tensor_bytes(p)) for i, p in prepared if isinstance(p, Encoded)]
        errors = [(i, p.at(item=i) if isinstance(p, InputError) else p) for i, p in prepared
                  if not isinstance(p, Encoded)]
        with self.cv:
            self._prepared(rid, len(jobs))
            if jobs:
                self.queues[task].extend(jobs)
                self.prepared_bytes += sum(j.nbytes for j in jobs)
                self.cv.notify_all()
        if errors:
            self._settle(rid, errors, prepared=len(errors))

    def _settle(self, rid: int, rows: list[tuple[int, Any]], *, prepared: int) -> None:
        """Answer rows of one request that never reached the queue (``prepared`` of them leave
        preparation here)."""
        with self.cv:
            self._prepared(rid, prepared)
        self._answer([(rid, i, v) for i, v in rows])

    def _answer(self, rows: list[tuple[int, int, Any]], *, stats: dict[str, Any] | None = None) -> None:
        """Send rows (and forget each request once all its rows are answered)."""
        live = []
        with self.cv:
            for rid, index, value in rows:
                request = self.requests.get(rid)
                if request is None:
                    continue  # failed as a whole already
                request.pending -= 1
                if request.pending <= 0:
                    del self.requests[rid]
                live.append((rid, index, value))
        if live or stats:
            self.send(("rows", live, stats))

    def _prepared(self, rid: int, count: int) -> None:
        """Under the lock: ``count`` sequences of a request left preparation."""
        request = self.requests.get(rid)
        if request is not None:
            done = min(count, request.unprepared)
            request.unprepared -= done
            self.preparing -= done

    # -- the model thread ----------------------------------------------------
    def _model_loop(self) -> None:
        while True:
            with self.cv:
                task = self._wait_for_batch()
                if task is None:
                    return
                jobs = self._take(task)
            try:
                self._run(task, jobs)
            except Exception as exc:  # never let the model thread die
                log.exception("batch failed")
                self._release(jobs)
                self._answer([(j.rid, j.index, UnavailableError(f"batch failed: {exc}")) for j in jobs])

    def _wait_for_batch(self) -> str | None:
        """Under the lock: the queue to serve next.

        An idle model does not wait for company that is not coming: it waits (up to
        ``max_wait_ms``) only while received items are still being prepared, or for the
        ``min_wait_ms`` floor. Under load, batches fill up while the model computes.
        """
        max_wait = self.settings.max_wait_ms / 1000
        min_wait = self.settings.min_wait_ms / 1000
        while True:
            ready = [k for k, q in self.queues.items() if q]
            if not ready:
                if self.stopping:
                    return None
                self.cv.wait()
                continue
            task = min(ready, key=lambda k: self.queues[k][0].enqueued)
            queue = self.queues[task]
            waited = time.monotonic() - queue[0].enqueued
            full = sum(j.enc.length for j in queue) >= self.settings.batch_tokens or (
                len(queue) >= self.settings.max_batch_items)
            deadline = max(min_wait, max_wait if self.preparing > 0 else 0.0)
            if full or waited >= deadline or self.stopping:
                return task
            self.cv.wait(timeout=deadline - waited)

    def _take(self, task: str) -> list[_Job]:
        """Jobs in arrival order up to the token budget (at least one)."""
        queue = self.queues[task]
        jobs: list[_Job] = []
        tokens = 0
        limit = self.settings.max_batch_items * 4
        while queue and len(jobs) < limit and (not jobs or tokens + queue[0].enc.length <= self.settings.batch_tokens):
            job = queue.popleft()
            jobs.append(job)
            tokens += job.enc.length
        return jobs

    def _release(self, jobs: Sequence[_Job]) -> None:
        with self.cv:
            self.prepared_bytes -= sum(j.nbytes for j in jobs)
            self.cv.notify_all()

    def _run(self, task: str, jobs: list[_Job]) -> None:
        live: list[_Job] = []
        gone: list[_Job] = []
        answers: list[tuple[int, int, Any]] = []
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
            self._release(gone)
            self._answer(answers, stats=self._stats(task, dropped=dropped))
        if not live:
            return
        model: Any = self.embedder if task == "embed" else self.reranker
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
            self._release(batch)
            stats = self._stats(task, waits=waits if number == 0 else [], size=len(batch), seconds=seconds,
                                padded=max(j.enc.length for j in batch) * len(batch),
                                tokens=sum(j.enc.length for j in batch))
            self._answer([(j.rid, j.index, row) for j, row in zip(batch, rows, strict=True)], stats=stats)
            if any(j.nbytes for j in batch):
                release_free_memory()

    def _stats(self, task: str, **values: Any) -> dict[str, Any]:
        """What the request process exports as metrics: this batch, and the queues now."""
        with self.cv:
            depth = {k: len(q) for k, q in self.queues.items()}
            prepared = self.prepared_bytes
        return {"task": task, "depth": depth, "prepared_bytes": prepared, **values}

    def close(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        self.pool.shutdown(wait=False, cancel_futures=True)


def model_info(task: str, model: Any, settings: Settings) -> dict[str, Any]:
    ckpt = model.ckpt
    return {"task": task, "name": ckpt.path, "hidden_size": ckpt.hidden_size, "max_length": model.pre.max_length,
            "modalities": ["text", "image", "video"], "dtype": str(ckpt.dtype).replace("torch.", ""),
            "device": str(ckpt.device), "attention": ckpt.attention,
            "default_instruction": settings.default_instruction if task == "embed" else settings.rerank_instruction,
            "query_instruction": settings.query_instruction if task == "embed" else "",
            "text": model.pre.text.to_dict()}


def run_engine(sock: socket.socket, settings: Settings, log_level: str, log_format: str) -> None:
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

        from .model_loading import resolve_device
        from .runtime import load_models

        if resolve_device(settings).type == "cpu":
            # The request process needs a core; OpenMP threads that oversubscribe the machine
            # spin and slow every batch down.
            torch.set_num_threads(settings.torch_threads or max(1, (os.cpu_count() or 2) - 1))
        models = load_models(settings)
    except Exception as exc:  # the request process reports it and exits
        sock.sendall(encode(("failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")))
        return
    # Plain str: torch's version object would make the request process import torch to unpickle it.
    info = {"models": {}, "torch_version": str(torch.__version__),
            "transformers_version": str(transformers.__version__), "pid": os.getpid()}
    if models.embedder is not None:
        info["models"]["embed"] = model_info("embed", models.embedder, settings)
    if models.reranker is not None:
        info["models"]["rerank"] = model_info("rerank", models.reranker, settings)
    engine = Engine(models, settings, sock)
    engine.send(("ready", info))
    log.info("model process ready", extra={"pid": os.getpid()})
    engine.serve()
