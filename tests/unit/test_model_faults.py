"""Numeric faults and a failing model: a non-finite row is its item's error (never a vector), and a
model process that fails every batch is reported not alive (the liveness probe restarts it).

A GPU fault cannot be produced on this machine: the model's forward is wrapped to return NaN for
one row, or to raise, which is what such a fault looks like to the code above it."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import numpy as np
import pytest

from vectorizer_service.core.errors import ComputeError
from vectorizer_service.core.items import Item
from vectorizer_service.core.pipe_framing import encode, receive
from vectorizer_service.core.pipe_messages import BatchStats, EmbedCall, Rows
from vectorizer_service.core.settings import Settings
from vectorizer_service.core.vector_encoding import EncodedVector
from vectorizer_service.engine.model_process import ModelProcess, ServedTasks
from vectorizer_service.model.served_models import Models
from vectorizer_service.server import MODEL_PROCESS
from vectorizer_service.serving.dispatcher import Dispatcher


def test_a_non_finite_row_is_its_items_error(models: Models, monkeypatch: pytest.MonkeyPatch) -> None:
    assert models.embedder is not None and models.reranker is not None
    embed_forward, rerank_forward = models.embedder.forward, models.reranker.forward

    def nan_embed(batch: Any) -> list[np.ndarray]:
        rows = embed_forward(batch)
        return [r * np.nan if i == 1 else r for i, r in enumerate(rows)]

    def nan_rerank(batch: Any) -> list[float]:
        return [float("nan") if i == 0 else s for i, s in enumerate(rerank_forward(batch))]

    monkeypatch.setattr(models.embedder, "forward", nan_embed)
    monkeypatch.setattr(models.reranker, "forward", nan_rerank)
    out = models.embedder.embed([Item(texts=[t]) for t in ("a", "b", "c")])
    assert isinstance(out[0], EncodedVector) and isinstance(out[2], EncodedVector)
    assert isinstance(out[1], ComputeError) and "non-finite" in str(out[1])
    result = models.reranker.rerank(Item(texts=["q"]), [Item(texts=["d"])])
    assert isinstance(result.errors[0], ComputeError)


def test_batch_statistics_count_the_failures(models: Models, tiny_settings: Settings,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert models.embedder is not None

    def wedged(batch: Any) -> list[np.ndarray]:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(models.embedder, "forward", wedged)
    mine, theirs = socket.socketpair()
    process = ModelProcess(ServedTasks(models.embedder, models.reranker), tiny_settings, theirs)
    thread = threading.Thread(target=process.serve, daemon=True)
    thread.start()
    try:
        ids = [[5, 6, 7], [5, 6, 8]]
        mine.sendall(encode([EmbedCall(1, time.monotonic() + 30, None, list(enumerate(ids)))]))
        mine.settimeout(30)
        stats: list[BatchStats] = []
        while sum(s.size for s in stats) < 2:
            message = receive(mine)
            if isinstance(message, Rows) and message.stats is not None:
                stats.append(message.stats)
        assert sum(s.failed for s in stats) == 2
    finally:
        mine.close()
        thread.join(timeout=10)
        theirs.close()


def test_a_model_that_fails_every_batch_is_not_alive(tiny_settings: Settings) -> None:
    dispatcher = Dispatcher(tiny_settings, MODEL_PROCESS)
    dispatcher.link.alive = True  # as after a start; this test feeds the link's statistics itself
    failing = BatchStats(task="embed", depth={}, prepared_bytes=0, size=4, failed=4)
    for _ in range(tiny_settings.live_max_failing_batches - 1):
        dispatcher._batch_done(failing)
    assert dispatcher.alive
    dispatcher._batch_done(BatchStats(task="embed", depth={}, prepared_bytes=0, size=4, failed=1))
    for _ in range(tiny_settings.live_max_failing_batches - 1):
        dispatcher._batch_done(failing)
    assert dispatcher.alive  # one good row in between: a bad input, not a dead model
    dispatcher._batch_done(failing)
    assert not dispatcher.alive
