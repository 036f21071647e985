"""Client behaviour against deliberately misbehaving gRPC servers (real servers, stuck on purpose)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from connectors.client import (
    FINGERPRINT_KEY,
    AsyncClient,
    Client,
    InvalidArgument,
    InvalidInput,
    ItemFailure,
    StreamStalled,
    TransientError,
    not_ready,
    reason_name,
    to_item,
)
from qvl_proto import vectorizer_pb2 as pb
from qvl_proto import vectorizer_pb2_grpc as pb_grpc


class Stuck(pb_grpc.VectorizerServicer):
    """Answers the first item of a stream, then never again; Embed is UNAVAILABLE twice, then fine;
    Info answers (the service is there, only the stream is stuck)."""

    def __init__(self) -> None:
        self.embed_calls = 0
        self.release = threading.Event()

    def EmbedStream(self, request_iterator, context):
        first = next(request_iterator)
        yield pb.EmbedStreamResult(seq=first.seq, embedding=pb.Embedding(values=[1.0, 0.0], dimensions=2))
        self.release.wait(30)

    def Embed(self, request, context):
        self.embed_calls += 1
        if self.embed_calls <= 2:
            context.abort(grpc.StatusCode.UNAVAILABLE, "starting")
        if request.items[0].parts[0].text == "bad":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "item 0: text is bad")
        return pb.EmbedResponse(embeddings=[pb.Embedding(values=[0.6, 0.8], dimensions=2)])

    def Info(self, request, context):
        return pb.InfoResponse(version="stuck")


@contextlib.contextmanager
def serving(servicer: pb_grpc.VectorizerServicer) -> Iterator[str]:
    """A real gRPC server for ``servicer`` on a free port; its target."""
    # Port 0 and no SO_REUSEPORT: no other server can get or share the port (tests/support/fake_service.py).
    server = grpc.server(futures.ThreadPoolExecutor(8), options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_VectorizerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


@pytest.fixture()
def stuck() -> Iterator[tuple[Stuck, str]]:
    servicer = Stuck()
    with serving(servicer) as target:
        yield servicer, target
        servicer.release.set()


def stream_rows(kind: str, target: str, items: list[str], **client: object) -> tuple[list[object], Exception | None]:
    """Stream ``items`` with the sync or the async client: the rows handed on, and what it raised.
    A stream still running after 30 s is a hang (the test fails on the TimeoutError)."""
    got: list[object] = []
    if kind == "sync":
        try:
            with Client(target, **client) as c:  # type: ignore[arg-type]
                for row in c.embed_stream(items):
                    got.append(row)
        except Exception as exc:
            return got, exc
        return got, None

    async def run() -> None:
        async with AsyncClient(target, **client) as c:  # type: ignore[arg-type]
            async for row in c.embed_stream(items):
                got.append(row)

    try:
        asyncio.run(asyncio.wait_for(run(), 30))
    except TimeoutError:
        raise
    except Exception as exc:
        return got, exc
    return got, None


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stalled_stream_raises_instead_of_hanging(stuck: tuple[Stuck, str], kind: str) -> None:
    """Both drivers (the async one had no stall handling: its stream waited forever)."""
    _, target = stuck
    started = time.monotonic()
    got, err = stream_rows(kind, target, ["a", "b", "c"], stall_timeout=2.0, stall_probe=0.5)
    assert isinstance(err, TransientError) and "answered nothing" in str(err), err
    assert isinstance(err, StreamStalled) and not err.unreachable and err.code == "DEADLINE_EXCEEDED"
    assert len(got) == 1 and time.monotonic() - started < 10  # the probe found the service there


@contextlib.contextmanager
def one_connection(target: str) -> Iterator[str]:
    """A TCP proxy to ``target`` that forwards the first connection and refuses every later one:
    the service as a stream that was opened just as it went away sees it (the open connection
    lingers, a new one finds nobody)."""
    host, port = target.rsplit(":", 1)
    listener = socket.create_server(("127.0.0.1", 0))
    proxy_port = listener.getsockname()[1]
    sockets: list[socket.socket] = [listener]

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)

    def accept() -> None:
        with contextlib.suppress(OSError):
            client, _ = listener.accept()
            listener.close()  # later connections are refused
            upstream = socket.create_connection((host, int(port)))
            sockets.extend([client, upstream])
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{proxy_port}"
    finally:
        for s in sockets:
            s.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stream_whose_service_went_away_is_cancelled_at_the_probe(stuck: tuple[Stuck, str], kind: str) -> None:
    """The worker's watchdog asked the service on a new connection while a stream waited, and gave
    the rows back when nobody answered there, long before the stall timeout: the client's
    ``stall_probe`` does that now, in both drivers."""
    _, target = stuck
    with one_connection(target) as proxied:
        started = time.monotonic()
        got, err = stream_rows(kind, proxied, ["a", "b", "c"], stall_timeout=60.0, stall_probe=1.0, retries=0)
    assert isinstance(err, StreamStalled) and err.unreachable and err.code == "UNAVAILABLE", err
    assert len(got) == 1 and time.monotonic() - started < 15


class Echo(pb_grpc.VectorizerServicer):
    """Answers every item of a stream with [seq, 1]; Embed answers INT8 rows with their scales."""

    def __init__(self) -> None:
        self.streamed = 0

    def EmbedStream(self, request_iterator, context):
        for req in request_iterator:
            self.streamed += 1
            yield pb.EmbedStreamResult(seq=req.seq, embedding=pb.Embedding(values=[float(req.seq), 1.0]))

    def Embed(self, request, context):
        return pb.EmbedResponse(embeddings=[pb.Embedding(packed=bytes([i, 2]), encoding=pb.INT8, scale=0.5 + i,
                                                         dimensions=2) for i in range(len(request.items))])


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_bad_item_in_a_stream_is_named(kind: str) -> None:
    """An item the client cannot send (an unknown key) raised "Exception iterating requests!"
    (UNKNOWN) from the sync client and a bare asyncio.CancelledError from the async one: now
    InvalidArgument naming the item, after the rows before it."""
    servicer = Echo()
    with serving(servicer) as target:
        got, err = stream_rows(kind, target, ["a", "b", {"txt": "typo"}, "d"])  # type: ignore[list-item]
    assert isinstance(err, InvalidArgument), repr(err)
    assert err.index == 2 and str(err).startswith("item 2: unknown key 'txt'")
    assert [float(r[0]) for r in got] == [0.0, 1.0]  # type: ignore[index]


def test_the_async_client_has_the_sync_ones_features() -> None:
    """``last_scales`` and ``wait_ready`` were only in the sync client."""
    with serving(Echo()) as target:
        with Client(target) as c:
            c.wait_ready(10)
            c.embed(["a", "b"], encoding="int8")
            want = c.last_scales.tolist()

        async def run() -> list[float]:
            async with AsyncClient(target) as c:
                await c.wait_ready(10)
                await c.embed(["a", "b"], encoding="int8")
                return c.last_scales.tolist()

        assert asyncio.run(run()) == want == [0.5, 1.5]

    async def nobody() -> None:
        async with AsyncClient("127.0.0.1:1") as c:
            await c.wait_ready(0.5)

    with pytest.raises(grpc.FutureTimeoutError):  # nobody listens: both raise the same
        asyncio.run(nobody())


def test_unavailable_is_retried_and_bad_input_is_not(stuck: tuple[Stuck, str]) -> None:
    servicer, target = stuck
    with Client(target, retries=3) as c:
        assert c.embed(["fine"]).tolist() == [[pytest.approx(0.6), pytest.approx(0.8)]]
        assert servicer.embed_calls == 3
        with pytest.raises(InvalidInput) as err:
            c.embed(["bad"])
        assert err.value.index == 0 and servicer.embed_calls == 4


def test_not_ready_is_read_from_the_typed_reason_never_the_words() -> None:
    """Issue 19 finding 3: "is not running" in a path made bad input look like a restarting service.
    One rule, on the service's reason: the code alone, or the message, decides nothing."""
    assert not_ready("UNAVAILABLE", "NOT_READY")
    assert not not_ready("UNAVAILABLE", None)  # the model process exited with the item: the item's
    assert not not_ready("INVALID_ARGUMENT", "NOT_READY")  # only an outage is "not ready"
    assert not not_ready("RESOURCE_EXHAUSTED", "NOT_READY")
    assert reason_name(pb.NOT_READY) == "NOT_READY" and reason_name(pb.REASON_UNSPECIFIED) is None
    assert reason_name(999) is None  # a reason a newer service added: nothing to act on
    bad = pb.ItemError(index=0, code="INVALID_ARGUMENT",
                       message="image 0: 'uploads/is not running.png' is outside the allowed roots")
    assert not not_ready(bad.code, reason_name(bad.reason))


