"""Filters of ``qvl.search`` and ``qvl.hybrid_search``: the checked filter, its errors, and the
queries that hold it (run through a cursor, prepared plans kept per backend).

The checks themselves: ``filter_text`` (SQL text, checked by PostgreSQL's planner) and
``filter_structured`` (jsonb, compiled to SQL with its values as parameters)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NoReturn

from . import spi
from .items import Row
from .spi import plan, spi_error_class

# A filter is SQL text (a condition the application writes) or a structured filter (jsonb: columns
# of the table, operators from a fixed list, values bound as parameters: what an application builds
# from its users' input). Neither can become more than one condition on the table's row, and no
# home-made lexer decides it (one that must agree with PostgreSQL's on every quoting rule loses):
#  - a text filter is planned alone first, at the very end of a probe ("SELECT 1 FROM t WHERE\n" and
#    the text). PostgreSQL's lexer reads the text alike wherever it starts in its normal state, so
#    text that closes a parenthesis it did not open, leaves a string, quote or comment open, or ends
#    a statement cannot parse there, and in the real queries it stays in its parentheses. The
#    probe's plan must read the table and nothing else: a subquery shows as a SubPlan, an InitPlan or
#    a join, ORDER BY / LIMIT / GROUP BY / UNION as nodes a scan does not have;
#  - a query that holds a filter runs through a cursor: PostgreSQL opens one for exactly one
#    statement (42P11 otherwise);
#  - qvl.search and qvl.hybrid_search run read-only (SET transaction_read_only = on, restored when
#    they return, sql/idempotent/004_search.sql): a function the filter calls cannot write.
# All of it runs as the caller (SECURITY INVOKER): a filter reads nothing its caller could not read
# with a SELECT of their own, and row-level security applies.
FILTER_HINT = ("A filter is one condition on the table's own columns, as after WHERE: \"taken_on >= "
               "'2024-01-01' AND tenant_id = 7\". It runs read-only, with your rights and search_path; a "
               "subquery, ORDER BY, LIMIT or a second statement is refused. For values from your users pass a "
               "structured filter: filter => '{\"column\": \"tenant_id\", \"op\": \"=\", \"value\": 7}'::jsonb.")
SQLSTATES_OF_A_BAD_FILTER = ("42", "22", "0A")  # syntax, names and types; bad literals; what WHERE cannot hold
CURSOR_BATCH = 1000  # rows per fetch of a filtered query's cursor
STRUCTURED_OPS = {"=": "=", "<>": "<>", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=",
                  "like": "LIKE", "not like": "NOT LIKE", "ilike": "ILIKE", "not ilike": "NOT ILIKE",
                  "@>": "@>", "<@": "<@", "&&": "&&", "in": "= ANY", "not in": "<> ALL",
                  "is null": "IS NULL", "is not null": "IS NOT NULL"}
STRUCTURED_HINT = ('A structured filter is {"column": name, "op": op, "value": v}, {"and": [...]}, {"or": [...]} or '
                   '{"not": {...}}; op is one of ' + ", ".join(STRUCTURED_OPS) + '. "is null" and "is not null" '
                   'take no value, "in" and "not in" a list; a value is cast to the column\'s type.')
FILTER_PLANS = 64  # prepared statements kept per backend for queries that hold a filter
filter_plans: OrderedDict[Any, Any] = OrderedDict()  # per backend


class Structured(str):
    """A structured filter's JSON text (the jsonb argument), told apart from SQL text."""


def structured(doc: str | None) -> Structured | None:
    return None if doc is None else Structured(doc)


class Filter:
    """A checked filter. ``parts`` is its SQL, with an int where a parameter of its own goes (an
    index into ``args``); ``where(base)`` numbers them after the query's own ``base`` parameters.
    ``key`` names the SQL and the string syntax it was checked under, not the values: the plans of
    the queries that hold it are kept by it. ``leaves``: (path, column, type, index) of each value
    of a structured filter, to name the one PostgreSQL cannot read."""

    def __init__(self, parts: Sequence[str | int], key: tuple[Any, ...], shown: str, argtypes: Sequence[str] = (),
                 args: Sequence[Any] = (), leaves: Sequence[tuple[str, str, str, int]] = ()) -> None:
        self.parts, self.key, self.shown = tuple(parts), key, shown
        self.argtypes, self.args, self.leaves = list(argtypes), list(args), list(leaves)

    def where(self, base: int) -> str:
        return "".join(p if isinstance(p, str) else f"${base + p + 1}" for p in self.parts)


