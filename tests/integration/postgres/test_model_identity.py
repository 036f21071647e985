"""Model identity in Postgres (issue 23 item 2): a vectorizer records the fingerprint of the model its
vectors came from, and nothing lets another model's vectors join them or be ranked against them.

Two real services on two tiny checkpoints of the same name and shape (another seed: other weights), so
only the fingerprint tells them apart; real Postgres, the real worker, the real SQL functions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest

from connectors.client import Client
from qvl_devtools.tiny_model import build_checkpoint
from tests.integration.postgres.conftest import cosines, drain, running, vec, wait_until
from tests.support.fake_service import FakeService
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]

NAME = "tiny-qwen3-vl"  # both checkpoints' directory: the model name each service reports


@pytest.fixture(scope="module")
def other_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The tiny shape with another seed, under the same directory name as the fixture's checkpoint."""
    checkpoint = build_checkpoint(tmp_path_factory.mktemp("other-model") / NAME, seed=1)
    with ServiceProcess(embedding_model=str(checkpoint), reranker_model=str(checkpoint)) as svc:
        yield svc


def served(svc: ServiceProcess) -> tuple[str, str]:
    """(fingerprint, name) of the service's embedding model, as its Info says."""
    with Client(svc.grpc_target) as client:
        model = next(m for m in client.info().models if m.task == "embed")
    return model.fingerprint, model.name


def recorded(conn: psycopg.Connection[Any], name: str = "notes") -> tuple[Any, ...] | None:
    return conn.execute("SELECT model_fingerprint, model_name FROM qvl.vectorizer WHERE name = %s", (name,)).fetchone()


def notes(conn: psycopg.Connection[Any], rows: range, *, fulltext: bool = False) -> None:
    if conn.execute("SELECT to_regclass('notes')").fetchone() == (None,):
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => ARRAY['body'], dimensions => 32"
                     + (", fulltext => 'simple')" if fulltext else ")"))
    conn.execute("INSERT INTO notes SELECT i, 'a note about harbour number ' || i "
                 "FROM generate_series(%s::int, %s::int) i", (rows.start, rows.stop - 1))


def test_the_first_write_records_the_model(qvl_db: str, conn: psycopg.Connection[Any],
                                           service: ServiceProcess) -> None:
    notes(conn, range(1, 6))
    assert recorded(conn) == (None, None)  # nothing written yet: no model
    drain(qvl_db, service.grpc_target)
    assert conn.execute("SELECT count(*) FROM notes WHERE embedding IS NOT NULL").fetchone() == (5,)
    assert recorded(conn) == served(service)
    # qvl.vectorizer_status (what `qvl pg status` prints) shows it too.
    fingerprint, name = served(service)
    assert conn.execute("SELECT model_name, model_fingerprint FROM qvl.vectorizer_status").fetchone() == (
        name, fingerprint)


def test_another_model_holds_the_vectorizer(qvl_db: str, conn: psycopg.Connection[Any], service: ServiceProcess,
                                            other_service: ServiceProcess, caplog: pytest.LogCaptureFixture) -> None:
    notes(conn, range(1, 4))
    drain(qvl_db, service.grpc_target)
    before = conn.execute("SELECT id, embedding::text FROM notes ORDER BY id").fetchall()
    vid = conn.execute("SELECT id FROM qvl.vectorizer WHERE name = 'notes'").fetchone()[0]  # type: ignore[index]
    notes(conn, range(4, 7))
    fp_a, name = served(service)
    fp_b, _ = served(other_service)
    assert fp_a != fp_b

    def held() -> bool:
        rows = conn.execute("SELECT reason FROM qvl.worker_status WHERE reason LIKE '%reembed%'").fetchall()
        return bool(rows)

    caplog.set_level(logging.INFO, logger="qvl.worker")
    with running(qvl_db, other_service.grpc_target):
        try:
            wait_until(held, timeout=60, every=0.2)
        except TimeoutError:
            pytest.fail(f"no hold said; status {conn.execute('SELECT state, reason FROM qvl.worker_status').fetchall()}"
                        f", queue {conn.execute(f'SELECT id, attempts, last_error FROM qvl.queue_{vid}').fetchall()}")
        time.sleep(2.0)  # the hold's backoff ends (cap 1 s) and the worker tries again: still nothing written
        [(state, reason)] = conn.execute("SELECT state, reason FROM qvl.worker_status").fetchall()
        queued = conn.execute(f"SELECT id, attempts, last_error FROM qvl.queue_{vid} ORDER BY id").fetchall()
    # Both fingerprints, the model's name, and what to run.
    for words in (fp_a, fp_b, name, "SELECT qvl.reembed('notes') to move every row to the served model",
                  f"serve the model {fp_a} again", "vectorizer notes"):
        assert words in reason, (words, reason)
    assert state == "running"  # the other vectorizers go on
    # Rows stay queued, no attempt counted, nothing failed, nothing of the other model written.
    assert queued == [(4, 0, None), (5, 0, None), (6, 0, None)], queued
    assert conn.execute("SELECT count(*) FROM qvl.failed_items('notes')").fetchone() == (0,)
    assert conn.execute("SELECT id, embedding::text FROM notes WHERE id <= 3 ORDER BY id").fetchall() == before
    assert conn.execute("SELECT count(*) FROM notes WHERE embedding IS NOT NULL").fetchone() == (3,)
    assert recorded(conn) == (fp_a, name)
    logged = [r.getMessage() for r in caplog.records if "reembed" in r.getMessage()]
    assert logged and fp_a in logged[0] and fp_b in logged[0], [r.getMessage() for r in caplog.records][-10:]
    assert len(logged) == 1, logged  # said once, not on every try

    # The old model served again: the rows move on.
    drain(qvl_db, service.grpc_target)
    assert conn.execute("SELECT count(*) FROM notes WHERE embedding IS NOT NULL").fetchone() == (6,)
    assert recorded(conn) == (fp_a, name)


