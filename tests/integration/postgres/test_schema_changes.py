"""Schema changes on a vectorized table (issue 10 item 8): qvl follows the changes it can follow
(renamed key, input or destination columns, a renamed table, a widened key, a dropped table) and
refuses the others with an error and a HINT, without getting in the way of any other DDL."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import numpy as np
import psycopg
import pytest

from connectors.postgres.installer import install
from tests.integration.postgres.conftest import new_database, role_dsn, running, vec, wait_until
from tests.support.fake_service import FakeService, good_vector
from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]


def scalar(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def make(conn: psycopg.Connection[Any], table: str, mode: str = "async", rows: int = 3) -> int:
    """A table with ``rows`` rows and a vectorizer of its caption: async rows wait in the queue (the
    backfill), sync rows are inserted afterwards, so they are embedded by the statement."""
    insert = f"INSERT INTO {table} SELECT g, 'caption ' || g, 'n' FROM generate_series(1, {rows}) g"
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, caption text, note text)")
    if mode == "async":
        conn.execute(insert)
    vid = int(scalar(conn, f"SELECT qvl.create_vectorizer('{table}', text_columns => ARRAY['caption'], "
                           f"dimensions => 32, mode => '{mode}')"))
    if mode == "sync":
        conn.execute(insert)
    return vid


def missing(conn: psycopg.Connection[Any], table: str, column: str = "embedding") -> int:
    return int(scalar(conn, f"SELECT count(*) FROM {table} WHERE {column} IS NULL"))


def pending(conn: psycopg.Connection[Any], name: str) -> int:
    return int(scalar(conn, "SELECT pending FROM qvl.vectorizer_status WHERE name = %s", (name,)))


def columns(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, str]]:
    return conn.execute("SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
                        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                        (table,)).fetchall()


def test_renaming_the_key_column_is_followed(conn: psycopg.Connection[Any], qvl_db: str, fake: FakeService) -> None:
    """Today an INSERT after `RENAME COLUMN id` fails in the queueing trigger (async) and in the
    embedding trigger (sync), and the worker's claims fail."""
    vid = make(conn, "photos")
    make(conn, "notes", mode="sync")
    # This session plans the search (and caches the plan) before the rename.
    assert len(conn.execute("SELECT * FROM qvl.search('notes', 'caption 1', k => 2, rerank => false)").fetchall()) == 2

    conn.execute("ALTER TABLE photos RENAME COLUMN id TO photo_id")
    conn.execute("ALTER TABLE notes RENAME COLUMN id TO note_id")

    conn.execute("INSERT INTO photos (photo_id, caption) VALUES (4, 'caption 4')")
    conn.execute("INSERT INTO notes (note_id, caption) VALUES (4, 'caption 4')")
    assert missing(conn, "notes") == 0  # embedded in the statement
    assert conn.execute("SELECT pk_columns::text[] FROM qvl.vectorizer ORDER BY id").fetchall() == [
        (["photo_id"],), (["note_id"],)]
    assert columns(conn, f"qvl.queue_{vid}")[0] == ("photo_id", "integer")
    assert columns(conn, f"qvl.failed_{vid}")[0] == ("photo_id", "integer")
    hits = conn.execute("SELECT pk FROM qvl.search('notes', 'caption 4', k => 4, rerank => false)").fetchall()
    assert sorted(h[0] for h in hits) == ["1", "2", "3", "4"]

    with running(qvl_db, fake.target):
        wait_until(lambda: missing(conn, "photos") == 0, timeout=20, every=0.1)
    got = vec(scalar(conn, "SELECT embedding::text FROM photos WHERE photo_id = 4"))
    np.testing.assert_allclose(got, good_vector("caption 4", 32), atol=1e-6)
    assert pending(conn, "photos") == 0


