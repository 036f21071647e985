"""Cohere's v2 API: ``POST /v2/embed`` and ``POST /v2/rerank`` (the cohere SDK's ``ClientV2``,
Weaviate's multi2vec-cohere and reranker-cohere).

``/v2/embed`` takes one of ``texts``, ``images`` (data URIs or allow-listed URLs) or ``inputs``
(``[{content: [{type: text, text} | {type: image_url, image_url: {url}}]}]``, each input one
item), ``input_type`` (search_query is a query; search_document, classification, clustering and
image are documents; none: a document), ``embedding_types`` (float, int8, uint8, binary, ubinary,
base64) and ``output_dimension``, and answers ``{id, embeddings: {<type>: [...]}, texts, meta,
response_type: embeddings_by_type}``. Any bad input fails the request (400 naming it): Cohere's
answer has no place for one input's error. Text past ``QVL_EMBED_MAX_LENGTH`` follows ``truncate``
(NONE refuses it with a 400, START/END cut it; END by default, as at Cohere), and ``meta.warnings``
names the cut inputs.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Request

from vectorizer_service.api.dialects.bodies import DialectBody, read_body
from vectorizer_service.api.dialects.content import add_media, item_from_parts, media_reference
from vectorizer_service.api.dialects.embedding import (
    check_dimensions,
    check_inputs,
    embed_parsed,
    parse_each,
    vectors_only,
)
from vectorizer_service.api.dialects.errors import FieldError
from vectorizer_service.api.dialects.instructions import instructions, is_query_input_type
from vectorizer_service.api.dialects.output import DTYPES, render
from vectorizer_service.api.dialects.rerank import meta, score
from vectorizer_service.api.dialects.truncation import cohere_side, cut_items, cut_warning
from vectorizer_service.api.dialects.usage import embedded_tokens
from vectorizer_service.api.http_service import HttpService
from vectorizer_service.core.errors import InputError
from vectorizer_service.core.items import Item
from vectorizer_service.core.settings import Settings

EMBEDDING_TYPES = (*DTYPES, "base64")


class CohereEmbedBody(DialectBody):
    texts: Any = None
    images: Any = None
    inputs: Any = None
    model: str | None = None
    input_type: str | None = None
    embedding_types: list[str] | None = None
    output_dimension: int | None = None
    truncate: Any = None  # NONE | START | END (Cohere's default)


def _text(value: Any, index: int) -> Item:
    if not isinstance(value, str):
        raise InputError(f"texts[{index}] must be a string, got {type(value).__name__}")
    return Item(texts=[value])


def _image(value: Any, index: int) -> Item:
    item = Item()
    add_media(item, "image", media_reference(value, "image", f"images[{index}]"))
    return item


def _input(value: Any, index: int, settings: Settings) -> Item:
    if not isinstance(value, dict) or "content" not in value:
        raise InputError(f"inputs[{index}] must be an object {{content: [parts]}}")
    return item_from_parts(value["content"], f"inputs[{index}].content", settings)


class CohereApi:
    def __init__(self, http: HttpService) -> None:
        self.http = http

    async def embed(self, request: Request) -> dict[str, Any]:
        body, _ = await read_body(self.http, request, CohereEmbedBody)
        opts = instructions(request, self.http.settings, body.model)
        given = [name for name in ("texts", "images", "inputs") if getattr(body, name) is not None]
        if len(given) != 1:
            raise FieldError("texts", "send exactly one of texts, images or inputs" + (f" (got {', '.join(given)})"
                                                                                       if given else ""))
        field = given[0]
        values = check_inputs(self.http, getattr(body, field), field)
        types = body.embedding_types or ["float"]
        for t in types:
            if t not in EMBEDDING_TYPES:
                raise FieldError("embedding_types",
                                 f"unknown type {t!r}; expected some of {', '.join(EMBEDDING_TYPES)}")
        is_query = bool(is_query_input_type(body.input_type))
        dims = check_dimensions(self.http, body.output_dimension if body.output_dimension is not None
                                else opts.dimensions, "output_dimension")
        settings = self.http.settings
        side = cohere_side(body.truncate)
        parse = {"texts": _text, "images": _image,
                 "inputs": lambda value, index: _input(value, index, settings)}[field]
        parsed = parse_each(values, parse)
        for p in parsed:
            if isinstance(p, Item):
                p.instruction = opts.embedding(is_query)
        vectors = vectors_only(await embed_parsed(self.http, request, parsed, dimensions=dims, truncate=side,
                                                  opts=opts))
        items = [p for p in parsed if isinstance(p, Item)]
        embeddings = {t: [render(v, "float", True) if t == "base64" else render(v, t, False) for v in vectors]
                      for t in dict.fromkeys(types)}
        out: dict[str, Any] = {"id": str(uuid.uuid4()), "embeddings": embeddings, "response_type": "embeddings_by_type",
                               "meta": {**meta("2"), "billed_units": {
                                   "input_tokens": await embedded_tokens(self.http.dispatcher, items, vectors),
                                   "images": sum(len(i.images) for i in items)}}}
        cuts = cut_items(vectors)
        if cuts:  # Cohere's answer has no place beside each vector: its meta's warnings say it
            out["meta"]["warnings"] = [cut_warning(cuts, side, self.http.settings.embed_max_length)]
        if field == "texts":
            out["texts"] = values
        return out

    async def rerank(self, request: Request) -> dict[str, Any]:
        scored = await score(self.http, request)
        return {"id": str(uuid.uuid4()), "results": scored.ranked(with_documents=scored.body.return_documents),
                "meta": meta("2")}
