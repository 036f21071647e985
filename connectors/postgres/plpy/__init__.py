"""qvl's PL/Python library: what the PL/Python functions of schema ``qvl`` run inside the database.

It runs in the database server's own Python (PL/Python, ``plpython3u``), not in the project's
environment, so it uses the standard library only and reaches the model service over its HTTP JSON
API (docs/api.md). One module per concern:

- ``spi``: the ``plpy`` handle and prepared statements; ``errors``: service errors into SQL errors
  with hints; ``addresses``, ``wire``, ``transport``: the HTTP exchange (replicas, deadlines,
  cancellation, TLS); ``service``: calls through ``qvl._call`` and ``/v1/info``;
- ``items``, ``embedding``, ``reranking``, ``query_vectors``, ``models``: items from column values, vectors,
  scores; ``vectorizers``, ``triggers``: the catalog row, the sync trigger;
- ``filters``, ``filter_text``, ``filter_structured``: the caller's filter, checked;
  ``candidates``, ``search``: ``qvl.search``, ``qvl.rerank_rows``' rows, ``qvl.hybrid_search``;
  ``chunk_search``: ``qvl.search_chunks`` and ``qvl.search`` over a chunked vectorizer's chunks;
- ``shadows``: what a blue/green shadow's service serves.

How it gets there: ``qvl pg install`` bundles these files into one text, the body of ``qvl._load()``
(connectors/postgres/plpy_bundle.py), which imports them as a package named after the bundle's hash
(connectors/postgres/plpy_importer.py) and keeps this package in ``GD`` under that name. Each
PL/Python function starts with a prologue that takes it from ``GD``, calling ``qvl._load()`` first
when this backend has not loaded this bundle. The names below are what the SQL functions call.
"""

from __future__ import annotations

from .addresses import check_service_sql
from .chunk_search import search_chunks_rows
from .embedding import embed_sql
from .filters import structured
from .items import image_item, text_item
from .query_vectors import query_embedding_sql
from .reranking import rerank_rows_sql, rerank_sql
from .search import hybrid_rows, search_rows
from .service import service_info_sql
from .shadows import service_info_at_sql
from .spi import bind
from .transport import send
from .triggers import sync_row

__all__ = ["bind", "check_service_sql", "embed_sql", "hybrid_rows", "image_item", "query_embedding_sql",
           "rerank_rows_sql", "rerank_sql", "search_chunks_rows", "search_rows", "send", "service_info_at_sql",
           "service_info_sql",
           "structured", "sync_row", "text_item"]
