"""Weaviate with qvl as the model behind its modules, plus joint-embedding ingestion and search.

- ``collections``: ``create_collection`` wires Weaviate's per-collection API modules
  (multi2vec-voyageai, text2vec-openai, reranker-cohere by default; multi2vec-jinaai, -cohere,
  -nvidia) or its local ones (multi2vec-clip / -bind, text2vec-transformers,
  reranker-transformers) to the service; ``api_key_headers`` gives a client qvl's token.
- every collection is pinned to the embedding model it was built with (``collection_fingerprint``,
  ``service_fingerprint``); ``model_moves``: ``copy_objects`` into a collection of the new model, then
  ``switch_alias``: moving to a new model with no mixed answers and no downtime.
- ``ingest`` / ``search``: joint embeddings of all of an object's fields (a named vector); ``ingest``
  with a ``key`` gives each object the id ``object_uuid`` derives from it, so a re-run updates.
- ``ingest(..., chunking=...)`` into a collection made with ``create_collection(..., chunking=...)``
  (``part_schema``, ``part_ingest``): one object per PDF page, video window or text passage, its id
  ``part_uuid(collection, key, chunk_seq)``, its locator as properties; a source's stale parts removed.
- The throwaway local Weaviate server of the tests, benches and demo is ``qvl_devtools.launchers.weaviate``.
"""

from connectors.weaviate.collections import (
    API_MODULES,
    JOINT_VECTOR,
    LOCAL_MODULES,
    MODULE_VECTOR,
    CollectionError,
    api_key_headers,
    collection_fields,
    collection_fingerprint,
    create_collection,
    default_module,
    module_base_url,
    service_fingerprint,
    service_path,
)
from connectors.weaviate.ingest import IngestError, ingest, object_uuid
from connectors.weaviate.model_moves import copy_objects, switch_alias
from connectors.weaviate.part_schema import part_uuid
from connectors.weaviate.search import SearchError, search

__all__ = [
    "API_MODULES",
    "JOINT_VECTOR",
    "LOCAL_MODULES",
    "MODULE_VECTOR",
    "CollectionError",
    "IngestError",
    "SearchError",
    "api_key_headers",
    "collection_fields",
    "collection_fingerprint",
    "copy_objects",
    "create_collection",
    "default_module",
    "ingest",
    "module_base_url",
    "object_uuid",
    "part_uuid",
    "search",
    "service_fingerprint",
    "service_path",
    "switch_alias",
]
