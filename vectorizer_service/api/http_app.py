"""The HTTP listener: Weaviate's module contracts, the JSON API, health, metrics and OpenAPI."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from vectorizer_service import __version__
from vectorizer_service.api.http_errors import error_response
from vectorizer_service.api.http_middleware import BodyLimit, Measured, TokenAuth
from vectorizer_service.api.http_service import HttpService
from vectorizer_service.api.json_api import json_api_router
from vectorizer_service.api.service_info import info_dict
from vectorizer_service.api.weaviate_modules import PREFIXES, health_router, module_router
from vectorizer_service.core.errors import ComputeError, QvlError
from vectorizer_service.core.settings import Settings
from vectorizer_service.serving import metrics
from vectorizer_service.serving.dispatcher import Dispatcher

log = logging.getLogger("qvl.http")


def build_http_app(dispatcher: Dispatcher, settings: Settings) -> tuple[ASGIApp, HttpService]:
    http = HttpService(dispatcher, settings)
    app = FastAPI(title="qvl", version=__version__,
                  description="Qwen3-VL embeddings and reranking: Weaviate module contracts and a JSON API.")

    @app.exception_handler(QvlError)
    async def _qvl_error(request: Request, exc: QvlError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "code": "HTTP"}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        # The exception's text may say where files lie or what the process holds: it goes to the
        # log, and the caller gets an id to find it there.
        request_id = uuid.uuid4().hex[:16]
        log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc,
                  extra={"request_id": request_id})
        return error_response(ComputeError(f"internal error (request id {request_id}; the service log has it)"),
                              request_id)

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
    modules, health = module_router(http), health_router(http)
    for prefix in PREFIXES:
        app.include_router(modules, prefix=prefix)
        if prefix:
            app.include_router(health, prefix=prefix)

    wrapped: ASGIApp = BodyLimit(Measured(app), settings.max_request_bytes, dispatcher.admission.wire)
    if settings.token:
        wrapped = TokenAuth(wrapped, settings.token, settings.open_module_routes)
    return wrapped, http
