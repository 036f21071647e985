"""Weaviate's per-collection API modules pointed at qvl by baseURL, with qvl behind a token:
multi2vec-voyageai (the default with media), multi2vec-jinaai, multi2vec-cohere, text2vec-openai
(the default for text) and reranker-cohere, on the real Weaviate 1.39 server.

Stored vectors are held to qvl's own document embeddings of each field, combined as Weaviate
combines them (the mean, or the normalized weights, over texts, then images, then videos); the
vector behind nearText / nearImage / nearVideo to qvl's query embedding where the module says
"query" (voyageai always, jinaai for texts), checked through the distances Weaviate returns.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import weaviate
import yaml
from weaviate.classes.query import MetadataQuery, NearMediaType, Rerank
from weaviate.collections import Collection

from connectors.client import Client
from connectors.weaviate import MODULE_VECTOR, api_key_headers, create_collection
from qvl_devtools.launchers.weaviate import API_MODULES, WeaviateServer, connect, module_env
from tests.integration.weaviate.conftest import b64, cos
from tests.media_factory import video_bytes
from tests.support.service import ServiceProcess
from vectorizer_service.core.settings import DEFAULT_EMBED_INSTRUCTION as DOC
from vectorizer_service.core.settings import DEFAULT_QUERY_INSTRUCTION as QUERY

pytestmark = [pytest.mark.weaviate, pytest.mark.service]

TOKEN = "api-modules-token"
MAX_ITEMS = 64  # QVL_MAX_ITEMS_PER_REQUEST: text2vec-openai's batches are larger
PROFILES = {
    "shelf": {"instruction": "Represent the shelf item for search", "query_instruction": "Find shelf items",
              "rerank_instruction": "Judge whether the shelf item fits the request", "dimensions": 32},
    "gallery": {"instruction": "Represent the gallery picture", "query_instruction": "Find gallery pictures"},
}
VIDEO_PARITY = 0.998  # DESIGN: video through base64 vs gRPC bytes


@pytest.fixture(scope="module")
def api_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    settings = tmp_path_factory.mktemp("qvl-api-settings") / "settings.yaml"
    settings.write_text(yaml.safe_dump({"profiles": PROFILES}))
    with ServiceProcess(token=TOKEN, args=["--settings", str(settings)],
                        env={"QVL_MAX_ITEMS_PER_REQUEST": str(MAX_ITEMS)}) as svc:
        yield svc


@pytest.fixture(scope="module")
def api_wv(module_weaviate: WeaviateServer) -> Iterator[weaviate.WeaviateClient]:
    """The shared Weaviate (no key in its environment); this client sends qvl's token as each
    module's API key header."""
    client = connect(module_weaviate, headers=api_key_headers(TOKEN))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def ref(api_service: ServiceProcess) -> Iterator[Client]:
    with Client(api_service.grpc_target, token=TOKEN) as client:
        yield client


def _vectors(col: Collection, uuids: list[str]) -> list[np.ndarray]:
    out = []
    for uuid in uuids:
        obj = col.query.fetch_object_by_id(uuid, include_vector=True)
        assert obj is not None
        out.append(np.asarray(obj.vector[MODULE_VECTOR], dtype=np.float64))
    return out


def _insert(col: Collection, objects: list[dict[str, Any]]) -> list[str]:
    rows = [{k: b64(v) if isinstance(v, bytes) else v for k, v in o.items()} for o in objects]
    result = col.data.insert_many(rows)
    assert not result.has_errors, result.errors
    return [str(result.uuids[i]) for i in range(len(rows))]


def _distances(found: Any) -> dict[str, float]:
    return {str(o.uuid): o.metadata.distance for o in found.objects}


