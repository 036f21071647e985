"""Search over joint embeddings: the query embedded with qvl's query instruction, candidates
from Weaviate's vector index, then reranked by qvl's reranker on all of each object's fields
(text, images and video together; Weaviate's own rerank reads one text property only).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

from weaviate.classes.query import Filter, MetadataQuery
from weaviate.collections import Collection

from connectors.client import Client, ItemLike
from connectors.weaviate.collections import JOINT_VECTOR, collection_fields, collection_fingerprint
from connectors.weaviate.objects import object_item


class SearchError(Exception):
    """A search failed; the message names the collection and the step."""


_query_instructions: weakref.WeakKeyDictionary[Client, str] = weakref.WeakKeyDictionary()


def query_instruction(qvl: Client) -> str:
    """The service's query instruction (``Info``), fetched once per client."""
    if qvl not in _query_instructions:
        info = qvl.info()
        embed = [m for m in info.models if m.task == "embed"]
        _query_instructions[qvl] = embed[0].query_instruction if embed and embed[0].query_instruction else ""
    return _query_instructions[qvl]


def search(
    collection: Collection,
    query: ItemLike,
    *,
    qvl: Client,
    k: int = 10,
    rerank: bool = True,
    instruction: str | None = None,
    rerank_instruction: str | None = None,
    candidates: int | None = None,
    dimensions: int | None = None,
    fields: Mapping[str, list[str]] | None = None,
    filters: Filter | None = None,
    return_media: bool = False,
) -> list[dict[str, Any]]:
    """The ``k`` best objects for ``query`` (a text or an item dict with "text"/"image"/"video").

    The query is embedded with ``instruction`` (default: the service's query instruction) at
    ``dimensions`` (the value given to ``ingest``); ``candidates`` objects (default 4k) come
    from the ``joint`` vector index; with ``rerank`` qvl scores each against the query and the
    best ``k`` by score are returned. Rows: ``{"uuid", "properties", "distance", "score"}``
    (``score`` None without rerank); media properties only with ``return_media``.
    """
    fields = dict(fields) if fields is not None else collection_fields(collection)
    media = set(fields.get("image", [])) | set(fields.get("video", []))
    pool = max(k, candidates or 4 * k) if rerank else k
    used = instruction if instruction is not None else query_instruction(qvl)
    try:  # pinned: a query vector of another model than the collection's is refused, not compared
        vector = qvl.embed([query], instruction=used or None, dimensions=dimensions,
                           fingerprint=collection_fingerprint(collection))[0]
    except Exception as exc:
        raise SearchError(f"collection {collection.name!r}: embedding the query failed: {exc}") from exc
    try:
        config = collection.config.get()
        names = [p.name for p in config.properties]
        if not (rerank or return_media):
            names = [n for n in names if n not in media]
        found = collection.query.near_vector(
            near_vector=vector.tolist(), target_vector=JOINT_VECTOR, limit=pool, filters=filters,
            return_properties=names, return_metadata=MetadataQuery(distance=True))
    except Exception as exc:
        raise SearchError(f"collection {collection.name!r}: the nearVector query failed: {exc}") from exc

    rows = [{"uuid": str(o.uuid), "properties": dict(o.properties), "distance": o.metadata.distance, "score": None}
            for o in found.objects]
    if rerank and rows:
        docs = [object_item(r["properties"], fields, index=i) for i, r in enumerate(rows)]
        try:
            result = qvl.rerank(query, docs, instruction=rerank_instruction, allow_partial=True)
        except Exception as exc:
            raise SearchError(f"collection {collection.name!r}: reranking {len(docs)} objects failed: {exc}") from exc
        for row, score in zip(rows, result.scores.tolist(), strict=True):
            row["score"] = None if score != score else float(score)  # NaN: that document failed
        rows.sort(key=lambda r: -1.0 if r["score"] is None else r["score"], reverse=True)
    rows = rows[:k]
    if not return_media:
        for row in rows:
            row["properties"] = {n: v for n, v in row["properties"].items() if n not in media}
    return rows