def refuse_filter(text: str, why: str, sqlstate: str = "42601", hint: str = FILTER_HINT) -> NoReturn:
    """A filter error: "qvl: the filter" and ``why`` ("'s item ..." for a part of a structured one)."""
    sep = "" if why.startswith("'s ") else " "
    spi.plpy.error(f"qvl: the filter{sep}{why}", detail=f"filter: {text[:300]}", hint=hint, sqlstate=sqlstate)


def bad_filter(cfg: Row, flt: Filter, exc: BaseException) -> NoReturn:
    """Re-raises what preparing or running a query with the filter raised as a filter error, unless
    it is not the filter's fault (permissions, read-only, cancellation, ...: those pass as they are)."""
    state = getattr(exc, "sqlstate", None) or ""
    if state == "42P11":  # the cursor's refusal of several statements
        refuse_filter(flt.shown, "is more than one statement")
    if state == "42501" or not state.startswith(SQLSTATES_OF_A_BAD_FILTER):
        raise exc
    if flt.leaves and state.startswith("22"):
        name_bad_value(flt, exc, state)
    spi.plpy.error(f"qvl: the filter is not a condition on {cfg['source_sql']}: {exc}",
                   detail=f"filter: {flt.shown[:300]}", hint=STRUCTURED_HINT if flt.leaves else FILTER_HINT,
                   sqlstate=state)


def filtered_rows(cfg: Row, p: Any, args: Sequence[Any], flt: Filter | None) -> list[Row]:
    """The rows of a prepared query, through a cursor when it holds a filter: PostgreSQL opens a
    cursor for exactly one statement that returns rows."""
    if flt is None:
        return list(spi.plpy.execute(p, list(args)))
    rows: list[Row] = []
    try:
        cur = spi.plpy.cursor(p, list(args))
        while batch := cur.fetch(CURSOR_BATCH):
            rows.extend(batch)
        cur.close()
    except spi_error_class() as exc:
        bad_filter(cfg, flt, exc)
    return rows


def name_bad_value(flt: Filter, exc: BaseException, state: str) -> None:
    """Which value of a structured filter PostgreSQL could not read (each cast alone), as an error
    that names it; nothing when each reads alone."""
    for path, column, cast, index in flt.leaves:
        argtype = flt.argtypes[index]
        try:
            spi.plpy.execute(plan(("cast", cast, argtype), f"SELECT CAST($1 AS {cast}) IS NULL AS n", [argtype]),
                         [flt.args[index]])
        except spi_error_class() as bad:
            refuse_filter(flt.shown, f"'s item {path} has a value that is not a {cast} (column \"{column}\"): {bad}",
                          getattr(bad, "sqlstate", None) or state, STRUCTURED_HINT)


def filter_plan(cfg: Row, key: Any, query: str, argtypes: Sequence[str], flt: Filter | None) -> Any:
    """plan() for a query that holds the caller's filter (its parameters after the query's own): the
    most recent FILTER_PLANS are kept (applications vary filters), and a filter PostgreSQL refuses is
    a SQL error that says so."""
    if flt is None:
        return plan(key, query, argtypes)
    key = (key, flt.key)
    p = filter_plans.get(key)
    if p is not None:
        filter_plans.move_to_end(key)
        return p
    try:
        p = spi.plpy.prepare(query, [*argtypes, *flt.argtypes])
    except spi_error_class() as exc:
        bad_filter(cfg, flt, exc)
    filter_plans[key] = p
    while len(filter_plans) > FILTER_PLANS:
        filter_plans.popitem(last=False)
    return p
