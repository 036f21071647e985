"""The HTTP listener: Weaviate's module contracts, the JSON API, health, metrics and OpenAPI."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from vectorizer_service import __version__
from vectorizer_service.api.dialects.errors import shaped_error_response
from vectorizer_service.api.dialects.routes import dialect_router
from vectorizer_service.api.http_errors import internal_error
from vectorizer_service.api.http_middleware import BodyLimit, CollapseSlashes, FingerprintHeader, Measured, TokenAuth
from vectorizer_service.api.http_service import HttpService
from vectorizer_service.api.json_api import json_api_router
from vectorizer_service.api.service_info import info_dict
from vectorizer_service.api.weaviate_modules import PREFIXES, health_router, module_router
from vectorizer_service.api.wrong_server import wrong_server_hint
from vectorizer_service.core.errors import InputError, QvlError
from vectorizer_service.core.settings import Settings
from vectorizer_service.serving import metrics
from vectorizer_service.serving.dispatcher import Dispatcher


def build_http_app(dispatcher: Dispatcher, settings: Settings) -> tuple[ASGIApp, HttpService]:
    http = HttpService(dispatcher, settings)
    app = FastAPI(title="qvl", version=__version__,
                  description="Qwen3-VL embeddings and reranking: Weaviate module contracts and a JSON API.")

    # Errors take the shape of the protocol a route speaks: qvl's own, or a dialect's (OpenAI, Cohere, ...).
    @app.exception_handler(QvlError)
    async def _qvl_error(request: Request, exc: QvlError) -> JSONResponse:
        return shaped_error_response(exc, request.url.path)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        hint = wrong_server_hint(request.url.path) if exc.status_code == 404 else None
        message = str(exc.detail) if hint is None else f"{exc.detail}: {hint}"
        return shaped_error_response(InputError(message, status=exc.status_code), request.url.path, code="HTTP")

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        err, request_id = internal_error(request, exc)
        return shaped_error_response(err, request.url.path, request_id)

    @app.get("/.well-known/live", status_code=204)
    async def live() -> Response:
        return Response(status_code=204 if await http.live() else 503)

    @app.get("/.well-known/ready", status_code=204)
    async def ready() -> Response:
        return Response(status_code=204 if await http.is_ready() else 503)

    @app.get("/meta")
    async def meta() -> dict[str, Any]:
        return info_dict(dispatcher, settings)

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        return info_dict(dispatcher, settings)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.include_router(json_api_router(http))
    # The OpenAI/Cohere/Voyage/Jina dialects, at the root and under /profiles/{name}; the root's
    # /v1/rerank is the JSON API's route, which hands foreign bodies to the dialects (dialects.rerank).
    app.include_router(dialect_router(http, with_v1_rerank=False))
    app.include_router(dialect_router(http, with_v1_rerank=True), prefix="/profiles/{name}")
    modules, health = module_router(http), health_router(http)
    for prefix in PREFIXES:
        app.include_router(modules, prefix=prefix)
        if prefix:
            app.include_router(health, prefix=prefix)

    wrapped: ASGIApp = BodyLimit(Measured(FingerprintHeader(app)), settings.max_request_bytes,
                                 dispatcher.admission.wire)
    if settings.token:
        wrapped = TokenAuth(wrapped, settings.token, settings.open_module_routes)
    return CollapseSlashes(wrapped), http
