"""What every HTTP route shares: the dispatcher, a call's deadline, disconnect watching, readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from fastapi import Request

from vectorizer_service.api.http_errors import read_json
from vectorizer_service.api.json_shape import VALUE_BYTES, json_values
from vectorizer_service.core.call_context import CallContext, EmbedOptions
from vectorizer_service.core.errors import CancelledError, QvlError
from vectorizer_service.core.items import Item
from vectorizer_service.core.settings import Settings
from vectorizer_service.core.vector_encoding import EncodedVector
from vectorizer_service.serving.admission import HeldBytes
from vectorizer_service.serving.dispatcher import Dispatcher

HELD_BYTES = "qvl.held_bytes"  # the ASGI scope key of a request's HeldBytes (http_middleware.BodyLimit)
PARSED = "qvl.parsed_json"  # the scope key of the body once parsed: read and counted once per request
# The scope key of the fingerprint of the model that answered (http_middleware.FingerprintHeader sends it).
FINGERPRINT_SCOPE = "qvl.fingerprint"


class HttpService:
    def __init__(self, dispatcher: Dispatcher, settings: Settings) -> None:
        self.dispatcher = dispatcher
        self.settings = settings
        self.ready = False

    def context(self) -> CallContext:
        return CallContext.within(self.settings.request_timeout_s)

    async def json(self, request: Request) -> Any:
        """The request's body as JSON, whatever the Content-Type (Weaviate's text2vec client sends
        none). Its values are counted before it is parsed (``json_shape``), and what it parses into
        is held in the byte budget with its bytes until the request ends."""
        if PARSED in request.scope:
            return request.scope[PARSED]
        raw = await request.body()
        values = json_values(raw, self.settings.max_json_values, self.settings.max_json_depth)
        held: HeldBytes | None = request.scope.get(HELD_BYTES)
        if held is not None:  # its strings (at most its bytes) and an object per value
            held.hold_or_refuse(len(raw) + values * VALUE_BYTES)
        request.scope[PARSED] = data = read_json(raw)
        return data

    async def watch(self, request: Request, ctx: CallContext, work: Awaitable[Any]) -> Any:
        """Run ``work``; if the client disconnects first, cancel it (its queued items are dropped)."""
        task = asyncio.ensure_future(work)
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                result = task.result()
                if ctx.fingerprint:
                    request.scope[FINGERPRINT_SCOPE] = ctx.fingerprint
                return result
            if await request.is_disconnected():
                ctx.cancelled = True
                task.cancel()
                raise CancelledError("the client disconnected")

    async def embed_items(self, request: Request, items: list[Item], options: EmbedOptions,
                          allow_partial: bool = False) -> list[EncodedVector | QvlError]:
        ctx = self.context()
        # A request embedded in several calls (dialects.embedding) is answered by one model throughout.
        ctx.fingerprint = request.scope.get(FINGERPRINT_SCOPE, "")
        results = await self.watch(request, ctx, self.dispatcher.embed(items, options, ctx))
        for r in results:
            if isinstance(r, QvlError) and r.fails_call(allow_partial):
                raise r
        return results

    async def live(self) -> bool:
        """The model process answers (or the service is still starting, which is not death)."""
        return self.dispatcher.alive or not self.ready

    async def is_ready(self) -> bool:
        return self.ready and self.dispatcher.accepting
