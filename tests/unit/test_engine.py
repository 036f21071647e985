"""The model process (``engine``), driven over a real socket pair in this process: rows land at
their request indices, errors stay per item or fail the request, and its books balance after
every outcome (a leaked 'preparing' count would make every later batch wait)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.media_factory import image_bytes
from vectorizer_service.core.errors import CancelledError, InputError
from vectorizer_service.core.items import Item
from vectorizer_service.core.pipe_framing import encode, receive
from vectorizer_service.core.pipe_messages import Cancel, EmbedCall, Fail, RerankCall, Rows, ToModelProcess
from vectorizer_service.core.settings import Settings
from vectorizer_service.engine.model_process import ModelProcess, ServedTasks
from vectorizer_service.model.served_models import Models


class Pipe:
    def __init__(self, process: ModelProcess, sock: socket.socket) -> None:
        self.process, self.sock = process, sock

    def send(self, *messages: ToModelProcess) -> None:
        self.sock.sendall(encode(list(messages)))

    def rows(self, rid: int, count: int, timeout: float = 30) -> dict[int, Any]:
        """The rows of request ``rid`` (or its whole-request failure under key -1)."""
        self.sock.settimeout(timeout)
        got: dict[int, Any] = {}
        while len(got) < count:
            match receive(self.sock):
                case Fail(rid=failed, error=error) if failed == rid:
                    return {-1: error}
                case Rows(rows=rows):
                    got.update({index: value for r, index, value in rows if r == rid})
        return got

    def settled(self) -> None:
        deadline = time.monotonic() + 5
        batcher = self.process.batcher
        while time.monotonic() < deadline and (batcher.books.requests or batcher.books.preparing):
            time.sleep(0.01)
        assert batcher.books.requests == {} and batcher.books.preparing == 0 and batcher.prepared_bytes == 0


def _pipe(models: Models, settings: Settings) -> Iterator[Pipe]:
    mine, theirs = socket.socketpair()
    process = ModelProcess(ServedTasks(models.embedder, models.reranker), settings, theirs)
    thread = threading.Thread(target=process.serve, daemon=True)
    thread.start()
    yield Pipe(process, mine)
    mine.close()
    thread.join(timeout=10)
    theirs.close()


@pytest.fixture
def pipe(models: Models, tiny_settings: Settings) -> Iterator[Pipe]:
    yield from _pipe(models, tiny_settings)


def test_prepared_ids_and_raw_items_answer_at_their_indices(pipe: Pipe, models: Models) -> None:
    assert models.embedder is not None
    items = [Item(texts=["a caption"]), Item(images=[image_bytes("PNG", (64, 48))]), Item(images=[b"not an image"])]
    [ids] = [e.input_ids for e in models.embedder.prepare(items[:1])]  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    pipe.send(EmbedCall(7, deadline, None, [(0, ids), (1, items[1]), (2, items[2])]))
    rows = pipe.rows(7, 3)
    expected = models.embedder.embed(items[:2])
    for i in (0, 1):
        vec = rows[i] / np.linalg.norm(rows[i])
        assert float(vec @ expected[i].values) > 0.99999  # type: ignore[union-attr]
    assert isinstance(rows[2], InputError) and rows[2].item == 2
    pipe.settled()


def test_a_bad_rerank_query_fails_the_request_and_leaves_nothing_behind(pipe: Pipe) -> None:
    pipe.send(RerankCall(8, time.monotonic() + 30, Item(images=[b"broken"]), [Item(texts=["a"])] * 3, None))
    failure = pipe.rows(8, 3)[-1]
    assert isinstance(failure, InputError) and "query" in str(failure)
    pipe.settled()
    pipe.send(RerankCall(9, time.monotonic() + 30, Item(texts=["q"]), [Item(texts=["a"]), Item(texts=["b"])], None))
    scores = pipe.rows(9, 2)
    assert all(0.0 < scores[i] < 1.0 for i in (0, 1))
    pipe.settled()


def test_cancelled_work_is_answered_not_computed(models: Models, tiny_settings: Settings) -> None:
    slow = tiny_settings.model_copy(update={"min_wait_ms": 1500.0})  # batches wait for company
    for pipe in _pipe(models, slow):
        pipe.send(EmbedCall(11, time.monotonic() + 30, None, [(0, Item(texts=["never mind"]))]))
        time.sleep(0.3)
        pipe.send(Cancel(11))
        rows = pipe.rows(11, 1)
        assert isinstance(rows[0], CancelledError)
        pipe.settled()


def test_an_unexpected_preparation_failure_fails_its_item_not_the_request(
        pipe: Pipe, models: Models, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug met while preparing one item is that item's INTERNAL error (no retry hint for the
    whole request: UNAVAILABLE would have every client retry an input that fails every time)."""
    from vectorizer_service.core.errors import ComputeError

    assert models.embedder is not None and models.reranker is not None
    for pre in (models.embedder.pre, models.reranker.pre):
        decode = pre.decode

        def exploding(item: Item, budget: Any = None, decode: Any = decode) -> Any:
            if "boom" in item.texts:
                raise RuntimeError("boom")
            return decode(item, budget)

        monkeypatch.setattr(pre, "decode", exploding)
    image = image_bytes("PNG", (64, 48))
    items = [Item(texts=["fine"], images=[image]), Item(texts=["boom"], images=[image]), Item(images=[image])]
    pipe.send(EmbedCall(21, time.monotonic() + 30, None, list(enumerate(items))))
    rows = pipe.rows(21, 3)
    assert -1 not in rows, rows
    assert isinstance(rows[1], ComputeError) and rows[1].item_level and "boom" in str(rows[1])
    assert isinstance(rows[0], np.ndarray) and isinstance(rows[2], np.ndarray)
    pipe.settled()

    docs = [Item(texts=["a"]), Item(texts=["boom"]), Item(texts=["b"])]
    pipe.send(RerankCall(22, time.monotonic() + 30, Item(texts=["q"]), docs, None))
    scores = pipe.rows(22, 3)
    assert isinstance(scores[1], ComputeError) and 0.0 < scores[0] < 1.0 and 0.0 < scores[2] < 1.0
    pipe.settled()
    pipe.send(RerankCall(23, time.monotonic() + 30, Item(texts=["boom"]), docs[:1], None))
    failure = pipe.rows(23, 1)[-1]
    assert isinstance(failure, ComputeError) and "query" in str(failure)
    pipe.settled()


