"""Who may do what, and upgrading the schema in place."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import psycopg
import pytest

from connectors.postgres.installer import (
    idempotent_files,
    install,
    installed_version,
    latest_version,
    script,
    sql_files,
)
from tests.integration.postgres.conftest import drain, git_history, images, new_database, role_dsn
from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]


def test_unprivileged_role_queries_but_cannot_manage(conn: psycopg.Connection[Any], qvl_db: str,
                                                     service: ServiceProcess) -> None:
    app, stranger = f"app_{uuid.uuid4().hex[:8]}", f"stranger_{uuid.uuid4().hex[:8]}"
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, caption text)")
    conn.execute("INSERT INTO items SELECT g, 'caption ' || g FROM generate_series(1, 20) g")
    conn.execute("SELECT qvl.create_vectorizer('items', text_columns => ARRAY['caption'])")
    drain(qvl_db, service.grpc_target)
    conn.execute(f"CREATE ROLE {app} LOGIN; GRANT SELECT, INSERT ON items TO {app}; CREATE ROLE {stranger} LOGIN")

    with psycopg.connect(role_dsn(qvl_db, app), autocommit=True) as c:
        assert c.execute("SELECT vector_dims(qvl.embed('hello'))").fetchone() == (64,)
        assert len(c.execute("SELECT * FROM qvl.rerank('q', ARRAY['a', 'b'])").fetchall()) == 2
        assert len(c.execute("SELECT * FROM qvl.search('items', 'caption 3', k => 3)").fetchall()) == 3
        c.execute("INSERT INTO items VALUES (100, 'queued by an ordinary role')")  # the trigger queues it
        assert c.execute("SELECT name, pending FROM qvl.vectorizer_status").fetchone() == ("items", 1)
        for statement in ("SELECT qvl.set_service('http://attacker.example:8080')",
                          "SELECT * FROM qvl.service",
                          "UPDATE qvl.service SET url = 'http://attacker.example:8080'",
                          "SELECT qvl.drop_vectorizer('items')",
                          "DELETE FROM qvl.vectorizer",
                          "SELECT qvl.create_vectorizer('items', 'mine', text_columns => ARRAY['caption'], "
                          "destination => 'e2')",
                          "SELECT qvl.reembed('items')",
                          "SELECT * FROM qvl.failed_items('items')",
                          "SELECT qvl.grant_query_access(current_user)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(statement)
    drain(qvl_db, service.grpc_target)
    assert conn.execute("SELECT embedding IS NOT NULL FROM items WHERE id = 100").fetchone() == (True,)
    assert conn.execute("SELECT url FROM qvl.service").fetchone() == (service.http_url,)

    with psycopg.connect(role_dsn(qvl_db, stranger), autocommit=True) as c, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute("SELECT * FROM qvl.search('items', 'caption 3')")  # search reads the table as its caller


def test_no_public_grant(pg_server: PostgresServer, service: ServiceProcess, request: pytest.FixtureRequest) -> None:
    dsn = new_database(pg_server, request.node.name)
    install(dsn, service_url=service.http_url, public_grant=False)
    role = f"app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        with psycopg.connect(role_dsn(dsn, role), autocommit=True) as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT qvl.embed('x')")
            conn.execute("SELECT qvl.grant_query_access(%s)", (role,))
            assert c.execute("SELECT vector_dims(qvl.embed('x'))").fetchone() == (64,)
    install(dsn)  # a re-install keeps the choice: no PUBLIC access
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT has_function_privilege('public', 'qvl.embed(text,bytea,bytea,text,int)', "
                            "'EXECUTE')").fetchone() == (False,)


def server_notices(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The NOTICEs (and WARNINGs) the server sent the installer, which logs each."""
    return [r.getMessage().removeprefix("postgres: ") for r in caplog.records
            if r.name == "qvl.pg.install" and r.getMessage().startswith("postgres: ")]