def test_widening_the_key_type_is_followed(conn: psycopg.Connection[Any], qvl_db: str, fake: FakeService) -> None:
    """Today the queue keeps an int key: a bigint key past 2^31 cannot be queued, so the INSERT fails."""
    vid = make(conn, "photos")  # three rows queued before the change
    with running(qvl_db, fake.target):  # a worker that read the old definition
        wait_until(lambda: missing(conn, "photos") == 0, timeout=20, every=0.1)
        conn.execute("INSERT INTO photos VALUES (4, 'caption 4')")  # queued as int
        conn.execute("ALTER TABLE photos ALTER COLUMN id TYPE bigint")
        conn.execute("INSERT INTO photos VALUES (5000000000, 'caption big')")
        assert dict(columns(conn, f"qvl.queue_{vid}"))["id"] == "bigint"
        assert dict(columns(conn, f"qvl.failed_{vid}"))["id"] == "bigint"
        assert scalar(conn, "SELECT pk_types FROM qvl.vectorizer") == ["bigint"]
        wait_until(lambda: missing(conn, "photos") == 0, timeout=20, every=0.1)
    got = vec(scalar(conn, "SELECT embedding::text FROM photos WHERE id = 5000000000"))
    np.testing.assert_allclose(got, good_vector("caption big", 32), atol=1e-6)
    assert pending(conn, "photos") == 0


def test_renaming_inputs_destination_and_table_is_followed(conn: psycopg.Connection[Any], qvl_db: str,
                                                           fake: FakeService) -> None:
    """Today the worker's claims fail once an input column is renamed (rows wait for ever), and a sync
    table refuses every INSERT."""
    make(conn, "photos")
    make(conn, "notes", mode="sync")
    with running(qvl_db, fake.target):
        wait_until(lambda: missing(conn, "photos") == 0, timeout=20, every=0.1)
        conn.execute("ALTER TABLE photos RENAME COLUMN caption TO title")
        conn.execute("ALTER TABLE photos RENAME COLUMN embedding TO vec")
        conn.execute("ALTER TABLE photos RENAME TO pictures")
        conn.execute("CREATE SCHEMA gallery")
        conn.execute("ALTER TABLE pictures SET SCHEMA gallery")
        conn.execute("UPDATE gallery.pictures SET title = 'a new title' WHERE id = 1")  # changed input: queued
        conn.execute("INSERT INTO gallery.pictures VALUES (4, 'caption 4')")
        wait_until(lambda: missing(conn, "gallery.pictures", "vec") == 0 and pending(conn, "photos") == 0,
                   timeout=20, every=0.1)
    got = vec(scalar(conn, "SELECT vec::text FROM gallery.pictures WHERE id = 1"))
    np.testing.assert_allclose(got, good_vector("a new title", 32), atol=1e-6)
    assert conn.execute("SELECT source::text, text_columns::text[], destination::text FROM qvl.vectorizer "
                        "WHERE name = 'photos'").fetchone() == ("gallery.pictures", ["title"], "vec")

    conn.execute("ALTER TABLE notes RENAME COLUMN caption TO body")
    conn.execute("ALTER TABLE notes RENAME COLUMN embedding TO body_vector")
    conn.execute("INSERT INTO notes VALUES (4, 'caption 4')")
    assert missing(conn, "notes", "body_vector") == 0
    hits = conn.execute("SELECT pk FROM qvl.search('notes', 'caption 4', k => 1)").fetchall()
    assert len(hits) == 1


REFUSED = [
    ("ALTER TABLE photos DROP COLUMN id", "key column id"),
    ("ALTER TABLE photos DROP COLUMN caption CASCADE", "caption"),
    ("ALTER TABLE photos DROP COLUMN embedding", "embedding"),
    ("ALTER TABLE photos ALTER COLUMN embedding TYPE vector(48) USING NULL", "embedding"),
    ("ALTER TABLE photos ALTER COLUMN id TYPE smallint", "smallint"),
    ("ALTER TABLE photos ALTER COLUMN id TYPE text", "text"),
    ("ALTER TABLE photos DROP CONSTRAINT photos_pkey", "primary key"),
    ("ALTER TABLE photos RENAME COLUMN id TO attempts", "attempts"),
]


