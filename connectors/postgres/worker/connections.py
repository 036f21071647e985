"""The worker's database connections, and what their errors mean for the worker."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psycopg

from connectors.client import Client

# SQLSTATEs of a server going away (admin, crash shutdown; cannot connect now): the connection's
# fault, not one vectorizer's. (57014, a statement or lock timeout, is the vectorizer's.)
SHUTDOWN_STATES = frozenset({"57P01", "57P02", "57P03"})


def connect(dsn: str, application_name: str = "") -> psycopg.Connection[Any]:
    name = application_name or f"qvl-worker-{os.getpid()}"
    conn = psycopg.connect(dsn, autocommit=True, application_name=name, connect_timeout=10)
    # A row that row-level security hides from the worker's role must never pass for a deleted one
    # (its queue entry would be dropped, its vector never written): with row_security off, a query
    # that a policy would filter fails instead (pg_dump does the same), and the rows stay queued.
    conn.execute("SET row_security = off")
    return conn


def connection_lost(conn: psycopg.Connection[Any], exc: psycopg.Error) -> bool:
    state = exc.sqlstate or ""
    return conn.broken or conn.closed or state.startswith("08") or state in SHUTDOWN_STATES


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
class LaneLink:
    """One lane's connections; ``me`` marks the rows it claims (queue.claimed_by)."""

    me: str
    conn: psycopg.Connection[Any] | None = None
    client: Client | None = None

    def close_client(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def close_conn(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        self.close_client()
        self.close_conn()
