"""Errors as HTTP answers, and request bodies read as JSON (the shapes every HTTP route shares)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from vectorizer_service.api.item_codecs import error_code
from vectorizer_service.core.errors import InputError, OverloadedError, QvlError, UnavailableError
from vectorizer_service.serving import metrics

Body = TypeVar("Body", bound=BaseModel)


def error_response(err: QvlError, request_id: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": str(err), "code": error_code(err)}
    if isinstance(err, InputError) and err.item is not None:
        body["item"] = err.item
    if isinstance(err, InputError) and err.limit is not None:
        body["limit"] = err.limit  # which limit refused it: what a caller should change (docs/api.md)
    headers = {"Retry-After": "1"} if isinstance(err, OverloadedError | UnavailableError) else None
    if request_id is not None:
        body["request_id"] = request_id
        headers = {**(headers or {}), "X-Request-Id": request_id}
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
