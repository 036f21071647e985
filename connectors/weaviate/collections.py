"""Weaviate collections whose vectors come from qvl through Weaviate's own modules.

By default a collection uses Weaviate's **per-collection** API modules, pointed at qvl by the
collection's ``baseURL`` (no Weaviate environment variable names qvl; only qvl's token travels,
as the module's API key): ``multi2vec-voyageai`` for image or video fields (it embeds objects as
documents and nearText / nearImage / nearVideo as queries), ``text2vec-openai`` for text only (it
batches up to 2000 texts a request), ``reranker-cohere`` for ``rerank``. ``module=`` picks another:
``multi2vec-jinaai``, ``multi2vec-cohere``, ``multi2vec-nvidia``, or the local modules
``multi2vec-clip``, ``multi2vec-bind``, ``text2vec-transformers`` (with ``reranker-transformers``),
which reach qvl through an ``inferenceUrl`` or Weaviate's environment. A self-provided ``joint``
vector can sit beside the module's ``fields`` vector for joint embeddings (see ``ingest``).

Each collection is pinned to the embedding model it was built with (its fingerprint, issue 23): qvl
refuses the module's requests when it serves another model, and GraphQL shows why. Moving a collection
to a new model is ``model_moves``: a new collection filled from the new service, then an alias switched.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import weaviate
from weaviate.classes.config import Configure, DataType, Multi2VecField, Property, VectorDistances
from weaviate.collections import Collection
from weaviate.collections.classes.config import RerankerProvider
from weaviate.collections.classes.config_vector_index import _VectorIndexConfigCreate
from weaviate.collections.classes.config_vectors import VectorConfigCreate

import connectors.weaviate.part_schema as parts
from connectors.client import Client

MODULE_VECTOR = "fields"  # Weaviate's module: each field embedded apart, then averaged
JOINT_VECTOR = "joint"  # qvl's joint embedding of all fields as one item, supplied by ``ingest``
ROLE_PREFIX = "qvl:"  # property descriptions record each field's role ("qvl:image")
ROLES = ("text", "image", "video")

# Modules with a per-collection baseURL: what each embeds, and whether it sends the collection's
# ``dimensions`` (voyageai's multimodal request, nvidia and text2vec-openai with a non-OpenAI
# model name send none: a profile with ``dimensions`` sizes their vectors).
API_MODULES: dict[str, tuple[frozenset[str], bool]] = {
    "multi2vec-voyageai": (frozenset(ROLES), False),
    "multi2vec-jinaai": (frozenset({"text", "image"}), True),
    "multi2vec-cohere": (frozenset({"text", "image"}), True),
    "multi2vec-nvidia": (frozenset({"text", "image"}), False),
    "text2vec-openai": (frozenset({"text"}), False),
}
LOCAL_MODULES: dict[str, frozenset[str]] = {
    "multi2vec-clip": frozenset({"text", "image"}),
    "multi2vec-bind": frozenset(ROLES),
    "text2vec-transformers": frozenset({"text"}),
}
RERANKERS = ("reranker-cohere", "reranker-transformers")
# The model name the API modules send. It names no profile (the baseURL does that) and no OpenAI
# model (text-embedding-3-* makes text2vec-openai send dimensions 1536). multi2vec-jinaai sends
# query texts with ``task: retrieval.query`` only when the name holds "clip" or "v3", and
# multi2vec-voyageai switches to its contextual API when it holds "context".
API_MODEL = "qvl"
JINA_MODEL = "qvl-clip"
# A collection's pin (issue 23): "qvl@<fingerprint>" in the API modules' model field, a
# /fingerprint/<fingerprint> segment in the local modules' inferenceUrl, and this note in its description
# (read back by ``collection_fingerprint`` for the joint vector's ``ingest`` and ``search``).
FINGERPRINT = re.compile(r"[0-9a-f]{16}")
FINGERPRINT_NOTE = "qvl: vectors of model fingerprint "
PINNED_DESCRIPTION = re.compile(re.escape(FINGERPRINT_NOTE) + r"([0-9a-f]{16})")
# The request header that carries each API module's key (qvl's token) from a Weaviate client.
API_KEY_HEADERS = {
    "multi2vec-voyageai": "X-VoyageAI-Api-Key",
    "multi2vec-jinaai": "X-JinaAI-Api-Key",
    "multi2vec-cohere": "X-Cohere-Api-Key",
    "multi2vec-nvidia": "X-NVIDIA-Api-Key",
    "text2vec-openai": "X-OpenAI-Api-Key",
    "reranker-cohere": "X-Cohere-Api-Key",
}


class CollectionError(Exception):
    """A collection could not be created or read; the message names it."""


def api_key_headers(token: str) -> dict[str, str]:
    """Headers that give every API module qvl's ``token`` as its key: pass them to the Weaviate
    client (``weaviate.connect_to_local(headers=...)``); Weaviate forwards each to its module as
    ``Authorization: Bearer <token>``. One Weaviate can so reach qvl services with different tokens."""
    return {header: token for header in sorted(set(API_KEY_HEADERS.values()))}


def service_path(service_url: str, *, profile: str | None = None, dimensions: int | None = None,
                 fingerprint: str | None = None) -> str:
    """The service URL that selects a profile (``/profiles/{name}``) or a Matryoshka size (``/dim/{d}``),
    pinned to a model fingerprint (``/fingerprint/{f}`` first) when one is given."""
    url = service_url.rstrip("/")
    if fingerprint:
        url = f"{url}/fingerprint/{fingerprint}"
    if profile and dimensions:
        raise ValueError("give a profile or dimensions, not both (a profile carries its own dimensions)")
    if profile:
        return f"{url}/profiles/{quote(profile, safe='')}"
    if dimensions:
        if dimensions < 1:
            raise ValueError(f"dimensions must be positive, got {dimensions}")
        return f"{url}/dim/{int(dimensions)}"
    return url


def module_base_url(service_url: str, module: str, *, profile: str | None = None) -> str:
    """The ``baseURL`` that makes an API module call qvl (under ``/profiles/{name}`` for a profile).

    multi2vec-voyageai appends only ``/multimodalembeddings`` (Voyage's base URL ends in ``/v1``);
    the others append ``/v1/embeddings``, ``/v2/embed`` or ``/v2/rerank`` to the service's root.
    """
    url = service_path(service_url, profile=profile)
    return f"{url}/v1" if module == "multi2vec-voyageai" else url


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


def default_module(*, image_fields: Sequence[str] = (), video_fields: Sequence[str] = ()) -> str:
    """multi2vec-voyageai for any media (nearText/nearImage/nearVideo are queries), text2vec-openai for text."""
    return "multi2vec-voyageai" if image_fields or video_fields else "text2vec-openai"


def _module_vector(module: str, roles: Mapping[str, Sequence[str]], weights: Mapping[str, float] | None,
                   service_url: str, profile: str | None, dimensions: int | None,
                   index: _VectorIndexConfigCreate, fingerprint: str | None) -> VectorConfigCreate:
    texts, images, videos = (_weighted(roles[r], weights) or None for r in ROLES)
    # Every request of an API module sends its model name (Weaviate 1.39's clients for voyageai,
    # jinaai, cohere, nvidia and openai, objects and queries alike): qvl refuses a pin it does not serve.
    pin = f"@{fingerprint}" if fingerprint else ""
    model, jina_model = API_MODEL + pin, JINA_MODEL + pin
    if module in API_MODULES:
        base = module_base_url(service_url, module, profile=profile)
        if module == "multi2vec-voyageai":
            return Configure.Vectors.multi2vec_voyageai(
                name=MODULE_VECTOR, vector_index_config=index, base_url=base, model=model,  # type: ignore[arg-type]
                text_fields=texts, image_fields=images, video_fields=videos)
        if module == "multi2vec-jinaai":
            return Configure.Vectors.multi2vec_jinaai(
                name=MODULE_VECTOR, vector_index_config=index, base_url=base, model=jina_model,  # type: ignore[arg-type]
                dimensions=dimensions, text_fields=texts, image_fields=images)
        if module == "multi2vec-cohere":
            return Configure.Vectors.multi2vec_cohere(
                name=MODULE_VECTOR, vector_index_config=index, base_url=base, model=model,  # type: ignore[arg-type]
                dimensions=dimensions, text_fields=texts, image_fields=images, vectorize_collection_name=False)
        if module == "multi2vec-nvidia":
            return Configure.Vectors.multi2vec_nvidia(
                name=MODULE_VECTOR, vector_index_config=index, base_url=base, model=model,  # type: ignore[arg-type]
                text_fields=texts, image_fields=images)
        # text2vec-openai joins the source properties with spaces, in name order; the class name
        # is left out so that the stored vector is the text's own embedding.
        return Configure.Vectors.text2vec_openai(
            name=MODULE_VECTOR, vector_index_config=index, base_url=base, model=model,  # type: ignore[arg-type]
            source_properties=sorted(roles["text"]), vectorize_collection_name=False)
    if module == "multi2vec-bind":
        return Configure.Vectors.multi2vec_bind(name=MODULE_VECTOR, vector_index_config=index,
                                                text_fields=texts, image_fields=images, video_fields=videos)
    if module == "multi2vec-clip":
        return Configure.Vectors.multi2vec_clip(
            name=MODULE_VECTOR, vector_index_config=index,
            inference_url=service_path(service_url, profile=profile, dimensions=dimensions, fingerprint=fingerprint),
            text_fields=texts, image_fields=images)
    # text2vec-transformers: one URL for passages and queries (the service tells them apart by
    # task_type); the class name is left out so that the stored vector is the text's own embedding.
    return Configure.Vectors.text2vec_transformers(
        name=MODULE_VECTOR, vector_index_config=index,
        inference_url=service_path(service_url, profile=profile, fingerprint=fingerprint), dimensions=dimensions,
        source_properties=sorted(roles["text"]), vectorize_collection_name=False)


def _reranker_config(reranker: str, service_url: str, profile: str | None) -> RerankerProvider:
    if reranker == "reranker-cohere":
        # reranker-cohere appends /v2/rerank to its baseURL as a string: no trailing slash.
        return Configure.Reranker.cohere(base_url=service_path(service_url, profile=profile), model=API_MODEL)
    return Configure.Reranker.transformers()


def create_collection(
    client: weaviate.WeaviateClient,
    name: str,
    *,
    text_fields: Sequence[str] = (),
    image_fields: Sequence[str] = (),
    video_fields: Sequence[str] = (),
    document_fields: Sequence[str] = (),
    chunking: str | Mapping[str, Any] | None = None,
    chunk_field: str | None = None,
    service_url: str,
    module: str | None = None,
    profile: str | None = None,
    dimensions: int | None = None,
    rerank: bool = True,
    reranker: str | None = None,
    weights: Mapping[str, float] | None = None,
    module_vector: bool = True,
    joint_vector: bool = False,
    properties: Sequence[Property] = (),
    replace: bool = False,
    replication_factor: int = 1,
    exact: bool = False,
    fingerprint: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Create collection ``name`` wired to the qvl service at ``service_url`` (its HTTP URL as
    Weaviate reaches it).

    Text fields become ``text`` properties, image and video fields ``blob`` properties (base64).
    ``module`` defaults to ``default_module(...)``: multi2vec-voyageai with media, text2vec-openai
    for text only. ``profile`` reaches the service through the URL (``.../profiles/{name}``: its
    instruction, query instruction, rerank instruction and dimensions); ``dimensions`` alone works
    where the module sends it (multi2vec-jinaai, multi2vec-cohere, the local clip and
    text2vec-transformers). multi2vec-bind has no per-collection URL (``BIND_INFERENCE_API``).
    ``reranker`` defaults to reranker-cohere with an API module and reranker-transformers with a
    local one; ``rerank=False`` leaves the reranker out. ``weights`` maps field names to weights of
    Weaviate's per-field average (missing fields weigh 1). ``properties`` adds plain properties
    that no module reads. ``replication_factor`` > 1 keeps that many copies of each shard on a
    cluster's nodes. ``exact`` gives the vectors a flat (brute-force) index instead of HNSW: exact
    nearest neighbours, the same on every replica, at the cost of a scan per query (small
    collections).

    ``fingerprint`` pins the collection to the embedding model whose vectors it will hold (issue 23):
    qvl refuses every request of the collection's module that another model would answer, so a
    service restarted on other weights never mixes its vectors in. By default it is read from the
    service (its ``/v1/info``, with ``token``): the embedding model's fingerprint, or with a
    ``profile`` that profile's (its instructions are part of its vectors); given, it is that value;
    ``""`` creates an unpinned collection. The API modules carry it in their ``model`` field
    (``qvl@<fingerprint>``), multi2vec-clip and text2vec-transformers in their inferenceUrl
    (``.../fingerprint/<fingerprint>``); multi2vec-bind cannot (its URL is Weaviate's
    ``BIND_INFERENCE_API``). The collection's description records the model's fingerprint, which
    ``ingest`` and ``search`` pin the joint vector's requests to (``collection_fingerprint``).
    ``chunking`` ("pages", "video", "text"), ``document_fields``, ``chunk_field``: a collection of parts for
    ``ingest(..., chunking=...)`` (``part_schema.check_layout``). Returns a description of what was created.
    """
    roles = {"text": list(text_fields), "image": list(image_fields), "video": list(video_fields),
             "document": list(document_fields)}
    layout, module = parts.check_layout(name, roles, chunking, chunk_field, profile=profile, module=module)
    read_by = parts.module_roles(roles)  # the fields the module reads
    module, reranker = _checked(name, read_by, module=module, reranker=reranker, weights=weights,
                                module_vector=module_vector, joint_vector=joint_vector, dimensions=dimensions,
                                profile=profile, replication_factor=replication_factor)
    pin, model_pin = _pins(name, fingerprint, service_url, profile, token)
    # Flat: exact search (every replica answers alike); HNSW: approximate, for large collections.
    index = (Configure.VectorIndex.flat(distance_metric=VectorDistances.COSINE) if exact
             else Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE))
    vector_config = []
    if module_vector:
        vector_config.append(_module_vector(module, read_by, weights, service_url, profile, dimensions, index, pin))
    if joint_vector:
        vector_config.append(Configure.Vectors.self_provided(name=JOINT_VECTOR, vector_index_config=index))
    _create(client, name, replace=replace, properties=_properties(roles, properties, layout),
            vector_config=vector_config,
            reranker_config=_reranker_config(reranker, service_url, profile) if rerank else None,
            replication_factor=replication_factor, description=_pin_note(pin, model_pin, profile))
    return _described(name, roles, module=module if module_vector else None, service_url=service_url,
                      profile=profile, dimensions=dimensions, joint_vector=joint_vector,
                      reranker=reranker if rerank else None, replication_factor=replication_factor, weights=weights,
                      fingerprint=pin, layout=layout)


