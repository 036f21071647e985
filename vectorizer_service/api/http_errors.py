"""Errors as HTTP answers, and request bodies read as JSON (the shapes every HTTP route shares)."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from vectorizer_service.api.item_codecs import error_code
from vectorizer_service.core.errors import ComputeError, InputError, OverloadedError, QvlError, UnavailableError
from vectorizer_service.serving import metrics

Body = TypeVar("Body", bound=BaseModel)
log = logging.getLogger("qvl.http")


def error_headers(err: QvlError, request_id: str | None = None) -> dict[str, str] | None:
    headers = {"Retry-After": "1"} if isinstance(err, OverloadedError | UnavailableError) else None
    if request_id is not None:
        headers = {**(headers or {}), "X-Request-Id": request_id}
    return headers


def error_response(err: QvlError, request_id: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": str(err), "code": error_code(err)}
    if isinstance(err, InputError) and err.item is not None:
        body["item"] = err.item
    if isinstance(err, InputError) and err.limit is not None:
        body["limit"] = err.limit  # which limit refused it: what a caller should change (docs/api.md)
    if err.error_reason is not None:
        body["reason"] = err.error_reason.value  # what a caller acts on, never the words (docs/api.md)
    if request_id is not None:
        body["request_id"] = request_id
    metrics.ERRORS.labels(error_code(err).lower()).inc()
    return JSONResponse(body, status_code=err.http_status, headers=error_headers(err, request_id))


def internal_error(request: Request, exc: BaseException) -> tuple[ComputeError, str]:
    """An unexpected failure: the exception's text may say where files lie or what the process
    holds, so it goes to the log, and the caller gets an id to find it there."""
    request_id = uuid.uuid4().hex[:16]
    log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc,
              extra={"request_id": request_id})
    return ComputeError(f"internal error (request id {request_id}; the service log has it)"), request_id


def read_json(raw: bytes) -> Any:
    """JSON whatever the Content-Type (Weaviate's text2vec client sends none); its size and depth
    are checked before (``HttpService.json``)."""
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a number of more digits than int() takes
        raise InputError(f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # an unclosed deep nesting the depth check could not measure
        raise InputError("the body is not valid JSON: it nests too deeply", limit="QVL_MAX_JSON_DEPTH") from None


def validate(data: Any, model: type[Body], status: int = 422) -> Body:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InputError(f"{where}: {first['msg']}", status=status) from None

