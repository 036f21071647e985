"""The request side of the service: admission, text preparation, and calls to the model process.

Requests enter on the event loop and are admitted against bounded counts of items and raw
media bytes: past them a request is refused at once (streams wait instead) rather than
growing memory. Text-only items are rendered and tokenized here (a few short texts inline,
larger runs on a thread), so the model process only batches and computes them; items with
media travel raw and are decoded there. The dynamic batching itself is ``engine.py``'s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import metrics
from .batch_planning import is_small_text
from .calls import CallContext, EmbedOptions
from .engine_link import EngineLink
from .errors import DeadlineError, InputError, OverloadedError, QvlError, UnavailableError
from .items import Item
from .memory import release_free_memory
from .outputs import EncodedVector, check_options, encode_vector
from .prompts import embedding_prompt
from .ranking import RerankResult, check_rerank_request, result_from_rows
from .settings import Settings
from .text_encoding import TextEncoder

STUCK_MARGIN_S = 30.0


def _media_bytes(item: Item) -> int:
    size = sum(len(p) for p in item.images if isinstance(p, bytes | bytearray))
    for v in item.videos:
        if isinstance(v, bytes | bytearray):
            size += len(v)
        elif isinstance(v, list):
            size += sum(len(f) for f in v if isinstance(f, bytes | bytearray))
    return size


def _record(stats: dict[str, Any]) -> None:
    """The model process's batch statistics, exported from here."""
    task = stats["task"]
    for name, depth in stats["depth"].items():
        metrics.QUEUE_DEPTH.labels(name).set(depth)
    metrics.PREPARED_BYTES.set(stats["prepared_bytes"])
    for wait in stats.get("waits", ()):
        metrics.QUEUE_WAIT.labels(task).observe(wait)
    for reason, count in stats.get("dropped", {}).items():
        if count:
            metrics.DROPPED.labels(reason).inc(count)
    if "size" in stats:
        metrics.FORWARD_SECONDS.labels(task).observe(stats["seconds"])
        metrics.BATCH_SIZE.labels(task).observe(stats["size"])
        metrics.BATCH_TOKENS.labels(task).observe(stats["padded"])
        metrics.ITEMS.labels(task).inc(stats["size"])
        metrics.TOKENS.labels(task).inc(stats["tokens"])


