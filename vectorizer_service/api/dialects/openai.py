"""``POST /v1/embeddings``: OpenAI's embeddings API, and the bodies others send to the same path.

- OpenAI SDK, LangChain, Weaviate text2vec-openai: ``input`` (a string or strings, or token arrays:
  ``token_arrays``), ``model``, ``dimensions``, ``encoding_format`` float/base64;
- Jina, Weaviate multi2vec-jinaai: ``input`` items ``{text}`` / ``{image}``, ``task``,
  ``dimensions``, ``embedding_type``, ``normalized``;
- vLLM chat-style: ``messages`` (one item from system + user content parts);
- NVIDIA, Weaviate multi2vec-nvidia: ``input`` strings, images among them as
  ``data:image/...;base64,`` URIs, ``input_type`` query/passage;
- the voyageai SDK's ``embed``: ``input``, ``input_type`` query/document, ``output_dimension``,
  ``output_dtype``, ``encoding_format: base64``.

The answer is OpenAI's list: ``{object: list, data: [{object: embedding, index, embedding}], model,
usage: {prompt_tokens, total_tokens}}``, ``data`` in input order, with OpenAI's ``x-ratelimit-*``
headers (see ``RATE_LIMIT_HEADERS``). Up to 2048 inputs (OpenAI's limit, which its callers are
written to: Weaviate's text2vec-openai sends up to 2000) are taken even where
``QVL_MAX_ITEMS_PER_REQUEST`` is lower; they are embedded in calls of that many. With ``allow_partial`` (qvl's
extension) a bad input answers ``embedding: null`` and its ``error`` object in place (Weaviate's
OpenAI client reads ``data[].error``); otherwise it fails the request with a 400 naming it. Text past
``QVL_EMBED_MAX_LENGTH`` is refused as OpenAI refuses it, unless ``truncate`` or ``truncation`` asks
for a cut (``truncation``); a cut input carries ``truncated_tokens`` beside its embedding.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from vectorizer_service.api.dialects.bodies import DialectBody, read_body
from vectorizer_service.api.dialects.content import string_item
from vectorizer_service.api.dialects.embedding import (
    Parsed,
    check_dimensions,
    check_inputs,
    embed_parsed,
    parse_each,
)
from vectorizer_service.api.dialects.errors import FieldError, openai_shape
from vectorizer_service.api.dialects.instructions import Instructions, instructions, is_query_input_type, is_query_task
from vectorizer_service.api.dialects.jina import embedding_type, jina_item
from vectorizer_service.api.dialects.output import check_dtype, render
from vectorizer_service.api.dialects.token_arrays import TokenArrays, is_token_array
from vectorizer_service.api.dialects.truncation import openai_side
from vectorizer_service.api.dialects.usage import embedded_tokens
from vectorizer_service.api.dialects.vllm import item_from_messages
from vectorizer_service.api.http_service import HttpService
from vectorizer_service.api.item_codecs import error_code
from vectorizer_service.api.service_info import public_model_name
from vectorizer_service.core.errors import InputError, QvlError
from vectorizer_service.core.items import Item
from vectorizer_service.core.vector_encoding import EncodedVector


class EmbeddingsBody(DialectBody):
    input: Any = None
    messages: Any = None
    model: str | None = None
    dimensions: int | None = None
    output_dimension: int | None = None  # Voyage
    encoding_format: str | None = None  # OpenAI: float | base64
    embedding_type: Any = None  # Jina: float | base64 | binary | ubinary
    output_dtype: str | None = None  # Voyage: float | int8 | uint8 | binary | ubinary
    input_type: str | None = None  # Voyage, NVIDIA
    task: str | None = None  # Jina
    normalized: bool = True  # Jina
    allow_partial: bool = False  # qvl
    truncate: Any = None  # qvl's extension, Jina (true/false), NVIDIA (NONE/START/END): api.dialects.truncation
    truncation: Any = None  # Voyage (true/false)


OPENAI_MAX_INPUTS = 2048

# qvl limits no rate, but Weaviate's OpenAI client reads these after every answer: without them it
# sends each object's text alone, one request after another; with a budget this large it packs up
# to 2000 texts (285k tokens) a request and sends a batch's requests in parallel. Values are constant:
# the remaining budget is always the whole one.
RATE_LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "100000",
    "x-ratelimit-remaining-requests": "100000",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-limit-tokens": "100000000",
    "x-ratelimit-remaining-tokens": "100000000",
    "x-ratelimit-reset-tokens": "1s",
}

def output_form(body: EmbeddingsBody) -> tuple[str, bool]:
    """(dialect type, in base64) from Jina's embedding_type, Voyage's output_dtype, OpenAI's encoding_format."""
    if body.embedding_type is not None and body.output_dtype is not None:
        raise FieldError("embedding_type", "send embedding_type (Jina) or output_dtype (Voyage), not both")
    dtype, in_base64 = embedding_type(body.embedding_type) if body.embedding_type is not None else ("float", False)
    if body.output_dtype is not None:
        dtype = check_dtype(body.output_dtype, "output_dtype")
    if body.encoding_format is not None:
        if body.encoding_format not in ("float", "base64"):
            raise FieldError("encoding_format", f"unknown value {body.encoding_format!r}; expected float or base64")
        in_base64 = body.encoding_format == "base64"
    return dtype, in_base64


