"""`qvl pg status`: every column of the view, and one clear line (exit 2) where qvl is not installed or
the database cannot be reached, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest

from tests.integration.postgres.conftest import ROOT, new_database
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.postgres


def qvl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qvl_cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_status_shows_every_column_of_the_view(qvl_db: str) -> None:
    with psycopg.connect(qvl_db, autocommit=True) as conn:
        cur = conn.execute("SELECT * FROM qvl.vectorizer_status")
        columns = [d.name for d in cur.description or []]
    done = qvl("pg", "status", "--dsn", qvl_db)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split("\t") == columns


def test_status_without_qvl_says_how_to_install(pg_server: PostgresServer) -> None:
    dsn = new_database(pg_server, "no_qvl_here")
    done = qvl("pg", "status", "--dsn", dsn)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "qvl is not installed in this database" in done.stderr and "qvl pg install" in done.stderr


def test_status_on_an_unreachable_database_is_one_line() -> None:
    done = qvl("pg", "status", "--dsn", "postgresql://nobody@127.0.0.1:1/none")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
