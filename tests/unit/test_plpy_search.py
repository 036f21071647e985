"""Search in the in-database library without a database: the SQL it writes, filters (text probes
and structured ones), and qvl.search's steps against a stand-in for PL/Python's ``plpy``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from connectors.postgres.plpy import candidates, filter_text, filters, reranking, search, service
from tests.support.plpy_stand_in import CFG, FakePlpy, Plan, PlpyError, b64_floats, service_answers, stand_in


@pytest.fixture
def plpy(monkeypatch: pytest.MonkeyPatch) -> FakePlpy:
    return stand_in(monkeypatch)


# -- SQL the library writes ----------------------------------------------------------------------
def text_filter(text: str) -> filters.Filter:
    return filters.Filter([text], ("sql", text, "on"), text)


def test_candidate_sql_names_everything_qualified_and_keeps_the_filter_in_its_parentheses() -> None:
    q = FakePlpy.quote_ident
    sql, types = candidates.candidate_sql(CFG, None, True, False, q)
    assert types == ["public.vector(3)", "int8"]
    assert sql == ('SELECT "photos"."id"::pg_catalog.text AS qvl_pk, ("photos"."embedding" OPERATOR(public.<=>) $1)'
                   '::pg_catalog.float4 AS qvl_distance, "photos"."caption", "photos"."image" FROM public.photos '
                   'WHERE "photos"."embedding" IS NOT NULL ORDER BY "photos"."embedding" OPERATOR(public.<=>) $1 '
                   'LIMIT $2')
    sql, types = candidates.candidate_sql({**CFG, "storage": "bit", "pk_columns": ["a", "b"]}, text_filter("cat = 3"),
                                          False, False, q)
    assert types == ["pg_catalog.bit(3)", "int8"]
    assert sql.startswith('SELECT ROW("photos"."a", "photos"."b")::pg_catalog.text AS qvl_pk, '
                          '("photos"."embedding" OPERATOR(public.<~>) $1)')
    assert 'WHERE "photos"."embedding" IS NOT NULL AND (\ncat = 3\n) ORDER BY' in sql
    assert '"caption"' not in sql  # without rerank the content columns stay unread


def test_exact_candidates_are_a_subquery_the_vector_index_cannot_order() -> None:
    sql, _ = candidates.candidate_sql(CFG, text_filter("cat = 3"), True, True, FakePlpy.quote_ident)
    assert sql == ('SELECT qvl_exact.qvl_pk, (qvl_exact.qvl_vector OPERATOR(public.<=>) $1)::pg_catalog.float4 AS '
                   'qvl_distance, qvl_exact."caption", qvl_exact."image" FROM (SELECT "photos"."id"::pg_catalog.text '
                   'AS qvl_pk, "photos"."embedding" AS qvl_vector, "photos"."caption", "photos"."image" FROM '
                   'public.photos WHERE "photos"."embedding" IS NOT NULL AND (\ncat = 3\n) OFFSET 0) AS qvl_exact '
                   'ORDER BY qvl_exact.qvl_vector OPERATOR(public.<=>) $1 LIMIT $2')


def test_ef_search_widens_to_the_candidates_within_bounds() -> None:
    assert candidates.ef_search(None, 10) == 40
    assert candidates.ef_search("100", 10) == 100
    assert candidates.ef_search("", 300) == 300
    assert candidates.ef_search("x", 5000) == 1000


def test_scan_settings_size_an_iterative_scan_by_the_filter() -> None:
    assert candidates.scan_settings(100, 10_000, 10_000) == {
           "hnsw.ef_search": "100", "hnsw.iterative_scan": "relaxed_order", "hnsw.max_scan_tuples": "20000"}
    assert candidates.scan_settings(100, 5_000, 1_000_000)["hnsw.max_scan_tuples"] == "80000"  # 0.5 % pass
    assert candidates.scan_settings(100, 1, 10**9)["hnsw.max_scan_tuples"] == "5000000"  # bounded


def plan_doc(*nodes: dict[str, Any]) -> str:
    """An EXPLAIN (VERBOSE, FORMAT JSON) document: the first node, the others below it."""
    return json.dumps([{"Plan": {**nodes[0], "Plans": list(nodes[1:])}}])


SCAN = {"Node Type": "Seq Scan", "Schema": "public", "Relation Name": "photos"}
TABLE = [("public", "photos")]


def test_a_probe_plan_of_scans_of_the_table_is_one_condition() -> None:
    features = filter_text.plan_features(plan_doc(SCAN))
    assert features == {("reads", "public", "photos"): 1}
    assert filter_text.probe_refusal(features, {}, TABLE) is None
    # A partitioned table: an Append over its partitions, each read once.
    parts = [("public", "photos_2024"), ("public", "photos_2025")]
    features = filter_text.plan_features(plan_doc({"Node Type": "Append"}, {**SCAN, "Relation Name": "photos_2024"},
                                                  {**SCAN, "Relation Name": "photos_2025"}))
    assert filter_text.probe_refusal(features, {}, TABLE + parts) is None


@pytest.mark.parametrize(("nodes", "why"), [
    ([SCAN, {"Node Type": "Result", "Parent Relationship": "InitPlan", "Subplan Name": "InitPlan 1 (returns $0)"}],
     "holds a subquery"),
    ([{"Node Type": "Nested Loop", "Join Type": "Semi"}, SCAN, {**SCAN, "Relation Name": "secret"}],
     "holds a subquery"),
    ([{"Node Type": "Append"}, SCAN, {**SCAN, "Relation Name": "secret"}], "reads public.secret"),
    ([{"Node Type": "Append"}, SCAN, SCAN], "more than one condition (it reads public.photos more than once)"),
    ([{"Node Type": "Limit"}, SCAN], "more than one condition (its plan holds a Limit node)"),
    ([{"Node Type": "LockRows"}, SCAN], "LockRows"),
])
def test_a_probe_plan_with_more_than_a_scan_is_refused(nodes: list[dict[str, Any]], why: str) -> None:
    refusal = filter_text.probe_refusal(filter_text.plan_features(plan_doc(*nodes)), {}, TABLE)
    assert refusal is not None and why in refusal, refusal


def test_what_row_level_security_adds_to_the_plan_is_the_tables_own() -> None:
    """A policy with a subquery (membership) shows in the plan of "WHERE true" too: not the filter's."""
    member = {"Node Type": "Seq Scan", "Schema": "public", "Relation Name": "members"}
    policy = [{**SCAN, "Filter": "(hashed SubPlan 1)"},
              {**member, "Parent Relationship": "SubPlan", "Subplan Name": "SubPlan 1"}]
    baseline = filter_text.plan_features(plan_doc(*policy))
    assert filter_text.probe_refusal(baseline, baseline, TABLE) is None
    more = filter_text.plan_features(plan_doc(*policy, {**member, "Subplan Name": "SubPlan 2",
                                                        "Parent Relationship": "SubPlan"}))
    assert "holds a subquery" in (filter_text.probe_refusal(more, baseline, TABLE) or "")