@pytest.mark.parametrize(("statement", "named"), REFUSED, ids=[s.split("photos ", 1)[1] for s, _ in REFUSED])
def test_unsafe_changes_are_refused_with_a_hint(conn: psycopg.Connection[Any], statement: str, named: str) -> None:
    make(conn, "photos")
    before = columns(conn, "photos")
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(statement)
    diag = caught.value.diag
    assert (diag.message_primary or "").startswith("qvl: "), diag.message_primary
    assert named in (diag.message_primary or "") and "photos" in (diag.message_primary or "")
    assert "qvl.drop_vectorizer" in (diag.message_hint or "") or "qvl.reembed" in (diag.message_hint or ""), \
        diag.message_hint
    assert columns(conn, "photos") == before  # the statement was rolled back
    assert scalar(conn, "SELECT count(*) FROM pg_index WHERE indrelid = 'photos'::regclass AND indisprimary") == 1
    conn.execute("INSERT INTO photos VALUES (4, 'caption 4')")
    assert pending(conn, "photos") == 4


def test_a_key_named_like_a_queue_column_is_refused_with_a_hint(conn: psycopg.Connection[Any]) -> None:
    """create_vectorizer on a table whose key is called ``attempts`` used to fail inside the queue's
    CREATE TABLE (column "attempts" specified more than once), naming neither the key nor a way out."""
    conn.execute("CREATE TABLE tries (attempts int PRIMARY KEY, caption text)")
    with pytest.raises(psycopg.errors.DuplicateColumn) as caught:
        conn.execute("SELECT qvl.create_vectorizer('tries', text_columns => ARRAY['caption'], dimensions => 32)")
    diag = caught.value.diag
    assert diag.message_primary == ("qvl: the key column attempts of public.tries has the name of a column of "
                                    "qvl's queue tables")
    assert "RENAME COLUMN attempts TO" in (diag.message_hint or ""), diag.message_hint
    assert scalar(conn, "SELECT count(*) FROM qvl.vectorizer") == 0
    conn.execute("ALTER TABLE tries RENAME COLUMN attempts TO try_id")
    conn.execute("SELECT qvl.create_vectorizer('tries', text_columns => ARRAY['caption'], dimensions => 32)")


