"""The in-database library (connectors/postgres/plpy/) without a database: the package itself,
items, requests and answers, errors, the service's description, the sync trigger, query vectors.

A stand-in for PL/Python's ``plpy`` (tests/support/plpy_stand_in.py) answers the library's queries.
"""

from __future__ import annotations

import ast
import base64
import json
import re
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from connectors.postgres import plpy_importer
from connectors.postgres.plpy import (
    embedding,
    errors,
    items,
    query_vectors,
    reranking,
    service,
    spi,
    triggers,
    vectorizers,
)
from tests.support.plpy_stand_in import CFG, FakePlpy, PlpyError, b64_floats, service_answers, stand_in

LIBRARY_DIR = Path(spi.__file__).parent


@pytest.fixture
def plpy(monkeypatch: pytest.MonkeyPatch) -> FakePlpy:
    return stand_in(monkeypatch)


# -- the module itself ---------------------------------------------------------------------------
def library_files() -> list[Path]:
    """What runs in the database: every module of the package, and the importer that loads them."""
    return [*sorted(LIBRARY_DIR.glob("*.py")), Path(plpy_importer.__file__)]


def test_the_library_imports_the_standard_library_and_its_own_modules_only() -> None:
    """The database server's own Python runs it: no package of the project's environment, and none of
    ``connectors`` (the bundle is imported under another name); siblings by relative import."""
    assert len(library_files()) > 10
    for path in library_files():
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0
                  and n.module}
        assert names - {"__future__"} <= set(sys.stdlib_module_names), (path.name, names - set(sys.stdlib_module_names))
        # One flat package: the importer knows the bundle's top level only.
        assert all(n.level <= 1 for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)), path.name


def test_each_part_of_the_library_is_small() -> None:
    """Issue 20 item 3: modules by concern, at most 500 lines, functions 80, classes 300."""
    for path in library_files():
        text = path.read_text()
        assert len(text.splitlines()) <= 500, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                limit = 300 if isinstance(node, ast.ClassDef) else 80
                assert (node.end_lineno or 0) - node.lineno + 1 <= limit, f"{path.name}: {node.name}"


# -- items -------------------------------------------------------------------------------------
def test_make_item_is_one_joint_item_in_the_worker_order() -> None:
    item = items.make_item(["a cat", ["pet", None, "sofa"]], [b"\x89PNG", "/m/cat.jpg", [memoryview(b"GIF8")]],
                           [[b"f1", None, b"f2"]])
    assert item is not None
    assert list(item) == ["frames", "image", "image_uri", "text"]
    assert item["frames"] == [base64.b64encode(b"f1").decode(), base64.b64encode(b"f2").decode()]
    assert item["image"] == [base64.b64encode(b"\x89PNG").decode(), base64.b64encode(b"GIF8").decode()]
    assert item["image_uri"] == ["/m/cat.jpg"]
    assert item["text"] == ["a cat", "pet", "sofa"]
    assert items.make_item([None], [None], [None]) is None  # all NULL: nothing to embed
    assert items.make_item(videos=[b"mp4"]) == {"video": base64.b64encode(b"mp4").decode()}
    assert items.make_item(videos=["file:///v.mp4"]) == {"video_uri": "file:///v.mp4"}


def test_row_item_reads_the_vectorizer_columns() -> None:
    cfg = {"text_columns": ["caption"], "image_columns": ["image"], "video_columns": []}
    assert items.row_item(cfg, {"caption": "c", "image": None, "other": "x"}) == {"text": ["c"]}
    assert items.text_item(None) is None and items.image_item(None) is None
    assert items.image_item(b"\x00") == {"image": ["AA=="]}


# -- requests and answers ------------------------------------------------------------------------
def test_embed_request_asks_for_base64_in_the_storage_encoding() -> None:
    assert embedding.embed_request(None, None, None, "vector") == {"items": [{}], "format": "base64",
                                                                    "encoding": "float32"}
    req = embedding.embed_request({"text": ["x"]}, "Find it", 32, "bit")
    assert req == {"items": [{"text": ["x"]}], "format": "base64", "encoding": "binary", "instruction": "Find it",
                   "dimensions": 32}


