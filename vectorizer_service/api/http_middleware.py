"""ASGI middleware of the HTTP listener: repeated slashes, metrics per route, the body size limit, the
bearer token, the answering model's fingerprint."""

from __future__ import annotations

import json
import re
import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vectorizer_service.api.bearer import bearer_matches
from vectorizer_service.api.dialects.errors import Unauthenticated, shape_for_path, shaped_error_response
from vectorizer_service.api.http_service import FINGERPRINT_SCOPE, HELD_BYTES
from vectorizer_service.api.wrong_server import wrong_server_hint
from vectorizer_service.core.errors import InputError, OverloadedError
from vectorizer_service.core.model_identity import FINGERPRINT_KEY
from vectorizer_service.serving import metrics
from vectorizer_service.serving.admission import HeldBytes, WireBytes

REPEATED_SLASHES = re.compile(r"//+")


class CollapseSlashes:
    """``//v2/embed`` is served as ``/v2/embed``. Weaviate's cohere and nvidia clients append
    ``/v2/embed`` / ``/v1/embeddings`` to a collection's baseURL as plain strings, and the Python
    weaviate-client stores a bare ``http://qvl:8080`` as ``http://qvl:8080/``; the path is
    collapsed before anything else (the token's open routes included) looks at it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "//" in scope["path"]:
            scope = dict(scope)
            scope["path"] = REPEATED_SLASHES.sub("/", scope["path"])
            if scope.get("raw_path"):
                scope["raw_path"] = REPEATED_SLASHES.sub("/", scope["raw_path"].decode("latin-1")).encode("latin-1")
        await self.app(scope, receive, send)


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


class FingerprintHeader:
    """``Qvl-Model-Fingerprint`` on every answer a model computed (embeddings: the embedder's, or the
    route's profile's; rerank: the reranker's), whatever the route's dialect: the route records it in
    the scope (``HttpService.watch``) and the header goes out with the response's start."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            fingerprint = scope.get(FINGERPRINT_SCOPE)
            if message["type"] == "http.response.start" and fingerprint:
                message["headers"] = [*message.get("headers", ()), (FINGERPRINT_KEY.encode(), fingerprint.encode())]
            await send(message)

        await self.app(scope, receive, sending)


class BodyLimit:
    """Refuses bodies over the size limit before reading them (413), chunked ones included, and
    holds each body's bytes in the process-wide budget while its request runs (and, once the body
    is parsed, what it parses into: ``HttpService.json``): past the budget a request is refused
    (503, Retry-After) before its body is read."""

    def __init__(self, app: ASGIApp, limit: int, wire: WireBytes) -> None:
        self.app, self.limit, self.wire = app, limit, wire

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        size = int(declared) if declared is not None and declared.isdigit() else None
        if size is not None and size > self.limit:
            await self._refuse(scope, send)
            return
        held = HeldBytes(self.wire)
        if size:
            try:
                held.hold_or_refuse(size)
            except OverloadedError as err:
                await shaped_error_response(err, scope["path"], before_body=True)(scope, receive, send)
                return
        seen, counted = 0, size or 0

        async def counted_receive() -> Message:
            nonlocal seen, counted
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise InputError(f"request body over {self.limit} bytes", status=413, limit="QVL_MAX_REQUEST_BYTES")
            if seen > counted:  # a chunked body holds its bytes as they arrive
                held.hold_or_refuse(seen - counted)
                counted = seen
            return message

        scope[HELD_BYTES] = held
        try:
            await self.app(scope, counted_receive, send)
        finally:
            held.release()

    async def _refuse(self, scope: Scope, send: Send) -> None:
        message = f"request body over {self.limit} bytes (QVL_MAX_REQUEST_BYTES)"
        shape = shape_for_path(scope["path"], before_body=True)
        payload = (shape(message, InputError(message, status=413, limit="QVL_MAX_REQUEST_BYTES"), "INVALID_ARGUMENT")
                   if shape is not None
                   else {"error": message, "code": "INVALID_ARGUMENT", "limit": "QVL_MAX_REQUEST_BYTES"})
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# Routes are matched whole, never by suffix: "/v1/rerank" ends like "/rerank" but is not one.
HEALTH_ROUTE = re.compile(r"/\.well-known/(live|ready)")
MODULE_ROUTE = re.compile(r"(/fingerprint/[^/]+)?(/profiles/[^/]+|/dim/\d+)?"
                          r"(/vectorize|/vectors/?|/rerank|/meta|/\.well-known/(live|ready))")


class TokenAuth:
    """Bearer token on every route except the service's own health checks, and Weaviate's module
    routes (root and prefixed, their health and meta included) when the operator opens them.
    Prefixed health stays behind the token otherwise: its 404 for an unknown profile would tell
    an anonymous caller which profiles exist."""

    def __init__(self, app: ASGIApp, token: str, open_module_routes: bool) -> None:
        self.app = app
        self.token = token.encode()
        self.open_module_routes = open_module_routes

    def _exempt(self, path: str) -> bool:
        if HEALTH_ROUTE.fullmatch(path):
            return True
        return self.open_module_routes and MODULE_ROUTE.fullmatch(path) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and not self._exempt(scope["path"])
                and not bearer_matches(dict(scope["headers"]).get(b"authorization"), self.token)):
            metrics.ERRORS.labels("unauthenticated").inc()
            message = "missing or wrong bearer token"
            hint = wrong_server_hint(scope["path"])
            if hint is not None:  # a Weaviate client pointed at qvl's port: say so, not just "wrong token"
                message = f"{message}; {hint}"
            # In the shape the route's dialect reads (the voyageai SDK calls a 401 without "detail" a
            # malformed answer, not an authentication error).
            shape = shape_for_path(scope["path"], before_body=True)
            body = (shape(message, Unauthenticated(message), "UNAUTHENTICATED") if shape is not None
                    else {"error": message, "code": "UNAUTHENTICATED"})
            response = JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