def test_a_vectorizer_trigger_may_not_be_dropped_and_disabling_it_is_said(conn: psycopg.Connection[Any]) -> None:
    """DROP TRIGGER of a vectorizer's trigger left the vectorizer in place and the table's new rows never
    queued, silently; so did DISABLE TRIGGER. The first is refused (drop the vectorizer instead); the
    second stays allowed (bulk loads, pg_restore --disable-triggers) with a WARNING saying how to catch up."""
    vid = make(conn, "photos")
    for trig in (f"qvl_{vid}_insert", f"qvl_{vid}_update", f"qvl_{vid}_key", f"zzz_qvl_{vid}_key",
                 f"qvl_{vid}_truncate"):
        with pytest.raises(psycopg.errors.DependentObjectsStillExist) as caught:
            conn.execute(f"DROP TRIGGER {trig} ON photos")
        message = caught.value.diag.message_primary or ""
        assert message.startswith(f"qvl: cannot drop trigger {trig} on public.photos: vectorizer photos"), message
        assert "SELECT qvl.drop_vectorizer('photos')" in (caught.value.diag.message_hint or "")
    with pytest.raises(psycopg.errors.DependentObjectsStillExist):  # nor by cascade
        conn.execute(f"DROP FUNCTION qvl._enqueue_{vid}() CASCADE")

    warnings: list[tuple[str | None, str | None]] = []  # a Diagnostic is valid only inside the handler

    def on_notice(d: psycopg.errors.Diagnostic) -> None:
        if d.severity_nonlocalized == "WARNING":
            warnings.append((d.message_primary, d.message_hint))

    conn.add_notice_handler(on_notice)
    conn.execute(f"ALTER TABLE photos DISABLE TRIGGER qvl_{vid}_insert")
    assert warnings == [(
        f"qvl: trigger qvl_{vid}_insert of vectorizer photos on public.photos is disabled: rows written while it "
        "does not fire are not queued",
        f"ALTER TABLE public.photos ENABLE ALWAYS TRIGGER qvl_{vid}_insert; then SELECT qvl.reembed('photos') "
        "queues the rows written meanwhile.")]
    conn.execute("INSERT INTO photos VALUES (4, 'caption 4')")
    assert pending(conn, "photos") == 3  # not queued: what the warning said
    conn.execute(f"ALTER TABLE photos ENABLE ALWAYS TRIGGER qvl_{vid}_insert")
    warnings.clear()
    conn.execute("ALTER TABLE photos ADD COLUMN shot_at date")
    assert warnings == []
    assert scalar(conn, "SELECT qvl.reembed('photos')") == 4

    # qvl's own trigger changes go on: a reinstall of the vectorizer's objects, then its drop.
    conn.execute(f"SELECT qvl._install_objects({vid})")
    assert scalar(conn, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'photos'::regclass AND tgenabled = 'A'") == 5
    conn.execute("SELECT qvl.drop_vectorizer('photos')")
    assert scalar(conn, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'photos'::regclass") == 0


def test_the_table_owner_cannot_take_a_vectorizer_trigger_away(conn: psycopg.Connection[Any], qvl_db: str) -> None:
    """Issue 19 item 8: the guard let qvl's own drops through on a setting any role may set, so the table's
    owner dropped a trigger after SET qvl.dropping_triggers = 'on'; ALTER TRIGGER ... RENAME took a trigger
    out of the guard's sight (then DISABLE and DROP were silent, and the admin's drop_vectorizer failed);
    CREATE OR REPLACE TRIGGER swapped one for the owner's own. Each is refused now; only qvl's functions
    can mark a change of the triggers as qvl's own (a row of a table nobody else may write)."""
    vid = make(conn, "mtable")
    sid = make(conn, "stable", mode="sync")
    owner = f"mallory_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE ROLE {owner} LOGIN; ALTER TABLE mtable OWNER TO {owner}; ALTER TABLE stable OWNER TO {owner}")
    conn.execute("CREATE FUNCTION public.noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$")
    triggers = "SELECT tgname::text, tgenabled FROM pg_trigger WHERE tgrelid = 'mtable'::regclass ORDER BY 1"
    made = conn.execute(triggers).fetchall()
    refusals = {
        f"DROP TRIGGER qvl_{vid}_insert ON mtable": f"cannot drop trigger qvl_{vid}_insert on public.mtable",
        f"DROP TRIGGER zzz_qvl_{vid}_key ON mtable": f"cannot drop trigger zzz_qvl_{vid}_key on public.mtable",
        f"ALTER TRIGGER qvl_{vid}_update ON mtable RENAME TO harmless": f"cannot rename trigger qvl_{vid}_update",
        f"ALTER TRIGGER zzz_qvl_{sid}_update ON stable RENAME TO harmless":
            f"cannot rename trigger zzz_qvl_{sid}_update on public.stable",
        f"CREATE OR REPLACE TRIGGER qvl_{vid}_insert AFTER INSERT ON mtable FOR EACH ROW "
        "EXECUTE FUNCTION public.noop()": f"cannot replace trigger qvl_{vid}_insert",
        f"CREATE TRIGGER qvl_{vid}_update_too AFTER UPDATE ON mtable FOR EACH ROW "
        f"EXECUTE FUNCTION qvl._enqueue_{vid}()": "permission denied",
    }
    with psycopg.connect(role_dsn(qvl_db, owner), autocommit=True) as c:
        c.execute("SET qvl.dropping_triggers = 'on'")
        for statement, refusal in refusals.items():
            with pytest.raises(psycopg.Error) as caught:
                c.execute(statement)
            assert refusal in str(caught.value), (statement, str(caught.value))
            if refusal != "permission denied":
                assert isinstance(caught.value, psycopg.errors.DependentObjectsStillExist), statement
                assert "qvl.drop_vectorizer('" in (caught.value.diag.message_hint or ""), statement
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(f"INSERT INTO qvl.trigger_changes (vectorizer) VALUES ({vid})")
        c.execute("INSERT INTO mtable VALUES (4, 'caption 4')")
    assert conn.execute(triggers).fetchall() == made
    assert pending(conn, "mtable") == 4

    conn.execute(f"SELECT qvl._install_objects({vid})")  # qvl's own changes go on,
    assert conn.execute(triggers).fetchall() == made
    conn.execute("SELECT qvl.drop_vectorizer('mtable')")  # and the admin's drop works
    assert scalar(conn, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'mtable'::regclass") == 0
    assert scalar(conn, "SELECT count(*) FROM qvl.trigger_changes") == 0  # marks never outlive qvl's change


def test_a_column_dropped_by_another_command_is_refused(conn: psycopg.Connection[Any]) -> None:
    """DROP DOMAIN ... CASCADE drops the columns of that type: the guard sees every dropped column."""
    conn.execute("CREATE DOMAIN label AS text CHECK (length(VALUE) < 100)")
    conn.execute("CREATE TABLE photos (id int PRIMARY KEY, caption label)")
    conn.execute("SELECT qvl.create_vectorizer('photos', text_columns => ARRAY['caption'], dimensions => 32)")
    with pytest.raises(psycopg.errors.DependentObjectsStillExist, match=r"input column caption of public\.photos"):
        conn.execute("DROP DOMAIN label CASCADE")
    assert dict(columns(conn, "photos"))["caption"] == "label"


def test_an_input_column_type_change_is_refused_by_postgres(conn: psycopg.Connection[Any]) -> None:
    """The UPDATE trigger depends on its input columns: Postgres itself refuses to retype them."""
    make(conn, "photos")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="used in a trigger definition"):
        conn.execute("ALTER TABLE photos ALTER COLUMN caption TYPE varchar(200)")


def test_dropping_the_table_drops_its_vectorizer(conn: psycopg.Connection[Any]) -> None:
    """Today the catalog keeps a vectorizer of a table that is gone: qvl.vectorizer_status fails for
    every vectorizer, and the name cannot be used again."""
    vid = make(conn, "photos")
    make(conn, "notes")
    conn.execute("CREATE SCHEMA archive")
    conn.execute("CREATE TABLE archive.old (id int PRIMARY KEY, caption text)")
    old = int(scalar(conn, "SELECT qvl.create_vectorizer('archive.old', text_columns => ARRAY['caption'], "
                           "dimensions => 32)"))
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))

    conn.execute("DROP TABLE photos")
    conn.execute("DROP SCHEMA archive CASCADE")

    assert conn.execute("SELECT name, pending FROM qvl.vectorizer_status").fetchall() == [("notes", 3)]
    for gone in (vid, old):
        assert scalar(conn, "SELECT to_regclass(%s)", (f"qvl.queue_{gone}",)) is None
        assert scalar(conn, "SELECT to_regclass(%s)", (f"qvl.failed_{gone}",)) is None
        assert scalar(conn, "SELECT to_regprocedure(%s)", (f"qvl._enqueue_{gone}()",)) is None
    assert any("photos" in n and "dropped" in n for n in notices), notices
    make(conn, "photos")  # the name is free again
    assert pending(conn, "photos") == 3


