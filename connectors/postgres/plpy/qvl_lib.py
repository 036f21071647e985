"""qvl's PL/Python library: what the PL/Python functions of schema ``qvl`` run inside the database.

It runs in the database server's own Python (PL/Python, ``plpython3u``), not in the project's
environment, so it uses the standard library only and reaches the model service over its HTTP JSON
API (docs/api.md).

How it gets there: ``qvl pg install`` writes this file's text into the body of ``qvl._load()``,
which executes it as a module and keeps the module in ``GD`` (the dictionary every PL/Python
function of a backend shares) under a key derived from the text's hash. Each PL/Python function
starts with the prologue the installer writes at its ``# qvl:prologue`` marker: it takes the
module from ``GD``, calling ``qvl._load()`` first when this backend has not loaded this version.

``plpy`` is not imported: PL/Python provides it, and the loader sets it as a global of this module
after executing it. Tests set a stand-in, so everything here imports and runs without a database.
"""

from __future__ import annotations

import array
import base64
import contextlib
import errno
import http.client
import io
import json
import math
import os
import re
import select
import socket
import ssl
import sys
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

plpy: Any = None  # PL/Python's module, set by qvl._load() (a stand-in in tests)

Row = Mapping[str, Any]
Item = dict[str, Any]
# Names the failing input for an error message, from the item index the service reports (or None).
What = Callable[[int | None], str]
Quote = Callable[[str], str]

DEFAULT_QUERY_INSTRUCTION = "Retrieve images or text relevant to the user's query."
ROUTES = {"embed": ("POST", "/v1/embed"), "rerank": ("POST", "/v1/rerank"), "info": ("GET", "/v1/info")}
SQLSTATE = {400: "22023", 404: "22023", 422: "22023", 413: "54000", 401: "28000", 403: "28000",
            429: "53000", 503: "53000", 504: "57014", 0: "08001"}
MEDIA_HINT = ("Fix or leave out that input: images must be PNG, JPEG, WebP, GIF, BMP or TIFF bytes, videos "
              "MP4, MOV, WebM, MKV or GIF bytes (or a bytea[] of frames), and a path/URI is read only where the "
              "service allows it (QVL_ALLOW_URI_SCHEMES, QVL_ALLOW_URI_ROOTS).")
BUSY_HINT = ("The service's queue is full; retry shortly (more replicas or a larger QVL_QUEUE_MAX_ITEMS "
             "help under load).")
# 503 with the service's reason NOT_READY (its error body's "reason", docs/api.md): not load, so
# QVL_QUEUE_MAX_ITEMS would not help
NOT_READY = "NOT_READY"
UNREADY_HINT = ("The service is loading its models, draining or restarting its model process; retry shortly "
                "(with replicas, list them all: SELECT qvl.set_service('http://a:8080,http://b:8080');).")
# 503 without that reason: the call reached the model and the service could not finish it (its model
# process exited with it), or something in front of the service answered.
UNAVAILABLE_HINT = ("The service could not finish the call (its model process may have exited with it: the "
                    "service log says why); retry shortly.")
TOKEN_HINT = "The installing role sets the token: SELECT qvl.set_service(url, token);"
HINTS = {
    0: "Start the service (qvl serve) or, as the installing role, point qvl at it: "
       "SELECT qvl.set_service('http://host:8080'); (SELECT url FROM qvl.service shows where it points now.)",
    401: TOKEN_HINT,
    403: TOKEN_HINT,
    # A service that does not say which limit it hit (older than the "limit" field).
    413: "Send less, or raise the service's limit that the message names.",
    404: "The service has no model for this call loaded: start qvl serve with --embedding-model and "
         "--reranker-model (QVL_EMBEDDING_MODEL, QVL_RERANKER_MODEL).",
    504: "Send smaller inputs, or allow longer: SET statement_timeout (when it is what ran out), or as the "
         "installing role SELECT qvl.set_service(url, token, timeout_s => 120);",
    500: "The model failed on this input; the service log has the details.",
}
TOP_K_HINT = "Pass top_k => NULL to rank every document, or a number from 1 up."
INPUT_HINT = "Fix or leave out that input (DETAIL has the service's words)."
# What a refusal by each of the service's limits asks of the caller; the hint adds the setting that
# raises it. The service names the limit in its error body ("limit", docs/api.md).
LIMIT_ADVICE = {
    "QVL_MAX_TEXT_CHARS": "Send a shorter text (split it into several rows or items)",
    "QVL_EMBED_MAX_LENGTH": "Send fewer or smaller images, or fewer video frames, in one item",
    "QVL_RERANK_MAX_LENGTH": "Send fewer or smaller images, or fewer video frames, in the query and each document",
    "QVL_MAX_RERANK_DOCUMENTS": "Rerank fewer documents in one call (split the array)",
    "QVL_MAX_ITEMS_PER_REQUEST": "Send fewer items in one call",
    "QVL_MAX_REQUEST_BYTES": "Send less in one call (fewer or smaller images, videos or documents)",
    "QVL_MAX_MEDIA_BYTES": "Send a smaller image or a shorter video",
    "QVL_MAX_SOURCE_IMAGE_PIXELS": "Send an image of fewer pixels (scale it down)",
    "QVL_MAX_VIDEO_FRAME_PIXELS": "Send a video of smaller frames",
    "QVL_MAX_VIDEO_SOURCE_FRAMES": "Send a video of fewer frames",
    "QVL_MAX_VIDEO_SECONDS": "Send a shorter video",
    "QVL_MAX_ITEM_DECODED_PIXELS": "Send fewer or smaller images or frames in one item",
    "QVL_MAX_REQUEST_DECODED_PIXELS": "Send fewer or smaller images or videos in one call",
    "QVL_MAX_IMAGES_PER_ITEM": "Send fewer images in one item",
    "QVL_MAX_VIDEOS_PER_ITEM": "Send fewer videos in one item",
    "QVL_VIDEO_CODECS": "Send the video in a codec the service decodes (H.264, for one)",
}
REQUEST_LIMITS = ("QVL_MAX_RERANK_DOCUMENTS", "QVL_MAX_ITEMS_PER_REQUEST")
DIMENSIONS_HINT = ("Ask for dimensions the model gives: from 32 up to its size (SELECT qvl.service_info()), "
                   "or NULL for all of them.")
# A refusal without a limit names its part: images, video frames and URIs get the media hint.
MEDIA_WORDS = re.compile(r"\b(images?|videos?|frames?|URIs?|URLs?)\b")
SYNC_QUEUE_HINT = (" Or create the vectorizer with on_error => 'queue' to store the row "
                   "now and embed it later through the worker.")
ITEM_PREFIX = re.compile(r"^((item|document) \d+|query): ")
INFO_TTL_S = 60.0
RETRY_AFTER_S = (0.05, 5.0)  # bounds of a 429/503 Retry-After wait
TICK_S = 0.2  # the longest wait on the service between looks for a cancel (see Clock)
# Several replicas: a connect that takes longer than this passes to the next one (a host that is
# gone may never answer, and must not eat the whole call's deadline); one that could not be
# reached is asked last for AVOID_S seconds.
CONNECT_S = 3.0
AVOID_S = 5.0
SERVICE_HINT = ("Give one address or several, comma-separated: SELECT qvl.set_service('http://qvl:8080'); or "
                "SELECT qvl.set_service('http://qvl-a:8080,http://qvl-b:8080');")

# Per backend (the module lives as long as the backend's GD entry).
plans: dict[Any, Any] = {}  # prepared statements by key
conns: dict[tuple[Any, ...], Any] = {}  # keep-alive Connections by (scheme, host, port, CA file)
turn = 0  # calls this backend has sent to a replica list (each starts at the next replica)
contexts: dict[str | None, ssl.SSLContext] = {}  # TLS contexts by CA file
cache: dict[str, tuple[float, Any]] = {}  # "info": (when, GET /v1/info answer)
avoid: dict[str, float] = {}  # replica URL -> until when it is asked last (unreachable or busy)


class Failure(Exception):
    """A service error on its way to becoming a SQL error (caught where the caller can fall back)."""

    def __init__(self, message: str, detail: str | None = None, hint: str | None = None,
                 sqlstate: str = "XX000", status: int | None = None) -> None:
        Exception.__init__(self, message)
        self.message, self.detail, self.hint, self.sqlstate, self.status = message, detail, hint, sqlstate, status

    def raise_sql(self) -> NoReturn:
        # plpy.error writes a detail or hint of None as the text "None": pass only what there is.
        given = {k: v for k, v in (("detail", self.detail), ("hint", self.hint)) if v is not None}
        plpy.error(self.message, sqlstate=self.sqlstate, **given)


def plan(key: Any, query: str, argtypes: Sequence[str] = ()) -> Any:
    """The prepared statement of ``query``, prepared once per backend under ``key``.

    The text and argument types are part of the key: a vectorizer whose columns were renamed or
    whose key was widened (the schema guard follows both) gets a new statement, where a plan of the
    old text would fail once Postgres re-plans it."""
    full_key = (key, query, tuple(argtypes))
    p = plans.get(full_key)
    if p is None:
        p = plans[full_key] = plpy.prepare(query, list(argtypes))
    return p


# -- HTTP: runs inside qvl._call, i.e. as the owner, the only reader of qvl.service -------------
def error_body(error: str, code: str) -> str:
    return json.dumps({"error": error, "code": code})


def service_urls(value: str) -> list[str]:
    """The addresses in ``qvl.service.url``: one, or several replicas separated by commas."""
    return [part.strip().rstrip("/") for part in value.split(",")]