def test_unreadable_uris_are_input_errors(models: Models, tiny_settings: Settings, tmp_path: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Allowed schemes and roots, but names no file system or HTTP request can take."""
    from vectorizer_service.api.item_codecs import UriSource

    assert models.embedder is not None
    allowed = tiny_settings.model_copy(update={"allow_uri_schemes": ["file", "http"],
                                               "allow_uri_roots": [str(tmp_path), "http://127.0.0.1:1/"],
                                               "allow_uri_private_addresses": True})  # loopback: reach the fetch
    monkeypatch.setattr(models.embedder.pre, "settings", allowed)
    uris = [f"file://{tmp_path}/a\x00b.png", f"{tmp_path}/\ud800.png", "http://127.0.0.1:1/a b.png",
            "http://127.0.0.1:1/\ud800.png"]
    for pipe in _pipe(models, allowed):
        items = [Item(images=[UriSource(u)]) for u in uris]  # type: ignore[list-item]
        pipe.send(EmbedCall(31, time.monotonic() + 30, None, list(enumerate(items))))
        rows = pipe.rows(31, len(uris))
        assert -1 not in rows, rows
        for i in range(len(uris)):
            assert isinstance(rows[i], InputError) and rows[i].item == i, rows[i]
            assert "cannot read" in str(rows[i]) or "cannot fetch" in str(rows[i]), rows[i]
        pipe.settled()
