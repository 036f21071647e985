"""The models a process serves: the embedder and the reranker, loaded once."""

from __future__ import annotations

from dataclasses import dataclass

from vectorizer_service.core.settings import Settings
from vectorizer_service.model.checkpoint import load_checkpoint
from vectorizer_service.model.embedder import Embedder
from vectorizer_service.model.reranker import Reranker


@dataclass
class Models:
    embedder: Embedder | None
    reranker: Reranker | None


def load_models(settings: Settings) -> Models:
    """Load what the settings name; one checkpoint serving both tasks is loaded once."""
    reranker = None
    if settings.reranker_model:
        reranker = Reranker(load_checkpoint(settings.reranker_model, settings, with_score_head=True), settings)
    embedder = None
    if settings.embedding_model:
        embedder = Embedder(load_checkpoint(settings.embedding_model, settings), settings)
    if embedder is None and reranker is None:
        raise ValueError("no model to serve: set an embedding model, a reranker model, or both")
    return Models(embedder=embedder, reranker=reranker)