def url_problem(url: str) -> str | None:
    """What is wrong with one service address (None: nothing). Never repeats credentials."""
    if not url:
        return "an empty address in the list (a comma too many?)"
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None or parts.password is not None:
        return "an address must not hold credentials; give the token as qvl.set_service(url, token)"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"{url!r} is not an http:// or https:// address"
    if not parts.hostname:
        return f"{url!r} names no host"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return f"{url!r}: the port must be a number from 1 to 65535"
    if parts.query or parts.fragment:
        return f"{url!r}: an address has no query (?) or fragment (#)"
    return None


def check_service(value: str, ca_file: str | None) -> str:
    """The address list as ``qvl.service`` keeps it (each address checked, schemes in lower case,
    no trailing slash, ", " -> ","); ValueError saying what is wrong."""
    urls = service_urls(value)
    for url in urls:
        problem = url_problem(url)
        if problem is not None:
            raise ValueError(problem)
    urls = [urllib.parse.urlunsplit(urllib.parse.urlsplit(url)) for url in urls]
    if ca_file is not None:
        for url in urls:
            if not url.startswith("https://"):
                raise ValueError(f"a CA file is for an https:// service, not {url}")
    return ",".join(urls)


def check_service_sql(value: str, ca_file: str | None) -> str:
    """qvl._check_service, which qvl.set_service calls: a bad address is a 22023 error."""
    try:
        return check_service(value, ca_file)
    except ValueError as exc:
        plpy.error(f"qvl: {exc}", hint=SERVICE_HINT, sqlstate="22023")
        raise


def replica_order(urls: Sequence[str]) -> list[int]:
    """The order to ask the replicas in: each call starts at the next replica in turn, from one
    chosen by this backend's process id, and those that failed lately go last. (Keeping each
    backend on one replica would leave the load to the parity of process ids: 4 sessions could all
    pick the same one of 2.)"""
    global turn
    start = (os.getpid() + turn) % len(urls)
    turn += 1
    order = [(start + k) % len(urls) for k in range(len(urls))]
    now = time.monotonic()
    return sorted(order, key=lambda i: avoid.get(urls[i], 0.0) > now)  # stable: the rotation stays


def target(url: str, route_path: str) -> tuple[str, Any, int, str]:
    """(scheme, host, port, request path) of a route under the service URL (which may have a path)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/") + route_path


def _drop(key: tuple[Any, ...]) -> None:
    conn = conns.pop(key, None)
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


def retry_after(value: str | None) -> float:
    """Seconds to wait on a 429/503: the service's Retry-After (default 1), within RETRY_AFTER_S."""
    try:
        return max(RETRY_AFTER_S[0], min(RETRY_AFTER_S[1], float(value or 1)))
    except ValueError:
        return 1.0


def why(exc: BaseException) -> str:
    """What went wrong, without the service's address: the error reaches roles that may not read
    qvl.service (exception texts may name the host; SELECT url FROM qvl.service shows it to the owner)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its TLS certificate did not verify ({(exc.verify_message or 'unknown reason').split(',')[0]})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or type(exc).__name__})"
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    return type(exc).__name__


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


STATEMENT_LEFT_SQL = """
SELECT s.*,
       EXTRACT(epoch FROM pg_catalog.current_setting('statement_timeout')::pg_catalog.interval)::float8
           AS statement_timeout_s,
       EXTRACT(epoch FROM pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) pg_catalog.statement_timestamp())::float8
           AS statement_elapsed_s
  FROM qvl.service s"""


def budget(timeout_s: float, statement_timeout_s: float | None, elapsed_s: float | None) -> tuple[float, str]:
    """Seconds the call may take and what limits it: the service's timeout_s, or what is left of the
    statement's statement_timeout when that is set and sooner."""
    if statement_timeout_s and statement_timeout_s > 0:
        left = statement_timeout_s - (elapsed_s or 0.0)
        if left < timeout_s:
            return max(left, 0.0), "statement_timeout"
    return timeout_s, "timeout_s"


def interrupts() -> None:
    """Raises (an SPIError) when the statement was cancelled or ran past statement_timeout."""
    plpy.execute(plan("tick", "SELECT 1"))


def send(endpoint: str, request: str) -> tuple[int, str]:
    """(status, body) of one call to the configured service; status 0 when unreachable. Raises only
    when the statement is cancelled (pg_cancel_backend, statement_timeout) while it waits."""
    route = ROUTES.get(endpoint)
    if route is None:
        return 400, json.dumps({"error": f"unknown endpoint {endpoint!r}", "code": "INVALID_ARGUMENT"})
    rows = plpy.execute(plan("service", STATEMENT_LEFT_SQL))
    if rows.nrows() == 0:
        return 0, error_body("no service address is configured", "UNAVAILABLE")
    svc = rows[0]
    seconds, limit = budget(float(svc["timeout_s"]), svc.get("statement_timeout_s"), svc.get("statement_elapsed_s"))
    return http_send(svc["url"], svc["token"], seconds, route, request, ca_file=svc.get("ca_file"),
                     check=interrupts, limit=limit)


def http_send(url: str, token: str | None, timeout: float, route: tuple[str, str], request: str, *,
              ca_file: str | None = None, check: Callable[[], Any] | None = None,
              limit: str = "timeout_s") -> tuple[int, str]:
    """One HTTP exchange with the service; (0, ...) unreachable, (504, ...) no answer in time.

    ``url`` is one address or several replicas, comma-separated. A replica that cannot be reached
    (refused, reset, no connect within CONNECT_S, or gone mid-answer) or that answers 429/503 (busy,
    starting, draining) passes the call to the next one at once; embedding and reranking are
    idempotent, so asking again is safe. When every replica is busy the call waits as the service
    asks (Retry-After) and tries them again, while that fits.

    ``timeout`` bounds the whole exchange: connecting, sending, every read and the retries (a
    kept-alive connection the server had closed is retried once on a new one). ``check`` runs between
    waits of at most TICK_S and raises to abandon the call (a cancelled statement). https: the
    certificate is verified against ``ca_file`` (else the system's CAs).
    """
    urls = service_urls(url)
    clock = Clock(timeout, check)
    late = error_body(f"no answer from the qvl service within {timeout:.3g} s ({limit})", "DEADLINE_EXCEEDED")
    connect_within = CONNECT_S if len(urls) > 1 else None
    while True:
        waits: list[float] = []
        last: tuple[int, str] = (0, error_body("no service address is configured", "UNAVAILABLE"))
        for i in replica_order(urls):
            status, text, wait = exchange(urls[i], token, clock, route, request, ca_file, connect_within)
            if status == 504 and wait < 0:
                return 504, late
            if status == 0 or status in (429, 503):
                avoid[urls[i]] = time.monotonic() + (AVOID_S if status == 0 else wait)
                last = (status, text)
                if status:
                    waits.append(wait)
                continue  # the next replica
            avoid.pop(urls[i], None)
            return status, text
        if not waits:
            return last  # every replica unreachable
        wait = min(waits)
        if time.monotonic() + wait >= clock.at:
            return last  # busy everywhere, and no time to wait for it
        try:
            clock.sleep(wait)  # queue full or warming up: wait as the service asks, within the deadline
        except TimeoutError:
            return 504, late


def exchange(url: str, token: str | None, clock: Clock, route: tuple[str, str], request: str,
             ca_file: str | None, connect_within: float | None) -> tuple[int, str, float]:
    """One request to one replica: (status, body, seconds to wait before asking it again). (504, ...,
    -1) when the call's deadline passed; (0, ...) when this replica could not be reached."""
    method, route_path = route
    scheme, host, port, path = target(url, route_path)
    headers = {"Content-Type": "application/json", "User-Agent": "qvl-postgres"}
    if token:
        headers["Authorization"] = "Bearer " + token
    body = request.encode("utf-8") if method == "POST" else None
    key = (scheme, host, port, ca_file)
    while True:
        conn = conns.get(key)
        fresh = conn is None
        try:
            if conn is None:
                try:
                    context = tls_context(ca_file) if scheme == "https" else None
                except (OSError, ValueError) as exc:
                    return 0, error_body(f"cannot use the CA file: {why(exc)}", "UNAVAILABLE"), 0.0
                conn = conns[key] = Connection(host, port, context)
            conn.use(clock, connect_within)
            clock.left()
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except TimeoutError:
            _drop(key)
            if time.monotonic() < clock.at:  # only the connect bound ran out: this replica is not answering
                return 0, error_body("cannot reach the qvl service: no connection within "
                                     f"{connect_within:g} s", "UNAVAILABLE"), 0.0
            return 504, "", -1.0
        except (OSError, http.client.HTTPException) as exc:
            _drop(key)
            if not fresh:
                continue  # a kept-alive connection the server had closed: once more on a new one
            return 0, error_body(f"cannot reach the qvl service: {why(exc)}", "UNAVAILABLE"), 0.0
        except BaseException:  # cancelled mid-exchange: the connection is in no state to reuse
            _drop(key)
            raise
        if resp.will_close:
            _drop(key)
        wait = retry_after(resp.getheader("Retry-After")) if resp.status in (429, 503) else 0.0
        return resp.status, data.decode("utf-8", "replace"), wait


# -- calls, as the invoker ---------------------------------------------------------------------
def call(endpoint: str, payload: Any, what: What) -> Any:
    """The decoded answer; any failure raises Failure naming ``what(item index or None)``."""
    body = json.dumps(payload, separators=(",", ":"))
    row = plpy.execute(plan("call", "SELECT status, response FROM qvl._call($1, $2)", ["text", "text"]),
                       [endpoint, body])[0]
    return answer(endpoint, row["status"], row["response"], what)


def answer(endpoint: str, status: int, text: str, what: What) -> Any:
    """The JSON of a 200 answer; else raises the Failure that ``status`` and ``text`` describe.
    A 200 that is not a JSON object is the service's failure (``malformed``), not the input's."""
    if status == 200:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise malformed(endpoint, f"a 200 answer that is not a JSON object: {text[:200]!r}")
        return data
    raise failure(endpoint, status, text, what)