def _checked(name: str, roles: Mapping[str, Sequence[str]], *, module: str | None, reranker: str | None,
             weights: Mapping[str, float] | None, module_vector: bool, joint_vector: bool, dimensions: int | None,
             profile: str | None, replication_factor: int) -> tuple[str, str]:
    """The module and reranker a collection gets, once its options are known to fit together (before
    anything asks the service or Weaviate)."""
    if replication_factor < 1:
        raise ValueError(f"collection {name!r}: replication_factor must be at least 1")
    _check_fields(name, roles)
    if weights:
        unknown = set(weights) - {f for fs in roles.values() for f in fs}
        if unknown:
            raise ValueError(f"collection {name!r}: weights name unknown fields {sorted(unknown)}")
    if not (module_vector or joint_vector):
        raise ValueError(f"collection {name!r}: needs the module vector, the joint vector or both")
    if module_vector and not any(roles.values()):
        raise ValueError(f"collection {name!r}: the module vector needs at least one text, image or video field")
    if module is None:
        module = default_module(image_fields=roles["image"], video_fields=roles["video"])
    takes = API_MODULES[module][0] if module in API_MODULES else LOCAL_MODULES.get(module)
    if takes is None:
        raise ValueError(f"collection {name!r}: unknown module {module!r}; "
                         f"expected one of {', '.join([*API_MODULES, *LOCAL_MODULES])}")
    if module_vector:
        refused = [role for role in ROLES if roles[role] and role not in takes]
        if refused:
            raise ValueError(f"collection {name!r}: {module} embeds no {' or '.join(refused)} fields")
    if reranker is None:
        reranker = "reranker-cohere" if module in API_MODULES else "reranker-transformers"
    if reranker not in RERANKERS:
        raise ValueError(f"collection {name!r}: unknown reranker {reranker!r}; expected one of {', '.join(RERANKERS)}")
    if dimensions is not None and dimensions < 1:
        raise ValueError(f"collection {name!r}: dimensions must be positive, got {dimensions}")
    if module_vector and module in API_MODULES and dimensions and not API_MODULES[module][1]:
        raise ValueError(f"collection {name!r}: {module} sends no dimensions to qvl; "
                         "use a profile with `dimensions` (profile=...)")
    if module_vector and module == "multi2vec-bind" and (profile or dimensions):
        raise ValueError(f"collection {name!r}: multi2vec-bind (video) has no per-collection inferenceUrl; "
                         "point BIND_INFERENCE_API at .../profiles/NAME instead of passing profile/dimensions")
    return module, reranker


