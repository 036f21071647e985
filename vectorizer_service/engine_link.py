"""The request process's end of the pipe to the model process: start it, talk to it, see it exit.

Messages leaving in one turn of the event loop travel together (one pickle, one write); a
reader thread hands what comes back to the event loop, one batch of rows at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from .errors import QvlError, UnavailableError
from .settings import Settings

log = logging.getLogger("qvl.engine_link")


def _engine_entry(conn: Connection, settings: Settings, log_level: str, log_format: str) -> None:
    # Imported in the child only: the request process never loads torch.
    from .engine import run_engine

    run_engine(conn, settings, log_level, log_format)


class EngineFailed(RuntimeError):
    """The model process could not load its models."""


@dataclass
class _Pending:
    future: asyncio.Future[list[Any]]
    rows: list[Any]
    left: int


class EngineLink:
    def __init__(self, settings: Settings, *, log_level: str = "INFO", log_format: str = "json",
                 on_stats: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.settings = settings
        self.log_level = log_level
        self.log_format = log_format
        self.on_stats = on_stats or (lambda stats: None)
        self.process: Any = None
        self.conn: Connection | None = None
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
        parent, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_engine_entry, name="qvl-model", daemon=True,
                                   args=(child, self.settings, self.log_level, self.log_format))
        self.process.start()
        child.close()
        try:
            first = await asyncio.to_thread(parent.recv)
        except (EOFError, OSError):
            await asyncio.to_thread(self.process.join, 10)
            raise EngineFailed(f"the model process exited while loading (exit code {self.process.exitcode})") from None
        if first[0] != "ready":
            await asyncio.to_thread(self.process.join, 10)
            raise EngineFailed(f"the model process could not load the models: {first[1]}")
        self.conn, self.info = parent, first[1]
        self.generation += 1
        self.exited = asyncio.Event()
        self.alive = True
        threading.Thread(target=self._reader, args=(parent, self.generation), name="qvl-engine-reader",
                         daemon=True).start()
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
        if self.process.is_alive():
            self.process.kill()
            await asyncio.to_thread(self.process.join, 5)
        self.alive = False

    def kill(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()

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
        if not batch or self.conn is None:
            return
        try:
            self.conn.send(batch)
        except (BrokenPipeError, OSError) as exc:
            log.error("the model process does not read", extra={"error": str(exc)})
            self._exited(self.generation)

    # -- answers -------------------------------------------------------------
    def _reader(self, conn: Connection, generation: int) -> None:
        assert self.loop is not None
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # an answer that cannot be unpickled must not stop the reader
                log.exception("unreadable answer from the model process")
                continue
            self.loop.call_soon_threadsafe(self._dispatch, message)
        self.loop.call_soon_threadsafe(self._exited, generation)

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "rows":
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
        if generation != self.generation or not self.alive:
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