QUERIES = {
    "query_embedding": "SELECT qvl.query_embedding('notes', 'harbour') IS NOT NULL",
    "query in ORDER BY": "SELECT id FROM notes ORDER BY embedding <=> qvl.query_embedding('notes', 'harbour') LIMIT 2",
    "search": "SELECT pk FROM qvl.search('notes', 'harbour', k => 2, rerank => false)",
    "search typed": "SELECT key FROM qvl.search('notes', 'harbour', NULL::int, k => 2, rerank => false)",
    "hybrid_search": "SELECT pk FROM qvl.hybrid_search('notes', 'harbour', k => 2, rerank => false)",
}


def test_queries_refuse_another_model(qvl_db: str, conn: psycopg.Connection[Any], service: ServiceProcess,
                                      other_service: ServiceProcess) -> None:
    notes(conn, range(1, 4), fulltext=True)
    drain(qvl_db, service.grpc_target)
    fp_a, name = served(service)
    fp_b, _ = served(other_service)
    for sql in QUERIES.values():  # the model the vectors came from answers
        assert conn.execute(sql).fetchall()

    conn.execute("SELECT qvl.set_service(%s)", (other_service.http_url,))
    for what, sql in QUERIES.items():
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(sql).fetchall()
        diag = refused.value.diag
        assert refused.value.sqlstate == "55000", (what, refused.value.sqlstate, diag.message_primary)
        message = diag.message_primary or ""
        for words in ("vectorizer 'notes'", f"{name} (fingerprint {fp_a})", fp_b):
            assert words in message, (what, words, message)
        hint = diag.message_hint or ""
        assert "SELECT qvl.reembed('notes') to move every row to the served model" in hint, (what, hint)
        assert f"serve the model {fp_a} again" in hint, (what, hint)

    # A vectorizer with no model recorded yet (nothing written) pins nothing: any model answers.
    conn.execute("CREATE TABLE empty_notes (id int PRIMARY KEY, body text)")
    conn.execute("SELECT qvl.create_vectorizer('empty_notes', text_columns => ARRAY['body'], dimensions => 32)")
    assert conn.execute("SELECT qvl.query_embedding('empty_notes', 'harbour') IS NOT NULL").fetchone() == (True,)


def stored(conn: psycopg.Connection[Any]) -> dict[int, Any]:
    return {i: (None if e is None else vec(e)) for i, e in conn.execute("SELECT id, embedding::text FROM notes")}


