"""A hot standby fed by streaming replication (pg_basebackup -R): vectors written on the primary
reach it, qvl.search / qvl.embed / qvl.rerank answer there as on the primary (nothing they do
writes: a standby refuses any write), and the worker runs on the primary only: pointed at a
standby it says so and waits, without a traceback or a crash loop, and starts once it is promoted."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from connectors.postgres.installer import install
from tests.integration.postgres.conftest import ROOT, WorkerProcess, drain, images, vec, wait_until, worker_dsn
from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service, pytest.mark.slow, pytest.mark.lifecycle]


@pytest.fixture(scope="module")
def primary() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture
def app(primary: PostgresServer, service: ServiceProcess, request: pytest.FixtureRequest) -> str:
    """A database on the primary with qvl, a queue vectorizer over captions and photos, an HNSW index
    and 40 rows embedded by a worker."""
    dsn = primary.create_database(f"app_{request.node.name[5:25]}")
    install(dsn, service_url=service.http_url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE photos (id int PRIMARY KEY, caption text, photo bytea)")
        conn.execute("SELECT qvl.create_vectorizer('photos', text_columns => ARRAY['caption'], "
                     "image_columns => ARRAY['photo'])")
        conn.execute("CREATE INDEX ON photos USING hnsw (embedding vector_cosine_ops)")
        insert(conn, range(40))
    drain(dsn, service.grpc_target)
    return dsn


def insert(conn: psycopg.Connection[Any], ids: range) -> None:
    pics = images(len(ids), offset=ids.start)
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO photos VALUES (%s, %s, %s)",
                        [(i, f"a photo of thing {i}", pics[k]) for k, i in enumerate(ids)])


def on(server: PostgresServer, dsn: str) -> str:
    """The same database on another server of the pair."""
    dbname = dsn.split("dbname=", 1)[1].split()[0]
    return server.dsn(dbname)


def answers(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """What the query functions give, as plain values."""
    return {
        "search": conn.execute("SELECT pk, distance, score FROM qvl.search('photos', 'thing 7', k => 5)").fetchall(),
        "nearest": conn.execute("SELECT pk FROM qvl.search('photos', 'thing 7', k => 5, rerank => false)").fetchall(),
        "by_image": conn.execute("SELECT pk FROM qvl.search('photos', %s::bytea, k => 3, rerank => false)",
                                 (images(1, offset=3)[0],)).fetchall(),
        "embed": vec(conn.execute("SELECT qvl.embed('thing 7')::text").fetchone()[0]),  # type: ignore[index]
        "halfvec": conn.execute("SELECT vector_dims(qvl.embed_halfvec('thing 7')::vector)").fetchone(),
        "failed": conn.execute("SELECT * FROM qvl.failed_items('photos')").fetchall(),
        "rerank": conn.execute("SELECT * FROM qvl.rerank('thing', ARRAY['thing 1', 'other', 'thing 2'])").fetchall(),
        "vectors": conn.execute("SELECT id, embedding::text FROM photos ORDER BY id").fetchall(),
    }


def test_catch_up_waits_for_commits_not_yet_written_out(primary: PostgresServer) -> None:
    """The test servers commit asynchronously (synchronous_commit off): a commit returns before its
    WAL is written. catch_up used to wait for the primary's write position only, which lagged such a
    commit, and returned with the standby short of it (CI: 40 rows of 60 on the standby). Here the
    WAL writer waits 10 s between rounds, so the lag is there every time."""
    dsn = primary.create_database("app_catch_up")
    with psycopg.connect(primary.dsn(), autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        admin.execute("SELECT pg_reload_conf()")
    standby = primary.start_standby()
    try:
        with psycopg.connect(dsn, autocommit=True) as p:
            p.execute("CREATE TABLE t (id int)")
            standby.catch_up()
            time.sleep(0.5)  # the WAL writer's round after the CREATE; the next is 10 s away
            p.execute("INSERT INTO t VALUES (1)")
            assert p.execute("SELECT pg_current_wal_insert_lsn() > pg_current_wal_lsn()").fetchone() == (True,)
        standby.catch_up()
        with psycopg.connect(on(standby, dsn), autocommit=True) as s:
            assert s.execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        standby.stop()
        with psycopg.connect(primary.dsn(), autocommit=True) as admin:
            admin.execute("ALTER SYSTEM RESET wal_writer_delay")
            admin.execute("SELECT pg_reload_conf()")


def test_vectors_replicate_and_the_query_functions_answer_on_the_standby(
        primary: PostgresServer, app: str, service: ServiceProcess) -> None:
    standby = primary.start_standby()
    try:
        standby.catch_up()
        assert standby.in_recovery
        with psycopg.connect(app, autocommit=True) as p, psycopg.connect(on(standby, app)) as s:
            # The strictest check there is: a standby refuses every write, and on top of that the
            # whole session is a read-only transaction. Nothing qvl's query functions do may write.
            s.execute("SET default_transaction_read_only = on")
            s.commit()
            want, got = answers(p), answers(s)
            assert got["vectors"] == want["vectors"] and len(got["vectors"]) == 40
            assert [r[0] for r in got["search"]] == [r[0] for r in want["search"]]
            assert got["nearest"] == want["nearest"] and got["by_image"] == want["by_image"]
            assert got["rerank"] == want["rerank"]
            assert got["halfvec"] == want["halfvec"] == (64,) and got["failed"] == want["failed"] == []
            assert float(got["embed"] @ want["embed"]) > 0.9999
            assert s.execute("SELECT qvl.service_info() ->> 'models' IS NOT NULL").fetchone() == (True,)
            assert s.execute("SELECT name, pending, failed FROM qvl.vectorizer_status").fetchall() == [
                ("photos", 0, 0)]
            assert s.execute("SELECT qvl.wait_for_embeddings('photos', '1 s')").fetchone() == (True,)
            s.commit()

            # New rows, embedded on the primary by the worker, reach the standby by replication.
            insert(p, range(40, 60))
            drain(app, service.grpc_target)
            standby.catch_up()
            assert s.execute("SELECT count(embedding) FROM photos").fetchone() == (60,)
            assert s.execute("SELECT embedding::text FROM photos WHERE id = 55").fetchone() == \
                p.execute("SELECT embedding::text FROM photos WHERE id = 55").fetchone()
            s.commit()

            # Writes belong to the primary: no trigger, queue or vectorizer change happens here.
            for statement in ("INSERT INTO photos VALUES (100, 'x', NULL)",
                              "SELECT qvl.create_vectorizer('photos', text_columns => ARRAY['caption'], "
                              "name => 'photos_2', destination => 'e2')", "SELECT qvl.retry_failed('photos')"):
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    s.execute(statement)
                s.rollback()

        # A worker (or anything that writes) given both nodes finds the primary itself (libpq).
        dbname = app.split("dbname=", 1)[1].split()[0]
        both = (f"host=127.0.0.1,127.0.0.1 port={standby.port},{primary.port} dbname={dbname} user=postgres "
                "target_session_attrs=read-write")
        with psycopg.connect(app, autocommit=True) as p:
            insert(p, range(60, 65))
        drain(both, service.grpc_target)
        with psycopg.connect(app, autocommit=True) as p:
            assert p.execute("SELECT count(embedding) FROM photos").fetchone() == (65,)
    finally:
        standby.stop()


def test_a_worker_on_a_standby_says_so_waits_and_starts_when_promoted(
        primary: PostgresServer, app: str, service: ServiceProcess,
        worker_processes: Callable[..., WorkerProcess]) -> None:
    standby = primary.start_standby()
    try:
        standby.catch_up()
        standby_dsn = on(standby, app)
        once = subprocess.run([sys.executable, "-m", "qvl_cli", "worker", "--dsn", worker_dsn(standby_dsn),
                               "--service", service.grpc_target, "--exit-when-idle"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert once.returncode == 2 and "hot standby" in once.stderr, once.stderr

        worker = worker_processes(standby_dsn, service.grpc_target, name="qvl-worker-standby")
        time.sleep(4)
        assert worker.proc is not None and worker.proc.poll() is None  # waiting, not exiting or looping
        log = worker.log()
        assert log.count("the database is a hot standby") == 1, log
        assert "Traceback" not in log and "lane error" not in log

        # A failover: the standby becomes the primary; the waiting worker notices and embeds there.
        primary_rows = 40
        standby.promote()
        with psycopg.connect(standby_dsn, autocommit=True) as conn:
            insert(conn, range(primary_rows, primary_rows + 10))
            wait_until(lambda: conn.execute("SELECT count(embedding) FROM photos").fetchone() == (50,),
                       timeout=60, every=0.2)
        assert "the database was promoted; starting" in worker.log()
        assert worker.stop() == 0
    finally:
        standby.stop()


def test_a_running_worker_whose_database_turns_read_only_pauses_without_tracebacks(
        app: str, service: ServiceProcess, worker_processes: Callable[..., WorkerProcess]) -> None:
    """A node demoted under a running worker (here: the database made read-only and the worker's
    sessions cut, so it reconnects into read-only sessions): the lanes say why and wait; once the
    database takes writes again the rows move."""
    dbname = app.split("dbname=", 1)[1].split()[0]
    worker = worker_processes(app, service.grpc_target, name="qvl-worker-demoted")
    with psycopg.connect(app, autocommit=True) as conn:
        listening = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'qvl-worker-demoted' "
                     "AND query = 'LISTEN qvl_config'")
        wait_until(lambda: conn.execute(listening).fetchone() == (1,), timeout=60)
        conn.execute(f"ALTER DATABASE {dbname} SET default_transaction_read_only = on")
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE application_name = 'qvl-worker-demoted'")
        conn.execute("SET default_transaction_read_only = off")
        insert(conn, range(40, 45))
        wait_until(lambda: "the database refuses writes" in worker.log(), timeout=30, every=0.2)
        assert conn.execute("SELECT count(embedding) FROM photos").fetchone() == (40,)
        conn.execute(f"ALTER DATABASE {dbname} RESET default_transaction_read_only")
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE application_name = 'qvl-worker-demoted'")
        wait_until(lambda: conn.execute("SELECT count(embedding) FROM photos").fetchone() == (45,),
                   timeout=60, every=0.2)
    # The lane that said so says it again once its next pass takes writes; another lane may have
    # embedded the rows before that lane's wait ran out.
    wait_until(lambda: "the database takes writes again" in worker.log(), timeout=30, every=0.2)
    log = worker.log()
    assert "Traceback" not in log and "lane error" not in log, log[-3000:]
    assert log.count("the database refuses writes") <= 2  # once per lane, not once per try
    assert worker.stop() == 0
