"""The dialects' routes, each behind its error shape; mounted at the root and under
``/profiles/{name}`` (``http_app``). Every route is behind the bearer token (``http_middleware``)."""

from __future__ import annotations

from fastapi import APIRouter

from vectorizer_service.api.dialects.cohere import CohereApi, CohereEmbedBody
from vectorizer_service.api.dialects.errors import cohere_shape, openai_shape, rerank_shape, shaped, voyage_shape
from vectorizer_service.api.dialects.openai import EmbeddingsBody, OpenAiEmbeddings
from vectorizer_service.api.dialects.rerank import ForeignRerank, RerankBody
from vectorizer_service.api.dialects.voyage import MultimodalBody, VoyageApi
from vectorizer_service.api.http_schemas import request_doc
from vectorizer_service.api.http_service import HttpService


def dialect_router(http: HttpService, *, with_v1_rerank: bool) -> APIRouter:
    """``with_v1_rerank``: serve ``/v1/rerank`` here (under a profile); at the root it is the JSON
    API's route, which hands foreign bodies to ``ForeignRerank`` itself."""
    openai, cohere, voyage = OpenAiEmbeddings(http), CohereApi(http), VoyageApi(http)
    router = APIRouter(tags=["dialects"])
    routes = [
        ("/v1/embeddings", shaped(openai_shape, openai.embeddings), EmbeddingsBody,
         "Embeddings (OpenAI; Jina items, vLLM messages, NVIDIA, Voyage input_type)"),
        ("/v2/embed", shaped(cohere_shape, cohere.embed), CohereEmbedBody, "Embed (Cohere v2)"),
        ("/v2/rerank", shaped(cohere_shape, cohere.rerank), RerankBody, "Rerank (Cohere v2)"),
        ("/v1/multimodalembeddings", shaped(voyage_shape, voyage.multimodal), MultimodalBody,
         "Multimodal embeddings (Voyage)"),
    ]
    if with_v1_rerank:
        routes.append(("/v1/rerank", shaped(rerank_shape, ForeignRerank(http).rerank), RerankBody,
                       "Rerank (Jina, Cohere v1, Voyage, vLLM)"))
    for path, endpoint, model, summary in routes:
        router.add_api_route(path, endpoint, methods=["POST"], openapi_extra=request_doc(model), summary=summary)
    return router
