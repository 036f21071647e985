"""What the database's qvl schema offers the worker, found once at start (a worker started before an
upgrade goes on without what the upgrade adds until it is restarted)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

DETECT_SQL = """
SELECT to_regclass('qvl.worker_status') IS NOT NULL,
       EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                WHERE a.attrelid = to_regclass('qvl.worker_status') AND a.attname = 'last_seen'
                  AND NOT a.attisdropped),
       to_regprocedure('qvl.prune_failed(text, interval)') IS NOT NULL,
       to_regprocedure('qvl._record_model(int, text, text)') IS NOT NULL,
       -- NULL (so false) where the table is missing; a role given only a vectorizer's share may not write it.
       coalesce(has_table_privilege(to_regclass('qvl.cut_rows'), 'SELECT')
                AND has_table_privilege(to_regclass('qvl.cut_rows'), 'INSERT')
                AND has_table_privilege(to_regclass('qvl.cut_rows'), 'UPDATE')
                AND has_table_privilege(to_regclass('qvl.cut_rows'), 'DELETE'), false)"""


@dataclass(frozen=True)
class Features:
    worker_status: bool = True  # version 6: qvl.worker_status, where the worker says paused or running
    heartbeats: bool = True  # version 9: qvl.worker_status.last_seen and heartbeat_s
    prune_failed: bool = True  # version 9: qvl.prune_failed
    model_identity: bool = True  # version 11: qvl.vectorizer.model_fingerprint, qvl._record_model
    cut_rows: bool = True  # version 12: qvl.cut_rows (the rows stored from cut text), and the right to write it
    # The managed install: create_vectorizer could not ask the service whether it gives a vectorizer's
    # dimensions (the database never calls it), so the worker asks before its first claim. The full
    # install asked at creation: no probe there (it would be one more model call per vectorizer).
    unchecked_dimensions: bool = False

    @classmethod
    def detect(cls, conn: psycopg.Connection[Any]) -> Features:
        row = conn.execute(DETECT_SQL).fetchone()
        assert row is not None
        return cls(*(bool(x) for x in row), unchecked_dimensions=_managed(conn))


def _managed(conn: psycopg.Connection[Any]) -> bool:
    """Whether qvl.config says the managed install (false where the role may not read it: then the
    batch's own calls find a size the service cannot give)."""
    readable = conn.execute("SELECT coalesce(has_table_privilege(to_regclass('qvl.config'), 'SELECT'), false)")
    row = readable.fetchone()
    if row is None or not row[0]:
        return False
    got = conn.execute("SELECT value FROM qvl.config WHERE key = 'install'").fetchone()
    return got is not None and got[0] == "managed"
