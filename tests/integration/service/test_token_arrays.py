"""Token arrays on /v1/embeddings: ids in the encoding OpenAI's tokenizer gives the request's
``model`` (cl100k_base for the names LangChain uses) are decoded to text and embedded with the
model's own tokenizer, so LangChain's default ``OpenAIEmbeddings`` (which sends token arrays, and
splits long text into chunks it averages) works unchanged."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import tiktoken
from langchain_openai import OpenAIEmbeddings

from tests.integration.service.dialect_support import DOC, cosines
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.service, pytest.mark.slow]

TEXTS = ["a red bicycle leaning on a wall", "the quick brown fox", "数据库里的向量 🐕"]
TIKTOKEN_DIR = os.environ.get("QVL_TIKTOKEN_CACHE_DIR", "/opt/qvl/tiktoken")


@pytest.fixture(scope="module", autouse=True)
def offline_tiktoken() -> Iterator[None]:
    """LangChain tokenizes on the client with tiktoken: from the copy `make setup` installs (no network)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_DIR)
        yield


def reference(svc: ServiceProcess, texts: list[str]) -> np.ndarray:
    resp = httpx.post(svc.http_url + "/v1/embed", json={"items": texts, "instruction": DOC}, timeout=120)
    assert resp.status_code == 200, resp.text
    return np.array([e["embedding"] for e in resp.json()["embeddings"]])


def test_token_arrays_are_decoded_and_embedded_as_their_text(service: ServiceProcess) -> None:
    client = openai.OpenAI(base_url=service.http_url + "/v1", api_key="any", max_retries=0)
    enc = tiktoken.get_encoding("cl100k_base")
    want = reference(service, TEXTS)
    many = client.embeddings.create(input=[enc.encode(t) for t in TEXTS], model="text-embedding-3-small")
    assert cosines([d.embedding for d in many.data], want).min() > 0.99999
    assert many.usage.prompt_tokens > 0
    one = client.embeddings.create(input=enc.encode(TEXTS[1]), model="text-embedding-ada-002")
    assert cosines([one.data[0].embedding], want[1:2]).min() > 0.99999
    # A name tiktoken does not know (a profile, a Qwen id) gets cl100k_base, as LangChain assumes.
    other = client.embeddings.create(input=[enc.encode(TEXTS[0])], model="Qwen/Qwen3-VL-Embedding-2B")
    assert cosines([other.data[0].embedding], want[:1]).min() > 0.99999


def test_ids_outside_the_encoding_are_refused_naming_the_input(service: ServiceProcess) -> None:
    client = openai.OpenAI(base_url=service.http_url + "/v1", api_key="any", max_retries=0)
    for bad in (10 ** 9, 100256, -1):  # past the vocabulary, a hole in it (cl100k has none at 100256), negative
        with pytest.raises(openai.BadRequestError, match=rf"item 1: token {bad} is not in cl100k_base") as refused:
            client.embeddings.create(input=[[9906], [9906, bad]], model="text-embedding-3-small")
        assert refused.value.param == "input[1]"
    # An encoding this server has no copy of is a clear 400, never a download (there is no network).
    with pytest.raises(openai.BadRequestError, match="o200k_base") as missing:
        client.embeddings.create(input=[[9906]], model="gpt-4o")
    assert "QVL_TIKTOKEN_CACHE_DIR" in str(missing.value)


def test_langchain_default_openai_embeddings_sends_token_arrays(service: ServiceProcess) -> None:
    emb = OpenAIEmbeddings(model="text-embedding-3-small", base_url=service.http_url + "/v1", api_key="any",
                           max_retries=0)  # check_embedding_ctx_length=True: tiktoken arrays
    want = reference(service, TEXTS)
    assert cosines(emb.embed_documents(TEXTS), want).min() > 0.99999
    assert cosines([emb.embed_query(TEXTS[0])], want[:1]).min() > 0.99999


def test_langchain_long_text_chunks_are_averaged(service: ServiceProcess) -> None:
    """LangChain splits text past ``embedding_ctx_length`` tokens into chunks, embeds each (token
    arrays) and averages them by length: the result is that average of qvl's chunk vectors."""
    text = "Vectors live in the database next to the rows they describe, and the model serves them. " * 3
    emb = OpenAIEmbeddings(model="text-embedding-3-small", base_url=service.http_url + "/v1", api_key="any",
                           max_retries=0, embedding_ctx_length=16)
    [got] = emb.embed_documents([text])
    enc = tiktoken.get_encoding("cl100k_base")
    ids = enc.encode(text)
    chunks = [ids[k:k + 16] for k in range(0, len(ids), 16)]
    vectors = reference(service, [enc.decode(c) for c in chunks])
    mean = np.average(vectors, axis=0, weights=[len(c) for c in chunks])
    assert len(chunks) > 3 and cosines([got], [mean / np.linalg.norm(mean)]).min() > 0.9999
