"""The dynamic batcher: concurrent requests merged into model batches by token budget.

Requests enter on the event loop and are admitted against bounded counts of items and raw
bytes: past them a request is refused at once (streams wait instead) rather than growing
memory. Media decoding and tokenization run on a thread pool, chunk by chunk, and each
prepared chunk goes straight to the model queue; a chunk waits before decoding while the
prepared-but-not-computed tensors exceed their byte budget, so decoded media never pile up.
One model thread takes sequences from the embed and rerank queues (oldest head first, so
neither starves), plans batches and runs them. Work whose caller has gone or whose deadline
has passed is dropped before compute.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import metrics
from .batch_planning import is_small_text, plan_batches, preparation_chunks
from .embedder import Embedder
from .errors import CancelledError, DeadlineError, InputError, OverloadedError, QvlError, UnavailableError
from .items import Item
from .memory import release_free_memory
from .outputs import EncodedVector, check_options, encode_vector
from .preprocess import DecodedItem, Encoded
from .reranker import Reranker, RerankResult, result_from_rows
from .settings import Settings

log = logging.getLogger("qvl.batcher")


@dataclass
class CallContext:
    """A caller's deadline and liveness, checked before compute."""

    deadline: float
    cancelled: bool = False

    @classmethod
    def within(cls, seconds: float) -> CallContext:
        return cls(deadline=time.monotonic() + seconds)

    def check(self) -> None:
        if self.cancelled:
            raise CancelledError("the caller cancelled the request")
        if time.monotonic() > self.deadline:
            raise DeadlineError("the deadline passed before the work was done")


@dataclass
class EmbedOptions:
    dimensions: int | None = None
    encoding: str = "float32"
    normalize: bool = True
    instruction: str | None = None


@dataclass
class _Job:
    enc: Encoded
    ctx: CallContext
    group: int
    nbytes: int
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.monotonic)


def _media_bytes(item: Item) -> int:
    size = sum(len(p) for p in item.images if isinstance(p, bytes | bytearray))
    for v in item.videos:
        if isinstance(v, bytes | bytearray):
            size += len(v)
        elif isinstance(v, list):
            size += sum(len(f) for f in v if isinstance(f, bytes | bytearray))
    return size


def _tensor_bytes(enc: Encoded) -> int:
    return sum(p.pixel_values.element_size() * p.pixel_values.nelement() for p in (*enc.images, *enc.videos))