def test_vector_text_decodes_float32_bits_and_plain_lists() -> None:
    values = [0.5, -1.25, 3.0]
    assert embedding.vector_text({"embedding_b64": b64_floats(values)}, "vector", 3) == "[0.5,-1.25,3.0]"
    bits = base64.b64encode(bytes([0b10110000, 0b11111111])).decode()
    assert embedding.vector_text({"embedding_b64": bits}, "bit", 10) == "1011000011"
    assert embedding.vector_text({"embedding": [1.0, 2.5]}, "halfvec", 2) == "[1.0,2.5]"


def test_rerank_request_skips_what_has_nothing_to_rank_and_refuses_top_k_below_1() -> None:
    q = {"text": ["q"]}
    assert reranking.rerank_request(None, [q], None, None) is None
    assert reranking.rerank_request(q, [], None, None) is None
    for top_k in (0, -2):  # the service's rule (HTTP 422, gRPC INVALID_ARGUMENT), whatever the data
        for query, docs in ((q, [q]), (None, []), (q, [])):
            with pytest.raises(errors.Failure) as caught:
                reranking.rerank_request(query, docs, None, top_k)
            assert caught.value.message == f"qvl: top_k must be at least 1, got {top_k}"
            assert caught.value.sqlstate == "22023" and "top_k => NULL" in (caught.value.hint or "")
    assert reranking.rerank_request(q, [q, None], "inst", 1) == {"query": q, "documents": [q, {}],
                                                                  "instruction": "inst", "top_k": 1}
    assert reranking.rerank_what(None) == "the query" and reranking.rerank_what(0) == "documents[1]"


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
    f = errors.failure("embed", status, text, lambda i: "the input" if i is None else f"item #{i}")
    assert (f.message, f.sqlstate, f.status) == (message, sqlstate, status)
    assert f.hint is not None and hint in f.hint
    error = body if isinstance(body, str) else body["error"]
    assert f.detail == f"embed {status or 'unreachable'}: {error}"


def test_a_refusal_by_a_limit_names_that_limits_setting_only() -> None:
    """Issue 11 item 8: every limit's refusal got the media hint (QVL_MAX_MEDIA_BYTES,
    QVL_MAX_REQUEST_BYTES), a bad dimensions the image formats. The service names the limit."""
    names = [*errors.LIMIT_ADVICE, "QVL_SOME_NEW_LIMIT"]
    for limit in names:
        body = json.dumps({"error": "over the limit", "code": "INVALID_ARGUMENT", "limit": limit})
        f = errors.failure("embed", 413, body, lambda i: "the input")
        assert f.hint is not None and f.hint.endswith(f"raise {limit} on the service."), limit
        assert [n for n in re.findall(r"QVL_\w+", f.hint)] == [limit], f.hint
    f = errors.failure("embed", 400, json.dumps({"error": "dimensions must be between 32 and 64, got 16",
                                                 "limit": "dimensions"}), lambda i: "the input")
    assert f.hint == errors.DIMENSIONS_HINT and "QVL_" not in f.hint and "PNG" not in f.hint
    # No limit: media refusals get the media hint, others (a reserved token in a text) a plain one.
    for error, hint in (("item 0: image 0 is not a recognised image", errors.MEDIA_HINT),
                        ("item 0: video 0 has no video stream", errors.MEDIA_HINT),
                        ("item 0: text 0 contains the reserved token '<|image_pad|>'", errors.INPUT_HINT)):
        assert errors.failure("embed", 400, json.dumps({"error": error}), lambda i: "it").hint == hint, error