def probe_answers(plpy: FakePlpy, *nodes: dict[str, Any]) -> None:
    """The probe's plan is ``nodes``; the baseline's (WHERE true) a scan."""
    def explain(args: list[Any]) -> list[dict[str, Any]]:
        baseline = plpy.executed[-1][0].endswith("WHERE\ntrue")
        return [{"QUERY PLAN": plan_doc(*((SCAN,) if baseline else nodes))}]

    plpy.on("standard_conforming_strings", lambda args: [{"v": "on"}])
    plpy.on("EXPLAIN (VERBOSE, FORMAT JSON)", explain)
    plpy.on("WITH RECURSIVE tree", lambda args: [{"schema": "public", "name": "photos"}])


def test_a_text_filter_is_probed_once_per_text_and_string_syntax(plpy: FakePlpy) -> None:
    probe_answers(plpy, SCAN)
    flt = candidates.checked_filter(CFG, "cat = 3")
    assert flt is not None and flt.key == ("sql", "cat = 3", "on") and flt.where(2) == "cat = 3"
    probes = [p.query for p in plpy.prepared if p.query.startswith("EXPLAIN")]
    assert probes == ["EXPLAIN (VERBOSE, FORMAT JSON) SELECT 1 FROM public.photos WHERE\ncat = 3"]
    candidates.checked_filter(CFG, "cat = 3")
    assert len([p for p in plpy.prepared if p.query.startswith("EXPLAIN")]) == 1  # remembered
    assert candidates.checked_filter(CFG, "  ") is None and candidates.checked_filter(CFG, None) is None


