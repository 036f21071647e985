"""Admission: bounded counts of items and raw media bytes in flight, taken as a permit.

Past the bounds a request is refused at once (RESOURCE_EXHAUSTED / 503) rather than growing
memory; streams wait for room instead. One request larger than the bounds still runs, alone.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

from vectorizer_service.core.call_context import CallContext
from vectorizer_service.core.errors import DeadlineError, OverloadedError, UnavailableError
from vectorizer_service.core.freed_memory import release_free_memory
from vectorizer_service.core.settings import Settings
from vectorizer_service.serving import metrics


class Admission:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.accepting = False
        self.items = 0  # admitted and not finished
        self.media_bytes = 0
        self.capacity = asyncio.Condition()
        self.waiting = 0  # requests waiting for room (streams)
        self.notifying: set[asyncio.Future[None]] = set()

    def permit(self, items: int, media_bytes: int, *, wait: bool = False,
               ctx: CallContext | None = None) -> Permit:
        """``async with admission.permit(n, nbytes):`` holds room for the request while it runs."""
        return Permit(self, items, media_bytes, wait, ctx)

    def _no_room(self, items: int, media_bytes: int) -> bool:
        s = self.settings
        return self.items + items > s.queue_max_items or self.media_bytes + media_bytes > s.queue_max_bytes

    async def _acquire(self, items: int, media_bytes: int, wait: bool, ctx: CallContext | None) -> tuple[int, int]:
        if not self.accepting:
            raise UnavailableError("the service is starting or draining; retry shortly")
        s = self.settings
        items, media_bytes = min(items, s.queue_max_items), min(media_bytes, s.queue_max_bytes)
        if self._no_room(items, media_bytes):
            if not wait:
                metrics.ERRORS.labels("overloaded").inc()
                raise OverloadedError(
                    f"queue full ({self.items} items, {self.media_bytes} media bytes in flight; limits "
                    f"{s.queue_max_items} and {s.queue_max_bytes}); retry later")
            await self._wait_for_room(items, media_bytes, ctx)
        self.items += items
        self.media_bytes += media_bytes
        metrics.ADMITTED.set(self.items)
        metrics.ADMITTED_BYTES.set(self.media_bytes)
        return items, media_bytes

    async def _wait_for_room(self, items: int, media_bytes: int, ctx: CallContext | None) -> None:
        self.waiting += 1
        try:
            async with self.capacity:
                while self._no_room(items, media_bytes):
                    remaining = (ctx.deadline - time.monotonic()) if ctx else 60.0
                    try:
                        await asyncio.wait_for(self.capacity.wait(), timeout=max(remaining, 0.001))
                    except TimeoutError:
                        raise DeadlineError("the deadline passed while waiting for queue space") from None
                    if not self.accepting:
                        raise UnavailableError("the service is draining")
        finally:
            self.waiting -= 1

    def _release(self, items: int, media_bytes: int) -> None:
        self.items -= items
        self.media_bytes -= media_bytes
        metrics.ADMITTED.set(self.items)
        metrics.ADMITTED_BYTES.set(self.media_bytes)
        if media_bytes:
            release_free_memory()  # the request's media copies (message, items, pickle) go back to the OS
        if self.waiting:  # streams waiting for room
            task = asyncio.ensure_future(self._notify())
            self.notifying.add(task)
            task.add_done_callback(self.notifying.discard)

    async def _notify(self) -> None:
        async with self.capacity:
            self.capacity.notify_all()


class Permit:
    """Room for one request, from ``__aenter__`` (which may refuse or wait) to ``__aexit__``."""

    def __init__(self, admission: Admission, items: int, media_bytes: int, wait: bool,
                 ctx: CallContext | None) -> None:
        self.admission = admission
        self.wanted = (items, media_bytes)
        self.wait = wait
        self.ctx = ctx
        self.held: tuple[int, int] | None = None

    async def __aenter__(self) -> Permit:
        self.held = await self.admission._acquire(*self.wanted, self.wait, self.ctx)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.held is not None:
            self.admission._release(*self.held)
            self.held = None