def test_install_notices_what_it_did_and_nothing_that_does_not_exist(
        pg_server: PostgresServer, service: ServiceProcess, caplog: pytest.LogCaptureFixture,
        request: pytest.FixtureRequest) -> None:
    """No "function ... does not exist, skipping" for the old signatures a fresh database never had
    (issue 24.4): a fresh install and a second one say nothing. A NOTICE the install means to give
    still comes: here the triggers of a vectorizer it had to re-make."""
    dsn = new_database(pg_server, request.node.name)
    with caplog.at_level(logging.INFO, logger="qvl.pg.install"):
        install(dsn, service_url=service.http_url)
        assert server_notices(caplog) == []
        install(dsn)
        assert server_notices(caplog) == []
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => ARRAY['body'])")
            [trigger] = conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'notes'::regclass "
                                     "AND NOT tgisinternal LIMIT 1").fetchone() or ()
            # Lost behind the guard's back (event triggers do not fire for a replication session).
            conn.execute("SET session_replication_role = replica")
            conn.execute(f'DROP TRIGGER "{trigger}" ON notes')
        install(dsn)
    assert server_notices(caplog) == [
        "qvl: the triggers of vectorizer notes on public.notes were re-made for this version"]


def test_upgrade_in_place_keeps_data(pg_server: PostgresServer, service: ServiceProcess,
                                     request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> None:
    dsn = new_database(pg_server, request.node.name)
    newest = latest_version()
    # Version 6: before the schema guard (7), hybrid search (8), queue upkeep (9) and whatever came after.
    before_version = 6
    first = install(dsn, service_url=service.http_url, service_token=None, target=before_version)
    assert first.version_after == before_version
    pics = images(10, offset=500)
    pics[4] = b"bad"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, caption text, image bytea)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO items VALUES (%s, %s, %s)", [(i, f"c{i}", pics[i]) for i in range(10)])
        conn.execute("SELECT qvl.create_vectorizer('items', text_columns => ARRAY['caption'], "
                     "image_columns => ARRAY['image'])")
        drain(dsn, service.grpc_target)
        before = conn.execute("SELECT id, embedding::text FROM items ORDER BY id").fetchall()
        failed_before = conn.execute("SELECT pk, error FROM qvl.failed_items('items')").fetchall()
        assert len(failed_before) == 1
        # The objects of a version come with it: none of the later versions' yet.
        guard = "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'qvl%'"
        assert conn.execute(guard).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'qvl.vectorizer'::regclass "
                            "AND attname = 'fulltext'").fetchone() == (0,)
        assert conn.execute("SELECT to_regprocedure('qvl.set_fulltext(text, text)')").fetchone() == (None,)
        assert conn.execute("SELECT to_regclass('qvl.workers')").fetchone() == (None,)

    with caplog.at_level(logging.INFO, logger="qvl.pg.install"):
        upgrade = install(dsn)
    said = server_notices(caplog)
    assert not [m for m in said if "does not exist" in m], said
    assert (upgrade.version_before, upgrade.version_after) == (before_version, newest)
    assert len(upgrade.applied) == newest - before_version
    assert upgrade.refreshed == [f.path.name for f in idempotent_files()]
    again = install(dsn)
    assert again.applied == [] and again.refreshed == upgrade.refreshed  # functions re-applied, nothing migrated

    with psycopg.connect(dsn, autocommit=True) as conn:
        assert installed_version(conn) == newest
        assert conn.execute("SELECT id, embedding::text FROM items ORDER BY id").fetchall() == before
        assert conn.execute("SELECT pk, error FROM qvl.failed_items('items')").fetchall() == failed_before
        assert conn.execute("SELECT url, ca_file FROM qvl.service").fetchone() == (service.http_url, None)
        assert conn.execute("SELECT to_regprocedure('qvl.set_service(text,text,real)')").fetchone() == (None,)
        assert conn.execute(guard).fetchone() == (4,)
        conn.execute("INSERT INTO items VALUES (10, 'after the upgrade', %s)", (images(1)[0],))  # triggers survive
        drain(dsn, service.grpc_target)
        assert conn.execute("SELECT embedding IS NOT NULL FROM items WHERE id = 10").fetchone() == (True,)
        assert len(conn.execute("SELECT * FROM qvl.search('items', 'c3', k => 3)").fetchall()) == 3
        # A vectorizer made before version 8 takes a full-text index and hybrid search.
        conn.execute("SELECT qvl.set_fulltext('items', 'english')")
        assert len(conn.execute("SELECT * FROM qvl.hybrid_search('items', 'c3', k => 3)").fetchall()) == 3