def test_failure_of_an_empty_or_odd_body() -> None:
    f = errors.failure("rerank", 502, "", reranking.rerank_what)
    assert f.message == "qvl: the model service failed on the query: HTTP 502" and f.sqlstate == "XX000"
    f = errors.failure("rerank", 422, "[1, 2]", reranking.rerank_what)  # JSON, but not an object
    assert f.message == "qvl: the model service refused the query: [1, 2]" and f.hint == errors.INPUT_HINT
    f = errors.failure("rerank", 400, json.dumps({"error": "document 3: bad", "item": 2}), reranking.rerank_what)
    assert f.message == "qvl: the model service refused documents[3]: bad"
    assert len(errors.failure("info", 500, "x" * 1000, lambda i: "it").message) < 400  # long bodies cut


def test_answer_decodes_200_and_raises_otherwise(plpy: FakePlpy) -> None:
    assert errors.answer("info", 200, '{"a": 1}', lambda i: "") == {"a": 1}
    with pytest.raises(errors.Failure) as caught:
        errors.answer("embed", 503, '{"error": "warming up"}', lambda i: "the input")
    with pytest.raises(PlpyError) as sql_error:
        caught.value.raise_sql()
    assert (sql_error.value.sqlstate, sql_error.value.detail) == ("53000", "embed 503: warming up")


# -- memoization -------------------------------------------------------------------------------
def test_plans_are_prepared_once_per_key(plpy: FakePlpy) -> None:
    first = spi.plan("k", "SELECT 1", ["int4"])
    assert spi.plan("k", "SELECT 1", ["int4"]) is first
    spi.plan(("k", 2), "SELECT 2")
    assert [p.query for p in plpy.prepared] == ["SELECT 1", "SELECT 2"]


def test_service_info_is_remembered_for_a_minute(plpy: FakePlpy, monkeypatch: pytest.MonkeyPatch) -> None:
    info = {"models": [{"task": "rerank"}, {"task": "embed", "query_instruction": "Find images."}]}
    calls = service_answers(plpy, {"info": (200, info)})
    assert service.query_instruction() == "Find images."
    assert service.model_info("rerank") == {"task": "rerank"} and service.model_info("ocr") == {}
    assert len(calls) == 1
    now = time.monotonic()
    monkeypatch.setattr(service.time, "monotonic", lambda: now + service.INFO_TTL_S + 1)
    service.info()
    assert len(calls) == 2 and calls[0] == ("info", None)


def test_query_instruction_falls_back_to_the_default(plpy: FakePlpy) -> None:
    service_answers(plpy, {"info": (200, {"models": [{"task": "embed"}]})})
    assert service.query_instruction() == service.DEFAULT_QUERY_INSTRUCTION


def test_enqueue_sql_releases_a_claimed_row() -> None:
    assert triggers.enqueue_sql(7, ["a", "b"], FakePlpy.quote_ident) == (
         'INSERT INTO qvl.queue_7 ("a", "b") VALUES ($1, $2) ON CONFLICT ("a", "b") DO UPDATE '
         "SET claimed_until = NULL, claimed_by = NULL, not_before = NULL")


def test_unfail_sql_deletes_one_rows_failure() -> None:
    assert triggers.unfail_sql(7, ["a", "b"], FakePlpy.quote_ident) == (
         'DELETE FROM qvl.failed_7 WHERE "a" = $1 AND "b" = $2')


# -- the sync trigger and search against the stand-in ---------------------------------------------
def sync_setup(plpy: FakePlpy, on_error: str, status: int, body: Any) -> list[tuple[str, Any]]:
    plpy.on("FROM qvl.vectorizer v", lambda args: [{**CFG, "on_error": on_error}])
    return service_answers(plpy, {"embed": (status, body)})


