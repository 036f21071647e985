"""Weaviate with qvl as the model behind its modules, plus joint-embedding ingestion and search.

- ``collections``: ``create_collection`` wires multi2vec-clip / multi2vec-bind /
  text2vec-transformers and reranker-transformers to the service.
- ``ingest`` / ``search``: joint embeddings of all of an object's fields (a named vector); ``ingest``
  with a ``key`` gives each object the id ``object_uuid`` derives from it, so a re-run updates.
- The throwaway local Weaviate server of the tests, benches and demo is ``qvl_devtools.launchers.weaviate``.
"""

from connectors.weaviate.collections import (
    JOINT_VECTOR,
    MODULE_VECTOR,
    CollectionError,
    collection_fields,
    create_collection,
    service_path,
)
from connectors.weaviate.ingest import IngestError, ingest, object_uuid
from connectors.weaviate.search import SearchError, search

__all__ = [
    "JOINT_VECTOR",
    "MODULE_VECTOR",
    "CollectionError",
    "IngestError",
    "SearchError",
    "collection_fields",
    "create_collection",
    "ingest",
    "object_uuid",
    "search",
    "service_path",
]
