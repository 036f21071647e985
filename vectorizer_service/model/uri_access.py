"""Reading media by URI: off unless the operator allows a scheme and a root (no open fetching).

An allowed root is matched exactly, never as a string prefix: a URL's scheme, host and port
must equal the root's, and its decoded path must lie under the root's path segment by segment
(dot segments are refused). Addresses a host resolves to must be public unless the operator
allows private ones, and the connection goes to the address that was checked. One deadline
covers the whole fetch (a server that drips bytes cannot hold a thread), redirects are refused,
and errors say what was refused, not what the network answered (the service is no port
scanner). Files are opened first and checked after: what was opened is what is read (no
symlink swap between check and open), and only regular files are read (a FIFO cannot hang).
"""

from __future__ import annotations

import errno
import http.client
import io
import ipaddress
import logging
import os
import socket
import ssl
import stat
import time
import urllib.parse
from dataclasses import dataclass

from vectorizer_service.core.errors import InputError
from vectorizer_service.core.settings import Settings

log = logging.getLogger("qvl.uri_access")
DEFAULT_PORTS = {"http": 80, "https": 443}
READ_CHUNK = 64 * 1024


def read_uri(uri: str, settings: Settings, what: str) -> bytes:
    """The bytes behind ``uri`` if its scheme and root are allowed, within the media size limit."""
    parsed = urllib.parse.urlsplit(uri)
    scheme = (parsed.scheme or "file").lower()
    if scheme not in settings.allow_uri_schemes:
        allowed = ", ".join(settings.allow_uri_schemes) or "none"
        raise InputError(f"{what}: URI scheme {scheme!r} is not allowed (allowed: {allowed}); send the bytes "
                         "instead or ask the operator to set QVL_ALLOW_URI_SCHEMES", status=400)
    if scheme == "file":
        return _read_file(parsed.path if parsed.scheme else uri, settings, what)
    if scheme in DEFAULT_PORTS:
        return _read_http(uri, settings, what)
    raise InputError(f"{what}: URI scheme {scheme!r} is not supported")


# -- files -------------------------------------------------------------------------------------
def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _read_file(path: str, settings: Settings, what: str) -> bytes:
    roots = [os.path.realpath(r) for r in settings.allow_uri_roots if "://" not in r]
    try:
        real = os.path.realpath(path)
    except ValueError as exc:  # a NUL byte, a lone surrogate: no file has that name
        raise InputError(f"{what}: cannot read {path!r}: {exc}") from None
    if not any(_under(real, r) for r in roots):
        raise InputError(f"{what}: {path!r} is outside the allowed roots")
    try:
        # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:
        raise InputError(f"{what}: cannot read {path!r}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{what}: {path!r} is not a regular file")
        # Judge the file that was opened, not the name: a symlink swapped in after the check
        # above would point elsewhere.
        opened = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else None
        if opened is None or not any(_under(opened, r) for r in roots):
            raise InputError(f"{what}: {path!r} is outside the allowed roots")
        if info.st_size > settings.max_media_bytes:
            raise InputError(f"{what}: {path!r} is {info.st_size} bytes, over the limit of "
                             f"{settings.max_media_bytes}", status=413, limit="QVL_MAX_MEDIA_BYTES")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as fh:
            fd = -1
            return fh.read(settings.max_media_bytes + 1)
    except OSError as exc:
        raise InputError(f"{what}: cannot read {path!r}: {exc.strerror or exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)


# -- http(s) -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class UrlRoot:
    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]

    @classmethod
    def parse(cls, url: str) -> UrlRoot | None:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not parts.hostname:
            return None
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError:
            return None
        segments = _segments(parts.path)
        if segments is None:
            return None
        return cls(scheme, parts.hostname.lower(), port, segments)

    def covers(self, other: UrlRoot) -> bool:
        n = len(self.segments)
        return (self.scheme, self.host, self.port) == (other.scheme, other.host, other.port) and (
            other.segments[:n] == self.segments)


def _segments(path: str) -> tuple[str, ...] | None:
    """A path's decoded segments; None when it has dot segments or encoded separators."""
    decoded = urllib.parse.unquote(path)
    if "\\" in decoded or "\x00" in decoded:
        return None
    parts = [p for p in decoded.split("/") if p]
    if any(p in (".", "..") for p in parts) or any("/" in urllib.parse.unquote(p) for p in path.split("/")):
        return None
    return tuple(parts)


