"""Weaviate's module contracts (multi2vec-clip/bind, text2vec-transformers, reranker-transformers).

One router, mounted at ``""``, ``/profiles/{name}`` and ``/dim/{d}``, each also under
``/fingerprint/{f}``: the prefix a collection's inference URL carries selects its options
(``RouteOptions``) and pins the model whose vectors the collection holds. Modules configured by environment
(bind, the reranker) also check ``{url}/.well-known/ready`` and read ``{url}/meta`` under the
prefix: ``health_router`` answers those.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request, Response

from vectorizer_service.api.http_errors import validate
from vectorizer_service.api.http_schemas import RerankModuleBody, VectorizeBody, VectorsBody, request_doc
from vectorizer_service.api.http_service import HttpService
from vectorizer_service.api.route_profiles import RouteOptions, profile_options
from vectorizer_service.api.service_info import info_dict
from vectorizer_service.core.call_context import EmbedOptions
from vectorizer_service.core.errors import InputError
from vectorizer_service.core.items import Item, check_item_count
from vectorizer_service.core.model_identity import check_fingerprint
from vectorizer_service.core.ranking import check_rerank_request

IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
UNSUPPORTED_MODALITIES = ("audio", "imu", "thermal", "depth")
# A collection's inferenceUrl (or BIND_INFERENCE_API) may pin the model's fingerprint before the
# profile or size: the local modules send no model name to carry it (core.model_identity).
PREFIXES = tuple(pin + prefix for pin in ("", "/fingerprint/{fingerprint}")
                 for prefix in ("", "/profiles/{name}", "/dim/{dimensions:int}"))


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


class WeaviateModules:
    def __init__(self, http: HttpService) -> None:
        self.http = http

    def options(self, request: Request) -> RouteOptions:
        """The options of the prefix the request came through (an unknown profile is a 404), and the
        model fingerprint a ``/fingerprint/{f}`` prefix pins."""
        params = request.path_params
        pinned = check_fingerprint(params["fingerprint"], "URL") if "fingerprint" in params else None
        if "name" in params:
            return replace(self.profile(params["name"]), fingerprint=pinned)
        if "dimensions" in params:
            return RouteOptions(dimensions=params["dimensions"], fingerprint=pinned)
        return RouteOptions(fingerprint=pinned)

    def profile(self, name: str) -> RouteOptions:
        return profile_options(self.http.settings, name)

    async def vectorize(self, request: Request, opts: RouteOptions) -> dict[str, Any]:
        body = validate(await self.http.json(request), VectorizeBody)
        for name in UNSUPPORTED_MODALITIES:
            if getattr(body, name):
                raise InputError(f"{name} inputs are not supported: Qwen3-VL embeds text, images and video",
                                 status=422)
        check_item_count(len(body.texts) + len(body.images) + len(body.video), self.http.settings)
        items = [Item(texts=[t]) for t in body.texts]
        items += [Item(images=[_b64_media(b, f"images[{i}]")]) for i, b in enumerate(body.images)]
        items += [Item(videos=[_b64_media(v, f"video[{i}]")]) for i, v in enumerate(body.video)]
        # clip/bind requests do not say query or object: objects and queries share one instruction.
        options = EmbedOptions(dimensions=opts.dimensions, instruction=opts.instruction, profile=opts.profile,
                               fingerprint=opts.fingerprint)
        vectors = [r.values.tolist() for r in await self.http.embed_items(request, items, options)]  # type: ignore[union-attr]
        n_t, n_i = len(body.texts), len(body.images)
        out: dict[str, Any] = {"textVectors": vectors[:n_t], "imageVectors": vectors[n_t:n_t + n_i]}
        if body.video:
            out["videoVectors"] = vectors[n_t + n_i:]
        return out

    async def vectors(self, request: Request, opts: RouteOptions) -> dict[str, Any]:
        body = validate(await self.http.json(request), VectorsBody)
        if body.config.task_type == "query":
            instruction = opts.query_instruction or self.http.settings.query_instruction
        else:
            instruction = opts.instruction or self.http.settings.default_instruction
        dims = body.config.dimensions or opts.dimensions
        [vec] = await self.http.embed_items(request, [Item(texts=[body.text], instruction=instruction)],
                                            EmbedOptions(dimensions=dims, profile=opts.profile,
                                                         fingerprint=opts.fingerprint))
        values = vec.values.tolist()  # type: ignore[union-attr]
        return {"text": body.text, "vector": values, "dim": len(values), "dims": len(values)}

    async def rerank_module(self, request: Request, opts: RouteOptions) -> dict[str, Any]:
        body = validate(await self.http.json(request), RerankModuleBody)
        check_rerank_request(len(body.documents), None, self.http.settings)  # before any document is decoded

        def item(value: str) -> Item:
            image = looks_like_base64_image(value)
            return Item(images=[image]) if image is not None else Item(texts=[value])

        ctx = self.http.context()
        result = await self.http.watch(request, ctx, self.http.dispatcher.rerank(
            item(body.query), [item(d) for d in body.documents], opts.rerank_instruction, None, ctx))
        for err in result.errors.values():
            raise err
        return {"query": body.query,
                "scores": [{"document": d, "score": s} for d, s in zip(body.documents, result.scores, strict=True)]}


def module_router(http: HttpService) -> APIRouter:
    modules = WeaviateModules(http)
    router = APIRouter()

    def bind(handler: Callable[[Request, RouteOptions], Awaitable[Any]]) -> Callable[[Request], Awaitable[Any]]:
        async def endpoint(request: Request) -> Any:
            return await handler(request, modules.options(request))
        return endpoint

    for path, handler, model in (("/vectorize", modules.vectorize, VectorizeBody),
                                 ("/vectors", modules.vectors, VectorsBody),
                                 ("/vectors/", modules.vectors, VectorsBody),
                                 ("/rerank", modules.rerank_module, RerankModuleBody)):
        router.add_api_route(path, bind(handler), methods=["POST"], openapi_extra=request_doc(model),
                             include_in_schema=path != "/vectors/", summary=f"{path} (Weaviate module)")
    return router


def health_router(http: HttpService) -> APIRouter:
    """Readiness, liveness and meta under a prefix (the service's own are at the root)."""
    modules = WeaviateModules(http)
    router = APIRouter(include_in_schema=False)

    @router.get("/.well-known/ready")
    async def ready(request: Request) -> Response:
        modules.options(request)  # an unknown profile is a 404, not "ready"
        return Response(status_code=204 if await http.is_ready() else 503)

    @router.get("/.well-known/live")
    async def live(request: Request) -> Response:
        modules.options(request)
        return Response(status_code=204 if await http.live() else 503)

    @router.get("/meta")
    async def meta(request: Request) -> dict[str, Any]:
        modules.options(request)
        return info_dict(http.dispatcher, http.settings)

    return router