def _arrays_only(value: Any) -> bool:
    """The input is token arrays alone (one, or a list of them): what LangChain sends."""
    return is_token_array(value) or (isinstance(value, list) and bool(value) and all(map(is_token_array, value)))


class OpenAiEmbeddings:
    def __init__(self, http: HttpService) -> None:
        self.http = http
        self.tokens = TokenArrays(http.settings.tiktoken_cache_dir)

    def parse(self, body: EmbeddingsBody, opts: Instructions) -> list[Parsed]:
        said = is_query_input_type(body.input_type)
        by_task = is_query_task(body.task)
        if said is not None and by_task is not None and said != by_task:
            raise FieldError("task", f"says {body.task!r} while input_type says {body.input_type!r}")
        said = said if said is not None else by_task

        def instruction(plain_string: bool) -> str:
            is_query = said if said is not None else (plain_string and opts.plain_strings_are_queries)
            return opts.embedding(is_query)

        if body.messages is not None:
            if body.input is not None:
                raise FieldError("messages", "send input or messages, not both")
            item = item_from_messages(body.messages, self.http.settings)
            if item.instruction is None:
                item.instruction = instruction(False)
            return [item]
        if body.input is None:
            raise FieldError("input", "is required (a string, a list of strings or of {text}/{image} items)")
        one = isinstance(body.input, str | dict) or is_token_array(body.input)
        values = check_inputs(self.http, [body.input] if one else body.input, "input", at_least=OPENAI_MAX_INPUTS)

        def parse(value: Any, index: int) -> Item:
            if isinstance(value, str):
                item = string_item(value, "input")
                item.instruction = instruction(bool(item.texts))
            elif isinstance(value, dict):
                item = jina_item(value)
                item.instruction = instruction(False)
            elif is_token_array(value):
                item = Item(texts=[self.tokens.text(value, body.model, self.http.settings.embed_max_length)])
                item.instruction = instruction(True)
            else:
                raise InputError(f"an input is a string, a token array or a {{text}}/{{image}} object, "
                                 f"got {type(value).__name__}")
            return item

        return parse_each(values, parse)

    async def embeddings(self, request: Request) -> JSONResponse:
        body, _ = await read_body(self.http, request, EmbeddingsBody)
        opts = instructions(request, self.http.settings, body.model)
        dtype, in_base64 = output_form(body)
        dims = body.dimensions if body.dimensions is not None else body.output_dimension
        dims = check_dimensions(self.http, dims if dims is not None else opts.dimensions,
                                "dimensions" if body.dimensions is not None else "output_dimension")
        arrays = _arrays_only(body.input)
        side = openai_side(body.truncate, body.truncation, token_arrays=arrays)
        # Decoding a large batch of token arrays (LangChain sends up to 1000 of 8191) takes a while.
        parsed = await asyncio.to_thread(self.parse, body, opts) if arrays else self.parse(body, opts)
        results = await embed_parsed(self.http, request, parsed, dimensions=dims, normalize=body.normalized,
                                     allow_partial=body.allow_partial, truncate=side, opts=opts)
        tokens = await embedded_tokens(self.http.dispatcher, parsed, results)
        data = [self.datum(i, r, dtype, in_base64) for i, r in enumerate(results)]
        return JSONResponse({"object": "list", "data": data,
                             "model": body.model or public_model_name(self.http.dispatcher.model_name("embed")),
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                            headers=RATE_LIMIT_HEADERS)

    @staticmethod
    def datum(index: int, result: EncodedVector | QvlError, dtype: str, in_base64: bool) -> dict[str, Any]:
        if isinstance(result, EncodedVector):
            datum = {"object": "embedding", "index": index, "embedding": render(result, dtype, in_base64)}
            if result.cut:  # qvl's extension: this input was cut (truncate asked for it) by that many tokens
                datum["truncated_tokens"] = result.cut
            return datum
        return {"object": "embedding", "index": index, "embedding": None,
                "error": openai_shape(str(result), result, error_code(result))["error"]}