def _allowed_root(uri: str, settings: Settings, what: str) -> UrlRoot:
    try:
        target = UrlRoot.parse(uri)
        parts = urllib.parse.urlsplit(uri)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        raise InputError(f"{what}: {uri!r} is not a valid URL") from None
    if target is None or parts.username is not None or parts.password is not None:
        raise InputError(f"{what}: {uri!r} is not a plain http(s) URL (no credentials, no dot segments)")
    roots = [r for r in (UrlRoot.parse(u) for u in settings.allow_uri_roots if "://" in u) if r is not None]
    if not any(root.covers(target) for root in roots):
        raise InputError(f"{what}: {uri!r} is outside the allowed URL roots")
    return target


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _resolve(host: str, port: int, settings: Settings, what: str, uri: str) -> list[tuple[int, str]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise InputError(f"{what}: cannot fetch {uri!r} (the host does not resolve)") from None
    addresses = [(family, str(sockaddr[0])) for family, _, _, _, sockaddr in infos]
    if not settings.allow_uri_private_addresses and not all(_public(a) for _, a in addresses):
        raise InputError(f"{what}: {uri!r} resolves to a private or local address, which is not allowed "
                         "(the operator may set QVL_ALLOW_URI_PRIVATE_ADDRESSES)")
    return addresses


class _DeadlineSocket:
    """A connected socket on which every wait gets what is left of one deadline. A timeout per
    socket operation would restart with each byte: a server that sends one header byte a second
    (or a chunk-size line the same way) would hold the fetch as long as it liked. http.client sends
    with ``sendall`` and reads through ``makefile``; the fetch closes the socket itself at the end."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline

    def arm(self) -> None:
        """The next operation may wait for the time left; TimeoutError once none is."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)

    def sendall(self, data: bytes) -> None:
        self.arm()
        self.sock.sendall(data)

    def recv_into(self, buffer: memoryview) -> int:
        self.arm()
        return self.sock.recv_into(buffer)

    def makefile(self, *args: object, **kwargs: object) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        """http.client lets go of it (e.g. on "Connection: close" while the body is still read)."""


class _DeadlineReader(io.RawIOBase):
    """What http.client reads the response from: status line, headers, chunk framing and body."""

    def __init__(self, sock: _DeadlineSocket) -> None:
        self.deadline_sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self.deadline_sock.recv_into(buffer)


def _open_pinned(target: UrlRoot, family: int, address: str, deadline: float
                 ) -> tuple[http.client.HTTPConnection, socket.socket]:
    """An HTTP(S) connection to an address already checked (no second name lookup): connecting
    and the TLS handshake wait only for what is left of the deadline. Returns the connection and
    the socket to close at the end."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    wired = _DeadlineSocket(sock, deadline)
    try:
        wired.arm()
        sock.connect((address, target.port))
        if target.scheme == "https":
            wired.arm()  # the handshake as a whole, with what the connect left
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
            wired.sock = sock
    except BaseException:
        sock.close()
        raise
    # The https scheme is served by the wrapped socket: http.client only frames the exchange.
    conn = http.client.HTTPConnection(target.host, target.port)
    conn.sock = wired  # type: ignore[assignment]
    return conn, sock


def _read_http(uri: str, settings: Settings, what: str) -> bytes:
    target = _allowed_root(uri, settings, what)
    deadline = time.monotonic() + settings.uri_timeout_s  # the name lookup's time counts too
    addresses = _resolve(target.host, target.port, settings, what, uri)
    parts = urllib.parse.urlsplit(uri)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    limit = settings.max_media_bytes
    try:
        family, address = addresses[0]
        conn, sock = _open_pinned(target, family, address, deadline)
        try:
            conn.request("GET", path, headers={"Host": parts.netloc, "Accept-Encoding": "identity"})
            resp = conn.getresponse()
            if 300 <= resp.status < 400:
                raise InputError(f"{what}: {uri!r} answered with a redirect, which is not followed")
            if resp.status != 200:
                raise InputError(f"{what}: cannot fetch {uri!r} (HTTP status {resp.status})")
            declared = resp.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise InputError(f"{what}: {uri!r} is over the limit of {limit} bytes", status=413,
                                 limit="QVL_MAX_MEDIA_BYTES")
            chunks: list[bytes] = []
            size = 0
            while chunk := resp.read1(READ_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise InputError(f"{what}: {uri!r} is over the limit of {limit} bytes", status=413,
                                     limit="QVL_MAX_MEDIA_BYTES")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            conn.close()
            sock.close()
    except InputError:
        raise
    except TimeoutError:
        raise InputError(f"{what}: cannot fetch {uri!r} within {settings.uri_timeout_s:g} s") from None
    # ValueError: a URL no request can carry (spaces, control characters, non-ASCII)
    except (OSError, ValueError, http.client.HTTPException, ssl.SSLError) as exc:
        # The reason stays in the log: echoed to the caller, it would map the network behind us.
        log.warning("URI fetch failed", extra={"uri": uri, "error": str(exc),
                                               "errno": errno.errorcode.get(getattr(exc, "errno", 0) or 0)})
        raise InputError(f"{what}: cannot fetch {uri!r}") from None
