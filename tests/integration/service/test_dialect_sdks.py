"""The dialects through the real SDKs (openai, langchain-openai, cohere, voyageai), held to qvl's
own /v1/embed and /v1/rerank with the same instruction and dimensions."""

from __future__ import annotations

import base64

import cohere
import numpy as np
import openai
import pytest
import voyageai
import voyageai.error
from langchain_openai import OpenAIEmbeddings

from tests.integration.service.dialect_support import (
    DOC,
    JPEG,
    PNG,
    PROFILES,
    QUERY,
    TOKEN,
    VIDEO,
    b64,
    cosines,
    data_uri,
    qvl_embed,
    qvl_rerank,
)
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.service, pytest.mark.slow]

TEXTS = ["a red bicycle leaning on a wall", "the quick brown fox", "数据库里的向量"]
DOCS = ["bicycles for sale", "a fox in the snow", "vector databases", "a recipe for bread"]
COS = 0.9999
DELTA = 1e-3


def close(got: object, want: np.ndarray, what: str) -> float:
    c = cosines(got, want)
    print(f"{what}: min cos {c.min():.7f}")
    assert c.min() >= COS, (what, c)
    return float(c.min())


def differs(got: object, other: np.ndarray) -> None:
    """The instruction chose the vectors: the other instruction's are measurably different."""
    assert cosines(got, other).max() < 0.9999


def scores_match(results: list[tuple[int, float]], reference: list[float], top: int, what: str) -> None:
    deltas = [abs(score - reference[i]) for i, score in results]
    print(f"{what}: max |delta| {max(deltas):.2e}")
    assert max(deltas) <= DELTA
    assert [i for i, _ in results] == sorted(range(len(reference)), key=lambda i: (-reference[i], i))[:top]


# -- OpenAI -------------------------------------------------------------------------------------------
def test_openai_sdk_embeddings_equal_qvl(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    client = openai.OpenAI(base_url=svc.http_url + "/v1", api_key=TOKEN, max_retries=0)
    doc, query = qvl_embed(svc, TEXTS, DOC), qvl_embed(svc, TEXTS, QUERY)
    # The SDK asks for base64 (little-endian float32) when the caller names no encoding.
    default = client.embeddings.create(input=TEXTS, model="Qwen/Qwen3-VL-Embedding-2B")
    assert [d.index for d in default.data] == [0, 1, 2]
    assert default.usage.prompt_tokens > 0 and default.usage.total_tokens == default.usage.prompt_tokens
    close([d.embedding for d in default.data], doc, "openai base64, no input_type = document")
    differs([d.embedding for d in default.data], query)
    as_float = client.embeddings.create(input=TEXTS, model="text-embedding-3-small", encoding_format="float",
                                        dimensions=32)
    close([d.embedding for d in as_float.data], qvl_embed(svc, TEXTS, DOC, 32), "openai float, 32 dimensions")
    one = client.embeddings.create(input=TEXTS[1], model="any")
    close([one.data[0].embedding], doc[1:2], "openai one string")
    asked = client.embeddings.create(input=TEXTS, model="any", extra_body={"input_type": "query"})
    close([d.embedding for d in asked.data], query, "openai input_type query")


def test_openai_sdk_errors(dialect_service: ServiceProcess) -> None:
    url = dialect_service.http_url + "/v1"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).embeddings.create(input="x", model="m")
    client = openai.OpenAI(base_url=url, api_key=TOKEN, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="token 100256 is not in cl100k_base") as tokens:
        client.embeddings.create(input=[[1, 2, 100256]], model="m")  # token arrays: test_token_arrays.py
    assert tokens.value.param == "input[0]" and tokens.value.code == "invalid_argument"
    with pytest.raises(openai.BadRequestError, match="between 32 and 64") as dims:
        client.embeddings.create(input=["x"], model="m", dimensions=16)
    assert dims.value.param == "dimensions"
    with pytest.raises(openai.BadRequestError, match=r"item 1: .*text/plain, neither an image nor a video") as bad:
        client.embeddings.create(input=["fine", "data:text/plain;base64,aGk="], model="m")
    assert bad.value.param == "input[1]"