def _pins(name: str, fingerprint: str | None, service_url: str, profile: str | None,
          token: str | None) -> tuple[str | None, str | None]:
    """(the module's pin, the model's fingerprint for the joint vector): read from the service, or given."""
    if fingerprint is None:
        model, profiles = _service_fingerprints(service_url, token=token)
        return (_profile_pin(service_url, profiles, profile) if profile else model), model
    if not fingerprint:
        return None, None
    if not FINGERPRINT.fullmatch(fingerprint):
        raise ValueError(f"collection {name!r}: fingerprint {fingerprint!r} is not a qvl model fingerprint "
                         "(16 hex digits, as the service's /v1/info lists them)")
    # Given with a profile it is the profile's: the model's own is then not known here.
    return fingerprint, None if profile else fingerprint


def _pin_note(pin: str | None, model: str | None, profile: str | None) -> str | None:
    """The collection's description: which model (and profile) its vectors come from."""
    parts = [FINGERPRINT_NOTE + model] if model else []
    if profile and pin:
        parts.append(f"profile {profile!r}: fingerprint {pin}")
    return "; ".join(parts) or None


def _properties(roles: Mapping[str, Sequence[str]], extra: Sequence[Property],
                layout: parts.PartLayout | None) -> list[Property]:
    def described(field: str, role: str) -> str:
        return f"{ROLE_PREFIX}{role}{parts.CHUNKED_MARK if layout and layout.field == field else ''}"

    props = [Property(name=f, data_type=DataType.TEXT, description=described(f, "text")) for f in roles["text"]]
    # Nobody filters on base64 media: indexing it only costs insert time and disk.
    props += [Property(name=f, data_type=DataType.BLOB, description=described(f, role), index_filterable=False)
              for role in ("image", "video", "document") for f in roles.get(role, ())]
    return props + list(extra) + (parts.part_properties(layout) if layout else [])


