"""The client against several replicas (real gRPC servers in this process): round_robin spreads
calls, health checking leaves out a replica that is NOT_SERVING, and a stream whose replica dies
or drains is carried on by another one without losing or repeating a result."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from connectors.client import SERVICE_NAME, AsyncClient, Client, ItemFailure
from qvl_proto import vectorizer_pb2 as pb
from qvl_proto import vectorizer_pb2_grpc as pb_grpc
from tests.support.doc_snippets import ROOT, run_by

DRAINING = "the service is starting or draining; retry shortly"  # what qvl serve says per item (reason NOT_READY)


def value(item: pb.Item) -> float:
    """The number in an item's text ("n 17" -> 17): each answer says which item it is for."""
    return float(item.parts[0].text.split()[1])


@dataclass
class Replica(pb_grpc.VectorizerServicer):
    """A Vectorizer answering [n, 1] for the text "n <n>", with grpc.health.v1."""

    name: str
    calls: int = 0
    items: list[float] = field(default_factory=list)  # every item it answered
    # Called with (replica, items answered on this stream); returns what to do next:
    # None (answer), "die" (stop the whole server now), "drain" (answer UNAVAILABLE, reason NOT_READY).
    fate: Callable[[Replica, int], str | None] = lambda replica, answered: None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(8))
        pb_grpc.add_VectorizerServicer_to_server(self, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.serving(True)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def serving(self, yes: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if yes else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set(SERVICE_NAME, status)

    def Embed(self, request: pb.EmbedRequest, context: Any) -> pb.EmbedResponse:
        with self.lock:
            self.calls += 1
            self.items += [value(i) for i in request.items]
        return pb.EmbedResponse(embeddings=[pb.Embedding(values=[value(i), 1.0]) for i in request.items])

    def EmbedStream(self, request_iterator: Iterator[pb.EmbedStreamRequest], context: Any
                    ) -> Iterator[pb.EmbedStreamResult]:
        with self.lock:
            self.calls += 1
        answered = 0
        for req in request_iterator:
            fate = self.fate(self, answered)
            if fate == "die":
                self.server.stop(0)  # every connection goes, as when the process is killed
                return
            if fate == "drain":
                yield pb.EmbedStreamResult(seq=req.seq, error=pb.ItemError(index=req.seq, message=DRAINING,
                                                                           code="UNAVAILABLE", reason=pb.NOT_READY))
                continue
            with self.lock:
                self.items.append(value(req.item))
            answered += 1
            time.sleep(0.002)
            yield pb.EmbedStreamResult(seq=req.seq, embedding=pb.Embedding(values=[value(req.item), 1.0]))


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    pair = [Replica("a"), Replica("b")]
    yield pair
    for r in pair:
        r.server.stop(0)


def target(replicas: list[Replica]) -> str:
    return "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)


def texts(n: int) -> list[str]:
    return [f"n {i}" for i in range(n)]


def check_complete(rows: list[Any], n: int) -> None:
    """Every item answered once, in input order, with its own vector."""
    assert len(rows) == n
    assert [float(r[0]) for r in rows] == list(range(n))


def test_calls_are_spread_over_the_replicas(replicas: list[Replica]) -> None:
    with Client(target(replicas)) as c:
        c.wait_ready(10)
        for i in range(40):
            assert c.embed([f"n {i}"])[0, 0] == i
    a, b = replicas
    assert a.calls + b.calls == 40
    assert min(a.calls, b.calls) >= 10, (a.calls, b.calls)  # pick_first would give one of them all 40


def test_the_target_in_scaling_md_spreads_calls(replicas: list[Replica]) -> None:
    """docs/scaling.md's client, its two addresses those of the replicas here."""
    a, b = replicas
    [block] = run_by(ROOT / "docs" / "scaling.md", __file__)
    block = block.replace("10.0.0.1:50051", f"127.0.0.1:{a.port}").replace("10.0.0.2:50051", f"127.0.0.1:{b.port}")
    ns: dict[str, Any] = {}
    exec(compile(block, "docs/scaling.md", "exec", dont_inherit=True), ns)
    with ns["client"] as c:
        c.wait_ready(10)
        for i in range(40):
            c.embed([f"n {i}"])
    assert a.calls + b.calls == 40 and min(a.calls, b.calls) >= 10, (a.calls, b.calls)


def test_a_replica_that_is_not_serving_gets_no_calls(replicas: list[Replica]) -> None:
    a, b = replicas
    with Client(target(replicas)) as c:
        c.wait_ready(10)
        a.serving(False)  # draining or loading: health says so, and the client leaves it out
        time.sleep(0.5)
        before = a.calls
        for i in range(20):
            c.embed([f"n {i}"])
        assert a.calls == before and b.calls >= 20
        a.serving(True)
        time.sleep(0.5)
        for i in range(20):
            c.embed([f"n {i}"])
        assert a.calls > before


def test_a_server_without_health_checks_still_gets_calls() -> None:
    """gRPC treats a server that does not implement grpc.health.v1 as healthy."""

    class Plain(pb_grpc.VectorizerServicer):
        def Embed(self, request: pb.EmbedRequest, context: Any) -> pb.EmbedResponse:
            return pb.EmbedResponse(embeddings=[pb.Embedding(values=[value(i), 1.0]) for i in request.items])

    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_VectorizerServicer_to_server(Plain(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", retries=0) as c:
            assert c.embed(["n 3"])[0, 0] == 3
    finally:
        server.stop(0)


def die_once_after(count: int, died: list[str]) -> Callable[[Replica, int], str | None]:
    """The first stream to reach ``count`` answers kills its replica (named in ``died``)."""

    def fate(replica: Replica, answered: int) -> str | None:
        if not died and answered >= count:
            died.append(replica.name)
            return "die"
        return None

    return fate


def test_a_stream_whose_replica_dies_goes_on_on_another(replicas: list[Replica]) -> None:
    died: list[str] = []
    fate = die_once_after(25, died)
    for r in replicas:
        r.fate = fate
    with Client(target(replicas)) as c:
        c.wait_ready(10)
        rows = list(c.embed_stream(texts(300), max_in_flight=16))
        check_complete(rows, 300)
        assert c.retried >= 1
    [dead] = [r for r in replicas if r.name in died]
    [alive] = [r for r in replicas if r.name not in died]
    assert len(dead.items) >= 25
    # What the dead replica answered after the client last heard from it is embedded again on the
    # other one: never more than the window.
    assert len(alive.items) + len(dead.items) <= 300 + 16
    assert set(alive.items) | set(dead.items) == set(range(300))


def test_items_a_draining_replica_refuses_go_to_the_other(replicas: list[Replica]) -> None:
    a, b = replicas
    drained: list[str] = []

    def fate(replica: Replica, answered: int) -> str | None:
        if replica is a and answered >= 10:
            if not drained:
                drained.append("a")
                a.serving(False)  # what qvl serve does on SIGTERM: health first, then it refuses
            return "drain"
        return None

    a.fate = b.fate = fate
    with Client(target(replicas)) as c:
        c.wait_ready(10)
        rows = list(c.embed_stream(texts(200), max_in_flight=8))
    assert not any(isinstance(r, ItemFailure) for r in rows)
    check_complete(rows, 200)


def test_without_retries_refused_items_are_handed_on_as_failures(replicas: list[Replica]) -> None:
    a, b = replicas
    a.fate = b.fate = lambda replica, answered: "drain"
    with Client(target(replicas), retries=0) as c:
        rows = list(c.embed_stream(texts(5)))
    assert all(isinstance(r, ItemFailure) and r.code == "UNAVAILABLE" and r.reason == "NOT_READY" for r in rows)
    assert len(rows) == 5


def test_a_per_item_model_failure_is_the_items_and_is_not_sent_again(replicas: list[Replica]) -> None:
    """UNAVAILABLE for one item without the NOT_READY reason: the model process died with it (a
    poison row); sending it elsewhere would only kill another model process. The words of the
    message decide nothing (issue 19 finding 3): not the not-ready words in bad input, nor in an
    UNAVAILABLE without the reason."""

    class Poisoned(pb_grpc.VectorizerServicer):
        def __init__(self) -> None:
            self.seen = 0

        def EmbedStream(self, request_iterator: Iterator[pb.EmbedStreamRequest], context: Any
                        ) -> Iterator[pb.EmbedStreamResult]:
            for req in request_iterator:
                self.seen += 1
                if value(req.item) == 2:
                    yield pb.EmbedStreamResult(seq=req.seq, error=pb.ItemError(
                        index=req.seq, message="the model process exited", code="UNAVAILABLE"))
                elif value(req.item) == 3:
                    yield pb.EmbedStreamResult(seq=req.seq, error=pb.ItemError(
                        index=req.seq, message="the model process is not running; the service is starting or "
                                               "draining", code="UNAVAILABLE"))
                elif value(req.item) == 4:
                    yield pb.EmbedStreamResult(seq=req.seq, error=pb.ItemError(
                        index=req.seq, message="image 0: 'uploads/is not running.png' is outside the allowed roots",
                        code="INVALID_ARGUMENT"))
                else:
                    yield pb.EmbedStreamResult(seq=req.seq, embedding=pb.Embedding(values=[value(req.item), 1.0]))

    servicer = Poisoned()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_VectorizerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}") as c:
            rows = list(c.embed_stream(texts(6)))
        assert [type(r) is ItemFailure for r in rows] == [False, False, True, True, True, False]
        assert servicer.seen == 6 and c.retried == 0
    finally:
        server.stop(0)


def test_a_stream_with_no_replica_left_raises_after_its_retries(replicas: list[Replica]) -> None:
    for r in replicas:
        r.server.stop(0)
    with Client(target(replicas), retries=2) as c, pytest.raises(Exception) as err:
        list(c.embed_stream(texts(3)))
    assert getattr(err.value, "code", None) == "UNAVAILABLE" and c.retried == 2


def test_the_async_client_carries_a_stream_over_too(replicas: list[Replica]) -> None:
    fate = die_once_after(20, [])
    for r in replicas:
        r.fate = fate

    async def run() -> list[np.ndarray | ItemFailure]:
        async with AsyncClient(target(replicas)) as c:
            await c.channel.channel_ready()
            out = [row async for row in c.embed_stream(texts(200), max_in_flight=8)]
            assert c.retried >= 1
            return out

    check_complete(asyncio.run(run()), 200)


def test_a_dns_target_reaches_every_address_of_the_name(replicas: list[Replica]) -> None:
    """A dns:/// target: gRPC's resolver gives every address of the name (with ::1 as well as
    127.0.0.1, the one that refuses connections is never picked: round_robin picks READY ones)."""
    a = replicas[0]
    with Client(f"dns:///localhost:{a.port}", retries=0) as c:
        c.wait_ready(10)
        for i in range(10):
            assert c.embed([f"n {i}"])[0, 0] == i
    assert a.calls == 10
