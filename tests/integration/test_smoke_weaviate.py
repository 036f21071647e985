"""A real Weaviate server: the pinned version, a collection with caller-supplied vectors, nearVector."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import weaviate
from weaviate.classes.config import Configure, DataType, Property
from weaviate.classes.data import DataObject
from weaviate.classes.query import MetadataQuery

from tests.support.weaviate import WeaviateServer

pytestmark = pytest.mark.weaviate

EXPECTED_VERSION = "1.39.0"


@pytest.fixture
def client(weaviate_server: WeaviateServer) -> Iterator[weaviate.WeaviateClient]:
    with weaviate.connect_to_custom(
        http_host=weaviate_server.host,
        http_port=weaviate_server.http_port,
        http_secure=False,
        grpc_host=weaviate_server.host,
        grpc_port=weaviate_server.grpc_port,
        grpc_secure=False,
    ) as client:
        yield client


def test_server_version(weaviate_server: WeaviateServer) -> None:
    meta = httpx.get(f"{weaviate_server.url}/v1/meta", timeout=10).raise_for_status().json()
    assert meta["version"] == EXPECTED_VERSION


def test_near_vector_with_self_provided_vectors(
    weaviate_server: WeaviateServer, client: weaviate.WeaviateClient
) -> None:
    name = "SmokeDoc"
    client.collections.delete(name)
    docs = client.collections.create(
        name,
        properties=[Property(name="title", data_type=DataType.TEXT)],
        vector_config=Configure.Vectors.self_provided(),
    )
    try:
        schema = httpx.get(f"{weaviate_server.url}/v1/schema/{name}", timeout=10).raise_for_status().json()
        assert schema["vectorConfig"]["default"]["vectorizer"] == {"none": {}}

        vectors = {"north": [1.0, 0.0, 0.0], "east": [0.0, 1.0, 0.0], "up": [0.0, 0.0, 1.0]}
        result = docs.data.insert_many(
            [DataObject(properties={"title": title}, vector=vector) for title, vector in vectors.items()]
        )
        assert not result.has_errors, result.errors

        found = docs.query.near_vector(
            near_vector=[0.1, 0.9, 0.05], limit=2, return_metadata=MetadataQuery(distance=True)
        )
        titles = [obj.properties["title"] for obj in found.objects]
        assert titles[0] == "east"
        assert len(titles) == 2
        distances = [obj.metadata.distance for obj in found.objects]
        assert all(d is not None for d in distances)
        assert distances == sorted(distances)
    finally:
        client.collections.delete(name)
