"""The HTTP API: Weaviate's module contracts, the JSON API for databases, metrics, OpenAPI."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .calls import CallContext, EmbedOptions
from .dispatcher import Dispatcher
from .errors import (
    CancelledError,
    ComputeError,
    InputError,
    OverloadedError,
    QvlError,
    UnavailableError,
)
from .http_schemas import EmbedBody, RerankBody, RerankModuleBody, VectorizeBody, VectorsBody
from .info import info_dict
from .items import Item
from .outputs import EncodedVector
from .request_items import embedding_to_json, error_code, error_dict, item_from_json
from .settings import Settings

Body = TypeVar("Body", bound=BaseModel)
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
UNSUPPORTED_MODALITIES = ("audio", "imu", "thermal", "depth")
MODULE_PATHS = ("/vectorize", "/vectors", "/vectors/", "/rerank", "/meta")


@dataclass
class RouteOptions:
    """Options a collection selects through its inference URL."""

    instruction: str | None = None
    query_instruction: str | None = None
    rerank_instruction: str | None = None
    dimensions: int | None = None


def error_response(err: QvlError) -> JSONResponse:
    body: dict[str, Any] = {"error": str(err), "code": error_code(err)}
    if isinstance(err, InputError) and err.item is not None:
        body["item"] = err.item
    headers = {"Retry-After": "1"} if isinstance(err, OverloadedError | UnavailableError) else None
    metrics.ERRORS.labels(error_code(err).lower()).inc()
    return JSONResponse(body, status_code=err.http_status, headers=headers)


def parse_body(raw: bytes, model: type[Body]) -> Body:
    """JSON whatever the Content-Type (Weaviate's text2vec client sends none)."""
    try:
        data = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"the body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InputError(f"{where}: {first['msg']}", status=422) from None


def _b64_media(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what} is not valid base64") from None


def looks_like_base64_image(value: str) -> bytes | None:
    """A rerank document that is a base64 image (a Weaviate blob property) is scored as an image."""
    if len(value) < 16 or any(c.isspace() for c in value[:64]):
        return None
    try:
        head = base64.b64decode(value[:64] + "=" * (-len(value[:64]) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    if not (head.startswith(IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
        return None
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


class Measured:
    """Requests and latency per route and status (plain ASGI: Starlette's ``BaseHTTPMiddleware``
    costs about as much as a small request's whole handling)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # The router leaves the matched route in the scope.
            endpoint = "http " + getattr(scope.get("route"), "path", "other")
            metrics.REQUESTS.labels(endpoint, str(status)).inc()
            metrics.LATENCY.labels(endpoint).observe(time.perf_counter() - started)


class BodyLimit:
    """Refuses bodies over the limit before reading them (413), chunked ones included."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise InputError(f"request body over {self.limit} bytes", status=413)
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"error": f"request body over {self.limit} bytes", "code": "INVALID_ARGUMENT"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class TokenAuth:
    """Bearer token on every route except health (and the module routes when they are open)."""

    def __init__(self, app: ASGIApp, token: str, open_module_routes: bool) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.open_module_routes = open_module_routes

    def _exempt(self, path: str) -> bool:
        if path.startswith("/.well-known/") or (path.startswith(("/profiles/", "/dim/")) and "/.well-known/" in path):
            return True
        return self.open_module_routes and path.endswith(MODULE_PATHS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._exempt(scope["path"]):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                metrics.ERRORS.labels("unauthenticated").inc()
                response = JSONResponse({"error": "missing or wrong bearer token", "code": "UNAUTHENTICATED"},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class HttpService:
    def __init__(self, dispatcher: Dispatcher, settings: Settings) -> None:
        self.dispatcher = dispatcher
        self.settings = settings
        self.ready = False

    def context(self) -> CallContext:
        return CallContext.within(self.settings.request_timeout_s)

    async def watch(self, request: Request, ctx: CallContext, work: Awaitable[Any]) -> Any:
        """Run ``work``; if the client disconnects first, cancel it (its queued items are dropped)."""
        task = asyncio.ensure_future(work)
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                ctx.cancelled = True
                task.cancel()
                raise CancelledError("the client disconnected")

    async def embed_items(self, request: Request, items: list[Item], options: EmbedOptions,
                          allow_partial: bool = False) -> list[EncodedVector | QvlError]:
        ctx = self.context()
        results = await self.watch(request, ctx, self.dispatcher.embed(items, options, ctx))
        for r in results:
            if isinstance(r, QvlError) and (not allow_partial or not isinstance(r, InputError | ComputeError)):
                raise r
        return results

    def profile(self, name: str) -> RouteOptions:
        if name not in self.settings.profiles:
            known = ", ".join(sorted(self.settings.profiles)) or "none configured"
            raise InputError(f"unknown profile {name!r} (known: {known})", status=404)
        p = self.settings.profiles[name]
        return RouteOptions(p.instruction, p.query_instruction, p.rerank_instruction, p.dimensions)

    # -- Weaviate module routes ---------------------------------------------
    async def vectorize(self, request: Request, opts: RouteOptions) -> dict[str, Any]:
        body = parse_body(await request.body(), VectorizeBody)
        for name in UNSUPPORTED_MODALITIES:
            if getattr(body, name):
                raise InputError(f"{name} inputs are not supported: Qwen3-VL embeds text, images and video",
                                 status=422)
        items = [Item(texts=[t]) for t in body.texts]
        items += [Item(images=[_b64_media(b, f"images[{i}]")]) for i, b in enumerate(body.images)]
        items += [Item(videos=[_b64_media(v, f"video[{i}]")]) for i, v in enumerate(body.video)]
        # clip/bind requests do not say query or object: objects and queries share one instruction.
        options = EmbedOptions(dimensions=opts.dimensions, instruction=opts.instruction)
        vectors = [r.values.tolist() for r in await self.embed_items(request, items, options)]  # type: ignore[union-attr]
        n_t, n_i = len(body.texts), len(body.images)
        out: dict[str, Any] = {"textVectors": vectors[:n_t], "imageVectors": vectors[n_t:n_t + n_i]}
        if body.video:
            out["videoVectors"] = vectors[n_t + n_i:]
        return out

    async def vectors(self, request: Request, opts: RouteOptions) -> dict[str, Any]:
        body = parse_body(await request.body(), VectorsBody)
        if body.config.task_type == "query":
            instruction = opts.query_instruction or self.settings.query_instruction
        else:
            instruction = opts.instruction or self.settings.default_instruction
        dims = body.config.dimensions or opts.dimensions
        [vec] = await self.embed_items(request, [Item(texts=[body.text], instruction=instruction)],
                                       EmbedOptions(dimensions=dims))
        values = vec.values.tolist()  # type: ignore[union-attr]
        return {"text": body.text, "vector": values, "dim": len(values), "dims": len(values)}

    async def rerank_module(self, request: Request, opts: RouteOptions) -> dict[str, Any]:
        body = parse_body(await request.body(), RerankModuleBody)

        def item(value: str) -> Item:
            image = looks_like_base64_image(value)
            return Item(images=[image]) if image is not None else Item(texts=[value])

        ctx = self.context()
        result = await self.watch(request, ctx, self.dispatcher.rerank(
            item(body.query), [item(d) for d in body.documents], opts.rerank_instruction, None, ctx))
        for err in result.errors.values():
            raise err
        return {"query": body.query,
                "scores": [{"document": d, "score": s} for d, s in zip(body.documents, result.scores, strict=True)]}

    # -- JSON API -------------------------------------------------------------
    async def v1_embed(self, request: Request) -> dict[str, Any]:
        body = parse_body(await request.body(), EmbedBody)
        items = [item_from_json(obj, i) for i, obj in enumerate(body.items)]
        options = EmbedOptions(body.dimensions, body.encoding, body.normalize, body.instruction)
        results = await self.embed_items(request, items, options, allow_partial=body.allow_partial)
        embeddings, errors = [], []
        for i, r in enumerate(results):
            if isinstance(r, QvlError):
                errors.append(error_dict(i, r))
                embeddings.append(None)
            else:
                embeddings.append(embedding_to_json(r, body.format))
        dims = next((r.dimensions for r in results if isinstance(r, EncodedVector)), None)
        return {"embeddings": embeddings, "dimensions": dims, "encoding": body.encoding,
                "model": self.dispatcher.model_name("embed") or None, "errors": errors}

    async def v1_rerank(self, request: Request) -> dict[str, Any]:
        body = parse_body(await request.body(), RerankBody)
        query = item_from_json(body.query, None)
        docs = [item_from_json(d, i) for i, d in enumerate(body.documents)]
        ctx = self.context()
        result = await self.watch(request, ctx, self.dispatcher.rerank(query, docs, body.instruction, body.top_k, ctx))
        for err in result.errors.values():
            if not body.allow_partial or not isinstance(err, InputError | ComputeError):
                raise err
        return {"scores": result.scores, "ranking": [{"index": i, "score": result.scores[i]} for i in result.ranking],
                "model": self.dispatcher.model_name("rerank") or None,
                "errors": [error_dict(i, e) for i, e in sorted(result.errors.items())]}


def _doc(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def build_http_app(dispatcher: Dispatcher, settings: Settings) -> tuple[ASGIApp, HttpService]:
    svc = HttpService(dispatcher, settings)
    app = FastAPI(title="qvl", version=__import__("vectorizer_service").__version__,
                  description="Qwen3-VL embeddings and reranking: Weaviate module contracts and a JSON API.")

    @app.exception_handler(QvlError)
    async def _qvl_error(request: Request, exc: QvlError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "code": "HTTP"}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        return error_response(ComputeError(f"internal error: {exc}"))

    @app.get("/.well-known/live", status_code=204)
    async def live() -> Response:
        return Response(status_code=204 if dispatcher.alive or not svc.ready else 503)

    @app.get("/.well-known/ready", status_code=204)
    async def ready() -> Response:
        return Response(status_code=204 if svc.ready and dispatcher.accepting else 503)

    @app.get("/meta")
    async def meta() -> dict[str, Any]:
        return info_dict(dispatcher, settings)

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        return info_dict(dispatcher, settings)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.post("/v1/embed", openapi_extra=_doc(EmbedBody), summary="Embed items")(svc.v1_embed)
    app.post("/v1/rerank", openapi_extra=_doc(RerankBody), summary="Rerank documents")(svc.v1_rerank)

    def bind(handler: Callable[[Request, RouteOptions], Awaitable[Any]],
             resolve: Callable[..., RouteOptions]) -> Callable[[Request], Awaitable[Any]]:
        async def endpoint(request: Request) -> Any:
            return await handler(request, resolve(**request.path_params))
        return endpoint

    def module_routes(prefix: str, resolve: Callable[..., RouteOptions]) -> None:
        for path, handler, model in (("/vectorize", svc.vectorize, VectorizeBody),
                                     ("/vectors", svc.vectors, VectorsBody),
                                     ("/vectors/", svc.vectors, VectorsBody),
                                     ("/rerank", svc.rerank_module, RerankModuleBody)):
            endpoint = bind(handler, resolve)
            app.add_api_route(prefix + path, endpoint, methods=["POST"], openapi_extra=_doc(model),
                              include_in_schema=path != "/vectors/", summary=f"{prefix}{path} (Weaviate module)")
        if prefix:
            # A module configured by environment (bind and the reranker have no per-collection
            # URL) checks {url}/.well-known/ready and reads {url}/meta under the same prefix.
            def health(check: Callable[[], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
                async def endpoint(request: Request) -> Response:
                    resolve(**request.path_params)  # an unknown profile is a 404, not "ready"
                    return await check()
                return endpoint

            async def prefixed_meta(request: Request) -> dict[str, Any]:
                resolve(**request.path_params)
                return info_dict(dispatcher, settings)

            app.add_api_route(prefix + "/.well-known/ready", health(ready), methods=["GET"], include_in_schema=False)
            app.add_api_route(prefix + "/.well-known/live", health(live), methods=["GET"], include_in_schema=False)
            app.add_api_route(prefix + "/meta", prefixed_meta, methods=["GET"], include_in_schema=False)

    module_routes("", lambda: RouteOptions())
    module_routes("/profiles/{name}", lambda name: svc.profile(name))
    module_routes("/dim/{dimensions:int}", lambda dimensions: RouteOptions(dimensions=dimensions))

    wrapped: ASGIApp = BodyLimit(Measured(app), settings.max_request_bytes)
    if settings.token:
        wrapped = TokenAuth(wrapped, settings.token, settings.open_module_routes)
    return wrapped, svc