# The last commit of the single-folder layout (sql/NNN_*.sql at version 4, the library inside
# qvl._load() under the hand-bumped GD key "qvl_lib_1"): what existing databases hold.
SINGLE_FOLDER_LAYOUT = "5538d1f"


def single_folder_sql() -> list[tuple[int, str, str]]:
    """(version, name, text) of that layout's files, from git history (skips without it)."""
    def git(*args: str) -> str:
        return git_history(SINGLE_FOLDER_LAYOUT, *args).decode()

    names = git("ls-tree", "--name-only", f"{SINGLE_FOLDER_LAYOUT}:sql").split()
    return [(int(n[:3]), n.removesuffix(".sql"), git("show", f"{SINGLE_FOLDER_LAYOUT}:sql/{n}")) for n in names]


def test_upgrade_from_the_single_folder_layout(pg_server: PostgresServer, service: ServiceProcess,
                                               request: pytest.FixtureRequest) -> None:
    """A database installed before sql/ was split (functions created once, library key "qvl_lib_1")
    takes the new installer: every function is replaced, sessions that loaded the old library load
    the new one, and the data, the queue and the triggers carry on."""
    files = single_folder_sql()
    assert [v for v, _, _ in files] == [1, 2, 3, 4]
    dsn = new_database(pg_server, request.node.name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector; CREATE EXTENSION plpython3u")
        with conn.transaction():  # what the installer of that commit did
            conn.execute("SET LOCAL search_path = pg_catalog, public")
            for version, name, text in files:
                conn.execute(text)
                conn.execute("INSERT INTO qvl.schema_version (version, name) VALUES (%s, %s)", (version, name))
            conn.execute("SELECT qvl._apply_grants(true)")
            conn.execute("SELECT qvl.set_service(%s)", (service.http_url,))
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, caption text)")
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO items SELECT g, 'caption ' || g FROM generate_series(1, 8) g")
        conn.execute("SELECT qvl.create_vectorizer('items', text_columns => ARRAY['caption'])")
        conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => ARRAY['body'], mode => 'sync')")
        # No qvl_worker then: a login granted by hand what the worker did (what the docs said to do).
        legacy = f"legacy_worker_{uuid.uuid4().hex[:8]}"
        conn.execute(f"CREATE ROLE {legacy} LOGIN; GRANT USAGE ON SCHEMA qvl TO {legacy}; "
                     f"GRANT ALL ON ALL TABLES IN SCHEMA qvl TO {legacy}; "
                     f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA qvl TO {legacy}; "
                     f"GRANT SELECT, UPDATE ON items TO {legacy}")
        drain(role_dsn(dsn, legacy), service.grpc_target)
        before = conn.execute("SELECT id, embedding::text FROM items ORDER BY id").fetchall()

        with psycopg.connect(dsn, autocommit=True) as old_session:
            old_session.execute("INSERT INTO notes VALUES (1, 'written before the upgrade')")  # loads qvl_lib_1
            upgrade = install(dsn)
            assert (upgrade.version_before, upgrade.version_after) == (4, latest_version())
            assert upgrade.applied == [f.path.name for f in sql_files() if f.version > 4]
            assert upgrade.refreshed == [f.path.name for f in idempotent_files()]
            # The session that had loaded the old library runs the new functions with the new one.
            old_session.execute("INSERT INTO notes VALUES (2, 'written after the upgrade')")
            keys: list[str] = []
            old_session.add_notice_handler(lambda d: keys.extend((d.message_primary or "").split(",")))
            old_session.execute("""DO $$ plpy.notice(",".join(sorted(k for k in GD if k.startswith("qvl_lib"))))
                                   $$ LANGUAGE plpython3u""")
            assert len(keys) == 2 and "qvl_lib_1" in keys, keys

        assert "'qvl_lib_1'" not in conn.execute("SELECT prosrc FROM pg_proc WHERE oid = "
                                               "'qvl.embed(text,bytea,bytea,text,int)'::regprocedure").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM notes WHERE embedding IS NOT NULL").fetchone() == (2,)
        assert conn.execute("SELECT id, embedding::text FROM items ORDER BY id").fetchall() == before
        # The upgrade made qvl_worker and gave it each existing vectorizer's share: a login granted it
        # (conftest.worker_dsn) embeds the rows of a vectorizer made before.
        assert conn.execute("SELECT has_column_privilege('qvl_worker', 'items', 'caption', 'SELECT'), "
                            "has_column_privilege('qvl_worker', 'items', 'embedding', 'UPDATE'), "
                            "has_table_privilege('qvl_worker', 'qvl.queue_1', 'DELETE'), "
                            "has_table_privilege('qvl_worker', 'qvl.failed_2', 'INSERT')").fetchone() == (True,) * 4
        conn.execute("INSERT INTO items VALUES (9, 'after the upgrade')")  # the queueing trigger survives
        drain(dsn, service.grpc_target)
        assert conn.execute("SELECT embedding IS NOT NULL FROM items WHERE id = 9").fetchone() == (True,)
        # Vectorizers made before version 10 get its triggers: a key change moves the row's queue entry
        # (issue 19 item 4), in both modes; a second install leaves them be.
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid IN ('items'::regclass, 'notes'::regclass)"
                            " AND obj_description(oid, 'pg_trigger') = qvl._trigger_comment()").fetchone() == (10,)
        conn.execute("UPDATE items SET caption = 'changed' WHERE id = 9")
        conn.execute("UPDATE items SET id = 10 WHERE id = 9")
        conn.execute("UPDATE notes SET id = 3 WHERE id = 2")
        assert conn.execute("SELECT 'items', id FROM qvl.queue_1 UNION ALL SELECT 'notes', id FROM qvl.queue_2 "
                            "ORDER BY 1").fetchall() == [("items", 10), ("notes", 3)]
        made = "SELECT oid, tgname FROM pg_trigger WHERE tgrelid = 'items'::regclass ORDER BY 1"
        triggers = conn.execute(made).fetchall()
        assert install(dsn).applied == []
        assert conn.execute(made).fetchall() == triggers
        assert len(conn.execute("SELECT * FROM qvl.search('items', 'caption 3', k => 3)").fetchall()) == 3
        conn.execute("SELECT qvl.drop_vectorizer('notes', drop_column => true)")
        conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => ARRAY['body'], dimensions => 32)")
        assert conn.execute("SELECT name, dimensions, pending FROM qvl.vectorizer_status WHERE name = 'notes'"
                            ).fetchone() == ("notes", 32, 2)
        assert conn.execute("SELECT has_function_privilege('public', 'qvl.search(text,text,int,int,boolean,text,int)', "
                            "'EXECUTE')").fetchone() == (True,)
        assert conn.execute("SELECT to_regprocedure('qvl.search(text,text,int,int,boolean)')").fetchone() == (None,)


