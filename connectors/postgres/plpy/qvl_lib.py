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
BUSY_HINT = ("The service is busy or still starting; retry shortly (more replicas or a larger QVL_QUEUE_MAX_ITEMS "
             "help under load).")
TOKEN_HINT = "The installing role sets the token: SELECT qvl.set_service(url, token);"
HINTS = {
    0: "Start the service (qvl serve) or, as the installing role, point qvl at it: "
       "SELECT qvl.set_service('http://host:8080'); (SELECT url FROM qvl.service shows where it points now.)",
    401: TOKEN_HINT,
    403: TOKEN_HINT,
    413: "Send a smaller image or a shorter video, or raise the service limits (QVL_MAX_MEDIA_BYTES, "
         "QVL_MAX_REQUEST_BYTES).",
    429: BUSY_HINT,
    503: BUSY_HINT,
    504: "Send smaller inputs, or allow longer: SET statement_timeout (when it is what ran out), or as the "
         "installing role SELECT qvl.set_service(url, token, timeout_s => 120);",
    500: "The model failed on this input; the service log has the details.",
}
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
        plpy.error(self.message, detail=self.detail, hint=self.hint, sqlstate=self.sqlstate)


def plan(key: Any, query: str, argtypes: Sequence[str] = ()) -> Any:
    """The prepared statement of ``query``, prepared once per backend under ``key``."""
    p = plans.get(key)
    if p is None:
        p = plans[key] = plpy.prepare(query, list(argtypes))
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
    """The order to ask the replicas in: starting at one chosen by this backend's process id (the
    backends of a database spread over the replicas), those that failed lately last."""
    start = os.getpid() % len(urls)
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
    subject = what(item if isinstance(item, int) else None)
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
    hint = HINTS.get(status) or (MEDIA_HINT if status in (400, 422) else HINTS[500])
    return Failure(message, detail=f"{endpoint} {status or 'unreachable'}: {error}", hint=hint,
                   sqlstate=SQLSTATE.get(status, "XX000"), status=status)


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
    """The POST /v1/rerank body, or None when there is nothing to rank (no query, no documents, top_k < 1)."""
    if query_item is None or not doc_items:
        return None
    payload: dict[str, Any] = {"query": query_item, "documents": [d or {} for d in doc_items]}
    if instruction is not None:
        payload["instruction"] = instruction
    if top_k is not None:
        if top_k < 1:
            return None
        payload["top_k"] = top_k
    return payload


def rerank_what(i: int | None) -> str:
    return "the query" if i is None else f"documents[{i + 1}]"


def rerank_sql(query_item: Item | None, doc_items: Sequence[Item | None], instruction: str | None,
               top_k: int | None) -> list[tuple[int, float]]:
    """qvl.rerank: (1-based index, score) best first."""
    payload = rerank_request(query_item, doc_items, instruction, top_k)
    if payload is None:
        return []
    try:
        resp = call("rerank", payload, rerank_what)
    except Failure as f:
        f.raise_sql()
    return [(r["index"] + 1, r["score"]) for r in resp["ranking"]]


# -- vectorizers ---------------------------------------------------------------------------------
VECTORIZER_SQL = """
SELECT v.id, v.name, v.pk_columns, v.pk_types, v.text_columns, v.image_columns, v.video_columns,
       v.destination, v.dimensions, v.storage, v.instruction, v.query_instruction, v.mode, v.on_error,
       format('%%I.%%I', n.nspname, c.relname) AS source_sql,
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


# -- two-stage search ----------------------------------------------------------------------------
def search_sql(cfg: Row, rerank: bool, quote: Quote) -> tuple[str, list[str]]:
    """The candidate query ($1 = query vector, $2 = how many) and its argument types.

    Every name is qualified (the operator in pgvector's schema); with ``rerank`` it also reads the
    content columns the reranker scores.
    """
    storage, vs, dims = cfg["storage"], cfg["vector_schema"], cfg["dimensions"]
    dest = "s." + quote(cfg["destination"])
    if storage == "bit":
        qtype, op = f"bit({dims})", f"OPERATOR({vs}.<~>)"
    else:
        qtype, op = f"{vs}.{storage}({dims})", f"OPERATOR({vs}.<=>)"
    pk = cfg["pk_columns"]
    keys = ", ".join("s." + quote(c) for c in pk)
    pk_sql = f"{keys}::text" if len(pk) == 1 else f"ROW({keys})::text"
    content = list(cfg["text_columns"]) + list(cfg["image_columns"]) + list(cfg["video_columns"])
    cols = "".join(f", s.{quote(c)}" for c in content) if rerank else ""
    sql = (f"SELECT {pk_sql} AS qvl_pk, ({dest} {op} $1)::real AS qvl_distance{cols} FROM {cfg['source_sql']} s "
           f"WHERE {dest} IS NOT NULL ORDER BY {dest} {op} $1 LIMIT $2")
    return sql, [qtype, "int8"]


def ef_search(old: str | None, candidates: int) -> int:
    """hnsw.ef_search for a query of ``candidates`` rows (HNSW returns at most ef_search rows)."""
    return min(1000, max(40, candidates, int(old) if old and old.isdigit() else 0))


def search_rows(name: str, query_item: Item | None, k: int | None, candidates: int | None,
                rerank: bool) -> list[tuple[str, float, float | None]]:
    """ANN over the vectorizer's column with the query instruction, then the reranker over the
    candidates' own columns. Runs as the caller: their privileges (and row security) apply."""
    cfg = vectorizer_by_name(name)
    if query_item is None or k is None or k < 1:
        return []
    candidates = max(candidates or 0, k)
    try:
        qvec = embed_text(query_item, cfg["query_instruction"] or query_instruction(), cfg["dimensions"],
                          cfg["storage"], lambda i: "the query")
    except Failure as f:
        f.raise_sql()
    sql, argtypes = search_sql(cfg, rerank, plpy.quote_ident)
    p = plan(("search", cfg["id"], cfg["dimensions"], bool(rerank)), sql, argtypes)
    # HNSW returns at most ef_search rows: widen it to the candidate count for this query only.
    old = plpy.execute("SELECT pg_catalog.current_setting('hnsw.ef_search', true) AS v")[0]["v"]
    setter = plan("set_ef", "SELECT pg_catalog.set_config('hnsw.ef_search', $1, true)", ["text"])
    plpy.execute(setter, [str(ef_search(old, candidates))])
    try:
        rows = plpy.execute(p, [qvec, candidates])
    finally:
        plpy.execute(setter, [old or "40"])
    if not rerank or rows.nrows() == 0:
        return [(r["qvl_pk"], r["qvl_distance"], None) for r in rows][:k]
    docs = [row_item(cfg, r) or {} for r in rows]
    payload = {"query": query_item, "documents": docs, "top_k": k, "allow_partial": True}
    try:
        resp = call("rerank", payload,
                    lambda i: "the query" if i is None or i >= rows.nrows() else f"row {rows[i]['qvl_pk']}")
    except Failure as f:
        f.raise_sql()
    return [(rows[r["index"]]["qvl_pk"], rows[r["index"]]["qvl_distance"], r["score"]) for r in resp["ranking"]]