class Batcher:
    def __init__(self, embedder: Embedder | None, reranker: Reranker | None, settings: Settings) -> None:
        self.embedder = embedder
        self.reranker = reranker
        self.settings = settings
        self.pool = ThreadPoolExecutor(settings.preprocess_workers, thread_name_prefix="qvl-preprocess")
        self.queues: dict[str, deque[_Job]] = {"embed": deque(), "rerank": deque()}
        self.cv = threading.Condition()  # guards the queues and prepared_bytes
        self.prepared_bytes = 0
        self.admitted = 0
        self.admitted_bytes = 0
        self.capacity = asyncio.Condition()
        self.accepting = False
        self.stopping = False
        self.groups = itertools.count()
        self.thread = threading.Thread(target=self._model_loop, name="qvl-model", daemon=True)

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        self.accepting = True
        self.thread.start()

    def stop_accepting(self) -> None:
        self.accepting = False

    async def drain(self, timeout: float) -> bool:
        """Wait until admitted work is done (True) or the grace period ends (False)."""
        self.stop_accepting()
        end = time.monotonic() + timeout
        while self.admitted and time.monotonic() < end:
            await asyncio.sleep(0.05)
        return self.admitted == 0

    def close(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- admission -----------------------------------------------------------
    async def admit(self, n: int, nbytes: int, *, wait: bool = False,
                    ctx: CallContext | None = None) -> tuple[int, int]:
        """Reserve room for ``n`` items of ``nbytes`` raw media; returns what to release."""
        if not self.accepting:
            raise UnavailableError("the service is starting or draining; retry shortly")
        s = self.settings
        # One request larger than the limits still runs, alone.
        n, nbytes = min(n, s.queue_max_items), min(nbytes, s.queue_max_bytes)
        async with self.capacity:
            while self.admitted + n > s.queue_max_items or self.admitted_bytes + nbytes > s.queue_max_bytes:
                if not wait:
                    metrics.ERRORS.labels("overloaded").inc()
                    raise OverloadedError(
                        f"queue full ({self.admitted} items, {self.admitted_bytes} media bytes in flight; limits "
                        f"{s.queue_max_items} and {s.queue_max_bytes}); retry later")
                remaining = (ctx.deadline - time.monotonic()) if ctx else 60.0
                try:
                    await asyncio.wait_for(self.capacity.wait(), timeout=max(remaining, 0.001))
                except TimeoutError:
                    raise DeadlineError("the deadline passed while waiting for queue space") from None
                if not self.accepting:
                    raise UnavailableError("the service is draining")
            self.admitted += n
            self.admitted_bytes += nbytes
            metrics.ADMITTED.set(self.admitted)
            metrics.ADMITTED_BYTES.set(self.admitted_bytes)
        return n, nbytes

    async def release(self, reserved: tuple[int, int]) -> None:
        async with self.capacity:
            self.admitted -= reserved[0]
            self.admitted_bytes -= reserved[1]
            metrics.ADMITTED.set(self.admitted)
            metrics.ADMITTED_BYTES.set(self.admitted_bytes)
            self.capacity.notify_all()

    # -- requests ------------------------------------------------------------
    async def embed(self, items: Sequence[Item] | Callable[[], Sequence[Item]], options: EmbedOptions,
                    ctx: CallContext, *, wait_for_capacity: bool = False,
                    size_hint: tuple[int, int] | None = None) -> list[EncodedVector | QvlError]:
        """Embed items. ``items`` may be a callable with a ``size_hint`` (count, bytes): it is then
        called only once the request is admitted, so a refused request never copies its media."""
        embedder = self._need(self.embedder, "embedding")
        check_options(options.dimensions, options.encoding, embedder.hidden_size)
        if callable(items):
            assert size_hint is not None
            count, nbytes = size_hint
        else:
            count, nbytes = len(items), sum(_media_bytes(i) for i in items)
        if count > self.settings.max_items_per_request:
            raise InputError(f"{count} items, over the limit of {self.settings.max_items_per_request}", status=413)
        reserved = await self.admit(count, nbytes, wait=wait_for_capacity, ctx=ctx)
        try:
            if callable(items):
                items = items()
            group = next(self.groups)

            def prepare(start: int, chunk: list[Item]) -> list[Any]:
                return self._enqueue("embed", embedder.prepare(chunk, options.instruction), start, ctx, group)

            rows = await self._run_chunks(items, prepare, ctx)
        finally:
            await self.release(reserved)
        return [r if isinstance(r, QvlError) else
                encode_vector(r, dimensions=options.dimensions, encoding=options.encoding,
                              normalize=options.normalize) for r in rows]

    async def rerank(self, query: Item, documents: Sequence[Item], instruction: str | None, top_k: int | None,
                     ctx: CallContext) -> RerankResult:
        reranker = self._need(self.reranker, "reranker")
        reranker.check_request(len(documents), top_k)
        nbytes = _media_bytes(query) + sum(_media_bytes(d) for d in documents)
        reserved = await self.admit(max(1, len(documents)), nbytes, ctx=ctx)
        try:
            loop = asyncio.get_running_loop()
            decoded_query: DecodedItem = await loop.run_in_executor(self.pool, reranker.decode_query, query)
            group = next(self.groups)

            def prepare(start: int, chunk: list[Item]) -> list[Any]:
                docs = reranker.decode_documents(chunk)
                return self._enqueue("rerank", reranker.pairs(decoded_query, docs, instruction), start, ctx, group)

            rows = await self._run_chunks(documents, prepare, ctx)
        finally:
            await self.release(reserved)
        return result_from_rows(rows, top_k)

    def _need(self, model: Any, what: str) -> Any:
        # While starting, no model is loaded yet: that is UNAVAILABLE (retry), not bad input.
        if not self.accepting:
            raise UnavailableError("the service is starting or draining; retry shortly")
        if model is None:
            raise InputError(f"this service has no {what} model loaded", status=404)
        return model

    async def _run_chunks(self, items: Sequence[Item], prepare: Callable[[int, list[Item]], list[Any]],
                          ctx: CallContext) -> list[Any]:
        """Prepare chunks on the pool (each is queued as soon as it is ready), then await every row."""
        loop = asyncio.get_running_loop()
        ctx.check()
        chunks = preparation_chunks(items)
        if len(chunks) == 1 and is_small_text(chunks[0][1]):
            # A few short texts tokenize in microseconds: cheaper here than a hop to the pool.
            return await self._gather(prepare(0, chunks[0][1]), ctx, [])
        tasks = [loop.run_in_executor(self.pool, self._budgeted, prepare, start, chunk, ctx)
                 for start, chunk in chunks]
        slots: list[Any] = []
        try:
            for task in tasks:
                slots += await task
        except asyncio.CancelledError:
            ctx.cancelled = True
            for task in tasks:
                task.cancel()
            raise
        return await self._gather(slots, ctx, tasks)

    @staticmethod
    async def _gather(slots: list[Any], ctx: CallContext, tasks: list[asyncio.Future[Any]]) -> list[Any]:
        """Rows of the queued sequences, errors in place."""
        try:
            rows = await asyncio.gather(*(asyncio.wrap_future(s) if isinstance(s, concurrent.futures.Future)
                                          else _done(s) for s in slots))
        except asyncio.CancelledError:
            ctx.cancelled = True  # queued sequences of a gone caller are dropped before compute
            for task in tasks:
                task.cancel()
            raise
        return list(rows)

    def _budgeted(self, prepare: Callable[[int, list[Item]], list[Any]], start: int, chunk: list[Item],
                  ctx: CallContext) -> list[Any]:
        """On a pool thread: wait while prepared tensors are over budget, then prepare and enqueue."""
        with self.cv:
            while self.prepared_bytes > self.settings.prepared_max_bytes and not self.stopping:
                if ctx.cancelled or time.monotonic() > ctx.deadline:
                    break
                self.cv.wait(timeout=0.1)
        if ctx.cancelled:
            return [CancelledError("the caller cancelled the request")] * len(chunk)
        if time.monotonic() > ctx.deadline:
            return [DeadlineError("the deadline passed before the work was done")] * len(chunk)
        return prepare(start, chunk)

    def _enqueue(self, task: str, prepared: Sequence[Encoded | QvlError], start: int, ctx: CallContext,
                 group: int) -> list[Any]:
        """Queue the prepared sequences for the model thread; errors stay in place (indices shifted)."""
        out: list[Any] = []
        jobs: list[_Job] = []
        for i, p in enumerate(prepared):
            if isinstance(p, Encoded):
                job = _Job(p, ctx, group, _tensor_bytes(p))
                jobs.append(job)
                out.append(job.future)
            else:
                out.append(p.at(item=start + i) if isinstance(p, InputError) else p)
        if jobs:
            with self.cv:
                if self.stopping:
                    raise UnavailableError("the service is shutting down")
                self.queues[task].extend(jobs)
                self.prepared_bytes += sum(j.nbytes for j in jobs)
                metrics.PREPARED_BYTES.set(self.prepared_bytes)
                metrics.QUEUE_DEPTH.labels(task).set(len(self.queues[task]))
                self.cv.notify_all()
        return out

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
                for job in jobs:
                    self._resolve(job, UnavailableError(f"batch failed: {exc}"))

    def _wait_for_batch(self) -> str | None:
        """Under the lock: the queue to serve next.

        An idle model does not wait for company that is not coming: it waits (up to
        ``max_wait_ms``) only while admitted items are still being prepared, or for the
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
            queued = sum(len(q) for q in self.queues.values())
            preparing = self.admitted - queued  # admitted items not yet queued (decoding, tokenizing)
            full = sum(j.enc.length for j in queue) >= self.settings.batch_tokens or (
                len(queue) >= self.settings.max_batch_items)
            deadline = max(min_wait, max_wait if preparing > 0 else 0.0)
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
        metrics.QUEUE_DEPTH.labels(task).set(len(queue))
        return jobs

    def _run(self, task: str, jobs: list[_Job]) -> None:
        live = []
        now = time.monotonic()
        for job in jobs:
            if job.ctx.cancelled or job.future.cancelled():
                metrics.DROPPED.labels("cancelled").inc()
                self._resolve(job, CancelledError("the caller cancelled the request"))
            elif now > job.ctx.deadline:
                metrics.DROPPED.labels("deadline").inc()
                self._resolve(job, DeadlineError("the deadline passed before compute"))
            else:
                metrics.QUEUE_WAIT.labels(task).observe(now - job.enqueued)
                live.append(job)
        if not live:
            return
        model: Any = self.embedder if task == "embed" else self.reranker
        # Rerank pairs of one request stay together so their query is a shared prefix.
        keys = [j.group for j in live] if task == "rerank" else None
        plan = plan_batches([j.enc.length for j in live], [j.enc.vision_patches for j in live],
                            token_budget=self.settings.batch_tokens, max_items=self.settings.max_batch_items,
                            patch_budget=self.settings.batch_max_patches, keys=keys)
        for group in plan:
            batch = [live[i] for i in group]
            started = time.perf_counter()
            rows = model.forward_isolating([j.enc for j in batch])
            metrics.FORWARD_SECONDS.labels(task).observe(time.perf_counter() - started)
            metrics.BATCH_SIZE.labels(task).observe(len(batch))
            metrics.BATCH_TOKENS.labels(task).observe(max(j.enc.length for j in batch) * len(batch))
            metrics.ITEMS.labels(task).inc(len(batch))
            metrics.TOKENS.labels(task).inc(sum(j.enc.length for j in batch))
            for job, row in zip(batch, rows, strict=True):
                self._resolve(job, row)
            if any(j.nbytes for j in batch):
                release_free_memory()

    def _resolve(self, job: _Job, value: Any) -> None:
        with self.cv:
            self.prepared_bytes -= job.nbytes
            metrics.PREPARED_BYTES.set(self.prepared_bytes)
            self.cv.notify_all()
        if not job.future.done():
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled meanwhile
                job.future.set_result(value)


async def _done(value: Any) -> Any:
    return value
