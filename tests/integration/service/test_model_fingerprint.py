"""The model fingerprint of a real `qvl serve` (issue 23, item 1): in Info, /v1/info, every embed
answer (gRPC initial metadata, an HTTP header on each dialect's route) and the start-up log; cached
between starts; changed when the checkpoint under the same path changes; and a request that pins
another fingerprint is refused.

One service on a checkpoint directory of its own, restarted on the same files (cached, not hashed
again) and on another tiny checkpoint copied over them (another seed: same file names and sizes,
other weights).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from connectors.client import AsyncClient, Client, ItemFailure, QvlClientError
from qvl_devtools.tiny_model import build_checkpoint
from qvl_proto import vectorizer_pb2 as pb
from qvl_proto import vectorizer_pb2_grpc as pb_grpc
from tests.support.service import TINY, ServiceProcess

pytestmark = [pytest.mark.service, pytest.mark.lifecycle]

FINGERPRINT = re.compile(r"[0-9a-f]{16}")
HEADER = "qvl-model-fingerprint"
PROFILES = {"terse": {"instruction": "Represent the note", "query_instruction": "Find the note"}}


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny shape with another seed: the same files, other weights."""
    return build_checkpoint(tmp_path_factory.mktemp("tiny-seed-1"), seed=1)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The path the service loads; the tests put one checkpoint or the other there."""
    path = tmp_path_factory.mktemp("live") / "tiny-qwen3-vl"
    shutil.copytree(TINY, path)
    return path


@pytest.fixture(scope="module")
def svc(live: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    base = tmp_path_factory.mktemp("fingerprint-svc")
    settings = base / "settings.yaml"
    settings.write_text(yaml.safe_dump({"profiles": PROFILES}))
    env = {"QVL_FINGERPRINT_CACHE": str(base / "cache" / "fingerprints.json")}
    with ServiceProcess(embedding_model=str(live), reranker_model=str(live), env=env,
                        args=["--settings", str(settings)]) as proc:
        yield proc


def _stub(svc: ServiceProcess) -> tuple[grpc.Channel, pb_grpc.VectorizerStub]:
    channel = grpc.insecure_channel(svc.grpc_target)
    return channel, pb_grpc.VectorizerStub(channel)


def _info_fingerprints(svc: ServiceProcess) -> dict[str, str]:
    channel, stub = _stub(svc)
    with channel:
        info = stub.Info(pb.InfoRequest(), timeout=30)
    return {m.task: m.fingerprint for m in info.models}


def _log_records(svc: ServiceProcess, since: int = 0) -> list[dict[str, Any]]:
    lines = svc.log_path.read_text(errors="replace").splitlines()[since:]
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _log_lines(svc: ServiceProcess) -> int:
    return len(svc.log_path.read_text(errors="replace").splitlines())


def _restart(svc: ServiceProcess) -> int:
    svc.stop()
    mark = _log_lines(svc)
    svc.start()
    return mark


def test_fingerprints_in_info_and_log(svc: ServiceProcess) -> None:
    fps = _info_fingerprints(svc)
    assert set(fps) == {"embed", "rerank"}
    assert all(FINGERPRINT.fullmatch(fp) for fp in fps.values()), fps
    # One checkpoint serves both tasks; their settings differ, and so do their identities.
    assert fps["embed"] != fps["rerank"]

    info = httpx.get(f"{svc.http_url}/v1/info", timeout=30).json()
    assert {m["task"]: m["fingerprint"] for m in info["models"]} == fps
    # A profile's instructions change the vectors: it has an identity of its own.
    terse = info["profile_fingerprints"]["terse"]
    assert FINGERPRINT.fullmatch(terse) and terse not in fps.values()

    serving = [r for r in _log_records(svc) if r.get("msg") == "serving"]
    assert serving and serving[-1]["embedding_fingerprint"] == fps["embed"], serving
    assert serving[-1]["reranker_fingerprint"] == fps["rerank"]


def test_every_embed_answer_carries_it(svc: ServiceProcess) -> None:
    fps = _info_fingerprints(svc)
    embed, rerank = fps["embed"], fps["rerank"]
    terse = httpx.get(f"{svc.http_url}/v1/info", timeout=30).json()["profile_fingerprints"]["terse"]

    channel, stub = _stub(svc)
    with channel:
        _, call = stub.Embed.with_call(pb.EmbedRequest(items=[pb.Item(parts=[pb.Part(text="a cat")])]), timeout=60)
        assert dict(call.initial_metadata())[HEADER] == embed
        stream = stub.EmbedStream(iter([pb.EmbedStreamRequest(seq=i, item=pb.Item(parts=[pb.Part(text=t)]))
                                        for i, t in enumerate(["one", "two", "three"])]), timeout=60)
        assert len(list(stream)) == 3
        assert dict(stream.initial_metadata())[HEADER] == embed
        query, doc = pb.Item(parts=[pb.Part(text="cat")]), pb.Item(parts=[pb.Part(text="a cat")])
        _, call = stub.Rerank.with_call(pb.RerankRequest(query=query, documents=[doc]), timeout=60)
        assert dict(call.initial_metadata())[HEADER] == rerank

    url = svc.http_url
    routes: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/embed", {"items": ["a cat"]}, embed),
        ("/v1/embeddings", {"input": ["a cat"], "model": "qvl"}, embed),
        ("/v1/embeddings", {"input": ["a cat"], "model": "terse"}, terse),  # a profile named by the model field
        ("/v2/embed", {"texts": ["a cat"], "input_type": "search_document", "embedding_types": ["float"]}, embed),
        ("/v1/multimodalembeddings", {"inputs": [{"content": [{"type": "text", "text": "a cat"}]}]}, embed),
        ("/vectorize", {"texts": ["a cat"]}, embed),
        ("/vectors", {"text": "a cat", "config": {"task_type": "query"}}, embed),
        ("/profiles/terse/vectors", {"text": "a cat"}, terse),
        ("/dim/32/vectorize", {"texts": ["a cat"]}, embed),
        ("/v1/rerank", {"query": "cat", "documents": ["a cat"]}, rerank),
        ("/rerank", {"query": "cat", "documents": ["a cat"]}, rerank),
    ]
    for path, body, want in routes:
        resp = httpx.post(url + path, json=body, timeout=60)
        assert resp.status_code == 200, (path, resp.text)
        assert resp.headers.get(HEADER) == want, (path, dict(resp.headers))
    assert httpx.post(f"{url}/v1/embed", json={"items": ["x"]}, timeout=60).json()["fingerprint"] == embed


def test_a_pinned_request_for_another_model_is_refused(svc: ServiceProcess) -> None:
    embed = _info_fingerprints(svc)["embed"]
    other = "0123456789abcdef"
    url = svc.http_url

    channel, stub = _stub(svc)
    with channel:
        pinned = pb.EmbedRequest(items=[pb.Item(parts=[pb.Part(text="a cat")])],
                                 options=pb.EmbedOptions(fingerprint=embed))
        assert len(stub.Embed(pinned, timeout=60).embeddings) == 1
        with pytest.raises(grpc.RpcError) as refused:
            stub.Embed(pb.EmbedRequest(items=[pb.Item(parts=[pb.Part(text="a cat")])],
                                       options=pb.EmbedOptions(fingerprint=other)), timeout=60)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert other in refused.value.details() and embed in refused.value.details()
        assert dict(refused.value.trailing_metadata())["qvl-reason"] == "MODEL_MISMATCH"
        # In a stream, the items of the pinned group come back as errors with the reason.
        results = list(stub.EmbedStream(iter([pb.EmbedStreamRequest(
            seq=0, item=pb.Item(parts=[pb.Part(text="x")]), options=pb.EmbedOptions(fingerprint=other))]),
            timeout=60))
        assert results[0].error.reason == pb.MODEL_MISMATCH and other in results[0].error.message

    resp = httpx.post(f"{url}/v1/embed", json={"items": ["a cat"], "fingerprint": other}, timeout=60)
    assert resp.status_code == 409 and resp.json()["reason"] == "MODEL_MISMATCH", resp.text
    assert other in resp.json()["error"] and embed in resp.json()["error"]
    # The model field of the dialects (what Weaviate's API modules send): name@fingerprint.
    resp = httpx.post(f"{url}/v1/embeddings", json={"input": ["a cat"], "model": f"qvl@{other}"}, timeout=60)
    assert resp.status_code == 409 and other in resp.json()["error"]["message"], resp.text
    resp = httpx.post(f"{url}/v1/multimodalembeddings", timeout=60, json={
        "inputs": [{"content": [{"type": "text", "text": "a cat"}]}], "model": f"qvl@{other}"})
    assert resp.status_code == 409 and other in resp.json()["detail"], resp.text
    ok = httpx.post(f"{url}/v1/embeddings", json={"input": ["a cat"], "model": f"qvl@{embed}"}, timeout=60)
    assert ok.status_code == 200, ok.text
    # The local modules' inferenceUrl carries it in the path.
    resp = httpx.post(f"{url}/fingerprint/{other}/vectorize", json={"texts": ["a cat"]}, timeout=60)
    assert resp.status_code == 409 and other in resp.json()["error"], resp.text
    ok = httpx.post(f"{url}/fingerprint/{embed}/vectorize", json={"texts": ["a cat"]}, timeout=60)
    assert ok.status_code == 200 and ok.headers[HEADER] == embed, ok.text
    # A malformed pin is bad input, named.
    resp = httpx.post(f"{url}/v1/embeddings", json={"input": ["a cat"], "model": "qvl@nothex"}, timeout=60)
    assert resp.status_code == 400 and "nothex" in resp.json()["error"]["message"], resp.text


def test_the_client_reads_and_pins_it(svc: ServiceProcess) -> None:
    embed = _info_fingerprints(svc)["embed"]
    other = "0123456789abcdef"
    with Client(svc.grpc_target) as qvl:
        assert qvl.last_fingerprint is None
        qvl.embed(["a cat"])
        assert qvl.last_fingerprint == embed
        assert qvl.embed(["a cat"], fingerprint=embed).shape == (1, 64)
        with pytest.raises(QvlClientError) as refused:
            qvl.embed(["a cat"], fingerprint=other)
        assert refused.value.code == "FAILED_PRECONDITION" and refused.value.reason == "MODEL_MISMATCH"
        failures = list(qvl.embed_stream(["a", "b"], fingerprint=other))
        assert all(isinstance(f, ItemFailure) and f.reason == "MODEL_MISMATCH" for f in failures), failures
        qvl.last_fingerprint = None
        assert len(list(qvl.embed_stream(["a", "b"]))) == 2 and qvl.last_fingerprint == embed

    async def run_async() -> None:
        async with AsyncClient(svc.grpc_target) as aqvl:
            await aqvl.embed(["a cat"])
            assert aqvl.last_fingerprint == embed
            with pytest.raises(QvlClientError, match=other):
                await aqvl.embed(["a cat"], fingerprint=other)
            rows = [r async for r in aqvl.embed_stream(["a"], fingerprint=other)]
            assert isinstance(rows[0], ItemFailure) and rows[0].reason == "MODEL_MISMATCH"

    asyncio.run(run_async())


def test_restart_on_the_same_files_reads_the_cache(svc: ServiceProcess) -> None:
    before = _info_fingerprints(svc)
    mark = _restart(svc)
    assert _info_fingerprints(svc) == before
    hashed = [r for r in _log_records(svc, mark) if r.get("msg") == "checkpoint hashed"]
    assert hashed, svc.log_tail()
    # Both tasks use one checkpoint: it is hashed once per start, and here from the cache alone.
    assert len(hashed) == 1 and hashed[0]["hashed_bytes"] == 0 and hashed[0]["cached_files"] > 0, hashed


def test_another_checkpoint_under_the_same_path_changes_it(svc: ServiceProcess, live: Path,
                                                          other_checkpoint: Path) -> None:
    before = _info_fingerprints(svc)
    svc.stop()
    for src in other_checkpoint.iterdir():
        shutil.copy2(src, live / src.name)  # copy2 keeps the source's mtime: the cache must still see it
    mark = _log_lines(svc)
    svc.start()
    after = _info_fingerprints(svc)
    assert after["embed"] != before["embed"] and after["rerank"] != before["rerank"]
    hashed = [r for r in _log_records(svc, mark) if r.get("msg") == "checkpoint hashed"]
    assert hashed and hashed[0]["hashed_bytes"] > 0, hashed


def _other_files(live: Path, other_checkpoint: Path) -> Path:
    """The checkpoint that ``live`` does not hold now."""
    same = (live / "model.safetensors").read_bytes() == (TINY / "model.safetensors").read_bytes()
    return other_checkpoint if same else TINY


def test_a_stream_open_across_a_model_change_is_not_mixed(svc: ServiceProcess, live: Path,
                                                         other_checkpoint: Path) -> None:
    before = _info_fingerprints(svc)["embed"]
    later = threading.Event()

    def requests() -> Iterator[pb.EmbedStreamRequest]:
        for seq in range(6):
            if seq == 3:
                later.wait(300)
            yield pb.EmbedStreamRequest(seq=seq, item=pb.Item(parts=[pb.Part(text=f"item {seq}")]))

    channel, stub = _stub(svc)
    with channel:
        stream = stub.EmbedStream(requests(), timeout=300)
        results = [next(stream) for _ in range(3)]
        # Other files under the path, and the model process dies: the service starts it again, on them.
        for src in _other_files(live, other_checkpoint).iterdir():
            shutil.copy2(src, live / src.name)
        mark = _log_lines(svc)
        model_pid = svc.model_pid()
        assert model_pid is not None
        os.kill(model_pid, signal.SIGKILL)
        deadline = time.monotonic() + 240
        while _info_fingerprints(svc).get("embed") in (None, "", before):
            assert time.monotonic() < deadline, svc.log_tail()
            time.sleep(0.5)
        later.set()
        results += list(stream)
        assert dict(stream.initial_metadata())[HEADER] == before

    after = _info_fingerprints(svc)["embed"]
    assert [r.seq for r in results] == list(range(6))
    assert all(r.HasField("embedding") for r in results[:3])
    for r in results[3:]:  # the new model's vectors never join the old model's in one stream
        assert r.error.reason == pb.MODEL_MISMATCH and before in r.error.message and after in r.error.message, r
    # Info shows the new fingerprint once the model is loaded; the warning comes after the warm-up.
    deadline = time.monotonic() + 120
    while not (warned := [r for r in _log_records(svc, mark)
                          if r.get("msg", "").startswith("serving another model")]):
        assert time.monotonic() < deadline, svc.log_tail()
        time.sleep(0.2)
    assert warned[0]["before"]["embed"] == before and warned[0]["embedding_fingerprint"] == after