def _check_distances(col: Collection, found: Any, want_query: np.ndarray, other: np.ndarray,
                     tol: float = 1e-4) -> None:
    """Every distance Weaviate returned is 1 - cos(want_query, the stored vector), and not what
    ``other`` (the query embedded with the other instruction) would give."""
    got = _distances(found)
    assert got, "the query found nothing"
    stored = dict(zip(got, _vectors(col, list(got)), strict=True))
    for uuid, distance in got.items():
        assert distance == pytest.approx(1 - cos(want_query, stored[uuid]), abs=tol)
    assert any(abs(d - (1 - cos(other, stored[u]))) > 10 * tol for u, d in got.items())


@pytest.fixture(scope="module")
def media_objects(pictures: list[dict[str, object]]) -> list[dict[str, Any]]:
    videos = [video_bytes(frames=4, fps=2, size=(96, 64), seed=s) for s in range(3)]
    objects: list[dict[str, Any]] = [{"caption": p["caption"], "image": p["image"]} for p in pictures[:3]]
    objects += [{"caption": "a short clip", "image": pictures[3]["image"], "clip": videos[0]},
                {"clip": videos[1]}, {"caption": "words alone"}]
    return objects


@pytest.fixture(scope="module")
def voyage(api_wv: weaviate.WeaviateClient, api_service: ServiceProcess,
           media_objects: list[dict[str, Any]]) -> Iterator[tuple[Collection, list[str]]]:
    info = create_collection(api_wv, "VoyMedia", text_fields=["caption"], image_fields=["image"],
                             video_fields=["clip"], service_url=api_service.http_url, token=TOKEN, replace=True)
    assert info["module"] == "multi2vec-voyageai" and info["reranker"] == "reranker-cohere"
    assert info["base_url"] == f"{api_service.http_url}/v1"
    col = api_wv.collections.get("VoyMedia")
    yield col, _insert(col, media_objects)
    api_wv.collections.delete("VoyMedia")


def _document_mean(ref: Client, obj: dict[str, Any], instruction: str = DOC,
                   dimensions: int | None = None) -> np.ndarray:
    """Weaviate's combination of one object's fields: texts, then images, then videos, averaged."""
    items: list[Any] = []
    if "caption" in obj:
        items.append(obj["caption"])
    if "image" in obj:
        items.append({"image": obj["image"]})
    if "clip" in obj:
        items.append({"video": obj["clip"]})
    return ref.embed(items, instruction=instruction, dimensions=dimensions).astype(np.float64).mean(0)


def test_voyage_stores_qvls_document_embeddings(voyage: tuple[Collection, list[str]], ref: Client,
                                                 media_objects: list[dict[str, Any]]) -> None:
    col, uuids = voyage
    for i, (got, obj) in enumerate(zip(_vectors(col, uuids), media_objects, strict=True)):
        bound = VIDEO_PARITY if "clip" in obj else 0.9999
        assert cos(got, _document_mean(ref, obj)) >= bound, f"object {i}"
        if "clip" not in obj:
            assert cos(got, _document_mean(ref, obj, QUERY)) < 0.9999, f"object {i}"


def test_voyage_near_queries_use_the_query_instruction(voyage: tuple[Collection, list[str]], ref: Client,
                                                        media_objects: list[dict[str, Any]]) -> None:
    col, _ = voyage
    meta = MetadataQuery(distance=True)
    found = col.query.near_text("concentric rings", limit=6, target_vector=MODULE_VECTOR, return_metadata=meta)
    [q], [d] = ref.embed(["concentric rings"], instruction=QUERY), ref.embed(["concentric rings"], instruction=DOC)
    _check_distances(col, found, q, d)

    image = media_objects[1]["image"]
    found = col.query.near_image(b64(image), limit=6, target_vector=MODULE_VECTOR, return_metadata=meta)
    [q], [d] = ref.embed([{"image": image}], instruction=QUERY), ref.embed([{"image": image}], instruction=DOC)
    _check_distances(col, found, q, d)

    video = media_objects[4]["clip"]
    found = col.query.near_media(b64(video), media_type=NearMediaType.VIDEO, limit=6, target_vector=MODULE_VECTOR,
                                 return_metadata=meta)
    [q], [d] = ref.embed([{"video": video}], instruction=QUERY), ref.embed([{"video": video}], instruction=DOC)
    _check_distances(col, found, q, d, tol=2e-3)