def test_a_text_filter_whose_probe_reads_more_is_refused(plpy: FakePlpy) -> None:
    probe_answers(plpy, SCAN, {"Node Type": "Result", "Parent Relationship": "InitPlan", "Subplan Name": "InitPlan 1"})
    with pytest.raises(PlpyError) as caught:
        candidates.checked_filter(CFG, "cat = (SELECT 1)")
    assert caught.value.message.startswith("qvl: the filter holds a subquery")
    assert (caught.value.sqlstate, caught.value.hint, caught.value.detail) == (
        "42601", filters.FILTER_HINT, "filter: cat = (SELECT 1)")


COLUMNS = [{"name": "id", "type": "pg_catalog.int8", "is_array": False, "is_json": False},
           {"name": "caption", "type": "pg_catalog.text", "is_array": False, "is_json": False},
           {"name": "tags", "type": "pg_catalog._text", "is_array": True, "is_json": False},
           {"name": "meta", "type": "pg_catalog.jsonb", "is_array": False, "is_json": True}]


def structured(plpy: FakePlpy, spec: Any) -> filters.Filter:
    plpy.on("pg_catalog.pg_attribute", lambda args: COLUMNS)
    flt = candidates.checked_filter(CFG, filters.structured(json.dumps(spec)))
    assert flt is not None
    return flt


def test_a_structured_filter_is_sql_of_quoted_columns_and_bound_values(plpy: FakePlpy) -> None:
    flt = structured(plpy, {"and": [{"column": "id", "op": "IN", "value": [1, 12345678901234567890]},
                                    {"or": [{"column": "caption", "op": "ilike", "value": "%x'); --%"},
                                            {"not": {"column": "tags", "op": "&&", "value": ["a", None]}}]},
                                    {"column": "meta", "op": "@>", "value": {"k": [1.50, True]}},
                                    {"column": "caption", "op": "is not null"}]})
    assert flt.where(2) == ('(("photos"."id" = ANY (CAST($3 AS pg_catalog.int8[]))) AND (("photos"."caption" ILIKE '
                            'CAST($4 AS pg_catalog.text)) OR (NOT ("photos"."tags" && CAST($5 AS pg_catalog._text)))) '
                            'AND ("photos"."meta" @> CAST($6 AS pg_catalog.jsonb)) '
                            'AND ("photos"."caption" IS NOT NULL))')
    assert flt.argtypes == ["text[]", "text", "text[]", "text"]
    assert flt.args == [["1", "12345678901234567890"], "%x'); --%", ["a", None], '{"k": [1.5, true]}']
    # The plans are kept by the SQL, whatever the values.
    other = structured(plpy, {"and": [{"column": "id", "op": "in", "value": [7]},
                                      {"or": [{"column": "caption", "op": "ilike", "value": "y"},
                                              {"not": {"column": "tags", "op": "&&", "value": []}}]},
                                      {"column": "meta", "op": "@>", "value": {}},
                                      {"column": "caption", "op": "is not null"}]})
    assert other.key == flt.key and other.args != flt.args
    assert structured(plpy, {"and": []}).where(0) == "true" and structured(plpy, {"or": []}).where(0) == "false"


