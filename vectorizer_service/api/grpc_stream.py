"""EmbedStream: one session per stream, per-item results as they complete.

Reading ahead is bounded by ``stream_max_in_flight``. Items that arrive together are handed to
the dispatcher together (one preprocessing task for a run of texts), so a stream costs about
what one large request costs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from qvl_proto import vectorizer_pb2 as pb
from vectorizer_service.api.item_codecs import (
    ENCODING_NAMES,
    TRUNCATE_NAMES,
    chunking_from_proto,
    chunks_to_proto,
    embedding_to_proto,
    error_code,
    item_error,
    item_from_proto,
)
from vectorizer_service.core.call_context import CallContext, EmbedOptions
from vectorizer_service.core.errors import InputError, QvlError
from vectorizer_service.core.items import Item
from vectorizer_service.core.model_identity import check_fingerprint
from vectorizer_service.core.settings import Settings
from vectorizer_service.serving import metrics
from vectorizer_service.serving.dispatcher import Dispatcher

STREAM_GROUP = 64  # stream items handed to the dispatcher together


def embed_options(msg: pb.EmbedOptions) -> EmbedOptions:
    if msg.encoding not in ENCODING_NAMES:
        raise InputError(f"unknown encoding {msg.encoding}")
    if msg.truncate not in TRUNCATE_NAMES:
        raise InputError(f"unknown truncate {msg.truncate}")
    return EmbedOptions(
        dimensions=msg.dimensions if msg.HasField("dimensions") else None,
        encoding=ENCODING_NAMES[msg.encoding],
        normalize=msg.normalize if msg.HasField("normalize") else True,
        instruction=msg.instruction if msg.HasField("instruction") else None,
        truncate=TRUNCATE_NAMES[msg.truncate],
        fingerprint=check_fingerprint(msg.fingerprint, "options.fingerprint") if msg.HasField("fingerprint") else None,
    )


class EmbedStreamSession:
    """One EmbedStream call: a reader holds read-ahead within the window and the byte budget, a
    grouper hands items on in groups of one set of options, and the results go out in the
    order their groups finish."""

    def __init__(self, dispatcher: Dispatcher, settings: Settings, ctx: CallContext) -> None:
        self.dispatcher = dispatcher
        self.settings = settings
        self.ctx = ctx
        self.held = 0  # bytes of read-ahead this stream holds in the process-wide budget
        self.window = asyncio.Semaphore(settings.stream_max_in_flight)
        self.incoming: asyncio.Queue[pb.EmbedStreamRequest | None] = asyncio.Queue()
        self.results: asyncio.Queue[pb.EmbedStreamResult | None] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        self.sizes: dict[int, int] = {}  # bytes held per message read ahead (by the message's id)

    async def run(self, request_iterator: AsyncIterator[pb.EmbedStreamRequest]) -> AsyncIterator[pb.EmbedStreamResult]:
        workers = [asyncio.create_task(self._read(request_iterator)), asyncio.create_task(self._group())]
        try:
            while (out := await self.results.get()) is not None:
                yield out
            metrics.REQUESTS.labels("grpc.EmbedStream", "OK").inc()
        finally:
            self.ctx.cancelled = True  # a gone caller's queued items are dropped before compute
            for task in [*workers, *self.tasks]:
                task.cancel()
            self.dispatcher.admission.wire.release(self.held)  # read ahead and never answered (the caller went away)
            self.held = 0

    async def _read(self, request_iterator: AsyncIterator[pb.EmbedStreamRequest]) -> None:
        try:
            async for msg in request_iterator:
                await self.window.acquire()
                # Read-ahead is bounded in bytes too: past the budget reading stops, and
                # flow control slows the sender.
                size = await self.dispatcher.admission.wire.hold(msg.ByteSize(), self.ctx)
                self.sizes[id(msg)] = size  # released as held, without measuring the message again
                self.held += size
                await self.incoming.put(msg)
        finally:
            await self.incoming.put(None)

    async def _group(self) -> None:
        first: pb.EmbedOptions | None = None
        ended = False
        try:
            while not ended:
                batch, ended = await self._next_batch()
                groups: dict[bytes, tuple[pb.EmbedOptions, list[pb.EmbedStreamRequest]]] = {}
                for m in batch:
                    if first is None:
                        first = m.options
                    opts = m.options if m.HasField("options") else first
                    groups.setdefault(opts.SerializeToString(), (opts, []))[1].append(m)
                for opts, msgs in groups.values():
                    task = asyncio.create_task(self._run_group(msgs, opts))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
            while self.tasks:
                await asyncio.gather(*list(self.tasks), return_exceptions=True)
        finally:
            await self.results.put(None)

    async def _next_batch(self) -> tuple[list[pb.EmbedStreamRequest], bool]:
        """What has arrived, up to STREAM_GROUP messages (waiting for the first); True at the end."""
        msg = await self.incoming.get()
        if msg is None:
            return [], True
        batch = [msg]
        while len(batch) < STREAM_GROUP and not self.incoming.empty():
            nxt = self.incoming.get_nowait()
            if nxt is None:
                return batch, True
            batch.append(nxt)
        return batch, False

    async def _run_group(self, msgs: list[pb.EmbedStreamRequest], options: pb.EmbedOptions) -> None:
        outs: dict[int, pb.EmbedStreamResult] = {}
        items, seqs = [], []
        for m in msgs:
            try:
                items.append(item_from_proto(m.item, 0, self.settings))
                seqs.append(m.seq)
            except InputError as err:
                outs[m.seq] = _stream_error(m.seq, err)
        try:
            if items:
                outs.update(await self._embed_group(items, seqs, options))
        except QvlError as err:  # the group as a whole (options, deadline, draining)
            for seq in seqs:
                outs[seq] = _stream_error(seq, err)
        for m in msgs:
            self.window.release()
            size = self.sizes.pop(id(m))
            self.held -= size
            self.dispatcher.admission.wire.release(size)
            await self.results.put(outs[m.seq])

    async def _embed_group(self, items: list[Item], seqs: list[int],
                           options: pb.EmbedOptions) -> dict[int, pb.EmbedStreamResult]:
        """One result per item: its embedding, or with ``options.chunking`` its chunks."""
        chunking = chunking_from_proto(options)
        out: dict[int, pb.EmbedStreamResult] = {}
        if chunking is not None:
            chunked = await self.dispatcher.embed_chunks(items, embed_options(options), chunking, self.ctx,
                                                         wait_for_capacity=True)
            for seq, result in zip(seqs, chunked, strict=True):
                out[seq] = (_stream_error(seq, result) if isinstance(result, QvlError)
                            else pb.EmbedStreamResult(seq=seq, chunks=chunks_to_proto(result)))
            return out
        rows = await self.dispatcher.embed(items, embed_options(options), self.ctx, wait_for_capacity=True)
        for seq, row in zip(seqs, rows, strict=True):
            out[seq] = (_stream_error(seq, row) if isinstance(row, QvlError)
                        else pb.EmbedStreamResult(seq=seq, embedding=embedding_to_proto(row)))
        return out


def _stream_error(seq: int, err: QvlError) -> pb.EmbedStreamResult:
    message = str(err.at(item=seq)) if isinstance(err, InputError) else str(err)
    metrics.ERRORS.labels(error_code(err).lower()).inc()
    return pb.EmbedStreamResult(seq=seq, error=item_error(seq, err, message))