def test_other_ddl_is_untouched(conn: psycopg.Connection[Any], qvl_db: str) -> None:
    """Tables without a vectorizer, and changes qvl does not depend on, pass as before, whoever runs them."""
    make(conn, "photos")
    conn.execute("CREATE TABLE plain (id int PRIMARY KEY, body text)")
    for statement in ("ALTER TABLE plain RENAME COLUMN id TO plain_id",
                      "ALTER TABLE plain ALTER COLUMN plain_id TYPE text",
                      "ALTER TABLE plain DROP CONSTRAINT plain_pkey",
                      "ALTER TABLE plain DROP COLUMN body",
                      "ALTER TABLE plain RENAME TO plain2",
                      "DROP TABLE plain2",
                      "ALTER TABLE photos ADD COLUMN extra int",
                      "ALTER TABLE photos ALTER COLUMN note SET STATISTICS 50",
                      "ALTER TABLE photos DROP COLUMN extra",
                      "ALTER TABLE photos RENAME CONSTRAINT photos_pkey TO pk",
                      "ALTER TABLE photos DROP CONSTRAINT pk, ADD PRIMARY KEY (id)"):
        conn.execute(statement)
    conn.execute("INSERT INTO photos VALUES (4, 'caption 4')")
    assert pending(conn, "photos") == 4

    # A role that owns its tables but has no rights in schema qvl (--no-public-grant).
    role = f"app_{uuid.uuid4().hex[:8]}"
    conn.execute("SELECT qvl._apply_grants(false)")
    conn.execute(f"CREATE ROLE {role} LOGIN; ALTER TABLE photos OWNER TO {role}")
    conn.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
    with psycopg.connect(role_dsn(qvl_db, role), autocommit=True) as c:
        c.execute("CREATE TABLE mine (id int PRIMARY KEY, body text)")
        c.execute("ALTER TABLE mine RENAME COLUMN id TO mine_id")
        c.execute("DROP TABLE mine")
        c.execute("ALTER TABLE photos RENAME COLUMN id TO photo_id")  # followed with qvl's rights
        c.execute("INSERT INTO photos (photo_id, caption) VALUES (5, 'caption 5')")
        with pytest.raises(psycopg.Error, match="qvl: "):
            c.execute("ALTER TABLE photos DROP COLUMN note, DROP COLUMN embedding")
    assert pending(conn, "photos") == 5
    assert scalar(conn, "SELECT pk_columns::text[] FROM qvl.vectorizer") == ["photo_id"]


