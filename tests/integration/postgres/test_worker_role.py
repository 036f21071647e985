"""Issue 19, finding 2: a table owner's code (triggers, CHECK constraints, index expressions) runs with
the rights of whoever writes the table. qvl writes users' tables in three places — the worker's
vector writes, qvl.drop_vectorizer (clearing stale vectors) and qvl.reembed (retyping the column,
which rewrites the table) — and none of them may run that code as a superuser.

Each test vectorizes a table of "mallory" (no superuser) whose trigger, CHECK constraint and index
expression make mallory a superuser when they run as one, and checks that they never do."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.integration.postgres.conftest import ROOT, WorkerProcess, images, role_dsn, wait_until
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]

# What a hostile table owner can attach to a table: code that runs with the rights of whoever
# writes a row (the trigger, the CHECK, the expression index) or rewrites the table (the CHECK on
# the vector column, re-checked when its type changes).
MALLORY_TABLE = """
CREATE SCHEMA m;
CREATE FUNCTION m.escalate() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        RESET ROLE;  -- were the writer mallory by SET ROLE, it would be back to its login now
    EXCEPTION WHEN OTHERS THEN
        NULL;
    END;
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE 'ALTER ROLE {mallory} SUPERUSER';
    END IF;
    RETURN true;
END $$;
CREATE FUNCTION m.escalate_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM m.escalate();
    RETURN NEW;