def test_the_psql_script_installs_what_the_installer_does(pg_server: PostgresServer,
                                                          request: pytest.FixtureRequest) -> None:
    by_installer, by_script = (new_database(pg_server, request.node.name + suffix) for suffix in ("_i", "_s"))
    install(by_installer)
    with psycopg.connect(by_script, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector; CREATE EXTENSION plpython3u")
        with conn.transaction():
            conn.execute(script())
    functions = ("SELECT p.oid::regprocedure::text, md5(p.prosrc), p.proacl::text FROM pg_proc p "
                 "WHERE p.pronamespace = 'qvl'::regnamespace ORDER BY 1")
    found = []
    for dsn in (by_installer, by_script):
        with psycopg.connect(dsn, autocommit=True) as conn:
            found.append((conn.execute(functions).fetchall(), installed_version(conn)))
            # The library loads and runs (no documents: no call to the service).
            assert conn.execute("SELECT * FROM qvl.rerank('q', ARRAY[]::text[])").fetchall() == []
    assert found[0] == found[1] and found[0][1] == latest_version() and len(found[0][0]) >= 30


def test_search_path_cannot_hijack_the_definer_trigger(conn: psycopg.Connection[Any], qvl_db: str) -> None:
    """The queueing trigger runs as its owner without a pinned search_path (it is hot): a role that
    shadows operators and functions in its own schema must not get code run as the owner, when it
    inserts, changes a key (the old key's entries are deleted by key) or truncates."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, caption text)")
    vid = conn.execute("SELECT qvl.create_vectorizer('items', text_columns => ARRAY['caption'], dimensions => 32)"
                       ).fetchone()[0]  # type: ignore[index]
    dbname = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    conn.execute(f"CREATE ROLE {role} LOGIN; GRANT INSERT, UPDATE, TRUNCATE ON items TO {role}; "
                 f"GRANT CREATE ON DATABASE {dbname} "
                 f"TO {role}; CREATE TABLE hijacked (who text); GRANT INSERT ON hijacked TO {role}")
    with psycopg.connect(role_dsn(qvl_db, role), autocommit=True) as c:
        c.execute("CREATE SCHEMA evil")
        for name, args, body in (
                ("ne", "a text, b text", "INSERT INTO public.hijacked VALUES (current_user); SELECT true"),
                ("pg_notify", "a text, b text", "INSERT INTO public.hijacked VALUES (current_user)"),
                ("current_setting", "a text, b boolean", "INSERT INTO public.hijacked VALUES (current_user); "
                                                         "SELECT 'x'::text"),
                ("set_config", "a text, b text, c boolean", "INSERT INTO public.hijacked VALUES (current_user); "
                                                            "SELECT 'x'::text")):
            returns = {"ne": "boolean", "pg_notify": "void"}.get(name, "text")
            c.execute(f"CREATE FUNCTION evil.{name}({args}) RETURNS {returns} LANGUAGE sql AS $$ {body} $$")
        c.execute("CREATE OPERATOR evil.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.ne)")
        for typ in ("int", "text"):
            c.execute(f"CREATE FUNCTION evil.eq(a {typ}, b {typ}) RETURNS boolean LANGUAGE sql AS $$ INSERT INTO "
                      "public.hijacked VALUES (current_user); SELECT a::text OPERATOR(pg_catalog.=) b::text $$")
            c.execute(f"CREATE OPERATOR evil.= (LEFTARG = {typ}, RIGHTARG = {typ}, FUNCTION = evil.eq)")
        c.execute("SET search_path = evil, pg_catalog, public")
        c.execute("INSERT INTO public.items VALUES (1, 'hello')")
        c.execute("UPDATE public.items SET id = 2")
        assert conn.execute(f"SELECT id FROM qvl.queue_{vid}").fetchall() == [(2,)]
        c.execute("TRUNCATE public.items")
    assert conn.execute("SELECT count(*) FROM hijacked").fetchone() == (0,)
    assert conn.execute("SELECT pending FROM qvl.vectorizer_status").fetchone() == (0,)
