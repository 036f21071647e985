"""A text filter, checked by PostgreSQL itself: planned alone at the end of a probe, whose plan
must read the table and nothing else (no subquery, no second relation, no ORDER BY or LIMIT)."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from . import spi
from .filters import Filter, bad_filter, filtered_rows, refuse_filter
from .items import Row
from .spi import plan, spi_error_class

# A plan of "SELECT 1 FROM t WHERE <one condition>" holds these nodes only: scans of the table (of its
# partitions or children under an Append), bitmap parts, parallel workers, a one-time filter.
SCAN_NODES = frozenset({"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Bitmap Index Scan",
                        "BitmapAnd", "BitmapOr", "Tid Scan", "Tid Range Scan", "Result", "Append", "Gather"})
# Nodes a subquery brings (pulled up into a join, or read from a function, VALUES or a CTE).
SUBQUERY_NODES = frozenset({"Nested Loop", "Hash Join", "Merge Join", "Hash", "Materialize", "Memoize",
                            "Values Scan", "Function Scan", "Table Function Scan", "CTE Scan", "WorkTable Scan",
                            "Named Tuplestore Scan", "Subquery Scan", "Foreign Scan", "Custom Scan", "Sample Scan"})
PROBE_SQL = "EXPLAIN (VERBOSE, FORMAT JSON) SELECT 1 FROM {source} WHERE\n{where}"
TABLE_TREE_SQL = """
WITH RECURSIVE tree(oid) AS (
    SELECT v.source FROM qvl.vectorizer v WHERE v.id = $1
    UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid)
SELECT n.nspname AS schema, c.relname AS name
  FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.oid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"""
STANDARD_STRINGS_SQL = "SELECT pg_catalog.current_setting('standard_conforming_strings') AS v"
PROBED = 256  # text filters whose probe passed, kept per backend
probed: OrderedDict[Any, bool] = OrderedDict()  # per backend


def plan_nodes(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from plan_nodes(child)


def plan_features(doc: Any) -> dict[tuple[str, ...], int]:
    """What an EXPLAIN (VERBOSE, FORMAT JSON) plan holds beyond a scan: subqueries, the relations it
    reads, nodes other than SCAN_NODES; each with its count."""
    plan_doc = json.loads(doc) if isinstance(doc, str) else doc
    found: dict[tuple[str, ...], int] = {}
    for node in plan_nodes(plan_doc[0]["Plan"]):
        features: list[tuple[str, ...]] = []
        if node.get("Parent Relationship") in ("InitPlan", "SubPlan") or "Subplan Name" in node:
            features.append(("subquery",))
        if "Relation Name" in node:
            features.append(("reads", node.get("Schema", ""), node["Relation Name"]))
        if node.get("Node Type") not in SCAN_NODES:
            features.append(("node", str(node.get("Node Type"))))
        for f in features:
            found[f] = found.get(f, 0) + 1
    return found


def probe_refusal(features: Mapping[tuple[str, ...], int], baseline: Mapping[tuple[str, ...], int],
                  table: Iterable[tuple[str, str]]) -> str | None:
    """Why a filter's probe plan is more than one condition on the table, or None. ``baseline`` is
    the plan of "WHERE true": what row-level security adds (a policy may hold a subquery) is the
    table's own; the table and its partitions may each be read once."""
    table = list(table)
    allowed = dict(baseline)
    for schema, name in table:
        allowed[("reads", schema, name)] = max(allowed.get(("reads", schema, name), 0), 1)
    extra = [f for f, n in features.items() if n > allowed.get(f, 0)]
    if any(f[0] == "subquery" or (f[0] == "node" and f[1] in SUBQUERY_NODES) for f in extra):
        return "holds a subquery: it is one condition on the table's own columns"
    for f in extra:
        if f[0] == "reads" and (f[1], f[2]) not in table:
            return f"reads {f[1]}.{f[2]}: it is one condition on the table's own columns"
    for f in extra:
        if f[0] == "reads":
            return f"is more than one condition (it reads {f[1]}.{f[2]} more than once)"
    if extra:
        return (f"is more than one condition (its plan holds a {extra[0][-1]} node): ORDER BY, LIMIT, GROUP BY, "
                f"UNION and the like do not belong in a filter")
    return None


def probe_features(cfg: Row, flt: Filter | None) -> dict[tuple[str, ...], int]:
    """The features of the probe's plan for this text filter, or for "true" (None: the baseline)."""
    sql = PROBE_SQL.format(source=cfg["source_sql"], where="true" if flt is None else flt.where(0))
    if flt is None:
        return plan_features(spi.plpy.execute(plan(("probe", cfg["id"]), sql))[0]["QUERY PLAN"])
    try:
        p = spi.plpy.prepare(sql, [])
    except spi_error_class() as exc:
        bad_filter(cfg, flt, exc)
    return plan_features(filtered_rows(cfg, p, [], flt)[0]["QUERY PLAN"])


def text_filter(cfg: Row, text: str) -> Filter:
    """A text filter that passed its probe (once per backend, table, text and string syntax: the
    lexer reads backslashes by standard_conforming_strings, so the plans are kept by it too)."""
    standard = spi.plpy.execute(plan("standard_strings", STANDARD_STRINGS_SQL))[0]["v"]
    flt = Filter([text], ("sql", text, standard), text)
    if (cfg["id"], flt.key) in probed:
        probed.move_to_end((cfg["id"], flt.key))
        return flt
    features = probe_features(cfg, flt)
    tree = spi.plpy.execute(plan("table_tree", TABLE_TREE_SQL, ["int4"]), [cfg["id"]])
    table = [(r["schema"], r["name"]) for r in tree]
    plain = all(f[0] == "reads" and (f[1], f[2]) in table and n == 1 for f, n in features.items())
    # The baseline (what row-level security adds) is needed only when the plan holds more than scans.
    why = None if plain else probe_refusal(features, probe_features(cfg, None), table)
    if why is not None:
        refuse_filter(text, why)
    probed[(cfg["id"], flt.key)] = True
    while len(probed) > PROBED:
        probed.popitem(last=False)
    return flt
