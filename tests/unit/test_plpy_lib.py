"""The PL/Python library (connectors/postgres/plpy/qvl_lib.py) without a database.

A stand-in for PL/Python's ``plpy`` answers the library's queries; its HTTP calls go to a tiny
``http.server`` on 127.0.0.1.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from connectors.postgres.plpy import qvl_lib

LIB_PATH = Path(qvl_lib.__file__)


class PlpyError(Exception):
    """What plpy.error raises (PL/Python turns it into the SQL error)."""

    def __init__(self, message: str, detail: str | None = None, hint: str | None = None,
                 sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.message, self.detail, self.hint, self.sqlstate = message, detail, hint, sqlstate


class Result(list[dict[str, Any]]):
    def nrows(self) -> int:
        return len(self)


class Plan:
    def __init__(self, query: str, argtypes: list[str]) -> None:
        self.query, self.argtypes = query, argtypes


class Cursor:
    """plpy.cursor's answer: rows in batches."""

    def __init__(self, rows: Result) -> None:
        self.rows = rows

    def fetch(self, n: int) -> Result:
        batch, self.rows = Result(self.rows[:n]), Result(self.rows[n:])
        return batch

    def close(self) -> None:
        self.rows = Result()


class FakePlpy:
    """Answers by the first registered fragment found in the query; records what ran."""

    class SPIError(Exception):
        """What plpy.execute and plpy.prepare raise for a SQL error."""

        def __init__(self, message: str, sqlstate: str) -> None:
            super().__init__(message)
            self.sqlstate = sqlstate

    def __init__(self) -> None:
        self.prepared: list[Plan] = []
        self.executed: list[tuple[str, list[Any]]] = []
        self.notices: list[str] = []
        self.answers: list[tuple[str, Callable[[list[Any]], list[dict[str, Any]]]]] = []

    def on(self, fragment: str, answer: Callable[[list[Any]], list[dict[str, Any]]]) -> None:
        self.answers.append((fragment, answer))

    def prepare(self, query: str, argtypes: list[str]) -> Plan:
        plan = Plan(query, argtypes)
        self.prepared.append(plan)
        return plan

    def execute(self, plan: Plan | str, args: list[Any] | None = None) -> Result:
        query = plan.query if isinstance(plan, Plan) else plan
        self.executed.append((query, list(args or [])))
        for fragment, answer in self.answers:
            if fragment in query:
                return Result(answer(list(args or [])))
        return Result()

    def cursor(self, plan: Plan, args: list[Any] | None = None) -> Cursor:
        return Cursor(self.execute(plan, args))

    def error(self, message: str, detail: str | None = None, hint: str | None = None,
              sqlstate: str | None = None) -> None:
        raise PlpyError(message, detail, hint, sqlstate)

    def notice(self, message: str) -> None:
        self.notices.append(message)

    @staticmethod
    def quote_ident(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'


@pytest.fixture
def plpy(monkeypatch: pytest.MonkeyPatch) -> FakePlpy:
    fake = FakePlpy()
    monkeypatch.setattr(qvl_lib, "plpy", fake)
    for name in ("plans", "cache"):
        monkeypatch.setattr(qvl_lib, name, {})
    monkeypatch.setattr(qvl_lib, "memo", {"stamp": None, "values": {}})
    monkeypatch.setattr(qvl_lib, "filter_plans", qvl_lib.OrderedDict())
    monkeypatch.setattr(qvl_lib, "probed", qvl_lib.OrderedDict())
    return fake


@pytest.fixture(autouse=True)
def fresh_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(qvl_lib, "conns", {})
    monkeypatch.setattr(qvl_lib, "avoid", {})
    monkeypatch.setattr(qvl_lib, "turn", 0)
    yield
    for conn in qvl_lib.conns.values():
        conn.close()


def service_answers(plpy: FakePlpy, answers: dict[str, tuple[int, Any]]) -> list[tuple[str, Any]]:
    """qvl._call answers by endpoint (status, JSON body); returns the calls made."""
    calls: list[tuple[str, Any]] = []

    def call(args: list[Any]) -> list[dict[str, Any]]:
        endpoint, body = args
        calls.append((endpoint, json.loads(body)))
        status, answer = answers[endpoint]
        return [{"status": status, "response": answer if isinstance(answer, str) else json.dumps(answer)}]

    plpy.on("qvl._call", call)
    return calls


def b64_floats(values: list[float]) -> str:
    import array
    a = array.array("f", values)
    if sys.byteorder != "little":
        a.byteswap()
    return base64.b64encode(a.tobytes()).decode()


# -- the module itself ---------------------------------------------------------------------------
def test_the_library_imports_the_standard_library_only() -> None:
    tree = ast.parse(LIB_PATH.read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names - {"__future__"} <= set(sys.stdlib_module_names), names - set(sys.stdlib_module_names)


# -- items -------------------------------------------------------------------------------------
def test_make_item_is_one_joint_item_in_the_worker_order() -> None:
    item = qvl_lib.make_item(["a cat", ["pet", None, "sofa"]], [b"\x89PNG", "/m/cat.jpg", [memoryview(b"GIF8")]],
                             [[b"f1", None, b"f2"]])
    assert item is not None
    assert list(item) == ["frames", "image", "image_uri", "text"]
    assert item["frames"] == [base64.b64encode(b"f1").decode(), base64.b64encode(b"f2").decode()]
    assert item["image"] == [base64.b64encode(b"\x89PNG").decode(), base64.b64encode(b"GIF8").decode()]
    assert item["image_uri"] == ["/m/cat.jpg"]
    assert item["text"] == ["a cat", "pet", "sofa"]
    assert qvl_lib.make_item([None], [None], [None]) is None  # all NULL: nothing to embed
    assert qvl_lib.make_item(videos=[b"mp4"]) == {"video": base64.b64encode(b"mp4").decode()}
    assert qvl_lib.make_item(videos=["file:///v.mp4"]) == {"video_uri": "file:///v.mp4"}


def test_row_item_reads_the_vectorizer_columns() -> None:
    cfg = {"text_columns": ["caption"], "image_columns": ["image"], "video_columns": []}
    assert qvl_lib.row_item(cfg, {"caption": "c", "image": None, "other": "x"}) == {"text": ["c"]}
    assert qvl_lib.text_item(None) is None and qvl_lib.image_item(None) is None
    assert qvl_lib.image_item(b"\x00") == {"image": ["AA=="]}


# -- requests and answers ------------------------------------------------------------------------
def test_embed_request_asks_for_base64_in_the_storage_encoding() -> None:
    assert qvl_lib.embed_request(None, None, None, "vector") == {"items": [{}], "format": "base64",
                                                                  "encoding": "float32"}
    req = qvl_lib.embed_request({"text": ["x"]}, "Find it", 32, "bit")
    assert req == {"items": [{"text": ["x"]}], "format": "base64", "encoding": "binary", "instruction": "Find it",
                   "dimensions": 32}


def test_vector_text_decodes_float32_bits_and_plain_lists() -> None:
    values = [0.5, -1.25, 3.0]
    assert qvl_lib.vector_text({"embedding_b64": b64_floats(values)}, "vector", 3) == "[0.5,-1.25,3.0]"
    bits = base64.b64encode(bytes([0b10110000, 0b11111111])).decode()
    assert qvl_lib.vector_text({"embedding_b64": bits}, "bit", 10) == "1011000011"
    assert qvl_lib.vector_text({"embedding": [1.0, 2.5]}, "halfvec", 2) == "[1.0,2.5]"


def test_rerank_request_skips_what_has_nothing_to_rank_and_refuses_top_k_below_1() -> None:
    q = {"text": ["q"]}
    assert qvl_lib.rerank_request(None, [q], None, None) is None
    assert qvl_lib.rerank_request(q, [], None, None) is None
    for top_k in (0, -2):  # the service's rule (HTTP 422, gRPC INVALID_ARGUMENT), whatever the data
        for query, docs in ((q, [q]), (None, []), (q, [])):
            with pytest.raises(qvl_lib.Failure) as caught:
                qvl_lib.rerank_request(query, docs, None, top_k)
            assert caught.value.message == f"qvl: top_k must be at least 1, got {top_k}"
            assert caught.value.sqlstate == "22023" and "top_k => NULL" in (caught.value.hint or "")
    assert qvl_lib.rerank_request(q, [q, None], "inst", 1) == {"query": q, "documents": [q, {}],
                                                                "instruction": "inst", "top_k": 1}
    assert qvl_lib.rerank_what(None) == "the query" and qvl_lib.rerank_what(0) == "documents[1]"


@pytest.mark.parametrize(("status", "body", "message", "sqlstate", "hint"), [
    (0, {"error": "cannot reach the qvl service: Connection refused", "code": "UNAVAILABLE"},
     "qvl: cannot reach the model service", "08001", "Start the service"),
    (400, {"error": "item 0: not an image", "item": 0}, "qvl: the model service refused item #0: not an image",
     "22023", "Fix or leave out that input"),
    (413, {"error": "too big"}, "qvl: the model service refused the input: too big", "54000",
     "raise the service's limit that the message names"),  # a service that does not name the limit
    (404, {"error": "this service has no embed model loaded"},
     "qvl: the model service refused the input: this service has no embed model loaded", "22023", "--embedding-model"),
    (401, {"error": "bad token"}, "qvl: the model service refused the token", "28000", "sets the token"),
    (429, {"error": "full"}, "qvl: the model service is busy or starting", "53000", "QVL_QUEUE_MAX_ITEMS"),
    (503, {"error": "the service is draining", "code": "UNAVAILABLE", "reason": "NOT_READY"},
     "qvl: the model service is busy or starting", "53000", "draining or restarting its model process"),
    # Issue 19 finding 3: the hint follows the body's typed fields, never the words of its message.
    (503, {"error": "the model process is not running; starting or draining", "code": "UNAVAILABLE"},
     "qvl: the model service is busy or starting", "53000", "could not finish the call"),
    (503, {"error": "queue full (6 items in flight); retry later", "code": "RESOURCE_EXHAUSTED"},
     "qvl: the model service is busy or starting", "53000", "QVL_QUEUE_MAX_ITEMS"),
    (504, {"error": "late"}, "qvl: the model service did not answer in time", "57014", "timeout_s => 120"),
    (500, "Internal Server Error", "qvl: the model service failed on the input: Internal Server Error", "XX000",
     "The model failed"),
])
def test_failures_become_sql_errors_that_say_what_to_do(status: int, body: Any, message: str, sqlstate: str,
                                                         hint: str) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    f = qvl_lib.failure("embed", status, text, lambda i: "the input" if i is None else f"item #{i}")
    assert (f.message, f.sqlstate, f.status) == (message, sqlstate, status)
    assert f.hint is not None and hint in f.hint
    error = body if isinstance(body, str) else body["error"]
    assert f.detail == f"embed {status or 'unreachable'}: {error}"


def test_a_refusal_by_a_limit_names_that_limits_setting_only() -> None:
    """Issue 11 item 8: every limit's refusal got the media hint (QVL_MAX_MEDIA_BYTES,
    QVL_MAX_REQUEST_BYTES), a bad dimensions the image formats. The service names the limit."""
    names = [*qvl_lib.LIMIT_ADVICE, "QVL_SOME_NEW_LIMIT"]
    for limit in names:
        body = json.dumps({"error": "over the limit", "code": "INVALID_ARGUMENT", "limit": limit})
        f = qvl_lib.failure("embed", 413, body, lambda i: "the input")
        assert f.hint is not None and f.hint.endswith(f"raise {limit} on the service."), limit
        assert [n for n in re.findall(r"QVL_\w+", f.hint)] == [limit], f.hint
    f = qvl_lib.failure("embed", 400, json.dumps({"error": "dimensions must be between 32 and 64, got 16",
                                                  "limit": "dimensions"}), lambda i: "the input")
    assert f.hint == qvl_lib.DIMENSIONS_HINT and "QVL_" not in f.hint and "PNG" not in f.hint
    # No limit: media refusals get the media hint, others (a reserved token in a text) a plain one.
    for error, hint in (("item 0: image 0 is not a recognised image", qvl_lib.MEDIA_HINT),
                        ("item 0: video 0 has no video stream", qvl_lib.MEDIA_HINT),
                        ("item 0: text 0 contains the reserved token '<|image_pad|>'", qvl_lib.INPUT_HINT)):
        assert qvl_lib.failure("embed", 400, json.dumps({"error": error}), lambda i: "it").hint == hint, error


def test_failure_of_an_empty_or_odd_body() -> None:
    f = qvl_lib.failure("rerank", 502, "", qvl_lib.rerank_what)
    assert f.message == "qvl: the model service failed on the query: HTTP 502" and f.sqlstate == "XX000"
    f = qvl_lib.failure("rerank", 422, "[1, 2]", qvl_lib.rerank_what)  # JSON, but not an object
    assert f.message == "qvl: the model service refused the query: [1, 2]" and f.hint == qvl_lib.INPUT_HINT
    f = qvl_lib.failure("rerank", 400, json.dumps({"error": "document 3: bad", "item": 2}), qvl_lib.rerank_what)
    assert f.message == "qvl: the model service refused documents[3]: bad"
    assert len(qvl_lib.failure("info", 500, "x" * 1000, lambda i: "it").message) < 400  # long bodies cut


def test_answer_decodes_200_and_raises_otherwise(plpy: FakePlpy) -> None:
    assert qvl_lib.answer("info", 200, '{"a": 1}', lambda i: "") == {"a": 1}
    with pytest.raises(qvl_lib.Failure) as caught:
        qvl_lib.answer("embed", 503, '{"error": "warming up"}', lambda i: "the input")
    with pytest.raises(PlpyError) as sql_error:
        caught.value.raise_sql()
    assert (sql_error.value.sqlstate, sql_error.value.detail) == ("53000", "embed 503: warming up")


# -- memoization -------------------------------------------------------------------------------
def test_plans_are_prepared_once_per_key(plpy: FakePlpy) -> None:
    first = qvl_lib.plan("k", "SELECT 1", ["int4"])
    assert qvl_lib.plan("k", "SELECT 1", ["int4"]) is first
    qvl_lib.plan(("k", 2), "SELECT 2")
    assert [p.query for p in plpy.prepared] == ["SELECT 1", "SELECT 2"]


def test_service_info_is_remembered_for_a_minute(plpy: FakePlpy, monkeypatch: pytest.MonkeyPatch) -> None:
    info = {"models": [{"task": "rerank"}, {"task": "embed", "query_instruction": "Find images."}]}
    calls = service_answers(plpy, {"info": (200, info)})
    assert qvl_lib.query_instruction() == "Find images."
    assert qvl_lib.model_info("rerank") == {"task": "rerank"} and qvl_lib.model_info("ocr") == {}
    assert len(calls) == 1
    now = time.monotonic()
    monkeypatch.setattr(qvl_lib.time, "monotonic", lambda: now + qvl_lib.INFO_TTL_S + 1)
    qvl_lib.info()
    assert len(calls) == 2 and calls[0] == ("info", None)


def test_query_instruction_falls_back_to_the_default(plpy: FakePlpy) -> None:
    service_answers(plpy, {"info": (200, {"models": [{"task": "embed"}]})})
    assert qvl_lib.query_instruction() == qvl_lib.DEFAULT_QUERY_INSTRUCTION


# -- SQL the library writes ----------------------------------------------------------------------
CFG: dict[str, Any] = {
    "id": 7, "name": "photos", "pk_columns": ["id"], "pk_types": ["bigint"], "text_columns": ["caption"],
    "image_columns": ["image"], "video_columns": [], "destination": "embedding", "dimensions": 3,
    "storage": "vector", "instruction": None, "query_instruction": None, "mode": "sync", "on_error": "fail",
    "source_sql": "public.photos", "source_name": "photos", "vector_schema": "public",
}


def text_filter(text: str) -> qvl_lib.Filter:
    return qvl_lib.Filter([text], ("sql", text, "on"), text)


def test_candidate_sql_names_everything_qualified_and_keeps_the_filter_in_its_parentheses() -> None:
    q = FakePlpy.quote_ident
    sql, types = qvl_lib.candidate_sql(CFG, None, True, False, q)
    assert types == ["public.vector(3)", "int8"]
    assert sql == ('SELECT "photos"."id"::pg_catalog.text AS qvl_pk, ("photos"."embedding" OPERATOR(public.<=>) $1)'
                   '::pg_catalog.float4 AS qvl_distance, "photos"."caption", "photos"."image" FROM public.photos '
                   'WHERE "photos"."embedding" IS NOT NULL ORDER BY "photos"."embedding" OPERATOR(public.<=>) $1 '
                   'LIMIT $2')
    sql, types = qvl_lib.candidate_sql({**CFG, "storage": "bit", "pk_columns": ["a", "b"]}, text_filter("cat = 3"),
                                       False, False, q)
    assert types == ["pg_catalog.bit(3)", "int8"]
    assert sql.startswith('SELECT ROW("photos"."a", "photos"."b")::pg_catalog.text AS qvl_pk, '
                          '("photos"."embedding" OPERATOR(public.<~>) $1)')
    assert 'WHERE "photos"."embedding" IS NOT NULL AND (\ncat = 3\n) ORDER BY' in sql
    assert '"caption"' not in sql  # without rerank the content columns stay unread


def test_exact_candidates_are_a_subquery_the_vector_index_cannot_order() -> None:
    sql, _ = qvl_lib.candidate_sql(CFG, text_filter("cat = 3"), True, True, FakePlpy.quote_ident)
    assert sql == ('SELECT qvl_exact.qvl_pk, (qvl_exact.qvl_vector OPERATOR(public.<=>) $1)::pg_catalog.float4 AS '
                   'qvl_distance, qvl_exact."caption", qvl_exact."image" FROM (SELECT "photos"."id"::pg_catalog.text '
                   'AS qvl_pk, "photos"."embedding" AS qvl_vector, "photos"."caption", "photos"."image" FROM '
                   'public.photos WHERE "photos"."embedding" IS NOT NULL AND (\ncat = 3\n) OFFSET 0) AS qvl_exact '
                   'ORDER BY qvl_exact.qvl_vector OPERATOR(public.<=>) $1 LIMIT $2')


def test_ef_search_widens_to_the_candidates_within_bounds() -> None:
    assert qvl_lib.ef_search(None, 10) == 40
    assert qvl_lib.ef_search("100", 10) == 100
    assert qvl_lib.ef_search("", 300) == 300
    assert qvl_lib.ef_search("x", 5000) == 1000


def test_scan_settings_size_an_iterative_scan_by_the_filter() -> None:
    assert qvl_lib.scan_settings(100, 10_000, 10_000) == {
        "hnsw.ef_search": "100", "hnsw.iterative_scan": "relaxed_order", "hnsw.max_scan_tuples": "20000"}
    assert qvl_lib.scan_settings(100, 5_000, 1_000_000)["hnsw.max_scan_tuples"] == "80000"  # 0.5 % pass
    assert qvl_lib.scan_settings(100, 1, 10**9)["hnsw.max_scan_tuples"] == "5000000"  # bounded


def plan_doc(*nodes: dict[str, Any]) -> str:
    """An EXPLAIN (VERBOSE, FORMAT JSON) document: the first node, the others below it."""
    return json.dumps([{"Plan": {**nodes[0], "Plans": list(nodes[1:])}}])


SCAN = {"Node Type": "Seq Scan", "Schema": "public", "Relation Name": "photos"}
TABLE = [("public", "photos")]


def test_a_probe_plan_of_scans_of_the_table_is_one_condition() -> None:
    features = qvl_lib.plan_features(plan_doc(SCAN))
    assert features == {("reads", "public", "photos"): 1}
    assert qvl_lib.probe_refusal(features, {}, TABLE) is None
    # A partitioned table: an Append over its partitions, each read once.
    parts = [("public", "photos_2024"), ("public", "photos_2025")]
    features = qvl_lib.plan_features(plan_doc({"Node Type": "Append"}, {**SCAN, "Relation Name": "photos_2024"},
                                              {**SCAN, "Relation Name": "photos_2025"}))
    assert qvl_lib.probe_refusal(features, {}, TABLE + parts) is None


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
    refusal = qvl_lib.probe_refusal(qvl_lib.plan_features(plan_doc(*nodes)), {}, TABLE)
    assert refusal is not None and why in refusal, refusal


def test_what_row_level_security_adds_to_the_plan_is_the_tables_own() -> None:
    """A policy with a subquery (membership) shows in the plan of "WHERE true" too: not the filter's."""
    member = {"Node Type": "Seq Scan", "Schema": "public", "Relation Name": "members"}
    policy = [{**SCAN, "Filter": "(hashed SubPlan 1)"},
              {**member, "Parent Relationship": "SubPlan", "Subplan Name": "SubPlan 1"}]
    baseline = qvl_lib.plan_features(plan_doc(*policy))
    assert qvl_lib.probe_refusal(baseline, baseline, TABLE) is None
    more = qvl_lib.plan_features(plan_doc(*policy, {**member, "Subplan Name": "SubPlan 2",
                                                    "Parent Relationship": "SubPlan"}))
    assert "holds a subquery" in (qvl_lib.probe_refusal(more, baseline, TABLE) or "")


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
    flt = qvl_lib.checked_filter(CFG, "cat = 3")
    assert flt is not None and flt.key == ("sql", "cat = 3", "on") and flt.where(2) == "cat = 3"
    probes = [p.query for p in plpy.prepared if p.query.startswith("EXPLAIN")]
    assert probes == ["EXPLAIN (VERBOSE, FORMAT JSON) SELECT 1 FROM public.photos WHERE\ncat = 3"]
    qvl_lib.checked_filter(CFG, "cat = 3")
    assert len([p for p in plpy.prepared if p.query.startswith("EXPLAIN")]) == 1  # remembered
    assert qvl_lib.checked_filter(CFG, "  ") is None and qvl_lib.checked_filter(CFG, None) is None


def test_a_text_filter_whose_probe_reads_more_is_refused(plpy: FakePlpy) -> None:
    probe_answers(plpy, SCAN, {"Node Type": "Result", "Parent Relationship": "InitPlan", "Subplan Name": "InitPlan 1"})
    with pytest.raises(PlpyError) as caught:
        qvl_lib.checked_filter(CFG, "cat = (SELECT 1)")
    assert caught.value.message.startswith("qvl: the filter holds a subquery")
    assert (caught.value.sqlstate, caught.value.hint, caught.value.detail) == (
        "42601", qvl_lib.FILTER_HINT, "filter: cat = (SELECT 1)")


COLUMNS = [{"name": "id", "type": "pg_catalog.int8", "is_array": False, "is_json": False},
           {"name": "caption", "type": "pg_catalog.text", "is_array": False, "is_json": False},
           {"name": "tags", "type": "pg_catalog._text", "is_array": True, "is_json": False},
           {"name": "meta", "type": "pg_catalog.jsonb", "is_array": False, "is_json": True}]


def structured(plpy: FakePlpy, spec: Any) -> qvl_lib.Filter:
    plpy.on("pg_catalog.pg_attribute", lambda args: COLUMNS)
    flt = qvl_lib.checked_filter(CFG, qvl_lib.structured(json.dumps(spec)))
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
    assert qvl_lib.rows_by_key_sql(CFG, "pg_catalog.int8", None, False, q) == (
        'SELECT qvl_k.pos AS qvl_pos, "photos"."id"::pg_catalog.text AS qvl_pk FROM '
        "pg_catalog.unnest($1::pg_catalog.text[]) WITH ORDINALITY AS qvl_k(txt, pos) JOIN public.photos "
        'ON "photos"."id" = qvl_k.txt::pg_catalog.int8')
    sql = qvl_lib.rows_by_key_sql({**CFG, "pk_columns": ["a", "b"]}, "public.k", ["x", "y"], True, q)
    assert sql.endswith('ON "photos"."a" = (qvl_k.txt::public.k)."x" AND "photos"."b" = (qvl_k.txt::public.k)."y"')
    assert '"photos"."caption", "photos"."image" FROM' in sql


def test_fusion_adds_weighted_reciprocal_ranks() -> None:
    a, b, c = ({"qvl_pk": pk} for pk in "abc")
    best = qvl_lib.fused([(1.0, [a, b]), (2.0, [c, a])])
    assert [(row["qvl_pk"], ranks) for row, _, ranks in best] == [("a", [1, 2]), ("c", [None, 1]), ("b", [2, None])]
    assert best[0][1] == pytest.approx(1 / 61 + 2 / 62)


def test_enqueue_sql_releases_a_claimed_row() -> None:
    assert qvl_lib.enqueue_sql(7, ["a", "b"], FakePlpy.quote_ident) == (
        'INSERT INTO qvl.queue_7 ("a", "b") VALUES ($1, $2) ON CONFLICT ("a", "b") DO UPDATE '
        "SET claimed_until = NULL, claimed_by = NULL, not_before = NULL")


def test_unfail_sql_deletes_one_rows_failure() -> None:
    assert qvl_lib.unfail_sql(7, ["a", "b"], FakePlpy.quote_ident) == (
        'DELETE FROM qvl.failed_7 WHERE "a" = $1 AND "b" = $2')


# -- the sync trigger and search against the stand-in ---------------------------------------------
def sync_setup(plpy: FakePlpy, on_error: str, status: int, body: Any) -> list[tuple[str, Any]]:
    plpy.on("FROM qvl.vectorizer v", lambda args: [{**CFG, "on_error": on_error}])
    return service_answers(plpy, {"embed": (status, body)})


def test_sync_trigger_writes_the_vector_into_the_new_row(plpy: FakePlpy) -> None:
    calls = sync_setup(plpy, "fail", 200, {"embeddings": [{"embedding_b64": b64_floats([1, 0, 0])}],
                                           "dimensions": 3})
    td: dict[str, Any] = {"args": ["7"], "new": {"id": 1, "caption": "a cat", "image": None, "embedding": None}}
    assert qvl_lib.sync_trigger(td) == "MODIFY"
    assert td["new"]["embedding"] == "[1.0,0.0,0.0]"
    assert calls == [("embed", {"items": [{"text": ["a cat"]}], "format": "base64", "encoding": "float32",
                                "dimensions": 3})]
    # Embedded: a failure the worker recorded for the row before it was fixed is forgotten.
    assert [(q, a) for q, a in plpy.executed if "failed_7" in q] == [
        ('DELETE FROM qvl.failed_7 WHERE "id" = $1', [1])]
    td = {"args": ["7"], "new": {"id": 2, "caption": None, "image": None, "embedding": "[1,2,3]"}}
    assert qvl_lib.sync_trigger(td) == "MODIFY" and td["new"]["embedding"] is None and len(calls) == 1


def test_sync_trigger_fails_the_statement_or_queues_the_row(plpy: FakePlpy) -> None:
    sync_setup(plpy, "fail", 400, {"error": "item 0: not an image", "item": 0})
    td: dict[str, Any] = {"args": ["7"], "new": {"id": 5, "caption": "x", "image": b"bad", "embedding": None}}
    with pytest.raises(PlpyError) as caught:
        qvl_lib.sync_trigger(td)
    assert caught.value.message == "qvl: the model service refused row 5 of public.photos: not an image"
    assert caught.value.hint is not None and caught.value.hint.endswith(qvl_lib.SYNC_QUEUE_HINT)

    plpy.answers.clear()
    sync_setup(plpy, "queue", 503, {"error": "warming up"})
    assert qvl_lib.sync_trigger(td) == "MODIFY" and td["new"]["embedding"] is None
    queued = [(q, a) for q, a in plpy.executed if "qvl.queue_7" in q or "pg_notify" in q]
    assert queued == [('INSERT INTO qvl.queue_7 ("id") VALUES ($1) ON CONFLICT ("id") DO UPDATE '
                       "SET claimed_until = NULL, claimed_by = NULL, not_before = NULL", [5]),
                      ("SELECT pg_catalog.pg_notify('qvl_queue', $1)", ["7"])]
    assert plpy.notices == ["qvl: row 5 of public.photos queued for the worker: qvl: the model service is busy "
                            "or starting"]
    assert not any("failed_7" in q for q, _ in plpy.executed)  # queued, not embedded: any failure stands


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
    return [a for q, a in plpy.executed if q == qvl_lib.SET_CONFIG_SQL]


def test_search_rows_scans_the_index_iteratively_then_reranks_and_restores_the_settings(plpy: FakePlpy) -> None:
    calls = search_setup(plpy, ROWS, [])
    estimates(plpy, passing=5000)
    rows = qvl_lib.search_rows("photos", {"text": ["q"]}, 2, 2, True, "cat = 3")
    assert rows == [("2", 0.2, 0.9), ("1", 0.1, 0.3)]  # sorted by distance, then reranked
    assert calls[1][1]["instruction"] == qvl_lib.DEFAULT_QUERY_INSTRUCTION
    assert calls[2][1] == {"query": {"text": ["q"]}, "documents": [{"text": ["a"]}, {"text": ["b"]}], "top_k": 2,
                           "allow_partial": True}
    assert settings_made(plpy) == [["hnsw.ef_search", "40"], ["hnsw.iterative_scan", "relaxed_order"],
                                   ["hnsw.max_scan_tuples", "20000"], ["hnsw.ef_search", "60"],
                                   ["hnsw.iterative_scan", "off"], ["hnsw.max_scan_tuples", "20000"]]
    assert not any("qvl_exact" in q for q, _ in plpy.executed)
    assert qvl_lib.search_rows("photos", None, 2, 10, True) == []


def test_search_rows_compares_every_row_when_few_pass_the_filter(plpy: FakePlpy) -> None:
    search_setup(plpy, [], ROWS[::-1])
    estimates(plpy, passing=1500)
    assert qvl_lib.search_rows("photos", {"text": ["q"]}, 1, 10, False, "cat = 3", 1) == [("2", 0.2, None)]
    assert settings_made(plpy) == []  # no index scan, nothing to set
    ran = [q for q, _ in plpy.executed if "qvl_distance" in q]
    assert len(ran) == 1 and "OFFSET 0" in ran[0]


def test_an_index_scan_that_comes_back_short_is_redone_exactly(plpy: FakePlpy) -> None:
    search_setup(plpy, ROWS[:1], ROWS[::-1])
    estimates(plpy, passing=5000)
    assert qvl_lib.search_rows("photos", {"text": ["q"]}, 2, 2, False, "cat = 3") == [("1", 0.1, None),
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
        qvl_lib.search_rows("photos", {"text": ["q"]}, 2, 2, False, "nocol = 1")
    assert caught.value.message == 'qvl: the filter is not a condition on public.photos: column "nocol" does not exist'
    assert (caught.value.sqlstate, caught.value.hint) == ("42703", qvl_lib.FILTER_HINT)
    plpy.prepare = refuse("42501")  # type: ignore[method-assign]
    with pytest.raises(FakePlpy.SPIError):
        qvl_lib.search_rows("photos", {"text": ["q"]}, 2, 2, False, "secret_fn(id)")
    with pytest.raises(PlpyError) as caught:
        qvl_lib.search_rows("photos", {"text": ["q"]}, 2, 2, False, None, -1)
    assert caught.value.sqlstate == "22023"


def test_query_embedding_asks_the_service_once_per_statement(plpy: FakePlpy) -> None:
    stamp = ["2025-01-01 00:00:00+00"]
    plpy.on("statement_timestamp()", lambda args: [{"stamp": stamp[0]}])
    plpy.on("FROM qvl.vectorizer v", lambda args: [{**CFG, "storage": "halfvec", "query_instruction": "Find it."}])
    calls = service_answers(plpy, {"embed": (200, {"embeddings": [{"embedding_b64": b64_floats([0, 1, 0])}],
                                                   "dimensions": 3})})
    for _ in range(5):  # five rows of one statement
        assert qvl_lib.query_embedding_sql("photos", "q", None, None, "vector") == "[0.0,1.0,0.0]"
    assert len(calls) == 1 and calls[0][1]["instruction"] == "Find it." and calls[0][1]["dimensions"] == 3
    assert qvl_lib.query_embedding_sql("photos", None, None, None, "vector") is None  # nothing to embed
    for n in range(qvl_lib.MEMO_MAX + 5):  # a query per row: the statement keeps the latest MEMO_MAX
        qvl_lib.query_embedding_sql("photos", f"q{n}", None, None, "vector")
    assert len(qvl_lib.memo["values"]) == qvl_lib.MEMO_MAX
    calls.clear()
    stamp[0] = "2025-01-01 00:00:01+00"  # the next statement
    qvl_lib.query_embedding_sql("photos", "q", None, None, "halfvec")
    assert len(calls) == 1
    plpy.answers.insert(0, ("FROM qvl.vectorizer v", lambda args: [{**CFG, "storage": "vector"}]))
    with pytest.raises(PlpyError) as caught:  # a halfvec beside a vector column: the index would go unused
        qvl_lib.query_embedding_sql("other", "q", None, None, "halfvec")
    assert caught.value.sqlstate == "42804" and "qvl.query_embedding('photos', ...)" in (caught.value.hint or "")
    plpy.answers.insert(0, ("FROM qvl.vectorizer v", lambda args: [{**CFG, "storage": "bit"}]))
    with pytest.raises(PlpyError) as caught:
        qvl_lib.query_embedding_sql("bits", "q", None, None, "vector")
    assert "qvl.query_embedding_bit('photos', ...)" in (caught.value.hint or "")


def test_rerank_items_splits_long_lists_and_merges_the_rankings(plpy: FakePlpy, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    monkeypatch.setattr(qvl_lib, "RERANK_CHUNK", 2)
    calls: list[Any] = []

    def rerank(args: list[Any]) -> list[dict[str, Any]]:  # scores a document by the number in its text
        body = json.loads(args[1])
        calls.append(body)
        scores = [(i, int(d["text"][0]) / 10) for i, d in enumerate(body["documents"])]
        ranking = [{"index": i, "score": sc} for i, sc in sorted(scores, key=lambda x: -x[1])][:body["top_k"]]
        return [{"status": 200, "response": json.dumps({"ranking": ranking})}]

    plpy.on("qvl._call", rerank)
    docs: list[dict[str, Any]] = [{"text": [str(n)]} for n in (3, 9, 1, 7, 5)]
    assert qvl_lib.rerank_items({"text": ["q"]}, docs, 3, str) == [(1, 0.9), (3, 0.7), (4, 0.5)]
    assert [len(body["documents"]) for body in calls] == [2, 2, 1]


def test_unknown_vectorizer_is_a_sql_error(plpy: FakePlpy) -> None:
    with pytest.raises(PlpyError) as caught:
        qvl_lib.vectorizer_by_name("nope")
    assert (caught.value.message, caught.value.sqlstate) == ("qvl: no vectorizer named 'nope'", "42704")


# -- HTTP against a real server -------------------------------------------------------------------
class Service:
    """A tiny HTTP server: each request takes the next scripted answer (status, headers, body, delay)."""

    def __init__(self) -> None:
        self.script: list[dict[str, Any]] = []
        self.seen: list[dict[str, Any]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.answer()

            def do_POST(self) -> None:
                self.answer()

            def answer(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                service.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                     "body": self.rfile.read(size), "client": self.client_address})
                step = service.script.pop(0) if service.script else {}
                if step.get("vanish"):  # read the request, then go without a word (a killed server)
                    self.close_connection = True
                    return
                time.sleep(step.get("delay", 0))
                body = json.dumps(step.get("body", {"ok": True})).encode()
                self.send_response(step.get("status", 200))
                for k, v in step.get("headers", {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if step.get("drip"):  # one byte at a time: every read is quick, the whole answer is not
                    for i in range(len(body)):
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(step["drip"])
                    return
                self.wfile.write(body)
                self.close_connection = bool(step.get("hang_up"))  # closes without saying so

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service() -> Iterator[Service]:
    s = Service()
    yield s
    s.close()


EMBED = qvl_lib.ROUTES["embed"]


def test_target_puts_the_route_under_the_service_path() -> None:
    assert qvl_lib.target("http://qvl:8080", "/v1/embed") == ("http", "qvl", 8080, "/v1/embed")
    assert qvl_lib.target("https://h/base/", "/v1/info") == ("https", "h", 443, "/base/v1/info")
    assert qvl_lib.target("http://h", "/v1/rerank") == ("http", "h", 80, "/v1/rerank")


def test_http_send_posts_json_with_the_token_on_one_kept_alive_connection(service: Service) -> None:
    service.script = [{"body": {"n": 1}}, {"body": {"n": 2}}]
    url = service.url + "/qvl/"
    assert qvl_lib.http_send(url, "s3cret", 5, EMBED, '{"items": []}') == (200, '{"n": 1}')
    assert qvl_lib.http_send(url, None, 5, qvl_lib.ROUTES["info"], "null") == (200, '{"n": 2}')
    first, second = service.seen
    assert (first["method"], first["path"], first["body"]) == ("POST", "/qvl/v1/embed", b'{"items": []}')
    assert first["headers"]["Authorization"] == "Bearer s3cret"
    assert first["headers"]["Content-Type"] == "application/json"
    assert first["headers"]["User-Agent"] == "qvl-postgres"
    assert (second["method"], second["path"], second["body"]) == ("GET", "/qvl/v1/info", b"")
    assert "Authorization" not in second["headers"]
    assert first["client"] == second["client"]  # the same connection


def test_http_send_retries_once_when_the_kept_alive_connection_was_closed(service: Service) -> None:
    service.script = [{"hang_up": True}, {"body": {"again": True}}]
    assert qvl_lib.http_send(service.url, None, 5, EMBED, "{}")[0] == 200
    time.sleep(0.05)  # the server has hung up by now
    assert qvl_lib.http_send(service.url, None, 5, EMBED, "{}") == (200, '{"again": true}')
    assert len(service.seen) == 2 and service.seen[0]["client"] != service.seen[1]["client"]


def test_http_send_waits_as_a_busy_service_asks_within_the_deadline(service: Service) -> None:
    service.script = [{"status": 429, "headers": {"Retry-After": "0"}, "body": {"error": "full"}},
                      {"status": 503, "headers": {"Retry-After": "0.1"}, "body": {"error": "warming"}},
                      {"body": {"done": True}}]
    started = time.monotonic()
    assert qvl_lib.http_send(service.url, None, 5, EMBED, "{}") == (200, '{"done": true}')
    assert 0.15 <= time.monotonic() - started < 2 and len(service.seen) == 3
    service.script = [{"status": 503, "headers": {"Retry-After": "30"}, "body": {"error": "warming"}}]
    assert qvl_lib.http_send(service.url, None, 1, EMBED, "{}") == (503, '{"error": "warming"}')  # past deadline


def test_http_send_reports_unreachable_and_late_services_as_statuses(service: Service) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    status, body = qvl_lib.http_send(f"http://127.0.0.1:{port}", None, 2, EMBED, "{}")
    assert status == 0 and json.loads(body)["code"] == "UNAVAILABLE"
    assert json.loads(body)["error"] == "cannot reach the qvl service: Connection refused"  # no address (10.13)
    service.script = [{"delay": 1.0}]
    status, body = qvl_lib.http_send(service.url, None, 0.2, EMBED, "{}")
    assert (status, json.loads(body)["code"]) == (504, "DEADLINE_EXCEEDED")
    assert json.loads(body)["error"].endswith("within 0.2 s (timeout_s)")
    assert qvl_lib.conns == {}  # a broken connection is not kept


@pytest.mark.parametrize(("value", "seconds"), [(None, 1.0), ("0", 0.05), ("2.5", 2.5), ("60", 5.0), ("soon", 1.0)])
def test_retry_after_is_bounded(value: str | None, seconds: float) -> None:
    assert qvl_lib.retry_after(value) == seconds


def test_send_reads_the_address_from_qvl_service(plpy: FakePlpy, service: Service) -> None:
    assert qvl_lib.send("nope", "{}")[0] == 400
    status, body = qvl_lib.send("embed", "{}")
    assert status == 0 and json.loads(body) == {"error": "no service address is configured", "code": "UNAVAILABLE"}
    plpy.on("FROM qvl.service", lambda args: [{"url": service.url, "token": "t", "timeout_s": 5.0}])
    assert qvl_lib.send("embed", '{"items": [{}]}') == (200, '{"ok": true}')
    assert service.seen[0]["headers"]["Authorization"] == "Bearer t"
    assert [p.query for p in plpy.prepared].count(qvl_lib.STATEMENT_LEFT_SQL) == 1


# -- 10.12: one deadline for the whole call; cancellation looked for between short waits ------------
def test_a_dripping_answer_is_bounded_by_the_deadline_not_per_read(service: Service) -> None:
    service.script = [{"drip": 0.1, "body": {"padding": "x" * 200}}]
    started = time.monotonic()
    status, body = qvl_lib.http_send(service.url, None, 1.0, EMBED, "{}")
    assert (status, json.loads(body)["code"]) == (504, "DEADLINE_EXCEEDED")
    assert time.monotonic() - started < 1.5
    assert qvl_lib.conns == {}


def test_a_cancel_seen_between_waits_ends_the_call_at_once(service: Service) -> None:
    class Cancelled(Exception):
        pass

    looks: list[float] = []

    def check() -> None:
        looks.append(time.monotonic())
        if len(looks) == 3:
            raise Cancelled  # what plpy.execute("SELECT 1") raises once the statement is cancelled

    service.script = [{"delay": 5}]
    started = time.monotonic()
    with pytest.raises(Cancelled):
        qvl_lib.http_send(service.url, None, 30, EMBED, "{}", check=check)
    assert time.monotonic() - started < 3 * qvl_lib.TICK_S + 0.5
    assert qvl_lib.conns == {}  # a connection left mid-exchange is not reused


def test_a_busy_service_is_waited_for_in_ticks_that_look_for_a_cancel(service: Service) -> None:
    looks: list[float] = []
    service.script = [{"status": 503, "headers": {"Retry-After": "1"}, "body": {"error": "warming"}}, {}]
    assert qvl_lib.http_send(service.url, None, 5, EMBED, "{}", check=lambda: looks.append(1))[0] == 200
    assert len(looks) >= 1 / qvl_lib.TICK_S - 1


@pytest.mark.parametrize(("timeout_s", "statement", "elapsed", "expected"), [
    (60.0, None, None, (60.0, "timeout_s")),
    (60.0, 0.0, 0.5, (60.0, "timeout_s")),  # statement_timeout = 0: none
    (60.0, 2.0, 0.5, (1.5, "statement_timeout")),
    (1.0, 30.0, 0.5, (1.0, "timeout_s")),
    (60.0, 2.0, 2.5, (0.0, "statement_timeout")),
])
def test_budget_is_the_sooner_of_timeout_s_and_the_statement_time_left(
        timeout_s: float, statement: float | None, elapsed: float | None, expected: tuple[float, str]) -> None:
    assert qvl_lib.budget(timeout_s, statement, elapsed) == expected


def test_send_derives_the_deadline_from_statement_timeout(plpy: FakePlpy, service: Service) -> None:
    plpy.on("FROM qvl.service", lambda args: [{"url": service.url, "token": None, "timeout_s": 60.0,
                                               "statement_timeout_s": 2.0, "statement_elapsed_s": 1.7}])
    service.script = [{"delay": 2}]
    started = time.monotonic()
    status, body = qvl_lib.send("embed", "{}")
    assert (status, json.loads(body)["code"]) == (504, "DEADLINE_EXCEEDED")
    assert "statement_timeout" in json.loads(body)["error"]
    assert time.monotonic() - started < 0.8


class _ClosingService(BaseHTTPRequestHandler):
    """HTTP/1.0: the server closes after each answer, and the body comes a moment after the headers."""

    body = b'{"embeddings": []}' + b" " * 200_000

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.flush()
        time.sleep(0.05)
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def test_an_answer_is_read_whole_when_the_server_closes_after_it() -> None:
    """http.client closes a "Connection: close" connection before the body is read: the socket
    must stay open until the response has been read (it failed with EBADF)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ClosingService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for _ in range(3):
            status, text = qvl_lib.http_send(url, None, 5.0, ("POST", "/v1/embed"), "{}", check=lambda: None)
            assert (status, len(text)) == (200, len(_ClosingService.body)), text[:200]
    finally:
        server.shutdown()


# -- several replicas --------------------------------------------------------------------------------
@pytest.fixture
def replicas() -> Iterator[list[Service]]:
    pair = [Service(), Service()]
    yield pair
    for r in pair:
        r.close()


def closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_service_lists_are_checked_and_kept_normalized() -> None:
    assert qvl_lib.check_service("HTTP://a:8080/, https://b:9/base/", None) == "http://a:8080,https://b:9/base"
    assert qvl_lib.check_service("https://a:1,https://[::1]:2", "/ca.pem") == "https://a:1,https://[::1]:2"
    bad = {"http://a:8080,": "an empty address", "ftp://a:1": "not an http:// or https://",
           "a:8080": "not an http:// or https://", "http://:80": "names no host",
           "http://a:0": "the port must be", "http://a:70000": "the port must be", "http://a:x": "the port must be",
           "http://a:1/?q=1": "no query", "http://a:1/#f": "no query", "http://u:pw@a:1": "must not hold credentials"}
    for value, words in bad.items():
        with pytest.raises(ValueError, match=words) as err:
            qvl_lib.check_service(value, None)
        assert "pw" not in str(err.value)
    with pytest.raises(ValueError, match="a CA file is for an https:// service, not http://b:2"):
        qvl_lib.check_service("https://a:1,http://b:2", "/ca.pem")


def test_calls_take_turns_over_the_replicas_and_ask_failed_ones_last(monkeypatch: pytest.MonkeyPatch) -> None:
    urls = ["http://a:1", "http://b:1", "http://c:1"]
    starts = set()
    for pid in range(6):  # backends start at different replicas
        monkeypatch.setattr(qvl_lib, "turn", 0)
        monkeypatch.setattr(qvl_lib.os, "getpid", lambda pid=pid: pid)
        starts.add(qvl_lib.replica_order(urls)[0])
    assert starts == {0, 1, 2}
    # One backend's calls take turns (with two replicas, four sessions whose process ids were all
    # even sent every call to one replica: test_replicas_sql.py caught it).
    monkeypatch.setattr(qvl_lib.os, "getpid", lambda: 2)
    monkeypatch.setattr(qvl_lib, "turn", 0)
    assert [qvl_lib.replica_order(urls[:2])[0] for _ in range(4)] == [0, 1, 0, 1]
    monkeypatch.setattr(qvl_lib.os, "getpid", lambda: 3)
    monkeypatch.setattr(qvl_lib, "turn", 0)  # starts at a
    qvl_lib.avoid["http://a:1"] = time.monotonic() + 5
    assert qvl_lib.replica_order(urls) == [1, 2, 0]
    qvl_lib.avoid["http://a:1"] = time.monotonic() - 1  # its time is up: back in its place
    assert qvl_lib.replica_order(urls) == [1, 2, 0]  # the next turn starts at b
    assert qvl_lib.replica_order(urls) == [2, 0, 1]


def test_a_dead_replica_is_passed_over_and_then_asked_last(replicas: list[Service],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qvl_lib.os, "getpid", lambda: 0)
    dead = f"http://127.0.0.1:{closed_port()}"
    url = f"{dead},{replicas[0].url}"
    for _ in range(3):
        assert qvl_lib.http_send(url, None, 5, EMBED, "{}")[0] == 200
    assert len(replicas[0].seen) == 3 and dead in qvl_lib.avoid


def test_busy_replicas_pass_the_call_on_and_all_busy_waits(replicas: list[Service],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qvl_lib.os, "getpid", lambda: 0)
    a, b = replicas
    url = f"{a.url},{b.url}"
    a.script = [{"status": 503, "headers": {"Retry-After": "5"}, "body": {"error": "draining"}}]
    started = time.monotonic()
    assert qvl_lib.http_send(url, None, 5, EMBED, "{}") == (200, '{"ok": true}')
    assert time.monotonic() - started < 1 and len(a.seen) == len(b.seen) == 1
    assert qvl_lib.http_send(url, None, 5, EMBED, "{}")[0] == 200
    assert len(a.seen) == 1 and len(b.seen) == 2  # the busy one is asked last for its Retry-After
    qvl_lib.avoid.clear()
    a.script = [{"status": 503, "headers": {"Retry-After": "0.2"}}, {"body": {"a": 2}}]
    b.script = [{"status": 429, "headers": {"Retry-After": "0.3"}}]
    started = time.monotonic()
    assert qvl_lib.http_send(url, None, 5, EMBED, "{}") == (200, '{"a": 2}')  # waited the shorter wait, once
    assert 0.2 <= time.monotonic() - started < 1


def test_a_replica_that_dies_mid_answer_passes_the_call_on(replicas: list[Service],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The request was sent, the replica went away before answering: the next one is asked (an
    embedding is the same whoever computes it)."""
    monkeypatch.setattr(qvl_lib.os, "getpid", lambda: 0)
    a, b = replicas
    assert qvl_lib.http_send(f"{a.url},{b.url}", None, 5, EMBED, "{}")[0] == 200  # a kept-alive connection
    a.close()  # it takes no new connections, and the next request on the old one is never answered
    a.script = [{"vanish": True}]
    monkeypatch.setattr(qvl_lib, "turn", 0)  # the next call starts at a again
    assert qvl_lib.http_send(f"{a.url},{b.url}", None, 5, EMBED, "{}") == (200, '{"ok": true}')
    assert len(a.seen) == 2 and len(b.seen) == 1


def test_a_replica_that_takes_no_connections_costs_connect_s_not_the_deadline(
        replicas: list[Service], monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    monkeypatch.setattr(qvl_lib.os, "getpid", lambda: 0)
    monkeypatch.setattr(qvl_lib, "CONNECT_S", 0.5)
    with contextlib.ExitStack() as stack:
        # A listener that never accepts, its queue full: further connects get no answer at all (as a
        # host that is gone).
        silent = stack.enter_context(socket.socket())
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        for _ in range(4):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(silent.getsockname())
        url = f"http://127.0.0.1:{silent.getsockname()[1]},{replicas[1].url}"
        started = time.monotonic()
        assert qvl_lib.http_send(url, None, 20, EMBED, "{}")[0] == 200
        assert 0.4 < time.monotonic() - started < 3
        # alone it is the whole deadline, as before
        status, _ = qvl_lib.http_send(f"http://127.0.0.1:{silent.getsockname()[1]}", None, 1, EMBED, "{}")
        assert status == 504
