"""``qvl worker``: embeds queued rows through the gRPC service and writes the vectors back.

Each lane (``--concurrency``) loops: claim a batch in one autocommit statement (``FOR UPDATE
SKIP LOCKED`` plus a lease, so a killed worker's rows come back by themselves) → embed it over
EmbedStream with no transaction open → one short transaction stores the vectors where the row
still holds what was embedded (content hash), moves refused rows to the failed table, and gives
everything else back. A service outage only delays work: it stays queued while lanes back off.

``--service`` is a gRPC target: one replica, or several (``ipv4:a:50051,b:50051``,
``dns:///name:50051``) that the client balances with round_robin and health checking; a stream
whose replica dies is carried on by another (``connectors.client``), and what never came back is
given back to the queue. The worker runs against the primary only: on a hot standby it says so
and waits for a promotion.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import random
import re
import signal
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from connectors.client import NOT_NOW, Client, ItemFailure, QvlClientError, TransientError, Unauthenticated, not_ready
from connectors.postgres.row_encoding import item_size, row_item, vector_literal
from connectors.postgres.vectorizers import Vectorizer, load_vectorizers
from qvl_proto import vectorizer_pb2 as pb

log = logging.getLogger("qvl.worker")

# Codes that say "not now" rather than "never" (a probe that gets one waits and asks again).
TRANSIENT_CODES = NOT_NOW  # the client's retry table (connectors.client.errors)
# Bad input: the row fails at once (unless the probe shows the whole service refusing everything).
PERMANENT_CODES = {"INVALID_ARGUMENT", "OUT_OF_RANGE"}
# connectors.client.not_ready: the service's typed reason for "your items never reached the model"
# (it was starting, draining or restarting when they came): the service's state, never the row's
# fault, so no attempt is counted.
CONFIG_REFRESH_S = 30.0
DEFAULT_MAX_ITEM_BYTES = 128 * 1024 * 1024 - 4096
PROBE_TEXT = "qvl worker probe"
NON_FINITE = "the service returned a vector that is not finite (NaN or infinity)"
ITEM_PREFIX = re.compile(r"^item \d+")
STREAM_RETRIES = 2  # a lane's stream is carried on to another replica this many times in a row
STANDBY_RECHECK_S = 10.0
PRIMARY_ONLY = ("the worker claims rows and writes vectors, so it runs against the primary only. Point --dsn at "
                "the primary (or list every node with target_session_attrs=read-write)")
STANDBY = f"the database is a hot standby (read-only): {PRIMARY_ONLY}"
READ_ONLY = f"the database refuses writes (a hot standby now, or read-only): {PRIMARY_ONLY}"
# Writing a vector runs the table owner's code (triggers, CHECK constraints, index expressions) with the
# worker's rights: as a superuser (or a role that may become one) any owner of a vectorized table could
# become one. The login, the role it acts as and the role it authenticated as are each checked.
SUPERUSER_SQL = """
SELECT r.rolname FROM pg_catalog.pg_roles r
 WHERE (r.rolname IN (session_user, current_user)
        OR r.oid = (SELECT a.usesysid FROM pg_catalog.pg_stat_activity a WHERE a.pid = pg_catalog.pg_backend_pid()))
   AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles s WHERE s.rolsuper AND pg_catalog.pg_has_role(r.oid, s.oid, 'MEMBER'))
 LIMIT 1"""
SUPERUSER = ("the worker refuses to run as {role}, a superuser or a member of one: writing a vector runs the table "
             "owner's triggers, constraints and index expressions with the worker's rights. Run it as a login "
             "granted qvl_worker: CREATE ROLE qvl_worker_login LOGIN; GRANT qvl_worker TO qvl_worker_login; "
             "(docs/postgres.md, \"The worker's role\")")


@dataclass
class WorkerSettings:
    dsn: str
    service: str  # a gRPC target: HOST:PORT, ipv4:H1:P1,H2:P2, dns:///NAME:PORT
    token: str | None = None
    batch: int = 64
    concurrency: int = 2
    lease_s: float = 300.0  # a claimed row returns to the queue this long after a worker died on it
    poll_s: float = 5.0  # fallback when notifications are missed (e.g. rows applied by replication)
    max_attempts: int = 5  # tries for a row the model fails on (bad input fails at once; outages never count)
    retry_delay_s: float = 5.0  # a failed row's first wait; doubled for each further attempt
    retry_delay_cap_s: float = 600.0
    probe_wait_s: float = 300.0  # how long a probe waits for a restarting service before calling it down
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    rpc_timeout_s: float = 600.0
    stall_s: float = 120.0  # no result for this long: the stream is abandoned and its rows given back
    write_lock_wait_s: float = 5.0  # a batch's write waits this long for rows other transactions hold locked
    log_every_s: float = 10.0
    heartbeat_s: float = 15.0  # qvl.worker_status.last_seen; a worker silent for 3 beats shows as stale
    forget_workers_s: float = 86400.0  # rows of workers not seen for this long are deleted (by live workers)
    prune_every_s: float = 300.0  # qvl.prune_failed: failures of deleted rows (and past the retention); 0: never
    vectorizers: tuple[str, ...] = ()  # names; empty = all
    exit_when_idle: bool = False
    application_name: str = ""  # default qvl-worker-<pid> (pg_stat_activity shows who is who)
    tls: bool = False  # gRPC over TLS, verified against the system's CAs (or ca_file)
    ca_file: str | None = None  # PEM CA bundle that signed the service's certificate (implies TLS)
    alive_file: str | None = None  # touched while the worker's loops turn (a liveness probe reads its age)


class ServiceDown(Exception):
    """The service cannot take work now (down, starting, misconfigured, failing every item, or
    answering malformed results): the rows go back uncounted and the lane waits for it."""


class Malformed(Exception):
    """A result the service should never send (a vector of the wrong size)."""


class Blocked(Exception):
    """The worker's role may not do what one vectorizer needs (see, read or write its rows): its rows
    stay queued, the other vectorizers go on, and the worker says why until it may."""

    def __init__(self, exc: psycopg.Error) -> None:
        message = (exc.diag.message_primary if isinstance(exc, psycopg.errors.DatabaseError) else None) or str(exc)
        hint = exc.diag.message_hint if isinstance(exc, psycopg.errors.DatabaseError) else None
        if "row-level security" in message:
            advice = (hint or "") + (" " if hint else "") + (
                "The worker must see every row: give its login BYPASSRLS (ALTER ROLE ... BYPASSRLS), or run it "
                "as the table's owner (without FORCE ROW LEVEL SECURITY).")
        else:
            advice = "Grant the worker's login qvl_worker (docs/postgres.md, \"The worker's role\")."
        super().__init__(f"{message.strip()}; its rows stay queued. {advice}")


@dataclass
class Claimed:
    key: tuple[Any, ...]
    attempts: int
    present: bool
    content_hash: str | None
    item: pb.Item | None


@dataclass
class Counters:
    embedded: int = 0
    failed: int = 0
    retried: int = 0
    released: int = 0
    batches: int = 0
    resent: int = 0  # streams that finished after being sent again (another replica, or the same one back)


@dataclass
class Outcome:
    """What one batch came to (returned for tests and logs)."""

    written: int = 0
    failed: int = 0
    retried: int = 0
    released: int = 0
    gone: int = 0
    stale: int = 0
    busy: set[tuple[Any, ...]] = field(default_factory=set)  # keys left for later: another transaction held them


class Backoff:
    """Exponential with full jitter (spreads many workers' retries), reset on success."""

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next(self) -> float:
        delay = random.uniform(self.base / 2, min(self.cap, self.base * 2 ** self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return delay

    def reset(self) -> None:
        self.attempt = 0


class _Watchdog:
    """Closes the client's channel (cancelling its call) when a stream makes no progress.

    A gRPC stream opened just as the service went away was seen to wait forever; no lane may.
    """

    def __init__(self, client: Client, stall_s: float, reachable: Any = None, check_s: float = 5.0) -> None:
        self.client, self.stall_s = client, stall_s
        self.reachable = reachable  # () -> bool: asks the service on a fresh channel
        self.check_s = check_s
        self.last = time.monotonic()
        self.checked = self.last
        self.fired = False
        self.unreachable = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="qvl-watchdog", daemon=True)
        self._thread.start()

    def progress(self) -> None:
        self.last = time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.stall_s / 4)):
            now = time.monotonic()
            quiet = now - self.last
            if quiet > self.stall_s:
                self.fired = True
                log.warning("the service stream made no progress; abandoning it",
                            extra={"stall_s": self.stall_s})
                self.client.close()
                return
            # A stream opened as the service went away can wait for nothing: when the service does
            # not answer on a new connection either, give the rows back now, not after stall_s.
            if self.reachable is not None and quiet > self.check_s and now - self.checked > self.check_s:
                self.checked = now
                if not self.reachable() and not self._done.is_set():
                    self.fired = self.unreachable = True
                    log.warning("the service went away while a stream was waiting; abandoning it")
                    self.client.close()
                    return


