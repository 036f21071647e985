"""multi2vec-clip backed by qvl: stored vectors, near* / hybrid queries, profiles and dimensions."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import weaviate
from weaviate.classes.config import DataType, Property
from weaviate.classes.query import HybridFusion, MetadataQuery
from weaviate.collections import Collection

from connectors.client import Client
from connectors.weaviate.collections import MODULE_VECTOR, CollectionError, create_collection
from tests.integration.weaviate.conftest import PROFILES, b64, cos
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.weaviate, pytest.mark.service]


def _insert(col: Collection, objects: list[dict[str, object]], fields: tuple[str, ...]) -> list[str]:
    result = col.data.insert_many([{k: (b64(v) if isinstance(v, bytes) else v) for k, v in o.items()
                                    if k in fields} for o in objects])
    assert not result.has_errors, result.errors
    return [str(result.uuids[i]) for i in range(len(objects))]


def _vector(col: Collection, uuid: str, name: str = MODULE_VECTOR) -> np.ndarray:
    obj = col.query.fetch_object_by_id(uuid, include_vector=True)
    assert obj is not None, f"object {uuid} not found in {col.name}"
    return np.asarray(obj.vector[name], dtype=np.float64)


@pytest.fixture(scope="module")
def pics(wv: weaviate.WeaviateClient, qvl_service: ServiceProcess,
         pictures: list[dict[str, object]]) -> Iterator[tuple[Collection, list[str]]]:
    create_collection(wv, "ClipPics", module="multi2vec-clip", text_fields=["caption"], image_fields=["image"],
                      service_url=qvl_service.http_url, properties=[Property(name="name", data_type=DataType.TEXT)],
                      replace=True)
    col = wv.collections.get("ClipPics")
    uuids = _insert(col, pictures, ("caption", "image", "name"))
    yield col, uuids
    wv.collections.delete("ClipPics")


def test_image_only_vectors_equal_qvl_embeddings(wv: weaviate.WeaviateClient, qvl_service: ServiceProcess,
                                                 qvl: Client, pictures: list[dict[str, object]]) -> None:
    create_collection(wv, "ClipImages", module="multi2vec-clip",
                      image_fields=["image"], service_url=qvl_service.http_url, replace=True)
    col = wv.collections.get("ClipImages")
    try:
        uuids = _insert(col, pictures, ("image",))
        expected = qvl.embed([{"image": p["image"]} for p in pictures])
        for uuid, want, p in zip(uuids, expected, pictures, strict=True):
            got = _vector(col, uuid)
            assert cos(got, want) >= 0.9999, p["name"]
            assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-4)  # one field: qvl's unit vector
    finally:
        wv.collections.delete("ClipImages")


def test_combined_fields_are_weaviates_weighted_average(wv: weaviate.WeaviateClient, qvl_service: ServiceProcess,
                                                        qvl: Client, pictures: list[dict[str, object]]) -> None:
    # Fields listed out of name order on purpose: create_collection sorts them so that Weaviate
    # (which orders vectors by property name) pairs each vector with its own weight.
    weights = {"title": 1.0, "caption": 2.0, "image": 3.0}
    create_collection(wv, "ClipWeighted", module="multi2vec-clip",
                      text_fields=["title", "caption"], image_fields=["image"],
                      weights=weights, service_url=qvl_service.http_url, replace=True)
    col = wv.collections.get("ClipWeighted")
    try:
        objects = [{"title": f"picture {i}", "caption": p["caption"], "image": p["image"]}
                   for i, p in enumerate(pictures[:3])]
        uuids = _insert(col, objects, ("title", "caption", "image"))
        total = sum(weights.values())
        for uuid, obj in zip(uuids, objects, strict=True):
            caption, title, image = qvl.embed([obj["caption"], obj["title"], {"image": obj["image"]}])
            # Weaviate: normalized weights, sum of weighted vectors, divided by the vector count.
            want = (2 * caption + 1 * title + 3 * image) / total / 3
            got = _vector(col, uuid)
            assert cos(got, want) >= 0.9999
            assert np.linalg.norm(got) == pytest.approx(np.linalg.norm(want), rel=1e-3)
    finally:
        wv.collections.delete("ClipWeighted")


def test_unweighted_fields_are_the_mean(pics: tuple[Collection, list[str]], qvl: Client,
                                        pictures: list[dict[str, object]]) -> None:
    col, uuids = pics
    for uuid, p in zip(uuids, pictures, strict=True):
        text, image = qvl.embed([p["caption"], {"image": p["image"]}])
        assert cos(_vector(col, uuid), (text + image) / 2) >= 0.9999, p["name"]


def test_near_image_finds_the_same_image_first(pics: tuple[Collection, list[str]],
                                               pictures: list[dict[str, object]]) -> None:
    col, uuids = pics
    for uuid, p in zip(uuids, pictures, strict=True):
        found = col.query.near_image(near_image=b64(p["image"]), limit=3, target_vector=MODULE_VECTOR,
                                     return_metadata=MetadataQuery(distance=True))
        assert str(found.objects[0].uuid) == uuid, p["name"]


def test_near_text_distance_is_qvls(pics: tuple[Collection, list[str]], qvl: Client) -> None:
    # clip requests do not say "query": the text is embedded with the default instruction.
    col, uuids = pics
    found = col.query.near_text(query="rings", limit=len(uuids), target_vector=MODULE_VECTOR,
                                return_metadata=MetadataQuery(distance=True), include_vector=True)
    assert len(found.objects) == len(uuids)
    [query] = qvl.embed(["rings"])
    for obj in found.objects:
        assert obj.metadata.distance == pytest.approx(1 - cos(query, obj.vector[MODULE_VECTOR]), abs=1e-4)


def test_near_vector_with_a_qvl_embedding(pics: tuple[Collection, list[str]], qvl: Client,
                                          pictures: list[dict[str, object]]) -> None:
    col, uuids = pics
    p = pictures[2]
    [want] = (qvl.embed([p["caption"]]) + qvl.embed([{"image": p["image"]}])) / 2
    found = col.query.near_vector(near_vector=want.tolist(), target_vector=MODULE_VECTOR, limit=2,
                                  return_metadata=MetadataQuery(distance=True))
    assert str(found.objects[0].uuid) == uuids[2]
    assert found.objects[0].metadata.distance == pytest.approx(0.0, abs=1e-4)


def test_hybrid_query(pics: tuple[Collection, list[str]]) -> None:
    col, uuids = pics
    # The keyword side matches one caption only; with the vector side at a small weight it wins.
    found = col.query.hybrid(query="stripes", alpha=0.25, limit=3, target_vector=MODULE_VECTOR,
                             fusion_type=HybridFusion.RELATIVE_SCORE, return_metadata=MetadataQuery(score=True))
    assert str(found.objects[0].uuid) == uuids[1]
    pure_vector = col.query.hybrid(query="stripes", alpha=1.0, limit=len(uuids), target_vector=MODULE_VECTOR)
    assert len(pure_vector.objects) == len(uuids)  # the vector side (qvl) ranks every object


def test_profile_sets_instruction_and_dimensions(wv: weaviate.WeaviateClient, qvl_service: ServiceProcess,
                                                 qvl: Client, pictures: list[dict[str, object]]) -> None:
    profile = PROFILES["small"]
    info = create_collection(wv, "ClipProfile", module="multi2vec-clip",
                             image_fields=["image"], service_url=qvl_service.http_url,
                             profile="small", replace=True)
    assert info["inference_url"].endswith("/profiles/small")
    col = wv.collections.get("ClipProfile")
    try:
        uuids = _insert(col, pictures[:2], ("image",))
        for uuid, p in zip(uuids, pictures, strict=False):
            got = _vector(col, uuid)
            assert got.shape == (profile["dimensions"],)
            [want] = qvl.embed([{"image": p["image"]}], instruction=profile["instruction"],
                               dimensions=profile["dimensions"])
            [plain] = qvl.embed([{"image": p["image"]}], dimensions=profile["dimensions"])
            assert cos(got, want) >= 0.9999
            assert cos(got, plain) < 0.9999  # the profile's instruction, not the default one
    finally:
        wv.collections.delete("ClipProfile")


def test_dimensions_path(wv: weaviate.WeaviateClient, qvl_service: ServiceProcess, qvl: Client,
                         pictures: list[dict[str, object]]) -> None:
    create_collection(wv, "ClipDim", module="multi2vec-clip",
                      image_fields=["image"], service_url=qvl_service.http_url, dimensions=48,
                      replace=True)
    col = wv.collections.get("ClipDim")
    try:
        [uuid] = _insert(col, pictures[:1], ("image",))
        got = _vector(col, uuid)
        [want] = qvl.embed([{"image": pictures[0]["image"]}], dimensions=48)
        assert got.shape == (48,)
        assert cos(got, want) >= 0.9999
    finally:
        wv.collections.delete("ClipDim")


def test_unknown_profile_is_a_clear_insert_error(wv: weaviate.WeaviateClient, qvl_service: ServiceProcess,
                                                 pictures: list[dict[str, object]]) -> None:
    # Pinning asks the service for the profile's fingerprint first: it has no such profile.
    with pytest.raises(CollectionError, match="no profile 'nope'"):
        create_collection(wv, "ClipNoProfile", module="multi2vec-clip", image_fields=["image"],
                          service_url=qvl_service.http_url, profile="nope", replace=True)
    # Unpinned, the collection is made, and its first insert says what is wrong.
    create_collection(wv, "ClipNoProfile", module="multi2vec-clip",
                      image_fields=["image"], service_url=qvl_service.http_url,
                      profile="nope", replace=True, fingerprint="")
    try:
        with pytest.raises(weaviate.exceptions.WeaviateBaseError, match="unknown profile 'nope'"):
            wv.collections.get("ClipNoProfile").data.insert({"image": b64(pictures[0]["image"])})
    finally:
        wv.collections.delete("ClipNoProfile")


def test_create_collection_names_the_problem(wv: weaviate.WeaviateClient, qvl_service: ServiceProcess) -> None:
    url = qvl_service.http_url
    with pytest.raises(ValueError, match="'photo' is both a text and a image field"):
        create_collection(wv, "Bad", module="multi2vec-clip",
                          text_fields=["photo"], image_fields=["photo"], service_url=url)
    with pytest.raises(ValueError, match="no per-collection inferenceUrl"):
        create_collection(wv, "Bad", module="multi2vec-bind", video_fields=["clip"], profile="small", service_url=url)
    with pytest.raises(ValueError, match="weights name unknown fields"):
        create_collection(wv, "Bad", module="multi2vec-clip",
                          image_fields=["image"], weights={"other": 1.0}, service_url=url)
    create_collection(wv, "Twice", module="multi2vec-clip", image_fields=["image"], service_url=url, replace=True)
    try:
        with pytest.raises(CollectionError, match="collection 'Twice' already exists"):
            create_collection(wv, "Twice", module="multi2vec-clip", image_fields=["image"], service_url=url)
    finally:
        wv.collections.delete("Twice")
