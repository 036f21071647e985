"""Rerank results: scores in document order, errors in place, and the ranking (no torch here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from vectorizer_service.core.errors import InputError, QvlError
from vectorizer_service.core.settings import Settings


@dataclass
class RerankResult:
    """Scores in document order (None where that document failed) and the ranking, best first."""

    scores: list[float | None]
    ranking: list[int]
    errors: dict[int, QvlError] = field(default_factory=dict)


def rank(scores: Sequence[float | None], top_k: int | None) -> list[int]:
    order = sorted((i for i, s in enumerate(scores) if s is not None),
                   key=lambda i: (-(scores[i] or 0.0), i))
    return order[:top_k] if top_k is not None else order


def result_from_rows(rows: Sequence[float | QvlError], top_k: int | None) -> RerankResult:
    scores = [None if isinstance(r, QvlError) else float(r) for r in rows]
    errors = {i: r for i, r in enumerate(rows) if isinstance(r, QvlError)}
    return RerankResult(scores=scores, ranking=rank(scores, top_k), errors=errors)


def check_rerank_request(n_documents: int, top_k: int | None, settings: Settings) -> None:
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    if n_documents > settings.max_rerank_documents:
        raise InputError(f"{n_documents} documents, over the limit of {settings.max_rerank_documents}", status=413,
                         limit="QVL_MAX_RERANK_DOCUMENTS")
