"""Documents in the model process: their bytes read within ``QVL_MAX_DOCUMENT_BYTES``, their page
count and pages from the renderer processes, under one deadline per document."""

from __future__ import annotations

import threading
from typing import Any

from PIL import Image

from vectorizer_service.core.errors import InputError
from vectorizer_service.core.parts import SourceFacts
from vectorizer_service.core.settings import Settings
from vectorizer_service.model.decode_budget import RequestDocuments
from vectorizer_service.model.media import read_source
from vectorizer_service.model.renderer_pool import JobTime, RendererPool


def read_document(src: Any, settings: Settings, what: str) -> bytes:
    """The document's bytes; past ``QVL_MAX_DOCUMENT_BYTES`` refused before it is read whole."""
    if isinstance(src, bytes | bytearray | memoryview):
        data = bytes(src)
        if len(data) > settings.max_document_bytes:
            raise InputError(f"{what} is {len(data)} bytes, over the limit of {settings.max_document_bytes}",
                             status=413, limit="QVL_MAX_DOCUMENT_BYTES")
        if not data:
            raise InputError(f"{what} is empty (0 bytes)")
        return data
    # Paths and URIs go through the media reader, with the document's own size limit.
    limited = settings.model_copy(update={"max_media_bytes": settings.max_document_bytes})
    try:
        return read_source(src, limited, what)
    except InputError as exc:
        if exc.limit != "QVL_MAX_MEDIA_BYTES":
            raise
        raise InputError(exc.reason, status=413, limit="QVL_MAX_DOCUMENT_BYTES") from None


class Documents:
    """Page counts and pages of documents, drawn by the renderer pool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool = RendererPool(settings)

    def facts(self, source: Any, books: RequestDocuments, what: str) -> SourceFacts:
        data, digest = books.data(source, lambda: read_document(source, self.settings, what))
        job = JobTime(books.left(source), books.call_ends)
        try:
            return SourceFacts(pages=self.pool.count_pages(data, digest, job, what))
        finally:
            books.charge(source, job.used)

    def pages(self, source: Any, numbers: list[int], books: RequestDocuments,
              what: str) -> list[Image.Image | InputError]:
        data, digest = books.data(source, lambda: read_document(source, self.settings, what))
        job = JobTime(books.left(source), books.call_ends)
        try:
            return self.pool.render(data, digest, numbers, job, what)
        finally:
            books.charge(source, job.used)

    def close(self) -> None:
        self.pool.close()


_shared: Documents | None = None
_shared_lock = threading.Lock()


def shared_documents(settings: Settings) -> Documents:
    """The process's renderer pool, shared by the embedder and the reranker (started lazily: a
    service that never sees a document starts no renderer)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Documents(settings)
        return _shared