def test_reembed_adopts_the_served_model(qvl_db: str, conn: psycopg.Connection[Any], service: ServiceProcess,
                                         other_service: ServiceProcess) -> None:
    notes(conn, range(1, 5), fulltext=True)
    drain(qvl_db, service.grpc_target)
    fp_a, name = served(service)
    fp_b, _ = served(other_service)
    old = stored(conn)

    # The same model served: qvl.reembed keeps the model and the vectors (search goes on meanwhile).
    assert conn.execute("SELECT qvl.reembed('notes')").fetchone() == (4,)
    assert recorded(conn) == (fp_a, name)
    assert all(v is not None for v in stored(conn).values())
    drain(qvl_db, service.grpc_target)

    # Another model served: qvl.reembed adopts it. The column is emptied at once, so the new model's
    # vectors never sit beside the old one's, and the next write records the new model.
    conn.execute("SELECT qvl.set_service(%s)", (other_service.http_url,))
    assert conn.execute("SELECT qvl.reembed('notes')").fetchone() == (4,)
    assert recorded(conn) == (None, None)
    assert stored(conn) == dict.fromkeys(old)
    assert conn.execute("SELECT count(*) FROM qvl.failed_items('notes')").fetchone() == (0,)
    drain(qvl_db, other_service.grpc_target)
    assert recorded(conn) == (fp_b, name)

    now = stored(conn)
    texts = dict(conn.execute("SELECT id, body FROM notes").fetchall())
    with Client(other_service.grpc_target) as client:
        want = client.embed([texts[i] for i in sorted(now)], dimensions=32)
    got = np.stack([now[i] for i in sorted(now)])
    assert (cosines(got, want) >= 0.9999).all(), cosines(got, want)  # every row: the new model's vector
    assert (cosines(got, np.stack([old[i] for i in sorted(old)])) < 0.99).all()  # and no longer the old one's
    for sql in QUERIES.values():  # the queries follow the new model
        assert conn.execute(sql).fetchall()


def test_sync_mode_records_and_pins_the_model(conn: psycopg.Connection[Any], service: ServiceProcess,
                                              other_service: ServiceProcess) -> None:
    conn.execute("CREATE TABLE quick (id int PRIMARY KEY, body text)")
    conn.execute("SELECT qvl.create_vectorizer('quick', text_columns => ARRAY['body'], dimensions => 32, "
                 "mode => 'sync')")
    conn.execute("INSERT INTO quick VALUES (1, 'a harbour at dusk')")  # embedded by the trigger
    assert recorded(conn, "quick") == served(service)

    fp_a, _ = served(service)
    conn.execute("SELECT qvl.set_service(%s)", (other_service.http_url,))
    with pytest.raises(psycopg.Error) as refused:
        conn.execute("INSERT INTO quick VALUES (2, 'a boat')")
    assert refused.value.sqlstate == "55000", refused.value.diag.message_primary
    assert fp_a in (refused.value.diag.message_primary or "")
    assert "SELECT qvl.reembed('quick')" in (refused.value.diag.message_hint or "")
    assert conn.execute("SELECT count(*) FROM quick").fetchone() == (1,)  # nothing of the other model stored


def test_a_first_write_of_another_model_than_the_one_recorded_meanwhile_is_rolled_back(
        qvl_db: str, conn: psycopg.Connection[Any], fake: FakeService) -> None:
    """Two workers on replicas of two models, and no model recorded yet: the first write records its
    model; the other's write, whose vectors came from another model, must not land beside them. The
    fake service announces one model and holds the batch while "the other worker" records another."""
    fake.fake.fingerprint = "aaaaaaaaaaaaaaaa"
    in_hand, go = threading.Event(), threading.Event()

    def held(text: str) -> None:
        in_hand.set()
        go.wait(30)

    fake.fake.behave = held
    notes(conn, range(1, 4))
    vid = conn.execute("SELECT id FROM qvl.vectorizer WHERE name = 'notes'").fetchone()[0]  # type: ignore[index]
    with running(qvl_db, fake.target, batch=3):
        assert in_hand.wait(30)
        conn.execute("SELECT qvl._record_model(%s, 'bbbbbbbbbbbbbbbb', 'other')", (vid,))
        go.set()
        wait_until(lambda: bool(conn.execute("SELECT 1 FROM qvl.worker_status WHERE reason LIKE '%reembed%'")
                                .fetchall()), timeout=30, every=0.1)
        [(reason,)] = conn.execute("SELECT reason FROM qvl.worker_status").fetchall()
        queued = conn.execute(f"SELECT id, attempts FROM qvl.queue_{vid} ORDER BY id").fetchall()
    assert "other (fingerprint bbbbbbbbbbbbbbbb)" in reason and "aaaaaaaaaaaaaaaa" in reason, reason
    assert queued == [(1, 0), (2, 0), (3, 0)], queued  # given back uncounted
    assert conn.execute("SELECT count(*) FROM notes WHERE embedding IS NOT NULL").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM qvl.failed_items('notes')").fetchone() == (0,)
    assert recorded(conn) == ("bbbbbbbbbbbbbbbb", "other")
