"""``qvl pg install|status`` and ``qvl worker``: argument parsing only (imports stay lazy)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any


def cmd_pg_install(args: argparse.Namespace) -> int:
    from connectors.postgres.installer import InstallError, check_service, install

    try:
        result = install(args.dsn, service_url=args.service_url, service_token=args.service_token,
                         service_ca_file=args.service_ca_file, public_grant=args.public_grant, target=args.target,
                         worker_login=args.worker_login, worker_password=os.environ.get("QVL_WORKER_PASSWORD"))
    except InstallError as exc:
        print(f"qvl pg install: {exc}")
        return 2
    print(f"qvl schema version {result.version_after}"
          + (f" (applied {', '.join(result.applied)})" if result.applied else " (already current)"))
    problem = check_service(args.dsn)
    if problem:
        print(f"warning: the database cannot reach the service yet: {problem}")
    return 0


def cmd_pg_status(args: argparse.Namespace) -> int:
    import psycopg

    try:
        with psycopg.connect(args.dsn, connect_timeout=10) as conn:
            installed = conn.execute("SELECT to_regclass('qvl.vectorizer_status') IS NOT NULL").fetchone()
            if not installed or not installed[0]:
                print("qvl pg status: qvl is not installed in this database; install it (as a superuser) with: "
                      "qvl pg install --dsn DSN --service-url http://SERVICE:8080", file=sys.stderr)
                return 2
            cur = conn.execute("SELECT * FROM qvl.vectorizer_status ORDER BY name")
            names = [d.name for d in cur.description or []]
            rows = cur.fetchall()
    except psycopg.Error as exc:
        reason = (exc.diag.message_primary if isinstance(exc, psycopg.errors.DatabaseError) else None) or str(exc)
        print(f"qvl pg status: {reason.strip().splitlines()[0]}", file=sys.stderr)
        return 2
    print("\t".join(names))
    for row in rows:
        print("\t".join("" if v is None else str(v) for v in row))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from connectors.postgres.worker import WorkerSettings, run_worker

    settings = WorkerSettings(
        dsn=args.dsn, service=args.service, token=args.token, batch=args.batch, concurrency=args.concurrency,
        lease_s=args.lease, poll_s=args.poll, max_attempts=args.max_attempts, log_every_s=args.log_every,
        vectorizers=tuple(args.vectorizer or ()), exit_when_idle=args.exit_when_idle, shadow=args.shadow,
        backoff_cap_s=args.max_backoff, application_name=args.application_name or "", stall_s=args.stall_timeout,
        tls=args.tls, ca_file=args.ca_file, retry_delay_s=args.retry_delay, heartbeat_s=args.heartbeat,
        prune_every_s=args.prune_every, write_lock_wait_s=args.write_lock_wait, alive_file=args.alive_file,
    )
    return run_worker(settings)


def _count(text: str) -> int:
    """A whole number of at least 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, not {text!r}")
    return value


