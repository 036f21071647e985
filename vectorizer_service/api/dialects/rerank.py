"""Reranking in the dialects: Cohere's ``/v2/rerank``, and the Jina / Cohere v1 / Voyage / vLLM
bodies posted to ``/v1/rerank``.

``/v1/rerank`` is also qvl's own JSON API. The rule that tells them apart: a body with any of
``model``, ``top_n``, ``return_documents``, ``rank_fields``, ``max_chunks_per_doc``,
``max_tokens_per_doc`` or ``truncation`` is a foreign one (qvl's own body has none of them and
refuses unknown keys); under ``/profiles/{name}/`` every body is. Among foreign bodies, one with
``truncation`` (the voyageai SDK always sends it) gets Voyage's answer (``data``), the others
Jina's and Cohere's (``results``).

Documents (and the query) are strings, ``{text}`` / ``{image}`` objects, or ``{content: [parts]}``
(vLLM's score API: the parts of one document, text, image_url, video_url). A string that is a
base64 image (a Weaviate blob property, as reranker-cohere sends it) is scored as an image.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Request
from pydantic import Field

from vectorizer_service.api.dialects.bodies import DialectBody, read_body
from vectorizer_service.api.dialects.content import item_from_parts
from vectorizer_service.api.dialects.errors import FieldError
from vectorizer_service.api.dialects.instructions import instructions
from vectorizer_service.api.dialects.jina import jina_item
from vectorizer_service.api.dialects.usage import text_tokens
from vectorizer_service.api.http_service import HttpService
from vectorizer_service.api.service_info import public_model_name
from vectorizer_service.api.weaviate_modules import looks_like_base64_image
from vectorizer_service.core.errors import InputError
from vectorizer_service.core.items import Item
from vectorizer_service.core.ranking import RerankResult, check_rerank_request
from vectorizer_service.core.settings import Settings

FOREIGN_KEYS = ("model", "top_n", "return_documents", "rank_fields", "max_chunks_per_doc", "max_tokens_per_doc",
                "truncation")


def is_foreign_body(data: Any) -> bool:
    return isinstance(data, dict) and any(key in data for key in FOREIGN_KEYS)


class RerankBody(DialectBody):
    query: Any = None
    documents: Any = None
    model: str | None = None
    top_n: int | None = Field(None, ge=1)
    top_k: int | None = Field(None, ge=1)  # Voyage's name for top_n
    return_documents: bool = False


def rerank_item(value: Any, what: str, settings: Settings) -> Item:
    if isinstance(value, str):
        image = looks_like_base64_image(value)
        return Item(images=[image]) if image is not None else Item(texts=[value])
    if isinstance(value, dict):
        if "content" in value:
            if set(value) != {"content"}:
                raise InputError(f"{what}: a content document has only 'content', got keys {sorted(value)}")
            return item_from_parts(value["content"], f"{what}.content", settings)
        try:
            return jina_item(value)
        except InputError as err:
            raise InputError(f"{what}: {err.reason}", status=err.status) from None
    raise InputError(f"{what} must be a string, a {{text}}/{{image}} object or {{content: [parts]}}, "
                     f"got {type(value).__name__}")


def echo_document(value: Any) -> dict[str, Any]:
    return {"text": value} if isinstance(value, str) else value


class Scored:
    """A rerank request's parsed inputs and its result."""

    def __init__(self, body: RerankBody, data: dict[str, Any], result: RerankResult, tokens: int) -> None:
        self.body, self.data, self.result, self.tokens = body, data, result, tokens

    def ranked(self, *, with_documents: bool) -> list[dict[str, Any]]:
        out = []
        for i in self.result.ranking:
            row: dict[str, Any] = {"index": i, "relevance_score": self.result.scores[i]}
            if with_documents:
                row["document"] = echo_document(self.body.documents[i])
            out.append(row)
        return out


async def score(http: HttpService, request: Request) -> Scored:
    body, data = await read_body(http, request, RerankBody)
    opts = instructions(request, http.settings, body.model)
    if body.query is None:
        raise FieldError("query", "is required")
    if not isinstance(body.documents, list) or not body.documents:
        raise FieldError("documents", "must be a non-empty list (strings, {text}/{image} objects or "
                                      "{content: [parts]})")
    top = body.top_n if body.top_n is not None else body.top_k
    check_rerank_request(len(body.documents), top, http.settings)  # before any document is built
    query = rerank_item(body.query, "query", http.settings)
    docs = [rerank_item(d, f"documents[{i}]", http.settings) for i, d in enumerate(body.documents)]
    ctx = http.context()
    result = await http.watch(request, ctx, http.dispatcher.rerank(query, docs, opts.rerank, top, ctx))
    for err in result.errors.values():
        raise err
    return Scored(body, data, result, await text_tokens(http.dispatcher, [query, *docs], "rerank"))


def meta(version: str) -> dict[str, Any]:
    return {"api_version": {"version": version}, "billed_units": {"search_units": 1}}


class ForeignRerank:
    """``/v1/rerank`` with a Jina, Cohere v1, Voyage or vLLM body."""

    def __init__(self, http: HttpService) -> None:
        self.http = http

    async def rerank(self, request: Request) -> dict[str, Any]:
        scored = await score(self.http, request)
        model = scored.body.model or public_model_name(self.http.dispatcher.model_name("rerank"))
        if "truncation" in scored.data:  # the voyageai SDK's body
            return {"object": "list", "data": scored.ranked(with_documents=scored.body.return_documents),
                    "model": model, "usage": {"total_tokens": scored.tokens}}
        return {"id": str(uuid.uuid4()), "model": model,
                "results": scored.ranked(with_documents=scored.body.return_documents),
                "usage": {"total_tokens": scored.tokens}, "meta": meta("1")}