def malformed(endpoint: str, what: str) -> Failure:
    return Failure("qvl: the model service answered something malformed", detail=f"{endpoint}: {what}",
                   hint="The service (or something between it and the database) is broken or not qvl's "
                        "service; check qvl.set_service and the service log.", sqlstate="XX000", status=200)


def failure(endpoint: str, status: int, text: str | None, what: What) -> Failure:
    """The SQL error (message, detail, hint, SQLSTATE) for a failed call."""
    try:
        info = json.loads(text) if text else {}
    except ValueError:
        info = {}
    if not isinstance(info, dict):
        info = {}
    error = str(info.get("error") or (text or "")[:300] or f"HTTP {status}")
    item = info.get("item")
    limit = info.get("limit")
    # A count of the request's inputs is the request's fault, not the query's (what(None) for a rerank).
    subject = "the request" if limit in REQUEST_LIMITS else what(item if isinstance(item, int) else None)
    reason = ITEM_PREFIX.sub("", error)
    if status == 0:
        message = "qvl: cannot reach the model service"
    elif status in (400, 404, 413, 422):
        message = f"qvl: the model service refused {subject}: {reason}"
    elif status in (401, 403):
        message = "qvl: the model service refused the token"
    elif status in (429, 503):
        message = "qvl: the model service is busy or starting"
    elif status == 504:
        message = "qvl: the model service did not answer in time"
    else:
        message = f"qvl: the model service failed on {subject}: {reason}"
    if isinstance(limit, str) and limit:
        hint = limit_hint(limit)
    elif status in (400, 422):
        hint = MEDIA_HINT if MEDIA_WORDS.search(reason) else INPUT_HINT
    elif status in (429, 503):
        hint = unavailable_hint(status, info)
    else:
        hint = HINTS.get(status) or HINTS[500]
    return Failure(message, detail=f"{endpoint} {status or 'unreachable'}: {error}", hint=hint,
                   sqlstate=SQLSTATE.get(status, "XX000"), status=status)


def unavailable_hint(status: int, info: Mapping[str, Any]) -> str:
    """What a 429/503 asks of the caller, read from the body's typed fields, never its words."""
    if info.get("reason") == NOT_READY:
        return UNREADY_HINT
    if status == 429 or info.get("code") == "RESOURCE_EXHAUSTED":
        return BUSY_HINT
    return UNAVAILABLE_HINT


def limit_hint(limit: str) -> str:
    """The hint of a refusal by one of the service's limits: what to send instead, and the setting."""
    if limit == "dimensions":
        return DIMENSIONS_HINT
    advice = LIMIT_ADVICE.get(limit, "Send less")
    return f"{advice}, or raise {limit} on the service."


def info() -> Any:
    """GET /v1/info, remembered for INFO_TTL_S seconds per backend."""
    hit = cache.get("info")
    if hit is not None and time.monotonic() - hit[0] < INFO_TTL_S:
        return hit[1]
    data = call("info", None, lambda i: "the info request")
    cache["info"] = (time.monotonic(), data)
    return data


def model_info(task: str) -> dict[str, Any]:
    for m in info().get("models", []):
        if m.get("task") == task:
            return m
    return {}


def query_instruction() -> str:
    return model_info("embed").get("query_instruction") or DEFAULT_QUERY_INSTRUCTION


# -- items ---------------------------------------------------------------------------------------
BINARY = (bytes, bytearray, memoryview)


