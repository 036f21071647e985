"""docs/weaviate.md's raw GraphQL queries run on the real Weaviate with the two headers the docs name
(X-VoyageAI-Api-Key for the multi2vec-voyageai query vectors, X-Cohere-Api-Key for reranker-cohere),
and Weaviate refuses them without those headers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import weaviate

from connectors.weaviate import api_key_headers, create_collection
from qvl_devtools.launchers.weaviate import WeaviateServer, connect
from tests.integration.weaviate.conftest import DOCS_TOKEN as TOKEN
from tests.integration.weaviate.conftest import b64
from tests.media_factory import video_bytes
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.weaviate, pytest.mark.service]

DOC = Path(__file__).parents[3] / "docs" / "weaviate.md"


@pytest.fixture(scope="module")
def collections(module_weaviate: WeaviateServer, token_service: ServiceProcess,
                images: dict[str, bytes]) -> Iterator[dict[str, str]]:
    """Photos and Clips as docs/weaviate.md creates them, with a few objects; the media to query with."""
    client: weaviate.WeaviateClient = connect(module_weaviate, headers=api_key_headers(TOKEN))
    try:
        create_collection(client, "Photos", text_fields=["caption"], image_fields=["photo"],
                          service_url=token_service.http_url, token=TOKEN, replace=True)
        create_collection(client, "Clips", text_fields=["title"], video_fields=["clip"],
                          service_url=token_service.http_url, token=TOKEN, replace=True)
        jpeg = images["wide_640x160.jpg"]
        clip = video_bytes(frames=4, fps=2, size=(96, 64))
        photos = client.collections.get("Photos").data.insert_many(
            [{"caption": c, "photo": b64(images[n])} for c, n in (("a red bicycle", "rings_256x256.png"),
                                                                    ("a harbour", "wide_640x160.jpg"))])
        clips = client.collections.get("Clips").data.insert_many([{"title": "a short clip", "clip": b64(clip)}])
        assert not photos.has_errors and not clips.has_errors, (photos.errors, clips.errors)
        yield {"<base64 JPEG>": b64(jpeg), "<base64 MP4>": b64(clip)}
        client.collections.delete(["Photos", "Clips"])
    finally:
        client.close()


def documented_queries(media: dict[str, str]) -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## GraphQL"):text.index("## Profiles and dimensions")]
    queries = []
    for block in re.findall(r"```graphql\n(.*?)```", section, re.S):
        # A block holds one multi-line query, or one query per line.
        parts = [block] if block.lstrip().startswith("{\n") else [line for line in block.splitlines() if line]
        for query in parts:
            for placeholder, value in media.items():
                query = query.replace(placeholder, value)
            queries.append(query)
    return queries


def graphql(server: WeaviateServer, query: str, headers: dict[str, str]) -> dict[str, Any]:
    resp = httpx.post(f"{server.url}/v1/graphql", json={"query": query}, headers=headers, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_the_documented_graphql_runs_with_the_documented_headers(module_weaviate: WeaviateServer,
                                                                  collections: dict[str, str]) -> None:
    text = DOC.read_text(encoding="utf-8")
    assert '-H "X-VoyageAI-Api-Key: $QVL_TOKEN" -H "X-Cohere-Api-Key: $QVL_TOKEN"' in text
    headers = {"X-VoyageAI-Api-Key": TOKEN, "X-Cohere-Api-Key": TOKEN}
    queries = documented_queries(collections)
    assert len(queries) == 4
    for query in queries:
        answer = graphql(module_weaviate, query, headers)
        assert "errors" not in answer, (query[:80], answer)
        [(_, found)] = answer["data"]["Get"].items()
        assert found, query[:80]
    reranked = graphql(module_weaviate, queries[0], headers)["data"]["Get"]["Photos"]
    assert all(isinstance(o["_additional"]["rerank"][0]["score"], float) for o in reranked)
    # Without the headers: Weaviate's own refusal, naming the header the docs say to send.
    refused = graphql(module_weaviate, queries[0], {})
    assert "X-VoyageAI-Api-Key" in str(refused.get("errors")), refused
    no_rerank_key = graphql(module_weaviate, queries[0], {"X-VoyageAI-Api-Key": TOKEN})
    assert "X-Cohere-Api-Key" in str(no_rerank_key.get("errors")), no_rerank_key