def _seconds(text: str, zero: bool = False) -> float:
    """A finite number of seconds above 0 (or 0 where ``zero`` means "never")."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise argparse.ArgumentTypeError(f"a number of seconds {'of at least 0' if zero else 'above 0'}, not {text!r}")
    return value


def _seconds_or_never(text: str) -> float:
    return _seconds(text, zero=True)


def _dsn(p: argparse.ArgumentParser) -> None:
    default = os.environ.get("QVL_PG_DSN") or os.environ.get("DATABASE_URL")
    p.add_argument("--dsn", default=default, required=default is None,
                   help="libpq connection string or URI (QVL_PG_DSN, DATABASE_URL)")


def add_postgres_parsers(sub: Any) -> None:
    pg = sub.add_parser("pg", help="install qvl into a Postgres database, show vectorizer status")
    pg_sub = pg.add_subparsers(dest="pg_command", required=True)

    p = pg_sub.add_parser("install", help="apply sql/ (idempotent; upgrades in place)",
                          description="Creates or upgrades schema qvl. Needs the vector and plpython3u "
                          "extensions and a superuser (PL/Python is an untrusted language).")
    _dsn(p)
    p.add_argument("--service-url", default=os.environ.get("QVL_SERVICE_URL"),
                   help="the service's HTTP address as the database reaches it (e.g. http://qvl:8080), or "
                   "several replicas, comma-separated (http://qvl-a:8080,http://qvl-b:8080)")
    p.add_argument("--service-token", default=os.environ.get("QVL_TOKEN"), help="bearer token (QVL_TOKEN)")
    p.add_argument("--service-ca-file", default=None,
                   help="https:// service: the CA file (PEM, a path on the database server) its certificate is "
                   "verified against (default: the system's CAs)")
    grant = p.add_mutually_exclusive_group()
    grant.add_argument("--no-public-grant", dest="public_grant", action="store_false", default=None,
                       help="do not let every role embed, rerank and search (grant with qvl.grant_query_access)")
    grant.add_argument("--public-grant", dest="public_grant", action="store_true",
                       help="let every role embed, rerank and search (the default on a first install; a later "
                       "install keeps the earlier choice unless told)")
    p.add_argument("--worker-login", help="a login for `qvl worker`: made if missing (its password from "
                   "QVL_WORKER_PASSWORD, when set) and granted qvl_worker, the role the install makes")
    p.add_argument("--target", type=int, help="stop at this schema version (default: the newest)")
    p.set_defaults(func=cmd_pg_install)

    p = pg_sub.add_parser("status", help="print qvl.vectorizer_status")
    _dsn(p)
    p.set_defaults(func=cmd_pg_status)

    p = sub.add_parser("worker", help="embed queued Postgres rows through the service (gRPC)",
                       description="LISTEN/NOTIFY with polling, FOR UPDATE SKIP LOCKED claims with a lease; run "
                       "as many as you like. SIGTERM finishes the batches in hand.")
    _dsn(p)
    p.add_argument("--service", default=os.environ.get("QVL_SERVICE", "127.0.0.1:50051"),
                   help="gRPC target of qvl serve (QVL_SERVICE): HOST:PORT, or several replicas as "
                   "ipv4:H1:P1,H2:P2 or dns:///NAME:PORT (round_robin with health checks)")
    p.add_argument("--token", default=os.environ.get("QVL_TOKEN"), help="bearer token (QVL_TOKEN)")
    p.add_argument("--tls", action="store_true", default=os.environ.get("QVL_SERVICE_TLS", "") in ("1", "true"),
                   help="gRPC over TLS, verified against the system's CAs (QVL_SERVICE_TLS=true)")
    p.add_argument("--ca-file", default=os.environ.get("QVL_SERVICE_CA_FILE"),
                   help="PEM CA bundle that signed the service's certificate; implies --tls (QVL_SERVICE_CA_FILE)")
    p.add_argument("--batch", type=_count, default=64, help="rows claimed and embedded at a time")
    p.add_argument("--concurrency", type=_count, default=2, help="batches in flight at once")
    p.add_argument("--lease", type=_seconds, default=300.0,
                   help="seconds before a claimed row returns to the queue if its worker vanished (renewed "
                   "while the worker holds it)")
    p.add_argument("--poll", type=_seconds, default=5.0, help="seconds between polls when no notification comes")
    p.add_argument("--max-attempts", type=_count, default=5,
                   help="tries for a row the model fails on, the last ones alone (bad input fails at once; "
                   "outages and misconfiguration of the service never count)")
    p.add_argument("--retry-delay", type=_seconds, default=5.0,
                   help="seconds a failed row waits before its next try; doubled for each further attempt")
    p.add_argument("--log-every", type=_seconds, default=10.0, help="seconds between progress lines")
    p.add_argument("--max-backoff", type=_seconds, default=30.0,
                   help="longest wait between retries while the service or database is down")
    p.add_argument("--stall-timeout", type=_seconds, default=120.0,
                   help="seconds without any result before a batch's stream is abandoned and retried")
    p.add_argument("--write-lock-wait", type=_seconds, default=5.0,
                   help="seconds a batch's write waits for rows other transactions hold locked; then it writes "
                   "the rest and those rows are embedded again later")
    p.add_argument("--heartbeat", type=_seconds, default=15.0,
                   help="seconds between the worker's heartbeats in qvl.worker_status (qvl.workers shows a worker "
                   "silent for 3 heartbeats as stale)")
    p.add_argument("--prune-every", type=_seconds_or_never, default=300.0,
                   help="seconds between prunings of failed rows whose table row is gone (and those past "
                   "qvl.set_failed_retention); 0: never")
    p.add_argument("--alive-file", default=os.environ.get("QVL_WORKER_ALIVE_FILE"),
                   help="a file the worker touches while it runs, at least every --max-backoff seconds, also while "
                   "it waits for the database; a liveness probe checks its age (QVL_WORKER_ALIVE_FILE)")
    p.add_argument("--application-name", help="shown in pg_stat_activity (default qvl-worker-<pid>)")
    p.add_argument("--vectorizer", action="append", help="only these vectorizers (repeatable; default all)")
    p.add_argument("--exit-when-idle", action="store_true", help="exit once every queue is empty")
    p.add_argument("--shadow", action="store_true",
                   help="blue/green: fill the shadow columns that qvl.reembed(name, service => ..., shadow => ...) "
                   "made, from --service (the new model's), instead of the vectorizers' own columns")
    p.set_defaults(func=cmd_worker)