def test_items_and_channel_options() -> None:
    item = to_item({"text": ["a", "b"], "image": [b"x"], "frames": [b"f1", b"f2"], "instruction": "do"})
    kinds = [p.WhichOneof("kind") for p in item.parts]
    assert kinds == ["frames", "image", "text", "text"] and item.instruction == "do"
    with pytest.raises(ValueError, match="item 3: unknown key 'txt'"):  # InvalidArgument is a ValueError
        to_item({"txt": "typo"}, 3)
    c = Client("127.0.0.1:1", channel_options=[("grpc.max_reconnect_backoff_ms", 1000)])
    assert dict(c.options)["grpc.max_reconnect_backoff_ms"] == 1000
    c.close()


def test_arguments_are_checked_before_anything_is_sent() -> None:
    """Out-of-range numbers name their argument (not protobuf's "Value out of range: -1")."""
    bad_embed = [({"dimensions": -1}, "dimensions"), ({"dimensions": 0}, "dimensions"),
                 ({"dimensions": 2 ** 32}, "dimensions"), ({"dimensions": 1.5}, "dimensions"),
                 ({"dimensions": True}, "dimensions"), ({"timeout": -1}, "timeout"), ({"timeout": 0}, "timeout"),
                 ({"timeout": float("nan")}, "timeout"), ({"encoding": "int2"}, "encoding")]
    bad_rerank = [({"top_k": 0}, "top_k"), ({"top_k": -3}, "top_k"), ({"timeout": -1.0}, "timeout")]
    bad_stream = [({"max_in_flight": 0}, "max_in_flight"), ({"dimensions": -1}, "dimensions"),
                  ({"timeout": -2}, "timeout")]
    with Client("127.0.0.1:1", retries=0) as c:
        for kwargs, name in bad_embed:
            with pytest.raises(InvalidArgument, match=rf"^{name} must be") as err:
                c.embed(["ok"], **kwargs)
            assert isinstance(err.value, InvalidInput) and isinstance(err.value, ValueError)
            assert err.value.code == "INVALID_ARGUMENT"
        for kwargs, name in bad_rerank:
            with pytest.raises(InvalidArgument, match=rf"^{name} must be"):
                c.rerank("q", ["d"], **kwargs)
        for kwargs, name in bad_stream:
            with pytest.raises(InvalidArgument, match=rf"^{name} must be"):
                list(c.embed_stream(["ok"], **kwargs))
    for kwargs, name in ([({"timeout": -1}, "timeout"), ({"retries": -1}, "retries"),
                          ({"stall_timeout": 0}, "stall_timeout"), ({"stall_probe": -1}, "stall_probe")]):
        with pytest.raises(InvalidArgument, match=rf"^{name} must be"):
            Client("127.0.0.1:1", **kwargs)

    async def check_async() -> None:
        async with AsyncClient("127.0.0.1:1", retries=0) as c:
            for kwargs, name in bad_embed:
                with pytest.raises(InvalidArgument, match=rf"^{name} must be"):
                    await c.embed(["ok"], **kwargs)
            for kwargs, name in bad_rerank:
                with pytest.raises(InvalidArgument, match=rf"^{name} must be"):
                    await c.rerank("q", ["d"], **kwargs)
            for kwargs, name in bad_stream:
                with pytest.raises(InvalidArgument, match=rf"^{name} must be"):
                    [row async for row in c.embed_stream(["ok"], **kwargs)]
        with pytest.raises(InvalidArgument, match=r"^timeout must be"):
            AsyncClient("127.0.0.1:1", timeout=-5)

    asyncio.run(check_async())


