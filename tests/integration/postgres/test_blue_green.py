"""Blue/green model upgrades in Postgres (issue 23 item 3): a shadow column filled from a second service
while queries keep the old column and the old service, one switch of both, the old column dropped on
request.

Two real services on two tiny checkpoints of the same name and shape (another seed), real Postgres, the
real worker (one on each service: ``shadow=True`` embeds the shadows only), the real SQL functions.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import psycopg
import pytest

from connectors.client import Client
from tests.integration.postgres.conftest import cosines, drain, running, served, vec, wait_until
from tests.support.doc_snippets import ROOT, run_by
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service, pytest.mark.lifecycle]

SEARCH = "SELECT pk, distance FROM qvl.search('notes', 'harbour', k => 3, rerank => false)"
DOC = ROOT / "docs" / "model-upgrades.md"  # its recipe's SQL: make the shadow, switch, the bounded switch, drop


def notes(conn: psycopg.Connection[Any], rows: range) -> None:
    if conn.execute("SELECT to_regclass('notes')").fetchone() == (None,):
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => ARRAY['body'], dimensions => 32)")
    conn.execute("INSERT INTO notes SELECT i, 'a note about harbour number ' || i "
                 "FROM generate_series(%s::int, %s::int) i", (rows.start, rows.stop - 1))


def column(conn: psycopg.Connection[Any], name: str) -> dict[int, Any]:
    return {i: (None if e is None else vec(e))
            for i, e in conn.execute(f"SELECT id, {name}::text FROM notes ORDER BY id").fetchall()}


def model_vectors(svc: ServiceProcess, conn: psycopg.Connection[Any], ids: list[int]) -> np.ndarray:
    texts = dict(conn.execute("SELECT id, body FROM notes").fetchall())
    with Client(svc.grpc_target) as client:
        return client.embed([texts[i] for i in ids], dimensions=32)


def shadow_status(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
    return conn.execute("SELECT shadow_column, shadow_done, shadow_total, shadow_model_fingerprint "
                        "FROM qvl.vectorizer_status WHERE name = 'notes'").fetchone()


def test_a_shadow_is_filled_from_the_new_service_and_switched_in_one_step(
        qvl_db: str, conn: psycopg.Connection[Any], service: ServiceProcess, new_service: ServiceProcess) -> None:
    notes(conn, range(1, 5))
    drain(qvl_db, service.grpc_target)
    fp_old, fp_new = served(service), served(new_service)
    old = column(conn, "embedding")
    before = conn.execute(SEARCH).fetchall()

    make, switch, _, drop_old = run_by(DOC, __file__, "sql")  # (the third: the lock wait's test)
    # The shadow: a column of the new model's size, its service and model recorded, every row queued for it.
    assert conn.execute(make.replace("http://qvl-new:8080", new_service.http_url)).fetchone() == (4,)
    assert conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'notes'::regclass "
                        "AND attname = 'embedding_v2'").fetchone() == ("vector(32)",)
    assert shadow_status(conn) == ("embedding_v2", 0, 4, fp_new)
    # The switch waits for a complete shadow, and says how much is left.
    with pytest.raises(psycopg.Error) as refused:
        conn.execute("SELECT qvl.switch_vectorizer('notes')")
    assert refused.value.sqlstate == "55000", refused.value.diag.message_primary
    assert "4 of 4 rows" in (refused.value.diag.message_primary or ""), refused.value.diag.message_primary
    assert "qvl worker" in (refused.value.diag.message_hint or ""), refused.value.diag.message_hint

    # A row written meanwhile goes to both: the live column from the old service, the shadow from the new.
    notes(conn, range(5, 6))
    drain(qvl_db, service.grpc_target)  # the live worker: the shadow is not its to fill
    assert column(conn, "embedding_v2") == dict.fromkeys(range(1, 6))
    assert conn.execute(SEARCH).fetchall() == before  # queries keep the old column and the old service
    drain(qvl_db, new_service.grpc_target, shadow=True)
    assert shadow_status(conn) == ("embedding_v2", 5, 5, fp_new)
    ids = list(range(1, 6))
    live, shadow = column(conn, "embedding"), column(conn, "embedding_v2")
    assert (cosines(np.stack([live[i] for i in ids]), model_vectors(service, conn, ids)) >= 0.9999).all()
    assert (cosines(np.stack([shadow[i] for i in ids]), model_vectors(new_service, conn, ids)) >= 0.9999).all()
    assert conn.execute("SELECT model_fingerprint FROM qvl.vectorizer WHERE name = 'notes'").fetchone() == (fp_old,)

    # The switch: the shadow column, its service and its model become the vectorizer's at once.
    conn.execute(switch)
    assert conn.execute("SELECT destination, model_fingerprint, service_url FROM qvl.vectorizer "
                        "WHERE name = 'notes'").fetchone() == ("embedding_v2", fp_new, new_service.http_url)
    after = conn.execute(SEARCH).fetchall()  # asked of the new service (qvl.service still names the old one)
    assert after and after != before
    q = conn.execute("SELECT qvl.query_embedding('notes', 'harbour')::text").fetchone()[0]  # type: ignore[index]
    for pk, distance in after:
        assert abs(distance - (1 - cosines(vec(q), shadow[int(pk)]))) < 1e-4, (pk, distance)
    # The old column stays (a way back) until dropped on request; new rows fill the new column only.
    kept = column(conn, "embedding")
    assert all(np.array_equal(kept[i], (old | {5: live[5]})[i]) for i in ids) and kept.keys() == set(ids)
    notes(conn, range(6, 7))
    drain(qvl_db, new_service.grpc_target)
    assert column(conn, "embedding_v2")[6] is not None and column(conn, "embedding")[6] is None
    conn.execute(drop_old)
    assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'notes'::regclass "
                        "AND attname = 'embedding' AND NOT attisdropped").fetchone() == (0,)
    assert shadow_status(conn) == (None, None, None, None)


def test_a_shadow_can_be_abandoned(qvl_db: str, conn: psycopg.Connection[Any], service: ServiceProcess,
                                   new_service: ServiceProcess) -> None:
    notes(conn, range(1, 3))
    drain(qvl_db, service.grpc_target)
    vid = conn.execute("SELECT id FROM qvl.vectorizer WHERE name = 'notes'").fetchone()[0]  # type: ignore[index]
    conn.execute("SELECT qvl.reembed('notes', service => %s, shadow => 'embedding_v2')", (new_service.http_url,))
    with pytest.raises(psycopg.Error) as twice:
        conn.execute("SELECT qvl.reembed('notes', service => %s, shadow => 'embedding_v3')", (new_service.http_url,))
    assert twice.value.sqlstate == "55000" and "embedding_v2" in (twice.value.diag.message_primary or "")
    conn.execute("SELECT qvl.abandon_shadow('notes')")
    assert conn.execute("SELECT to_regclass(%s)", (f"qvl.shadow_queue_{vid}",)).fetchone() == (None,)
    assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'notes'::regclass "
                        "AND attname = 'embedding_v2' AND NOT attisdropped").fetchone() == (0,)
    notes(conn, range(3, 4))  # the table's writes go on without the shadow
    drain(qvl_db, service.grpc_target)
    assert column(conn, "embedding")[3] is not None


def test_bad_shadow_requests_are_refused_clearly(conn: psycopg.Connection[Any], new_service: ServiceProcess) -> None:
    notes(conn, range(1, 2))
    for args, words in ((("embedding",), "already"), (("body",), "already")):
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("SELECT qvl.reembed('notes', service => %s, shadow => %s)", (new_service.http_url, *args))
        assert words in (refused.value.diag.message_primary or ""), refused.value.diag.message_primary
    with pytest.raises(psycopg.Error) as unreachable:
        conn.execute("SELECT qvl.reembed('notes', service => 'http://127.0.0.1:9', shadow => 'embedding_v2')")
    assert "127.0.0.1:9" in (unreachable.value.diag.message_primary or ""), unreachable.value.diag.message_primary
    with pytest.raises(psycopg.Error) as nothing:
        conn.execute("SELECT qvl.switch_vectorizer('notes')")
    assert "no shadow" in (nothing.value.diag.message_primary or ""), nothing.value.diag.message_primary


def test_a_switch_under_inserts_and_searches_shows_no_error_and_no_mixed_answer(
        qvl_db: str, conn: psycopg.Connection[Any], service: ServiceProcess, new_service: ServiceProcess) -> None:
    """Threads insert rows and search all along, while the shadow fills and the switch happens: every search
    answers, and each answer's distances are those of one model (its query vector against that model's
    column), old ones first, then only new ones."""
    notes(conn, range(1, 21))
    drain(qvl_db, service.grpc_target)
    q_old = vec(conn.execute("SELECT qvl.query_embedding('notes', 'harbour')::text").fetchone()[0])  # type: ignore[index]
    conn.execute("SELECT qvl.reembed('notes', service => %s, shadow => 'embedding_v2')", (new_service.http_url,))
    stop = threading.Event()
    answers: list[tuple[str, list[tuple[str, float]]]] = []  # (thread, answer) in each thread's order
    errors: list[str] = []
    inserted = [20]

    def insert() -> None:
        with psycopg.connect(qvl_db, autocommit=True) as c:
            while not stop.is_set():
                inserted[0] += 1
                c.execute("INSERT INTO notes VALUES (%s, %s)", (inserted[0], f"a harbour crane number {inserted[0]}"))
                time.sleep(0.05)

    def search() -> None:
        with psycopg.connect(qvl_db, autocommit=True) as c:
            while not stop.is_set():
                try:
                    rows = c.execute("SELECT pk, distance FROM qvl.search('notes', 'harbour', k => 5, "
                                     "rerank => false)").fetchall()
                    answers.append((threading.current_thread().name, [(str(p), float(d)) for p, d in rows]))
                except psycopg.Error as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=f, daemon=True) for f in (insert, search, search)]
    with contextlib.ExitStack() as stack:
        live = stack.enter_context(running(qvl_db, service.grpc_target))
        stack.enter_context(running(qvl_db, new_service.grpc_target, shadow=True))
        for t in threads:
            t.start()
        # Both searchers answer (from the old column) before the switch is tried.
        wait_until(lambda: len({thread for thread, _ in answers}) == 2, timeout=60, every=0.05)
        switched_at = None
        deadline = time.monotonic() + 120
        while switched_at is None and time.monotonic() < deadline:
            try:
                conn.execute("SELECT qvl.switch_vectorizer('notes')")
                switched_at = time.monotonic()
            except psycopg.errors.ObjectNotInPrerequisiteState:
                time.sleep(0.2)  # the shadow is not complete yet: rows keep coming
        assert switched_at is not None, "the shadow never completed under the inserts"
        live.stop()  # the old model's worker goes; one on the new service takes the vectorizer's own queue
        stack.enter_context(running(qvl_db, new_service.grpc_target))
        time.sleep(3.0)
        stop.set()
        for t in threads:
            t.join(30)
        assert conn.execute("SELECT qvl.wait_for_embeddings('notes', '60 seconds')").fetchone() == (True,)
    assert not errors, errors[:5]
    q_new = vec(conn.execute("SELECT qvl.query_embedding('notes', 'harbour')::text").fetchone()[0])  # type: ignore[index]
    old, new = column(conn, "embedding"), column(conn, "embedding_v2")

    def fits(answer: list[tuple[str, float]], q: np.ndarray, col: dict[int, Any]) -> bool:
        return all(col.get(int(pk)) is not None and abs(d - (1 - float(cosines(q, col[int(pk)])))) < 1e-4
                   for pk, d in answer)

    kinds: dict[str, list[str]] = {}
    for thread, answer in answers:
        assert answer, "a search found nothing"
        by_old, by_new = fits(answer, q_old, old), fits(answer, q_new, new)
        assert by_old != by_new, (answer, by_old, by_new)  # exactly one model's distances: never a mix
        kinds.setdefault(thread, []).append("old" if by_old else "new")
    for seen in kinds.values():  # each searcher: old answers, then from the switch on only new ones
        assert "old" in seen and "new" in seen, seen
        assert seen == sorted(seen, key=lambda k: k == "new"), "an old answer after a new one"
    print(f"searches: {len(answers)} ({sum(k.count('old') for k in kinds.values())} old, "
          f"{sum(k.count('new') for k in kinds.values())} new), rows inserted meanwhile: {inserted[0] - 20}")
    assert conn.execute("SELECT count(*) FROM notes WHERE embedding_v2 IS NULL").fetchone() == (0,)
    assert inserted[0] > 25, inserted  # rows kept coming all along


def test_a_shadow_worker_on_another_model_holds_the_shadow(
        qvl_db: str, conn: psycopg.Connection[Any], service: ServiceProcess, new_service: ServiceProcess) -> None:
    """The shadow is pinned to the new model: a --shadow worker started on the old service writes nothing
    into it, fails no row, counts no attempt, and says what to run."""
    notes(conn, range(1, 4))
    drain(qvl_db, service.grpc_target)
    vid = conn.execute("SELECT id FROM qvl.vectorizer WHERE name = 'notes'").fetchone()[0]  # type: ignore[index]
    conn.execute("SELECT qvl.reembed('notes', service => %s, shadow => 'embedding_v2')", (new_service.http_url,))
    fp_new = served(new_service)

    def held() -> bool:
        return bool(conn.execute("SELECT 1 FROM qvl.worker_status WHERE reason LIKE '%abandon_shadow%'").fetchall())

    with running(qvl_db, service.grpc_target, shadow=True):
        wait_until(held, timeout=60, every=0.2)
        [(reason,)] = conn.execute("SELECT reason FROM qvl.worker_status").fetchall()
    for words in ("shadow column embedding_v2", fp_new, "qvl worker --shadow", "SELECT qvl.abandon_shadow('notes')"):
        assert words in reason, (words, reason)
    assert conn.execute(f"SELECT id, attempts FROM qvl.shadow_queue_{vid} ORDER BY id").fetchall() == [
        (1, 0), (2, 0), (3, 0)]
    assert conn.execute(f"SELECT count(*) FROM qvl.shadow_failed_{vid}").fetchone() == (0,)
    assert column(conn, "embedding_v2") == dict.fromkeys(range(1, 4))
    drain(qvl_db, new_service.grpc_target, shadow=True)  # the new model's worker fills it
    assert all(v is not None for v in column(conn, "embedding_v2").values())


def test_the_switch_waits_for_its_locks_at_most_lock_timeout(
        qvl_db: str, conn: psycopg.Connection[Any], service: ServiceProcess, new_service: ServiceProcess) -> None:
    """A transaction that keeps writing the table holds the lock the switch needs: the switch gives up after
    lock_timeout (55P03, nothing changed, the holder named), so the writers queued behind it go on."""
    notes(conn, range(1, 3))
    drain(qvl_db, service.grpc_target)
    conn.execute("SELECT qvl.reembed('notes', service => %s, shadow => 'embedding_v2')", (new_service.http_url,))
    drain(qvl_db, new_service.grpc_target, shadow=True)
    with psycopg.connect(qvl_db) as holder:  # a transaction left open after a write
        holder.execute("INSERT INTO notes VALUES (100, 'a long transaction')")
        waited: dict[str, float] = {}

        def writer() -> None:  # comes after the switch started waiting: queued behind its lock request
            time.sleep(0.3)
            with psycopg.connect(qvl_db, autocommit=True) as c:
                c.execute("INSERT INTO notes VALUES (101, 'another writer')")
            waited["writer"] = time.monotonic() - started

        other = threading.Thread(target=writer)
        bounded = run_by(DOC, __file__, "sql")[2]  # lock_timeout => '1 second'
        started = time.monotonic()
        other.start()
        with pytest.raises(psycopg.errors.LockNotAvailable) as refused:
            conn.execute(bounded)
        waited["switch"] = time.monotonic() - started
        other.join(30)
        assert 0.9 < waited["switch"] < 4, waited
        assert 0.8 < waited["writer"] < waited["switch"] + 2, waited  # queued behind the switch until it gave up
        message, hint = refused.value.diag.message_primary or "", refused.value.diag.message_hint or ""
        assert "gave up; nothing changed" in message, message
        assert f"pid {holder.info.backend_pid}" in hint and "Retry" in hint, hint
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):  # the default wait: 5 seconds
            conn.execute("SELECT qvl.switch_vectorizer('notes')")
        assert 4.9 < time.monotonic() - started < 8
        assert conn.execute("SELECT destination FROM qvl.vectorizer").fetchone() == ("embedding",)
        holder.rollback()
    drain(qvl_db, new_service.grpc_target, shadow=True)  # (row 101)
    assert conn.execute("SELECT qvl.switch_vectorizer('notes')").fetchone() == (True,)
    assert conn.execute("SHOW lock_timeout").fetchone() == ("0",)  # the session's own setting is left alone


def test_a_switch_goes_back_to_the_old_column_kept_complete(
        qvl_db: str, conn: psycopg.Connection[Any], service: ServiceProcess, new_service: ServiceProcess) -> None:
    """After a switch the old column is the shadow: rows written since are queued for it, a worker of the old
    model keeps it complete, and back => true switches to it (and its service and model) the same way."""
    notes(conn, range(1, 4))
    drain(qvl_db, service.grpc_target)
    fp_old, fp_new = served(service), served(new_service)
    vid = conn.execute("SELECT id FROM qvl.vectorizer WHERE name = 'notes'").fetchone()[0]  # type: ignore[index]
    q_old = vec(conn.execute("SELECT qvl.query_embedding('notes', 'harbour')::text").fetchone()[0])  # type: ignore[index]
    conn.execute("SELECT qvl.reembed('notes', service => %s, shadow => 'embedding_v2')", (new_service.http_url,))
    drain(qvl_db, new_service.grpc_target, shadow=True)
    conn.execute("SELECT qvl.switch_vectorizer('notes')")
    notes(conn, range(4, 5))  # written after the switch: queued for both sides
    drain(qvl_db, new_service.grpc_target)
    assert conn.execute(f"SELECT id FROM qvl.shadow_queue_{vid}").fetchall() == [(4,)]
    assert shadow_status(conn) == ("embedding", 3, 4, fp_old)
    with pytest.raises(psycopg.Error) as incomplete:
        conn.execute("SELECT qvl.switch_vectorizer('notes', back => true)")
    assert incomplete.value.sqlstate == "55000"
    assert "old side embedding is not complete: 1 of 4 rows" in (incomplete.value.diag.message_primary or "")
    drain(qvl_db, service.grpc_target, shadow=True)  # the old model's worker keeps the old side complete
    assert (cosines(column(conn, "embedding")[4], model_vectors(service, conn, [4])) >= 0.9999).all()
    conn.execute("SELECT qvl.switch_vectorizer('notes', back => true)")
    assert conn.execute("SELECT destination, model_fingerprint, service_url FROM qvl.vectorizer").fetchone() == (
        "embedding", fp_old, None)
    old = column(conn, "embedding")
    answer = conn.execute(SEARCH).fetchall()
    assert answer and all(abs(d - (1 - cosines(q_old, old[int(pk)]))) < 1e-4 for pk, d in answer)
    assert shadow_status(conn) == ("embedding_v2", 4, 4, fp_new)  # the new side is the one kept now
    conn.execute("SELECT qvl.drop_old_column('notes')")
    assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'notes'::regclass "
                        "AND attname = 'embedding_v2' AND NOT attisdropped").fetchone() == (0,)
    assert conn.execute("SELECT to_regclass(%s)", (f"qvl.shadow_queue_{vid}",)).fetchone() == (None,)


class SlowProxy:
    """An HTTP hop to a real service that holds each POST (an embedding) for ``delay_s`` once told to: a search
    that has resolved its vectorizer stays in flight that long."""

    def __init__(self, upstream: str) -> None:
        self.delay_s = 0.0
        self.started = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self, body: bytes | None) -> None:
                request = urllib.request.Request(upstream + self.path, data=body, method=self.command,
                                                 headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
                try:
                    with urllib.request.urlopen(request, timeout=30) as answer:
                        status, headers, data = answer.status, answer.headers.items(), answer.read()
                except urllib.error.HTTPError as exc:
                    status, headers, data = exc.code, exc.headers.items(), exc.read()
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if proxy.delay_s:
                    proxy.started.set()
                    time.sleep(proxy.delay_s)
                self._forward(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_dropping_the_old_column_waits_for_a_search_that_resolved_it(
        qvl_db: str, conn: psycopg.Connection[Any], service: ServiceProcess, new_service: ServiceProcess) -> None:
    """A search resolves the vectorizer (its column and service), then waits for its query's embedding; a switch
    back and qvl.drop_old_column of the column it resolved happen meanwhile: the search still answers, from
    that column, and the drop waits for it (its transaction's hold on the vectorizer)."""
    notes(conn, range(1, 4))
    drain(qvl_db, service.grpc_target)
    proxy = SlowProxy(new_service.http_url)
    try:
        conn.execute("SELECT qvl.reembed('notes', service => %s, shadow => 'embedding_v2')", (proxy.url,))
        drain(qvl_db, new_service.grpc_target, shadow=True)
        conn.execute("SELECT qvl.switch_vectorizer('notes')")  # live: embedding_v2, asked through the proxy
        q_new = vec(conn.execute("SELECT qvl.query_embedding('notes', 'harbour')::text").fetchone()[0])  # type: ignore[index]
        new = column(conn, "embedding_v2")
        proxy.delay_s = 3.0
        got: dict[str, Any] = {}

        def search() -> None:
            with psycopg.connect(qvl_db, autocommit=True) as c:
                try:
                    got["answer"] = c.execute(SEARCH).fetchall()
                except psycopg.Error as exc:
                    got["error"] = f"{type(exc).__name__}: {exc}"
                got["done"] = time.monotonic()

        searcher = threading.Thread(target=search)
        searcher.start()
        assert proxy.started.wait(30)  # the search resolved embedding_v2 and waits for its query vector
        conn.execute("SELECT qvl.switch_vectorizer('notes', back => true)")
        conn.execute("SELECT qvl.drop_old_column('notes')")  # embedding_v2
        dropped = time.monotonic()
        searcher.join(30)
    finally:
        proxy.close()
    assert "error" not in got, got["error"]
    assert got["answer"] and all(abs(d - (1 - cosines(q_new, new[int(pk)]))) < 1e-4 for pk, d in got["answer"])
    assert dropped >= got["done"] - 0.5  # the drop waited for the search's transaction
    assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'notes'::regclass "
                        "AND attname = 'embedding_v2' AND NOT attisdropped").fetchone() == (0,)


