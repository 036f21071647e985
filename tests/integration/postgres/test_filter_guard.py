"""Issue 19, finding 1: the filter of qvl.search / qvl.hybrid_search is one condition on the row,
whatever the quoting; it runs read-only; a structured (jsonb) filter binds its values. Real
Postgres, the real service, a role that is not a superuser."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest

from tests.integration.postgres.conftest import role_dsn
from tests.media_factory import image_bytes

pytestmark = [pytest.mark.postgres, pytest.mark.service]

# The inputs (Python literals as reported). The control was refused before the fix too.
CONTROL = "caption = 'x' OR (SELECT count(*) FROM public.secret) > 0"
BYPASS = "caption = E'x'\n'\\' ' OR (SELECT s FROM public.secret LIMIT 1)::int > 0 --'"
DML = ("caption = E'x'\n'\\' ' ) ; DELETE FROM public.victim ; SELECT photos.id::text AS qvl_pk, 0::float4 AS "
       "qvl_distance, $j$[{\"Plan\": {\"Plan Rows\": 1e9}}]$j$ AS \"QUERY PLAN\" FROM public.photos WHERE (true --'")

# Every SQL entry point that takes a filter: (name, SQL with %s for the filter, extra parameters).
PICTURE = image_bytes("PNG", (64, 48), seed=3)
ENTRY_POINTS: list[tuple[str, str, tuple[Any, ...]]] = [
    ("search", "SELECT pk FROM qvl.search('photos', 'x', k => 1, candidates => 1, rerank => false, filter => %s)", ()),
    ("search bytea", "SELECT pk FROM qvl.search('photos', %s::bytea, k => 1, candidates => 1, rerank => false, "
                     "filter => %s)", (PICTURE,)),
    ("search typed", "SELECT key FROM qvl.search('photos', 'x', NULL::int, k => 1, candidates => 1, rerank => false, "
                     "filter => %s)", ()),
    ("search bytea typed", "SELECT key FROM qvl.search('photos', %s::bytea, NULL::int, k => 1, candidates => 1, "
                           "rerank => false, filter => %s)", (PICTURE,)),
    ("hybrid", "SELECT pk FROM qvl.hybrid_search('photos', 'x', k => 1, candidates => 1, rerank => false, "
               "filter => %s)", ()),
    ("hybrid typed", "SELECT key FROM qvl.hybrid_search('photos', 'x', NULL::int, k => 1, candidates => 1, "
                     "rerank => false, filter => %s)", ()),
]
ROWS = 40


def random_vectors(conn: psycopg.Connection[Any], table: str, ids: range, dims: int = 32) -> None:
    """Vectors written directly (seeded): searching needs no worker."""
    rng = np.random.default_rng(19)
    with conn.cursor() as cur:
        cur.executemany(f"UPDATE {table} SET embedding = %s::vector WHERE id = %s",
                        [("[" + ",".join(map(str, rng.normal(size=dims).astype(np.float32))) + "]", i) for i in ids])


@pytest.fixture
def app(conn: psycopg.Connection[Any], qvl_db: str) -> Iterator[psycopg.Connection[Any]]:
    """public.photos (a vectorizer with full text; rows 1..40 have vectors, 41..44 not yet), a table
    the application may read (secret) and one it may empty (victim), and the application's role."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    conn.execute("CREATE TABLE public.photos (id int PRIMARY KEY, caption text, shop int, taken_on date, "
                 "tags text[], note text)")
    conn.execute("INSERT INTO photos SELECT g, 'photo ' || g || CASE WHEN g % 5 = 0 THEN ' of a harbour' ELSE '' END, "
                 "g % 3, date '2024-01-01' + g, ARRAY['t' || (g % 4)], CASE WHEN g % 7 = 0 THEN NULL ELSE 'n' END "
                 f"FROM generate_series(1, {ROWS + 4}) g")
    conn.execute("SELECT qvl.create_vectorizer('photos', text_columns => ARRAY['caption'], dimensions => 32, "
                 "fulltext => 'simple')")
    random_vectors(conn, "photos", range(1, ROWS + 1))
    conn.execute("CREATE TABLE public.secret (s text); INSERT INTO public.secret VALUES ('topsecret')")
    conn.execute("CREATE TABLE public.victim (x int); INSERT INTO public.victim VALUES (1), (2), (3)")
    conn.execute(f"CREATE ROLE {role} LOGIN")
    conn.execute(f"GRANT SELECT ON photos, secret TO {role}; GRANT SELECT, INSERT, DELETE ON victim TO {role}")
    conn.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
    with psycopg.connect(role_dsn(qvl_db, role), autocommit=True) as c:
        yield c


