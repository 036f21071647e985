"""The dynamic batcher: concurrent requests merged into model batches by token budget.

Requests enter on the event loop. Admission is bounded (``queue_max_items``): past it a
request is refused at once (or, for streams, waits) instead of growing memory. Media decoding
and tokenization run on a thread pool, overlapping with model compute. One model thread takes
sequences from the embed and rerank queues (oldest head first, so neither starves), waits up to
``max_wait_ms`` for company, plans batches and runs them. Work whose caller has gone or whose
deadline has passed is dropped before compute.
"""

from __future__ import annotations

import asyncio
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
from .batch_planning import plan_batches
from .embedder import Embedder
from .errors import CancelledError, DeadlineError, InputError, OverloadedError, QvlError, UnavailableError
from .items import Item
from .outputs import EncodedVector, check_options, encode_vector
from .preprocess import Encoded
from .reranker import Reranker, RerankResult, result_from_rows
from .settings import Settings

log = logging.getLogger("qvl.batcher")
TEXT_CHUNK = 32  # text-only items tokenized together in one pool task


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
    future: asyncio.Future[Any]
    group: int
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, embedder: Embedder | None, reranker: Reranker | None, settings: Settings) -> None:
        self.embedder = embedder
        self.reranker = reranker
        self.settings = settings
        self.pool = ThreadPoolExecutor(settings.preprocess_workers, thread_name_prefix="qvl-preprocess")
        self.queues: dict[str, deque[_Job]] = {"embed": deque(), "rerank": deque()}
        self.cv = threading.Condition()
        self.admitted = 0
        self.capacity = asyncio.Condition()
        self.accepting = False
        self.stopping = False
        self.groups = itertools.count()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._model_loop, name="qvl-model", daemon=True)

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
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
        self.thread.join(timeout=10)
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- admission -----------------------------------------------------------
    async def admit(self, n: int, *, wait: bool = False, ctx: CallContext | None = None) -> None:
        if not self.accepting:
            raise UnavailableError("the service is starting or draining; retry shortly")
        limit = self.settings.queue_max_items
        n_eff = min(n, limit)  # one request larger than the queue still runs, alone
        async with self.capacity:
            while self.admitted + n_eff > limit:
                if not wait:
                    metrics.ERRORS.labels("overloaded").inc()
                    raise OverloadedError(f"queue full ({self.admitted} of {limit} items in flight); retry later")
                remaining = (ctx.deadline - time.monotonic()) if ctx else 60.0
                if remaining <= 0:
                    raise DeadlineError("the deadline passed while waiting for queue space")
                try:
                    await asyncio.wait_for(self.capacity.wait(), timeout=remaining)
                except TimeoutError:
                    raise DeadlineError("the deadline passed while waiting for queue space") from None
                if not self.accepting:
                    raise UnavailableError("the service is draining")
            self.admitted += n_eff
            metrics.ADMITTED.set(self.admitted)
        return None

    async def release(self, n: int) -> None:
        async with self.capacity:
            self.admitted -= min(n, self.settings.queue_max_items)
            metrics.ADMITTED.set(self.admitted)
            self.capacity.notify_all()

    # -- requests ------------------------------------------------------------
    async def embed(self, items: Sequence[Item], options: EmbedOptions, ctx: CallContext, *,
                    wait_for_capacity: bool = False) -> list[EncodedVector | QvlError]:
        embedder = self._need(self.embedder, "embedding")
        check_options(options.dimensions, options.encoding, embedder.hidden_size)
        if len(items) > self.settings.max_items_per_request:
            raise InputError(f"{len(items)} items, over the limit of {self.settings.max_items_per_request}",
                             status=413)
        await self.admit(len(items), wait=wait_for_capacity, ctx=ctx)
        try:
            prepared = await self._prepare_items(embedder, items, options.instruction)
            rows = await self._compute("embed", prepared, ctx)
        finally:
            await self.release(len(items))
        return [r if isinstance(r, QvlError) else
                encode_vector(r, dimensions=options.dimensions, encoding=options.encoding,
                              normalize=options.normalize) for r in rows]

    async def rerank(self, query: Item, documents: Sequence[Item], instruction: str | None, top_k: int | None,
                     ctx: CallContext) -> RerankResult:
        reranker = self._need(self.reranker, "reranker")
        reranker.check_request(len(documents), top_k)
        await self.admit(max(1, len(documents)), ctx=ctx)
        try:
            loop = asyncio.get_running_loop()
            q_task = loop.run_in_executor(self.pool, reranker.decode_query, query)
            chunks = _chunks(documents, self._is_light)
            doc_tasks = [loop.run_in_executor(self.pool, reranker.decode_documents, chunk) for _, chunk in chunks]
            decoded_query = await q_task
            decoded_docs: list[Any] = []
            for (start, _), task in zip(chunks, doc_tasks, strict=True):
                decoded_docs += [d.at(item=start + i) if isinstance(d, InputError) else d
                                 for i, d in enumerate(await task)]
            prepared = await loop.run_in_executor(self.pool, reranker.pairs, decoded_query, decoded_docs,
                                                  instruction)
            rows = await self._compute("rerank", prepared, ctx)
        finally:
            await self.release(max(1, len(documents)))
        return result_from_rows(rows, top_k)

    @staticmethod
    def _need(model: Any, what: str) -> Any:
        if model is None:
            raise InputError(f"this service has no {what} model loaded", status=404)
        return model

    @staticmethod
    def _is_light(item: Item) -> bool:
        return not item.images and not item.videos

    async def _prepare_items(self, embedder: Embedder, items: Sequence[Item],
                             instruction: str | None) -> list[Encoded | QvlError]:
        loop = asyncio.get_running_loop()
        chunks = _chunks(items, self._is_light)
        tasks = [loop.run_in_executor(self.pool, embedder.prepare, chunk, instruction) for _, chunk in chunks]
        out: list[Encoded | QvlError] = []
        for (start, _), task in zip(chunks, tasks, strict=True):
            out += [p.at(item=start + i) if isinstance(p, InputError) else p for i, p in enumerate(await task)]
        return out

    async def _compute(self, task: str, prepared: Sequence[Encoded | QvlError], ctx: CallContext) -> list[Any]:
        """Queue the sequences for the model thread and wait for their rows."""
        ctx.check()
        loop = asyncio.get_running_loop()
        group = next(self.groups)
        out: list[Any] = list(prepared)
        jobs: list[tuple[int, _Job]] = []
        for i, p in enumerate(prepared):
            if isinstance(p, Encoded):
                jobs.append((i, _Job(p, ctx, loop.create_future(), group)))
        if jobs:
            with self.cv:
                if self.stopping:
                    raise UnavailableError("the service is shutting down")
                self.queues[task].extend(j for _, j in jobs)
                metrics.QUEUE_DEPTH.labels(task).set(len(self.queues[task]))
                self.cv.notify()
            try:
                results = await asyncio.gather(*(j.future for _, j in jobs))
            except asyncio.CancelledError:
                ctx.cancelled = True  # the model thread drops the rest before compute
                raise
            for (i, _), row in zip(jobs, results, strict=True):
                out[i] = row
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
        """Under the lock: the queue to serve next, once its batch is full or its head waited enough."""
        max_wait = self.settings.max_wait_ms / 1000
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
            if full or waited >= max_wait or self.stopping:
                return task
            self.cv.wait(timeout=max_wait - waited)

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
                            keys=keys)
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

    def _resolve(self, job: _Job, value: Any) -> None:
        assert self.loop is not None

        def settle(fut: asyncio.Future[Any] = job.future) -> None:
            if not fut.done():
                fut.set_result(value)

        self.loop.call_soon_threadsafe(settle)


def _chunks(items: Sequence[Item], light: Callable[[Item], bool]) -> list[tuple[int, list[Item]]]:
    """Pool tasks: runs of text-only items together, each item with media alone (decoding is the work)."""
    chunks: list[tuple[int, list[Item]]] = []
    for i, item in enumerate(items):
        if light(item) and chunks and light(chunks[-1][1][-1]) and len(chunks[-1][1]) < TEXT_CHUNK:
            chunks[-1][1].append(item)
        else:
            chunks.append((i, [item]))
    return chunks