def _create(client: weaviate.WeaviateClient, name: str, *, replace: bool, properties: list[Property],
            vector_config: list[VectorConfigCreate], reranker_config: RerankerProvider | None,
            replication_factor: int, description: str | None) -> None:
    try:
        if client.collections.exists(name):
            if not replace:
                raise CollectionError(f"collection {name!r} already exists (pass replace=True to recreate it)")
            client.collections.delete(name)
        client.collections.create(
            name,
            description=description,
            properties=properties,
            vector_config=vector_config,
            reranker_config=reranker_config,
            # Weaviate >= 1.38 runs async replication for every factor > 1 by itself.
            replication_config=Configure.replication(factor=replication_factor) if replication_factor > 1 else None,
        )
    except CollectionError:
        raise
    except Exception as exc:  # weaviate-client raises several unrelated types
        raise CollectionError(f"creating collection {name!r} failed: {exc}") from exc


def _described(name: str, roles: Mapping[str, Sequence[str]], *, module: str | None, service_url: str,
               profile: str | None, dimensions: int | None, joint_vector: bool, reranker: str | None,
               replication_factor: int, weights: Mapping[str, float] | None,
               fingerprint: str | None, layout: parts.PartLayout | None) -> dict[str, Any]:
    """What ``create_collection`` made, as it returns it."""
    inference_url = None  # the local modules' per-collection URL
    if module == "multi2vec-clip":
        inference_url = service_path(service_url, profile=profile, dimensions=dimensions, fingerprint=fingerprint)
    elif module == "text2vec-transformers":
        inference_url = service_path(service_url, profile=profile, fingerprint=fingerprint)
    pinned_by = None  # how the module's requests carry the fingerprint
    if fingerprint and module in API_MODULES:
        pinned_by = "model"
    elif fingerprint and inference_url:
        pinned_by = "inference_url"
    return {
        "name": name,
        "module": module,
        "base_url": module_base_url(service_url, module, profile=profile) if module in API_MODULES else None,
        "inference_url": inference_url,
        "text_fields": sorted(roles["text"]),
        "image_fields": sorted(roles["image"]),
        "video_fields": sorted(roles["video"]),
        "vectors": [v for v, on in ((MODULE_VECTOR, module is not None), (JOINT_VECTOR, joint_vector)) if on],
        "reranker": reranker,
        "replication_factor": replication_factor,
        "weights": {f: float((weights or {}).get(f, 1.0)) for fs in roles.values() for f in fs} if weights else None,
        "fingerprint": fingerprint,
        "pinned_by": pinned_by,
        "chunking": layout.chunking if layout else None,
        "chunk_field": layout.field if layout else None,
    }


