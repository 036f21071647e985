"""Reading media by URI: allow-list roots matched exactly, one deadline per fetch, no redirects,
private addresses refused unless allowed, errors that do not map the network, and files judged
by what was opened (symlinks, FIFOs). Real sockets on 127.0.0.1, real files."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from vectorizer_service.core.errors import InputError
from vectorizer_service.core.settings import Settings
from vectorizer_service.model.uri_access import read_uri

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 100


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/public/redirect"):
            self.send_response(302)
            self.send_header("Location", "/private/secret.png")
            self.end_headers()
        elif self.path.startswith("/public/drip"):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(40):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.25)
        elif self.path.startswith(("/public/", "/publicity/", "/private/")):
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def settings(*roots: str, private: bool = True, timeout: float = 5.0, schemes: str = "http,https,file") -> Settings:
    return Settings(allow_uri_schemes=schemes, allow_uri_roots=",".join(roots),
                    allow_uri_private_addresses=private, uri_timeout_s=timeout)


def refused(uri: str, s: Settings) -> str:
    with pytest.raises(InputError) as info:
        read_uri(uri, s, "image 0")
    return str(info.value)


def test_an_allowed_url_is_read(server: str) -> None:
    assert read_uri(f"{server}/public/a.png", settings(f"{server}/public/"), "image 0") == PNG


def test_roots_are_not_string_prefixes(server: str) -> None:
    s = settings(f"{server}/public")
    assert "outside the allowed URL roots" in refused(f"{server}/publicity/a.png", s)
    assert "dot segments" in refused(f"{server}/public/../private/secret.png", s)
    assert "dot segments" in refused(f"{server}/public/%2e%2e/private/secret.png", s)
    assert "dot segments" in refused(f"{server}/public/..%2fprivate/secret.png", s)
    port = int(server.rsplit(":", 1)[1])
    other = settings("http://media.example.com")
    assert "outside" in refused("http://media.example.com.attacker.net/a.png", other)
    assert "outside" in refused("http://media.example.com:6379/a.png", other)
    assert "credentials" in refused(f"http://media.example.com@127.0.0.1:{port}/public/a.png", other)


def test_redirects_are_refused(server: str) -> None:
    assert "redirect" in refused(f"{server}/public/redirect", settings(f"{server}/public/"))


def test_one_deadline_covers_a_dripping_server(server: str) -> None:
    started = time.monotonic()
    message = refused(f"{server}/public/drip", settings(f"{server}/public/", timeout=1.0))
    assert time.monotonic() - started < 3.0 and "within 1 s" in message


class Trickle:
    """A raw HTTP server on loopback that answers every request with ``head`` at once, then
    ``drip`` one byte every ``every`` seconds (issue 19 finding 10: http.server cannot drip its
    status line or chunk framing)."""

    def __init__(self, head: bytes, drip: bytes, every: float) -> None:
        self.head, self.drip, self.every = head, drip, every
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                got = conn.recv(4096)
                if not got:
                    return
                request += got
            try:
                conn.sendall(self.head)
                for byte in self.drip:
                    time.sleep(self.every)
                    conn.sendall(bytes([byte]))
            except OSError:  # the fetch gave up and closed
                return

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("where", ["status line", "headers", "chunk-size line"])
def test_one_deadline_covers_a_server_that_drips_its_framing(where: str) -> None:
    """Issue 19 finding 10: one header byte a second kept a fetch with a 2 s timeout busy for 12 s:
    each socket read got the whole timeout anew. The deadline covers the status line, the headers
    and the chunk framing as well as the body."""
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    head, drip = {
        "status line": (b"", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"),
        "headers": (b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"s" * 40 + b"\r\nContent-Length: 3\r\n\r\nabc"),
        "chunk-size line": (chunked, b"0" * 40 + b"3\r\nabc\r\n0\r\n\r\n"),
    }[where]
    slow = Trickle(head, drip, every=0.25)  # 40-odd bytes: 10 s or more in all, each byte well within the timeout
    try:
        started = time.monotonic()
        message = refused(f"{slow.url}/public/a.png", settings(f"{slow.url}/public/", timeout=2.0))
        took = time.monotonic() - started
    finally:
        slow.close()
    assert "within 2 s" in message, message
    assert took < 3.0, f"the fetch took {took:.1f} s with a 2 s timeout"


def test_a_trickle_that_ends_within_the_deadline_is_read() -> None:
    """The same framing, in time: the per-read deadline takes nothing from a fetch that fits."""
    slow = Trickle(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"3\r\nabc\r\n0\r\n\r\n", every=0.02)
    try:
        assert read_uri(f"{slow.url}/public/a.png", settings(f"{slow.url}/public/", timeout=5.0), "image 0") == b"abc"
    finally:
        slow.close()


def test_private_addresses_need_the_operators_leave(server: str) -> None:
    message = refused(f"{server}/public/a.png", settings(f"{server}/public/", private=False))
    assert "private or local address" in message and "QVL_ALLOW_URI_PRIVATE_ADDRESSES" in message


def test_fetch_errors_do_not_echo_the_network() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    message = refused(f"http://127.0.0.1:{port}/public/a.png", settings(f"http://127.0.0.1:{port}/public/"))
    assert message.endswith(f"cannot fetch 'http://127.0.0.1:{port}/public/a.png'")
    assert "refused" not in message.lower() and "errno" not in message.lower()


def _within(seconds: float, work: Any) -> Any:
    """``work()``'s outcome, or a failure if it does not return in time (a hung read)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = work()
        except Exception as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the read hung"
    return out


def test_a_fifo_under_a_root_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    out = _within(5, lambda: read_uri(f"file://{fifo}", settings(str(tmp_path)), "image 0"))
    assert isinstance(out.get("error"), InputError) and "not a regular file" in str(out["error"])


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(PNG)
    (root / "ok.png").write_bytes(PNG)
    (root / "link.png").symlink_to(outside / "secret.png")
    s = settings(str(root))
    assert read_uri(f"file://{root / 'ok.png'}", s, "image 0") == PNG
    assert "outside the allowed roots" in refused(f"file://{root / 'link.png'}", s)
