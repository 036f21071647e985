"""The request process's end of the pipe to the model process: start it, talk to it, see it exit.

The pipe is an asyncio transport on the event loop: messages leaving in one turn of the loop
travel together (one pickle, one write), and answers are dispatched as they arrive.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import QvlError, UnavailableError
from .settings import Settings
from .wire import FrameReader, encode

log = logging.getLogger("qvl.engine_link")


def _engine_entry(sock: socket.socket, settings: Settings, log_level: str, log_format: str) -> None:
    # Imported in the child only: the request process never loads torch.
    from .engine import run_engine

    run_engine(sock, settings, log_level, log_format)


class EngineFailed(RuntimeError):
    """The model process could not load its models."""


@dataclass
class _Pending:
    future: asyncio.Future[list[Any]]
    rows: list[Any]
    left: int


class _PipeProtocol(asyncio.Protocol):
    def __init__(self, link: EngineLink, generation: int) -> None:
        self.link = link
        self.generation = generation
        self.reader = FrameReader()

    def data_received(self, data: bytes) -> None:
        for message in self.reader.feed(data):
            self.link._dispatch(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._exited(self.generation)


class EngineLink:
    def __init__(self, settings: Settings, *, log_level: str = "INFO", log_format: str = "json",
                 on_stats: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.settings = settings
        self.log_level = log_level
        self.log_format = log_format
        self.on_stats = on_stats or (lambda stats: None)
        self.process: Any = None
        self.transport: asyncio.BaseTransport | None = None
        self.first: asyncio.Future[tuple[str, Any]] | None = None
        self.info: dict[str, Any] = {}
        self.pending: dict[int, _Pending] = {}
        self.ids = itertools.count(1)
        self.outbox: list[tuple[Any, ...]] = []
        self.alive = False
        self.generation = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.exited: asyncio.Event = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> dict[str, Any]:
        """Spawn the model process and wait until its models are loaded; returns what it serves."""
        self.loop = asyncio.get_running_loop()
        ctx = multiprocessing.get_context("spawn")
        mine, theirs = socket.socketpair()
        self.generation += 1
        self.alive = False
        self.exited = asyncio.Event()
        self.first = self.loop.create_future()
        self.process = ctx.Process(target=_engine_entry, name="qvl-model", daemon=True,
                                   args=(theirs, self.settings, self.log_level, self.log_format))
        self.process.start()
        theirs.close()
        generation = self.generation
        self.transport, _ = await self.loop.connect_accepted_socket(lambda: _PipeProtocol(self, generation), mine)
        try:
            kind, payload = await self.first
        except EOFError:
            await asyncio.to_thread(self.process.join, 10)
            raise EngineFailed(f"the model process exited while loading (exit code {self.process.exitcode})") from None
        if kind != "ready":
            self.transport.close()
            await asyncio.to_thread(self.process.join, 10)
            raise EngineFailed(f"the model process could not load the models: {payload}")
        self.info = payload
        self.alive = True
        log.info("model process started", extra={"pid": self.process.pid})
        return self.info

    async def stop(self, timeout: float = 30.0) -> None:
        """Ask the model process to finish (after a drain there is nothing in flight) and reap it."""
        if self.process is None:
            return
        if self.alive:
            self._send(("stop",))
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
             build: Callable[[int], tuple[Any, ...]]) -> tuple[int, asyncio.Future[Any]]:
        """Send ``build(rid)``; the future gets ``rows`` slots once ``expected`` of them are answered."""
        if not self.alive or self.loop is None:
            raise UnavailableError("the model process is not running (starting or restarting); retry shortly")
        rid = next(self.ids)
        future: asyncio.Future[Any] = self.loop.create_future()
        self.pending[rid] = _Pending(future, [None] * rows, expected)
        self._send(build(rid))
        return rid, future

    def cancel(self, rid: int) -> None:
        """The caller is gone: the model process drops the request's sequences before compute."""
        if self.pending.pop(rid, None) is not None and self.alive:
            self._send(("cancel", rid))

    def _send(self, message: tuple[Any, ...]) -> None:
        if not self.outbox and self.loop is not None:
            self.loop.call_soon(self._flush)
        self.outbox.append(message)

    def _flush(self) -> None:
        batch, self.outbox = self.outbox, []
        if batch and self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(batch))  # type: ignore[attr-defined]

    # -- answers -------------------------------------------------------------
    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind in ("ready", "failed"):
            if self.first is not None and not self.first.done():
                self.first.set_result((kind, message[1]))
        elif kind == "rows":
            _, rows, stats = message
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
            if stats:
                self.on_stats(stats)
        elif kind == "fail":
            _, rid, error = message
            pending = self.pending.pop(rid, None)
            if pending is not None and not pending.future.done():
                pending.future.set_exception(error if isinstance(error, QvlError) else UnavailableError(str(error)))

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