def victims(conn: psycopg.Connection[Any]) -> int:
    return conn.execute("SELECT count(*) FROM public.victim").fetchone()[0]  # type: ignore[index]


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=[e[0] for e in ENTRY_POINTS])
def test_a_filter_cannot_hold_a_subquery_however_it_quotes(app: psycopg.Connection[Any],
                                                           entry: tuple[str, str, tuple[Any, ...]]) -> None:
    """Before the fix the bypass ran its subquery: 22P02 'invalid input syntax for type integer:
    "topsecret"'. The application may read secret itself; the filter may not."""
    _, sql, extra = entry
    for refused in (CONTROL, BYPASS):
        with pytest.raises(psycopg.errors.SyntaxError) as caught:
            app.execute(sql, (*extra, refused))
        assert "subquery" in (caught.value.diag.message_primary or ""), caught.value.diag.message_primary
        assert "topsecret" not in str(caught.value)
    assert app.execute("SELECT s FROM public.secret").fetchone() == ("topsecret",)


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=[e[0] for e in ENTRY_POINTS])
def test_a_filter_cannot_become_a_second_statement(conn: psycopg.Connection[Any], app: psycopg.Connection[Any],
                                                   entry: tuple[str, str, tuple[Any, ...]]) -> None:
    """Before the fix the DML input emptied victim (3 rows -> 0): SPI prepared three statements."""
    _, sql, extra = entry
    with pytest.raises(psycopg.errors.SyntaxError):
        app.execute(sql, (*extra, DML))
    assert victims(conn) == 3


# -- read-only ---------------------------------------------------------------------------------------
def test_a_filter_runs_read_only_and_the_transaction_writes_again_after(conn: psycopg.Connection[Any],
                                                                        app: psycopg.Connection[Any]) -> None:
    """One expression may still call a function that writes: the search runs read-only (Postgres
    refuses every write inside it, 25006), and the caller's transaction is read-write again after.
    Before the fix public.note(id) wrote a row per row it was asked about."""
    app.execute("CREATE FUNCTION public.note(x int) RETURNS boolean LANGUAGE plpgsql AS "
                "'BEGIN INSERT INTO public.victim VALUES (x); RETURN true; END'")
    app.execute("CREATE SEQUENCE public.app_seq")
    for _, sql, extra in ENTRY_POINTS:
        for writes in ("public.note(id)", "nextval('public.app_seq') > 0"):
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                app.execute(sql, (*extra, writes))
        with pytest.raises(psycopg.errors.ActiveSqlTransaction):  # and it cannot be turned off from inside
            app.execute(sql, (*extra, "set_config('transaction_read_only', 'off', false) = 'off' AND public.note(id)"))
    assert victims(conn) == 3
    with app.transaction():
        app.execute("INSERT INTO public.victim VALUES (4)")
        assert len(app.execute(ENTRY_POINTS[0][1], ("shop = 1",)).fetchall()) == 1
        app.execute("INSERT INTO public.victim VALUES (5)")
        assert app.execute("SHOW transaction_read_only").fetchone() == ("off",)
    assert victims(conn) == 5
    # A statement that writes what a search finds writes (the search alone is read-only).
    app.execute("CREATE TABLE public.saved (n serial, pk text)")
    app.execute("INSERT INTO public.saved (pk) SELECT pk FROM qvl.search('photos', 'x', k => 3, rerank => false, "
                "filter => 'shop = 1')")
    assert app.execute("SELECT count(*), max(n) FROM public.saved").fetchone() == (3, 3)


# -- the structured filter -----------------------------------------------------------------------------
def search_all(c: psycopg.Connection[Any], flt: Any, *, hybrid: bool = False, typed: bool = False) -> list[int]:
    """Every row that passes the filter, nearest first (rerank off, k past the table's size)."""
    fn = "hybrid_search" if hybrid else "search"
    key = "key" if typed else "pk::int"
    with_key = ", NULL::int" if typed else ""
    extra = ", weights => ARRAY[1, 0]" if hybrid else ""
    cast = "::jsonb" if not isinstance(flt, str) else ""
    value = psycopg.types.json.Jsonb(flt) if not isinstance(flt, str) else flt
    return [r[0] for r in c.execute(f"SELECT {key} FROM qvl.{fn}('photos', 'photo'{with_key}, k => 100, "
                                    f"candidates => 100, rerank => false{extra}, filter => %s{cast})", (value,))]


