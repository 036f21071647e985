"""A PDF renderer process: PDFium (pypdfium2) alone, no model, no torch.

PDFium is C++ that parses hostile input and is not thread-safe, so it runs in processes of its
own (``renderer_pool`` starts them): a crafted file that crashes or hangs it takes down one
renderer, never the model process. The answers are a JSON header and raw pixels, never a pickle:
a renderer that PDFium's bugs handed to an attacker cannot run code in the model process by
what it sends back.

Run as ``python -m vectorizer_service.model.pdf_renderer FD`` with FD one end of a socket pair.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import resource
import socket
import struct
import sys
import threading
import time
from typing import Any

HEADER = struct.Struct("!II")  # JSON bytes, payload bytes
MAX_HEADER = 1 << 20
PDF_MAGIC = b"%PDF-"
# Test-only fault injection (off unless set): a document containing this text makes the renderer
# die as a native crash would (SIGABRT), or hang, so the tests can prove the model process survives.
TEST_CRASH_ENV = "QVL_TEST_RENDERER_CRASH_ON"
TEST_HANG_ENV = "QVL_TEST_RENDERER_HANG_ON"
MEMORY_ENV = "QVL_RENDERER_MEMORY_BYTES"


# -- framing (both sides) ------------------------------------------------------------------------
def send(sock: socket.socket, header: dict[str, Any], payload: bytes = b"") -> None:
    data = json.dumps(header).encode()
    sock.sendall(HEADER.pack(len(data), len(payload)) + data + payload)


def _into(sock: socket.socket, buffer: Any) -> None:
    view = memoryview(buffer).cast("B")
    got = 0
    while got < len(view):
        k = sock.recv_into(view[got:], len(view) - got)
        if k == 0:
            raise EOFError("the renderer's pipe closed")
        got += k


def _exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    _into(sock, buf)
    return bytes(buf)


def receive(sock: socket.socket, max_payload: int, *, into_ctypes: bool = False) -> tuple[dict[str, Any], Any]:
    """One message; sizes are checked before anything is allocated (the peer is not trusted).
    ``into_ctypes``: the payload lands in a ctypes array, which PDFium reads in place (a document
    is held once, not copied)."""
    head, size = HEADER.unpack(_exactly(sock, HEADER.size))
    if head > MAX_HEADER or size > max_payload:
        raise EOFError(f"the renderer sent a message of {head} + {size} bytes")
    header = json.loads(_exactly(sock, head))
    if not isinstance(header, dict):
        raise EOFError("the renderer sent a malformed message")
    if not size:
        return header, b""
    if into_ctypes:
        payload = (ctypes.c_char * size)()
        _into(sock, payload)
        return header, payload
    return header, _exactly(sock, size)


# -- rendering (the renderer process) ------------------------------------------------------------
def page_scale(width_pt: float, height_pt: float, dpi: float, max_pixels: int) -> float:
    """Points to pixels: ``dpi``, or less where the page would exceed ``max_pixels`` at it (a
    200-inch page is drawn small, never allocated at full size)."""
    scale = dpi / 72.0
    pixels = width_pt * scale * height_pt * scale
    if pixels > max_pixels:
        scale *= math.sqrt(max_pixels / pixels) * 0.999  # rounding up a side must not pass the limit
    return scale


class _Failure(Exception):
    def __init__(self, kind: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.extra = extra


def _open(pdfium: Any, data: Any, max_pages: int) -> Any:
    if bytes(data[:len(PDF_MAGIC)]) != PDF_MAGIC:
        raise _Failure("not_pdf", "is not a PDF (it does not start with %PDF-)")
    try:
        doc = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        code = getattr(exc, "err_code", None)
        if code in (4, 5):  # FPDF_ERR_PASSWORD, FPDF_ERR_SECURITY
            raise _Failure("encrypted", "is encrypted (it needs a password); send it decrypted") from None
        raise _Failure("corrupt", "cannot be read: it is truncated or damaged (PDFium: data format error)") from None
    pages = len(doc)
    if pages > max_pages:
        raise _Failure("too_many_pages", f"has {pages} pages, over the limit of {max_pages}", pages=pages)
    if pages == 0:
        raise _Failure("corrupt", "has no pages")
    return doc


def _render_page(doc: Any, number: int, dpi: float, max_pixels: int, max_ratio: float) -> tuple[dict[str, Any], bytes]:
    page = doc[number - 1]
    try:
        width, height = page.get_size()
        if not (width > 0 and height > 0 and math.isfinite(width * height)):
            raise _Failure("page", f"page {number} has no area ({width}x{height} points)")
        if max(width, height) / min(width, height) > max_ratio:
            raise _Failure("page", f"page {number} aspect ratio {width:.0f}x{height:.0f} exceeds {max_ratio:.0f}:1")
        bitmap = page.render(scale=page_scale(width, height, dpi, max_pixels), may_draw_forms=False)
        try:
            image = bitmap.to_pil().convert("RGB")
        finally:
            bitmap.close()
    finally:
        page.close()
    return {"page": number, "width": image.width, "height": image.height}, image.tobytes()


def _test_faults(data: Any) -> None:
    crash, hang = os.environ.get(TEST_CRASH_ENV), os.environ.get(TEST_HANG_ENV)
    if not (crash or hang):
        return
    raw = bytes(data)
    if crash and crash.encode() in raw:
        os.abort()
    if hang and hang.encode() in raw:
        time.sleep(3600)


def serve(sock: socket.socket) -> None:
    import pypdfium2 as pdfium  # only here: the model process never loads PDFium

    held: tuple[str | None, Any] = (None, None)  # the last document: its digest and bytes
    while True:
        try:
            request, data = receive(sock, max_payload=1 << 40, into_ctypes=True)
        except (EOFError, OSError):
            return
        if len(data):
            held = (request.get("key"), data)
        elif held[0] is None or request.get("key") != held[0]:
            send(sock, {"error": "protocol", "message": "was not sent to the renderer"})
            continue
        data = held[1]
        _test_faults(data)
        try:
            doc = _open(pdfium, data, int(request["max_pages"]))
        except _Failure as failure:
            send(sock, {"error": failure.kind, "message": str(failure), **failure.extra})
            continue
        try:
            send(sock, {"pages": len(doc)})
            for number in request.get("render", []):
                if not 1 <= number <= len(doc):
                    send(sock, {"page": number, "error": "page",
                                "message": f"page {number} does not exist (the document has {len(doc)} pages)"})
                    continue
                try:
                    header, pixels = _render_page(doc, number, float(request["dpi"]), int(request["max_pixels"]),
                                                  float(request["max_ratio"]))
                except _Failure as failure:
                    send(sock, {"page": number, "error": failure.kind, "message": str(failure)})
                    continue
                except pdfium.PdfiumError as exc:
                    send(sock, {"page": number, "error": "page", "message": f"page {number} cannot be drawn: {exc}"})
                    continue
                send(sock, header, pixels)
        finally:
            doc.close()


def _exit_with_parent() -> None:
    """A renderer stuck in PDFium outlives no model process: PDFium's calls release the
    interpreter lock, so this thread still runs."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def main() -> None:
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    limit = os.environ.get(MEMORY_ENV)
    if limit:  # a crafted file that makes PDFium allocate without end fails here, alone
        resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
    sock = socket.socket(fileno=int(sys.argv[1]))
    serve(sock)


if __name__ == "__main__":
    main()