def test_shadow_total_follows_the_table_without_counting_it(
        qvl_db: str, conn: psycopg.Connection[Any], new_service: ServiceProcess) -> None:
    """shadow_total is the table's row count through inserts (one row, many, COPY), deletes and TRUNCATE,
    summed from the shadow's deltas instead of counting the table at each status read (timed here on 20k
    rows against the count it replaced)."""
    notes(conn, range(1, 20001))
    vid = conn.execute("SELECT id FROM qvl.vectorizer WHERE name = 'notes'").fetchone()[0]  # type: ignore[index]
    conn.execute("SELECT qvl.reembed('notes', service => %s, shadow => 'embedding_v2')", (new_service.http_url,))
    conn.execute(f"DELETE FROM qvl.queue_{vid}")  # as if both workers were done: the counts left are the table's
    conn.execute(f"DELETE FROM qvl.shadow_queue_{vid}")

    def total() -> int:
        return int(conn.execute("SELECT shadow_total FROM qvl.vectorizer_status").fetchone()[0])  # type: ignore[index]

    def rows() -> int:
        return int(conn.execute("SELECT count(*) FROM notes").fetchone()[0])  # type: ignore[index]

    assert total() == rows() == 20000
    notes(conn, range(20001, 20011))
    conn.execute("DELETE FROM notes WHERE id <= 5")
    for i in range(30001, 31501):  # single-row statements: their deltas are folded now and then
        conn.execute("INSERT INTO notes VALUES (%s, 'one more')", (i,))
    with conn.cursor().copy("COPY notes (id, body) FROM STDIN") as copy:
        for i in range(40001, 40004):
            copy.write_row((i, "copied"))
    conn.execute("UPDATE notes SET id = 50000 WHERE id = 6")  # a key change: the count stays
    assert total() == rows() == 21508
    deltas = conn.execute(f"SELECT count(*) FROM qvl.shadow_rows_{vid}").fetchone()[0]  # type: ignore[index]
    assert deltas < 1500, deltas

    def status_ms() -> float:
        times = []
        for _ in range(30):
            t = time.perf_counter()
            conn.execute("SELECT * FROM qvl.vectorizer_status").fetchall()
            times.append(time.perf_counter() - t)
        return float(np.median(times)) * 1000

    summed = status_ms()
    conn.execute(f"ALTER TABLE qvl.shadow_rows_{vid} RENAME TO counted_{vid}")  # the status counts the table again
    assert total() == 21508
    counted = status_ms()
    conn.execute(f"ALTER TABLE qvl.counted_{vid} RENAME TO shadow_rows_{vid}")
    print(f"status on {rows()} rows: {summed:.2f} ms from {deltas} deltas, {counted:.2f} ms counting the table")
    conn.execute("TRUNCATE notes")
    assert total() == 0
    notes(conn, range(1, 3))
    assert total() == 2
