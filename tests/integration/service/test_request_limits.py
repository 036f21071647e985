"""Every list a request carries is refused past its limit before anything is built from it
(issue 19, finding 6): a body's JSON values are counted before it is parsed, the items and
documents of a request before any item is built, the parts of one item (texts, images, frames,
content parts, messages) before any is read; and a body holds what it parses into in the byte
budget, not only its bytes.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from qvl_proto import vectorizer_pb2 as pb
from qvl_proto import vectorizer_pb2_grpc as pb_grpc
from tests.media_factory import image_bytes
from tests.support.service import ServiceProcess, metric

pytestmark = [pytest.mark.service]

MILLION = 1_000_000
TINY = "ab"  # 5 bytes a list element on the wire ("ab",): a 1M-element list is a 5 MB body
# The request process's peak RSS may grow by the body (5 MB), its chunks as they arrive and the
# count of its structure; parsing a million strings alone takes about 60 MB, building a million
# items about 300 MB (measured before the fix: 108 MB -> 444 MB for /v2/rerank).
PEAK_GROWTH_MB = 40

# (route, a body whose list holds a million tiny elements): every route, every list a body has.
MILLION_LISTS: list[tuple[str, dict[str, Any]]] = [
    ("/v2/rerank", {"query": "q", "documents": [TINY] * MILLION}),
    ("/v1/rerank", {"query": "q", "documents": [TINY] * MILLION}),
    ("/v1/rerank", {"model": "m", "query": "q", "documents": [TINY] * MILLION}),
    ("/rerank", {"query": "q", "documents": [TINY] * MILLION}),
    ("/v1/embed", {"items": [TINY] * MILLION}),
    ("/v1/embed", {"items": [{"text": [TINY] * MILLION}]}),
    ("/vectorize", {"texts": [TINY] * MILLION}),
    ("/v1/embeddings", {"input": [TINY] * MILLION}),
    ("/v2/embed", {"texts": [TINY] * MILLION}),
    ("/v2/embed", {"inputs": [{"content": [TINY] * MILLION}]}),
    ("/v1/multimodalembeddings", {"inputs": [TINY] * MILLION}),
]


def _proc_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def message_of(resp: httpx.Response) -> str:
    """The error message, in whichever documented shape the route answers."""
    body = resp.json()
    error = body.get("error")
    if isinstance(error, dict):
        return str(error["message"])
    return str(error or body.get("message") or body.get("detail"))


@pytest.mark.parametrize(("path", "body"), MILLION_LISTS, ids=[f"{p} {next(iter(b))}" for p, b in MILLION_LISTS])
def test_a_million_element_list_is_refused_before_it_is_parsed(service: ServiceProcess, path: str,
                                                               body: dict[str, Any]) -> None:
    assert service.proc is not None
    pid = service.proc.pid  # the request process (the model process is its child)
    raw = json.dumps(body, separators=(",", ":")).encode()
    assert len(raw) < 5.1 * MILLION
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")  # the peak RSS starts again from the current RSS
    before = _proc_kb(pid, "VmRSS")
    started = time.perf_counter()
    resp = httpx.post(service.http_url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=120)
    elapsed = time.perf_counter() - started
    growth_mb = (_proc_kb(pid, "VmHWM") - before) / 1024
    assert resp.status_code == 413, resp.text
    assert "QVL_MAX_JSON_VALUES" in message_of(resp), resp.text
    if "code" in resp.json():  # qvl's own shape names the limit in a field too
        assert resp.json()["limit"] == "QVL_MAX_JSON_VALUES"
    assert growth_mb < PEAK_GROWTH_MB, f"peak RSS grew {growth_mb:.0f} MB in {elapsed:.2f} s"


# -- counts before building, on a service with small limits --------------------------------------

LIMITS = {"QVL_MAX_ITEMS_PER_REQUEST": "4", "QVL_MAX_RERANK_DOCUMENTS": "4", "QVL_MAX_VIDEO_SOURCE_FRAMES": "8",
          "QVL_MAX_WIRE_BYTES": str(4 << 20)}
PARTS = 64  # QVL_MAX_PARTS_PER_ITEM's default
PNG = base64.b64encode(image_bytes("PNG", (8, 8), seed=1)).decode()
BAD = "@@@"  # no base64, no URL, no content part: building it fails
TEXT_PART = {"type": "text", "text": "a"}
BAD_PART = {"type": "audio", "audio": BAD}

# (route, a list one past its limit whose LAST element is bad, the limit): refused for its count,
# which says the count came first (built first, the bad element would be the answer: a 400 naming it).
OVER_BY_ONE: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/embed", {"items": ["a"] * 4 + [{"image": BAD}]}, "QVL_MAX_ITEMS_PER_REQUEST"),
    ("/vectorize", {"texts": ["a"] * 4, "images": [BAD]}, "QVL_MAX_ITEMS_PER_REQUEST"),
    ("/v1/rerank", {"query": "q", "documents": ["a"] * 4 + [{"image": BAD}]}, "QVL_MAX_RERANK_DOCUMENTS"),
    ("/v1/rerank", {"model": "m", "query": "q", "documents": ["a"] * 4 + [12]}, "QVL_MAX_RERANK_DOCUMENTS"),
    ("/v2/rerank", {"query": "q", "documents": ["a"] * 4 + [12]}, "QVL_MAX_RERANK_DOCUMENTS"),
    ("/v1/embed", {"items": [{"text": ["a"] * PARTS, "image": BAD}]}, "QVL_MAX_PARTS_PER_ITEM"),
    ("/v1/embed", {"items": [{"image": [PNG] * 32 + [BAD]}]}, "QVL_MAX_IMAGES_PER_ITEM"),
    ("/v1/embed", {"items": [{"frames": [PNG] * 8 + [BAD]}]}, "QVL_MAX_VIDEO_SOURCE_FRAMES"),
    ("/v2/embed", {"inputs": [{"content": [TEXT_PART] * PARTS + [BAD_PART]}]}, "QVL_MAX_PARTS_PER_ITEM"),
    ("/v1/multimodalembeddings", {"inputs": [{"content": [TEXT_PART] * PARTS + [BAD_PART]}]},
     "QVL_MAX_PARTS_PER_ITEM"),
    ("/v2/rerank", {"query": "q", "documents": [{"content": [TEXT_PART] * PARTS + [BAD_PART]}]},
     "QVL_MAX_PARTS_PER_ITEM"),
    ("/v1/embeddings", {"messages": [{"role": "user", "content": [TEXT_PART] * PARTS + [BAD_PART]}]},
     "QVL_MAX_PARTS_PER_ITEM"),
    ("/v1/embeddings", {"messages": [{"role": "user", "content": "a"}] * PARTS + [{"role": "bad"}]},
     "QVL_MAX_PARTS_PER_ITEM"),
]


@pytest.fixture(scope="module")
def limited() -> Iterator[ServiceProcess]:
    with ServiceProcess(env=LIMITS) as svc:
        yield svc


@pytest.mark.parametrize(("path", "body", "limit"), OVER_BY_ONE,
                         ids=[f"{p} {lim}" for p, _, lim in OVER_BY_ONE])
def test_a_list_over_its_limit_is_refused_before_any_element_is_built(limited: ServiceProcess, path: str,
                                                                      body: dict[str, Any], limit: str) -> None:
    resp = httpx.post(limited.http_url + path, json=body, timeout=60)
    assert resp.status_code == 413, resp.text
    assert limit in message_of(resp), resp.text


def _grpc_limit(call: Any) -> tuple[grpc.StatusCode, str | None]:
    try:
        call()
    except grpc.RpcError as err:
        return err.code(), dict(err.trailing_metadata() or ()).get("qvl-limit")
    return grpc.StatusCode.OK, None


def test_grpc_counts_documents_and_parts_before_building(limited: ServiceProcess) -> None:
    texts = [pb.Part(text="a")] * (PARTS + 1)
    with grpc.insecure_channel(limited.grpc_target) as channel:
        stub = pb_grpc.VectorizerStub(channel)
        docs = [pb.Item(parts=[pb.Part(text="a")])] * 4 + [pb.Item(parts=[pb.Part()])]  # the last has no content
        rerank = pb.RerankRequest(query=pb.Item(parts=[pb.Part(text="q")]), documents=docs)
        assert _grpc_limit(lambda: stub.Rerank(rerank, timeout=60)) == (
            grpc.StatusCode.INVALID_ARGUMENT, "QVL_MAX_RERANK_DOCUMENTS")
        embed = pb.EmbedRequest(items=[pb.Item(parts=texts)])
        assert _grpc_limit(lambda: stub.Embed(embed, timeout=60)) == (
            grpc.StatusCode.INVALID_ARGUMENT, "QVL_MAX_PARTS_PER_ITEM")
        [result] = list(stub.EmbedStream(iter([pb.EmbedStreamRequest(seq=0, item=pb.Item(parts=texts))]), timeout=60))
        assert result.WhichOneof("result") == "error" and result.error.limit == "QVL_MAX_PARTS_PER_ITEM", result


def test_the_byte_budget_holds_what_a_body_parses_into(limited: ServiceProcess) -> None:
    """A 300 KB body of 50,000 values parses into about 7 MB: with 2 MB of another body held, it
    does not fit a 4 MB budget (503, retry), though its bytes do; alone, it is served (here: refused
    for its item count, after it was parsed)."""
    many = json.dumps({"items": ["a"] * 50_000}).encode()
    assert len(many) < 300_000
    held = socket.create_connection(("127.0.0.1", limited.http_port))
    try:  # a body announced and not sent: its bytes are held from the start
        held.sendall(b"POST /v1/embed HTTP/1.1\r\nHost: qvl\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2000000\r\n\r\n{\"items\": [")
        deadline = time.monotonic() + 10
        while metric(limited, "qvl_wire_bytes") < 2_000_000:
            assert time.monotonic() < deadline, "the announced body is not held"
            time.sleep(0.05)
        resp = httpx.post(limited.http_url + "/v1/embed", content=many, timeout=60)
        assert resp.status_code == 503, resp.text
        assert resp.headers["Retry-After"] == "1" and "QVL_MAX_WIRE_BYTES" in resp.json()["error"]
    finally:
        held.close()
    deadline = time.monotonic() + 10
    while metric(limited, "qvl_wire_bytes") > 0:
        assert time.monotonic() < deadline, "the held body was not released"
        time.sleep(0.05)
    resp = httpx.post(limited.http_url + "/v1/embed", content=many, timeout=60)
    assert resp.status_code == 413 and resp.json()["limit"] == "QVL_MAX_ITEMS_PER_REQUEST", resp.text
