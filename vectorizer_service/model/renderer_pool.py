"""The PDF renderer processes, as the model process (or ``qvl embed``) uses them.

A few processes (``QVL_RENDER_WORKERS``), started when a document first needs one, each running
``pdf_renderer`` with PDFium and nothing else. A preparing thread takes an idle renderer, sends it
the document's bytes and the pages it wants, and reads the pages back under the document's
deadline. A renderer that dies (a crafted file crashing PDFium) or misses the deadline (a file
that makes it loop) is killed and replaced, and only that document's pages fail: the model
process itself never runs PDFium code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from PIL import Image

from vectorizer_service.core.errors import DeadlineError, InputError
from vectorizer_service.core.settings import Settings
from vectorizer_service.model import pdf_renderer
from vectorizer_service.model.media import MAX_ASPECT_RATIO

log = logging.getLogger("qvl.renderer_pool")
# An answer's header and pixels (a page is at most QVL_IMAGE_MAX_PIXELS RGB pixels).
PIXEL_BYTES = 3


@dataclass
class JobTime:
    """A renderer job's time: at most ``seconds`` of rendering (what is left of the document's),
    ending by the call's deadline; ``used`` is what it took, once it is done."""

    seconds: float
    call_deadline: float
    used: float = 0.0


class _Renderer:
    """One renderer process and our end of its socket."""

    def __init__(self, settings: Settings) -> None:
        ours, theirs = socket.socketpair()
        env = {**os.environ, pdf_renderer.MEMORY_ENV: str(settings.renderer_memory_bytes),
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vectorizer_service.model.pdf_renderer", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self.sock = ours
        self.holding: str | None = None  # the digest of the document it holds (sent once, drawn in many jobs)

    def kill(self) -> str:
        """Kill it (if it still runs) and say how it ended."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        code = self.proc.wait()
        self.sock.close()
        return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


class RendererPool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.idle: list[_Renderer] = []
        self.running = 0
        self.cv = threading.Condition()

    # -- renderers ----------------------------------------------------------------------------------
    def _take(self, deadline: float) -> _Renderer:
        with self.cv:
            while not self.idle and self.running >= self.settings.render_workers:
                if not self.cv.wait(timeout=max(deadline - time.monotonic(), 0.0)):
                    raise DeadlineError("the deadline passed while waiting for a PDF renderer")
            if self.idle:
                return self.idle.pop()
            self.running += 1
        try:
            return _Renderer(self.settings)
        except OSError:
            self._lost()
            raise

    def _give_back(self, renderer: _Renderer) -> None:
        with self.cv:
            self.idle.append(renderer)
            self.cv.notify()

    def _lost(self) -> None:
        with self.cv:
            self.running -= 1
            self.cv.notify()

    def close(self) -> None:
        with self.cv:
            idle, self.idle = self.idle, []
            self.running -= len(idle)
        for renderer in idle:
            renderer.kill()

    # -- documents ----------------------------------------------------------------------------------
    def count_pages(self, data: bytes, digest: str, job: JobTime, what: str) -> int:
        """The document's page count (opened, never rendered); refusals name the reason."""
        pages, _ = self._ask(data, digest, [], job, what)
        return pages

    def render(self, data: bytes, digest: str, pages: list[int], job: JobTime,
               what: str) -> list[Image.Image | InputError]:
        """The pages (1-based), each drawn to fit ``QVL_IMAGE_MAX_PIXELS``; a page that cannot be
        drawn is its own error, a document that cannot be opened raises. ``digest`` names the
        bytes: a renderer that holds them already is not sent them again."""
        _, out = self._ask(data, digest, pages, job, what)
        return out

    def _take_for(self, digest: str, deadline: float) -> _Renderer:
        """An idle renderer, preferably one holding the document already."""
        with self.cv:
            for k, renderer in enumerate(self.idle):
                if renderer.holding == digest:
                    return self.idle.pop(k)
        return self._take(deadline)

    def _ask(self, data: bytes, digest: str, pages: list[int], job: JobTime,
             what: str) -> tuple[int, list[Image.Image | InputError]]:
        s = self.settings
        request = {"max_pages": s.max_document_pages, "render": pages, "dpi": s.document_dpi,
                   "max_pixels": s.image_max_pixels, "max_ratio": MAX_ASPECT_RATIO, "key": digest}
        if job.seconds <= 0:
            raise self._too_long(what)
        renderer = self._take_for(digest, job.call_deadline)  # waiting for a renderer is not the document's time
        started = time.monotonic()
        deadline = min(started + job.seconds, job.call_deadline)
        by_call = job.call_deadline < started + job.seconds
        healthy = False
        try:
            pdf_renderer.send(renderer.sock, request, b"" if renderer.holding == digest else data)
            renderer.holding = digest
            header, _ = self._receive(renderer, deadline, by_call, what)
            healthy = True  # it answered: a refusal of the document leaves it fit for the next one
            count = self._count(header, what)
            healthy = False
            out = [self._page(*self._receive(renderer, deadline, by_call, what), what) for _ in pages]
            healthy = True
        finally:
            job.used = time.monotonic() - started
            if healthy:
                self._give_back(renderer)
            else:
                self._lost()
                renderer.kill()
        return count, out

    def _too_long(self, what: str) -> InputError:
        timeout = self.settings.document_timeout_s
        return InputError(f"{what}: rendering did not finish within the document deadline of {timeout} s; the file "
                          "may be crafted to make PDFium loop", limit="QVL_DOCUMENT_TIMEOUT_S")

    def _receive(self, renderer: _Renderer, deadline: float, by_call: bool, what: str) -> tuple[dict, bytes]:
        """The renderer's next answer, before the deadline (the document's, or the call's when
        ``by_call``); a renderer that dies or misses it is killed, and the document fails with the
        reason."""
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            renderer.sock.settimeout(left)
            return pdf_renderer.receive(renderer.sock, self.settings.image_max_pixels * PIXEL_BYTES)
        except TimeoutError:
            ended = renderer.kill()
            log.error("a PDF renderer missed its deadline and was killed", extra={"ended": ended})
            if by_call:
                raise DeadlineError("the deadline passed while the document's pages were drawn") from None
            raise self._too_long(what) from None
        except (EOFError, OSError, ValueError):
            ended = renderer.kill()
            log.error("a PDF renderer died", extra={"ended": ended})
            raise InputError(f"{what}: the PDF renderer died on it ({ended}); the file is damaged or crafted to "
                             "crash PDFium") from None

    @staticmethod
    def _count(header: dict, what: str) -> int:
        if "error" in header:
            limit = "QVL_MAX_DOCUMENT_PAGES" if header["error"] == "too_many_pages" else None
            raise InputError(f"{what} {header.get('message', 'cannot be read')}", limit=limit,
                             status=413 if limit else 400)
        return int(header["pages"])

    @staticmethod
    def _page(header: dict, pixels: bytes, what: str) -> Image.Image | InputError:
        if "error" in header:
            return InputError(f"{what} {header.get('message', 'page cannot be drawn')}")
        size = (int(header["width"]), int(header["height"]))
        if size[0] * size[1] * PIXEL_BYTES != len(pixels):
            return InputError(f"{what}: the renderer sent a malformed page")
        return Image.frombytes("RGB", size, pixels)