def test_langchain_openai_embeddings(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    emb = OpenAIEmbeddings(model="qwen3-vl", base_url=svc.http_url + "/v1", api_key=TOKEN,
                           check_embedding_ctx_length=False, max_retries=0)
    doc = qvl_embed(svc, TEXTS, DOC)
    close(emb.embed_documents(TEXTS), doc, "langchain embed_documents")
    # LangChain's embed_query sends what embed_documents does: no signal, so a document.
    close([emb.embed_query(TEXTS[0])], doc[:1], "langchain embed_query")
    # The model field names a profile: its instruction and dimensions.
    products = OpenAIEmbeddings(model="products", base_url=svc.http_url + "/v1", api_key=TOKEN,
                                check_embedding_ctx_length=False, max_retries=0)
    p = PROFILES["products"]
    close(products.embed_documents(TEXTS), qvl_embed(svc, TEXTS, p["instruction"], p["dimensions"]),
          "langchain model=products profile")


# -- Cohere ---------------------------------------------------------------------------------------------
def test_cohere_sdk_embed_types_and_instructions(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    co = cohere.ClientV2(base_url=svc.http_url, api_key=TOKEN)
    types = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
    got = co.embed(texts=TEXTS, model="embed-v4.0", input_type="search_query", embedding_types=types)
    query = qvl_embed(svc, TEXTS, QUERY)
    floats = np.array(got.embeddings.float_)
    close(floats, query, "cohere search_query float")
    close(np.frombuffer(b"".join(base64.b64decode(s) for s in got.embeddings.base64), "<f4")
          .reshape(len(TEXTS), -1), query, "cohere base64")
    int8 = np.array(got.embeddings.int8)
    assert int8.min() >= -127 and int8.max() <= 127 and cosines(int8, floats).min() >= 0.999
    assert (np.array(got.embeddings.uint8) == int8 + 128).all()
    ubinary = np.array(got.embeddings.ubinary, dtype=np.uint8)
    assert (np.unpackbits(ubinary, axis=1)[:, :floats.shape[1]] == (floats > 0)).all()
    assert (np.array(got.embeddings.binary) == ubinary.astype(int) - 128).all()
    assert got.texts == TEXTS and got.id and got.meta.billed_units.input_tokens > 0
    documents = co.embed(texts=TEXTS, model="embed-v4.0", input_type="search_document", embedding_types=["float"],
                         output_dimension=32)
    close(documents.embeddings.float_, qvl_embed(svc, TEXTS, DOC, 32), "cohere search_document, 32 dimensions")


def test_cohere_sdk_images_and_mixed_inputs(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    co = cohere.ClientV2(base_url=svc.http_url, api_key=TOKEN)
    images = co.embed(images=[data_uri(PNG), data_uri(JPEG, "image/jpeg")], model="embed-v4.0", input_type="image",
                      embedding_types=["float"])
    close(images.embeddings.float_, qvl_embed(svc, [{"image": b64(PNG)}, {"image": b64(JPEG)}], DOC),
          "cohere images")
    mixed = co.embed(inputs=[{"content": [{"type": "text", "text": "a caption"},
                                          {"type": "image_url", "image_url": {"url": data_uri(JPEG, "image/jpeg")}}]}],
                     model="embed-v4.0", input_type="search_query", embedding_types=["float"])
    close(mixed.embeddings.float_, qvl_embed(svc, [{"text": "a caption", "image": b64(JPEG)}], QUERY),
          "cohere inputs text+image, one vector")


def test_cohere_sdk_rerank_and_errors(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    co = cohere.ClientV2(base_url=svc.http_url, api_key=TOKEN)
    reference = qvl_rerank(svc, "fox", DOCS)
    got = co.rerank(model="rerank-v3.5", query="fox", documents=DOCS, top_n=2)
    scores_match([(r.index, r.relevance_score) for r in got.results], reference, 2, "cohere rerank")
    with pytest.raises(cohere.errors.UnauthorizedError):
        cohere.ClientV2(base_url=svc.http_url, api_key="wrong").embed(texts=["x"], model="m",
                                                                      input_type="search_query")
    with pytest.raises(cohere.errors.BadRequestError) as bad:
        co.embed(texts=["x"], model="m", input_type="search_everything")
    assert "input_type: unknown value 'search_everything'" in bad.value.body["message"]


# -- Voyage -------------------------------------------------------------------------------------------
def test_voyage_sdk_embed_and_multimodal(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    # The SDK takes the base URL (it appends /embeddings, /multimodalembeddings, /rerank).
    vo = voyageai.Client(api_key=TOKEN, base_url=svc.http_url + "/v1", max_retries=0)
    query, doc = qvl_embed(svc, TEXTS, QUERY), qvl_embed(svc, TEXTS, DOC)
    close(vo.embed(TEXTS, model="voyage-3.5", input_type="query").embeddings, query, "voyage embed query")
    close(vo.embed(TEXTS, model="voyage-3.5", input_type="document").embeddings, doc, "voyage embed document")
    close(vo.embed(TEXTS, model="voyage-3.5").embeddings, doc, "voyage embed no input_type")
    small = vo.embed(TEXTS, model="voyage-3.5", input_type="query", output_dimension=32, output_dtype="int8")
    assert cosines(small.embeddings, qvl_embed(svc, TEXTS, QUERY, 32)).min() >= 0.999
    inputs = [{"content": [{"type": "text", "text": "a caption"},
                           {"type": "image_base64", "image_base64": data_uri(PNG)}]},
              {"content": [{"type": "video_base64", "video_base64": data_uri(VIDEO, "video/mp4")}]}]
    mm = vo.multimodal_embed(inputs, model="voyage-multimodal-3", input_type="query")
    close(mm.embeddings, qvl_embed(svc, [{"text": "a caption", "image": b64(PNG)}, {"video": b64(VIDEO)}], QUERY),
          "voyage multimodal text+image, video")
    assert mm.text_tokens > 0 and mm.image_pixels == 64 * 48 and mm.video_pixels == 0
    assert mm.total_tokens == mm.text_tokens


def test_voyage_sdk_rerank_and_errors(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    vo = voyageai.Client(api_key=TOKEN, base_url=svc.http_url + "/v1", max_retries=0)
    got = vo.rerank("fox", DOCS, model="rerank-2.5", top_k=3)
    scores_match([(r.index, r.relevance_score) for r in got.results], qvl_rerank(svc, "fox", DOCS), 3,
                 "voyage rerank (/v1/rerank, Voyage's data[])")
    with pytest.raises(voyageai.error.AuthenticationError):
        voyageai.Client(api_key="wrong", base_url=svc.http_url + "/v1", max_retries=0).embed(["x"], model="m")
    bad = [{"content": [{"type": "text", "text": "fine"}]},
           {"content": [{"type": "image_base64", "image_base64": "data:text/plain;base64,aGk="}]}]
    with pytest.raises(voyageai.error.InvalidRequestError, match=r"item 1: inputs\[1\].content\[0\].image_base64"):
        vo.multimodal_embed(bad, model="voyage-multimodal-3")