def test_sync_row_gives_the_vector_for_the_new_row(plpy: FakePlpy) -> None:
    calls = sync_setup(plpy, "fail", 200, {"embeddings": [{"embedding_b64": b64_floats([1, 0, 0])}],
                                           "dimensions": 3})
    new = {"id": 1, "caption": "a cat", "image": None, "embedding": None}
    assert json.loads(triggers.sync_row(7, json.dumps(new))) == {"embedding": "[1.0,0.0,0.0]"}
    assert calls == [("embed", {"items": [{"text": ["a cat"]}], "format": "base64", "encoding": "float32",
                                "dimensions": 3})]
    # Embedded: a failure the worker recorded for the row before it was fixed is forgotten.
    assert [(q, a) for q, a in plpy.executed if "failed_7" in q] == [
        ('DELETE FROM qvl.failed_7 WHERE "id" = $1', [1])]
    new = {"id": 2, "caption": None, "image": None, "embedding": "[1,2,3]"}
    assert json.loads(triggers.sync_row(7, json.dumps(new))) == {"embedding": None} and len(calls) == 1


def test_the_row_comes_back_from_its_json_as_the_trigger_had_it() -> None:
    """to_json(NEW): bytea (and bytea[]) as '\\x' hex, numeric as a JSON number."""
    cfg = {**CFG, "image_columns": ["image", "frames"], "bytea_columns": ["image", "frames"]}
    row = triggers.json_row(cfg, '{"id": 12345678901234567890.10, "caption": "\\\\x00 is text", '
                                 '"image": "\\\\x89504e47", "frames": ["\\\\x01", null, "\\\\x"], "embedding": null}')
    assert row == {"id": Decimal("12345678901234567890.10"), "caption": "\\x00 is text", "image": b"\x89PNG",
                   "frames": [b"\x01", None, b""], "embedding": None}
    assert str(row["id"]) == "12345678901234567890.10"  # as the row's key is written


def test_sync_row_fails_the_statement_or_queues_the_row(plpy: FakePlpy) -> None:
    sync_setup(plpy, "fail", 400, {"error": "item 0: not an image", "item": 0})
    new = json.dumps({"id": 5, "caption": "x", "image": "\\x626164", "embedding": None})
    with pytest.raises(PlpyError) as caught:
        triggers.sync_row(7, new)
    assert caught.value.message == "qvl: the model service refused row 5 of public.photos: not an image"
    assert caught.value.hint is not None and caught.value.hint.endswith(triggers.SYNC_QUEUE_HINT)

    plpy.answers.clear()
    sync_setup(plpy, "queue", 503, {"error": "warming up"})
    assert json.loads(triggers.sync_row(7, new)) == {"embedding": None}
    queued = [(q, a) for q, a in plpy.executed if "qvl.queue_7" in q or "pg_notify" in q]
    assert queued == [('INSERT INTO qvl.queue_7 ("id") VALUES ($1) ON CONFLICT ("id") DO UPDATE '
                       "SET claimed_until = NULL, claimed_by = NULL, not_before = NULL", [5]),
                      ("SELECT pg_catalog.pg_notify('qvl_queue', $1)", ["7"])]
    assert plpy.notices == ["qvl: row 5 of public.photos queued for the worker: qvl: the model service is busy "
                            "or starting"]
    assert not any("failed_7" in q for q, _ in plpy.executed)  # queued, not embedded: any failure stands


