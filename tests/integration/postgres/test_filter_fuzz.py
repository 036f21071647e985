"""Issue 19, finding 1: generated quoting against PostgreSQL's own lexer and parser. Whatever text a
filter is, qvl.search and qvl.hybrid_search either refuse it or select exactly the rows PostgreSQL
selects with that text alone after WHERE; nothing else is read, nothing is written. Real Postgres,
the real service, a role that may read the secret and empty the victim itself."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.integration.postgres import test_filter_guard as guard
from tests.integration.postgres.test_filter_guard import BYPASS, CONTROL, DML, ROWS, victims

app = guard.app  # the fixture: public.photos, secret, victim and the application's role

pytestmark = [pytest.mark.postgres, pytest.mark.service]

# Pieces PostgreSQL's lexer reads by its own rules: strings of every kind (E'' with backslashes and
# continuation across a newline, U&'' with UESCAPE, B'', X'', N''), quoted identifiers, dollar quotes
# with tags, nested comments, line comments, parameters, semicolons; and what an attack appends.
ATOMS = [
    "caption", "id", "shop", " = ", " <> ", " OR ", " AND ", " NOT ", "(", ")", "true", "1", "'x'", "'", "''",
    "\\", "\\'", "E'", "e'", "E'x'", "E'\\\\'", "U&'", 'U&"', "U&'\\0041'", " UESCAPE '!'", "B'", "B'101'", "X'",
    "X'1F'", "N'x'", '"', '""', "$$", "$q$", "$Q$", "$1", "$", ";", "--", "\n", " ", "\t", "/*", "*/", "/* /* */",
    "::int", "::text", "(SELECT s FROM public.secret LIMIT 1)", "(SELECT count(*) FROM public.secret) > 0",
    "EXISTS (TABLE public.secret)", "DELETE FROM public.victim", "; DELETE FROM public.victim;",
    "UNION SELECT s, 0, 0 FROM public.secret", "public.note(id)", "SELECT", "FROM public.photos", "LIMIT 1",
]
QUOTED = ["'x'", "E'x'", "e'\\''", "E'\\\\'", "'\\'", "'\\''", "U&'x'", "U&'!0041' UESCAPE '!'", "B'1'", "X'f'",
          "N'x'", "$$x$$", "$t$x$T$", "$t$x$t$", '"caption"', "'x''", "E'x\\'"]
SEPARATORS = ["", " ", "\n", " \n ", "\n\n", "\t\n", "/* c */\n", "-- c\n"]
TAILS = ["", " ' ", " \\' ", "'\\' '", " ) ", " OR (SELECT s FROM public.secret LIMIT 1)::int > 0 ",
         " ) ; DELETE FROM public.victim ; SELECT 1 WHERE (true ", " OR EXISTS (TABLE public.secret) ",
         " ) UNION SELECT s, 0, 0 FROM public.secret WHERE (true ", " OR public.note(id) ", " $x$ ) $x$ "]
CLOSERS = ["", "--'", "--", "'", "/* */", " /* ", "$$", "$x$", ")", "\n"]

atoms = st.lists(st.sampled_from(ATOMS), min_size=1, max_size=8).map("".join)
attacks = st.builds(lambda a, s, b, t, c: f"caption = {a}{s}{b}{t}{c}", st.sampled_from(QUOTED),
                    st.sampled_from(SEPARATORS), st.sampled_from(QUOTED), st.sampled_from(TAILS),
                    st.sampled_from(CLOSERS))
# Conditions over string literals quoted right for one string syntax or the other: read under the
# session's own (drawn below), a backslash may escape a quote or not, and a literal end elsewhere.
CONTENT = st.text(alphabet="ab'\\\"();$-*/\n ", max_size=8)


def literal(kind: str, text: str) -> str:
    if kind == "standard":
        return "'" + text.replace("'", "''") + "'"
    if kind == "escape":
        return "E'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if kind == "dollar":
        return f"$t${text}$t$" if "$t" not in text else "'x'"
    if kind == "unicode":
        return "U&'" + "".join(f"\\{ord(ch):04x}" for ch in text) + "'"
    return "'" + text + "'"  # raw: only right when the text holds no quote (or backslash)


literals = st.builds(literal, st.sampled_from(["standard", "escape", "dollar", "unicode", "raw"]), CONTENT)
# A literal continues another across whitespace that holds a newline, read as the first one is (E'' too).
continued = st.builds(literal, st.sampled_from(["standard", "raw"]), CONTENT)
conditions = st.one_of(
    st.builds(lambda a: f"caption = {a}", literals),
    st.builds(lambda a, b, sep: f"caption = {a}{sep}{b}", literals, continued, st.sampled_from(SEPARATORS)),
    st.builds(lambda n: f"id > {n}", st.integers(0, 45)),
)
expressions = st.builds(lambda first, rest, tail, closer: first + "".join(j + c for j, c in rest) + tail + closer,
                        conditions, st.lists(st.tuples(st.sampled_from([" OR ", " AND ", "\n OR "]), conditions),
                                             max_size=2),
                        st.sampled_from(["", "", "", "", "", "", *TAILS]), st.sampled_from(["", "", "", "", *CLOSERS]))
filters = st.one_of(atoms, attacks, expressions, expressions)

SEARCH = ("SELECT pk::int FROM qvl.search('photos', 'photo', k => 100, candidates => 100, rerank => false, "
          "filter => %s)")
HYBRID = ("SELECT pk::int FROM qvl.hybrid_search('photos', 'photo', k => 100, candidates => 100, rerank => false, "
          "filter => %s)")


def scans(c: psycopg.Connection[Any], table: str) -> int:
    """Scans of ``table`` this backend made in its open transaction (counted when a scan starts,
    kept when a savepoint rolls back)."""
    return c.execute("SELECT pg_stat_get_xact_numscans(%s::regclass)", (table,)).fetchone()[0]  # type: ignore[index]


def oracle(conn: psycopg.Connection[Any], flt: str) -> set[int] | None:
    """The rows PostgreSQL selects with the text alone after WHERE (read-only, one statement: the
    extended protocol takes no second one), or None when that is an error. Blank text is no filter."""
    if not flt.strip():
        flt = "true"
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            return {i for i, in conn.execute(f"SELECT id FROM public.photos WHERE\n{flt}")}
    except psycopg.Error:
        return None


@pytest.fixture
def stage(conn: psycopg.Connection[Any], app: psycopg.Connection[Any]) -> tuple[Any, Any]:
    app.execute("CREATE FUNCTION public.note(x int) RETURNS boolean LANGUAGE plpgsql AS "
                "'BEGIN INSERT INTO public.victim VALUES (x); RETURN true; END'")
    return conn, app


def test_scan_counts_survive_a_rolled_back_savepoint(stage: tuple[Any, Any]) -> None:
    """The fuzz test's witness of a read: it would see a subquery that ran and failed."""
    _, app = stage
    with app.transaction():
        before = scans(app, "public.secret")
        with pytest.raises(psycopg.errors.InvalidTextRepresentation), app.transaction():
            app.execute("SELECT s::int FROM public.secret")
        assert scans(app, "public.secret") == before + 1


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(flt=filters, standard=st.booleans(), hybrid=st.booleans())
@example(flt=CONTROL, standard=True, hybrid=False)
@example(flt=BYPASS, standard=True, hybrid=False)
@example(flt=BYPASS, standard=True, hybrid=True)
@example(flt=DML, standard=True, hybrid=False)
@example(flt=DML, standard=False, hybrid=True)
@example(flt="caption = 'x\\' ) OR (SELECT s FROM public.secret LIMIT 1)::int > 0 --'", standard=True, hybrid=False)
@example(flt="caption = 'x\\' ) OR (SELECT s FROM public.secret LIMIT 1)::int > 0 --'", standard=False, hybrid=False)
@example(flt="shop = 1", standard=True, hybrid=True)
def test_a_filter_is_refused_or_is_the_condition_postgres_reads(stage: tuple[Any, Any], flt: str, standard: bool,
                                                                 hybrid: bool) -> None:
    conn, app = stage
    conn.execute("DELETE FROM public.victim; INSERT INTO public.victim VALUES (1), (2), (3)")  # each example alone
    setting = "on" if standard else "off"
    for c in (conn, app):
        c.execute(f"SET standard_conforming_strings = {setting}; SET escape_string_warning = off")
    want = oracle(conn, flt)
    with app.transaction():
        before = (scans(app, "public.secret"), scans(app, "public.victim"))
        try:
            with app.transaction():
                got: set[int] | None = {i for i, in app.execute(HYBRID if hybrid else SEARCH, (flt,))}
        except psycopg.errors.OperationalError:
            raise
        except psycopg.Error as refused:
            got = None
            assert "topsecret" not in str(refused)
        assert (scans(app, "public.secret"), scans(app, "public.victim")) == before, "a subquery ran"
    assert victims(conn) == 3
    event("ran" if got is not None else "refused" if want is None else "refused, though PostgreSQL reads it")
    if got is not None:
        assert want is not None, "qvl ran a filter that is not one condition"
        # hybrid: the full-text list has the rows without a vector too ('photo' matches every caption)
        assert got == (want if hybrid else {i for i in want if i <= ROWS})


def test_the_fuzzing_is_fast_enough_for_make_test(stage: tuple[Any, Any]) -> None:
    """One search with a new text filter (probe, estimate, query) stays in the milliseconds."""
    _, app = stage
    start = time.perf_counter()
    for n in range(20):
        app.execute(SEARCH, (f"id > {n}",))
    assert (time.perf_counter() - start) / 20 < 0.5
