"""Issue 22, items 1 and 2: `qvl pg install` on a database that looks like a managed one (RDS, Cloud
SQL, Azure, Supabase, Neon: tests/support/managed_postgres.py). The role that installs has CREATEROLE
and owns the database, no superuser; pgvector exists; PL/Python can never be created. The install
adapts: the managed install, said in one line, with what it leaves out; the model's functions exist
and refuse with a clear error; mode => 'sync' is refused at create_vectorizer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from connectors.postgres.installer import InstallError, install, latest_version
from tests.integration.postgres.conftest import new_database
from tests.support.cli import run_qvl
from tests.support.managed_postgres import ManagedDatabase, managed_database
from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres]


@pytest.fixture(scope="module")
def managed_server() -> Iterator[PostgresServer]:
    """A cluster of its own: qvl's roles (qvl_worker, qvl_trigger) do not exist yet, as on a fresh
    managed instance, so the CREATEROLE role makes them itself."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def managed(managed_server: PostgresServer, request: pytest.FixtureRequest) -> ManagedDatabase:
    return managed_database(managed_server, request.node.name[5:25])


def _one(conn: psycopg.Connection[Any], query: str, *args: Any) -> Any:
    row = conn.execute(query, args or None).fetchone()
    assert row is not None
    return row[0]


def test_the_fixture_looks_like_a_managed_database(managed: ManagedDatabase) -> None:
    with psycopg.connect(managed.dsn, autocommit=True) as conn:
        assert _one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
        assert _one(conn, "SELECT rolcreaterole FROM pg_roles WHERE rolname = current_user") is True
        assert _one(conn, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()") \
            == managed.role
        assert _one(conn, "SELECT count(*) FROM pg_extension WHERE extname = 'vector'") == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE EXTENSION plpython3u")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE FUNCTION f() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$; "
                         "CREATE EVENT TRIGGER e ON ddl_command_end EXECUTE FUNCTION f()")


def test_install_on_a_managed_database_is_the_managed_install(managed: ManagedDatabase) -> None:
    ran = run_qvl("pg", "install", "--dsn", managed.dsn)
    out = ran.stdout.decode()
    assert ran.returncode == 0, out + ran.stderr.decode()
    said = [line for line in out.splitlines() if "managed install" in line]
    assert len(said) == 1, out
    for left_out in ("PL/Python", "qvl.embed", "mode => 'sync'", "schema guard"):
        assert left_out in said[0], said[0]
    with psycopg.connect(managed.dsn, autocommit=True) as conn:
        assert _one(conn, "SELECT max(version) FROM qvl.schema_version") == latest_version()
        assert _one(conn, "SELECT value FROM qvl.config WHERE key = 'install'") == "managed"
        assert _one(conn, "SELECT count(*) FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
                          "WHERE p.pronamespace = 'qvl'::regnamespace AND l.lanname = 'plpython3u'") == 0
        # The model's functions exist, all of them, and every one refuses alike.
        for call, names in [("SELECT qvl.embed('a cat')", "connectors.client"),
                            ("SELECT * FROM qvl.rerank('q', ARRAY['a'])", "connectors.client"),
                            ("SELECT qvl.query_embedding('v', 'q')", "connectors.client"),
                            ("SELECT * FROM qvl.search('v', 'a cat')", "connectors.postgres.search"),
                            ("SELECT * FROM qvl.hybrid_search('v', 'a cat')", "connectors.postgres.search"),
                            ("SELECT qvl.service_info()", "qvl worker")]:
            with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
                conn.execute(call)
            diag = refused.value.diag
            assert "PL/Python" in (diag.message_primary or ""), (call, diag.message_primary)
            assert names in (diag.message_hint or ""), (call, diag.message_hint)
        # A second install is the same install (idempotent), told nothing new.
    again = run_qvl("pg", "install", "--dsn", managed.dsn)
    assert again.returncode == 0, again.stdout.decode()


def test_the_managed_install_refuses_sync_mode_at_create_vectorizer(managed: ManagedDatabase) -> None:
    install(managed.dsn)
    with psycopg.connect(managed.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
            conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => '{body}', dimensions => 32, "
                         "mode => 'sync')")
        assert "PL/Python" in (refused.value.diag.message_primary or "")
        assert "mode => 'async'" in (refused.value.diag.message_hint or "")
        assert _one(conn, "SELECT count(*) FROM qvl.vectorizer") == 0


def test_managed_flag_forces_the_managed_install_for_a_superuser(pg_server: PostgresServer,
                                                                 request: pytest.FixtureRequest) -> None:
    dsn = new_database(pg_server, request.node.name)
    ran = run_qvl("pg", "install", "--dsn", dsn, "--managed")
    assert ran.returncode == 0, ran.stdout.decode() + ran.stderr.decode()
    assert "managed install (--managed)" in ran.stdout.decode()
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert _one(conn, "SELECT value FROM qvl.config WHERE key = 'install'") == "managed"
        assert _one(conn, "SELECT count(*) FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
                          "WHERE p.pronamespace = 'qvl'::regnamespace AND l.lanname = 'plpython3u'") == 0
        assert _one(conn, "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'qvl%'") == 0


