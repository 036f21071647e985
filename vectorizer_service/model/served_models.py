"""The models a process serves: the embedder and the reranker, loaded once, each with its fingerprint."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vectorizer_service.core.model_identity import counted_settings, model_fingerprint
from vectorizer_service.core.settings import Settings
from vectorizer_service.model.checkpoint import load_checkpoint
from vectorizer_service.model.checkpoint_digest import DigestCache, default_cache_path, digest_checkpoint
from vectorizer_service.model.embedder import Embedder
from vectorizer_service.model.reranker import Reranker
from vectorizer_service.model.sequence_model import SequenceModel

log = logging.getLogger("qvl.model")


@dataclass
class Models:
    embedder: Embedder | None
    reranker: Reranker | None


def load_models(settings: Settings) -> Models:
    """Load what the settings name; one checkpoint serving both tasks is loaded (and hashed) once."""
    reranker = None
    if settings.reranker_model:
        reranker = Reranker(load_checkpoint(settings.reranker_model, settings, with_score_head=True), settings)
    embedder = None
    if settings.embedding_model:
        embedder = Embedder(load_checkpoint(settings.embedding_model, settings), settings)
    if embedder is None and reranker is None:
        raise ValueError("no model to serve: set an embedding model, a reranker model, or both")
    identify([m for m in (embedder, reranker) if m is not None], settings)
    return Models(embedder=embedder, reranker=reranker)


def identify(models: list[SequenceModel], settings: Settings) -> None:
    """Set each model's fingerprint: its checkpoint's files (hashed after loading, so a hub id's
    files are in the cache) and the settings that change its output."""
    cache = DigestCache(default_cache_path(settings.fingerprint_cache))
    digests: dict[str, str] = {}
    for model in models:
        path = model.ckpt.path
        if path not in digests:
            found = digest_checkpoint(path, cache)
            digests[path] = found.digest
            log.info("checkpoint hashed", extra={"path": path, "digest": found.digest, "files": found.files,
                                                 "hashed_files": found.hashed_files,
                                                 "hashed_bytes": found.hashed_bytes,
                                                 "cached_files": found.cached_files, "seconds": found.seconds,
                                                 "cache": str(cache.path) if cache.path else None})
        model.fingerprint = model_fingerprint(digests[path], settings, model.task)
        log.info("model fingerprint", extra={"task": model.task, "fingerprint": model.fingerprint,
                                             "checkpoint_digest": digests[path],
                                             "settings": counted_settings(settings, model.task)})
    cache.save()
