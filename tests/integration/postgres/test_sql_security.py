"""Issue 10 (SQL side): whose rights qvl's triggers run with, deadlines and cancellation of the
PL/Python calls, what other roles may learn, TLS to the service."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from connectors.postgres.installer import install
from tests.integration.postgres.conftest import role_dsn

pytestmark = [pytest.mark.postgres, pytest.mark.service]

# A domain whose CHECK calls its owner's function: PostgreSQL runs it as whoever converts a value to
# the domain (current_user). It records who that was and tries to make its owner a superuser.
HOSTILE_DOMAIN = """
CREATE SCHEMA m;
CREATE TABLE m.log (who name, was_superuser boolean);
GRANT USAGE ON SCHEMA m TO PUBLIC;
GRANT INSERT ON m.log TO PUBLIC;
CREATE FUNCTION m.looks_fine(v text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO m.log SELECT current_user, r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user;
    BEGIN
        EXECUTE pg_catalog.format('ALTER ROLE %I SUPERUSER', session_user);
    EXCEPTION WHEN OTHERS THEN
        NULL;
    END;
    RETURN true;
END $$;
CREATE DOMAIN m.caption AS text CHECK (m.looks_fine(VALUE));
CREATE DOMAIN m.key AS int CHECK (m.looks_fine(VALUE::text));
CREATE TABLE m.synced (id int PRIMARY KEY, caption m.caption);
CREATE TABLE m.queued (id m.key PRIMARY KEY, caption m.caption);
CREATE TABLE m.fallback (id m.key PRIMARY KEY, caption m.caption, image bytea);
"""


def test_a_hostile_domain_check_never_runs_as_a_superuser(conn: psycopg.Connection[Any], qvl_db: str) -> None:
    """10.4: the sync trigger (PL/Python converts the row back to the table's types: the domain
    CHECK runs), the async queueing trigger (the key goes into the queue: its domain CHECK runs) and
    the sync trigger's fallback to the queue all run as qvl_trigger, a NOLOGIN non-superuser."""
    mallory = f"mallory_{uuid.uuid4().hex[:8]}"
    dbname = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    conn.execute(f"CREATE ROLE {mallory} LOGIN; GRANT CREATE ON DATABASE {dbname} TO {mallory}")
    with psycopg.connect(role_dsn(qvl_db, mallory), autocommit=True) as c:
        c.execute(HOSTILE_DOMAIN)
    # The installing role vectorizes the tables of an application role.
    conn.execute("SELECT qvl.create_vectorizer('m.synced', text_columns => ARRAY['caption'], mode => 'sync', "
                 "dimensions => 32)")
    conn.execute("SELECT qvl.create_vectorizer('m.queued', text_columns => ARRAY['caption'], dimensions => 32)")
    conn.execute("SELECT qvl.create_vectorizer('m.fallback', text_columns => ARRAY['caption'], "
                 "image_columns => ARRAY['image'], mode => 'sync', on_error => 'queue', dimensions => 32)")
    with psycopg.connect(role_dsn(qvl_db, mallory), autocommit=True) as c:
        c.execute("INSERT INTO m.synced VALUES (1, 'a caption')")
        c.execute("INSERT INTO m.queued VALUES (1, 'a caption')")
        c.execute("UPDATE m.queued SET caption = 'another caption'")
        c.execute("INSERT INTO m.fallback VALUES (1, 'a caption', 'not an image')")  # refused: queued instead
        assert c.execute("SELECT embedding IS NOT NULL FROM m.synced").fetchone() == (True,)

    assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (mallory,)).fetchone() == (False,)
    ran_as = conn.execute("SELECT who, bool_or(was_superuser) FROM m.log GROUP BY who ORDER BY who").fetchall()
    assert ("qvl_trigger", False) in ran_as  # the checks did run inside qvl's triggers...
    assert {who for who, _ in ran_as} == {mallory, "qvl_trigger"}  # ...and never as the installing role
    assert not any(sup for _, sup in ran_as)
    assert conn.execute("SELECT rolsuper, rolcanlogin, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles "
                        "WHERE rolname = 'qvl_trigger'").fetchone() == (False, False, False, False, False)
    assert conn.execute("SELECT name, pending FROM qvl.vectorizer_status WHERE pending > 0 ORDER BY name"
                        ).fetchall() == [("fallback", 1), ("queued", 1)]
    owners = conn.execute("SELECT p.proname, p.proowner::regrole::text FROM pg_proc p "
                          "WHERE p.pronamespace = 'qvl'::regnamespace AND p.prorettype = 'trigger'::regtype "
                          "ORDER BY 1").fetchall()
    # Sync vectorizers have a queueing function too, for their key and truncate triggers (issue 19 item 4).
    # qvl._enqueue_shadow, qvl._shadow_chunks_gone, qvl._shadow_count: a blue/green shadow's queueing, its
    # chunks' upkeep and the table's row count (issue 23 item 3), as qvl_trigger too.
    assert owners == [("_enqueue_1", "qvl_trigger"), ("_enqueue_2", "qvl_trigger"), ("_enqueue_3", "qvl_trigger"),
                      ("_enqueue_shadow", "qvl_trigger"), ("_shadow_chunks_gone", "qvl_trigger"),
                      ("_shadow_count", "qvl_trigger"), ("_sync_embed", "qvl_trigger")]


