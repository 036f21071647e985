"""Issue 10 (SQL side): whose rights qvl's triggers run with, deadlines and cancellation of the
PL/Python calls, what other roles may learn, TLS to the service."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from tests.integration.postgres.test_security_and_upgrade import role_dsn

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
    assert owners == [("_enqueue_2", "qvl_trigger"), ("_sync_embed", "qvl_trigger")]
