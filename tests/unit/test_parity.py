"""Parity with the public reference implementation (expectations in tests/fixtures/parity)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vectorizer_service.core.items import item_from_local_json
from vectorizer_service.model.served_models import Models

FIXTURES = Path(__file__).parents[1] / "fixtures"
EMBED = json.loads((FIXTURES / "parity" / "embed.json").read_text())["cases"]
RERANK = json.loads((FIXTURES / "parity" / "rerank.json").read_text())["cases"]


def bound(case: dict) -> float:
    """The fixtures README: cos >= 0.998 for video cases, >= 0.9999 otherwise."""
    return 0.998 if "video" in case["input"] else 0.9999


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


EMBED_IDS = [f"embed{i}-{'+'.join(c['input']) or 'empty'}" for i, c in enumerate(EMBED)]


@pytest.mark.parametrize("case", EMBED, ids=EMBED_IDS)
def test_embedding_item_by_item(models: Models, case: dict) -> None:
    assert models.embedder is not None
    [result] = models.embedder.embed([item_from_local_json(case["input"], str(FIXTURES))])
    got = result.values
    assert got.shape == (64,)
    assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-5
    assert cosine(got, np.array(case["embedding"])) >= bound(case)


def test_embedding_all_in_one_call(models: Models) -> None:
    """Batched with padding and a shared prefix, every case must still meet its bound."""
    assert models.embedder is not None
    results = models.embedder.embed([item_from_local_json(c["input"], str(FIXTURES)) for c in EMBED])
    for case, result in zip(EMBED, results, strict=True):
        assert cosine(result.values, np.array(case["embedding"])) >= bound(case), case["input"]


def test_embedding_video_cases_match_the_reference_token_layout(models: Models) -> None:
    """Our runtime builds transformers 4.57's video layout, so video matches far inside the bound."""
    assert models.embedder is not None
    for case in (c for c in EMBED if "video" in c["input"]):
        [r] = models.embedder.embed([item_from_local_json(case["input"], str(FIXTURES))])
        assert cosine(r.values, np.array(case["embedding"])) >= 0.99999


@pytest.mark.parametrize("case", RERANK, ids=[f"rerank{i}" for i in range(len(RERANK))])
def test_rerank_scores(models: Models, case: dict) -> None:
    assert models.reranker is not None
    inp = case["input"]
    query = item_from_local_json(inp["query"], str(FIXTURES))
    docs = [item_from_local_json(d, str(FIXTURES)) for d in inp["documents"]]
    together = models.reranker.rerank(query, docs, instruction=inp.get("instruction"))
    assert not together.errors
    np.testing.assert_allclose(together.scores, case["scores"], atol=1e-3)
    # one pair at a time gives the same scores
    alone = [models.reranker.rerank(query, [d], instruction=inp.get("instruction")).scores[0] for d in docs]
    np.testing.assert_allclose(alone, case["scores"], atol=1e-3)
    assert together.ranking == sorted(range(len(docs)), key=lambda i: -case["scores"][i])


def test_rerank_all_cases_in_one_batch(models: Models) -> None:
    """Pairs of different queries in one model batch (as the service's batcher makes them)."""
    reranker = models.reranker
    assert reranker is not None
    encoded, expected = [], []
    for case in RERANK:
        inp = case["input"]
        q = reranker.decode_query(item_from_local_json(inp["query"], str(FIXTURES)))
        docs = reranker.decode_documents([item_from_local_json(d, str(FIXTURES)) for d in inp["documents"]])
        encoded += reranker.pairs(q, docs, inp.get("instruction"))
        expected += case["scores"]
    np.testing.assert_allclose(reranker.forward(encoded), expected, atol=1e-3)


def test_a_padded_call_elsewhere_does_not_pad_our_ids(models: Models) -> None:
    """transformers leaves padding on in its shared Rust tokenizer after a padded call."""
    assert models.embedder is not None
    proc = models.embedder.ckpt.processor
    before = models.embedder.embed([item_from_local_json(c["input"], str(FIXTURES)) for c in EMBED])
    proc(text=["a b", "a b c d e f g h"], padding=True, return_tensors="pt")
    after = models.embedder.embed([item_from_local_json(c["input"], str(FIXTURES)) for c in EMBED])
    for x, y in zip(before, after, strict=True):
        assert float(x.values @ y.values) > 0.99999