# -- 10.13: what other roles may learn --------------------------------------------------------------
def test_default_privileges_per_schema_cannot_revoke_so_each_function_is_revoked(conn: psycopg.Connection[Any],
                                                                                 qvl_db: str) -> None:
    """The finding is right: `ALTER DEFAULT PRIVILEGES IN SCHEMA qvl REVOKE EXECUTE ... FROM PUBLIC`
    stores nothing (a per-schema entry can only add to the global default, which grants PUBLIC
    EXECUTE), so a function created in qvl later is PUBLIC's. The installer no longer runs it; the
    explicit REVOKEs (every install, and each generated trigger function) are what keep qvl private."""
    conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA qvl REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC")
    assert conn.execute("SELECT count(*) FROM pg_default_acl WHERE defaclnamespace = 'qvl'::regnamespace"
                        ).fetchone() == (0,)
    conn.execute("CREATE FUNCTION qvl.created_later() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    assert conn.execute("SELECT has_function_privilege('public', 'qvl.created_later()', 'EXECUTE')"
                        ).fetchone() == (True,)
    conn.execute("DROP FUNCTION qvl.created_later()")

    conn.execute("CREATE TABLE a (id int PRIMARY KEY, body text); CREATE TABLE s (id int PRIMARY KEY, body text)")
    conn.execute("SELECT qvl.create_vectorizer('a', text_columns => ARRAY['body'], dimensions => 32)")
    conn.execute("SELECT qvl.create_vectorizer('s', text_columns => ARRAY['body'], dimensions => 32, mode => 'sync')")
    public = conn.execute("SELECT DISTINCT p.proname::text FROM pg_proc p WHERE p.pronamespace = 'qvl'::regnamespace "
                          "AND has_function_privilege('public', p.oid, 'EXECUTE') ORDER BY 1").fetchall()
    # qvl._key_changed_<id>: the key triggers' WHEN, evaluated by whoever updates the table (a comparison
    # of the two rows it is given; issue 19 item 4).
    assert [name for (name,) in public] == sorted(
        ["_call", "_load", "_queue_stats", "_cut_count", "embed", "embed_halfvec", "rerank", "search", "service_info",
         "wait_for_embeddings", "query_embedding", "query_embedding_halfvec", "query_embedding_bit", "rerank_rows",
         "hybrid_search", "_check_key_type", "_rerank_rows", "_fulltext_document", "_fulltext_join",
         "_key_changed_1", "_key_changed_2", "search_chunks",
         # Blue/green (issue 23 item 3): the door to a vectorizer's own service after a switch (it takes the
         # vectorizer, never an address), and qvl.vectorizer_status's shadow progress (counts as _queue_stats).
         "_call_for", "_shadow_stats",
         # The checks and the distance probe the two query-vector searches share (issue 22).
         "_vector_probe",
         # The bodies of the public PL/Python functions, which raise their errors again without the traceback
         # (issue 24): they run as the caller, as those do.
         "_raw_embed", "_raw_embed_halfvec", "_raw_rerank", "_raw_search", "_raw_service_info", "_raw_query_embedding",
         "_raw_query_embedding_halfvec", "_raw_query_embedding_bit", "_raw_hybrid_search", "_raw_search_chunks"])


def test_errors_do_not_name_the_service_host(conn: psycopg.Connection[Any], qvl_db: str) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    conn.execute("SELECT qvl.set_service(%s)", (f"http://127.0.0.1:{port}",))
    role = f"app_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE ROLE {role} LOGIN")
    with psycopg.connect(role_dsn(qvl_db, role), autocommit=True) as c, \
            pytest.raises(psycopg.errors.SqlclientUnableToEstablishSqlconnection) as caught:
        c.execute("SELECT qvl.embed('x')")
    diag = caught.value.diag
    said = " ".join(filter(None, (diag.message_primary, diag.message_detail, diag.message_hint)))
    assert "cannot reach the model service" in said
    assert str(port) not in said and "127.0.0.1" not in said, said