def _keys(rows: Sequence[Claimed]) -> list[tuple[Any, ...]]:
    return [r.key for r in rows]


# SQLSTATEs of a server going away (admin, crash shutdown; cannot connect now): the connection's
# fault, not one vectorizer's. (57014, a statement or lock timeout, is the vectorizer's.)
SHUTDOWN_STATES = {"57P01", "57P02", "57P03"}


def _connection_lost(conn: psycopg.Connection[Any], exc: psycopg.Error) -> bool:
    state = exc.sqlstate or ""
    return conn.broken or conn.closed or state.startswith("08") or state in SHUTDOWN_STATES


@dataclass
class Hold:
    """A vectorizer whose claims fail (the worker's role may not read its table, a definition the
    table no longer matches): skipped by every lane until ``until``, on its own backoff, so the
    other vectorizers go on. A new definition of it is tried at once."""

    definition: Vectorizer
    backoff: Backoff
    until: float = 0.0
    failures: int = 0


@dataclass
class Lane:
    """One lane's connections; ``me`` marks the rows it claims (queue.claimed_by)."""

    me: str
    conn: psycopg.Connection[Any] | None = None
    client: Client | None = None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.s = settings
        self.stopping = threading.Event()
        self.ident = f"{socket.gethostname()}:{os.getpid()}"
        self._wakeups = [threading.Event() for _ in range(max(1, settings.concurrency))]
        self._idle = [False] * len(self._wakeups)
        self._configs: list[Vectorizer] = []
        self._configs_at = 0.0
        self._configs_stale = True
        self._config_lock = threading.Lock()
        self._counters: dict[str, Counters] = defaultdict(Counters)
        self._counter_lock = threading.Lock()
        self.max_item_bytes = DEFAULT_MAX_ITEM_BYTES
        self._paused: str | None = None  # why the service cannot embed now (None: it can)
        self._blocked: dict[str, str] = {}  # vectorizer name -> why its rows stay queued (Blocked)
        self._status_written: tuple[str, str | None] | None = None
        self._status_lock = threading.Lock()
        self._holds: dict[int, Hold] = {}  # by vectorizer id
        self._hold_lock = threading.Lock()
        self._beats = True  # False on a database older than schema version 9 (no heartbeat column)
        self._alive_ok = True  # the alive file's last touch worked (a failure is said once)
        self._prunes = settings.prune_every_s > 0  # False where qvl.prune_failed is missing or not ours to call

    # -- lifecycle -------------------------------------------------------------------------
    def stop(self) -> None:
        """Finish the batches in hand, then return from run()."""
        self.stopping.set()
        self._wake_all()

    def run(self) -> None:
        self._check_install()
        self._learn_limits()
        lanes = [threading.Thread(target=self._lane, args=(n,), name=f"qvl-lane-{n}", daemon=True)
                 for n in range(len(self._wakeups))]
        listener = threading.Thread(target=self._listen, name="qvl-listen", daemon=True)
        for t in [*lanes, listener]:
            t.start()
        log.info("worker started", extra={"worker": self.ident, "service": self.s.service,
                                          "concurrency": len(lanes), "batch": self.s.batch})
        try:
            self._monitor()
        finally:
            self.stop()
            for t in lanes:
                t.join()
            listener.join(timeout=5)
            self._report(final=True)
            self._forget_status()
            log.info("worker stopped", extra={"worker": self.ident})

    def counters(self) -> dict[str, Counters]:
        with self._counter_lock:
            return {k: Counters(**vars(v)) for k, v in self._counters.items()}

    # -- connections -----------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        name = self.s.application_name or f"qvl-worker-{os.getpid()}"
        conn = psycopg.connect(self.s.dsn, autocommit=True, application_name=name, connect_timeout=10)
        # A row that row-level security hides from the worker's role must never pass for a deleted one
        # (its queue entry would be dropped, its vector never written): with row_security off, a query
        # that a policy would filter fails instead (pg_dump does the same), and the rows stay queued.
        conn.execute("SET row_security = off")
        return conn

    def _client(self, *, timeout: float | None = None, retries: int = STREAM_RETRIES) -> Client:
        roots = Path(self.s.ca_file).read_bytes() if self.s.ca_file else None
        return Client(self.s.service, token=self.s.token, timeout=timeout or self.s.rpc_timeout_s, retries=retries,
                      root_certificates=roots, tls=self.s.tls)

    def _check_install(self) -> None:
        """Wait for the database (it may start after the worker); refuse one without qvl; on a hot
        standby say so once and wait for a promotion (no crash loop, no traceback)."""
        backoff = Backoff(self.s.backoff_base_s, self.s.backoff_cap_s)
        said_standby = False
        while not self.stopping.is_set():
            self._touch_alive()  # waiting for the database is not being wedged
            try:
                with self._connect() as conn:
                    superuser = conn.execute(SUPERUSER_SQL).fetchone()
                    row = conn.execute("SELECT to_regclass('qvl.vectorizer') IS NOT NULL, "
                                       "pg_catalog.pg_is_in_recovery()").fetchone()
            except psycopg.OperationalError as exc:
                log.warning("the database is not reachable yet; retrying", extra={"error": str(exc).strip()})
                self.stopping.wait(backoff.next())
                continue
            if superuser:
                raise RuntimeError(SUPERUSER.format(role=superuser[0]))
            if not row or not row[0]:
                raise RuntimeError("qvl is not installed in this database: run `qvl pg install --dsn ...` first")
            if not row[1]:
                if said_standby:
                    log.info("the database was promoted; starting")
                return
            if self.s.exit_when_idle:
                raise RuntimeError(STANDBY)
            if not said_standby:
                log.warning(f"{STANDBY}; waiting for it to be promoted", extra={"standby": True})
                said_standby = True
            self.stopping.wait(STANDBY_RECHECK_S)

    def _learn_limits(self) -> None:
        try:
            with self._client(timeout=10, retries=0) as client:
                info = client.info()
            self.max_item_bytes = max(1024, int(info.limits.max_request_bytes) - 4096)
        except QvlClientError as exc:
            log.warning("the service is not answering yet; rows stay queued until it does",
                        extra={"service": self.s.service, "error": str(exc)})

    def _wake_all(self) -> None:
        for event in self._wakeups:
            event.set()

    def _current_configs(self, conn: psycopg.Connection[Any]) -> list[Vectorizer]:
        with self._config_lock:
            if self._configs_stale or time.monotonic() - self._configs_at > CONFIG_REFRESH_S:
                self._configs = load_vectorizers(conn, self.s.vectorizers)
                self._configs_at = time.monotonic()
                self._configs_stale = False
            return self._configs

    # -- notifications ---------------------------------------------------------------------
    def _listen(self) -> None:
        backoff = Backoff(self.s.backoff_base_s, self.s.backoff_cap_s)
        while not self.stopping.is_set():
            try:
                with self._connect() as conn:
                    conn.execute("LISTEN qvl_queue")
                    conn.execute("LISTEN qvl_config")
                    backoff.reset()
                    self._wake_all()  # rows may have come while we were not listening
                    while not self.stopping.is_set():
                        for note in conn.notifies(timeout=0.5):
                            if note.channel == "qvl_config":
                                self._configs_stale = True
                            self._wake_all()
            except psycopg.OperationalError as exc:
                log.warning("listen connection lost; polling every %.0f s until it is back", self.s.poll_s,
                            extra={"error": str(exc).strip()})
                self.stopping.wait(backoff.next())
            except psycopg.errors.ReadOnlySqlTransaction:  # LISTEN on a node that became a standby
                self.stopping.wait(STANDBY_RECHECK_S)

    # -- lanes -----------------------------------------------------------------------------
    def _lane(self, n: int) -> None:
        lane = Lane(f"{self.ident}:{n}")
        wake = self._wakeups[n]
        backoff = Backoff(self.s.backoff_base_s, self.s.backoff_cap_s)
        turn = n  # lanes start at different vectorizers
        down_since: float | None = None
        read_only = False  # said that the database refuses writes (said once until it takes them again)
        last: Vectorizer | None = None  # the vectorizer whose options the readiness probe uses
        while not self.stopping.is_set():
            try:
                if lane.conn is None or lane.conn.closed:
                    lane.conn = self._connect()
                if lane.client is None:
                    lane.client = self._client()
                configs = self._current_configs(lane.conn)
                wake.clear()
                worked = False
                for i in range(len(configs)):
                    v = configs[(turn + i) % len(configs)]
                    if self._held(v):
                        continue
                    try:
                        rows = self._claim_in_turn(lane.conn, v, lane.me)
                        if rows:
                            self._idle[n] = False
                            turn = (turn + i + 1) % len(configs)
                            last = v
                            self.process(lane, v, rows)
                            worked = True
                    except Blocked as exc:
                        # The worker's role may not see or write these rows: they stay queued, the
                        # reason is shown, and the vectorizer waits its own backoff before the next try.
                        self._hold(v, exc, quiet=True)
                        self._block(lane, v, str(exc))
                        continue
                    self._block(lane, v, None)
                    if worked:
                        break
                if read_only:
                    log.info("the database takes writes again", extra={"lane": n})
                    read_only = False
                if worked:
                    if down_since is not None:
                        log.info("the service is back", extra={"down_s": round(time.monotonic() - down_since, 1)})
                        down_since = None
                    self._set_status(lane, None)
                    backoff.reset()
                    continue
                self._idle[n] = True
                wake.wait(self.s.poll_s)
            except ServiceDown as exc:
                delay = backoff.next()
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("the service cannot embed now; pausing (rows stay queued, no attempt is counted)",
                                extra={"lane": n, "reason": str(exc)})
                else:
                    log.debug("service still unavailable", extra={"lane": n, "retry_in_s": round(delay, 2),
                                                                   "reason": str(exc)})
                self._set_status(lane, str(exc))
                if lane.client is not None:
                    lane.client.close()  # a fresh channel reconnects at once instead of after gRPC's backoff
                    lane.client = None
                self._await_service(last, delay)
            except psycopg.OperationalError as exc:
                log.warning("lost the database connection; reconnecting",
                            extra={"lane": n, "error": str(exc).strip()})
                if lane.conn is not None:
                    lane.conn.close()
                lane.conn = None
                self.stopping.wait(backoff.next())
            except psycopg.errors.UndefinedTable:
                self._configs_stale = True  # a vectorizer was dropped under us
            except psycopg.errors.ReadOnlySqlTransaction:
                # The node became a standby (a failover demoted it, or --dsn now reaches another):
                # nothing can be claimed or written here; the rows wait on the primary.
                if not read_only:
                    log.warning(f"{READ_ONLY}; waiting", extra={"lane": n, "standby": True})
                    read_only = True
                if lane.conn is not None:
                    lane.conn.close()
                lane.conn = None
                self.stopping.wait(STANDBY_RECHECK_S)
            except Exception:
                log.exception("lane error", extra={"lane": n})
                self._configs_stale = True
                self.stopping.wait(backoff.next())
        lane.close()

    def _await_service(self, v: Vectorizer | None, delay: float) -> None:
        """Wait up to ``delay``, asking the service every second: back to work as soon as it can
        embed again (rows move within seconds of the service coming back, whatever the backoff)."""
        deadline = time.monotonic() + delay
        while not self.stopping.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                return
            if v is not None and self._probe_once(v) is None:
                return

    # -- what workers say about the service (qvl.worker_status) ------------------------------
    def _block(self, lane: Lane, v: Vectorizer, reason: str | None) -> None:
        """Note that a vectorizer's rows stay queued because of the worker's role (reason), or no longer."""
        with self._status_lock:
            if self._blocked.get(v.name) == reason:
                return
            if reason is None:
                del self._blocked[v.name]
                log.info(f"{v.name}: the worker may work on its rows again", extra={"vectorizer": v.name})
            else:
                self._blocked[v.name] = reason
                log.warning(f"{v.name}: {reason}", extra={"vectorizer": v.name, "source": v.source})
        self._set_status(lane, self._paused)

    def _status(self) -> tuple[str, str | None]:
        """(state, reason): paused while the service cannot embed; the reason also names each vectorizer
        whose rows stay queued because of the worker's role."""
        notes = [f"vectorizer {name}: {why}" for name, why in sorted(self._blocked.items())]
        if self._paused:
            return "paused", "; ".join([self._paused, *notes])
        return "running", "; ".join(notes) or None

    def _set_status(self, lane: Lane, reason: str | None) -> None:
        """Record 'paused' with the reason, or 'running', when it changes (cheap: one row per worker)."""
        with self._status_lock:
            self._paused = reason
            state = self._status()
            if state == self._status_written or lane.conn is None:
                return
            try:
                lane.conn.execute(
                    "INSERT INTO qvl.worker_status AS w (worker, service, state, reason) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (worker) DO UPDATE SET service = EXCLUDED.service, state = EXCLUDED.state, "
                    "reason = EXCLUDED.reason, updated_at = now(), "
                    "since = CASE WHEN w.state = EXCLUDED.state THEN w.since ELSE now() END",
                    (self.ident, self.s.service, *state))
                self._status_written = state
            except psycopg.errors.UndefinedTable:
                self._status_written = state  # a database not upgraded to version 6: nowhere to say it
            except psycopg.Error as exc:
                log.debug("could not record the worker's status", extra={"error": str(exc).strip()})

    def _heartbeat(self, conn: psycopg.Connection[Any]) -> None:
        """Say this worker is alive (qvl.worker_status.last_seen; the row is made if there is none yet),
        and delete the rows of workers not seen for forget_workers_s (killed ones never delete their own)."""
        with self._status_lock:
            state, reason = self._status()
        try:
            conn.execute(
                "INSERT INTO qvl.worker_status AS w (worker, service, state, reason, last_seen, heartbeat_s) "
                "VALUES (%s, %s, %s, %s, now(), %s) "
                "ON CONFLICT (worker) DO UPDATE SET last_seen = now(), heartbeat_s = EXCLUDED.heartbeat_s",
                (self.ident, self.s.service, state, reason, self.s.heartbeat_s))
            gone = conn.execute("DELETE FROM qvl.worker_status WHERE last_seen < now() - make_interval(secs => %s) "
                                "AND worker <> %s", (self.s.forget_workers_s, self.ident)).rowcount
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
            self._beats = False  # a database older than schema version 9: nowhere to say it
            log.info("no heartbeats: the database's qvl schema is older than version 9 (qvl pg install upgrades it)")
            return
        except psycopg.errors.InsufficientPrivilege as exc:
            self._beats = False
            log.warning("no heartbeats: the worker's role may not write qvl.worker_status",
                        extra={"error": str(exc).strip()})
            return
        if gone:
            log.info(f"forgot {gone} workers not seen for {self.s.forget_workers_s:g} s (qvl.worker_status)")

    def _prune_failed(self, conn: psycopg.Connection[Any]) -> None:
        """qvl.prune_failed for this worker's vectorizers (all, or those it was told to serve)."""
        names: tuple[str | None, ...] = self.s.vectorizers or (None,)
        try:
            rows = [r for name in names for r in conn.execute(
                "SELECT vectorizer, gone, expired FROM qvl.prune_failed(%s)", (name,)).fetchall()]
        except psycopg.errors.UndefinedFunction:
            self._prunes = False  # a database older than schema version 9
            log.info("no pruning of failed rows: the database's qvl schema is older than version 9")
            return
        except psycopg.errors.InsufficientPrivilege as exc:
            self._prunes = False
            log.warning("no pruning of failed rows: the worker's role may not call qvl.prune_failed "
                        "(grant its login qvl_worker, or call qvl.prune_failed from a job)",
                        extra={"error": str(exc).strip()})
            return
        except psycopg.errors.UndefinedObject:
            self._configs_stale = True  # a vectorizer it serves was dropped
            return
        for name, gone, expired in rows:
            if gone or expired:
                log.info(f"{name}: pruned {gone or 0} failed rows whose table row is gone, {expired} older than "
                         "the retention", extra={"vectorizer": name, "gone": gone, "expired": expired})

    def _forget_status(self) -> None:
        try:
            with self._connect() as conn:
                conn.execute("DELETE FROM qvl.worker_status WHERE worker = %s", (self.ident,))
        except psycopg.Error:
            pass

    # -- claims in turn: a vectorizer whose claims fail is held back, alone -------------------
    def _held(self, v: Vectorizer) -> bool:
        with self._hold_lock:
            hold = self._holds.get(v.id)
            return hold is not None and hold.definition == v and time.monotonic() < hold.until

    def _claim_in_turn(self, conn: psycopg.Connection[Any], v: Vectorizer, me: str) -> list[Claimed]:
        """``_claim``, except that a failure other than a lost connection holds ``v`` back (and
        returns nothing): the lane goes on to the next vectorizer instead of retrying this one
        first for ever, and ``v`` is tried again after its own backoff."""
        try:
            rows = self._claim(conn, v, me)
        except (Blocked, psycopg.errors.ReadOnlySqlTransaction):
            # The worker's rights, or a database that takes no writes (a standby now): not this
            # vectorizer's fault; the lane says why (_block, or waits for writes to come back).
            raise
        except Exception as exc:
            if isinstance(exc, psycopg.Error) and _connection_lost(conn, exc):
                raise
            self._hold(v, exc)
            return []
        with self._hold_lock:
            hold = self._holds.pop(v.id, None)
        if hold is not None:
            log.info(f"vectorizer {v.name}: claims work again", extra={"vectorizer": v.name,
                                                                       "failures": hold.failures})
        return rows

    def _hold(self, v: Vectorizer, exc: Exception, *, quiet: bool = False) -> None:
        self._configs_stale = True  # the table may have changed: the next try reads the definition again
        with self._hold_lock:
            hold = self._holds.get(v.id)
            if hold is None or hold.definition != v:
                hold = self._holds[v.id] = Hold(v, Backoff(self.s.backoff_base_s, self.s.backoff_cap_s))
            delay = hold.backoff.next()
            hold.until = time.monotonic() + delay
            hold.failures += 1
            first = hold.failures == 1
        error = str(exc).strip() or type(exc).__name__
        extra = {"vectorizer": v.name, "error": error, "retry_in_s": round(delay, 2), "failures": hold.failures}
        if quiet or not first:
            log.debug(f"vectorizer {v.name}: claiming rows failed again: {error}", extra=extra)
        elif isinstance(exc, psycopg.Error):
            log.warning(f"vectorizer {v.name} ({v.source}): claiming rows failed: {error}; the other vectorizers "
                        f"go on, this one is tried again with backoff", extra=extra)
        else:
            log.exception(f"vectorizer {v.name} ({v.source}): claiming rows failed: {error}; the other vectorizers "
                          f"go on, this one is tried again with backoff", extra=extra)

    def _claim(self, conn: psycopg.Connection[Any], v: Vectorizer, me: str) -> list[Claimed]:
        try:
            rows = conn.execute(v.claim_sql(), {"limit": self.s.batch, "lease": self.s.lease_s, "me": me}
                                ).fetchall()
        except psycopg.errors.InsufficientPrivilege as exc:  # row-level security, or a missing grant
            raise Blocked(exc) from None
        npk = len(v.pk_columns)
        out = []
        for r in rows:
            present = bool(r[npk + 1])
            content = dict(zip(v.content_columns, r[npk + 3:], strict=True))
            out.append(Claimed(tuple(r[:npk]), int(r[npk]), present, r[npk + 2],
                               row_item(v, content) if present else None))
        return out

    # -- one batch ---------------------------------------------------------------------------
    def process(self, lane: Lane, v: Vectorizer, rows: list[Claimed]) -> Outcome:
        """Embed and store one claimed batch.

        Rows never tried go to the service together; rows that failed before (``attempts > 0``)
        go one at a time, so a row that kills the model process takes only itself down and is
        failed after ``max_attempts`` tries while its neighbours are stored. Every per-item failure
        counts an attempt and sets the row's backoff, unless it is the service's state rather than
        the row's: items that never reached the model, or failures the probe shows for a plain text
        too (no model, dimensions it cannot give, a wedged GPU) — then the rows go back uncounted
        and the lane pauses.
        """
        started = time.monotonic()
        gone = [r for r in rows if not r.present]
        empty = [r for r in rows if r.present and r.item is None]
        with_item = [r for r in rows if r.present and r.item is not None]
        too_big = [r for r in with_item if item_size(r.item) > self.max_item_bytes]  # type: ignore[arg-type]
        send = [r for r in with_item if item_size(r.item) <= self.max_item_bytes]  # type: ignore[arg-type]
        fresh = [k for k, r in enumerate(send) if r.attempts == 0]
        groups = ([fresh] if fresh else []) + [[k] for k, r in enumerate(send) if r.attempts > 0]
        results: list[np.ndarray | ItemFailure | None] = [None] * len(send)
        alone = [False] * len(send)
        down: ServiceDown | None = None
        with self._renewing(lane, v, _keys(rows)):
            for group in groups:
                try:
                    got = self._embed_checked(lane, v, [send[k].item for k in group])  # type: ignore[misc]
                except ServiceDown as exc:
                    down = exc
                    break
                for k, res in zip(group, got, strict=True):
                    results[k] = res
                    alone[k] = len(group) == 1
                if down is None and any(isinstance(res, ServiceDown) for res in got):
                    down = next(res for res in got if isinstance(res, ServiceDown))  # type: ignore[misc]
                if down is not None:
                    break
        writes: list[tuple[Claimed, str | None]] = [(r, None) for r in empty]
        failures = [(r, self._row_message(v, r, f"the row's item is {item_size(r.item)} bytes, over the "  # type: ignore[arg-type]
                                          f"service's request limit of {self.max_item_bytes} bytes"),
                     "INVALID_ARGUMENT") for r in too_big]
        retry: list[tuple[Claimed, float, str]] = []
        for k, (r, res) in enumerate(zip(send, results, strict=True)):
            if res is None or isinstance(res, ServiceDown):
                continue  # not answered, or the service's state: given back uncounted below
            if isinstance(res, ItemFailure):
                message = self._row_message(v, r, res.message)
                tries = r.attempts + 1
                if res.code in PERMANENT_CODES or (tries >= self.s.max_attempts and alone[k]):
                    failures.append((r, message, res.code))
                else:  # tried alone next time; failed only once it has failed alone max_attempts times
                    retry.append((r, self._retry_delay(tries), f"{res.code}: {message}"))
            else:
                writes.append((r, vector_literal(v, res)))
        outcome = self._finish(lane, v, rows, writes, failures, retry, gone)
        with self._counter_lock:
            c = self._counters[v.name]
            c.embedded += outcome.written
            c.failed += outcome.failed
            c.retried += outcome.retried
            c.released += outcome.released
            c.batches += 1
        log.debug("batch", extra={"vectorizer": v.name, "rows": len(rows), "written": outcome.written,
                                  "failed": outcome.failed, "retried": outcome.retried, "stale": outcome.stale,
                                  "busy": len(outcome.busy), "ms": round(1000 * (time.monotonic() - started), 1)})
        if outcome.busy:
            log.info(f"vectorizer {v.name}: {len(outcome.busy)} rows stayed locked by other transactions for "
                     f"{self.s.write_lock_wait_s:g} s; the rest of the batch is written, those are embedded again "
                     f"later", extra={"vectorizer": v.name, "rows": len(outcome.busy)})
        failures = [f for f in failures if f[0].key not in outcome.busy]
        retry = [r for r in retry if r[0].key not in outcome.busy]
        for r, message, code in failures:
            log.warning(f"{message}: refused; moved to the failed table", extra={
                "vectorizer": v.name, "key": list(map(str, r.key)), "code": code, "error": message})
        for r, delay, message in retry:
            log.info(f"{message}: tried {r.attempts + 1} of {self.s.max_attempts} times; retrying in {delay:.1f} s",
                     extra={"vectorizer": v.name, "key": list(map(str, r.key)), "attempts": r.attempts + 1})
        if down is not None:
            raise down
        return outcome

    def _retry_delay(self, tries: int) -> float:
        """A row's backoff after its ``tries``-th failure: doubling from retry_delay_s, +-10 % jitter."""
        base = min(self.s.retry_delay_cap_s, self.s.retry_delay_s * 2 ** min(tries - 1, 30))
        return base * random.uniform(0.9, 1.1)

    @staticmethod
    def _row_message(v: Vectorizer, r: Claimed, message: str) -> str:
        """The service's words about "item N" (a position that changes between tries) as the row's key."""
        key = str(r.key[0]) if len(r.key) == 1 else "(" + ",".join(map(str, r.key)) + ")"
        row = f"row {key} of {v.source}"
        if ITEM_PREFIX.match(message):
            return ITEM_PREFIX.sub(lambda m: row, message, count=1)
        return f"{row}: {message}"

    def _embed_checked(self, lane: Lane, v: Vectorizer, items: list[pb.Item]
                       ) -> list[np.ndarray | ItemFailure | ServiceDown | None]:
        """One stream's results, judged: a non-finite vector is that item's failure; a malformed
        answer, items that never reached the model, or failures the probe shows the service has for
        any input become ``ServiceDown`` (the rows go back uncounted)."""
        assert lane.client is not None
        raw = self._embed(lane.client, v, items)
        out: list[np.ndarray | ItemFailure | ServiceDown | None] = []
        for res in raw:
            if isinstance(res, np.ndarray):
                try:
                    out.append(self._check_vector(v, res))
                except Malformed as exc:
                    raise ServiceDown(f"the service answered a malformed result: {exc}") from None
            elif isinstance(res, ItemFailure) and not_ready(res.code, res.reason):
                out.append(ServiceDown(f"{res.code}: {ITEM_PREFIX.sub('', res.message).lstrip(': ')}"))
            else:
                out.append(res)
        counted = [res for res in out if isinstance(res, ItemFailure)]
        if counted and not any(isinstance(res, np.ndarray) for res in out):
            # Nothing in this stream worked: the rows' fault, or the service's? A plain text answers.
            problem = self._probe(v)
            if problem is not None:
                down = ServiceDown(problem)
                return [down if isinstance(res, ItemFailure) else res for res in out]
        return out

    def _check_vector(self, v: Vectorizer, res: np.ndarray) -> np.ndarray | ItemFailure:
        want = (v.dimensions + 7) // 8 if v.storage == "bit" else v.dimensions
        if res.ndim != 1 or res.shape[0] != want:
            raise Malformed(f"a vector of {res.shape[0] if res.ndim == 1 else res.shape} values, expected {want}")
        if v.storage != "bit" and not np.isfinite(res).all():
            return ItemFailure(0, NON_FINITE, "INTERNAL")
        return res

    def _probe_once(self, v: Vectorizer) -> str | None:
        """None when the service embeds a plain text with this vectorizer's options, else why not."""
        try:
            with self._client(timeout=30, retries=0) as client:
                got = list(client.embed_stream([pb.Item(parts=[pb.Part(text=PROBE_TEXT)])], dimensions=v.dimensions,
                                               encoding=v.encoding, instruction=v.instruction, timeout=30))
        except QvlClientError as exc:
            return f"{exc.code}: {exc}"
        if len(got) != 1:
            return "the service answered a probe with nothing"
        res = got[0]
        if isinstance(res, ItemFailure):
            return f"{res.code}: {ITEM_PREFIX.sub('', res.message).lstrip(': ')}"
        try:
            checked = self._check_vector(v, res)
        except Malformed as exc:
            return f"the service answered a malformed result: {exc}"
        return checked.message if isinstance(checked, ItemFailure) else None

    def _probe(self, v: Vectorizer) -> str | None:
        """Like ``_probe_once``, but a service that is restarting (a transient failure) is waited
        for, up to probe_wait_s: a row that killed the model process is then counted, not excused."""
        deadline = time.monotonic() + self.s.probe_wait_s
        while True:
            problem = self._probe_once(v)
            if problem is None or problem.split(":", 1)[0] not in TRANSIENT_CODES:
                return problem
            if time.monotonic() >= deadline or self.stopping.wait(1.0):
                return problem

    def _reachable(self) -> bool:
        try:
            with self._client(timeout=3, retries=0) as client:
                client.info()
            return True
        except QvlClientError:
            return False

    @contextmanager
    def _renewing(self, lane: Lane, v: Vectorizer, keys: list[tuple[Any, ...]]) -> Iterator[None]:
        """Extend the rows' lease every third of it while the batch is in hand (a batch may take
        longer than one lease: the RPC timeout is longer). Uses the lane's idle connection."""
        done = threading.Event()

        def renew() -> None:
            every = max(0.2, self.s.lease_s / 3)
            while not done.wait(every):
                try:
                    if lane.conn is not None and not lane.conn.closed:
                        lane.conn.execute(v.renew_sql(), {**v.key_params(keys), "me": lane.me,
                                                          "lease": self.s.lease_s})
                except psycopg.Error as exc:
                    log.debug("could not renew a lease", extra={"error": str(exc).strip()})

        thread = threading.Thread(target=renew, name="qvl-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _embed(self, client: Client, v: Vectorizer, items: list[pb.Item]) -> list[np.ndarray | ItemFailure | None]:
        """One result per item (None: not answered). A stream failing on bad input is halved until
        the item responsible stands alone, so it cannot block its neighbours."""
        out: list[np.ndarray | ItemFailure | None] = [None] * len(items)
        done = 0
        log.debug("embedding", extra={"vectorizer": v.name, "items": len(items)})
        watchdog = _Watchdog(client, self.s.stall_s, self._reachable)
        retried = client.retried
        carried = False  # the stream reached its end (after any resends)
        try:
            stream = client.embed_stream(items, dimensions=v.dimensions, encoding=v.encoding,
                                         instruction=v.instruction, max_in_flight=max(1, len(items)),
                                         timeout=self.s.rpc_timeout_s)
            for i, res in enumerate(stream):
                watchdog.progress()
                out[i] = res
                done = i + 1
            carried = True
        except Exception as exc:
            if watchdog.unreachable:
                raise ServiceDown("the service went away while the stream waited; its rows were given back") from None
            if watchdog.fired:
                raise ServiceDown(f"no answer from the service for {self.s.stall_s:g} s; the stream was "
                                  f"abandoned and its rows given back") from None
            # CANCELLED for a whole stream: the service stopped it (draining), not this input.
            if isinstance(exc, TransientError) or (isinstance(exc, QvlClientError) and exc.code == "CANCELLED"):
                if done == 0:
                    raise ServiceDown(str(exc)) from None
                return out  # keep what came back; the rest goes back to the queue
            if isinstance(exc, Unauthenticated):
                raise ServiceDown(f"the service refused the token (pass --token or QVL_TOKEN): {exc}") from None
            if not isinstance(exc, QvlClientError):
                raise
            rest = items[done:]
            if len(rest) == 1:
                out[done] = ItemFailure(0, str(exc), exc.code, exc.limit, exc.reason)
            else:
                half = len(rest) // 2
                out[done:done + half] = self._embed(client, v, rest[:half])
                out[done + half:] = self._embed(client, v, rest[half:])
        finally:
            watchdog.stop()
            # Only a stream that then finished was carried on; one whose retries all failed (a single
            # replica that is down) is the ServiceDown reported above, not a resend.
            if client.retried > retried and carried:
                log.info("a stream was carried on after its replica failed", extra={
                    "vectorizer": v.name, "times": client.retried - retried})
                with self._counter_lock:
                    self._counters[v.name].resent += client.retried - retried
        return out

    def _finish(self, lane: Lane, v: Vectorizer, rows: list[Claimed], writes: list[tuple[Claimed, str | None]],
                failures: list[tuple[Claimed, str, str]], retry: list[tuple[Claimed, float, str]],
                gone: list[Claimed]) -> Outcome:
        """One short transaction; on a lost connection, retried on a new one (the vectors are in hand).
        Rows that other transactions keep locked past ``write_lock_wait_s`` are left for later and the
        rest written, so one long application transaction holds up its own rows, not the batch."""
        skip_locked = False
        for attempt in range(3):
            if lane.conn is None or lane.conn.closed:
                lane.conn = self._connect()
            try:
                return self._finish_once(lane.conn, v, lane.me, rows, writes, failures, retry, gone, skip_locked)
            except psycopg.errors.LockNotAvailable:  # an OperationalError, but the connection is fine
                if skip_locked:
                    raise
                skip_locked = True
            except (psycopg.errors.TransactionRollback, psycopg.errors.DeadlockDetected) as exc:
                # A deadlock or serialization failure: nothing was written; the same write again.
                if attempt == 2:
                    raise
                log.warning("the database rolled the write back; retrying it", extra={"error": str(exc).strip()})
                self.stopping.wait(0.1 * (attempt + 1))
            except psycopg.OperationalError as exc:
                if attempt == 2:
                    raise
                log.warning("lost the database connection while writing; retrying the write",
                            extra={"error": str(exc).strip()})
                lane.conn.close()
                self.stopping.wait(0.5 * (attempt + 1))
            except psycopg.errors.InsufficientPrivilege as exc:
                # May read but not write (a missing grant, or a policy that hides rows from the write):
                # give the batch back untouched and say so; nothing is failed or dropped.
                params = {**v.key_params(_keys(rows)), "me": lane.me}
                with lane.conn.transaction():
                    lane.conn.execute(v.lock_queue_sql(), params)
                    lane.conn.execute(v.release_sql(), params)
                raise Blocked(exc) from None
            except psycopg.errors.DataException:
                # e.g. qvl.reembed changed the size under us: give the batch back, reload the definition.
                self._configs_stale = True
                params = {**v.key_params(_keys(rows)), "me": lane.me}
                with lane.conn.transaction():
                    lane.conn.execute(v.lock_queue_sql(), params)
                    lane.conn.execute(v.release_sql(), params)
                return Outcome(released=len(rows))
            except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable):
                # The table changed while the batch was embedded (a renamed column or table, which the
                # schema guard followed): write with the definition as it is now. Rows of a vectorizer
                # dropped meanwhile have nowhere to go.
                fresh = self._reload(lane.conn, v)
                if fresh is None:
                    return Outcome()
                if fresh == v or attempt == 2:
                    raise
                log.info(f"vectorizer {v.name}: its table changed while a batch was embedded; writing it with "
                         f"the new definition", extra={"vectorizer": v.name})
                v = fresh
        raise AssertionError("unreachable")

    def _reload(self, conn: psycopg.Connection[Any], v: Vectorizer) -> Vectorizer | None:
        """``v`` as the catalog defines it now (None: dropped); the lanes reload theirs too."""
        self._configs_stale = True
        return next((c for c in load_vectorizers(conn, self.s.vectorizers) if c.id == v.id), None)

    def _finish_once(self, conn: psycopg.Connection[Any], v: Vectorizer, me: str, rows: list[Claimed],
                     writes: list[tuple[Claimed, str | None]], failures: list[tuple[Claimed, str, str]],
                     retry: list[tuple[Claimed, float, str]], gone: list[Claimed],
                     skip_locked: bool = False) -> Outcome:
        out = Outcome()
        with conn.transaction():
            batch = v.key_params(_keys(rows))
            if not skip_locked:
                # Every lock the batch needs, taken first and in a fixed order (see lock_source_sql),
                # waiting at most write_lock_wait_s for each.
                conn.execute(f"SET LOCAL lock_timeout = {max(1, round(self.s.write_lock_wait_s * 1000))}")
                conn.execute(v.lock_source_sql(), batch)
                conn.execute(v.lock_queue_sql(), batch)
            else:
                # Only the rows free now: a row whose table row is held (a deleted one has none) or
                # whose queue row is held is left out of this write.
                source = {tuple(r) for r in conn.execute(v.lock_free_source_sql(), batch).fetchall()}
                queue = {tuple(r) for r in conn.execute(v.lock_free_queue_sql(), batch).fetchall()}
                free = {r.key for r in rows if r.key in queue and (r.key in source or not r.present)}
                out.busy = {r.key for r in rows} - free
                # Those whose queue row is free come back after a short wait; a queue row that is held
                # belongs to a transaction that changed the row, and its commit queues the row afresh.
                later = [k for k in out.busy if k in queue]
                if later:
                    conn.execute(v.release_later_sql(), {**v.key_params(later), "me": me,
                                                         "qvl_delay": self.s.retry_delay_s})
                rows = [r for r in rows if r.key in free]
                writes = [w for w in writes if w[0].key in free]
                failures = [f for f in failures if f[0].key in free]
                retry = [r for r in retry if r[0].key in free]
                gone = [g for g in gone if g.key in free]
            if writes:
                params = {**v.key_params([r.key for r, _ in writes]), "me": me,
                          "qvl_hash": [r.content_hash for r, _ in writes], "qvl_vec": [vec for _, vec in writes]}
                row = conn.execute(v.write_sql(), params).fetchone()
                out.written = int(row[0]) if row else 0
                out.stale = len(writes) - out.written  # changed since the claim: the newer version wins
            if failures:
                params = {**v.key_params([r.key for r, _, _ in failures]), "me": me,
                          "qvl_error": [m for _, m, _ in failures], "qvl_code": [c for _, _, c in failures]}
                out.failed = conn.execute(v.fail_sql(), params).rowcount
            if retry:
                params = {**v.key_params([r.key for r, _, _ in retry]), "me": me,
                          "qvl_delay": [d for _, d, _ in retry], "qvl_error": [m for _, _, m in retry]}
                out.retried = conn.execute(v.retry_later_sql(), params).rowcount
            if gone:
                out.gone = conn.execute(v.forget_gone_sql(), {**v.key_params(_keys(gone)), "me": me}).rowcount
            out.released = conn.execute(v.release_sql(), {**v.key_params(_keys(rows)), "me": me}).rowcount
        return out

    # -- progress --------------------------------------------------------------------------
    def _monitor(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        last_report = time.monotonic()
        last_beat = last_prune = float("-inf")  # both at once on start
        self._last_counts: dict[str, int] = {}
        self._last_at = time.monotonic()
        pause = 0.0  # the first heartbeat at once: the worker's row is there as it starts
        while not self.stopping.is_set():
            self.stopping.wait(pause)
            self._touch_alive()
            pause = min(0.25 if self.s.exit_when_idle else 1.0, self.s.heartbeat_s)
            now = time.monotonic()
            try:
                if self._beats and now - last_beat >= self.s.heartbeat_s:
                    conn = conn if conn is not None and not conn.closed else self._connect()
                    self._heartbeat(conn)
                    last_beat = now
                if self._prunes and now - last_prune >= self.s.prune_every_s:
                    conn = conn if conn is not None and not conn.closed else self._connect()
                    self._prune_failed(conn)
                    last_prune = now
                if self.s.exit_when_idle and all(self._idle):
                    conn = conn if conn is not None and not conn.closed else self._connect()
                    if self._pending(conn) == 0:
                        log.info("queues empty; exiting (--exit-when-idle)")
                        break
                if now - last_report >= self.s.log_every_s:
                    conn = conn if conn is not None and not conn.closed else self._connect()
                    self._report(conn=conn)
                    last_report = now
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _touch_alive(self) -> None:
        """Liveness for a probe that cannot ask the database (the Helm chart's): the file's age says
        when this loop last turned."""
        if not self.s.alive_file:
            return
        try:
            Path(self.s.alive_file).touch()
            self._alive_ok = True
        except OSError as exc:
            if self._alive_ok:
                log.warning("cannot touch the alive file: a liveness probe will restart this worker",
                            extra={"path": self.s.alive_file, "error": str(exc)})
            self._alive_ok = False

    def _pending(self, conn: psycopg.Connection[Any]) -> int:
        total = 0
        for v in self._current_configs(conn):
            try:
                row = conn.execute(v.pending_sql()).fetchone()
            except psycopg.errors.UndefinedTable:
                self._configs_stale = True
                continue
            total += int(row[0]) if row else 0
        return total

    def _report(self, conn: psycopg.Connection[Any] | None = None, final: bool = False) -> None:
        now = time.monotonic()
        elapsed = max(now - getattr(self, "_last_at", now), 1e-9)
        counts = self.counters()
        last = getattr(self, "_last_counts", {})
        for v in list(self._configs):
            c = counts.get(v.name, Counters())
            pending = None
            if conn is not None:
                try:
                    row = conn.execute(v.pending_sql()).fetchone()
                    pending = int(row[0]) if row else None
                except psycopg.Error:
                    pending = None
            delta = c.embedded - last.get(v.name, 0)
            if not final and delta == 0 and not pending:
                continue
            rate = delta / elapsed
            extra: dict[str, Any] = {"vectorizer": v.name, "embedded": c.embedded, "failed": c.failed,
                                     "pending": pending, "rate_per_s": round(rate, 1), "resent": c.resent,
                                     "released": c.released}
            if pending and rate > 0:
                extra["eta_s"] = round(pending / rate, 1)
            log.info(f"{v.name}: {c.embedded} embedded, {c.failed} failed"
                     + (f", {pending} pending" if pending is not None else "")
                     + (f" ({rate:.1f}/s)" if not final else " (final)"), extra=extra)
        self._last_counts = {k: c.embedded for k, c in counts.items()}
        self._last_at = now


def run_worker(settings: WorkerSettings, *, handle_signals: bool = True) -> int:
    """The ``qvl worker`` entry point: SIGTERM/SIGINT finish the batches in hand, a second one exits now."""
    worker = Worker(settings)
    if handle_signals:
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: where is each lane?
        faulthandler.enable(all_threads=True)  # a crash in C code (SIGSEGV, SIGABRT) leaves every thread's stack
        def on_signal(signum: int, frame: Any) -> None:
            if worker.stopping.is_set():
                log.warning("second signal: exiting now (claimed rows return when their lease ends)")
                os._exit(1)
            log.info("signal received: finishing the batches in hand", extra={"signal": signum})
            worker.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        worker.run()
    except RuntimeError as exc:
        log.error(str(exc))
        return 2
    return 0