STRUCTURED = [  # (structured filter, the same condition as SQL text)
    ({"column": "shop", "op": "=", "value": 1}, "shop = 1"),
    ({"and": [{"column": "shop", "op": "in", "value": [0, 2]},
              {"not": {"column": "caption", "op": "like", "value": "%harbour%"}}]},
     "shop IN (0, 2) AND NOT caption LIKE '%harbour%'"),
    ({"or": [{"column": "taken_on", "op": ">=", "value": "2024-02-01"}, {"column": "note", "op": "is null"}]},
     "taken_on >= '2024-02-01' OR note IS NULL"),
    ({"column": "tags", "op": "@>", "value": ["t1"]}, "tags @> ARRAY['t1']"),
    ({"column": "id", "op": "not in", "value": [1, 2, 3]}, "id NOT IN (1, 2, 3)"),
    ({"column": "caption", "op": "ilike", "value": "PHOTO 1%"}, "caption ILIKE 'PHOTO 1%'"),
    ({"column": "caption", "op": "=", "value": "photo 5 of a harbour"}, "caption = 'photo 5 of a harbour'"),
    ({"column": "id", "op": "<=", "value": 3}, "id <= 3"),
    ({"column": "taken_on", "op": "<", "value": "2024-01-04"}, "taken_on < '2024-01-04'"),
    ({"and": []}, "true"),
    ({"or": []}, "false"),
]


def test_a_structured_filter_selects_what_the_same_sql_condition_selects(app: psycopg.Connection[Any]) -> None:
    for structured, sql in STRUCTURED:
        want = search_all(app, sql)
        assert search_all(app, structured) == want, structured
        assert search_all(app, structured, typed=True) == want, structured
        assert sorted(search_all(app, structured, hybrid=True)) == sorted(want), structured
        assert sorted(search_all(app, structured, hybrid=True, typed=True)) == sorted(want), structured
    assert search_all(app, STRUCTURED[0][0]) != search_all(app, STRUCTURED[1][0])  # not every filter alike
    assert set(search_all(app, {"and": []})) == set(range(1, ROWS + 1))  # rows without a vector are left out


def test_a_structured_filters_values_are_data(conn: psycopg.Connection[Any], app: psycopg.Connection[Any]) -> None:
    for hostile in ("x'); DELETE FROM public.victim; --", "x' OR (SELECT count(*) FROM public.secret) > 0 --",
                    "E'x'\n'\\' ' OR true --'", "$$ OR true --", "\\'; DELETE FROM public.victim"):
        assert search_all(app, {"column": "caption", "op": "=", "value": hostile}) == []
        assert search_all(app, {"column": "caption", "op": "in", "value": [hostile, "photo 3"]}) == [3]
    assert victims(conn) == 3


BAD_STRUCTURED = [  # (filter, SQLSTATE class, words the message holds, words the hint holds)
    ({"column": "nope", "op": "=", "value": 1}, psycopg.errors.UndefinedColumn, ['"nope"', "public.photos"],
     ["caption", "shop"]),
    ({"column": "shop", "op": "==", "value": 1}, psycopg.errors.InvalidParameterValue, ['"=="'], ["is null"]),
    ({"column": "shop", "op": "=", "value": None}, psycopg.errors.InvalidParameterValue, ["null"], ["is null"]),
    ({"column": "shop", "op": "=", "value": "abc"}, psycopg.errors.InvalidTextRepresentation, ['"shop"', "abc"], []),
    ({"column": "id", "op": "<", "value": 2.5}, psycopg.errors.InvalidTextRepresentation, ['"id"', "2.5"], []),
    ({"and": {"column": "shop", "op": "=", "value": 1}}, psycopg.errors.InvalidParameterValue, ["and", "list"], []),
    ({"column": "shop"}, psycopg.errors.InvalidParameterValue, ['"op"'], []),
    ({"column": "shop", "op": "=", "value": 1, "other": 2}, psycopg.errors.InvalidParameterValue, ['"other"'], []),
    ([{"column": "shop", "op": "=", "value": 1}], psycopg.errors.InvalidParameterValue, ["object"], []),
    ({"column": "shop", "op": "in", "value": 1}, psycopg.errors.InvalidParameterValue, ["list"], []),
    ({"or": [{"column": "shop", "op": "=", "value": 1}, {"column": "shop", "op": "like", "value": 5}]},
     psycopg.errors.InvalidParameterValue, ["or[1]", "like"], []),
    ({"column": "shop", "op": "is null", "value": 1}, psycopg.errors.InvalidParameterValue, ["no value"], []),
]