END $$;
CREATE FUNCTION m.escalate_key(k int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM m.escalate();
    RETURN k;
END $$;
CREATE TABLE m.photos (id int PRIMARY KEY, caption text, image bytea,
                       embedding public.vector(32) CHECK (m.escalate() OR embedding IS NULL));
CREATE INDEX photos_escalate ON m.photos ((m.escalate_key(id)));
CREATE TRIGGER escalate BEFORE UPDATE ON m.photos FOR EACH ROW EXECUTE FUNCTION m.escalate_on_update();
CREATE TABLE m.notes (id int PRIMARY KEY, body text);
CREATE TRIGGER escalate BEFORE UPDATE ON m.notes FOR EACH ROW EXECUTE FUNCTION m.escalate_on_update();
"""


def make_mallory(conn: psycopg.Connection[Any], qvl_db: str) -> str:
    """A role with no rights beyond its own schema, owning m.photos and m.notes (armed: see below)."""
    mallory = f"mallory_{uuid.uuid4().hex[:8]}"
    dbname = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    conn.execute(f"CREATE ROLE {mallory} LOGIN; GRANT CREATE ON DATABASE {dbname} TO {mallory}")
    with psycopg.connect(role_dsn(qvl_db, mallory), autocommit=True) as c:
        c.execute(MALLORY_TABLE.replace("{mallory}", mallory))
    # The trap is armed: run by a superuser, it does make mallory one (then taken back).
    conn.execute("SELECT m.escalate()")
    assert is_superuser(conn, mallory)
    conn.execute(f"ALTER ROLE {mallory} NOSUPERUSER")
    return mallory


def is_superuser(conn: psycopg.Connection[Any], role: str) -> bool:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    assert row is not None
    return bool(row[0])


def new_login(conn: psycopg.Connection[Any], *grants: str) -> str:
    login = f"w_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE ROLE {login} LOGIN")
    for role in grants:
        conn.execute(f"GRANT {role} TO {login}")
    return login


def test_the_worker_refuses_to_run_as_a_superuser(conn: psycopg.Connection[Any], qvl_db: str,
                                                  service: ServiceProcess) -> None:
    """One line naming the fix, exit status 2, nothing claimed: a worker that wrote m.photos as
    postgres would run mallory's trigger as a superuser."""
    mallory = make_mallory(conn, qvl_db)
    conn.execute("SELECT qvl.create_vectorizer('m.photos', text_columns => ARRAY['caption'], dimensions => 32)")
    with psycopg.connect(role_dsn(qvl_db, mallory), autocommit=True) as c:
        c.execute("INSERT INTO m.photos (id, caption) VALUES (1, 'a row mallory wrote')")
    done = subprocess.run([sys.executable, "-m", "qvl_cli", "worker", "--dsn", qvl_db, "--service",
                           service.grpc_target, "--exit-when-idle"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2, lines
    assert len(lines) == 1, lines
    assert "superuser" in lines[0] and "GRANT qvl_worker TO" in lines[0], lines
    assert not is_superuser(conn, mallory)
    assert conn.execute("SELECT pending, in_progress FROM qvl.vectorizer_status").fetchone() == (1, 0)

    # A login that may become a superuser (a member of one) is refused too: mallory's trigger could
    # SET ROLE to it.
    member = new_login(conn, "postgres")
    from connectors.postgres.worker import Worker, WorkerSettings
    try:
        with pytest.raises(RuntimeError, match="superuser"):
            Worker(WorkerSettings(dsn=role_dsn(qvl_db, member), service=service.grpc_target,
                                  exit_when_idle=True)).run()
    finally:
        conn.execute(f"DROP ROLE {member}")
    assert not is_superuser(conn, mallory)


def test_a_login_granted_qvl_worker_runs_the_whole_auto_embed_path(
        conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess,
        worker_processes: Callable[..., WorkerProcess]) -> None:
    """`GRANT qvl_worker TO login` is all an operator does: inserts, changes, deletes, refused rows,
    retries, pruning and the worker's status, for vectorizers made before and after the worker
    started, async and sync (backfill), on tables whose owner tries to become a superuser."""
    mallory = make_mallory(conn, qvl_db)
    assert conn.execute("SELECT rolsuper, rolcanlogin, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles "
                        "WHERE rolname = 'qvl_worker'").fetchone() == (False, False, False, False, False)
    login = new_login(conn, "qvl_worker")
    pics = images(3, offset=900)
    with psycopg.connect(role_dsn(qvl_db, mallory), autocommit=True) as c:
        c.execute("INSERT INTO m.photos (id, caption, image) VALUES (1, 'one', %s), (2, 'two', %s)",
                  (pics[0], pics[1]))
        c.execute("INSERT INTO m.notes VALUES (1, 'written before its vectorizer')")
    conn.execute("SELECT qvl.create_vectorizer('m.photos', text_columns => ARRAY['caption'], "
                 "image_columns => ARRAY['image'], dimensions => 32)")
    worker = worker_processes(role_dsn(qvl_db, login), service.grpc_target, "--batch", "4", "--max-attempts", "1",
                              "--retry-delay", "0.2", "--prune-every", "1", "--heartbeat", "1")

    def settled() -> bool:
        row = conn.execute("SELECT sum(pending) FROM qvl.vectorizer_status").fetchone()
        return row is not None and row[0] == 0

    def embedded(table: str) -> dict[int, str | None]:
        return dict(conn.execute(f"SELECT id, embedding::text FROM {table} ORDER BY id").fetchall())

    wait_until(settled, timeout=120)
    first = embedded("m.photos")
    assert all(first.values()), first
    # A vectorizer made while the worker runs (sync mode: its existing row goes through the queue).
    conn.execute("SELECT qvl.create_vectorizer('m.notes', text_columns => ARRAY['body'], mode => 'sync', "
                 "dimensions => 32)")
    with psycopg.connect(role_dsn(qvl_db, mallory), autocommit=True) as c:
        c.execute("UPDATE m.photos SET caption = 'one, changed' WHERE id = 1")
        c.execute("DELETE FROM m.photos WHERE id = 2")
        c.execute("INSERT INTO m.photos (id, caption, image) VALUES (3, 'three', 'not an image'), "
                  "(4, 'four', 'not an image either')")
    wait_until(lambda: settled() and conn.execute("SELECT count(*) FROM qvl.failed_items('photos')").fetchone()
               == (2,), timeout=120)
    second = embedded("m.photos")
    assert second[1] and second[1] != first[1] and 2 not in second
    assert second[3] is None and second[4] is None
    assert embedded("m.notes")[1] is not None

    # Refused rows: retried on request (refused again), one fixed by its owner, one whose row goes.
    assert conn.execute("SELECT qvl.retry_failed('photos')").fetchone() == (2,)
    wait_until(lambda: settled() and conn.execute("SELECT count(*) FROM qvl.failed_items('photos')").fetchone()
               == (2,), timeout=120)
    with psycopg.connect(role_dsn(qvl_db, mallory), autocommit=True) as c:
        c.execute("UPDATE m.photos SET image = %s WHERE id = 3", (pics[2],))
        c.execute("DELETE FROM m.photos WHERE id = 4")
    wait_until(lambda: settled() and conn.execute("SELECT count(*) FROM qvl.failed_items('photos')").fetchone()
               == (0,), timeout=120)
    assert embedded("m.photos")[3] is not None
    assert conn.execute("SELECT state, reason FROM qvl.workers").fetchall() == [("running", None)]

    assert worker.stop() == 0
    assert not is_superuser(conn, mallory)
    log = worker.log()
    assert "permission denied" not in log and "Traceback" not in log, log[-4000:]
    assert "pruned 1 failed rows whose table row is gone" in log, log[-4000:]


def stale_vectors(conn: psycopg.Connection[Any], qvl_db: str, mallory: str) -> None:
    """m.photos with three vectors, all of rows queued again (so drop_vectorizer clears them)."""
    with psycopg.connect(role_dsn(qvl_db, mallory), autocommit=True) as c:
        c.execute("INSERT INTO m.photos (id, caption, embedding) SELECT g, 'row ' || g, "
                  "array_fill(g::real, ARRAY[32])::public.vector FROM generate_series(1, 3) g")
    conn.execute("SELECT qvl.create_vectorizer('m.photos', text_columns => ARRAY['caption'], dimensions => 32)")
    assert conn.execute("SELECT pending FROM qvl.vectorizer_status").fetchone() == (3,)


def test_drop_vectorizer_writes_the_table_as_its_owner(conn: psycopg.Connection[Any], qvl_db: str) -> None:
    """Clearing the vectors of rows still queued is an UPDATE of the table: it runs the owner's trigger,
    CHECK and index expression, as the owner; the caller's role is back right after, in the same
    transaction."""
    mallory = make_mallory(conn, qvl_db)
    stale_vectors(conn, qvl_db, mallory)
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_detail or ""))
    with conn.transaction():
        conn.execute("SELECT qvl.drop_vectorizer('photos')")
        assert conn.execute("SELECT current_user, session_user").fetchone() == ("postgres", "postgres")
    assert not is_superuser(conn, mallory)
    assert conn.execute("SELECT count(*) FROM m.photos WHERE embedding IS NOT NULL").fetchone() == (0,)
    assert any(n.startswith("3 vectors of rows still queued or failed were cleared") for n in notices), notices

    # drop_column => true drops the column as the owner too.
    conn.execute("SELECT qvl.create_vectorizer('m.photos', text_columns => ARRAY['caption'], dimensions => 32)")
    with conn.transaction():
        conn.execute("SELECT qvl.drop_vectorizer('photos', drop_column => true)")
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'm.photos'::regclass "
                        "AND attname = 'embedding' AND NOT attisdropped").fetchone() == (0,)
    assert not is_superuser(conn, mallory)


