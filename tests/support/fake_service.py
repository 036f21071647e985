"""A gRPC Vectorizer that answers as a test tells it: vectors, per-item errors, refused streams, NaNs, wrong
sizes, delays.

The worker tests use it to produce what the real service does only on a bad day (a model process
that dies on one row, a wedged GPU, a malformed answer) and to count how often each row is sent.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from qvl_proto import vectorizer_pb2 as pb
from qvl_proto import vectorizer_pb2_grpc as pb_grpc

# What ``behave(text)`` returns for one item: None (a good vector), a vector, or (code, message).
Answer = np.ndarray | tuple[str, str] | None


def good_vector(text: str, dimensions: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    v = np.random.default_rng(seed).standard_normal(dimensions).astype(np.float32)
    return v / np.linalg.norm(v)


def item_text(item: pb.Item) -> str:
    return " ".join(p.text for p in item.parts if p.WhichOneof("kind") == "text")


@dataclass
class FakeVectorizer(pb_grpc.VectorizerServicer):
    hidden_size: int = 64
    behave: Callable[[str], Answer] = lambda text: None
    delay_s: float = 0.0  # before each answer
    # (code, message) ends the whole stream with that status when this item arrives (None: it does not)
    refuse: Callable[[str], tuple[str, str] | None] = lambda text: None
    seen: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, item text) per item received
    fingerprint: str = ""  # announced in each stream's metadata, as the real service does ("": none, an old one)
    streams: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, text: str) -> list[float]:
        with self.lock:
            return [t for t, x in self.seen if x == text]

    def Info(self, request: pb.InfoRequest, context: Any) -> pb.InfoResponse:
        return pb.InfoResponse(models=[pb.ModelInfo(task="embed", name="fake", hidden_size=self.hidden_size,
                                                    fingerprint=self.fingerprint)],
                               limits=pb.Limits(max_request_bytes=64 << 20))

    def EmbedStream(self, request_iterator: Iterator[pb.EmbedStreamRequest], context: Any
                    ) -> Iterator[pb.EmbedStreamResult]:
        with self.lock:
            self.streams += 1
        if self.fingerprint:
            context.send_initial_metadata((("qvl-model-fingerprint", self.fingerprint),))
        dimensions, pinned = self.hidden_size, ""
        for req in request_iterator:
            if req.HasField("options") and req.options.HasField("dimensions"):
                dimensions = req.options.dimensions
            if req.HasField("options") and req.options.HasField("fingerprint"):
                pinned = req.options.fingerprint
            text = item_text(req.item)
            with self.lock:
                self.seen.append((time.monotonic(), text))
            if (refusal := self.refuse(text)) is not None:
                context.abort(getattr(grpc.StatusCode, refusal[0]), refusal[1])
            if self.delay_s:
                time.sleep(self.delay_s)
            if self.fingerprint and pinned and pinned != self.fingerprint:  # as the real service refuses a pin
                yield pb.EmbedStreamResult(seq=req.seq, error=pb.ItemError(
                    index=req.seq, code="FAILED_PRECONDITION", reason=pb.MODEL_MISMATCH,
                    message=f"the request pins model fingerprint {pinned}, but this service has {self.fingerprint}"))
                continue
            out = self.behave(text)
            if isinstance(out, tuple):
                code, message = out
                yield pb.EmbedStreamResult(seq=req.seq, error=pb.ItemError(index=req.seq, message=message, code=code))
                continue
            values = good_vector(text, dimensions) if out is None else out
            yield pb.EmbedStreamResult(seq=req.seq, embedding=pb.Embedding(values=[float(x) for x in values],
                                                                           dimensions=len(values)))


class FakeService:
    """The fake on a free port of 127.0.0.1 (``target`` for the worker's --service)."""

    def __init__(self, fake: FakeVectorizer | None = None) -> None:
        self.fake = fake or FakeVectorizer()
        # The kernel picks the port as it binds (no race), and without SO_REUSEPORT, which gRPC sets
        # by default and which lets a second server bind the same port and share its calls.
        self.server = grpc.server(futures.ThreadPoolExecutor(16), options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_VectorizerServicer_to_server(self.fake, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> FakeService:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0)