def test_a_bad_structured_filter_is_a_clear_error(app: psycopg.Connection[Any]) -> None:
    for bad, error, said, hinted in BAD_STRUCTURED:
        for hybrid in (False, True):
            with pytest.raises(error) as caught:
                search_all(app, bad, hybrid=hybrid)
            diag = caught.value.diag
            message = diag.message_primary or ""
            assert "qvl: the filter's item $" in message, message
            assert all(w in message for w in said), (bad, message)
            assert all(w in (diag.message_hint or "") for w in hinted), (bad, diag.message_hint)
    deep: dict[str, Any] = {"column": "shop", "op": "=", "value": 1}
    for _ in range(100):
        deep = {"not": deep}
    with pytest.raises(psycopg.errors.ProgramLimitExceeded):
        search_all(app, deep)


# -- what PostgreSQL decides: honest conditions pass, however they quote ------------------------------
HONEST = [
    "cat = 3", "taken_on >= '2024-01-01' AND tenant_id = 7", "caption ILIKE '%it''s%'", "\"select\" = 1",
    "tags @> ARRAY['a', 'b'] AND (x > 1 OR (y < 2))", "E'it\\'s (' = caption", "caption = $$;) SELECT$$",
    "caption = $q$ -- ) $q$", "extract(year FROM taken_on) = 2024", "ts::timestamp with time zone < now()",
    "a$b = 1", "x = U & 1", "U&'\\0041' = caption", "caption = U&'d!0061t!+000061' UESCAPE '!'",
    "B'101' = B'101' AND X'1F' = X'1F'", "caption = 'multi'\n'line'", "caption = E'x'\n'\\' '",
    "true -- ) ORDER BY", "true /* ) */", "/* a /* nested */ comment */ cat = 3", "caption = N'x'",
    "cat = 3\n-- a closing comment",
]
REFUSED = [  # (filter, words of the message; | between alternatives, by the plan the table gets)
    ("id IN (SELECT id FROM public.secret)", "subquery"), ("EXISTS (values (1))", "subquery"),
    ("caption = ANY(ARRAY(TABLE public.secret))", "subquery"), ("cat = (SELECT 1)", "subquery"),
    ("true) OR (true", "syntax error"), ("true)) UNION ALL SELECT 1 --", "syntax error"),
    ("(true", "syntax error"), ("true; DROP TABLE honest", "more than one statement"),
    ("caption = 'open", "unterminated"),
    ("caption = E'x\\' ) OR (SELECT 1)", "unterminated"), ("caption = $a$ x", "unterminated"),
    ('"caption = 1', "unterminated"), ("caption = U&'x' UESCAPE ')' OR (SELECT true)", "subquery"),
    ("true LIMIT 1", "Limit"), ("true FOR UPDATE", "LockRows"), ("id > 0 GROUP BY id", "more than one condition"),
    ("true ORDER BY id", "Sort|syntax error"),
    ("true UNION ALL SELECT 1 FROM public.honest", "more than one condition"),
    ("true /* ) OR (SELECT true", "unterminated"),
]