def test_queue_counts_show_only_to_roles_that_may_read_the_table(conn: psycopg.Connection[Any],
                                                                 qvl_db: str) -> None:
    reader, stranger = (f"{who}_{uuid.uuid4().hex[:8]}" for who in ("reader", "stranger"))
    conn.execute("CREATE TABLE secret (id int PRIMARY KEY, body text)")
    conn.execute("SELECT qvl.create_vectorizer('secret', text_columns => ARRAY['body'], dimensions => 32)")
    conn.execute("INSERT INTO secret SELECT g, 'row ' || g FROM generate_series(1, 7) g")
    conn.execute(f"CREATE ROLE {reader} LOGIN; GRANT SELECT ON secret TO {reader}; CREATE ROLE {stranger} LOGIN")
    status = "SELECT name, pending, in_progress, failed, oldest_pending_age IS NOT NULL FROM qvl.vectorizer_status"
    with psycopg.connect(role_dsn(qvl_db, reader), autocommit=True) as c:
        assert c.execute(status).fetchall() == [("secret", 7, 0, 0, True)]
        assert c.execute("SELECT qvl.wait_for_embeddings('secret', '10 ms')").fetchone() == (False,)
    with psycopg.connect(role_dsn(qvl_db, stranger), autocommit=True) as c:
        assert c.execute(status).fetchall() == [("secret", None, None, None, False)]
        assert c.execute("SELECT pending, failed FROM qvl._queue_stats(1)").fetchall() == [(None, None)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT qvl.wait_for_embeddings('secret', '10 ms')")


def test_queue_counts_follow_the_current_role_not_the_login(conn: psycopg.Connection[Any], qvl_db: str) -> None:
    """Issue 19.9: under SET ROLE the counts are the current role's to see, whatever the login may read:
    postgres acting as a role that may not read the table sees none, and a login that may not read it
    sees them while acting as a role that may."""
    reader, stranger = (f"{who}_{uuid.uuid4().hex[:8]}" for who in ("reader", "stranger"))
    conn.execute("CREATE TABLE secret (id int PRIMARY KEY, body text)")
    conn.execute("SELECT qvl.create_vectorizer('secret', text_columns => ARRAY['body'], dimensions => 32)")
    conn.execute("INSERT INTO secret SELECT g, 'row ' || g FROM generate_series(1, 7) g")
    conn.execute(f"CREATE ROLE {reader} NOLOGIN; GRANT SELECT ON secret TO {reader}; "
                 f"CREATE ROLE {stranger} LOGIN NOINHERIT; GRANT {reader} TO {stranger}")  # only through SET ROLE
    status = "SELECT pending, failed FROM qvl.vectorizer_status"
    conn.execute(f"SET ROLE {stranger}")
    try:
        assert conn.execute(status).fetchall() == [(None, None)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT qvl.wait_for_embeddings('secret', '10 ms')")
    finally:
        conn.execute("RESET ROLE")
    with psycopg.connect(role_dsn(qvl_db, stranger), autocommit=True) as c:
        assert c.execute(status).fetchall() == [(None, None)]
        c.execute(f"SET ROLE {reader}")
        assert c.execute(status).fetchall() == [(7, 0)]
        assert c.execute("SELECT qvl.wait_for_embeddings('secret', '10 ms')").fetchone() == (False,)


def test_service_info_names_the_model_without_its_local_path(conn: psycopg.Connection[Any]) -> None:
    """/v1/info (and qvl.service_info(), open to every role) said where the checkpoint lies on disk."""
    from tests.support.service import TINY
    models = conn.execute("SELECT qvl.service_info()->'models'").fetchone()[0]  # type: ignore[index]
    assert [m["name"] for m in models] == [TINY.name, TINY.name]
    assert str(TINY.parent) not in str(models)


# -- 10.12: deadlines and cancellation of the PL/Python calls ----------------------------------------
class Hanging:
    """A "service" that accepts connections and reads requests but never answers."""

    def __init__(self) -> None:
        import socket
        import threading
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.held: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(sock)

    def close(self) -> None:
        self.listener.close()
        for sock in self.held:
            sock.close()


@pytest.fixture
def hanging(conn: psycopg.Connection[Any]) -> Any:
    server = Hanging()
    conn.execute("SELECT qvl.set_service(%s, timeout_s => 20)", (server.url,))
    yield server
    server.close()


def test_statement_timeout_bounds_a_call_to_a_hanging_service(conn: psycopg.Connection[Any], hanging: Hanging) -> None:
    import time
    conn.execute("SET statement_timeout = '2s'")
    started = time.monotonic()
    with pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute("SELECT qvl.embed('x')")
    assert time.monotonic() - started < 3.0
    conn.execute("RESET statement_timeout")
    assert conn.execute("SELECT 1").fetchone() == (1,)  # the session carries on


def test_pg_cancel_backend_cancels_a_call_stuck_on_a_hanging_service(conn: psycopg.Connection[Any], qvl_db: str,
                                                                     hanging: Hanging) -> None:
    import threading
    import time
    outcome: dict[str, Any] = {}
    with psycopg.connect(qvl_db, autocommit=True) as victim:
        pid = victim.info.backend_pid

        def call() -> None:
            try:
                victim.execute("SELECT qvl.embed('x')")
            except psycopg.Error as exc:
                outcome["error"], outcome["at"] = exc, time.monotonic()

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(1.0)  # stuck waiting for the answer by now
        cancelled = time.monotonic()
        assert conn.execute("SELECT pg_cancel_backend(%s)", (pid,)).fetchone() == (True,)
        thread.join(timeout=25)
        assert isinstance(outcome.get("error"), psycopg.errors.QueryCanceled), outcome
        assert outcome["at"] - cancelled < 2.0
        assert victim.execute("SELECT 1").fetchone() == (1,)


# -- 10.10 (SQL side): https to the service, its certificate verified against a CA file --------------
def test_sql_functions_call_the_service_over_verified_tls(conn: psycopg.Connection[Any], qvl_db: str,
                                                          tls_service: Any, tls_files: Any) -> None:
    import contextlib
    import shutil
    import tempfile
    from pathlib import Path

    from tests.support.tls import readable_tls_files

    # The database server's own user reads the CA files (tls_files: the service's, in a folder it may enter).
    folder, cert = tls_files.folder, tls_files.cert
    other = Path(tempfile.mkdtemp(prefix="qvl-tls-stranger-"))
    try:
        stranger_ca = readable_tls_files(other).cert
        with contextlib.nullcontext(tls_service) as svc:
            assert svc.http_url.startswith("https://localhost:")
            install(qvl_db, service_url=svc.http_url, service_ca_file=str(cert))  # qvl pg install --service-ca-file
            assert conn.execute("SELECT ca_file FROM qvl.service").fetchone() == (str(cert),)
            assert conn.execute("SELECT vector_dims(qvl.embed('over TLS'))").fetchone() == (64,)
            role = f"app_{uuid.uuid4().hex[:8]}"
            conn.execute(f"CREATE ROLE {role} LOGIN")
            with psycopg.connect(role_dsn(qvl_db, role), autocommit=True) as c:
                assert len(c.execute("SELECT * FROM qvl.rerank('q', ARRAY['a', 'b'])").fetchall()) == 2
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    c.execute("SELECT ca_file FROM qvl.service")

            def refused(url: str, ca_file: str | None) -> str:
                conn.execute("SELECT qvl.set_service(%s, ca_file => %s)", (url, ca_file))
                with pytest.raises(psycopg.errors.SqlclientUnableToEstablishSqlconnection) as caught:
                    conn.execute("SELECT qvl.embed('x')")
                return caught.value.diag.message_detail or ""

            assert "certificate did not verify" in refused(svc.http_url, None)  # not a CA the system trusts
            assert "certificate did not verify" in refused(svc.http_url, str(stranger_ca))
            ip_url = svc.http_url.replace("localhost", "127.0.0.1")
            assert "certificate did not verify" in refused(ip_url, str(cert))  # the name is checked too
            assert "cannot use the CA file" in refused(svc.http_url, str(folder / "missing.pem"))
            refused(svc.http_url.replace("https://", "http://"), None)  # plain HTTP to the TLS port
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                conn.execute("SELECT qvl.set_service('http://localhost:1', ca_file => %s)", (str(cert),))
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_the_install_takes_back_what_qvl_trigger_was_given(conn: psycopg.Connection[Any], qvl_db: str) -> None:
    """qvl_trigger belongs to the whole cluster: an install hardens it again, and refuses when it
    has been made a member of a role (it would hold that role's rights)."""
    conn.execute("ALTER ROLE qvl_trigger LOGIN CREATEDB BYPASSRLS")
    install(qvl_db)
    assert conn.execute("SELECT rolsuper, rolcanlogin, rolcreatedb, rolbypassrls, rolinherit FROM pg_roles "
                        "WHERE rolname = 'qvl_trigger'").fetchone() == (False, False, False, False, False)
    powerful = f"powerful_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE ROLE {powerful} NOLOGIN; GRANT {powerful} TO qvl_trigger")
    try:
        from connectors.postgres.installer import InstallError
        with pytest.raises((psycopg.errors.InsufficientPrivilege, InstallError), match="member of"):
            install(qvl_db)
    finally:
        conn.execute(f"REVOKE {powerful} FROM qvl_trigger; DROP ROLE {powerful}")
    install(qvl_db)
