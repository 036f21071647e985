"""Weaviate collections whose vectors come from qvl through Weaviate's own modules.

One call picks the module from the fields: ``multi2vec-bind`` when there is a video field
(the only module with nearVideo), ``multi2vec-clip`` when there is an image field,
``text2vec-transformers`` for text only (the one module that tells queries from passages).
``reranker-transformers`` serves ``rerank`` on any of them. A self-provided ``joint`` vector
can sit beside the module's ``fields`` vector for joint embeddings (see ``ingest``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import weaviate
from weaviate.classes.config import Configure, DataType, Multi2VecField, Property, VectorDistances
from weaviate.collections import Collection

MODULE_VECTOR = "fields"  # Weaviate's module: each field embedded apart, then averaged
JOINT_VECTOR = "joint"  # qvl's joint embedding of all fields as one item, supplied by ``ingest``
ROLE_PREFIX = "qvl:"  # property descriptions record each field's role ("qvl:image")
ROLES = ("text", "image", "video")


class CollectionError(Exception):
    """A collection could not be created or read; the message names it."""


def service_path(service_url: str, *, profile: str | None = None, dimensions: int | None = None) -> str:
    """The service URL that selects a profile (``/profiles/{name}``) or a Matryoshka size (``/dim/{d}``)."""
    url = service_url.rstrip("/")
    if profile and dimensions:
        raise ValueError("give a profile or dimensions, not both (a profile carries its own dimensions)")
    if profile:
        return f"{url}/profiles/{quote(profile, safe='')}"
    if dimensions:
        if dimensions < 1:
            raise ValueError(f"dimensions must be positive, got {dimensions}")
        return f"{url}/dim/{int(dimensions)}"
    return url


def _check_fields(name: str, roles: Mapping[str, Sequence[str]]) -> None:
    seen: dict[str, str] = {}
    for role, fields in roles.items():
        for field in fields:
            if not field or not isinstance(field, str):
                raise ValueError(f"collection {name!r}: empty or non-string {role} field name {field!r}")
            if field in seen:
                raise ValueError(f"collection {name!r}: field {field!r} is both a {seen[field]} and a {role} field")
            seen[field] = role


def _weighted(fields: Sequence[str], weights: Mapping[str, float] | None) -> list[Multi2VecField] | list[str]:
    # Weaviate pairs weights with vectors by position, and it orders the vectors by property
    # name: fields listed in another order would get each other's weights. Sorting avoids it.
    ordered = sorted(fields)
    if not weights:
        return ordered
    return [Multi2VecField(name=f, weight=float(weights.get(f, 1.0))) for f in ordered]


def create_collection(
    client: weaviate.WeaviateClient,
    name: str,
    *,
    text_fields: Sequence[str] = (),
    image_fields: Sequence[str] = (),
    video_fields: Sequence[str] = (),
    service_url: str,
    profile: str | None = None,
    dimensions: int | None = None,
    rerank: bool = True,
    weights: Mapping[str, float] | None = None,
    module_vector: bool = True,
    joint_vector: bool = False,
    properties: Sequence[Property] = (),
    replace: bool = False,
    replication_factor: int = 1,
) -> dict[str, Any]:
    """Create collection ``name`` wired to the qvl service at ``service_url`` (its HTTP URL).

    Text fields become ``text`` properties, image and video fields ``blob`` properties (base64).
    ``profile`` / ``dimensions`` reach the service through the collection's ``inferenceUrl``
    (clip, text2vec-transformers); multi2vec-bind has no per-collection URL, so a video
    collection uses whatever ``BIND_INFERENCE_API`` points at. ``weights`` maps field names
    to weights of Weaviate's per-field average (missing fields weigh 1). ``properties`` adds
    plain properties that no module reads. ``replication_factor`` > 1 keeps that many copies of
    each shard on a cluster's nodes (Weaviate's async replication brings a node that was down up
    to date by itself). Returns a description of what was created.
    """
    if replication_factor < 1:
        raise ValueError(f"collection {name!r}: replication_factor must be at least 1")
    roles = {"text": list(text_fields), "image": list(image_fields), "video": list(video_fields)}
    _check_fields(name, roles)
    if weights:
        unknown = set(weights) - {f for fs in roles.values() for f in fs}
        if unknown:
            raise ValueError(f"collection {name!r}: weights name unknown fields {sorted(unknown)}")
    if not (module_vector or joint_vector):
        raise ValueError(f"collection {name!r}: needs the module vector, the joint vector or both")
    if module_vector and not any(roles.values()):
        raise ValueError(f"collection {name!r}: the module vector needs at least one text, image or video field")

    inference_url = service_path(service_url, profile=profile, dimensions=dimensions)
    vector_config = []
    module: str | None = None
    index = Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
    if module_vector:
        if video_fields:
            if profile or dimensions:
                raise ValueError(
                    f"collection {name!r}: multi2vec-bind (video) has no per-collection inferenceUrl; "
                    "point BIND_INFERENCE_API at .../profiles/NAME instead of passing profile/dimensions")
            module = "multi2vec-bind"
            vector_config.append(Configure.Vectors.multi2vec_bind(
                name=MODULE_VECTOR, vector_index_config=index,
                text_fields=_weighted(text_fields, weights) or None,
                image_fields=_weighted(image_fields, weights) or None,
                video_fields=_weighted(video_fields, weights)))
        elif image_fields:
            module = "multi2vec-clip"
            vector_config.append(Configure.Vectors.multi2vec_clip(
                name=MODULE_VECTOR, vector_index_config=index, inference_url=inference_url,
                text_fields=_weighted(text_fields, weights) or None,
                image_fields=_weighted(image_fields, weights)))
        else:
            module = "text2vec-transformers"
            # One URL for passages and queries: the service picks the instruction by task_type.
            # The class name is left out so that the stored vector is the text's own embedding.
            vector_config.append(Configure.Vectors.text2vec_transformers(
                name=MODULE_VECTOR, vector_index_config=index,
                inference_url=service_path(service_url, profile=profile), dimensions=dimensions,
                source_properties=sorted(text_fields), vectorize_collection_name=False))
    if joint_vector:
        vector_config.append(Configure.Vectors.self_provided(
            name=JOINT_VECTOR, vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)))

    props = [Property(name=f, data_type=DataType.TEXT, description=f"{ROLE_PREFIX}text") for f in text_fields]
    # Nobody filters on base64 media: indexing it only costs insert time and disk.
    props += [Property(name=f, data_type=DataType.BLOB, description=f"{ROLE_PREFIX}{role}", index_filterable=False)
              for role, fields in (("image", image_fields), ("video", video_fields)) for f in fields]
    props += list(properties)

    try:
        if client.collections.exists(name):
            if not replace:
                raise CollectionError(f"collection {name!r} already exists (pass replace=True to recreate it)")
            client.collections.delete(name)
        client.collections.create(
            name,
            properties=props,
            vector_config=vector_config,
            reranker_config=Configure.Reranker.transformers() if rerank else None,
            # Weaviate >= 1.38 runs async replication for every factor > 1 by itself.
            replication_config=Configure.replication(factor=replication_factor) if replication_factor > 1 else None,
        )
    except CollectionError:
        raise
    except Exception as exc:  # weaviate-client raises several unrelated types
        raise CollectionError(f"creating collection {name!r} failed: {exc}") from exc
    return {
        "name": name,
        "module": module,
        "inference_url": inference_url if module in ("multi2vec-clip", "text2vec-transformers") else None,
        "text_fields": sorted(text_fields),
        "image_fields": sorted(image_fields),
        "video_fields": sorted(video_fields),
        "vectors": [v for v, on in ((MODULE_VECTOR, module_vector), (JOINT_VECTOR, joint_vector)) if on],
        "reranker": "reranker-transformers" if rerank else None,
        "replication_factor": replication_factor,
        "weights": {f: float((weights or {}).get(f, 1.0)) for fs in roles.values() for f in fs} if weights else None,
    }


def collection_fields(collection: Collection) -> dict[str, list[str]]:
    """The text, image and video fields of a collection made by ``create_collection``.

    Read from the property descriptions it writes; a collection made elsewhere falls back to
    data types (``text`` properties are text, ``blob`` properties images).
    """
    try:
        config = collection.config.get()
    except Exception as exc:
        raise CollectionError(f"reading the schema of collection {collection.name!r} failed: {exc}") from exc
    out: dict[str, list[str]] = {role: [] for role in ROLES}
    tagged = [p for p in config.properties if (p.description or "").startswith(ROLE_PREFIX)]
    if tagged:
        for prop in tagged:
            role = (prop.description or "")[len(ROLE_PREFIX):]
            if role in out:
                out[role].append(prop.name)
    else:
        for prop in config.properties:
            if prop.data_type == DataType.TEXT:
                out["text"].append(prop.name)
            elif prop.data_type == DataType.BLOB:
                out["image"].append(prop.name)
    return {role: sorted(fields) for role, fields in out.items()}