class Dispatcher:
    def __init__(self, settings: Settings, *, log_level: str = "INFO", log_format: str = "json") -> None:
        self.settings = settings
        self.link = EngineLink(settings, log_level=log_level, log_format=log_format, on_stats=_record)
        self.models: dict[str, dict[str, Any]] = {}  # task -> what the model process serves
        self.text: dict[str, TextEncoder] = {}
        self.admitted = 0
        self.admitted_bytes = 0
        self.capacity = asyncio.Condition()
        self.waiting = 0  # requests waiting for room (streams)
        self.notifying: set[asyncio.Future[None]] = set()
        self.accepting = False

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        """Start (or restart) the model process; accept work once it has loaded."""
        info = await self.link.start()
        self.models = info["models"]
        self.text = {task: TextEncoder.from_dict(m["text"]) for task, m in self.models.items()}
        self.accepting = True

    @property
    def alive(self) -> bool:
        return self.link.alive

    def model_name(self, task: str) -> str:
        return self.models[task]["name"] if task in self.models else ""

    def stop_accepting(self) -> None:
        self.accepting = False

    async def drain(self, timeout: float) -> bool:
        """Wait until admitted work is done (True) or the grace period ends (False)."""
        self.stop_accepting()
        end = time.monotonic() + timeout
        while self.admitted and time.monotonic() < end:
            await asyncio.sleep(0.05)
        return self.admitted == 0

    async def close(self) -> None:
        await self.link.stop()

    # -- admission -----------------------------------------------------------
    async def admit(self, n: int, nbytes: int, *, wait: bool = False,
                    ctx: CallContext | None = None) -> tuple[int, int]:
        """Reserve room for ``n`` items of ``nbytes`` raw media; returns what to release."""
        if not self.accepting:
            raise UnavailableError("the service is starting or draining; retry shortly")
        s = self.settings
        # One request larger than the limits still runs, alone.
        n, nbytes = min(n, s.queue_max_items), min(nbytes, s.queue_max_bytes)
        if self._no_room(n, nbytes):
            if not wait:
                metrics.ERRORS.labels("overloaded").inc()
                raise OverloadedError(
                    f"queue full ({self.admitted} items, {self.admitted_bytes} media bytes in flight; limits "
                    f"{s.queue_max_items} and {s.queue_max_bytes}); retry later")
            await self._wait_for_room(n, nbytes, ctx)
        self.admitted += n
        self.admitted_bytes += nbytes
        metrics.ADMITTED.set(self.admitted)
        metrics.ADMITTED_BYTES.set(self.admitted_bytes)
        return n, nbytes

    def _no_room(self, n: int, nbytes: int) -> bool:
        s = self.settings
        return self.admitted + n > s.queue_max_items or self.admitted_bytes + nbytes > s.queue_max_bytes

    async def _wait_for_room(self, n: int, nbytes: int, ctx: CallContext | None) -> None:
        self.waiting += 1
        try:
            async with self.capacity:
                while self._no_room(n, nbytes):
                    remaining = (ctx.deadline - time.monotonic()) if ctx else 60.0
                    try:
                        await asyncio.wait_for(self.capacity.wait(), timeout=max(remaining, 0.001))
                    except TimeoutError:
                        raise DeadlineError("the deadline passed while waiting for queue space") from None
                    if not self.accepting:
                        raise UnavailableError("the service is draining")
        finally:
            self.waiting -= 1

    def release(self, reserved: tuple[int, int]) -> None:
        self.admitted -= reserved[0]
        self.admitted_bytes -= reserved[1]
        metrics.ADMITTED.set(self.admitted)
        metrics.ADMITTED_BYTES.set(self.admitted_bytes)
        if reserved[1]:
            release_free_memory()  # the request's media copies (message, items, pickle) go back to the OS
        if self.waiting:  # streams waiting for room
            task = asyncio.ensure_future(self._notify())
            self.notifying.add(task)
            task.add_done_callback(self.notifying.discard)

    async def _notify(self) -> None:
        async with self.capacity:
            self.capacity.notify_all()

    # -- requests ------------------------------------------------------------
    def _need(self, task: str, what: str) -> dict[str, Any]:
        # While starting, no model is loaded yet: that is UNAVAILABLE (retry), not bad input.
        if not self.accepting:
            raise UnavailableError("the service is starting or draining; retry shortly")
        if task not in self.models:
            raise InputError(f"this service has no {what} model loaded", status=404)
        return self.models[task]

    async def embed(self, items: Sequence[Item] | Callable[[], Sequence[Item]], options: EmbedOptions,
                    ctx: CallContext, *, wait_for_capacity: bool = False,
                    size_hint: tuple[int, int] | None = None) -> list[EncodedVector | QvlError]:
        """Embed items. ``items`` may be a callable with a ``size_hint`` (count, bytes): it is then
        called only once the request is admitted, so a refused request never copies its media."""
        model = self._need("embed", "embedding")
        check_options(options.dimensions, options.encoding, model["hidden_size"])
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
            rows = await self._embed_rows(list(items), options.instruction, ctx)
        finally:
            self.release(reserved)
        return [r if isinstance(r, QvlError) else
                encode_vector(r, dimensions=options.dimensions, encoding=options.encoding,
                              normalize=options.normalize) for r in rows]

    async def _embed_rows(self, items: list[Item], instruction: str | None, ctx: CallContext) -> list[Any]:
        out: list[Any] = [None] * len(items)
        light = [i for i, item in enumerate(items) if not item.images and not item.videos]
        entries: list[tuple[int, Any]] = []
        if light:
            texts = [items[i] for i in light]
            if is_small_text(texts):
                prepared = self.encode_texts(texts, instruction)
            else:  # rendering many templates would hold the event loop
                prepared = await asyncio.to_thread(self.encode_texts, texts, instruction)
            for i, p in zip(light, prepared, strict=True):
                if isinstance(p, InputError):
                    out[i] = p.at(item=i)
                else:
                    entries.append((i, p))
        entries += [(i, item) for i, item in enumerate(items) if item.images or item.videos]
        if entries:
            rows = await self._call(len(items), len(entries),
                                    lambda rid: ("embed", rid, ctx.deadline, instruction, entries), ctx)
            for i, _ in entries:
                out[i] = rows[i]
        return out

    def encode_texts(self, items: Sequence[Item], instruction: str | None) -> list[list[int] | InputError]:
        """Token ids of text-only items, exactly as the model process's preprocessor makes them."""
        text = self.text["embed"]
        out: list[list[int] | InputError] = [InputError("not prepared")] * len(items)
        prompts, slots = [], []
        for k, item in enumerate(items):
            try:
                item.validate(self.settings)
                text.check_texts(item.texts)
                if instruction is not None and item.instruction is None:
                    item = dataclasses.replace(item, instruction=instruction)
                prompts.append(embedding_prompt(item, self.settings.default_instruction))
                slots.append(k)
            except InputError as exc:
                out[k] = exc
        for k, ids in zip(slots, text.encode_texts(prompts), strict=True):
            out[k] = ids
        return out

    async def rerank(self, query: Item, documents: Sequence[Item], instruction: str | None, top_k: int | None,
                     ctx: CallContext) -> RerankResult:
        self._need("rerank", "reranker")
        check_rerank_request(len(documents), top_k, self.settings)
        nbytes = _media_bytes(query) + sum(_media_bytes(d) for d in documents)
        reserved = await self.admit(max(1, len(documents)), nbytes, ctx=ctx)
        try:
            rows: list[Any] = []
            if documents:
                docs = list(documents)
                rows = await self._call(len(docs), len(docs),
                                        lambda rid: ("rerank", rid, ctx.deadline, query, docs, instruction), ctx)
        finally:
            self.release(reserved)
        return result_from_rows(rows, top_k)

    async def _call(self, rows: int, expected: int, build: Callable[[int], tuple[Any, ...]],
                    ctx: CallContext) -> list[Any]:
        ctx.check()
        rid, future = self.link.call(rows, expected, build)
        try:
            # The model process answers a passed deadline itself (before compute); the margin
            # only guards against a model process that stopped answering at all.
            return await asyncio.wait_for(future, max(ctx.deadline - time.monotonic(), 0.0) + STUCK_MARGIN_S)
        except TimeoutError:
            self.link.cancel(rid)
            raise DeadlineError("the model process did not answer before the deadline") from None
        except asyncio.CancelledError:
            ctx.cancelled = True  # its queued sequences are dropped before compute
            self.link.cancel(rid)
            raise