class ShutsDown(pb_grpc.VectorizerServicer):
    """Cancels the first call and the first stream, as gRPC's server cancels a call that reaches it
    in the instant it shuts down (a draining replica closing its port: a race that
    test_replicas.py meets now and then, not on demand), then answers."""

    def __init__(self) -> None:
        self.calls = {"Embed": 0, "EmbedStream": 0}

    def Embed(self, request, context):
        self.calls["Embed"] += 1
        if self.calls["Embed"] == 1:
            context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
        return pb.EmbedResponse(embeddings=[pb.Embedding(values=[0.6, 0.8], dimensions=2)])

    def EmbedStream(self, request_iterator, context):
        self.calls["EmbedStream"] += 1
        if self.calls["EmbedStream"] == 1:
            context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
        for req in request_iterator:
            yield pb.EmbedStreamResult(seq=req.seq, embedding=pb.Embedding(values=[0.6, 0.8], dimensions=2))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_call_cancelled_by_a_replica_shutting_down_is_sent_again(kind: str) -> None:
    servicer = ShutsDown()
    with serving(servicer) as target:
        if kind == "sync":
            with Client(target, retries=2) as c:
                rows = c.embed(["a"]).tolist()
                # As many times as the async client: the two drivers share one session and one
                # reading of a stream's end (a lost status included).
                for _ in range(40):
                    servicer.calls["EmbedStream"] = 0
                    streamed = [r.tolist() for r in c.embed_stream(["b", "c"])]
                    assert streamed == [[pytest.approx(0.6), pytest.approx(0.8)]] * 2
                retried = c.retried - 39
        else:
            # Many times over: grpc.aio turns about 1 stream in 6 that the server ends while the
            # client still sends into INTERNAL "Internal error from Core" (grpc/grpc#36066),
            # which must be sent again too.
            async def run() -> tuple[list[list[float]], list[list[float]], int]:
                async with AsyncClient(target, retries=2) as c:
                    rows = (await c.embed(["a"])).tolist()
                    for _ in range(40):
                        servicer.calls["EmbedStream"] = 0
                        streamed = [r.tolist() async for r in c.embed_stream(["b", "c"])]
                        assert streamed == [[pytest.approx(0.6), pytest.approx(0.8)]] * 2
                    return rows, streamed, c.retried - 39
            rows, streamed, retried = asyncio.run(run())
        assert rows == [[pytest.approx(0.6), pytest.approx(0.8)]]
        assert streamed == [[pytest.approx(0.6), pytest.approx(0.8)]] * 2
        assert servicer.calls == {"Embed": 2, "EmbedStream": 2} and retried == 2