def service_fingerprint(service: str | Client, *, profile: str | None = None, token: str | None = None,
                        timeout: float = 10.0) -> str:
    """The embedding fingerprint a qvl service answers with (a profile's, with ``profile``): from a
    ``Client``'s ``info()``, or from ``{service}/v1/info`` when ``service`` is its HTTP URL (with the
    service's ``token``, if it has one)."""
    model, profiles = _service_fingerprints(service, token=token, timeout=timeout)
    return _profile_pin(service, profiles, profile) if profile else model


def _profile_pin(service: str | Client, profiles: Mapping[str, str], profile: str) -> str:
    if profile not in profiles:
        where = service if isinstance(service, str) else "the service"
        raise CollectionError(f"{where} has no profile {profile!r} (its profiles: {sorted(profiles) or 'none'})")
    return profiles[profile]


def _service_fingerprints(service: str | Client, *, token: str | None = None,
                          timeout: float = 10.0) -> tuple[str, dict[str, str]]:
    """(the embedding model's fingerprint, each profile's) as the service's Info says them."""
    where = service if isinstance(service, str) else "the service's Info"
    try:
        if isinstance(service, str):
            request = urllib.request.Request(service.rstrip("/") + "/v1/info",
                                             headers={"Authorization": f"Bearer {token}"} if token else {})
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                info = json.loads(resp.read())
            models, profiles = info.get("models", []), info.get("profile_fingerprints", {})
        else:
            reply = service.info()
            models = [{"task": m.task, "fingerprint": m.fingerprint} for m in reply.models]
            profiles = dict(reply.profile_fingerprints)
    except Exception as exc:  # unreachable, refused (a token), not qvl: say what to do instead
        raise CollectionError(f"reading the model fingerprint from {where} failed ({exc}); pass token=, or "
                              "fingerprint= (Client.info(): the embed model's fingerprint), or fingerprint='' for "
                              "an unpinned collection") from exc
    found = next((m.get("fingerprint") for m in models if m.get("task") == "embed"), None)
    if not found:
        raise CollectionError(f"{where} names no embedding model fingerprint (no embedding model, or a qvl "
                              "service older than fingerprints): pass fingerprint= or fingerprint=''")
    return str(found), {str(k): str(v) for k, v in profiles.items()}


def collection_fingerprint(collection: Collection) -> str | None:
    """The fingerprint of the embedding model ``create_collection`` built the collection for (None:
    unpinned, or not known): what ``ingest`` and ``search`` pin the joint vector's requests to."""
    try:
        config = collection.config.get()
    except Exception as exc:
        raise CollectionError(f"reading the schema of collection {collection.name!r} failed: {exc}") from exc
    found = PINNED_DESCRIPTION.search(config.description or "")
    return found.group(1) if found else None


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
            role = (prop.description or "")[len(ROLE_PREFIX):].removesuffix(parts.CHUNKED_MARK)
            if role in out:
                out[role].append(prop.name)
    else:
        for prop in config.properties:
            if prop.data_type == DataType.TEXT:
                out["text"].append(prop.name)
            elif prop.data_type == DataType.BLOB:
                out["image"].append(prop.name)
    return {role: sorted(fields) for role, fields in out.items()}
