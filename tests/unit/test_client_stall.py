"""A stalled stream whose cancel does not end its call: the client closes and replaces its channel.

Under load, 1 run of the worker's fault tests in 7 left a lane blocked in gRPC's response iterator
after the client had cancelled a stalled stream (16 more runs with logging did not bring it back).
That fault cannot be made to happen at will, so the call here is a real call on a real server
whose ``cancel()`` is swallowed (the client's ``_open_stream`` seam): its receive then stays
blocked exactly as the lane's did, and only the channel's close ends it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from connectors.client import AsyncClient, Client, StreamStalled
from qvl_proto import vectorizer_pb2 as pb
from qvl_proto import vectorizer_pb2_grpc as pb_grpc
from tests.unit.test_client import serving

BOUND_S = 15.0  # stall 2 s + grace 1 s + ticks: well under; the unmodified client waited until release


class Held(pb_grpc.VectorizerServicer):
    """A stream answers its first item, then nothing until ``release``; the first Embed is held
    likewise (a call that shares the stalled stream's channel), later ones answer at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.embed_calls = 0

    def EmbedStream(self, request_iterator, context):
        first = next(request_iterator)
        yield pb.EmbedStreamResult(seq=first.seq, embedding=pb.Embedding(values=[1.0, 0.0], dimensions=2))
        self.release.wait(120)

    def Embed(self, request, context):
        self.embed_calls += 1
        if self.embed_calls == 1:
            self.release.wait(120)
        return pb.EmbedResponse(embeddings=[pb.Embedding(values=[0.6, 0.8], dimensions=2)])

    def Info(self, request, context):
        return pb.InfoResponse(version="held")


class DeafToCancel:
    """A real call whose ``cancel()`` does nothing: how the hung lane's call behaved."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.cancels = 0

    def cancel(self) -> bool:
        self.cancels += 1
        return False

    def __iter__(self) -> Iterator[Any]:
        return iter(self.call)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self.call.__aiter__()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.call, name)


class DeafClient(Client):
    def _open_stream(self, channel: grpc.Channel, requests: Any, timeout: float | None) -> Any:
        self.deaf = DeafToCancel(super()._open_stream(channel, requests, timeout))
        return self.deaf


class DeafAsyncClient(AsyncClient):
    def _open_stream(self, channel: grpc.aio.Channel, requests: Any, timeout: float | None) -> Any:
        self.deaf = DeafToCancel(super()._open_stream(channel, requests, timeout))
        return self.deaf


@pytest.fixture()
def held() -> Iterator[tuple[Held, str]]:
    servicer = Held()
    with serving(servicer) as target:
        try:
            yield servicer, target
        finally:
            servicer.release.set()  # frees a hung call (the unmodified client) so the test can end


SETTINGS: dict[str, Any] = {"stall_timeout": 2.0, "cancel_grace": 1.0, "retries": 2}


def test_a_stalled_stream_whose_cancel_is_lost_ends_and_its_neighbour_is_sent_again(held: tuple[Held, str]) -> None:
    servicer, target = held
    outcome: dict[str, Any] = {}

    def stream(c: Client) -> None:
        got: list[Any] = []
        try:
            for row in c.embed_stream(["a", "b", "c"]):
                got.append(row)
        except Exception as exc:
            outcome["stream"] = exc
        outcome["rows"], outcome["stream_s"] = len(got), time.monotonic() - started

    def neighbour(c: Client) -> None:
        outcome["embed"] = c.embed(["x"]).tolist()

    started = time.monotonic()
    with DeafClient(target, **SETTINGS) as c:
        threads = [threading.Thread(target=f, args=(c,), daemon=True) for f in (neighbour, stream)]
        for t in threads:
            t.start()
            time.sleep(0.3)  # the neighbour's call is on the channel first
        for t in threads:
            t.join(max(0.0, started + BOUND_S - time.monotonic()))
        hung = [t.name for t in threads if t.is_alive()]
        assert not hung, f"still blocked at {BOUND_S:g} s: {hung}, stream {outcome.get('stream')!r}"
        assert c.deaf.cancels >= 1  # the client did cancel; the call ended only when its channel closed
        old_retried = c.retried
    assert isinstance(outcome["stream"], StreamStalled) and not outcome["stream"].unreachable, outcome
    assert outcome["rows"] == 1 and outcome["stream_s"] < 8, outcome
    assert outcome["embed"] == [[pytest.approx(0.6), pytest.approx(0.8)]]  # sent again on the new channel
    assert servicer.embed_calls == 2 and old_retried == 1


def test_the_async_client_does_the_same(held: tuple[Held, str]) -> None:
    servicer, target = held

    async def run() -> tuple[BaseException | None, int, float, list[list[float]], int, int]:
        started = time.monotonic()
        async with DeafAsyncClient(target, **SETTINGS) as c:
            async def stream() -> tuple[BaseException | None, int, float]:
                got: list[Any] = []
                try:
                    async for row in c.embed_stream(["a", "b", "c"]):
                        got.append(row)
                except Exception as exc:
                    return exc, len(got), time.monotonic() - started
                return None, len(got), time.monotonic() - started

            neighbour = asyncio.ensure_future(c.embed(["x"]))
            await asyncio.sleep(0.3)
            err, rows, took = await stream()
            embedded = (await neighbour).tolist()
            return err, rows, took, embedded, c.deaf.cancels, c.retried

    try:
        err, rows, took, embedded, cancels, retried = asyncio.run(asyncio.wait_for(run(), BOUND_S))
    except TimeoutError:
        pytest.fail(f"the async stream (or its neighbour) was still blocked after {BOUND_S:g} s")
    assert isinstance(err, StreamStalled) and not err.unreachable, err
    assert rows == 1 and took < 8 and cancels >= 1
    assert embedded == [[pytest.approx(0.6), pytest.approx(0.8)]]
    assert servicer.embed_calls == 2 and retried == 1


def test_a_callers_cancel_during_a_stall_still_raises(held: tuple[Held, str]) -> None:
    """The async driver took every CancelledError after a stall for its own cancel of the call: a
    caller's ``wait_for`` running out meanwhile was swallowed and became ``StreamStalled``."""
    _, target = held

    async def run() -> list[Any]:
        async with DeafAsyncClient(target, stall_timeout=1.0, cancel_grace=60.0) as c:
            return [row async for row in c.embed_stream(["a", "b", "c"])]

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(run(), 3.0))
    assert time.monotonic() - started < 8