@pytest.fixture
def honest(conn: psycopg.Connection[Any], app: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.execute("CREATE TABLE public.honest (id int PRIMARY KEY, cat int, taken_on date, tenant_id int, caption text, "
                 "\"select\" int, tags text[], x int, y int, ts text, a$b int, u int)")
    conn.execute("INSERT INTO honest SELECT g, g % 4, date '2024-01-01' + g, g % 9, 'c' || g, g, ARRAY['a', 'b'], g, "
                 "g, '2024-01-01', g, g FROM generate_series(1, 10) g")
    conn.execute("SELECT qvl.create_vectorizer('honest', text_columns => ARRAY['caption'], dimensions => 32)")
    random_vectors(conn, "honest", range(1, 11))
    conn.execute(f"GRANT SELECT, UPDATE ON honest TO {app.info.user}")  # UPDATE: FOR UPDATE plans (LockRows)
    return app


def search_honest(c: psycopg.Connection[Any], flt: str) -> list[int]:
    return [int(pk) for pk, in c.execute("SELECT pk FROM qvl.search('honest', 'c', k => 10, rerank => false, "
                                         "filter => %s)", (flt,))]


def test_postgres_decides_what_a_text_filter_is(honest: psycopg.Connection[Any]) -> None:
    """Conditions the removed lexer refused (comments, U& strings) or misread pass, and select what
    the same WHERE selects; what is not one condition is refused by PostgreSQL's parser or the plan."""
    for flt in HONEST:
        got = search_honest(honest, flt)
        want = [i for i, in honest.execute(f"SELECT id FROM honest WHERE\n{flt}\n")]
        assert sorted(got) == sorted(want), flt
    for flt, why in REFUSED:
        with pytest.raises(psycopg.errors.SyntaxError) as caught:
            search_honest(honest, flt)
        said = caught.value.diag.message_primary or ""
        assert any(w in said for w in why.split("|")), (flt, said)
    with pytest.raises(psycopg.errors.UndefinedParameter):
        search_honest(honest, "id = $1")


def test_the_session_string_syntax_is_the_probes(honest: psycopg.Connection[Any]) -> None:
    """With standard_conforming_strings off a backslash escapes a quote: one string then, a
    parenthesis closed too early with it on. Each setting is checked on its own (none rides on the
    other's remembered verdict)."""
    flt = "caption = 'c1\\' ) OR (SELECT true) --'"
    with pytest.raises(psycopg.errors.SyntaxError):
        search_honest(honest, flt)
    honest.execute("SET standard_conforming_strings = off; SET escape_string_warning = off")
    assert search_honest(honest, flt) == []  # no caption is that string
    honest.execute("SET standard_conforming_strings = on")
    with pytest.raises(psycopg.errors.SyntaxError):
        search_honest(honest, flt)


def test_a_policy_may_hold_a_subquery_the_filter_may_not(conn: psycopg.Connection[Any],
                                                         honest: psycopg.Connection[Any]) -> None:
    """Row-level security adds its own quals to the probe's plan: a membership subquery there is
    the table's, not the filter's."""
    conn.execute("CREATE TABLE public.members (tenant int); INSERT INTO public.members VALUES (1), (2)")
    conn.execute(f"GRANT SELECT ON public.members TO {honest.info.user}")
    conn.execute("ALTER TABLE honest ENABLE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY tenants ON honest USING (tenant_id IN (SELECT tenant FROM public.members))")
    assert sorted(search_honest(honest, "id < 9")) == [1, 2]
    assert sorted(search_honest(honest, "true")) == [1, 2, 10]
    for flt in ("id IN (SELECT tenant FROM public.members)", "tenant_id IN (SELECT tenant FROM public.members)"):
        with pytest.raises(psycopg.errors.SyntaxError) as caught:
            search_honest(honest, flt)
        assert "subquery" in (caught.value.diag.message_primary or "")


def test_a_partitioned_table_is_one_table(conn: psycopg.Connection[Any], app: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE public.parts (id int PRIMARY KEY, caption text) PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE public.parts_a PARTITION OF parts FOR VALUES FROM (0) TO (6)")
    conn.execute("CREATE TABLE public.parts_b PARTITION OF parts FOR VALUES FROM (6) TO (100)")
    conn.execute("INSERT INTO parts SELECT g, 'c' || g FROM generate_series(1, 10) g")
    conn.execute("SELECT qvl.create_vectorizer('parts', text_columns => ARRAY['caption'], dimensions => 32)")
    random_vectors(conn, "parts", range(1, 11))
    conn.execute(f"GRANT SELECT ON parts TO {app.info.user}")
    for flt, want in (("id % 2 = 0", [2, 4, 6, 8, 10]), ("id > 7", [8, 9, 10])):
        got = [int(pk) for pk, in app.execute("SELECT pk FROM qvl.search('parts', 'c', k => 10, rerank => false, "
                                              "filter => %s)", (flt,))]
        assert sorted(got) == want
    with pytest.raises(psycopg.errors.SyntaxError):
        app.execute("SELECT pk FROM qvl.search('parts', 'c', filter => 'id IN (SELECT x FROM public.victim)')")
