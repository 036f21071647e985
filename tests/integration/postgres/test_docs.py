"""Every SQL block of docs/postgres.md's cookbook runs, in order, against a real database."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.postgres.conftest import drain, images
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]

DOC = Path(__file__).parents[3] / "docs" / "postgres.md"
MEDIA = Path(__file__).parents[2] / "fixtures" / "media"
BLOCK = re.compile(r"<!-- test: (setup|query) -->\s*```sql\n(.*?)```", re.S)
ANY_BLOCK = re.compile(r"(<!-- (?:test: (?:setup|query)|signatures) -->\s*)?```sql\n(.*?)```", re.S)
SIGNATURES = re.compile(r"<!-- signatures -->\s*```sql\n(.*?)```", re.S)


def fill(conn: psycopg.Connection[Any], table: str) -> None:
    """What an application would insert after each table is created."""
    with conn.cursor() as cur:
        if table == "photos":
            pics = images(12, offset=900)
            words = ["harbour at night", "a dog on a beach", "a red bicycle", "city lights"]
            cur.executemany("INSERT INTO photos VALUES (%s, %s, %s, %s)",
                            [(i, f"{words[i % 4]} {i}", pics[i], datetime.date(2023 + i % 3, 1 + i % 12, 1))
                             for i in range(12)])
        elif table == "articles":
            cur.executemany("INSERT INTO articles VALUES (%s, %s, %s)",
                            [(i, f"title {i}", f"body of article {i}") for i in range(5)])
        elif table == "posts":
            cur.executemany("INSERT INTO posts VALUES (%s, %s, %s)",
                            [(1 + i % 2, f"post-{i}", f"opening hours of shop {i}") for i in range(6)])
        elif table == "clips":
            frames = [[f.read_bytes() for f in sorted((MEDIA / clip).glob("frame_*.png"))]
                      for clip in ("clipA", "clipB")]
            cur.executemany("INSERT INTO clips VALUES (%s, %s, %s)",
                            [(0, "clip A", frames[0]), (1, "clip B", frames[1])])


def test_every_sql_block_runs_or_names_functions_that_exist(conn: psycopg.Connection[Any]) -> None:
    """An SQL block is a cookbook example (run below) or a list of signatures, whose functions exist."""
    text = DOC.read_text(encoding="utf-8")
    unmarked = [sql[:80] for marker, sql in ANY_BLOCK.findall(text) if not marker]
    assert unmarked == [], "mark each ```sql block <!-- test: setup|query --> or <!-- signatures -->"
    named = {name for block in SIGNATURES.findall(text) for name in re.findall(r"\bqvl\.(\w+)\(", block)}
    assert len(named) >= 12
    found = {name for name, in conn.execute("SELECT proname FROM pg_proc WHERE pronamespace = 'qvl'::regnamespace "
                                            "AND proname = ANY(%s)", (sorted(named),))}
    assert found == named


def test_cookbook_runs(conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess) -> None:
    blocks = BLOCK.findall(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 10
    dirty = False
    for kind, sql in blocks:
        if kind == "setup":
            conn.execute(sql)
            for table in re.findall(r"CREATE TABLE (\w+)", sql):
                fill(conn, table)
            dirty = True
            continue
        if dirty:
            drain(qvl_db, service.grpc_target)
            dirty = False
        cur = conn.execute(sql)
        while cur.nextset():  # several statements: check the last one's rows
            pass
        assert cur.description is not None, sql
        assert cur.fetchall(), sql
    assert conn.execute("SELECT embedding IS NOT NULL FROM products WHERE id = 1").fetchone() == (True,)
    assert conn.execute("SELECT sum(pending) FROM qvl.vectorizer_status").fetchone() == (0,)
