"""The shared-prefix forward pass gives the plain forward pass's results."""

from __future__ import annotations

import numpy as np

from tests.media_factory import image_bytes
from vectorizer_service.core.items import Item
from vectorizer_service.core.settings import Settings
from vectorizer_service.model.prefix_sharing import shared_prefix, vision_spans
from vectorizer_service.model.reranker import Reranker
from vectorizer_service.model.served_models import Models


def _plain(models: Models, settings: Settings) -> Reranker:
    assert models.reranker is not None
    return Reranker(models.reranker.ckpt, settings.model_copy(update={"share_prefix": False}))


def test_rerank_with_and_without_prefix_sharing_agree(models: Models, tiny_settings: Settings) -> None:
    shared = models.reranker
    assert shared is not None
    query = Item(images=[image_bytes("PNG", (96, 64), seed=1)], texts=["a picture of noise"])
    # Two image documents of the same size: same tokens, different pixels. They must not be shared.
    docs = [Item(images=[image_bytes("PNG", (64, 64), seed=s)]) for s in (2, 3)]
    docs += [Item(texts=["some words here"]), Item(texts=["other words"], images=[image_bytes("JPEG", (40, 80))])]
    a = shared.rerank(query, docs).scores
    b = _plain(models, tiny_settings).rerank(query, docs).scores
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert abs(a[0] - a[1]) > 1e-6  # different pixels give different scores


def test_prefix_stops_before_media_that_differ(models: Models) -> None:
    r = models.reranker
    assert r is not None
    q = r.decode_query(Item(texts=["q"]))
    docs = r.decode_documents([Item(images=[image_bytes("PNG", (64, 64), seed=s)]) for s in (2, 3)])
    batch = r.pairs(q, docs, None)
    proc = r.ckpt.processor
    spans = [vision_spans(e, proc.image_token_id, proc.video_token_id, 4) for e in batch]
    n = shared_prefix(batch, spans)  # type: ignore[arg-type]
    assert n <= spans[0][0].start
    # token ids agree further than that (same image size), which is exactly why identity is checked
    assert batch[0].input_ids[: spans[0][0].end] == batch[1].input_ids[: spans[0][0].end]  # type: ignore[union-attr]


def test_embedding_batch_with_and_without_sharing(models: Models, tiny_settings: Settings) -> None:
    from vectorizer_service.model.embedder import Embedder

    assert models.embedder is not None
    plain = Embedder(models.embedder.ckpt, tiny_settings.model_copy(update={"share_prefix": False}))
    items = [Item(texts=[f"text number {i} " * (i + 1)]) for i in range(6)] + [Item(images=[image_bytes()])]
    for x, y in zip(models.embedder.embed(items), plain.embed(items), strict=True):
        assert float(x.values @ y.values) > 0.99999  # type: ignore[union-attr]
