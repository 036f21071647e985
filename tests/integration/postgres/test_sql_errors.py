"""SQL errors without a traceback (issue 24, "what a new user hit"): an error of a public qvl function
keeps its SQLSTATE, message, detail and hint, and its CONTEXT is the one line of the function that
raised it again (PL/pgSQL's RAISE always writes that line), not PL/Python's traceback nor a line per
nested call (sql/idempotent/014_error_wrappers.sql)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connectors.postgres.installer import install
from tests.integration.postgres.conftest import git_history, images, new_database
from tests.support.postgres import PostgresServer, pg_bindir
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]

CREATE = ("regclass,text,text[],text[],text[],name,integer,text,text,text,text,text,text,text,text[],jsonb,"
          "boolean")
# (call, SQLSTATE, message, detail, hint, the function named by the one CONTEXT line)
CASES = [
    ("SELECT qvl.embed(text => 'a', dimensions => -3)", "22023",
     "plpy.Error: qvl: the model service refused the input: dimensions must be between 32 and 64, got -3",
     "embed 400: dimensions must be between 32 and 64, got -3",
     "Ask for dimensions the model gives: from 32 up to its size (SELECT qvl.service_info()), "
     "or NULL for all of them.", "qvl.embed(text,bytea,bytea,text,integer)"),
    ("SELECT * FROM qvl.search('nope', 'a query')", "42704", "plpy.Error: qvl: no vectorizer named 'nope'", None,
     "See SELECT name FROM qvl.vectorizer_status;", "qvl.search(text,text,integer,integer,boolean,text,integer)"),
    ("SELECT * FROM qvl.rerank_rows('nope', 'a query', ARRAY[1, 2])", "42704",
     "plpy.Error: qvl: no vectorizer named 'nope'", None, "See SELECT name FROM qvl.vectorizer_status;",
     "qvl.rerank_rows(text,text,anyarray,integer)"),
    ("SELECT qvl.create_vectorizer('notes', text_columns => ARRAY['nope'])", "42703",
     "qvl: public.notes has no column nope", None, "Its columns: id, body", f"qvl.create_vectorizer({CREATE})"),
]


def one_context_line(function: str) -> re.Pattern[str]:
    return re.compile(rf"PL/pgSQL function {re.escape(function)} line \d+ at RAISE")


@pytest.mark.parametrize("case", CASES, ids=["embed", "search", "rerank_rows", "create_vectorizer"])
def test_an_error_keeps_its_words_and_loses_the_traceback(conn: psycopg.Connection[Any], case: Any) -> None:
    call, sqlstate, message, detail, hint, function = case
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(call)
    diag = caught.value.diag
    assert (diag.sqlstate, diag.message_primary, diag.message_detail, diag.message_hint) == (
        sqlstate, message, detail, hint)
    assert diag.context is not None
    assert "Traceback" not in diag.context and "PL/Python" not in diag.context
    assert one_context_line(function).fullmatch(diag.context.strip()), diag.context


def test_psql_prints_the_error_its_hint_and_one_line(conn: psycopg.Connection[Any], qvl_db: str) -> None:
    done = subprocess.run([str(pg_bindir() / "psql"), "-X", "-c", "SELECT * FROM qvl.search('nope', 'a query')",
                           qvl_db], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith("PG")})
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[:2] == ["ERROR:  plpy.Error: qvl: no vectorizer named 'nope'",
                         "HINT:  See SELECT name FROM qvl.vectorizer_status;"]
    assert len(lines) == 3 and one_context_line(CASES[1][5]).fullmatch(lines[2].removeprefix("CONTEXT:  ")), lines


def test_no_public_function_is_left_in_python(conn: psycopg.Connection[Any]) -> None:
    """Each public PL/Python function became PL/pgSQL calling its body, qvl._raw_<name>, of the same
    signature (an upgrade from an older install too: the installer turns what the files make)."""
    assert conn.execute("SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
                        "WHERE p.pronamespace = 'qvl'::regnamespace AND l.lanname = 'plpython3u' "
                        "AND p.proname !~ '^_'").fetchall() == []
    rows = conn.execute("""
        SELECT p.proname, l.lanname, pg_get_function_arguments(p.oid) = pg_get_function_arguments(r.oid)
               AND pg_get_function_result(p.oid) = pg_get_function_result(r.oid)
               AND (p.provolatile, p.proretset, p.proisstrict) = (r.provolatile, r.proretset, r.proisstrict)
               AND p.proconfig IS NOT DISTINCT FROM r.proconfig
          FROM pg_proc r JOIN pg_language rl ON rl.oid = r.prolang AND rl.lanname = 'plpython3u'
          JOIN pg_proc p ON p.pronamespace = r.pronamespace AND '_raw_' || p.proname = r.proname
               AND p.proargtypes = r.proargtypes
          JOIN pg_language l ON l.oid = p.prolang
         WHERE r.pronamespace = 'qvl'::regnamespace AND r.proname ~ '^_raw_'""").fetchall()
    assert len(rows) == 22  # embed, embed_halfvec, query_embedding(_halfvec, _bit) x2, rerank x4, search x4, ...
    assert {name for name, _, _ in rows} == {"embed", "embed_halfvec", "query_embedding", "query_embedding_halfvec",
                                             "query_embedding_bit", "rerank", "search", "hybrid_search",
                                             "search_chunks", "service_info"}
    assert [r for r in rows if r[1:] != ("plpgsql", True)] == []



def test_an_upgrade_and_a_reinstall_leave_one_handler_and_no_python_under_a_public_name(
        pg_server: PostgresServer, service: ServiceProcess, request: pytest.FixtureRequest) -> None:
    """From version 13 (public functions in PL/Python, no handler) to now, then installed again twice."""
    dsn = new_database(pg_server, request.node.name)
    install(dsn, service_url=service.http_url, target=13)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
                            "WHERE p.oid = 'qvl.embed(text, bytea, bytea, text, int)'::regprocedure").fetchone() == (
            "plpython3u",)
        conn.execute("GRANT EXECUTE ON FUNCTION qvl.embed(text, bytea, bytea, text, int) TO pg_monitor")
    for _ in range(3):
        install(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
                            "WHERE p.pronamespace = 'qvl'::regnamespace AND l.lanname = 'plpython3u' "
                            "AND p.proname !~ '^_'").fetchone() == (0,)
        # One handler each, however many installs; a grant made on the old function stays with its name.
        handlers = conn.execute("SELECT DISTINCT (length(p.prosrc) - length(replace(p.prosrc, 'qvl:bare-errors', '')))"
                                " / length('qvl:bare-errors') FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
                                "WHERE p.pronamespace = 'qvl'::regnamespace AND p.proname !~ '^_' "
                                "AND l.lanname = 'plpgsql'").fetchall()
        assert handlers == [(1,)]
        assert conn.execute("SELECT has_function_privilege('pg_monitor', "
                            "'qvl.embed(text, bytea, bytea, text, int)', 'EXECUTE')").fetchone() == (True,)
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("SELECT * FROM qvl.search('nope', 'a query')")
        assert one_context_line(CASES[1][5]).fullmatch(caught.value.diag.context or ""), caught.value.diag.context


def test_hybrid_search_by_vector_on_a_chunked_vectorizer_names_itself_and_what_to_use(
        conn: psycopg.Connection[Any]) -> None:
    """Issue 24 leftover: the refusal came from the qvl.search it calls, whose hint names qvl.search."""
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("SELECT qvl.create_vectorizer('docs', text_columns => ARRAY['body'], "
                 "chunking => qvl.chunk_text(100, 10))")
    conn.execute("SELECT qvl.set_fulltext('docs', 'english')")
    with pytest.raises(psycopg.errors.FeatureNotSupported) as caught:
        conn.execute("SELECT * FROM qvl.hybrid_search('docs', 'a query', array_fill(0.1, ARRAY[64])::vector)")
    diag = caught.value.diag
    assert diag.message_primary == "qvl: vectorizer 'docs' keeps chunks; hybrid search reads one vector per row"
    assert diag.message_hint is not None and "qvl.search(" not in diag.message_hint
    assert diag.message_hint == ("qvl.hybrid_search fuses one vector per row with full text, and this vectorizer "
                                 "keeps a vector per chunk: search its chunks with qvl.search_chunks('docs', "
                                 "query_vector, k), or rank its rows by their best part from the application "
                                 "(connectors.postgres.search).")


# -- a sync vectorizer's trigger (issue 24 leftover) --------------------------------------------------------
SYNC_TRIGGER = "qvl._sync_embed()"
SYNC_MESSAGE = ("plpy.Error: qvl: the model service refused row 7 of public.shots: image 0 is not a recognised "
                "image (PNG, JPEG, WebP, GIF, BMP or TIFF)")
SYNC_DETAIL = "embed 400: item 0: image 0 is not a recognised image (PNG, JPEG, WebP, GIF, BMP or TIFF)"
SYNC_HINT = ("Fix or leave out that input: images must be PNG, JPEG, WebP, GIF, BMP or TIFF bytes, videos MP4, MOV, "
             "WebM, MKV or GIF bytes (or a bytea[] of frames), and a path/URI is read only where the service allows it "
             "(QVL_ALLOW_URI_SCHEMES, QVL_ALLOW_URI_ROOTS). Or create the vectorizer with on_error => 'queue' to "
             "store the row now and embed it later through the worker.")


def _sync_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE shots (id int PRIMARY KEY, caption text, image bytea)")
    conn.execute("SELECT qvl.create_vectorizer('shots', text_columns => ARRAY['caption'], "
                 "image_columns => ARRAY['image'], mode => 'sync', dimensions => 32)")


def test_a_sync_trigger_refusal_keeps_its_words_and_loses_the_traceback(conn: psycopg.Connection[Any]) -> None:
    """An INSERT the sync trigger refuses (an image that is none, on_error => 'raise'): the trigger's
    SQLSTATE, message (naming the row) and hint, and one CONTEXT line, its own RAISE."""
    _sync_table(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute("INSERT INTO shots VALUES (7, 'broken', 'junk'::bytea)")
    diag = caught.value.diag
    assert diag.message_primary is not None and "row 7 of public.shots" in diag.message_primary
    assert (diag.message_primary, diag.message_detail, diag.message_hint) == (SYNC_MESSAGE, SYNC_DETAIL, SYNC_HINT)
    assert diag.context is not None
    assert "Traceback" not in diag.context and "PL/Python" not in diag.context, diag.context
    assert one_context_line(SYNC_TRIGGER).fullmatch(diag.context.strip()), diag.context
    assert conn.execute("SELECT count(*) FROM shots").fetchone() == (0,)


def test_psql_prints_a_sync_trigger_refusal_its_hint_and_one_line(conn: psycopg.Connection[Any], qvl_db: str) -> None:
    _sync_table(conn)
    done = subprocess.run([str(pg_bindir() / "psql"), "-X", "-c", "INSERT INTO shots VALUES (7, 'broken', 'junk')",
                           qvl_db], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith("PG")})
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 4, lines
    assert lines[:2] == [f"ERROR:  {SYNC_MESSAGE}", f"DETAIL:  {SYNC_DETAIL}"], lines
    assert lines[2] == f"HINT:  {SYNC_HINT}", lines
    assert one_context_line(SYNC_TRIGGER).fullmatch(lines[3].removeprefix("CONTEXT:  ")), lines


# The last commit whose qvl._sync_embed was a PL/Python trigger function (its errors carried the traceback).
PYTHON_SYNC_TRIGGER = "1f353e2"


def install_at(commit: str, dsn: str, service_url: str, into: Path) -> None:
    """qvl pg install as the code of ``commit`` did it (its installer, sql/ and in-database library, from
    git history; skips without it), in a process of its own."""
    archive = git_history(commit, "archive", commit, "connectors", "sql")
    (into / "old.tar").write_bytes(archive)
    with tarfile.open(into / "old.tar") as tar:
        tar.extractall(into, filter="tar")
    code = f"from connectors.postgres.installer import install; install({dsn!r}, service_url={service_url!r})"
    done = subprocess.run([sys.executable, "-c", code], cwd=into, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(into)})
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_sync_trigger_made_before_keeps_its_oid_loses_the_traceback_and_embeds_alike(
        pg_server: PostgresServer, service: ServiceProcess, request: pytest.FixtureRequest,
        tmp_path: Path) -> None:
    """A database installed by the code whose sync trigger was PL/Python, with a sync vectorizer, takes
    this install: qvl._sync_embed changes language under the same oid, so the trigger made before calls
    the new one; it refuses a bad row without the traceback and embeds a row as the old one did."""
    dsn = new_database(pg_server, request.node.name)
    install_at(PYTHON_SYNC_TRIGGER, dsn, service.http_url, tmp_path)
    pic = images(1, offset=900)[0]
    trigger_function = ("SELECT g.oid, g.tgfoid, l.lanname FROM pg_trigger g JOIN pg_proc p ON p.oid = g.tgfoid "
                        "JOIN pg_language l ON l.oid = p.prolang WHERE g.tgname = 'zzz_qvl_1_insert'")
    with psycopg.connect(dsn, autocommit=True) as conn:
        _sync_table(conn)
        conn.execute("INSERT INTO shots VALUES (1, 'a red kite', %s)", (pic,))
        old_trigger, old_function, language = conn.execute(trigger_function).fetchone() or (None, None, None)
        assert language == "plpython3u"
        with pytest.raises(psycopg.errors.InvalidParameterValue) as before:
            conn.execute("INSERT INTO shots VALUES (7, 'broken', 'junk'::bytea)")
        assert "Traceback" in (before.value.diag.context or "")

        with psycopg.connect(dsn, autocommit=True) as old_session:
            old_session.execute("INSERT INTO shots VALUES (2, 'a red kite', %s)", (pic,))  # loads the old library
            install(dsn)
            assert conn.execute(trigger_function).fetchone() == (old_trigger, old_function, "plpgsql")
            old_session.execute("INSERT INTO shots VALUES (3, 'a red kite', %s)", (pic,))
        conn.execute("INSERT INTO shots VALUES (4, 'a red kite', %s)", (pic,))
        conn.execute("UPDATE shots SET caption = 'a blue kite' WHERE id = 2")
        conn.execute("UPDATE shots SET caption = 'a red kite' WHERE id = 2")
        vectors = conn.execute("SELECT id, embedding::text FROM shots ORDER BY id").fetchall()
        assert [i for i, _ in vectors] == [1, 2, 3, 4] and vectors[0][1] is not None
        assert {v for _, v in vectors} == {vectors[0][1]}, vectors  # the old trigger's vector, through the new

        with pytest.raises(psycopg.errors.InvalidParameterValue) as after:
            conn.execute("INSERT INTO shots VALUES (7, 'broken', 'junk'::bytea)")
        diag = after.value.diag
        assert (diag.message_primary, diag.message_detail, diag.message_hint) == (
            before.value.diag.message_primary, before.value.diag.message_detail, before.value.diag.message_hint)
        assert one_context_line(SYNC_TRIGGER).fullmatch((diag.context or "").strip()), diag.context
