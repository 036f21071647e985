"""reranker-transformers backed by qvl: GraphQL rerank scores equal qvl's Rerank scores."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest
import weaviate
from weaviate.classes.config import DataType, Property
from weaviate.classes.query import MetadataQuery, Rerank
from weaviate.collections import Collection

from connectors.client import Client
from connectors.weaviate.collections import MODULE_VECTOR, create_collection
from qvl_devtools.launchers.weaviate import WeaviateServer
from tests.integration.weaviate.conftest import b64
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.weaviate, pytest.mark.service]

QUERY = "a picture of circles"


@pytest.fixture(scope="module")
def ranked(wv: weaviate.WeaviateClient, qvl_service: ServiceProcess,
           pictures: list[dict[str, object]]) -> Iterator[Collection]:
    create_collection(wv, "RankPics", module="multi2vec-clip", text_fields=["caption"], image_fields=["image"],
                      service_url=qvl_service.http_url, properties=[Property(name="name", data_type=DataType.TEXT)],
                      replace=True)
    col = wv.collections.get("RankPics")
    result = col.data.insert_many([{"caption": p["caption"], "image": b64(p["image"]), "name": p["name"]}
                                   for p in pictures])
    assert not result.has_errors, result.errors
    yield col
    wv.collections.delete("RankPics")


def _graphql(server: WeaviateServer, prop: str, limit: int) -> list[dict[str, object]]:
    """A raw GraphQL query over HTTP (the client's graphql_raw_query is deprecated)."""
    query = f"""{{ Get {{ RankPics(nearText: {{concepts: ["circles"], targetVectors: ["{MODULE_VECTOR}"]}},
                               limit: {limit}) {{
        name caption image
        _additional {{ rerank(property: "{prop}", query: "{QUERY}") {{ score }} }}
    }} }} }}"""
    body = httpx.post(f"{server.url}/v1/graphql", json={"query": query}, timeout=120).raise_for_status().json()
    assert not body.get("errors"), body["errors"]
    return body["data"]["Get"]["RankPics"]


def test_graphql_rerank_on_a_text_property(module_weaviate: WeaviateServer, ranked: Collection, qvl: Client,
                                           pictures: list[dict[str, object]]) -> None:
    rows = _graphql(module_weaviate, "caption", len(pictures))
    assert len(rows) == len(pictures)
    got = [r["_additional"]["rerank"][0]["score"] for r in rows]
    want = qvl.rerank(QUERY, [r["caption"] for r in rows]).scores.tolist()
    assert got == pytest.approx(want, abs=1e-4)
    assert got == sorted(got, reverse=True)  # Weaviate orders by the rerank score


def test_graphql_rerank_on_a_blob_image_property(module_weaviate: WeaviateServer, ranked: Collection,
                                                 qvl: Client) -> None:
    rows = _graphql(module_weaviate, "image", 6)
    got = [r["_additional"]["rerank"][0]["score"] for r in rows]
    images = [base64.b64decode(r["image"]) for r in rows]
    want = qvl.rerank(QUERY, [{"image": img} for img in images]).scores.tolist()
    assert got == pytest.approx(want, abs=1e-4)
    # Scored as images, not as the base64 text: the text scores differ.
    as_text = qvl.rerank(QUERY, [r["image"] for r in rows[:2]]).scores.tolist()
    assert got[:2] != pytest.approx(as_text, abs=1e-4)


def test_client_rerank_metadata(ranked: Collection, qvl: Client) -> None:
    found = ranked.query.near_text(query="circles", limit=4, target_vector=MODULE_VECTOR,
                                   rerank=Rerank(prop="caption", query=QUERY),
                                   return_metadata=MetadataQuery(distance=True))
    scores = [o.metadata.rerank_score for o in found.objects]
    want = qvl.rerank(QUERY, [o.properties["caption"] for o in found.objects]).scores.tolist()
    assert scores == pytest.approx(want, abs=1e-4)
