"""Every SQL block of docs/postgres.md's cookbook runs, in order, against a real database; so do its
SQLAlchemy block and docs/scaling.md's SQL (the blocks marked ``runs:`` this file)."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import URL

from tests.integration.postgres.conftest import drain, images
from tests.support.doc_snippets import run_by
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]

DOC = Path(__file__).parents[3] / "docs" / "postgres.md"
SCALING = DOC.with_name("scaling.md")
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


def test_cookbook_runs(conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess,
                       monkeypatch: pytest.MonkeyPatch) -> None:
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

    # The SQLAlchemy block, on the cookbook's photos (its DATABASE_URL: this database).
    [block] = run_by(DOC, __file__)
    info = conninfo_to_dict(qvl_db)
    url = URL.create("postgresql+psycopg", username=str(info["user"]), host=str(info["host"]),
                     port=int(info["port"]), database=str(info["dbname"]))
    monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False))
    ns: dict[str, Any] = {}
    # The documentation's own code, as a user runs it (not under this file's __future__ annotations).
    exec(compile(block, str(DOC), "exec", dont_inherit=True), ns)
    ns["engine"].dispose()
    day = datetime.date(2024, 1, 1)
    assert ns["nearest"] and all(p.taken_on >= day for p in ns["nearest"])
    scores = [score for _, score in ns["rows"]]
    assert 0 < len(scores) <= 5 and scores == sorted(scores, reverse=True)
    assert all(photo.taken_on >= day for photo, _ in ns["rows"])
    assert ns["fused"] and 0 < len(ns["reranked"]) <= 5 and sorted(ns["ranked"]) == [1, 2]


def test_the_service_list_of_scaling_md_is_taken(conn: psycopg.Connection[Any]) -> None:
    [block] = run_by(SCALING, __file__, "sql")
    with conn.transaction(force_rollback=True):
        conn.execute(block)
        assert conn.execute("SELECT url FROM qvl.service").fetchone() == ("http://qvl-a:8080,http://qvl-b:8080",)


def recipe(heading: str) -> str:
    """The SQL block under the cookbook's ``### <heading>``."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"### {heading}")
    return BLOCK.findall(text[start:text.index("\n## ", start)])[0][1]


def test_binary_quantization_takes_the_vectors_width_and_skips_failed_rows(
        conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess) -> None:
    """The recipe's bits are as wide as the vectors (a cast to another width pads with zeros, or
    cuts, without a word), and a row whose embedding failed (NULL) is not answered with a NULL
    distance. Four photos and a broken one: fewer than the recipe's LIMIT 10."""
    conn.execute(BLOCK.findall(DOC.read_text(encoding="utf-8"))[0][1])  # CREATE TABLE photos, its vectorizer
    pics = images(4, offset=950)
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO photos VALUES (%s, %s, %s, %s)",
                        [(i, f"photo {i}", pics[i], datetime.date(2024, 1, 1)) for i in range(4)]
                        + [(4, "broken", b"not an image", datetime.date(2024, 1, 1))])
    drain(qvl_db, service.grpc_target)
    assert conn.execute("SELECT count(*) FROM qvl.failed_items('photos')").fetchone() == (1,)
    width = conn.execute("SELECT vector_dims(embedding) FROM photos WHERE id = 0").fetchone()
    assert width == (64,)  # the tiny test model

    cur = conn.execute(recipe("Binary quantization with re-scoring"))
    while cur.nextset():
        pass
    rows = cur.fetchall()
    assert sorted(r[0] for r in rows) == [0, 1, 2, 3], rows  # the broken photo is not an answer
    assert all(r[1] is not None for r in rows), rows
    [index] = conn.execute("SELECT pg_get_indexdef('photos_embedding_bits'::regclass)").fetchone() or ()
    assert "::bit(64)" in index, index
