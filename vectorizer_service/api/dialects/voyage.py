"""Voyage's multimodal embeddings: ``POST /v1/multimodalembeddings`` (the voyageai SDK's
``multimodal_embed``, Weaviate's multi2vec-voyageai).

``inputs: [{content: [{type: text, text} | {type: image_base64, image_base64: data URI} |
{type: image_url, image_url} | {type: video_base64, video_base64} | {type: video_url, video_url}]}]``
(each input one item), ``input_type`` query | document | none (a document), ``output_dimension``,
``output_dtype``, ``encoding_format: base64`` (the SDK always asks for it), ``truncation`` (true, the
default: text past ``QVL_EMBED_MAX_LENGTH`` is cut at the end and the datum says ``truncated_tokens``;
false: refused with a 400). The answer is ``{object: list, data: [{object: embedding,
embedding, index}], model, usage: {text_tokens, image_pixels, video_pixels, total_tokens}}``. Any bad
input fails the request (400 ``{detail}`` naming it). Voyage's text ``embed`` posts to
``/v1/embeddings`` (``openai``), with ``input_type`` there too.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from vectorizer_service.api.dialects.bodies import DialectBody, read_body
from vectorizer_service.api.dialects.content import item_from_parts
from vectorizer_service.api.dialects.embedding import (
    check_dimensions,
    check_inputs,
    embed_parsed,
    parse_each,
    vectors_only,
)
from vectorizer_service.api.dialects.errors import FieldError
from vectorizer_service.api.dialects.instructions import instructions, is_query_input_type
from vectorizer_service.api.dialects.output import check_dtype, render
from vectorizer_service.api.dialects.truncation import voyage_side
from vectorizer_service.api.dialects.usage import embedded_tokens, image_pixels
from vectorizer_service.api.http_service import HttpService
from vectorizer_service.api.service_info import public_model_name
from vectorizer_service.core.errors import InputError
from vectorizer_service.core.items import Item
from vectorizer_service.core.settings import Settings


class MultimodalBody(DialectBody):
    inputs: Any = None
    model: str | None = None
    input_type: str | None = None
    output_dimension: int | None = None
    output_dtype: str | None = None
    encoding_format: str | None = None
    truncation: Any = None  # true (cut at the end; Voyage's default) | false (refuse)


def _input(value: Any, index: int, settings: Settings) -> Item:
    if not isinstance(value, dict) or "content" not in value:
        raise InputError(f"inputs[{index}] must be an object {{content: [parts]}}")
    return item_from_parts(value["content"], f"inputs[{index}].content", settings)


class VoyageApi:
    def __init__(self, http: HttpService) -> None:
        self.http = http

    async def multimodal(self, request: Request) -> dict[str, Any]:
        body, _ = await read_body(self.http, request, MultimodalBody)
        opts = instructions(request, self.http.settings, body.model)
        values = check_inputs(self.http, body.inputs, "inputs")
        is_query = bool(is_query_input_type(body.input_type))
        dtype = check_dtype(body.output_dtype or "float", "output_dtype")
        if body.encoding_format not in (None, "base64"):
            raise FieldError("encoding_format", f"unknown value {body.encoding_format!r}; expected base64 or none")
        dims = check_dimensions(self.http, body.output_dimension if body.output_dimension is not None
                                else opts.dimensions, "output_dimension")
        side = voyage_side(body.truncation)
        parsed = parse_each(values, lambda value, index: _input(value, index, self.http.settings))
        items = [p for p in parsed if isinstance(p, Item)]
        for item in items:
            item.instruction = opts.embedding(is_query)
        vectors = vectors_only(await embed_parsed(self.http, request, parsed, dimensions=dims, truncate=side,
                                                  opts=opts))
        tokens, pixels = await embedded_tokens(self.http.dispatcher, items, vectors), image_pixels(items)
        in_base64 = body.encoding_format == "base64"
        return {"object": "list",
                "data": [{"object": "embedding", "embedding": render(v, dtype, in_base64), "index": i,
                          **({"truncated_tokens": v.cut} if v.cut else {})}
                         for i, v in enumerate(vectors)],
                "model": body.model or public_model_name(self.http.dispatcher.model_name("embed")),
                "usage": {"text_tokens": tokens, "image_pixels": pixels, "video_pixels": 0,
                          "total_tokens": tokens}}