def test_reembed_retypes_the_column_as_the_tables_owner(conn: psycopg.Connection[Any], qvl_db: str) -> None:
    """A new size retypes the vector column, which rewrites the table and checks its CHECK constraints
    again: as the owner, who may ALTER the table anyway."""
    mallory = make_mallory(conn, qvl_db)
    stale_vectors(conn, qvl_db, mallory)
    with conn.transaction():
        assert conn.execute("SELECT qvl.reembed('photos', dimensions => 48)").fetchone() == (3,)
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    assert not is_superuser(conn, mallory)
    assert conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                        "'m.photos'::regclass AND attname = 'embedding'").fetchone() == ("vector(48)",)
    assert conn.execute("SELECT dimensions, pending FROM qvl.vectorizer_status").fetchone() == (48, 3)
    assert conn.execute("SELECT count(*) FROM m.photos WHERE embedding IS NOT NULL").fetchone() == (0,)



# What a table's code could leave in the session of whoever wrote the table, to run later with that
# session's rights: a search_path that puts the owner's functions first, a temporary view shadowing a
# table, a prepared statement (drivers prepare their own and run them by name).
POISON = {
    "search_path": "PERFORM pg_catalog.set_config('search_path', 'm, pg_catalog, public', false);",
    "temporary view": "CREATE OR REPLACE TEMP VIEW photos AS SELECT 1 AS id;",
    "prepared statement": "IF NOT EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE name = 'later') THEN "
                          "PREPARE later AS SELECT 1; END IF;",
}


@pytest.mark.parametrize("left", list(POISON))
def test_the_owners_code_may_leave_nothing_in_the_callers_session(conn: psycopg.Connection[Any], qvl_db: str,
                                                                   left: str) -> None:
    """Running as the owner, the code cannot act as the caller now; it must not later either: what it
    leaves in the caller's session makes qvl refuse the write, and nothing of it stays."""
    mallory = make_mallory(conn, qvl_db)
    stale_vectors(conn, qvl_db, mallory)
    with psycopg.connect(role_dsn(qvl_db, mallory), autocommit=True) as c:
        c.execute(f"""CREATE FUNCTION m.poison() RETURNS trigger LANGUAGE plpgsql AS $$
                      BEGIN {POISON[left]} RETURN NEW; END $$;
                      CREATE TRIGGER poison BEFORE UPDATE ON m.photos FOR EACH ROW EXECUTE FUNCTION m.poison()""")
    path = conn.execute("SHOW search_path").fetchone()
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="changed this session"):
        conn.execute("SELECT qvl.drop_vectorizer('photos')")
    assert conn.execute("SHOW search_path").fetchone() == path
    assert conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
    assert conn.execute("SELECT pending FROM qvl.vectorizer_status").fetchone() == (3,)  # nothing was dropped
    assert conn.execute("SELECT count(*) FROM m.photos WHERE embedding IS NOT NULL").fetchone() == (3,)
    assert not is_superuser(conn, mallory)


def test_pg_install_makes_the_workers_login(conn: psycopg.Connection[Any], qvl_db: str) -> None:
    """`qvl pg install --worker-login NAME` (what docker-compose.yml runs): the login is made if missing,
    with the password of QVL_WORKER_PASSWORD, and granted qvl_worker; a superuser is refused."""
    login = f"w_{uuid.uuid4().hex[:8]}"

    def install(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "qvl_cli", "pg", "install", "--dsn", qvl_db, "--worker-login",
                               name], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "QVL_WORKER_PASSWORD": "s3cret"})

    for _ in range(2):  # the second install finds it made
        done = install(login)
        assert done.returncode == 0, done.stdout + done.stderr
        assert conn.execute("SELECT rolcanlogin, rolsuper, pg_has_role(rolname, 'qvl_worker', 'MEMBER'), "
                            "rolpassword IS NOT NULL FROM pg_authid WHERE rolname = %s", (login,)
                            ).fetchone() == (True, False, True, True)
    refused = install("postgres")
    assert refused.returncode == 2
    assert "postgres is a superuser, which the worker refuses to run as" in refused.stdout, refused.stdout
