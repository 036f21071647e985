"""The model process's queues: prepared sequences wait here until the model thread takes a batch.

One lock (a condition) guards the queues, the prepared-tensor budget and the request books;
preparation threads put sequences in, the model thread takes them out. The queue served next
is the one whose head waited longest, so neither task starves.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vectorizer_service.core.call_context import CallContext
from vectorizer_service.core.pipe_messages import BatchStats, Row
from vectorizer_service.core.settings import Settings
from vectorizer_service.engine.request_books import OpenRequest, RequestBooks
from vectorizer_service.model.preprocessing import Encoded

TASKS = ("embed", "rerank")


@dataclass
class Job:
    """One prepared sequence of a request."""

    enc: Encoded
    ctx: CallContext
    rid: int
    index: int
    nbytes: int  # pixel tensors held while it waits (the prepared budget)
    enqueued: float = field(default_factory=time.monotonic)


def tensor_bytes(enc: Encoded) -> int:
    return sum(p.pixel_values.element_size() * p.pixel_values.nelement() for p in (*enc.images, *enc.videos))


class Batcher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cv = threading.Condition()
        self.queues: dict[str, deque[Job]] = {task: deque() for task in TASKS}
        self.prepared_bytes = 0
        self.books = RequestBooks()
        self.stopping = False

    # -- the request books, under the lock -----------------------------------------------------
    def open(self, rid: int, ctx: CallContext, rows: int) -> None:
        with self.cv:
            self.books.open(rid, ctx, rows)

    def request(self, rid: int) -> OpenRequest | None:
        with self.cv:
            return self.books.get(rid)

    def cancel(self, rid: int) -> None:
        with self.cv:
            if self.books.cancel(rid):
                self.cv.notify_all()

    def close(self, rid: int) -> bool:
        with self.cv:
            return self.books.close(rid)

    def left_preparation(self, rid: int, count: int) -> None:
        with self.cv:
            self.books.prepared(rid, count)

    def answered(self, rows: Iterable[Row]) -> list[Row]:
        with self.cv:
            return self.books.answered(rows)

    # -- in ------------------------------------------------------------------------------------
    def wait_for_budget(self, ctx: CallContext) -> None:
        """Block while prepared tensors are over budget (until the caller goes or its deadline passes)."""
        with self.cv:
            while self.prepared_bytes > self.settings.prepared_max_bytes and not self.stopping:
                if ctx.cancelled or time.monotonic() > ctx.deadline:
                    return
                self.cv.wait(timeout=0.1)

    def enqueue(self, task: str, rid: int, jobs: Sequence[Job]) -> None:
        """Queue a request's prepared sequences (they leave preparation)."""
        with self.cv:
            self.books.prepared(rid, len(jobs))
            if jobs:
                self.queues[task].extend(jobs)
                self.prepared_bytes += sum(j.nbytes for j in jobs)
                self.cv.notify_all()

    # -- out -----------------------------------------------------------------------------------
    def next_batch(self) -> tuple[str, list[Job]] | None:
        """The next task's jobs (blocking); None once stopping with nothing queued."""
        with self.cv:
            task = self._wait_for_batch()
            return None if task is None else (task, self._take(task))

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
            deadline = max(min_wait, max_wait if self.books.preparing > 0 else 0.0)
            if full or waited >= deadline or self.stopping:
                return task
            self.cv.wait(timeout=deadline - waited)

    def _take(self, task: str) -> list[Job]:
        """Under the lock: jobs in arrival order up to the token budget (at least one)."""
        queue = self.queues[task]
        jobs: list[Job] = []
        tokens = 0
        limit = self.settings.max_batch_items * 4
        while queue and len(jobs) < limit and (not jobs or tokens + queue[0].enc.length <= self.settings.batch_tokens):
            job = queue.popleft()
            jobs.append(job)
            tokens += job.enc.length
        return jobs

    def release(self, jobs: Sequence[Job]) -> None:
        """Their tensors are no longer held: room in the prepared budget."""
        with self.cv:
            self.prepared_bytes -= sum(j.nbytes for j in jobs)
            self.cv.notify_all()

    def stats(self, task: str, **values: Any) -> BatchStats:
        with self.cv:
            depth = {k: len(q) for k, q in self.queues.items()}
            prepared = self.prepared_bytes
        return BatchStats(task=task, depth=depth, prepared_bytes=prepared, **values)

    def stop(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify_all()