def b64(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def _flat(values: Iterable[Any]) -> Iterator[Any]:
    for v in values:
        if isinstance(v, list):
            for x in v:
                if x is not None:
                    yield x
        elif v is not None:
            yield v


def make_item(texts: Iterable[Any] = (), images: Iterable[Any] = (), videos: Iterable[Any] = ()) -> Item | None:
    """A JSON item from column values: one joint item, or None when every value is NULL.

    Images: bytea = bytes, text = a path/URI for the service. Video: bytea = a file, bytea[] = its
    frames, text = a path/URI. Same order as the worker's gRPC items: video, images, URIs, texts.
    """
    item: Item = {}
    for v in videos:
        if v is None:
            continue
        if isinstance(v, list):
            item["frames"] = [b64(f) for f in v if f is not None]
        elif isinstance(v, BINARY):
            item["video"] = b64(v)
        else:
            item["video_uri"] = str(v)
    pictures = list(_flat(images))
    raw = [b64(x) for x in pictures if isinstance(x, BINARY)]
    uris = [str(x) for x in pictures if not isinstance(x, BINARY)]
    if raw:
        item["image"] = raw
    if uris:
        item["image_uri"] = uris
    text = [str(t) for t in _flat(texts)]
    if text:
        item["text"] = text
    return item or None


def row_item(cfg: Row, row: Row) -> Item | None:
    return make_item([row[c] for c in cfg["text_columns"]], [row[c] for c in cfg["image_columns"]],
                     [row[c] for c in cfg["video_columns"]])


def text_item(value: str | None) -> Item | None:
    return None if value is None else {"text": [value]}


def image_item(value: bytes | None) -> Item | None:
    return None if value is None else {"image": [b64(value)]}


# -- embeddings ----------------------------------------------------------------------------------
def vector_text(emb: Mapping[str, Any], storage: str, dims: int | None) -> str:
    """pgvector's text form ('[...]' or a bit string) of one answer."""
    if "embedding_b64" in emb:
        raw = base64.b64decode(emb["embedding_b64"])
        if storage == "bit":
            return "".join(format(b, "08b") for b in raw)[:dims]
        floats = array.array("f")
        floats.frombytes(raw)
        if sys.byteorder != "little":
            floats.byteswap()
        values = floats.tolist()
    else:
        values = emb["embedding"]
    return "[" + ",".join(map(repr, values)) + "]"


def embed_request(item: Item | None, instruction: str | None, dimensions: int | None, storage: str) -> dict[str, Any]:
    """The POST /v1/embed body for one item (binary encoding for bit storage, else float32)."""
    payload: dict[str, Any] = {"items": [item if item is not None else {}], "format": "base64",
                               "encoding": "binary" if storage == "bit" else "float32"}
    if instruction is not None:
        payload["instruction"] = instruction
    if dimensions is not None:
        payload["dimensions"] = dimensions
    return payload


def embed_text(item: Item | None, instruction: str | None, dimensions: int | None, storage: str,
               what: What) -> str:
    """The vector's text; a Failure for an answer without one or with a value that is not finite."""
    resp = call("embed", embed_request(item, instruction, dimensions, storage), what)
    try:
        text = vector_text(resp["embeddings"][0], storage, resp.get("dimensions"))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise malformed("embed", f"no vector in the answer ({type(exc).__name__}: {exc})") from None
    if storage != "bit" and not all(math.isfinite(float(x)) for x in text.strip("[]").split(",")):
        raise Failure(f"qvl: the model service returned a vector that is not finite (NaN or infinity) for "
                      f"{what(None)}", detail="embed 200: a NaN or infinite value", hint=HINTS[500],
                      sqlstate="XX000", status=200)
    return text


def embed_sql(text: str | None, image: bytes | None, video: bytes | None, instruction: str | None,
              dimensions: int | None, storage: str) -> str | None:
    """qvl.embed and qvl.embed_halfvec."""
    item = make_item([text], [image], [video]) or {}
    try:
        return embed_text(item, instruction, dimensions, storage, lambda i: "the input")
    except Failure as f:
        f.raise_sql()


# -- reranking -----------------------------------------------------------------------------------
def rerank_request(query_item: Item | None, doc_items: Sequence[Item | None], instruction: str | None,
                   top_k: int | None) -> dict[str, Any] | None:
    """The POST /v1/rerank body, or None when there is nothing to rank (no query, no documents).

    top_k follows the service's rule, the same over HTTP and gRPC: NULL ranks every document, else it
    must be at least 1. Checked first, so a wrong top_k is an error whatever the data.
    """
    if top_k is not None and top_k < 1:
        raise Failure(f"qvl: top_k must be at least 1, got {top_k}", hint=TOP_K_HINT, sqlstate="22023")
    if query_item is None or not doc_items:
        return None
    payload: dict[str, Any] = {"query": query_item, "documents": [d or {} for d in doc_items]}
    if instruction is not None:
        payload["instruction"] = instruction
    if top_k is not None:
        payload["top_k"] = top_k
    return payload


def rerank_what(i: int | None) -> str:
    return "the query" if i is None else f"documents[{i + 1}]"


def rerank_sql(query_item: Item | None, doc_items: Sequence[Item | None], instruction: str | None,
               top_k: int | None) -> list[tuple[int, float]]:
    """qvl.rerank: (1-based index, score) best first."""
    try:
        payload = rerank_request(query_item, doc_items, instruction, top_k)
        if payload is None:
            return []
        resp = call("rerank", payload, rerank_what)
    except Failure as f:
        f.raise_sql()
    return [(r["index"] + 1, r["score"]) for r in resp["ranking"]]


# -- vectorizers ---------------------------------------------------------------------------------
VECTORIZER_SQL = """
SELECT v.id, v.name, v.pk_columns, v.pk_types, v.text_columns, v.image_columns, v.video_columns,
       v.destination, v.dimensions, v.storage, v.instruction, v.query_instruction, v.mode, v.on_error,
       pg_catalog.format('%%I.%%I', n.nspname, c.relname) AS source_sql, c.relname AS source_name,
       (SELECT format('%%I', ns.nspname) FROM pg_catalog.pg_extension e
          JOIN pg_catalog.pg_namespace ns ON ns.oid = e.extnamespace WHERE e.extname = 'vector') AS vector_schema
  FROM qvl.vectorizer v
  JOIN pg_catalog.pg_class c ON c.oid = v.source
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE %s"""


def vectorizer_by_name(name: str) -> Row:
    rows = plpy.execute(plan("vec_by_name", VECTORIZER_SQL % "v.name = $1", ["text"]), [name])
    if rows.nrows() == 0:
        plpy.error(f"qvl: no vectorizer named {name!r}", hint="See SELECT name FROM qvl.vectorizer_status;",
                   sqlstate="42704")
    return rows[0]


def vectorizer_by_id(vid: int) -> Row:
    rows = plpy.execute(plan("vec_by_id", VECTORIZER_SQL % "v.id = $1", ["int4"]), [vid])
    if rows.nrows() == 0:
        plpy.error(f"qvl: vectorizer {vid} is gone; its trigger should have been dropped", sqlstate="42704")
    return rows[0]


def pk_text(cfg: Row, row: Row) -> str:
    values = [row[c] for c in cfg["pk_columns"]]
    return str(values[0]) if len(values) == 1 else "(" + ",".join(map(str, values)) + ")"


def enqueue_sql(vid: int, pk_columns: Sequence[str], quote: Quote) -> str:
    """Queue one row by primary key ($1, $2, ...), releasing any claim on it."""
    cols = ", ".join(quote(c) for c in pk_columns)
    params = ", ".join(f"${i + 1}" for i in range(len(pk_columns)))
    return (f"INSERT INTO qvl.queue_{vid} ({cols}) VALUES ({params}) ON CONFLICT ({cols}) DO UPDATE "
            f"SET claimed_until = NULL, claimed_by = NULL, not_before = NULL")


def enqueue(cfg: Row, row: Row) -> None:
    query = enqueue_sql(cfg["id"], cfg["pk_columns"], plpy.quote_ident)
    plpy.execute(plan(("enqueue", cfg["id"]), query, cfg["pk_types"]), [row[c] for c in cfg["pk_columns"]])
    plpy.execute(plan("notify", "SELECT pg_catalog.pg_notify('qvl_queue', $1)", ["text"]), [str(cfg["id"])])


def unfail_sql(vid: int, pk_columns: Sequence[str], quote: Quote) -> str:
    """Forget a row's failure ($1, $2, ...: its key): it has just been embedded."""
    where = " AND ".join(f"{quote(c)} = ${i + 1}" for i, c in enumerate(pk_columns))
    return f"DELETE FROM qvl.failed_{vid} WHERE {where}"


def unfail(cfg: Row, row: Row) -> None:
    query = unfail_sql(cfg["id"], cfg["pk_columns"], plpy.quote_ident)
    plpy.execute(plan(("unfail", cfg["id"]), query, cfg["pk_types"]), [row[c] for c in cfg["pk_columns"]])


def sync_trigger(TD: dict[str, Any]) -> str:
    """BEFORE INSERT/UPDATE of a 'sync' vectorizer: the vector is in the row when the statement ends."""
    cfg = vectorizer_by_id(int(TD["args"][0]))
    new = TD["new"]
    dest = cfg["destination"]
    item = row_item(cfg, new)
    if item is None:
        new[dest] = None
        return "MODIFY"
    where = f"row {pk_text(cfg, new)} of {cfg['source_sql']}"
    try:
        new[dest] = embed_text(item, cfg["instruction"], cfg["dimensions"], cfg["storage"], lambda i: where)
    except Failure as f:
        if cfg["on_error"] != "queue":
            f.hint = (f.hint or "") + SYNC_QUEUE_HINT
            f.raise_sql()
        new[dest] = None
        enqueue(cfg, new)
        plpy.notice(f"qvl: {where} queued for the worker: {f.message}")
        return "MODIFY"
    # A row that failed in the worker (queued by on_error => 'queue') and was fixed since: its failure
    # is past (the worker's write does the same for async rows).
    unfail(cfg, new)
    return "MODIFY"


# -- query embeddings, once per statement --------------------------------------------------------
# A STABLE function in `ORDER BY embedding <=> qvl.query_embedding(...)` runs once per row: as the
# sort key of every row a sequential scan reads, and as the distance projected for every row an index
# scan returns. So the vector is remembered for the running statement: its first row asks the service,
# the others read the answer.
STAMP_SQL = "SELECT pg_catalog.statement_timestamp()::pg_catalog.text AS stamp"
memo: dict[str, Any] = {"stamp": None, "values": {}}  # per backend: the running statement's values
MEMO_MAX = 256  # values one statement keeps (a query per row, e.g. of a column, would otherwise pile up)
QUERY_FUNCTIONS = {"vector": "qvl.query_embedding", "halfvec": "qvl.query_embedding_halfvec",
                   "bit": "qvl.query_embedding_bit"}


def statement_memo() -> dict[Any, Any]:
    """What the running statement remembers; emptied when another statement starts. The key is
    statement_timestamp(), set when a statement arrives from the client (statements that functions
    run share their caller's)."""
    stamp = plpy.execute(plan("stamp", STAMP_SQL))[0]["stamp"]
    if memo["stamp"] != stamp:
        memo["stamp"], memo["values"] = stamp, {}
    return memo["values"]


def check_query_type(cfg: Row, kind: str) -> None:
    """A query vector of ``kind`` must meet the vectorizer's column in its own type, or the column is
    cast and its index goes unused. vector also serves halfvec columns: pgvector casts vector to
    halfvec implicitly (the argument is cast, not the column). bit serves every column: a bit
    vectorizer's own, or the binary quantization of a vector/halfvec one (binary_quantize)."""
    storage = cfg["storage"]
    if kind == "bit" or kind == storage or (kind == "vector" and storage == "halfvec"):
        return
    name = cfg["name"]
    if storage == "bit":
        hint = f"Use {QUERY_FUNCTIONS['bit']}({name!r}, ...) with the <~> (Hamming distance) operator."
    else:
        hint = (f"Use {QUERY_FUNCTIONS['vector']}({name!r}, ...): a halfvec beside a vector column would cast "
                f"the column, and its index would go unused.")
    plpy.error(f"qvl: vectorizer {name!r} stores {storage}, and {QUERY_FUNCTIONS[kind]} gives {kind}", hint=hint,
               sqlstate="42804")


def query_vector(cfg: Row, query_item: Item, storage: str, what: What) -> str:
    """The query's vector text at the vectorizer's size, embedded with its query instruction."""
    instruction = cfg["query_instruction"] or query_instruction()
    return embed_text(query_item, instruction, cfg["dimensions"], storage, what)


def query_embedding_sql(name: str, text: str | None, image: bytes | None, video: bytes | None,
                        kind: str) -> str | None:
    """qvl.query_embedding(_halfvec, _bit): one service call per statement and query."""
    values = statement_memo()
    key = (name, kind, text, image, video)
    if key in values:
        return values[key]
    cfg = vectorizer_by_name(name)
    check_query_type(cfg, kind)
    item = make_item([text], [image], [video])
    vec = None
    if item is not None:
        try:
            vec = query_vector(cfg, item, "bit" if kind == "bit" else "vector", lambda i: "the query")
        except Failure as f:
            f.raise_sql()
    if len(values) >= MEMO_MAX:
        values.pop(next(iter(values)))  # the oldest
    values[key] = vec
    return vec


# -- filters: one condition on the row, PostgreSQL deciding ----------------------------------------
# A filter is SQL text (a condition the application writes) or a structured filter (jsonb: columns
# of the table, operators from a fixed list, values bound as parameters: what an application builds
# from its users' input). Neither can become more than one condition on the table's row, and no
# home-made lexer decides it (one that must agree with PostgreSQL's on every quoting rule loses):
#  - a text filter is planned alone first, at the very end of a probe ("SELECT 1 FROM t WHERE\n" and
#    the text). PostgreSQL's lexer reads the text alike wherever it starts in its normal state, so
#    text that closes a parenthesis it did not open, leaves a string, quote or comment open, or ends
#    a statement cannot parse there, and in the real queries it stays in its parentheses. The
#    probe's plan must read the table and nothing else: a subquery shows as a SubPlan, an InitPlan or
#    a join, ORDER BY / LIMIT / GROUP BY / UNION as nodes a scan does not have;
#  - a query that holds a filter runs through a cursor: PostgreSQL opens one for exactly one
#    statement (42P11 otherwise);
#  - qvl.search and qvl.hybrid_search run read-only (SET transaction_read_only = on, restored when
#    they return, sql/idempotent/004_search.sql): a function the filter calls cannot write.
# All of it runs as the caller (SECURITY INVOKER): a filter reads nothing its caller could not read
# with a SELECT of their own, and row-level security applies.
FILTER_HINT = ("A filter is one condition on the table's own columns, as after WHERE: \"taken_on >= "
               "'2024-01-01' AND tenant_id = 7\". It runs read-only, with your rights and search_path; a "
               "subquery, ORDER BY, LIMIT or a second statement is refused. For values from your users pass a "
               "structured filter: filter => '{\"column\": \"tenant_id\", \"op\": \"=\", \"value\": 7}'::jsonb.")
SQLSTATES_OF_A_BAD_FILTER = ("42", "22", "0A")  # syntax, names and types; bad literals; what WHERE cannot hold
# A plan of "SELECT 1 FROM t WHERE <one condition>" holds these nodes only: scans of the table (of its
# partitions or children under an Append), bitmap parts, parallel workers, a one-time filter.
SCAN_NODES = frozenset({"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Bitmap Index Scan",
                        "BitmapAnd", "BitmapOr", "Tid Scan", "Tid Range Scan", "Result", "Append", "Gather"})
# Nodes a subquery brings (pulled up into a join, or read from a function, VALUES or a CTE).
SUBQUERY_NODES = frozenset({"Nested Loop", "Hash Join", "Merge Join", "Hash", "Materialize", "Memoize",
                            "Values Scan", "Function Scan", "Table Function Scan", "CTE Scan", "WorkTable Scan",
                            "Named Tuplestore Scan", "Subquery Scan", "Foreign Scan", "Custom Scan", "Sample Scan"})
PROBE_SQL = "EXPLAIN (VERBOSE, FORMAT JSON) SELECT 1 FROM {source} WHERE\n{where}"
TABLE_TREE_SQL = """
WITH RECURSIVE tree(oid) AS (
    SELECT v.source FROM qvl.vectorizer v WHERE v.id = $1
    UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid)
SELECT n.nspname AS schema, c.relname AS name
  FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.oid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"""
STANDARD_STRINGS_SQL = "SELECT pg_catalog.current_setting('standard_conforming_strings') AS v"
CURSOR_BATCH = 1000  # rows per fetch of a filtered query's cursor
PROBED = 256  # text filters whose probe passed, kept per backend


class Structured(str):
    """A structured filter's JSON text (the jsonb argument), told apart from SQL text."""


def structured(doc: str | None) -> Structured | None:
    return None if doc is None else Structured(doc)


class Filter:
    """A checked filter. ``parts`` is its SQL, with an int where a parameter of its own goes (an
    index into ``args``); ``where(base)`` numbers them after the query's own ``base`` parameters.
    ``key`` names the SQL and the string syntax it was checked under, not the values: the plans of
    the queries that hold it are kept by it. ``leaves``: (path, column, type, index) of each value
    of a structured filter, to name the one PostgreSQL cannot read."""

    def __init__(self, parts: Sequence[str | int], key: tuple[Any, ...], shown: str, argtypes: Sequence[str] = (),
                 args: Sequence[Any] = (), leaves: Sequence[tuple[str, str, str, int]] = ()) -> None:
        self.parts, self.key, self.shown = tuple(parts), key, shown
        self.argtypes, self.args, self.leaves = list(argtypes), list(args), list(leaves)

    def where(self, base: int) -> str:
        return "".join(p if isinstance(p, str) else f"${base + p + 1}" for p in self.parts)


def refuse_filter(text: str, why: str, sqlstate: str = "42601", hint: str = FILTER_HINT) -> NoReturn:
    """A filter error: "qvl: the filter" and ``why`` ("'s item ..." for a part of a structured one)."""
    sep = "" if why.startswith("'s ") else " "
    plpy.error(f"qvl: the filter{sep}{why}", detail=f"filter: {text[:300]}", hint=hint, sqlstate=sqlstate)


def spi_error_class() -> type[BaseException]:
    return getattr(plpy, "SPIError", Exception)


def bad_filter(cfg: Row, flt: Filter, exc: BaseException) -> NoReturn:
    """Re-raises what preparing or running a query with the filter raised as a filter error, unless
    it is not the filter's fault (permissions, read-only, cancellation, ...: those pass as they are)."""
    state = getattr(exc, "sqlstate", None) or ""
    if state == "42P11":  # the cursor's refusal of several statements
        refuse_filter(flt.shown, "is more than one statement")
    if state == "42501" or not state.startswith(SQLSTATES_OF_A_BAD_FILTER):
        raise exc
    if flt.leaves and state.startswith("22"):
        name_bad_value(flt, exc, state)
    plpy.error(f"qvl: the filter is not a condition on {cfg['source_sql']}: {exc}", detail=f"filter: {flt.shown[:300]}",
               hint=STRUCTURED_HINT if flt.leaves else FILTER_HINT, sqlstate=state)


def filtered_rows(cfg: Row, p: Any, args: Sequence[Any], flt: Filter | None) -> list[Row]:
    """The rows of a prepared query, through a cursor when it holds a filter: PostgreSQL opens a
    cursor for exactly one statement that returns rows."""
    if flt is None:
        return list(plpy.execute(p, list(args)))
    rows: list[Row] = []
    try:
        cur = plpy.cursor(p, list(args))
        while batch := cur.fetch(CURSOR_BATCH):
            rows.extend(batch)
        cur.close()
    except spi_error_class() as exc:
        bad_filter(cfg, flt, exc)
    return rows


def plan_nodes(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from plan_nodes(child)


def plan_features(doc: Any) -> dict[tuple[str, ...], int]:
    """What an EXPLAIN (VERBOSE, FORMAT JSON) plan holds beyond a scan: subqueries, the relations it
    reads, nodes other than SCAN_NODES; each with its count."""
    plan_doc = json.loads(doc) if isinstance(doc, str) else doc
    found: dict[tuple[str, ...], int] = {}
    for node in plan_nodes(plan_doc[0]["Plan"]):
        features: list[tuple[str, ...]] = []
        if node.get("Parent Relationship") in ("InitPlan", "SubPlan") or "Subplan Name" in node:
            features.append(("subquery",))
        if "Relation Name" in node:
            features.append(("reads", node.get("Schema", ""), node["Relation Name"]))
        if node.get("Node Type") not in SCAN_NODES:
            features.append(("node", str(node.get("Node Type"))))
        for f in features:
            found[f] = found.get(f, 0) + 1
    return found


def probe_refusal(features: Mapping[tuple[str, ...], int], baseline: Mapping[tuple[str, ...], int],
                  table: Iterable[tuple[str, str]]) -> str | None:
    """Why a filter's probe plan is more than one condition on the table, or None. ``baseline`` is
    the plan of "WHERE true": what row-level security adds (a policy may hold a subquery) is the
    table's own; the table and its partitions may each be read once."""
    table = list(table)
    allowed = dict(baseline)
    for schema, name in table:
        allowed[("reads", schema, name)] = max(allowed.get(("reads", schema, name), 0), 1)
    extra = [f for f, n in features.items() if n > allowed.get(f, 0)]
    if any(f[0] == "subquery" or (f[0] == "node" and f[1] in SUBQUERY_NODES) for f in extra):
        return "holds a subquery: it is one condition on the table's own columns"
    for f in extra:
        if f[0] == "reads" and (f[1], f[2]) not in table:
            return f"reads {f[1]}.{f[2]}: it is one condition on the table's own columns"
    for f in extra:
        if f[0] == "reads":
            return f"is more than one condition (it reads {f[1]}.{f[2]} more than once)"
    if extra:
        return (f"is more than one condition (its plan holds a {extra[0][-1]} node): ORDER BY, LIMIT, GROUP BY, "
                f"UNION and the like do not belong in a filter")
    return None


def probe_features(cfg: Row, flt: Filter | None) -> dict[tuple[str, ...], int]:
    """The features of the probe's plan for this text filter, or for "true" (None: the baseline)."""
    sql = PROBE_SQL.format(source=cfg["source_sql"], where="true" if flt is None else flt.where(0))
    if flt is None:
        return plan_features(plpy.execute(plan(("probe", cfg["id"]), sql))[0]["QUERY PLAN"])
    try:
        p = plpy.prepare(sql, [])
    except spi_error_class() as exc:
        bad_filter(cfg, flt, exc)
    return plan_features(filtered_rows(cfg, p, [], flt)[0]["QUERY PLAN"])


probed: OrderedDict[Any, bool] = OrderedDict()


def text_filter(cfg: Row, text: str) -> Filter:
    """A text filter that passed its probe (once per backend, table, text and string syntax: the
    lexer reads backslashes by standard_conforming_strings, so the plans are kept by it too)."""
    standard = plpy.execute(plan("standard_strings", STANDARD_STRINGS_SQL))[0]["v"]
    flt = Filter([text], ("sql", text, standard), text)
    if (cfg["id"], flt.key) in probed:
        probed.move_to_end((cfg["id"], flt.key))
        return flt
    features = probe_features(cfg, flt)
    table = [(r["schema"], r["name"]) for r in plpy.execute(plan("table_tree", TABLE_TREE_SQL, ["int4"]), [cfg["id"]])]
    plain = all(f[0] == "reads" and (f[1], f[2]) in table and n == 1 for f, n in features.items())
    # The baseline (what row-level security adds) is needed only when the plan holds more than scans.
    why = None if plain else probe_refusal(features, probe_features(cfg, None), table)
    if why is not None:
        refuse_filter(text, why)
    probed[(cfg["id"], flt.key)] = True
    while len(probed) > PROBED:
        probed.popitem(last=False)
    return flt


# -- the structured filter: {"column", "op", "value"}, {"and": [...]}, {"or": [...]}, {"not": {...}} --
# Values are parameters, cast to the column's own type (so its indexes serve): no value is SQL.
STRUCTURED_OPS = {"=": "=", "<>": "<>", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=",
                  "like": "LIKE", "not like": "NOT LIKE", "ilike": "ILIKE", "not ilike": "NOT ILIKE",
                  "@>": "@>", "<@": "<@", "&&": "&&", "in": "= ANY", "not in": "<> ALL",
                  "is null": "IS NULL", "is not null": "IS NOT NULL"}
STRING_OPS = ("like", "not like", "ilike", "not ilike")
STRUCTURED_DEPTH = 32  # nesting of and/or/not
STRUCTURED_ITEMS = 1000  # items in one filter
STRUCTURED_HINT = ('A structured filter is {"column": name, "op": op, "value": v}, {"and": [...]}, {"or": [...]} or '
                   '{"not": {...}}; op is one of ' + ", ".join(STRUCTURED_OPS) + '. "is null" and "is not null" '
                   'take no value, "in" and "not in" a list; a value is cast to the column\'s type.')
COLUMNS_SQL = """
SELECT a.attname AS name, pg_catalog.format('%I.%I', tn.nspname, t.typname) AS type,
       t.typcategory = 'A' AS is_array, tn.nspname = 'pg_catalog' AND t.typname IN ('json', 'jsonb') AS is_json
  FROM qvl.vectorizer v
  JOIN pg_catalog.pg_attribute a ON a.attrelid = v.source
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
 WHERE v.id = $1 AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum"""


class Number(str):
    """A JSON number as written (exact: no float rounding on its way to a numeric column)."""


def json_text(value: Any) -> str:
    """JSON for a json/jsonb column, numbers as written."""
    if isinstance(value, Number):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(json_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {json_text(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def describe(value: Any) -> str:
    return "an array" if isinstance(value, list) else "an object" if isinstance(value, dict) else json_text(value)


class StructuredCompiler:
    """Compiles a structured filter into SQL over the table's columns, its values as parameters."""

    def __init__(self, cfg: Row, doc: str, columns: Sequence[Row]) -> None:
        self.cfg, self.doc = cfg, doc
        self.columns = {c["name"]: c for c in columns}
        self.args: list[Any] = []
        self.argtypes: list[str] = []
        self.leaves: list[tuple[str, str, str, int]] = []
        self.items = 0

    def refuse(self, path: str, why: str, sqlstate: str = "22023", hint: str = STRUCTURED_HINT) -> NoReturn:
        refuse_filter(self.doc, f"'s item {path} {why}", sqlstate, hint)

    def compile(self, node: Any, path: str = "$", depth: int = 0) -> list[str | int]:
        self.items += 1
        if depth > STRUCTURED_DEPTH or self.items > STRUCTURED_ITEMS:
            refuse_filter(self.doc, f"nests deeper than {STRUCTURED_DEPTH} levels or holds more than "
                                    f"{STRUCTURED_ITEMS} items", "54000")
        if not isinstance(node, dict):
            self.refuse(path, f"is {describe(node)}, not an object")
        for word, joiner, empty in (("and", " AND ", "true"), ("or", " OR ", "false")):
            if word in node:
                self.only(node, path, {word})
                items = node[word]
                if not isinstance(items, list):
                    self.refuse(path, f'("{word}") takes a list of filters, not {describe(items)}')
                if not items:
                    return [empty]
                parts: list[str | int] = ["("]
                for i, item in enumerate(items):
                    parts += ([joiner] if i else []) + self.compile(item, f"{path}.{word}[{i}]", depth + 1)
                return [*parts, ")"]
        if "not" in node:
            self.only(node, path, {"not"})
            return ["(NOT ", *self.compile(node["not"], f"{path}.not", depth + 1), ")"]
        self.only(node, path, {"column", "op", "value"})
        return self.leaf(node, path)

    def only(self, node: dict[str, Any], path: str, keys: set[str]) -> None:
        for key in node:
            if key not in keys:
                self.refuse(path, f'has key "{key}": an item is {{"column", "op", "value"}}, {{"and": [...]}}, '
                                  f'{{"or": [...]}} or {{"not": {{...}}}}')

    def leaf(self, node: dict[str, Any], path: str) -> list[str | int]:
        name, op = node.get("column"), node.get("op")
        if not isinstance(name, str):
            self.refuse(path, 'has no "column" (a column name)')
        if not isinstance(op, str):
            self.refuse(path, 'has no "op" (an operator)')
        column = self.columns.get(name)
        if column is None:
            self.refuse(path, f'names column "{name}", which {self.cfg["source_sql"]} does not have', "42703",
                        "Its columns: " + ", ".join(list(self.columns)[:50]))
        key = op.strip().lower()
        if key not in STRUCTURED_OPS:
            self.refuse(path, f'names operator "{op}", which is not one of ' + ", ".join(STRUCTURED_OPS))
        ref = f"{plpy.quote_ident(self.cfg['source_name'])}.{plpy.quote_ident(name)}"
        value = node.get("value")
        if key in ("is null", "is not null"):
            if value is not None:
                self.refuse(path, f'("{key}") takes no value')
            return [f"({ref} {STRUCTURED_OPS[key]})"]
        if value is None:
            self.refuse(path, f'("{key}") compares with null, which no row equals: use "op": "is null"')
        if key in ("in", "not in"):
            if not isinstance(value, list) or column["is_array"]:
                self.refuse(path, f'("{key}") takes a list of values, on a column that is not an array '
                                  f"(for arrays: \"&&\", \"@>\")")
            values = [self.scalar(v, f"{path}.value[{i}]", column) for i, v in enumerate(value)]
            index = self.bind(path, name, f"{column['type']}[]", "text[]", values)
            return [f"({ref} {STRUCTURED_OPS[key]} (CAST(", index, f" AS {column['type']}[])))"]
        if key in STRING_OPS and (not isinstance(value, str) or isinstance(value, Number)):
            self.refuse(path, f'("{key}") takes a string, not {describe(value)}')
        if column["is_json"]:
            bound: Any = json_text(value)
        elif column["is_array"]:
            if not isinstance(value, list):
                self.refuse(path, f"compares array column \"{name}\" with {describe(value)}: give a list")
            bound = [None if v is None else self.scalar(v, f"{path}.value[{i}]", column) for i, v in enumerate(value)]
        else:
            bound = self.scalar(value, f"{path}.value", column)
        index = self.bind(path, name, column["type"], "text[]" if isinstance(bound, list) else "text", bound)
        return [f"({ref} {STRUCTURED_OPS[key]} CAST(", index, f" AS {column['type']}))"]

    def scalar(self, value: Any, path: str, column: Row) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):  # numbers too (Number)
            return str(value)
        self.refuse(path, f"is {describe(value)}: column \"{column['name']}\" takes one value here")

    def bind(self, path: str, column: str, cast: str, argtype: str, value: Any) -> int:
        self.args.append(value)
        self.argtypes.append(argtype)
        self.leaves.append((path, column, cast, len(self.args) - 1))
        return len(self.args) - 1


def structured_filter(cfg: Row, doc: str) -> Filter:
    spec = json.loads(doc, parse_int=Number, parse_float=Number)
    columns = plpy.execute(plan("columns", COLUMNS_SQL, ["int4"]), [cfg["id"]])
    compiler = StructuredCompiler(cfg, doc, list(columns))
    parts = compiler.compile(spec)
    return Filter(parts, ("json", tuple(parts), tuple(compiler.argtypes)), doc, compiler.argtypes, compiler.args,
                  compiler.leaves)


def name_bad_value(flt: Filter, exc: BaseException, state: str) -> None:
    """Which value of a structured filter PostgreSQL could not read (each cast alone), as an error
    that names it; nothing when each reads alone."""
    for path, column, cast, index in flt.leaves:
        argtype = flt.argtypes[index]
        try:
            plpy.execute(plan(("cast", cast, argtype), f"SELECT CAST($1 AS {cast}) IS NULL AS n", [argtype]),
                         [flt.args[index]])
        except spi_error_class() as bad:
            refuse_filter(flt.shown, f"'s item {path} has a value that is not a {cast} (column \"{column}\"): {bad}",
                          getattr(bad, "sqlstate", None) or state, STRUCTURED_HINT)


def checked_filter(cfg: Row, given: str | None) -> Filter | None:
    """The caller's filter, checked: SQL text or a Structured one; None when there is none."""
    if given is None:
        return None
    if isinstance(given, Structured):
        return structured_filter(cfg, given)
    if not given.strip():
        return None
    return text_filter(cfg, given)


FILTER_PLANS = 64  # prepared statements kept per backend for queries that hold a filter
filter_plans: OrderedDict[Any, Any] = OrderedDict()


def filter_plan(cfg: Row, key: Any, query: str, argtypes: Sequence[str], flt: Filter | None) -> Any:
    """plan() for a query that holds the caller's filter (its parameters after the query's own): the
    most recent FILTER_PLANS are kept (applications vary filters), and a filter PostgreSQL refuses is
    a SQL error that says so."""
    if flt is None:
        return plan(key, query, argtypes)
    key = (key, flt.key)
    p = filter_plans.get(key)
    if p is not None:
        filter_plans.move_to_end(key)
        return p
    try:
        p = plpy.prepare(query, [*argtypes, *flt.argtypes])
    except spi_error_class() as exc:
        bad_filter(cfg, flt, exc)
    filter_plans[key] = p
    while len(filter_plans) > FILTER_PLANS:
        filter_plans.popitem(last=False)
    return p


# -- candidates: the nearest rows that pass the filter ---------------------------------------------
EXACT_ROWS = 2000  # at most this many rows pass the filter (planner's estimate): compare them all
MAX_SCAN_TUPLES = (20000, 5_000_000)  # bounds of hnsw.max_scan_tuples for an iterative scan
SCAN_SETTINGS_SQL = ("SELECT pg_catalog.current_setting('hnsw.ef_search', true) AS ef_search, "
                     "pg_catalog.current_setting('hnsw.iterative_scan', true) AS iterative_scan, "
                     "pg_catalog.current_setting('hnsw.max_scan_tuples', true) AS max_scan_tuples")
SET_CONFIG_SQL = "SELECT pg_catalog.set_config($1, $2, true)"
PGVECTOR_DEFAULTS = {"hnsw.ef_search": "40", "hnsw.iterative_scan": "off", "hnsw.max_scan_tuples": "20000"}


def vector_operator(cfg: Row) -> tuple[str, str]:
    """(query parameter type, distance operator): cosine, or Hamming for bit; qualified names."""
    vs, dims = cfg["vector_schema"], cfg["dimensions"]
    if cfg["storage"] == "bit":
        return f"pg_catalog.bit({dims})", f"OPERATOR({vs}.<~>)"
    return f"{vs}.{cfg['storage']}({dims})", f"OPERATOR({vs}.<=>)"


def key_sql(cfg: Row, rel: str, quote: Quote) -> str:
    """The row's primary key as text (ROW(...)::text when composite)."""
    keys = ", ".join(f"{rel}.{quote(c)}" for c in cfg["pk_columns"])
    return f"{keys}::pg_catalog.text" if len(cfg["pk_columns"]) == 1 else f"ROW({keys})::pg_catalog.text"


def content_columns(cfg: Row) -> list[str]:
    return list(cfg["text_columns"]) + list(cfg["image_columns"]) + list(cfg["video_columns"])


def filter_sql(flt: Filter | None, base: int) -> str:
    """`` AND (filter)``, the filter on lines of its own (its probe showed it cannot close the
    parentheses), its parameters after the query's ``base`` ones."""
    return "" if flt is None else f" AND (\n{flt.where(base)}\n)"


def where_sql(cfg: Row, flt: Filter | None, quote: Quote, base: int = 0) -> str:
    """The table's rows with a vector (and that pass the filter)."""
    dest = f"{quote(cfg['source_name'])}.{quote(cfg['destination'])}"
    return f"{dest} IS NOT NULL" + filter_sql(flt, base)


def candidate_sql(cfg: Row, flt: Filter | None, content: bool, exact: bool, quote: Quote) -> tuple[str, list[str]]:
    """The nearest rows ($1 = query vector, $2 = how many): qvl_pk, qvl_distance (and the content
    columns the reranker scores). The table keeps its own name (no alias), so a filter may qualify
    its columns with it. ``exact`` compares every row that passes the filter (OFFSET 0 keeps them a
    subquery whose order the vector index cannot serve; the filter may still use other indexes)."""
    qtype, op = vector_operator(cfg)
    rel = quote(cfg["source_name"])
    dest = f"{rel}.{quote(cfg['destination'])}"
    cols = [quote(c) for c in content_columns(cfg)] if content else []
    source, where, key = cfg["source_sql"], where_sql(cfg, flt, quote, 2), key_sql(cfg, rel, quote)
    if exact:
        inner = "".join(f", {rel}.{c}" for c in cols)
        outer = "".join(f", qvl_exact.{c}" for c in cols)
        sql = (f"SELECT qvl_exact.qvl_pk, (qvl_exact.qvl_vector {op} $1)::pg_catalog.float4 AS qvl_distance{outer} "
               f"FROM (SELECT {key} AS qvl_pk, {dest} AS qvl_vector{inner} FROM {source} WHERE {where} OFFSET 0) "
               f"AS qvl_exact ORDER BY qvl_exact.qvl_vector {op} $1 LIMIT $2")
    else:
        picked = "".join(f", {rel}.{c}" for c in cols)
        sql = (f"SELECT {key} AS qvl_pk, ({dest} {op} $1)::pg_catalog.float4 AS qvl_distance{picked} "
               f"FROM {source} WHERE {where} ORDER BY {dest} {op} $1 LIMIT $2")
    return sql, [qtype, "int8"]


def estimated_rows(cfg: Row, flt: Filter | None) -> float:
    """The planner's estimate of the rows with a vector that pass the filter (EXPLAIN: nothing runs)."""
    sql = f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {cfg['source_sql']} WHERE {where_sql(cfg, flt, plpy.quote_ident)}"
    p = filter_plan(cfg, ("estimate", cfg["id"]), sql, [], flt)
    doc = filtered_rows(cfg, p, flt.args if flt else [], flt)[0]["QUERY PLAN"]
    return float((json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]["Plan Rows"])


def scan_settings(limit: int, passing: float, total: float) -> dict[str, str]:
    """pgvector settings for an index scan that should find ``limit`` rows among ``passing`` of
    ``total``: HNSW returns at most ef_search rows per pass, and an iterative scan (pgvector 0.8)
    goes on past rows the filter drops, up to max_scan_tuples: enough tuples to meet 4 x ``limit``
    passing rows at the estimated share, within MAX_SCAN_TUPLES."""
    fraction = min(1.0, passing / total) if total > 0 else 1.0
    scan = int(min(MAX_SCAN_TUPLES[1], max(MAX_SCAN_TUPLES[0], 4 * limit / max(fraction, 1e-9))))
    return {"hnsw.ef_search": str(ef_search(None, limit)), "hnsw.iterative_scan": "relaxed_order",
            "hnsw.max_scan_tuples": str(scan)}


def with_settings(wanted: Mapping[str, str], run: Callable[[], Any]) -> Any:
    """``run()`` under these settings (transaction-local), then back to what they were. A setting
    this pgvector lacks (iterative scans before 0.8) is left out."""
    old = plpy.execute(plan("scan_settings", SCAN_SETTINGS_SQL))[0]
    setter = plan("set_config", SET_CONFIG_SQL, ["text", "text"])
    changed: dict[str, str | None] = {}
    for name, value in wanted.items():
        before = old[name.split(".", 1)[1]]
        if before is None and name != "hnsw.ef_search":
            continue
        plpy.execute(setter, [name, value])
        changed[name] = before
    try:
        return run()
    finally:
        for name, before in changed.items():
            plpy.execute(setter, [name, before or PGVECTOR_DEFAULTS[name]])


def ef_search(old: str | None, candidates: int) -> int:
    """hnsw.ef_search for a query of ``candidates`` rows (HNSW returns at most ef_search rows)."""
    return min(1000, max(40, candidates, int(old) if old and old.isdigit() else 0))


def candidate_rows(cfg: Row, qvec: str, flt: Filter | None, limit: int, content: bool) -> list[Row]:
    """The ``limit`` nearest rows that pass the filter, nearest first, read as the caller (their
    privileges and row-level security apply: a policy is a filter too).

    When few rows pass (the planner's estimate, at most max(EXACT_ROWS, 10 x limit)) every one is
    compared: exact. Otherwise the vector index with an iterative scan, which goes on past the rows
    the filter drops; its relaxed order is sorted here. An index scan that comes back short (the
    estimate was wrong, or the scan gave up at max_scan_tuples) is redone exactly, so a filter never
    loses rows that pass it."""
    quote = plpy.quote_ident
    passing = estimated_rows(cfg, flt)
    exact = passing <= max(EXACT_ROWS, 10 * limit)
    args = [qvec, limit, *(flt.args if flt else [])]
    rows: list[Row] = []
    if not exact:
        sql, argtypes = candidate_sql(cfg, flt, content, False, quote)
        p = filter_plan(cfg, ("ann", cfg["id"], cfg["dimensions"], content), sql, argtypes, flt)
        total = estimated_rows(cfg, None) if flt is not None else passing
        rows = with_settings(scan_settings(limit, passing, total), lambda: filtered_rows(cfg, p, args, flt))
        rows.sort(key=lambda r: r["qvl_distance"])
    if exact or len(rows) < limit:
        sql, argtypes = candidate_sql(cfg, flt, content, True, quote)
        p = filter_plan(cfg, ("exact", cfg["id"], cfg["dimensions"], content), sql, argtypes, flt)
        rows = filtered_rows(cfg, p, args, flt)
    return rows


# -- reranking rows by their own columns -----------------------------------------------------------
RERANK_CHUNK = 500  # documents per /v1/rerank call (the service takes up to QVL_MAX_RERANK_DOCUMENTS)


def rerank_items(query_item: Item, docs: Sequence[Item], top_k: int | None, what: What) -> list[tuple[int, float]]:
    """(index into docs, score) best first. Scores are per pair, so a long list goes in several calls
    and the rankings merge. Documents the service cannot read (a broken image) are left out."""
    ranked: list[tuple[int, float]] = []
    for start in range(0, len(docs), RERANK_CHUNK):
        payload: dict[str, Any] = {"query": query_item, "documents": list(docs[start:start + RERANK_CHUNK]),
                                   "allow_partial": True}
        if top_k is not None:
            payload["top_k"] = top_k
        resp = call("rerank", payload, lambda i, s=start: what(None if i is None else s + i))
        ranked += [(start + r["index"], r["score"]) for r in resp["ranking"]]
    ranked.sort(key=lambda r: -r[1])
    return ranked if top_k is None else ranked[:top_k]


def rerank_candidates(cfg: Row, query_item: Item, rows: Sequence[Row], top_k: int | None) -> list[tuple[int, float]]:
    """The reranker over each row's own text, images and video; (index into rows, score) best first."""
    docs = [row_item(cfg, r) or {} for r in rows]

    def what(i: int | None) -> str:
        return "the query" if i is None or i >= len(rows) else f"row {rows[i]['qvl_pk']} of {cfg['source_sql']}"

    try:
        return rerank_items(query_item, docs, top_k, what)
    except Failure as f:
        f.raise_sql()


# -- qvl.search ------------------------------------------------------------------------------------
def check_k(k: int | None) -> int:
    """k; NULL is refused: qvl.search('t', q, NULL::int) means k => NULL, not key_type => NULL::int."""
    if k is None:
        plpy.error("qvl: k is NULL", sqlstate="22004",
                   hint="k => 10 returns the 10 best rows. For keys in the table's own type name that argument: "
                        "key_type => NULL::int.")
    return k


def check_offset(offset: int | None) -> int:
    if offset is None:
        return 0
    if offset < 0:
        plpy.error(f"qvl: offset must be 0 or more, got {offset}", hint="offset => 20 skips the 20 best rows.",
                   sqlstate="22023")
    return offset


def search_rows(name: str, query_item: Item | None, k: int | None, candidates: int | None, rerank: bool,
                filter: str | None = None, offset: int | None = 0) -> list[tuple[str, float, float | None]]:
    """ANN over the vectorizer's column (with the query instruction) among the rows that pass the
    filter, then the reranker over the candidates' own columns; rows offset+1 .. offset+k of that
    order. Runs as the caller: their privileges, row-level security and search_path apply."""
    cfg = vectorizer_by_name(name)
    k, skip = check_k(k), check_offset(offset)
    flt = checked_filter(cfg, filter)
    if query_item is None or k < 1:
        return []
    wanted = skip + k
    limit = max(candidates or 0, wanted)
    try:
        qvec = query_vector(cfg, query_item, cfg["storage"], lambda i: "the query")
    except Failure as f:
        f.raise_sql()
    rows = candidate_rows(cfg, qvec, flt, limit, bool(rerank))
    if not rerank or not rows:
        return [(r["qvl_pk"], r["qvl_distance"], None) for r in rows][skip:wanted]
    ranked = rerank_candidates(cfg, query_item, rows, wanted)
    return [(rows[i]["qvl_pk"], rows[i]["qvl_distance"], score) for i, score in ranked][skip:wanted]


# -- qvl.rerank_rows -------------------------------------------------------------------------------
# The key type, checked against the table's key, by its qualified name (the same type whatever the
# search_path), and its fields when it is composite.
KEY_TYPE_SQL = """
SELECT pg_catalog.format('%I.%I', n.nspname, t.typname) AS key_type,
       (SELECT pg_catalog.array_agg(a.attname ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) AS fields
  FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
 WHERE t.oid = qvl._check_key_type($1, $2)"""


def rows_by_key_sql(cfg: Row, key_type: str, fields: Sequence[str] | None, content: bool,
                    quote: Quote) -> str:
    """The rows whose keys are in $1 (their text forms, of type ``key_type``), with each key's
    1-based position. Equality is the key type's own (unqualified: extension types keep theirs)."""
    rel = quote(cfg["source_name"])
    key = "qvl_k.txt::" + key_type
    parts = [f"({key}).{quote(f)}" for f in fields] if fields else [key]
    on = " AND ".join(f"{rel}.{quote(c)} = {part}" for c, part in zip(cfg["pk_columns"], parts, strict=True))
    cols = "".join(f", {rel}.{quote(c)}" for c in content_columns(cfg)) if content else ""
    return (f"SELECT qvl_k.pos AS qvl_pos, {key_sql(cfg, rel, quote)} AS qvl_pk{cols} "
            f"FROM pg_catalog.unnest($1::pg_catalog.text[]) WITH ORDINALITY AS qvl_k(txt, pos) "
            f"JOIN {cfg['source_sql']} ON {on}")


def rerank_rows_sql(name: str, query_item: Item | None, keys: Sequence[Any] | None, key_type: str,
                    top_k: int | None) -> list[tuple[int, float]]:
    """qvl.rerank_rows: (1-based position in keys, score) best first, for the keys whose rows the
    caller can read (each row once). Keys come as text, with the type they have in SQL."""
    cfg = vectorizer_by_name(name)
    if keys and any(isinstance(k, list) for k in keys):
        plpy.error("qvl: keys must be a one-dimensional array", sqlstate="2202E",
                   hint="Pass ARRAY(SELECT id FROM ...) or ARRAY[1, 2, 3].")
    if query_item is None or not keys or (top_k is not None and top_k < 1):
        return []
    found = plpy.execute(plan("key_type", KEY_TYPE_SQL, ["text", "regtype"]), [name, key_type])[0]
    if found["fields"] is not None and len(found["fields"]) != len(cfg["pk_columns"]):
        plpy.error(f"qvl: {found['key_type']} has {len(found['fields'])} fields, and the key of "
                   f"{cfg['source_sql']} has {len(cfg['pk_columns'])} columns", sqlstate="42804")
    sql = rows_by_key_sql(cfg, found["key_type"], found["fields"], True, plpy.quote_ident)
    rows = plpy.execute(plan(("rows_by_key", cfg["id"], found["key_type"]), sql, ["text[]"]), [list(keys)])
    first: dict[str, Row] = {}
    for r in rows:  # a key given twice is one row, at its first position
        if r["qvl_pk"] not in first or r["qvl_pos"] < first[r["qvl_pk"]]["qvl_pos"]:
            first[r["qvl_pk"]] = r
    unique = sorted(first.values(), key=lambda r: r["qvl_pos"])
    if not unique:
        return []
    return [(unique[i]["qvl_pos"], score) for i, score in rerank_candidates(cfg, query_item, unique, top_k)]


# -- qvl.hybrid_search -------------------------------------------------------------------------------
RRF_K = 60  # reciprocal rank fusion: a row's share of a list is weight / (RRF_K + its rank)
FULLTEXT_SQL = ("SELECT v.fulltext, qvl._fulltext_document(v.id) AS document FROM qvl.vectorizer v "
                "WHERE v.id = $1")
TSQUERY_SQL = ("SELECT q::pg_catalog.text AS q, pg_catalog.numnode(q) AS nodes "
               "FROM pg_catalog.websearch_to_tsquery($1::pg_catalog.regconfig, $2) AS q")


def check_weights(weights: Sequence[float | None] | None) -> tuple[float, float]:
    """(vector weight, full-text weight)."""
    if weights is None:
        return 1.0, 1.0
    values = list(weights)
    if len(values) != 2 or any(w is None or not math.isfinite(w) or w < 0 for w in values) or not any(values):
        plpy.error(f"qvl: weights must be two numbers >= 0, not both 0 (vector, full text), got {values}",
                   hint="weights => ARRAY[1, 1] weighs both alike; ARRAY[1, 0] is vector search alone.",
                   sqlstate="22023")
    return float(values[0]), float(values[1])


def fulltext_sql(cfg: Row, document: str, flt: Filter | None, content: bool, quote: Quote) -> str:
    """The rows whose document matches the tsquery $1, best ts_rank_cd first, at most $2. The
    document is the expression of the vectorizer's GIN index, so the index answers the match."""
    rel = quote(cfg["source_name"])
    cols = "".join(f", {rel}.{quote(c)}" for c in content_columns(cfg)) if content else ""
    order = ", ".join(f"{rel}.{quote(c)}" for c in cfg["pk_columns"])
    where = f"{document} OPERATOR(pg_catalog.@@) $1" + filter_sql(flt, 2)
    return (f"SELECT {key_sql(cfg, rel, quote)} AS qvl_pk, pg_catalog.ts_rank_cd({document}, $1) AS qvl_rank{cols} "
            f"FROM {cfg['source_sql']} WHERE {where} ORDER BY qvl_rank DESC, {order} LIMIT $2")


def fused(lists: Sequence[tuple[float, Sequence[Row]]]) -> list[tuple[Row, float, list[int | None]]]:
    """Reciprocal rank fusion: (row, weighted sum of 1 / (RRF_K + rank), rank in each list) best first."""
    by_pk: dict[str, tuple[Row, list[float], list[int | None]]] = {}
    for n, (weight, rows) in enumerate(lists):
        for rank, row in enumerate(rows, 1):
            entry = by_pk.setdefault(row["qvl_pk"], (row, [0.0], [None] * len(lists)))
            entry[1][0] += weight / (RRF_K + rank)
            entry[2][n] = rank
    out = [(row, total[0], ranks) for row, total, ranks in by_pk.values()]
    out.sort(key=lambda e: (-e[1], min(r for r in e[2] if r is not None)))
    return out


def hybrid_rows(name: str, query: str | None, k: int | None, filter: str | None,
                weights: Sequence[float | None] | None, rerank: bool, candidates: int | None,
                offset: int | None) -> list[tuple[str, float | None, float, int | None, int | None]]:
    """qvl.hybrid_search: the vector list and the full-text list (each ``candidates`` long, both
    under the filter), fused by reciprocal rank, then the reranker over the fused best; rows
    offset+1 .. offset+k of that order: (pk, score, rrf, vector_rank, text_rank)."""
    cfg = vectorizer_by_name(name)
    k, skip = check_k(k), check_offset(offset)
    w_vector, w_text = check_weights(weights)
    flt = checked_filter(cfg, filter)
    ft = plpy.execute(plan("fulltext", FULLTEXT_SQL, ["int4"]), [cfg["id"]])[0]
    if ft["fulltext"] is None:
        plpy.error(f"qvl: vectorizer {name!r} has no full-text index", sqlstate="55000",
                   hint=f"Give it one: SELECT qvl.set_fulltext({name!r}, 'english'); (or create the vectorizer "
                        f"with fulltext => 'english').")
    if query is None or k < 1:
        return []
    wanted = skip + k
    limit = max(candidates or 0, wanted)
    lists: list[tuple[float, list[Row]]] = []
    if w_vector > 0:
        try:
            qvec = query_vector(cfg, {"text": [query]}, cfg["storage"], lambda i: "the query")
        except Failure as f:
            f.raise_sql()
        lists.append((w_vector, candidate_rows(cfg, qvec, flt, limit, bool(rerank))))
    else:
        lists.append((0.0, []))
    matches: list[Row] = []
    if w_text > 0:
        tsq = plpy.execute(plan("tsquery", TSQUERY_SQL, ["text", "text"]), [ft["fulltext"], query])[0]
        if tsq["nodes"]:  # a query of stop words only matches nothing
            sql = fulltext_sql(cfg, ft["document"], flt, bool(rerank), plpy.quote_ident)
            key = ("fulltext", cfg["id"], ft["document"], bool(rerank))
            p = filter_plan(cfg, key, sql, ["pg_catalog.tsquery", "int8"], flt)
            matches = filtered_rows(cfg, p, [tsq["q"], limit, *(flt.args if flt else [])], flt)
    lists.append((w_text, matches))
    best = fused(lists)
    if not rerank or not best:
        return [(row["qvl_pk"], None, rrf, ranks[0], ranks[1]) for row, rrf, ranks in best][skip:wanted]
    top = best[:limit]
    ranked = rerank_candidates(cfg, {"text": [query]}, [row for row, _, _ in top], wanted)
    return [(top[i][0]["qvl_pk"], score, top[i][1], top[i][2][0], top[i][2][1]) for i, score in ranked][skip:wanted]
