"""HTTP to the service: runs inside ``qvl._call``, i.e. as the owner, the only reader of
``qvl.service`` (address, token, CA file). Keep-alive connections per backend, replicas asked in
turn, busy ones passed over, one deadline for the whole call."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import spi
from .addresses import service_urls, target
from .errors import error_body
from .spi import interrupts, plan
from .wire import Clock, Connection, tls_context

ROUTES = {"embed": ("POST", "/v1/embed"), "rerank": ("POST", "/v1/rerank"), "info": ("GET", "/v1/info")}
RETRY_AFTER_S = (0.05, 5.0)  # bounds of a 429/503 Retry-After wait

# Several replicas: a connect that takes longer than this passes to the next one (a host that is
# gone may never answer, and must not eat the whole call's deadline); one that could not be
# reached is asked last for AVOID_S seconds.
CONNECT_S = 3.0
AVOID_S = 5.0

# Per backend.
conns: dict[tuple[Any, ...], Any] = {}  # keep-alive Connections by (scheme, host, port, CA file)
turn = 0  # calls this backend has sent to a replica list (each starts at the next replica)
avoid: dict[str, float] = {}  # replica URL -> until when it is asked last (unreachable or busy)


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


# A vectorizer's own service (version 14, blue/green: qvl.switch_vectorizer sets it; NULL: qvl.service's),
# chosen by the model the request pins: a query that read the vectorizer just before a switch committed
# pins the old model, and goes to the old model's service (kept in qvl.shadow until its column is dropped),
# never to the new one, which would refuse it.
VECTORIZER_URL_SQL = """
SELECT CASE WHEN $2::pg_catalog.text IS NULL OR v.model_fingerprint OPERATOR(pg_catalog.=) $2
            THEN v.service_url
            ELSE (SELECT s.service_url FROM qvl.shadow s WHERE s.vectorizer_id OPERATOR(pg_catalog.=) v.id
                     AND s.model_fingerprint OPERATOR(pg_catalog.=) $2) END AS url
  FROM qvl.vectorizer v WHERE v.id OPERATOR(pg_catalog.=) $1"""


def pinned_model(request: str) -> str | None:
    """The fingerprint an embed request pins (None: none, or not an embed request)."""
    try:
        got = json.loads(request).get("fingerprint") if request else None
    except (ValueError, AttributeError):
        return None
    return got if isinstance(got, str) else None


def send(endpoint: str, request: str, vectorizer_id: int | None = None, url: str | None = None) -> tuple[int, str]:
    """(status, body) of one call to the configured service; status 0 when unreachable. Raises only
    when the statement is cancelled (pg_cancel_backend, statement_timeout) while it waits.
    ``vectorizer_id``: to that vectorizer's own service where it has one (qvl._call_for); ``url``: to
    that address (qvl._service_info_at); either way with qvl.service's token, CA file and timeout."""
    route = ROUTES.get(endpoint)
    if route is None:
        return 400, json.dumps({"error": f"unknown endpoint {endpoint!r}", "code": "INVALID_ARGUMENT"})
    rows = spi.plpy.execute(plan("service", STATEMENT_LEFT_SQL))
    if rows.nrows() == 0:
        return 0, error_body("no service address is configured", "UNAVAILABLE")
    svc = rows[0]
    if vectorizer_id is not None:
        own = spi.plpy.execute(plan("vectorizer_url", VECTORIZER_URL_SQL, ["int4", "text"]),
                               [vectorizer_id, pinned_model(request)])
        url = own[0]["url"] if own.nrows() else None
    seconds, limit = budget(float(svc["timeout_s"]), svc.get("statement_timeout_s"), svc.get("statement_elapsed_s"))
    return http_send(url or svc["url"], svc["token"], seconds, route, request, ca_file=svc.get("ca_file"),
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