@pytest.mark.parametrize(("spec", "state", "why"), [
    ({"column": "nope", "op": "=", "value": 1}, "42703", 'names column "nope", which public.photos does not have'),
    ({"column": "id", "op": "~", "value": 1}, "22023", 'names operator "~"'),
    ({"column": "id", "op": "=", "value": None}, "22023", "compares with null"),
    ({"column": "id", "op": "=", "value": [1]}, "22023", "is an array"),
    ({"column": "tags", "op": "=", "value": "a"}, "22023", 'compares array column "tags" with "a"'),
    ({"column": "tags", "op": "in", "value": [["a"]]}, "22023", "on a column that is not an array"),
    ({"column": "caption", "op": "like", "value": 3}, "22023", '("like") takes a string, not 3'),
    ({"column": "id", "op": "is null", "value": 3}, "22023", "takes no value"),
    ({"column": "id", "op": "=", "value": 1, "x": 1}, "22023", 'has key "x"'),
    ({"or": [{"column": "id"}]}, "22023", "item $.or[0] has no \"op\""),
    ({"not": [1]}, "22023", "item $.not is an array, not an object"),
    ("id = 1", "22023", 'item $ is "id = 1", not an object'),
])
def test_a_bad_structured_filter_names_the_item(plpy: FakePlpy, spec: Any, state: str, why: str) -> None:
    with pytest.raises(PlpyError) as caught:
        structured(plpy, spec)
    assert why in caught.value.message and caught.value.message.startswith("qvl: the filter's item $")
    assert caught.value.sqlstate == state


def test_rows_by_key_sql_matches_scalar_and_composite_keys() -> None:
    q = FakePlpy.quote_ident
    assert reranking.rows_by_key_sql(CFG, "pg_catalog.int8", None, False, q) == (
          'SELECT qvl_k.pos AS qvl_pos, "photos"."id"::pg_catalog.text AS qvl_pk FROM '
          "pg_catalog.unnest($1::pg_catalog.text[]) WITH ORDINALITY AS qvl_k(txt, pos) JOIN public.photos "
          'ON "photos"."id" = qvl_k.txt::pg_catalog.int8')
    sql = reranking.rows_by_key_sql({**CFG, "pk_columns": ["a", "b"]}, "public.k", ["x", "y"], True, q)
    assert sql.endswith('ON "photos"."a" = (qvl_k.txt::public.k)."x" AND "photos"."b" = (qvl_k.txt::public.k)."y"')
    assert '"photos"."caption", "photos"."image" FROM' in sql


def test_fusion_adds_weighted_reciprocal_ranks() -> None:
    a, b, c = ({"qvl_pk": pk} for pk in "abc")
    best = search.fused([(1.0, [a, b]), (2.0, [c, a])])
    assert [(row["qvl_pk"], ranks) for row, _, ranks in best] == [("a", [1, 2]), ("c", [None, 1]), ("b", [2, None])]
    assert best[0][1] == pytest.approx(1 / 61 + 2 / 62)


def estimates(plpy: FakePlpy, passing: float, total: float = 10_000) -> None:
    """EXPLAIN answers: ``passing`` rows for a query with a filter, ``total`` without."""
    def explain(args: list[Any]) -> list[dict[str, Any]]:
        query = plpy.executed[-1][0]
        rows = passing if "AND (" in query else total
        return [{"QUERY PLAN": json.dumps([{"Plan": {"Plan Rows": rows}}])}]

    plpy.on("EXPLAIN (FORMAT JSON)", explain)


