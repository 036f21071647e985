"""A collection built with one model is never answered by another (issue 23, item 4), on the real
Weaviate 1.39: collections pinned to the fingerprint of the service they were created against (an
API module through its ``model`` field, multi2vec-clip through its inferenceUrl, the joint vector
through ``ingest``/``search``); then the service restarts on another checkpoint under the SAME path
(another seed: same files, other weights), and every search and every insert is refused with words
that GraphQL shows, while the stored objects stay as they were.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import weaviate

from connectors.client import Client
from connectors.weaviate import JOINT_VECTOR, api_key_headers, create_collection, ingest, search
from connectors.weaviate.search import SearchError
from qvl_devtools.launchers.weaviate import WeaviateServer, connect
from qvl_devtools.tiny_model import build_checkpoint
from tests.integration.weaviate.conftest import b64
from tests.support.service import TINY, ServiceProcess

pytestmark = [pytest.mark.weaviate, pytest.mark.service, pytest.mark.slow, pytest.mark.lifecycle]

KEY = "any-key"  # the service has no token; Weaviate's API modules still want some key to send
COLLECTIONS = {"PinVoy": "multi2vec-voyageai", "PinClip": "multi2vec-clip"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pin-live") / "tiny-qwen3-vl"
    shutil.copytree(TINY, path)
    return path


@pytest.fixture(scope="module")
def svc(live: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    cache = tmp_path_factory.mktemp("pin-cache") / "fingerprints.json"
    with ServiceProcess(embedding_model=str(live), reranker_model=str(live),
                        env={"QVL_FINGERPRINT_CACHE": str(cache)}) as proc:
        yield proc


@pytest.fixture(scope="module")
def keyed(module_weaviate: WeaviateServer) -> Iterator[weaviate.WeaviateClient]:
    client = connect(module_weaviate, headers=api_key_headers(KEY))
    try:
        yield client
    finally:
        client.close()


def _graphql(server: WeaviateServer, collection: str, concept: str) -> dict[str, Any]:
    query = f'{{ Get {{ {collection}(nearText: {{concepts: ["{concept}"]}}, limit: 3) {{ caption }} }} }}'
    return httpx.post(f"{server.url}/v1/graphql", json={"query": query}, timeout=120,
                      headers=api_key_headers(KEY)).raise_for_status().json()


def _objects(pictures: list[dict[str, object]]) -> list[dict[str, str]]:
    return [{"caption": str(p["caption"]), "image": b64(p["image"])} for p in pictures]  # type: ignore[arg-type]


def test_a_model_swapped_under_the_same_path_is_refused(
        svc: ServiceProcess, live: Path, keyed: weaviate.WeaviateClient, module_weaviate: WeaviateServer,
        pictures: list[dict[str, object]], tmp_path: Path) -> None:
    objects = _objects(pictures)
    for name, module in COLLECTIONS.items():
        create_collection(keyed, name, module=module, text_fields=["caption"], image_fields=["image"],
                          service_url=svc.http_url, rerank=False, replace=True)
        inserted = keyed.collections.get(name).data.insert_many(objects[:4])
        assert not inserted.has_errors, inserted.errors
        body = _graphql(module_weaviate, name, "rings")
        assert not body.get("errors") and len(body["data"]["Get"][name]) == 3, body
    create_collection(keyed, "PinJoint", text_fields=["caption"], image_fields=["image"], service_url=svc.http_url,
                      module_vector=False, joint_vector=True, rerank=False, replace=True)
    joint = keyed.collections.get("PinJoint")
    with Client(svc.grpc_target) as qvl:
        report = ingest(joint, pictures[:4], qvl=qvl)
        assert report["inserted"] == 4 and not report["failed"], report
        assert search(joint, "rings", qvl=qvl, k=2, rerank=False)
        before = qvl.info()
        old = next(m.fingerprint for m in before.models if m.task == "embed")

    # Another checkpoint under the same path, same file names and sizes: the service restarts on it.
    svc.stop()
    for src in build_checkpoint(tmp_path / "seed-1", seed=1).iterdir():
        shutil.copy2(src, live / src.name)
    svc.start()
    with Client(svc.grpc_target) as qvl:
        new = next(m.fingerprint for m in qvl.info().models if m.task == "embed")
        assert new != old

        for name in COLLECTIONS:
            col = keyed.collections.get(name)
            body = _graphql(module_weaviate, name, "rings")
            errors = " ".join(e["message"] for e in body.get("errors") or [])
            assert f"pins model fingerprint {old}" in errors and new in errors, (name, body)
            assert "409" in errors, errors
            with pytest.raises(weaviate.exceptions.WeaviateBaseError, match=f"pins model fingerprint {old}"):
                col.data.insert(objects[4])
            with pytest.raises(weaviate.exceptions.WeaviateInsertManyAllFailedError, match=f"409.*{new}"):
                col.data.insert_many(objects[4:])
            assert len(col) == 4  # nothing of the new model got in

        # The joint vector: ingest refuses every object, search refuses the query.
        report = ingest(joint, pictures[4:], qvl=qvl)
        assert report["inserted"] == 0 and len(report["failed"]) == len(pictures) - 4, report
        assert all(old in f["error"] and new in f["error"] for f in report["failed"]), report["failed"]
        with pytest.raises(SearchError, match=old):
            search(joint, "rings", qvl=qvl, k=2, rerank=False)
        assert len(joint) == 4
        assert joint.query.fetch_objects(limit=1, include_vector=True).objects[0].vector[JOINT_VECTOR]

    for name in [*COLLECTIONS, "PinJoint"]:
        keyed.collections.delete(name)
