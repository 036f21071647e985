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
                         worker_login=args.worker_login, worker_password=os.environ.get("QVL_WORKER_PASSWORD"),
                         managed=args.managed)
    except InstallError as exc:
        print(f"qvl pg install: {exc}")
        return 2
    if result.choice.line():
        print(result.choice.line())
    print(f"qvl schema version {result.version_after}"
          + (f" (applied {', '.join(result.applied)})" if result.applied else " (already current)"))
    if result.choice.line():  # the database never calls the service on the managed install
        return 0
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


def cmd_pg_sql(args: argparse.Namespace) -> int:
    """The whole install as one SQL script (for migration tools; psql -1 -f as the installing role)."""
    from connectors.postgres.install_modes import FULL, MANAGED
    from connectors.postgres.installer import InstallError, script

    try:
        sys.stdout.write(script(public_grant=args.public_grant, mode=MANAGED if args.managed else FULL))
    except InstallError as exc:
        print(f"qvl pg sql: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_pg_search(args: argparse.Namespace) -> int:
    """One JSON object per hit, best first: the application side of qvl.search (works on both installs)."""
    import json

    import psycopg

    from connectors.client import Client, QvlClientError
    from connectors.postgres.search import ChunkHit, Hit, SearchError, search, search_chunks

    if args.chunks and args.offset:
        print("qvl pg search: --offset is not taken with --chunks (qvl.search_chunks has none): ask for more with --k",
              file=sys.stderr)
        return 2
    flt: Any = args.filter
    if args.filter_json is not None:
        try:
            flt = json.loads(args.filter_json)
        except ValueError as exc:
            print(f"qvl pg search: --filter-json is not JSON: {exc}", file=sys.stderr)
            return 2
    query: str | bytes = args.query
    if args.image:
        with open(args.query, "rb") as f:
            query = f.read()
    try:
        with psycopg.connect(args.dsn, autocommit=True, connect_timeout=10) as conn, \
                Client(args.service, token=args.token) as client:
            hits: list[Hit] | list[ChunkHit]
            if args.chunks:
                hits = search_chunks(conn, args.vectorizer, query, client=client, k=args.k,
                                     candidates=args.candidates, filter=flt, rerank=not args.no_rerank)
            else:
                hits = search(conn, args.vectorizer, query, client=client, k=args.k, candidates=args.candidates,
                              filter=flt, rerank=not args.no_rerank, offset=args.offset)
    except SearchError as exc:
        print(f"qvl pg search: {exc}", file=sys.stderr)
        return 2
    except (psycopg.Error, QvlClientError) as exc:
        print(f"qvl pg search: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}", file=sys.stderr)
        return 2
    for hit in hits:
        print(json.dumps(hit.as_json()))
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
        metrics_port=args.metrics_port, metrics_host=args.metrics_host, metrics_every_s=args.metrics_every,
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


def _port(text: str) -> int:
    """A TCP port, 0 to 65535 (0: any free one)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port from 0 to 65535, not {text!r}")
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
    _add_install_parser(pg_sub)
    _add_search_parser(pg_sub)
    _add_sql_and_status_parsers(pg_sub)
    _add_worker_parser(sub)


def _add_install_parser(pg_sub: Any) -> None:
    p = pg_sub.add_parser("install", help="apply sql/ (idempotent; upgrades in place)",
                          description="Creates or upgrades schema qvl. Where the role is a superuser and "
                          "PL/Python exists: the full install; otherwise the managed install (no model calls "
                          "inside the database, no mode => 'sync', no schema guard), which it says in one line.")
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
    p.add_argument("--managed", action="store_true",
                   help="the managed install even where the full one could be made (no PL/Python in the database)")
    p.set_defaults(func=cmd_pg_install)


def _add_search_parser(pg_sub: Any) -> None:
    p = pg_sub.add_parser("search", help="search a vectorizer from the application (embed and rerank over gRPC)",
                          description="The application side of qvl.search: the query embedded and the candidates "
                          "reranked over gRPC, the candidate stage in the database as --dsn's role. Works on the "
                          "managed install. Prints one JSON object per hit, best first: {pk, distance, score} "
                          "(with --chunks: {pk, chunk_seq, locator, distance, score}).")
    _dsn(p)
    p.add_argument("--service", default=os.environ.get("QVL_SERVICE", "127.0.0.1:50051"),
                   help="gRPC target of qvl serve (QVL_SERVICE)")
    p.add_argument("--token", default=os.environ.get("QVL_TOKEN"), help="bearer token (QVL_TOKEN)")
    p.add_argument("vectorizer")
    p.add_argument("query", help="the query text (with --image: an image file)")
    p.add_argument("--image", action="store_true", help="QUERY is an image file")
    p.add_argument("--k", type=_count, default=10, help="hits to print")
    p.add_argument("--candidates", type=_count, default=100, help="nearest rows the reranker scores")
    p.add_argument("--offset", type=int, default=0, help="skip this many of the best hits")
    flt = p.add_mutually_exclusive_group()
    flt.add_argument("--filter", help="one condition on the table's columns, as after WHERE (checked as qvl.search "
                     "checks it)")
    flt.add_argument("--filter-json", help='a structured filter: {"column": ..., "op": ..., "value": ...}')
    p.add_argument("--no-rerank", action="store_true", help="by distance alone (score null)")
    p.add_argument("--chunks", action="store_true",
                   help="a chunked vectorizer's chunks, as qvl.search_chunks: {pk, chunk_seq, locator, distance, "
                   "score} per hit (no --offset)")
    p.set_defaults(func=cmd_pg_search)


def _add_sql_and_status_parsers(pg_sub: Any) -> None:
    p = pg_sub.add_parser("sql", help="print the install as one SQL script (for migration tools)",
                          description="A fresh install as one script, for `psql -1 -f` as the installing role or a "
                          "migration tool: every migration with its version row, every function, the grants.")
    p.add_argument("--managed", action="store_true", help="the managed install (no PL/Python, no event triggers)")
    p.add_argument("--no-public-grant", dest="public_grant", action="store_false",
                   help="do not let every role embed, rerank and search")
    p.set_defaults(func=cmd_pg_sql)

    p = pg_sub.add_parser("status", help="print qvl.vectorizer_status")
    _dsn(p)
    p.set_defaults(func=cmd_pg_status)


def _add_worker_parser(sub: Any) -> None:
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
    # Off by default: several workers may share a host (scale-out), and a worker otherwise opens no port.
    p.add_argument("--metrics-port", type=_port, default=os.environ.get("QVL_WORKER_METRICS_PORT") or None,
                   help="serve Prometheus metrics on this port at /metrics (docs/metrics.md; off unless given; "
                   "QVL_WORKER_METRICS_PORT). No token: bind it where only the scraper reaches it")
    p.add_argument("--metrics-host", default=os.environ.get("QVL_WORKER_METRICS_HOST", "0.0.0.0"),
                   help="address the metrics endpoint listens on (QVL_WORKER_METRICS_HOST; default 0.0.0.0, "
                   "so a scraper on another host or pod reaches it)")
    p.add_argument("--metrics-every", type=_seconds, default=5.0,
                   help="seconds between reads of each vectorizer's queue depth and failed rows for the gauges")
    p.add_argument("--application-name", help="shown in pg_stat_activity (default qvl-worker-<pid>)")
    p.add_argument("--vectorizer", action="append", help="only these vectorizers (repeatable; default all)")
    p.add_argument("--exit-when-idle", action="store_true", help="exit once every queue is empty")
    p.add_argument("--shadow", action="store_true",
                   help="blue/green: fill the shadow columns (chunk tables) that qvl.reembed(name, service => ..., "
                   "shadow => ...) made, from --service (the new model's; after a switch, the old model's keeps "
                   "the way back), instead of the vectorizers' own")
    p.set_defaults(func=cmd_worker)
