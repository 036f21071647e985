"""qvl's own JSON API (``/v1/embed``, ``/v1/rerank``): what the SQL functions and scripts call."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from vectorizer_service.api.dialects.errors import rerank_shape, shaped
from vectorizer_service.api.dialects.rerank import ForeignRerank, is_foreign_body
from vectorizer_service.api.http_errors import validate
from vectorizer_service.api.http_schemas import EmbedBody, RerankBody, request_doc
from vectorizer_service.api.http_service import FINGERPRINT_SCOPE, HttpService
from vectorizer_service.api.item_codecs import chunks_to_json, embedding_to_json, error_dict, item_from_json
from vectorizer_service.core.call_context import EmbedOptions
from vectorizer_service.core.chunking import Chunking, chunking_from_json
from vectorizer_service.core.errors import QvlError
from vectorizer_service.core.items import Item, check_item_count
from vectorizer_service.core.model_identity import check_fingerprint
from vectorizer_service.core.ranking import check_rerank_request
from vectorizer_service.core.vector_encoding import EncodedVector


class JsonApi:
    def __init__(self, http: HttpService) -> None:
        self.http = http
        self.foreign_rerank = shaped(rerank_shape, ForeignRerank(http).rerank)

    async def v1_embed(self, request: Request) -> dict[str, Any]:
        body = validate(await self.http.json(request), EmbedBody)
        settings = self.http.settings
        check_item_count(len(body.items), settings)  # before any item is built
        chunking = chunking_from_json(body.chunking)
        items = [item_from_json(obj, i, settings) for i, obj in enumerate(body.items)]
        pinned = check_fingerprint(body.fingerprint, "fingerprint") if body.fingerprint is not None else None
        options = EmbedOptions(body.dimensions, body.encoding, body.normalize, body.instruction, body.truncate,
                               fingerprint=pinned)
        if chunking is not None:
            return await self._embed_chunks(request, body, items, options, chunking)
        results = await self.http.embed_items(request, items, options, allow_partial=body.allow_partial)
        embeddings, errors = [], []
        for i, r in enumerate(results):
            if isinstance(r, QvlError):
                errors.append(error_dict(i, r))
                embeddings.append(None)
            else:
                embeddings.append(embedding_to_json(r, body.format))
        dims = next((r.dimensions for r in results if isinstance(r, EncodedVector)), None)
        return {"embeddings": embeddings, "dimensions": dims, "encoding": body.encoding,
                "model": self.http.dispatcher.model_name("embed") or None,
                "fingerprint": request.scope.get(FINGERPRINT_SCOPE), "errors": errors,
                "truncated": [{"item": i, "tokens": r.cut} for i, r in enumerate(results)
                              if isinstance(r, EncodedVector) and r.cut]}

    async def _embed_chunks(self, request: Request, body: EmbedBody, items: list[Item], options: EmbedOptions,
                            chunking: Chunking) -> dict[str, Any]:
        """``chunks[i]``: item i's parts, each ``{"embedding" | "embedding_b64", "locator"}``."""
        ctx = self.http.context()
        results = await self.http.watch(request, ctx, self.http.dispatcher.embed_chunks(items, options, chunking, ctx))
        for r in results:
            if isinstance(r, QvlError) and r.fails_call(body.allow_partial):
                raise r
        chunks = [None if isinstance(r, QvlError) else chunks_to_json(r, body.format) for r in results]
        dims = next((r[0].vector.dimensions for r in results if not isinstance(r, QvlError) and r), None)
        return {"chunks": chunks, "dimensions": dims, "encoding": body.encoding,
                "model": self.http.dispatcher.model_name("embed") or None,
                "fingerprint": request.scope.get(FINGERPRINT_SCOPE),
                "errors": [error_dict(i, r) for i, r in enumerate(results) if isinstance(r, QvlError)]}

    async def v1_rerank(self, request: Request) -> Any:
        data = await self.http.json(request)
        if is_foreign_body(data):  # Jina, Cohere v1, Voyage, vLLM (docs/api.md: the rule)
            return await self.foreign_rerank(request)
        body = validate(data, RerankBody)
        settings = self.http.settings
        check_rerank_request(len(body.documents), body.top_k, settings)  # before any document is built
        query = item_from_json(body.query, None, settings)
        docs = [item_from_json(d, i, settings) for i, d in enumerate(body.documents)]
        ctx = self.http.context()
        result = await self.http.watch(
            request, ctx, self.http.dispatcher.rerank(query, docs, body.instruction, body.top_k, ctx))
        for err in result.errors.values():
            if err.fails_call(body.allow_partial):
                raise err
        return {"scores": result.scores, "ranking": [{"index": i, "score": result.scores[i]} for i in result.ranking],
                "model": self.http.dispatcher.model_name("rerank") or None, "fingerprint": ctx.fingerprint or None,
                "errors": [error_dict(i, e) for i, e in sorted(result.errors.items())]}


def json_api_router(http: HttpService) -> APIRouter:
    api = JsonApi(http)
    router = APIRouter()
    router.add_api_route("/v1/embed", api.v1_embed, methods=["POST"], openapi_extra=request_doc(EmbedBody),
                         summary="Embed items")
    router.add_api_route("/v1/rerank", api.v1_rerank, methods=["POST"], openapi_extra=request_doc(RerankBody),
                         summary="Rerank documents",
                         description="qvl's own body; a body with model, top_n, return_documents, rank_fields, "
                                     "max_chunks_per_doc, max_tokens_per_doc or truncation is read as Jina's, "
                                     "Cohere v1's, Voyage's or vLLM's and answered in their shape (results[] or, "
                                     "with truncation, Voyage's data[])")
    return router