class Announces(pb_grpc.VectorizerServicer):
    """A replica that names its model in every answer's metadata (as qvl serve does) and whose
    first stream dies after one answer; it records each call's model pin."""

    def __init__(self) -> None:
        self.pins: list[str] = []  # each stream's, from its first message
        self.streams = 0

    def Embed(self, request, context):
        context.send_initial_metadata(((FINGERPRINT_KEY, "abc123"),))
        return pb.EmbedResponse(embeddings=[pb.Embedding(values=[0.6, 0.8], dimensions=2)])

    def EmbedStream(self, request_iterator, context):
        self.streams += 1
        context.send_initial_metadata(((FINGERPRINT_KEY, "abc123"),))
        for n, req in enumerate(request_iterator):
            if n == 0:
                self.pins.append(req.options.fingerprint)
            yield pb.EmbedStreamResult(seq=req.seq, embedding=pb.Embedding(values=[0.6, 0.8], dimensions=2))
            if self.streams == 1:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the replica died")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_resent_stream_is_pinned_to_the_model_the_first_announced(kind: str) -> None:
    """main's client.py pinned the streams after the first to the model the first announced (a retry
    on a replica of another model is refused, not mixed): both drivers do, and read
    ``last_fingerprint`` from embed and embed_stream; a caller's own pin is kept on every stream."""
    servicer = Announces()
    with serving(servicer) as target:
        if kind == "sync":
            with Client(target, retries=2) as c:
                c.embed(["a"])
                after_embed = c.last_fingerprint
                c.last_fingerprint = None
                rows = list(c.embed_stream(["a", "b", "c"], max_in_flight=1))
                announced = c.last_fingerprint
                servicer.streams = 0
                pinned_rows = list(c.embed_stream(["a", "b"], max_in_flight=1, fingerprint="fff"))
        else:
            async def run() -> tuple[str | None, list[object], str | None, list[object]]:
                async with AsyncClient(target, retries=2) as c:
                    await c.embed(["a"])
                    after_embed = c.last_fingerprint
                    c.last_fingerprint = None
                    rows = [r async for r in c.embed_stream(["a", "b", "c"], max_in_flight=1)]
                    announced = c.last_fingerprint
                    servicer.streams = 0
                    pinned_rows = [r async for r in c.embed_stream(["a", "b"], max_in_flight=1, fingerprint="fff")]
                    return after_embed, rows, announced, pinned_rows
            after_embed, rows, announced, pinned_rows = asyncio.run(run())
    assert after_embed == "abc123" and announced == "abc123"
    assert len(rows) == 3 and len(pinned_rows) == 2 and not any(isinstance(r, ItemFailure) for r in rows)
    # Two streams a run (the first dies after one answer): the first unpinned, the resent one pinned.
    assert servicer.pins == ["", "abc123", "fff", "fff"]
