"""Admission: bounded counts of items and raw media bytes in flight, taken as a permit.

Past the bounds a request is refused at once (RESOURCE_EXHAUSTED / 503) rather than growing
memory; streams wait for room instead. One request larger than the bounds still runs, alone.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

from vectorizer_service.core.call_context import CallContext
from vectorizer_service.core.errors import DeadlineError, NotReadyError, OverloadedError
from vectorizer_service.core.freed_memory import release_free_memory
from vectorizer_service.core.settings import Settings
from vectorizer_service.serving import metrics


class WireBytes:
    """Request bytes the process holds before and while they are admitted (HTTP bodies, gRPC
    messages, a stream's read-ahead): counted in bytes, because a count of requests says nothing
    about memory when one body may be 128 MiB. One message larger than the whole budget still
    runs, alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.freed = asyncio.Event()

    def clamp(self, nbytes: int) -> int:
        return min(nbytes, self.limit)

    def try_hold(self, nbytes: int) -> bool:
        nbytes = self.clamp(nbytes)
        if self.held + nbytes > self.limit:
            return False
        self.held += nbytes
        metrics.WIRE_BYTES.set(self.held)
        return True

    def hold_or_refuse(self, nbytes: int) -> int:
        """Hold ``nbytes`` (returns what to release) or raise OverloadedError."""
        if not self.try_hold(nbytes):
            metrics.ERRORS.labels("overloaded").inc()
            raise OverloadedError(f"{self.held} request bytes are held (limit {self.limit}, QVL_MAX_WIRE_BYTES); "
                                  "retry later")
        return self.clamp(nbytes)

    async def hold(self, nbytes: int, ctx: CallContext) -> int:
        """Wait for room (streams: reading stops, so the sender is slowed by flow control)."""
        while not self.try_hold(nbytes):
            self.freed.clear()
            remaining = ctx.deadline - time.monotonic()
            try:
                await asyncio.wait_for(self.freed.wait(), timeout=max(remaining, 0.001))
            except TimeoutError:
                raise DeadlineError("the deadline passed while waiting for room for the stream's items") from None
        return self.clamp(nbytes)

    def release(self, nbytes: int) -> None:
        self.held -= nbytes
        metrics.WIRE_BYTES.set(self.held)
        self.freed.set()


class HeldBytes:
    """What one request holds in the budget: its body as it arrives, then what the body parses into.
    A request alone may hold the whole budget (as one message larger than it may)."""

    def __init__(self, wire: WireBytes) -> None:
        self.wire = wire
        self.nbytes = 0

    def hold_or_refuse(self, nbytes: int) -> None:
        nbytes = min(nbytes, self.wire.limit - self.nbytes)
        if nbytes > 0:
            self.nbytes += self.wire.hold_or_refuse(nbytes)

    def release(self) -> None:
        if self.nbytes:
            self.wire.release(self.nbytes)
            self.nbytes = 0


class Admission:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.accepting = False
        self.items = 0  # admitted and not finished
        self.media_bytes = 0
        self.capacity = asyncio.Condition()
        self.waiting = 0  # requests waiting for room (streams)
        self.notifying: set[asyncio.Future[None]] = set()
        self.wire = WireBytes(settings.max_wire_bytes)

    def permit(self, items: int, media_bytes: int, *, wait: bool = False,
               ctx: CallContext | None = None) -> Permit:
        """``async with admission.permit(n, nbytes):`` holds room for the request while it runs."""
        return Permit(self, items, media_bytes, wait, ctx)

    def _no_room(self, items: int, media_bytes: int) -> bool:
        s = self.settings
        return self.items + items > s.queue_max_items or self.media_bytes + media_bytes > s.queue_max_bytes

    async def _acquire(self, items: int, media_bytes: int, wait: bool, ctx: CallContext | None) -> tuple[int, int]:
        if not self.accepting:
            raise NotReadyError("the service is starting or draining; retry shortly")
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
                        raise NotReadyError("the service is draining")
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