def test_query_embedding_asks_the_service_once_per_statement(plpy: FakePlpy) -> None:
    stamp = ["2025-01-01 00:00:00+00"]
    plpy.on("statement_timestamp()", lambda args: [{"stamp": stamp[0]}])
    plpy.on("FROM qvl.vectorizer v", lambda args: [{**CFG, "storage": "halfvec", "query_instruction": "Find it."}])
    calls = service_answers(plpy, {"embed": (200, {"embeddings": [{"embedding_b64": b64_floats([0, 1, 0])}],
                                                   "dimensions": 3})})
    for _ in range(5):  # five rows of one statement
        assert query_vectors.query_embedding_sql("photos", "q", None, None, "vector") == "[0.0,1.0,0.0]"
    assert len(calls) == 1 and calls[0][1]["instruction"] == "Find it." and calls[0][1]["dimensions"] == 3
    assert query_vectors.query_embedding_sql("photos", None, None, None, "vector") is None  # nothing to embed
    for n in range(query_vectors.MEMO_MAX + 5):  # a query per row: the statement keeps the latest MEMO_MAX
        query_vectors.query_embedding_sql("photos", f"q{n}", None, None, "vector")
    assert len(query_vectors.memo["values"]) == query_vectors.MEMO_MAX
    calls.clear()
    stamp[0] = "2025-01-01 00:00:01+00"  # the next statement
    query_vectors.query_embedding_sql("photos", "q", None, None, "halfvec")
    assert len(calls) == 1
    plpy.answers.insert(0, ("FROM qvl.vectorizer v", lambda args: [{**CFG, "storage": "vector"}]))
    with pytest.raises(PlpyError) as caught:  # a halfvec beside a vector column: the index would go unused
        query_vectors.query_embedding_sql("other", "q", None, None, "halfvec")
    assert caught.value.sqlstate == "42804" and "qvl.query_embedding('photos', ...)" in (caught.value.hint or "")
    plpy.answers.insert(0, ("FROM qvl.vectorizer v", lambda args: [{**CFG, "storage": "bit"}]))
    with pytest.raises(PlpyError) as caught:
        query_vectors.query_embedding_sql("bits", "q", None, None, "vector")
    assert "qvl.query_embedding_bit('photos', ...)" in (caught.value.hint or "")


def test_rerank_items_splits_long_lists_and_merges_the_rankings(plpy: FakePlpy, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    monkeypatch.setattr(reranking, "RERANK_CHUNK", 2)
    calls: list[Any] = []

    def rerank(args: list[Any]) -> list[dict[str, Any]]:  # scores a document by the number in its text
        body = json.loads(args[1])
        calls.append(body)
        scores = [(i, int(d["text"][0]) / 10) for i, d in enumerate(body["documents"])]
        ranking = [{"index": i, "score": sc} for i, sc in sorted(scores, key=lambda x: -x[1])][:body["top_k"]]
        return [{"status": 200, "response": json.dumps({"ranking": ranking})}]

    plpy.on("qvl._call", rerank)
    docs: list[dict[str, Any]] = [{"text": [str(n)]} for n in (3, 9, 1, 7, 5)]
    assert reranking.rerank_items({"text": ["q"]}, docs, 3, str) == [(1, 0.9), (3, 0.7), (4, 0.5)]
    assert [len(body["documents"]) for body in calls] == [2, 2, 1]


def test_unknown_vectorizer_is_a_sql_error(plpy: FakePlpy) -> None:
    with pytest.raises(PlpyError) as caught:
        vectorizers.vectorizer_by_name("nope")
    assert (caught.value.message, caught.value.sqlstate) == ("qvl: no vectorizer named 'nope'", "42704")


def test_a_query_pins_the_vectors_model_and_a_mismatch_names_both(plpy: FakePlpy) -> None:
    plpy.on("statement_timestamp()", lambda args: [{"stamp": "2025-01-01 00:00:02+00"}])
    plpy.on("FROM qvl.vectorizer v", lambda args: [{**CFG, "model_fingerprint": "00112233aabbccdd",
                                                    "model_name": "tiny-qwen3-vl"}])
    refusal = {"error": "the request pins model fingerprint 00112233aabbccdd, but ...", "reason": "MODEL_MISMATCH"}
    info = {"models": [{"task": "embed", "name": "Qwen3-VL-2B", "fingerprint": "ffeeddcc99887766"}]}
    calls = service_answers(plpy, {"embed": (409, refusal), "info": (200, info)})
    with pytest.raises(PlpyError) as caught:
        query_vectors.query_embedding_sql("photos", "q", None, None, "vector")
    [pinned] = [body["fingerprint"] for endpoint, body in calls if endpoint == "embed"]
    assert pinned == "00112233aabbccdd"  # the JSON API's pin
    assert caught.value.sqlstate == "55000"
    assert "tiny-qwen3-vl (fingerprint 00112233aabbccdd)" in str(caught.value)
    assert "Qwen3-VL-2B (fingerprint ffeeddcc99887766)" in str(caught.value)
    assert caught.value.hint is not None and "SELECT qvl.reembed('photos')" in caught.value.hint
