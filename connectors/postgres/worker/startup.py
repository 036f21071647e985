"""Before the lanes start: the database is up, qvl is installed, the worker is no superuser and the
database takes writes; what its qvl schema offers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from connectors.postgres.worker.alive import AliveFile
from connectors.postgres.worker.backoff import Backoff
from connectors.postgres.worker.features import Features

log = logging.getLogger("qvl.worker")

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


def check_install(connect: Callable[[], psycopg.Connection[Any]], backoff: Backoff, stopping: threading.Event,
                  alive: AliveFile, *, exit_when_idle: bool) -> Features | None:
    """Wait for the database (it may start after the worker); refuse one without qvl; on a hot
    standby say so once and wait for a promotion (no crash loop, no traceback). RuntimeError: a
    refusal; None: stopped while waiting."""
    said_standby = False
    while not stopping.is_set():
        alive.touch()  # waiting for the database is not being wedged
        try:
            with connect() as conn:
                superuser = conn.execute(SUPERUSER_SQL).fetchone()
                row = conn.execute("SELECT to_regclass('qvl.vectorizer') IS NOT NULL, "
                                   "pg_catalog.pg_is_in_recovery()").fetchone()
                features = Features.detect(conn)
        except psycopg.OperationalError as exc:
            log.warning("the database is not reachable yet; retrying", extra={"error": str(exc).strip()})
            stopping.wait(backoff.next())
            continue
        if superuser:
            raise RuntimeError(SUPERUSER.format(role=superuser[0]))
        if not row or not row[0]:
            raise RuntimeError("qvl is not installed in this database: run `qvl pg install --dsn ...` first")
        if not row[1]:
            if said_standby:
                log.info("the database was promoted; starting")
            return features
        if exit_when_idle:
            raise RuntimeError(STANDBY)
        if not said_standby:
            log.warning(f"{STANDBY}; waiting for it to be promoted", extra={"standby": True})
            said_standby = True
        stopping.wait(STANDBY_RECHECK_S)
    return None
