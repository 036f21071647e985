"""Each dialect's error body, so its SDK (and Weaviate's client for it) reads the message.

- openai (``/v1/embeddings``): ``{"error": {message, type, param, code}, "detail", "message"}``: the
  openai SDK and Weaviate's text2vec-openai read ``error``, Jina's clients ``detail``, Weaviate's
  NVIDIA client ``message`` (they all post to this one path).
- cohere (``/v2/embed``, ``/v2/rerank``): ``{"message"}`` (the cohere SDK, Weaviate's Cohere clients).
- voyage (``/v1/multimodalembeddings``): ``{"detail"}`` (the voyageai SDK: a 4xx without it is not
  an authentication error there but a malformed answer; Weaviate's Voyage client).
- rerank (a foreign ``/v1/rerank`` body): ``{"detail", "message"}`` (Jina and Voyage read
  ``detail``, Cohere v1 ``message``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from vectorizer_service.api.http_errors import error_headers, error_response, internal_error
from vectorizer_service.api.item_codecs import error_code
from vectorizer_service.core.errors import InputError, QvlError
from vectorizer_service.serving import metrics

Shape = Callable[[str, QvlError, str], dict[str, Any]]


class FieldError(InputError):
    """Bad input in a named request field (OpenAI's ``param``)."""

    def __init__(self, param: str, reason: str, *, status: int = 400) -> None:
        super().__init__(f"{param}: {reason}", status=status)
        self.param = param


class Unauthenticated(QvlError):
    """A missing or wrong bearer token, as the dialect shapes render it."""

    code = "UNAUTHENTICATED"
    http_status = 401


def _openai_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    return "invalid_request_error" if status < 500 else "server_error"


def _openai_param(err: QvlError) -> str | None:
    if isinstance(err, FieldError):
        return err.param
    if isinstance(err, InputError) and err.item is not None:
        return f"input[{err.item}]"
    return None


def openai_shape(message: str, err: QvlError, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": _openai_type(err.http_status), "param": _openai_param(err),
                      "code": code.lower()},
            "detail": message, "message": message}


def cohere_shape(message: str, err: QvlError, code: str) -> dict[str, Any]:
    return {"message": message}


def voyage_shape(message: str, err: QvlError, code: str) -> dict[str, Any]:
    return {"detail": message}


def rerank_shape(message: str, err: QvlError, code: str) -> dict[str, Any]:
    return {"detail": message, "message": message}


def qvl_rerank_or_foreign_shape(message: str, err: QvlError, code: str) -> dict[str, Any]:
    """``/v1/rerank`` before its body is read: qvl's own fields and the foreign ones."""
    return {"error": message, "code": code, "detail": message, "message": message}


PREFIX = r"(?:/profiles/[^/]+)?"
SHAPES: list[tuple[re.Pattern[str], Shape]] = [
    (re.compile(PREFIX + r"/v1/embeddings"), openai_shape),
    (re.compile(PREFIX + r"/v2/(?:embed|rerank)"), cohere_shape),
    (re.compile(PREFIX + r"/v1/multimodalembeddings"), voyage_shape),
    (re.compile(r"/profiles/[^/]+/v1/rerank"), rerank_shape),
]


def shape_for_path(path: str, *, before_body: bool = False) -> Shape | None:
    """The dialect shape of a path (None: qvl's own). The root's ``/v1/rerank`` speaks qvl's API
    or a foreign one by body: before the body is read (the token, the size limit) it answers both."""
    if before_body and path == "/v1/rerank":
        return qvl_rerank_or_foreign_shape
    for pattern, shape in SHAPES:
        if pattern.fullmatch(path):
            return shape
    return None


def dialect_error_response(shape: Shape, err: QvlError, request_id: str | None = None,
                           code: str | None = None) -> JSONResponse:
    code = code or error_code(err)
    body = shape(str(err), err, code)
    metrics.ERRORS.labels(code.lower()).inc()
    return JSONResponse(body, status_code=err.http_status, headers=error_headers(err, request_id))


def shaped_error_response(err: QvlError, path: str, request_id: str | None = None, *, code: str | None = None,
                          before_body: bool = False) -> JSONResponse:
    shape = shape_for_path(path, before_body=before_body)
    if shape is not None:
        return dialect_error_response(shape, err, request_id, code)
    if code is not None:  # a routing error (404, 405) in qvl's own shape
        return JSONResponse({"error": str(err), "code": code}, status_code=err.http_status)
    return error_response(err, request_id)


def shaped(shape: Shape, handler: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Any]]:
    """An endpoint whose every error, expected or not, answers in ``shape``."""
    async def endpoint(request: Request) -> Any:
        try:
            return await handler(request)
        except QvlError as err:
            return dialect_error_response(shape, err)
        except Exception as exc:
            err, request_id = internal_error(request, exc)
            return dialect_error_response(shape, err, request_id)
    return endpoint