def test_reranker_cohere_scores_are_qvls(voyage: tuple[Collection, list[str]], ref: Client) -> None:
    col, _ = voyage
    found = col.query.near_text("stripes", limit=6, target_vector=MODULE_VECTOR,
                                rerank=Rerank(prop="caption", query="horizontal lines"))
    captioned = [o for o in found.objects if o.properties.get("caption")]
    assert len(captioned) >= 3
    scores = [o.metadata.rerank_score for o in captioned]
    want = ref.rerank("horizontal lines", [o.properties["caption"] for o in captioned]).scores.tolist()
    assert scores == pytest.approx(want, abs=1e-4)
    # A blob property travels as base64 and is scored as the image it holds.
    found = col.query.near_text("stripes", limit=3, target_vector=MODULE_VECTOR, return_properties=["image"],
                                rerank=Rerank(prop="image", query="horizontal lines"))
    with_image = [o for o in found.objects if o.properties.get("image")]
    images = [{"image": base64.b64decode(o.properties["image"])} for o in with_image]
    want = ref.rerank("horizontal lines", images).scores.tolist()
    assert [o.metadata.rerank_score for o in with_image] == pytest.approx(want, abs=1e-4)


def test_two_profiles_in_one_weaviate(api_wv: weaviate.WeaviateClient, api_service: ServiceProcess, ref: Client,
                                      pictures: list[dict[str, object]]) -> None:
    objects = [{"caption": p["caption"], "image": p["image"]} for p in pictures[:3]]
    try:
        for name, profile in (("VoyShelf", "shelf"), ("VoyGallery", "gallery")):
            info = create_collection(api_wv, name, text_fields=["caption"], image_fields=["image"],
                                     service_url=api_service.http_url, token=TOKEN, profile=profile, replace=True)
            assert info["base_url"].endswith(f"/profiles/{profile}/v1")
            col = api_wv.collections.get(name)
            uuids = _insert(col, objects)
            settings = PROFILES[profile]
            dims = settings.get("dimensions")
            for got, obj in zip(_vectors(col, uuids), objects, strict=True):
                assert got.shape == (dims or 64,)
                assert cos(got, _document_mean(ref, obj, str(settings["instruction"]), dims)) >= 0.9999
            found = col.query.near_text("a grid", limit=3, target_vector=MODULE_VECTOR,
                                        return_metadata=MetadataQuery(distance=True),
                                        rerank=Rerank(prop="caption", query="a grid"))
            [q] = ref.embed(["a grid"], instruction=str(settings["query_instruction"]), dimensions=dims)
            [d] = ref.embed(["a grid"], instruction=str(settings["instruction"]), dimensions=dims)
            _check_distances(col, found, q, d)
            # reranker-cohere under the profile's path: its rerank instruction.
            want = ref.rerank("a grid", [o.properties["caption"] for o in found.objects],
                              instruction=settings.get("rerank_instruction")).scores.tolist()
            assert [o.metadata.rerank_score for o in found.objects] == pytest.approx(want, abs=1e-4)
    finally:
        for name in ("VoyShelf", "VoyGallery"):
            api_wv.collections.delete(name)