def test_install_where_plpython_is_allowed_is_the_full_install(pg_server: PostgresServer,
                                                               request: pytest.FixtureRequest) -> None:
    dsn = new_database(pg_server, request.node.name)
    ran = run_qvl("pg", "install", "--dsn", dsn)
    assert ran.returncode == 0, ran.stdout.decode()
    assert "managed install" not in ran.stdout.decode()
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert _one(conn, "SELECT value FROM qvl.config WHERE key = 'install'") == "full"
        assert _one(conn, "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'qvl%'") == 4


CATALOG_SQL = """
SELECT 'function ' || p.oid::regprocedure::text || ' ' || l.lanname || ' ' || p.prosecdef::text
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang WHERE p.pronamespace = 'qvl'::regnamespace
UNION ALL SELECT 'relation ' || c.relname || ' ' || c.relkind::text
  FROM pg_class c WHERE c.relnamespace = 'qvl'::regnamespace
UNION ALL SELECT 'version ' || version || ' ' || name FROM qvl.schema_version
UNION ALL SELECT 'config ' || key || ' ' || value FROM qvl.config
UNION ALL SELECT 'grant ' || p.oid::regprocedure::text || ' ' || coalesce(p.proacl::text, '')
  FROM pg_proc p WHERE p.pronamespace = 'qvl'::regnamespace
ORDER BY 1"""


def test_qvl_pg_sql_applied_with_psql_gives_the_objects_of_the_install(managed_server: PostgresServer) -> None:
    """Item 5: the managed install as one script, applied by the managed role with psql."""
    import os
    import subprocess
    import tempfile

    from tests.support.postgres import pg_bindir

    by_install, by_script = managed_database(managed_server, "by_install"), managed_database(managed_server, "script")
    install(by_install.dsn)
    ran = run_qvl("pg", "sql", "--managed")
    assert ran.returncode == 0, ran.stderr.decode()
    with tempfile.NamedTemporaryFile("wb", suffix=".sql", delete=False) as f:
        f.write(ran.stdout)
    try:
        applied = subprocess.run([str(pg_bindir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", f.name,
                                  by_script.dsn], capture_output=True, text=True, timeout=300,
                                 env={k: v for k, v in os.environ.items() if not k.startswith("PG")})
    finally:
        os.unlink(f.name)
    assert applied.returncode == 0, applied.stderr[-3000:]
    catalogs = []
    for db in (by_install, by_script):
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            rows = [r[0].replace(db.role, "<installer>") for r in conn.execute(CATALOG_SQL).fetchall()]
            catalogs.append(rows)
    assert catalogs[0] == catalogs[1]


def _languages_and_guard(dsn: str) -> tuple[int, int, str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        plpy = _one(conn, "SELECT count(*) FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
                          "WHERE p.pronamespace = 'qvl'::regnamespace AND l.lanname = 'plpython3u'")
        guard = _one(conn, "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'qvl%'")
        return plpy, guard, _one(conn, "SELECT value FROM qvl.config WHERE key = 'install'")


def test_upgrades_in_place_between_the_two_installs(pg_server: PostgresServer, request: pytest.FixtureRequest,
                                                    service: ServiceProcess) -> None:
    """Item 6: a database that gains PL/Python (and a superuser) gets the full install in place, the
    schema guard included; one that loses it (--managed) the managed install; vectorizers stay."""
    dsn = new_database(pg_server, request.node.name)
    install(dsn, managed=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => '{body}', dimensions => 32)")
    assert _languages_and_guard(dsn) == (0, 0, "managed")
    install(dsn, service_url=service.http_url)
    plpy, guard, kind = _languages_and_guard(dsn)
    assert plpy > 10 and guard == 4 and kind == "full"
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert len(_one(conn, "SELECT qvl.embed('a cat', dimensions => 32)::text")) > 10
        with pytest.raises(psycopg.errors.DependentObjectsStillExist):  # the guard works on the old vectorizer
            conn.execute("ALTER TABLE notes DROP COLUMN body")
    install(dsn, managed=True)
    assert _languages_and_guard(dsn) == (0, 0, "managed")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert _one(conn, "SELECT count(*) FROM qvl.vectorizer") == 1
        conn.execute("INSERT INTO notes VALUES (1, 'queued')")
        assert _one(conn, "SELECT pending FROM qvl.vectorizer_status WHERE name = 'notes'") == 1


def test_a_full_install_is_not_turned_managed_by_a_role_that_is_no_superuser(
        managed_server: PostgresServer) -> None:
    """The provider's superuser made the full install; the application's role cannot replace its
    functions: a clear error that says who can, and nothing changed."""
    db = managed_database(managed_server, "was_full")
    install(db.admin_dsn)
    with pytest.raises(InstallError) as refused:
        install(db.dsn)
    assert "superuser" in str(refused.value) and "--managed" in str(refused.value)
    assert _languages_and_guard(db.admin_dsn)[2] == "full"
