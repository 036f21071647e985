"""The socket under the HTTP exchange: non-blocking, every wait bounded by the call's deadline and
broken into short ticks that look for a cancelled statement (PL/Python cannot be interrupted
inside a socket call)."""

from __future__ import annotations

import errno
import http.client
import io
import os
import select
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

TICK_S = 0.2  # the longest wait on the service between looks for a cancel (see Clock)
contexts: dict[str | None, ssl.SSLContext] = {}  # per backend: TLS contexts by CA file


class Clock:
    """One call's deadline, and a look for cancellation between short waits.

    PL/Python cannot be interrupted inside a socket call: a cancel (pg_cancel_backend) or a
    statement_timeout only sets a flag that the server looks at when it runs something. So no wait
    lasts longer than TICK_S, and after each one ``check`` runs a trivial query, which raises the
    pending cancel as an SPIError that ends the call.
    """

    def __init__(self, seconds: float, check: Callable[[], Any] | None = None) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.check = check or (lambda: None)

    def left(self) -> float:
        """Seconds left; TimeoutError once there are none."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("the call's deadline passed")
        return left

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (rest := end - time.monotonic()) > 0:
            time.sleep(min(TICK_S, rest, self.left()))
            self.check()


class Wire:
    """A connected non-blocking socket (TLS or not): every wait is at most TICK_S, ends at the
    deadline (TimeoutError) and looks for cancellation, so connecting, the TLS handshake, sending
    and every read are bounded by the call's deadline, not per socket operation."""

    def __init__(self, sock: socket.socket, clock: Clock) -> None:
        self.sock, self.clock = sock, clock
        # As socket.makefile does: a response still reading keeps the socket open after close()
        # (http.client closes the connection as soon as it sees "Connection: close").
        self.readers = 0
        self.closing = False

    def wait(self, writing: bool) -> bool:
        """Whether the socket became ready within one tick (else the clock looked for a cancel)."""
        tick = min(TICK_S, self.clock.left())
        if hasattr(select, "poll"):  # select() fails on descriptors past 1024, which a backend may hold
            poller = select.poll()
            poller.register(self.sock, select.POLLOUT if writing else select.POLLIN)
            ready = bool(poller.poll(tick * 1000))
        else:
            r, w, _ = select.select([] if writing else [self.sock], [self.sock] if writing else [], [], tick)
            ready = bool(r or w)
        if not ready:
            self.clock.check()
        return ready

    def connect(self, address: Any) -> None:
        code = self.sock.connect_ex(address)
        if code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            while not self.wait(True):
                pass
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, os.strerror(code))

    def handshake(self) -> None:
        while True:
            try:
                self.sock.do_handshake()  # type: ignore[attr-defined]
                return
            except ssl.SSLWantReadError:
                self.wait(False)
            except ssl.SSLWantWriteError:
                self.wait(True)

    def sendall(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while view:
            try:
                view = view[self.sock.send(view):]
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                self.wait(True)
            except ssl.SSLWantReadError:
                self.wait(False)

    def recv_into(self, buffer: Any) -> int:
        while True:
            try:
                return self.sock.recv_into(buffer)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                self.wait(False)
            except ssl.SSLWantWriteError:
                self.wait(True)

    def makefile(self, *args: Any, **kwargs: Any) -> io.BufferedReader:
        self.readers += 1
        return io.BufferedReader(WireReader(self))

    def close(self) -> None:
        self.closing = True
        if self.readers == 0:
            self.sock.close()

    def reader_closed(self) -> None:
        self.readers -= 1
        if self.closing and self.readers == 0:
            self.sock.close()


class WireReader(io.RawIOBase):
    """What http.client reads the response from."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self.wire.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self.wire.reader_closed()


def open_wire(host: str, port: int, context: ssl.SSLContext | None, clock: Clock) -> Wire:
    """A connection to the first address of ``host`` that answers (TLS when ``context``)."""
    error: OSError = OSError(errno.EHOSTUNREACH, os.strerror(errno.EHOSTUNREACH))
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        wire = Wire(sock, clock)
        try:
            sock.setblocking(False)
            wire.connect(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is not None:
                wire.sock = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
                wire.handshake()
            return wire
        except TimeoutError:
            wire.close()
            raise
        except OSError as exc:  # this address failed: the next one
            wire.close()
            error = exc
        except BaseException:  # a cancel
            wire.close()
            raise
    raise error


class Connection(http.client.HTTPConnection):
    """HTTP/1.1 (http.client parses) over a Wire; TLS when ``context`` is given."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        http.client.HTTPConnection.__init__(self, host, port)
        self.context = context
        self.clock = Clock(0)
        self.connect_within: float | None = None  # a shorter bound on connecting (several replicas)

    def use(self, clock: Clock, connect_within: float | None = None) -> None:
        self.clock = clock
        self.connect_within = connect_within
        if self.sock is not None:
            self.sock.clock = clock

    def connect(self) -> None:
        clock = self.clock
        if self.connect_within is not None:
            clock = Clock(min(self.connect_within, max(0.0, self.clock.at - time.monotonic())), self.clock.check)
        self.sock = open_wire(self.host, self.port, self.context, clock)
        self.sock.clock = self.clock


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verifies the service's certificate and host name: against ``ca_file``, else the system's CAs."""
    context = contexts.get(ca_file)
    if context is None:
        context = contexts[ca_file] = ssl.create_default_context(cafile=ca_file)
    return context