def test_jinaai_queries_texts_as_queries(api_wv: weaviate.WeaviateClient, api_service: ServiceProcess,
                                         ref: Client, pictures: list[dict[str, object]]) -> None:
    objects = [{"caption": p["caption"], "image": p["image"]} for p in pictures[:4]]
    info = create_collection(api_wv, "JinaPics", module="multi2vec-jinaai", text_fields=["caption"],
                             image_fields=["image"], service_url=api_service.http_url, token=TOKEN, replace=True)
    assert info["base_url"] == api_service.http_url
    col = api_wv.collections.get("JinaPics")
    try:
        uuids = _insert(col, objects)
        for got, obj in zip(_vectors(col, uuids), objects, strict=True):
            assert cos(got, _document_mean(ref, obj)) >= 0.9999
        meta = MetadataQuery(distance=True)
        # The model name holds "clip", so query texts come with task retrieval.query ...
        found = col.query.near_text("a tall picture", limit=4, target_vector=MODULE_VECTOR, return_metadata=meta)
        [q], [d] = ref.embed(["a tall picture"], instruction=QUERY), ref.embed(["a tall picture"], instruction=DOC)
        _check_distances(col, found, q, d)
        # ... while a query image travels as an object {image}, with no task: a document.
        image = objects[0]["image"]
        found = col.query.near_image(b64(image), limit=4, target_vector=MODULE_VECTOR, return_metadata=meta)
        [d], [q] = ref.embed([{"image": image}], instruction=DOC), ref.embed([{"image": image}], instruction=QUERY)
        _check_distances(col, found, d, q)
    finally:
        api_wv.collections.delete("JinaPics")


def test_cohere_embeds_everything_as_documents(api_wv: weaviate.WeaviateClient, api_service: ServiceProcess,
                                               ref: Client, pictures: list[dict[str, object]]) -> None:
    objects = [{"caption": p["caption"], "image": p["image"]} for p in pictures[:3]]
    # weaviate-client stores http://host:port as http://host:port/, and multi2vec-cohere asks for
    # {baseURL}/v2/embed: qvl serves //v2/embed as /v2/embed.
    create_collection(api_wv, "CoherePics", module="multi2vec-cohere", text_fields=["caption"],
                      image_fields=["image"], service_url=api_service.http_url, token=TOKEN, dimensions=48,
                      replace=True)
    col = api_wv.collections.get("CoherePics")
    try:
        assert col.config.get().vector_config[MODULE_VECTOR].vectorizer.model["baseURL"].endswith("/")
        uuids = _insert(col, objects)
        for got, obj in zip(_vectors(col, uuids), objects, strict=True):
            assert got.shape == (48,) and cos(got, _document_mean(ref, obj, dimensions=48)) >= 0.9999
        found = col.query.near_text("stripes", limit=3, target_vector=MODULE_VECTOR,
                                    return_metadata=MetadataQuery(distance=True))
        [d], [q] = (ref.embed(["stripes"], instruction=i, dimensions=48) for i in (DOC, QUERY))
        _check_distances(col, found, d, q)  # search_document even for the query: Cohere's module says no more
    finally:
        api_wv.collections.delete("CoherePics")