def test_qvl_functions_that_alter_the_table_still_work(conn: psycopg.Connection[Any]) -> None:
    """qvl.reembed retypes the destination and qvl.drop_vectorizer may drop it: not refused."""
    make(conn, "photos")
    assert scalar(conn, "SELECT qvl.reembed('photos', dimensions => 48)") == 3
    assert dict(columns(conn, "photos"))["embedding"] == "vector(48)"
    assert scalar(conn, "SELECT qvl.drop_vectorizer('photos', drop_column => true)") is True
    assert "embedding" not in dict(columns(conn, "photos"))


def test_a_batch_in_hand_during_a_rename_is_written(conn: psycopg.Connection[Any], qvl_db: str,
                                                    fake: FakeService) -> None:
    """Rows claimed before the key was renamed are stored when their vectors come back, not left
    claimed until their lease runs out."""
    make(conn, "photos", rows=0)
    gate, held = threading.Event(), threading.Event()

    def behave(text: str) -> None:
        if text == "caption 1":
            held.set()
            gate.wait(10)

    fake.fake.behave = behave
    conn.execute("INSERT INTO photos VALUES (1, 'caption 1')")
    with running(qvl_db, fake.target, lease_s=120):
        assert held.wait(10)
        conn.execute("ALTER TABLE photos RENAME COLUMN id TO photo_id")
        gate.set()
        started = time.monotonic()
        wait_until(lambda: missing(conn, "photos") == 0, timeout=20, every=0.1)
        assert time.monotonic() - started < 10
    assert pending(conn, "photos") == 0


