"""Moving a collection to a new model without a moment of mixed or missing answers (issue 23).

A collection holds one model's vectors (``create_collection`` pins its fingerprint). To move to
another model (a new revision, the 8B, a fine-tune, other instructions):

1. serve the new model as a second service (the old one keeps answering the live collection);
2. ``create_collection`` a new collection against the new service (it pins the new fingerprint);
3. fill it: ``copy_objects`` from the live collection (qvl's collections keep their media as
   properties, so Weaviate's module embeds them again with the new service), or ``ingest`` again
   from the source data for a joint vector;
4. ``switch_alias``: the alias applications query now names the new collection, in one step;
5. retire the old service and, when nothing reads it any more, the old collection.

Applications query the alias (``client.collections.get(alias)``) throughout; Weaviate resolves it
on each request (collection aliases: Weaviate 1.32+, weaviate-client 4.16+).
"""

from __future__ import annotations

import logging
from typing import Any

import weaviate
from weaviate.collections import Collection

from connectors.weaviate.collections import JOINT_VECTOR, CollectionError
from connectors.weaviate.part_schema import read_layout

log = logging.getLogger("qvl.weaviate.model_moves")


def switch_alias(client: weaviate.WeaviateClient, alias: str, collection: str) -> str | None:
    """Point ``alias`` at ``collection`` (creating the alias if it does not exist yet); returns the
    collection it named before (None: it is new). Queries through the alias move in one step."""
    try:
        if not client.collections.exists(collection):
            raise CollectionError(f"alias {alias!r}: collection {collection!r} does not exist")
        current = client.alias.get(alias_name=alias)
        if current is None:
            client.alias.create(alias_name=alias, target_collection=collection)
            log.info("alias created", extra={"alias": alias, "collection": collection})
            return None
        if current.collection != collection:
            client.alias.update(alias_name=alias, new_target_collection=collection)
            log.info("alias switched", extra={"alias": alias, "collection": collection, "before": current.collection})
        return current.collection
    except CollectionError:
        raise
    except Exception as exc:  # weaviate-client raises several unrelated types
        raise CollectionError(f"pointing alias {alias!r} at collection {collection!r} failed: {exc}") from exc


def copy_objects(source: Collection, target: Collection, *, batch_size: int = 64) -> dict[str, Any]:
    """Insert every object of ``source`` into ``target`` with its id and properties: the target's module
    embeds each one again with the target's service. Returns ``{"copied", "failed": [{"uuid", "error"}]}``.

    A target with a ``joint`` vector, or of parts (``create_collection(..., chunking=...)``: they hold no
    copy of their PDF or video), needs ``ingest`` instead (qvl computes those vectors, not Weaviate)."""
    config = target.config.get()
    if JOINT_VECTOR in {v for v in (config.vector_config or {})}:
        raise CollectionError(f"collection {target.name!r} has a joint vector: fill it with ingest(...) from the "
                              "new service, not copy_objects")
    if read_layout({p.name: p.description or "" for p in config.properties}) is not None:
        raise CollectionError(f"collection {target.name!r} holds parts of sources: fill it with "
                              "ingest(..., chunking=...) from the sources and the new service, not copy_objects")
    names = [p.name for p in source.config.get().properties]  # named, so that blobs (the media) come too
    copied = 0
    try:
        with target.batch.fixed_size(batch_size=batch_size, concurrent_requests=2) as batch:
            for obj in source.iterator(include_vector=False, return_properties=names):
                batch.add_object(properties=dict(obj.properties), uuid=obj.uuid)
                copied += 1
    except Exception as exc:
        raise CollectionError(f"copying {source.name!r} into {target.name!r} failed after {copied} objects: "
                              f"{exc}") from exc
    failed = [{"uuid": str(f.original_uuid), "error": f.message} for f in target.batch.failed_objects]
    log.info("objects copied", extra={"source": source.name, "target": target.name, "copied": copied - len(failed),
                                      "failed": len(failed)})
    return {"copied": copied - len(failed), "failed": failed}
