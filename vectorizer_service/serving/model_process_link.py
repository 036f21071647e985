"""The request process's end of the pipe to the model process: start it, talk to it, see it exit.

The pipe is an asyncio transport on the event loop: messages leaving in one turn of the loop
travel together (one pickle, one write), and answers are dispatched as they arrive.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import logging
import multiprocessing
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vectorizer_service.core.errors import NotReadyError, UnavailableError
from vectorizer_service.core.pipe_framing import FrameReader, encode
from vectorizer_service.core.pipe_messages import (
    BatchStats,
    Cancel,
    Fail,
    FromModelProcess,
    LoadFailed,
    Ready,
    Row,
    Rows,
    RowValue,
    Stop,
    ToModelProcess,
)
from vectorizer_service.core.settings import Settings

log = logging.getLogger("qvl.model_process_link")


def _model_process_entry(entry: str, sock: socket.socket, settings: Settings, log_level: str,
                         log_format: str) -> None:
    """The child's first call: import the model process by name (``module:function``). The request
    process never imports it, so torch is loaded in the child alone."""
    module, _, function = entry.partition(":")
    getattr(importlib.import_module(module), function)(sock, settings, log_level, log_format)
    # Done (Stop, or the request process went away). Tearing the interpreter down would free torch's
    # and the models' objects one by one while the request process waits to join us: 2.5 s measured
    # on the tiny checkpoint, against 0.1 s for the kernel to free them at once. Only the log is
    # left to write. (An exception still ends the usual way, with its traceback and exit code 1.)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class ModelProcessFailed(RuntimeError):
    """The model process could not load its models."""


@dataclass
class _Pending:
    future: asyncio.Future[list[RowValue | None]]
    rows: list[RowValue | None]
    left: int


class _PipeProtocol(asyncio.Protocol):
    def __init__(self, link: ModelProcessLink, generation: int) -> None:
        self.link = link
        self.generation = generation
        self.reader = FrameReader()

    def data_received(self, data: bytes) -> None:
        for message in self.reader.feed(data):
            self.link._dispatch(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._exited(self.generation)


class ModelProcessLink:
    def __init__(self, settings: Settings, entry: str, *, log_level: str = "INFO", log_format: str = "json",
                 on_stats: Callable[[BatchStats], None] | None = None) -> None:
        self.settings = settings
        self.entry = entry
        self.log_level = log_level
        self.log_format = log_format
        self.on_stats = on_stats or (lambda stats: None)
        self.process: Any = None
        self.transport: asyncio.BaseTransport | None = None
        self.first: asyncio.Future[Ready | LoadFailed] | None = None
        self.info: Ready | None = None
        self.pending: dict[int, _Pending] = {}
        self.ids = itertools.count(1)
        self.outbox: list[ToModelProcess] = []
        self.alive = False
        self.generation = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.exited: asyncio.Event = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> Ready:
        """Spawn the model process and wait until its models are loaded; returns what it serves."""
        self.loop = asyncio.get_running_loop()
        ctx = multiprocessing.get_context("spawn")
        mine, theirs = socket.socketpair()
        self.generation += 1
        self.alive = False
        self.exited = asyncio.Event()
        self.first = self.loop.create_future()
        self.process = ctx.Process(target=_model_process_entry, name="qvl-model", daemon=True,
                                   args=(self.entry, theirs, self.settings, self.log_level, self.log_format))
        self.process.start()
        theirs.close()
        generation = self.generation
        self.transport, _ = await self.loop.connect_accepted_socket(lambda: _PipeProtocol(self, generation), mine)
        try:
            first = await self.first
        except EOFError:
            await asyncio.to_thread(self.process.join, 10)
            raise ModelProcessFailed(
                f"the model process exited while loading (exit code {self.process.exitcode})") from None
        if isinstance(first, LoadFailed):
            self.transport.close()
            await asyncio.to_thread(self.process.join, 10)
            raise ModelProcessFailed(f"the model process could not load the models: {first.message}")
        self.info = first
        self.alive = True
        log.info("model process started", extra={"pid": self.process.pid})
        return first

    async def stop(self, timeout: float = 30.0) -> None:
        """Ask the model process to finish (after a drain there is nothing in flight) and reap it."""
        if self.process is None:
            return
        if self.alive:
            self._send(Stop())
            self._flush()
            await asyncio.to_thread(self.process.join, timeout)
        # Still loading (stopped during start-up) it reads nothing: there is nothing to finish.
        if self.transport is not None:
            self.transport.close()
        if self.process.is_alive():
            self.process.kill()
            await asyncio.to_thread(self.process.join, 5)
        self.alive = False

    # -- calls ---------------------------------------------------------------
    def call(self, rows: int, expected: int,
             build: Callable[[int], ToModelProcess]) -> tuple[int, asyncio.Future[list[RowValue | None]]]:
        """Send ``build(rid)``; the future gets ``rows`` slots once ``expected`` of them are answered."""
        if not self.alive or self.loop is None:
            raise NotReadyError("the model process is not running (starting or restarting); retry shortly")
        rid = next(self.ids)
        future: asyncio.Future[list[RowValue | None]] = self.loop.create_future()
        self.pending[rid] = _Pending(future, [None] * rows, expected)
        self._send(build(rid))
        return rid, future

    def cancel(self, rid: int) -> None:
        """The caller is gone: the model process drops the request's sequences before compute."""
        if self.pending.pop(rid, None) is not None and self.alive:
            self._send(Cancel(rid))

    def _send(self, message: ToModelProcess) -> None:
        if not self.outbox and self.loop is not None:
            self.loop.call_soon(self._flush)
        self.outbox.append(message)

    def _flush(self) -> None:
        batch, self.outbox = self.outbox, []
        if batch and self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(batch))  # type: ignore[attr-defined]

    # -- answers -------------------------------------------------------------
    def _dispatch(self, message: FromModelProcess) -> None:
        match message:
            case Ready() | LoadFailed():
                if self.first is not None and not self.first.done():
                    self.first.set_result(message)
            case Rows(rows=rows, stats=stats):
                self._rows(rows)
                if stats is not None:
                    self.on_stats(stats)
            case Fail(rid=rid, error=error):
                pending = self.pending.pop(rid, None)
                if pending is not None and not pending.future.done():
                    pending.future.set_exception(error)

    def _rows(self, rows: list[Row]) -> None:
        for rid, index, value in rows:
            pending = self.pending.get(rid)
            if pending is None:
                continue  # cancelled meanwhile
            pending.rows[index] = value
            pending.left -= 1
            if pending.left <= 0:
                del self.pending[rid]
                if not pending.future.done():
                    pending.future.set_result(pending.rows)

    def _exited(self, generation: int) -> None:
        if generation != self.generation:
            return
        if self.first is not None and not self.first.done():
            self.first.set_exception(EOFError())
        if not self.alive:
            return
        self.alive = False
        code = self.process.exitcode if self.process is not None else None
        failure = UnavailableError(f"the model process exited (exit code {code}); retry shortly")
        for pending in self.pending.values():
            if not pending.future.done():
                pending.future.set_exception(failure)
        self.pending.clear()
        self.outbox.clear()
        self.exited.set()