def search_setup(plpy: FakePlpy, ann: list[dict[str, Any]], exact: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    probe_answers(plpy, SCAN)  # first: its table query reads qvl.vectorizer too
    plpy.on("FROM qvl.vectorizer v", lambda args: [CFG])
    plpy.on("current_setting('hnsw.ef_search'", lambda args: [{"ef_search": "60", "iterative_scan": "off",
                                                                 "max_scan_tuples": "20000"}])
    plpy.on("qvl_exact", lambda args: exact)
    plpy.on("qvl_distance", lambda args: ann)
    return service_answers(plpy, {
        "info": (200, {"models": []}),
        "embed": (200, {"embeddings": [{"embedding_b64": b64_floats([0, 1, 0])}], "dimensions": 3}),
        "rerank": (200, {"ranking": [{"index": 1, "score": 0.9}, {"index": 0, "score": 0.3}]}),
    })


ROWS = [{"qvl_pk": "2", "qvl_distance": 0.2, "caption": "b", "image": None},
        {"qvl_pk": "1", "qvl_distance": 0.1, "caption": "a", "image": None}]  # an iterative scan's relaxed order


def settings_made(plpy: FakePlpy) -> list[list[Any]]:
    return [a for q, a in plpy.executed if q == candidates.SET_CONFIG_SQL]


def test_search_rows_scans_the_index_iteratively_then_reranks_and_restores_the_settings(plpy: FakePlpy) -> None:
    calls = search_setup(plpy, ROWS, [])
    estimates(plpy, passing=5000)
    rows = search.search_rows("photos", {"text": ["q"]}, 2, 2, True, "cat = 3")
    assert rows == [("2", 0.2, 0.9), ("1", 0.1, 0.3)]  # sorted by distance, then reranked
    assert calls[1][1]["instruction"] == service.DEFAULT_QUERY_INSTRUCTION
    assert calls[2][1] == {"query": {"text": ["q"]}, "documents": [{"text": ["a"]}, {"text": ["b"]}], "top_k": 2,
                           "allow_partial": True}
    assert settings_made(plpy) == [["hnsw.ef_search", "40"], ["hnsw.iterative_scan", "relaxed_order"],
                                   ["hnsw.max_scan_tuples", "20000"], ["hnsw.ef_search", "60"],
                                   ["hnsw.iterative_scan", "off"], ["hnsw.max_scan_tuples", "20000"]]
    assert not any("qvl_exact" in q for q, _ in plpy.executed)
    assert search.search_rows("photos", None, 2, 10, True) == []


def test_search_rows_compares_every_row_when_few_pass_the_filter(plpy: FakePlpy) -> None:
    search_setup(plpy, [], ROWS[::-1])
    estimates(plpy, passing=1500)
    assert search.search_rows("photos", {"text": ["q"]}, 1, 10, False, "cat = 3", 1) == [("2", 0.2, None)]
    assert settings_made(plpy) == []  # no index scan, nothing to set
    ran = [q for q, _ in plpy.executed if "qvl_distance" in q]
    assert len(ran) == 1 and "OFFSET 0" in ran[0]


def test_an_index_scan_that_comes_back_short_is_redone_exactly(plpy: FakePlpy) -> None:
    search_setup(plpy, ROWS[:1], ROWS[::-1])
    estimates(plpy, passing=5000)
    assert search.search_rows("photos", {"text": ["q"]}, 2, 2, False, "cat = 3") == [("1", 0.1, None),
                                                                                     ("2", 0.2, None)]


def test_a_filter_postgres_refuses_is_a_filter_error_but_privileges_pass_as_they_are(plpy: FakePlpy) -> None:
    search_setup(plpy, [], [])

    def refuse(state: str) -> Callable[..., Any]:
        def prepare(query: str, argtypes: list[str]) -> Any:
            if "nocol" not in query and "secret_fn" not in query:
                return Plan(query, argtypes)
            raise FakePlpy.SPIError('column "nocol" does not exist' if state != "42501" else "denied", state)
        return prepare

    plpy.prepare = refuse("42703")  # type: ignore[method-assign]
    with pytest.raises(PlpyError) as caught:
        search.search_rows("photos", {"text": ["q"]}, 2, 2, False, "nocol = 1")
    assert caught.value.message == 'qvl: the filter is not a condition on public.photos: column "nocol" does not exist'
    assert (caught.value.sqlstate, caught.value.hint) == ("42703", filters.FILTER_HINT)
    plpy.prepare = refuse("42501")  # type: ignore[method-assign]
    with pytest.raises(FakePlpy.SPIError):
        search.search_rows("photos", {"text": ["q"]}, 2, 2, False, "secret_fn(id)")
    with pytest.raises(PlpyError) as caught:
        search.search_rows("photos", {"text": ["q"]}, 2, 2, False, None, -1)
    assert caught.value.sqlstate == "22023"
