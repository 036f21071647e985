"""No silent truncation: text past QVL_EMBED_MAX_LENGTH is cut only where the caller's API says so, the
caller learns which items were cut, and usage counts the tokens actually embedded.

Each dialect follows its own API: OpenAI refuses (400 naming the limit) unless qvl's ``truncate`` asks
for a cut; Cohere's ``truncate`` NONE/START/END (END by default); Voyage's ``truncation`` (true by
default); Jina's ``truncate`` (false by default). qvl's own JSON API, gRPC and the Python client take
``truncate`` none/start/end (end by default) and name the cut items.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import cohere
import httpx
import numpy as np
import openai
import pytest
import tiktoken
import voyageai
import voyageai.error
from tokenizers import Tokenizer

from connectors.client import Client, InvalidInput, ItemFailure
from tests.integration.service.dialect_support import PNG, b64, cosines
from tests.support.service import TINY, ServiceProcess

pytestmark = [pytest.mark.service, pytest.mark.slow]

MAX = 256  # QVL_EMBED_MAX_LENGTH of this module's service: the tiny tokenizer is byte-level, so ~150 bytes of text
BODY = "lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 12  # ~700 tokens: far past MAX
LONG = BODY
# Same end, different starts: a cut at the start makes them one text; a cut at the end does not.
SAME_END = ["alpha " + BODY, "bravo " + BODY]
# Same start, different ends: the other way round.
SAME_START = [BODY + " alpha", BODY + " bravo"]
SHORT = "a short text"
TOKENIZER = Tokenizer.from_file(str(TINY / "tokenizer.json"))


def own_tokens(*texts: str) -> int:
    """The texts' own tokens under the served model's tokenizer (what usage counts before any cut)."""
    return sum(len(TOKENIZER.encode(t, add_special_tokens=False).ids) for t in texts)


@pytest.fixture(scope="module")
def short_service() -> Iterator[ServiceProcess]:
    with ServiceProcess(env={"QVL_EMBED_MAX_LENGTH": str(MAX)}) as svc:
        yield svc


def qvl(svc: ServiceProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(svc.http_url + "/v1/embed", json=body, timeout=120)


def vectors(resp: httpx.Response) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return np.array([e["embedding"] for e in resp.json()["embeddings"]])


def one_text(got: Any) -> bool:
    """Two rows are the same embedding."""
    return bool(cosines(got[:1], got[1:2])[0] > 0.99999)


# -- OpenAI (/v1/embeddings) -----------------------------------------------------------------------
def test_openai_refuses_text_past_the_limit_naming_it(short_service: ServiceProcess) -> None:
    client = openai.OpenAI(base_url=short_service.http_url + "/v1", api_key="any", max_retries=0)
    with pytest.raises(openai.BadRequestError, match=r"item 1: .*QVL_EMBED_MAX_LENGTH") as refused:
        client.embeddings.create(input=[SHORT, LONG], model="text-embedding-3-small")
    assert refused.value.param == "input[1]"
    assert f"maximum length of {MAX}" in str(refused.value)


def test_openai_truncate_extension_cuts_says_so_and_counts_what_it_embedded(short_service: ServiceProcess) -> None:
    svc = short_service
    client = openai.OpenAI(base_url=svc.http_url + "/v1", api_key="any", max_retries=0)
    got = client.embeddings.create(input=[SHORT, LONG], model="m", encoding_format="float",
                                   extra_body={"truncate": "end"})
    extra = [d.model_extra or {} for d in got.data]
    assert "truncated_tokens" not in extra[0]
    cut = extra[1]["truncated_tokens"]
    assert cut > 0
    assert got.usage.prompt_tokens == own_tokens(SHORT, LONG) - cut < own_tokens(SHORT, LONG)
    assert cosines([d.embedding for d in got.data], vectors(qvl(svc, {"items": [SHORT, LONG]}))).min() > 0.99999
    ends = client.embeddings.create(input=SAME_START, model="m", extra_body={"truncate": "END"})
    assert one_text([d.embedding for d in ends.data])
    starts = client.embeddings.create(input=SAME_END, model="m", extra_body={"truncate": "START"})
    assert one_text([d.embedding for d in starts.data])
    assert not one_text([d.embedding for d in client.embeddings.create(
        input=SAME_END, model="m", extra_body={"truncate": "end"}).data])


def test_jina_and_nvidia_truncate_on_v1_embeddings(short_service: ServiceProcess) -> None:
    url = short_service.http_url + "/v1/embeddings"
    jina = httpx.post(url, json={"input": [{"text": LONG}], "model": "jina-clip-v2", "truncate": True}, timeout=60)
    assert jina.status_code == 200, jina.text
    assert jina.json()["data"][0]["truncated_tokens"] > 0
    refused = httpx.post(url, json={"input": [{"text": LONG}], "truncate": False}, timeout=60)
    assert refused.status_code == 400 and "QVL_EMBED_MAX_LENGTH" in refused.json()["detail"]
    nvidia = httpx.post(url, json={"input": SAME_END, "input_type": "passage", "truncate": "START"}, timeout=60)
    assert nvidia.status_code == 200, nvidia.text
    assert one_text([d["embedding"] for d in nvidia.json()["data"]])
    bad = httpx.post(url, json={"input": [SHORT], "truncate": "MIDDLE"}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "truncate"


# -- Cohere (/v2/embed) ----------------------------------------------------------------------------
def test_cohere_truncate_none_start_end(short_service: ServiceProcess) -> None:
    co = cohere.ClientV2(base_url=short_service.http_url, api_key="any")
    kw: dict[str, Any] = {"model": "embed-v4.0", "input_type": "search_document", "embedding_types": ["float"]}
    with pytest.raises(cohere.errors.BadRequestError) as refused:
        co.embed(texts=[SHORT, LONG], truncate="NONE", **kw)
    assert "item 1" in refused.value.body["message"] and "QVL_EMBED_MAX_LENGTH" in refused.value.body["message"]
    default = co.embed(texts=[SHORT, LONG], **kw)  # Cohere's default: END
    assert default.meta.warnings and "input 1" in default.meta.warnings[0]
    assert default.meta.billed_units.input_tokens < own_tokens(SHORT, LONG)
    openai_count = httpx.post(short_service.http_url + "/v1/embeddings",
                              json={"input": [SHORT, LONG], "truncate": "end"}, timeout=60).json()["usage"]
    assert default.meta.billed_units.input_tokens == openai_count["prompt_tokens"]
    assert one_text(co.embed(texts=SAME_END, truncate="START", **kw).embeddings.float_)
    assert one_text(co.embed(texts=SAME_START, truncate="END", **kw).embeddings.float_)
    left = httpx.post(short_service.http_url + "/v2/embed", timeout=60,  # Cohere's older name of START
                      json={"texts": SAME_END, "truncate": "LEFT", "input_type": "search_document"})
    assert one_text(left.json()["embeddings"]["float"])
    assert not co.embed(texts=[SHORT], **kw).meta.warnings


# -- Voyage (/v1/embeddings and /v1/multimodalembeddings) ----------------------------------------------
def test_voyage_truncation(short_service: ServiceProcess) -> None:
    vo = voyageai.Client(api_key="any", base_url=short_service.http_url + "/v1", max_retries=0)
    with pytest.raises(voyageai.error.InvalidRequestError, match="QVL_EMBED_MAX_LENGTH"):
        vo.embed([SHORT, LONG], model="voyage-3.5", truncation=False)
    cut = vo.embed([SHORT, LONG], model="voyage-3.5")  # the SDK's default: truncation=True
    assert len(cut.embeddings) == 2 and cut.total_tokens < own_tokens(SHORT, LONG)
    inputs = [{"content": [{"type": "text", "text": LONG}, {"type": "image_base64",
                                                            "image_base64": "data:image/png;base64," + b64(PNG)}]}]
    with pytest.raises(voyageai.error.InvalidRequestError, match=r"item 0: .*QVL_EMBED_MAX_LENGTH"):
        vo.multimodal_embed(inputs, model="voyage-multimodal-3", truncation=False)
    mm = vo.multimodal_embed(inputs, model="voyage-multimodal-3")
    assert 0 < mm.text_tokens < own_tokens(LONG) and mm.total_tokens == mm.text_tokens


# -- qvl's own JSON API and gRPC ------------------------------------------------------------------------
def test_qvl_json_api_truncate_option_names_the_cut_items(short_service: ServiceProcess) -> None:
    svc = short_service
    default = qvl(svc, {"items": [SHORT, LONG, {"text": LONG, "image": b64(PNG)}]})
    assert default.status_code == 200, default.text
    cuts = default.json()["truncated"]
    assert [c["item"] for c in cuts] == [1, 2] and all(c["tokens"] > 0 for c in cuts)
    refused = qvl(svc, {"items": [SHORT, LONG], "truncate": "none"})
    assert refused.status_code == 400 and refused.json()["limit"] == "QVL_EMBED_MAX_LENGTH"
    assert "item 1" in refused.json()["error"]
    media = qvl(svc, {"items": [{"text": LONG, "image": b64(PNG)}], "truncate": "none"})
    assert media.status_code == 400 and "item 0" in media.json()["error"], media.text
    assert one_text(vectors(qvl(svc, {"items": SAME_END, "truncate": "start"})))
    assert not one_text(vectors(qvl(svc, {"items": SAME_END})))
    assert qvl(svc, {"items": [SHORT]}).json()["truncated"] == []


def test_grpc_client_truncate_option(short_service: ServiceProcess) -> None:
    with Client(short_service.grpc_target) as client:
        with pytest.raises(InvalidInput) as refused:
            client.embed([SHORT, LONG], truncate="none")
        assert refused.value.index == 1 and refused.value.limit == "QVL_EMBED_MAX_LENGTH"
        client.embed([SHORT, LONG, {"text": LONG, "image": PNG}])
        assert sorted(client.last_truncated) == [1, 2] and min(client.last_truncated.values()) > 0
        starts = client.embed(SAME_END, truncate="start")
        assert one_text(starts) and client.last_truncated.keys() == {0, 1}
        streamed = list(client.embed_stream([SHORT, LONG], truncate="none"))
        assert isinstance(streamed[1], ItemFailure) and streamed[1].limit == "QVL_EMBED_MAX_LENGTH"
        assert not isinstance(streamed[0], ItemFailure)
        with pytest.raises(InvalidInput, match="truncate must be one of"):
            client.embed([SHORT], truncate="middle")


# -- OpenAI's limit of 2,048 inputs ------------------------------------------------------------------
def test_more_than_2048_inputs_is_a_bad_request_as_at_openai(short_service: ServiceProcess) -> None:
    client = openai.OpenAI(base_url=short_service.http_url + "/v1", api_key="any", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="2049 inputs, over OpenAI's limit of 2048") as refused:
        client.embeddings.create(input=["a"] * 2049, model="text-embedding-3-small")
    assert refused.value.param == "input"


# -- token arrays (LangChain's OpenAIEmbeddings) ---------------------------------------------------
def test_token_arrays_are_held_to_the_limit_in_their_own_tokens(short_service: ServiceProcess) -> None:
    """An array within QVL_EMBED_MAX_LENGTH ids is what OpenAI takes: if the model's tokenizer and
    prompt make it longer, it is cut at the end and says so; a longer array is refused."""
    client = openai.OpenAI(base_url=short_service.http_url + "/v1", api_key="any", max_retries=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", os.environ.get("QVL_TIKTOKEN_CACHE_DIR", "/opt/qvl/tiktoken"))
        ids = tiktoken.get_encoding("cl100k_base").encode(BODY)
    assert len(ids) < MAX < own_tokens(BODY)  # the tiny model's tokenizer is byte-level
    got = client.embeddings.create(input=[ids], model="text-embedding-3-small")
    assert got.data[0].model_extra["truncated_tokens"] > 0
    assert got.usage.prompt_tokens == own_tokens(BODY) - got.data[0].model_extra["truncated_tokens"]
    with pytest.raises(openai.BadRequestError, match=rf"item 0: {MAX + 1} tokens of cl100k_base, over the maximum "
                                                     rf"length of {MAX} \(QVL_EMBED_MAX_LENGTH\)"):
        client.embeddings.create(input=[[9906] * (MAX + 1)], model="text-embedding-3-small")
    with pytest.raises(openai.BadRequestError, match="QVL_EMBED_MAX_LENGTH"):  # asked not to cut: refused
        client.embeddings.create(input=[ids], model="text-embedding-3-small", extra_body={"truncate": False})
