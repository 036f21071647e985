"""Moving a collection to a new model with no mixed answers and no downtime (issue 23, item 4), on the
real Weaviate 1.39: the old service keeps answering the live collection while a new collection is
filled from the new service (``copy_objects``), then one ``switch_alias`` moves every query.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import weaviate
from weaviate.classes.query import MetadataQuery

from connectors.client import Client
from connectors.weaviate import (
    MODULE_VECTOR,
    CollectionError,
    api_key_headers,
    collection_fingerprint,
    copy_objects,
    create_collection,
    switch_alias,
)
from qvl_devtools.launchers.weaviate import WeaviateServer, connect
from qvl_devtools.tiny_model import build_checkpoint
from tests.integration.weaviate.conftest import b64, cos
from tests.support.service import TINY, ServiceProcess, started_together

pytestmark = [pytest.mark.weaviate, pytest.mark.service, pytest.mark.slow, pytest.mark.lifecycle]

KEY = "any-key"
ALIAS = "Photos"


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """The model in use (the fixture checkpoint) and the one to move to (another seed)."""
    new = build_checkpoint(tmp_path_factory.mktemp("move-seed-1"), seed=1)
    env = {"QVL_FINGERPRINT_CACHE": str(tmp_path_factory.mktemp("move-cache") / "fingerprints.json")}
    old_svc = ServiceProcess(embedding_model=str(TINY), reranker_model=None, env=env)
    new_svc = ServiceProcess(embedding_model=str(new), reranker_model=None, env=env)
    with started_together(old_svc, new_svc):
        yield old_svc, new_svc


@pytest.fixture(scope="module")
def keyed(module_weaviate: WeaviateServer) -> Iterator[weaviate.WeaviateClient]:
    client = connect(module_weaviate, headers=api_key_headers(KEY))
    try:
        yield client
    finally:
        client.close()


def _near(client: weaviate.WeaviateClient, name: str, text: str) -> dict[str, float]:
    found = client.collections.get(name).query.near_text(query=text, limit=6, target_vector=MODULE_VECTOR,
                                                         return_metadata=MetadataQuery(distance=True))
    return {str(o.uuid): o.metadata.distance for o in found.objects}


def _vector(client: weaviate.WeaviateClient, name: str, uuid: str) -> np.ndarray:
    obj = client.collections.get(name).query.fetch_object_by_id(uuid, include_vector=True)
    assert obj is not None
    return np.asarray(obj.vector[MODULE_VECTOR])


def test_move_a_collection_to_a_new_model_through_an_alias(
        services: tuple[ServiceProcess, ServiceProcess], keyed: weaviate.WeaviateClient,
        pictures: list[dict[str, object]]) -> None:
    old_svc, new_svc = services
    objects: list[dict[str, Any]] = [{"caption": p["caption"], "image": b64(p["image"])} for p in pictures]  # type: ignore[arg-type]
    v1 = create_collection(keyed, "PhotosV1", text_fields=["caption"], image_fields=["image"],
                           service_url=old_svc.http_url, rerank=False, replace=True)
    assert not keyed.collections.get("PhotosV1").data.insert_many(objects).has_errors
    if keyed.alias.exists(alias_name=ALIAS):
        keyed.alias.delete(alias_name=ALIAS)
    assert switch_alias(keyed, ALIAS, "PhotosV1") is None
    live_v1 = _near(keyed, ALIAS, "rings")
    assert live_v1 == _near(keyed, "PhotosV1", "rings")

    # The new model's collection, filled from the live one while the alias still answers from it.
    v2 = create_collection(keyed, "PhotosV2", text_fields=["caption"], image_fields=["image"],
                           service_url=new_svc.http_url, rerank=False, replace=True)
    assert v1["fingerprint"] != v2["fingerprint"] and v2["pinned_by"] == "model"
    assert collection_fingerprint(keyed.collections.get("PhotosV2")) == v2["fingerprint"]
    report = copy_objects(keyed.collections.get("PhotosV1"), keyed.collections.get("PhotosV2"))
    assert report == {"copied": len(objects), "failed": []}
    assert _near(keyed, ALIAS, "rings") == live_v1  # nothing moved yet
    with Client(new_svc.grpc_target) as qvl:
        for uuid in live_v1:  # same ids, same properties, the new model's vectors
            row = keyed.collections.get("PhotosV2").query.fetch_object_by_id(uuid)
            assert row is not None
            fields = [qvl.embed([{"text": row.properties["caption"]}])[0],
                      qvl.embed([{"image": pictures[[p["caption"] for p in pictures].index(
                          row.properties["caption"])]["image"]}])[0]]
            assert cos(_vector(keyed, "PhotosV2", uuid), np.mean(fields, axis=0)) > 0.9999
            assert cos(_vector(keyed, "PhotosV2", uuid), _vector(keyed, "PhotosV1", uuid)) < 0.99

    assert switch_alias(keyed, ALIAS, "PhotosV2") == "PhotosV1"
    assert _near(keyed, ALIAS, "rings") == _near(keyed, "PhotosV2", "rings")
    # The old service can go: queries through the alias no longer need it.
    old_svc.stop()
    try:
        assert len(_near(keyed, ALIAS, "rings")) == len(objects)
        with pytest.raises(weaviate.exceptions.WeaviateBaseError):
            _near(keyed, "PhotosV1", "rings")
    finally:
        old_svc.start()

    with pytest.raises(CollectionError, match="does not exist"):
        switch_alias(keyed, ALIAS, "NoSuchCollection")
    create_collection(keyed, "PhotosJoint", text_fields=["caption"], image_fields=["image"],
                      service_url=new_svc.http_url, module_vector=False, joint_vector=True, rerank=False,
                      replace=True)
    with pytest.raises(CollectionError, match="ingest"):
        copy_objects(keyed.collections.get("PhotosV2"), keyed.collections.get("PhotosJoint"))
    keyed.alias.delete(alias_name=ALIAS)
    for name in ("PhotosV1", "PhotosV2", "PhotosJoint"):
        keyed.collections.delete(name)