def _embeddings_requests(svc: ServiceProcess) -> float:
    text = httpx.get(f"{svc.http_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).text
    found = re.findall(r'^qvl_requests_total\{code="200",endpoint="http /v1/embeddings"\} (\S+)$', text, re.M)
    return sum(float(v) for v in found)


def test_text2vec_openai_batches_through_the_rate_limit_headers(api_wv: weaviate.WeaviateClient,
                                                                api_service: ServiceProcess, ref: Client) -> None:
    texts = [f"note number {i} about {'red green blue'.split()[i % 3]} things" for i in range(3 * MAX_ITEMS + 5)]
    info = create_collection(api_wv, "OpenAiNotes", text_fields=["body"], service_url=api_service.http_url, token=TOKEN,
                             replace=True)
    assert info["module"] == "text2vec-openai"
    col = api_wv.collections.get("OpenAiNotes")
    try:
        before = _embeddings_requests(api_service)
        uuids = _insert(col, [{"body": t} for t in texts])
        # Weaviate's OpenAI client sends the first text alone, reads qvl's x-ratelimit-* headers,
        # then the rest in one request (over QVL_MAX_ITEMS_PER_REQUEST: qvl embeds it in parts).
        assert _embeddings_requests(api_service) - before <= 3
        want = np.concatenate([ref.embed(texts[k:k + MAX_ITEMS], instruction=DOC)
                               for k in range(0, len(texts), MAX_ITEMS)])
        got = _vectors(col, uuids)
        assert min(cos(g, w) for g, w in zip(got, want, strict=True)) >= 0.9999
        # No query signal in OpenAI's API: nearText is embedded as a document.
        found = col.query.near_text("red things", limit=5, target_vector=MODULE_VECTOR,
                                    return_metadata=MetadataQuery(distance=True))
        [d], [q] = (ref.embed(["red things"], instruction=i) for i in (DOC, QUERY))
        _check_distances(col, found, d, q)
    finally:
        api_wv.collections.delete("OpenAiNotes")


def test_wrong_or_missing_token_is_refused(module_weaviate: WeaviateServer, api_wv: weaviate.WeaviateClient,
                                           voyage: tuple[Collection, list[str]], api_service: ServiceProcess,
                                           wv: weaviate.WeaviateClient) -> None:
    create_collection(api_wv, "OpenAiLocked", text_fields=["body"], service_url=api_service.http_url, token=TOKEN,
                      replace=True)
    wrong = connect(module_weaviate, headers=api_key_headers("not-the-token"))
    try:
        with pytest.raises(weaviate.exceptions.WeaviateBaseError, match="401"):
            wrong.collections.get("VoyMedia").data.insert({"caption": "refused"})
        with pytest.raises(weaviate.exceptions.WeaviateBaseError, match="401"):
            wrong.collections.get("VoyMedia").query.near_text("refused", target_vector=MODULE_VECTOR)
        with pytest.raises(weaviate.exceptions.WeaviateBaseError, match="401 error: missing or wrong bearer token"):
            wrong.collections.get("OpenAiLocked").data.insert_many([{"body": "refused"}])
        # No key at all (a client without the headers, a Weaviate without the variables).
        with pytest.raises(weaviate.exceptions.WeaviateBaseError, match=r"(?i)api key"):
            wv.collections.get("VoyMedia").data.insert({"caption": "no key"})
    finally:
        wrong.close()
        api_wv.collections.delete("OpenAiLocked")


def test_token_from_weaviates_environment(api_service: ServiceProcess, ref: Client,
                                          pictures: list[dict[str, object]]) -> None:
    # The other way to give the key: VOYAGEAI_APIKEY, OPENAI_APIKEY, ... in Weaviate's environment.
    with WeaviateServer(env=module_env(modules=API_MODULES, api_key=TOKEN)) as server:
        client = connect(server)
        try:
            create_collection(client, "EnvKeyed", image_fields=["image"], service_url=api_service.http_url, token=TOKEN)
            [uuid] = _insert(client.collections.get("EnvKeyed"), [{"image": pictures[0]["image"]}])
            [got] = _vectors(client.collections.get("EnvKeyed"), [uuid])
            [want] = ref.embed([{"image": pictures[0]["image"]}], instruction=DOC)
            assert cos(got, want) >= 0.9999
        finally:
            client.close()


def test_create_collection_names_the_problem(api_wv: weaviate.WeaviateClient, api_service: ServiceProcess) -> None:
    url = api_service.http_url
    with pytest.raises(ValueError, match="unknown module 'multi2vec-palm'"):
        create_collection(api_wv, "Bad", image_fields=["image"], module="multi2vec-palm", service_url=url)
    with pytest.raises(ValueError, match="multi2vec-jinaai embeds no video fields"):
        create_collection(api_wv, "Bad", video_fields=["clip"], module="multi2vec-jinaai", service_url=url)
    with pytest.raises(ValueError, match="text2vec-openai embeds no image fields"):
        create_collection(api_wv, "Bad", image_fields=["image"], module="text2vec-openai", service_url=url)
    with pytest.raises(ValueError, match=r"multi2vec-voyageai sends no dimensions.*profile"):
        create_collection(api_wv, "Bad", image_fields=["image"], dimensions=32, service_url=url)
    with pytest.raises(ValueError, match="unknown reranker"):
        create_collection(api_wv, "Bad", image_fields=["image"], reranker="reranker-palm", service_url=url)
    assert not api_wv.collections.exists("Bad")