def test_out_of_date_column_numbers_are_never_followed_blindly(conn: psycopg.Connection[Any]) -> None:
    """qvl records the column numbers of the columns it uses (a rename keeps them). A dump and restore
    renumbers a table's columns (dropped ones leave no gap), so the recorded numbers may point at other
    columns: a name still there wins, and a rename qvl cannot place is refused, not followed wrongly."""
    make(conn, "photos")  # id 1, caption 2, note 3, embedding 4
    stale = "UPDATE qvl.vectorizer SET attnums = '{1,3,2}'"  # caption at note's number, embedding at caption's
    conn.execute(stale)
    conn.execute("ALTER TABLE photos RENAME COLUMN note TO remark")  # the column recorded (wrongly) for caption
    assert conn.execute("SELECT text_columns::text[], destination::text, attnums FROM qvl.vectorizer").fetchone() == (
        ["caption"], "embedding", [1, 2, 4])  # found by name, numbers put right
    conn.execute(stale)
    with pytest.raises(psycopg.errors.DependentObjectsStillExist, match="cannot tell what became of it") as caught:
        conn.execute("ALTER TABLE photos RENAME COLUMN caption TO title")
    assert "RENAME COLUMN ... TO caption" in (caught.value.diag.message_hint or "")
    assert scalar(conn, "SELECT text_columns::text[] FROM qvl.vectorizer") == ["caption"]


def test_an_upgrade_guards_vectorizers_made_before_it(pg_server: PostgresServer, service: ServiceProcess,
                                                      request: pytest.FixtureRequest,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Vectorizers made before version 7 are guarded after the upgrade; one whose table was dropped
    before is dropped by it; one whose column was renamed before is refused until it is renamed back."""
    dsn = new_database(pg_server, request.node.name)
    install(dsn, service_url=service.http_url, target=6)
    with psycopg.connect(dsn, autocommit=True) as conn:
        photos = make(conn, "photos")
        gone = make(conn, "gone")
        drifted = make(conn, "drifted")
        conn.execute("DROP TABLE gone")  # unguarded: the vectorizer stays behind
        conn.execute("ALTER TABLE drifted RENAME COLUMN caption TO title")  # unguarded: the vectorizer is broken
        # As a vectorizer made before version 10 (no key or truncate triggers), which the upgrade re-makes;
        # but not the broken one's: the install goes on, with a WARNING.
        for vid, table in ((photos, "photos"), (drifted, "drifted")):
            conn.execute(f"DROP TRIGGER qvl_{vid}_key ON {table}; DROP TRIGGER zzz_qvl_{vid}_key ON {table}")
        with caplog.at_level(logging.INFO, logger="qvl.pg.install"):
            install(dsn)
        logged = [r.getMessage().removeprefix("postgres: qvl: the triggers of vectorizer ") for r in caplog.records]
        assert "photos on public.photos were re-made for this version" in logged, logged
        assert any(m.startswith("drifted on public.drifted were left as they were") for m in logged), logged
        assert scalar(conn, f"SELECT count(*) FROM pg_trigger WHERE tgname = 'qvl_{photos}_key'") == 1
        assert scalar(conn, f"SELECT count(*) FROM pg_trigger WHERE tgname = 'qvl_{drifted}_key'") == 0
        assert conn.execute("SELECT name FROM qvl.vectorizer ORDER BY id").fetchall() == [("photos",), ("drifted",)]
        assert scalar(conn, "SELECT to_regclass(%s)", (f"qvl.queue_{gone}",)) is None

        conn.execute("ALTER TABLE photos RENAME COLUMN id TO photo_id")
        conn.execute("INSERT INTO photos (photo_id, caption) VALUES (4, 'caption 4')")
        assert pending(conn, "photos") == 4
        with pytest.raises(psycopg.Error, match="qvl: "):
            conn.execute("ALTER TABLE photos DROP COLUMN embedding")

        with pytest.raises(psycopg.errors.DependentObjectsStillExist, match="no column caption") as caught:
            conn.execute("ALTER TABLE drifted ADD COLUMN extra int")
        assert "Rename it back" in (caught.value.diag.message_hint or "")
        conn.execute("ALTER TABLE drifted RENAME COLUMN title TO caption")
        conn.execute("INSERT INTO drifted VALUES (4, 'caption 4')")
        assert pending(conn, "drifted") == 4
