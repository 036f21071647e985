"""Errors and hints: how a failed call to the service becomes a SQL error that names the failing
input, the reason, what to do (HINT) and a SQLSTATE an application can act on."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from . import spi

# Names the failing input for an error message, from the item index the service reports (or None).
What = Callable[[int | None], str]

SQLSTATE = {400: "22023", 404: "22023", 422: "22023", 413: "54000", 401: "28000", 403: "28000",
            429: "53000", 503: "53000", 504: "57014", 0: "08001"}
MEDIA_HINT = ("Fix or leave out that input: images must be PNG, JPEG, WebP, GIF, BMP or TIFF bytes, videos "
              "MP4, MOV, WebM, MKV or GIF bytes (or a bytea[] of frames), and a path/URI is read only where the "
              "service allows it (QVL_ALLOW_URI_SCHEMES, QVL_ALLOW_URI_ROOTS).")
BUSY_HINT = ("The service's queue is full; retry shortly (more replicas or a larger QVL_QUEUE_MAX_ITEMS "
             "help under load).")
# 503 with the service's reason NOT_READY (its error body's "reason", docs/api.md): not load, so
# QVL_QUEUE_MAX_ITEMS would not help
NOT_READY = "NOT_READY"
UNREADY_HINT = ("The service is loading its models, draining or restarting its model process; retry shortly "
                "(with replicas, list them all: SELECT qvl.set_service('http://a:8080,http://b:8080');).")
# 503 without that reason: the call reached the model and the service could not finish it (its model
# process exited with it), or something in front of the service answered.
UNAVAILABLE_HINT = ("The service could not finish the call (its model process may have exited with it: the "
                    "service log says why); retry shortly.")
TOKEN_HINT = "The installing role sets the token: SELECT qvl.set_service(url, token);"
HINTS = {
    0: "Start the service (qvl serve) or, as the installing role, point qvl at it: "
       "SELECT qvl.set_service('http://host:8080'); (SELECT url FROM qvl.service shows where it points now.)",
    401: TOKEN_HINT,
    403: TOKEN_HINT,
    # A service that does not say which limit it hit (older than the "limit" field).
    413: "Send less, or raise the service's limit that the message names.",
    404: "The service has no model for this call loaded: start qvl serve with --embedding-model and "
         "--reranker-model (QVL_EMBEDDING_MODEL, QVL_RERANKER_MODEL).",
    504: "Send smaller inputs, or allow longer: SET statement_timeout (when it is what ran out), or as the "
         "installing role SELECT qvl.set_service(url, token, timeout_s => 120);",
    500: "The model failed on this input; the service log has the details.",
}

INPUT_HINT = "Fix or leave out that input (DETAIL has the service's words)."
# What a refusal by each of the service's limits asks of the caller; the hint adds the setting that
# raises it. The service names the limit in its error body ("limit", docs/api.md).
LIMIT_ADVICE = {
    "QVL_MAX_TEXT_CHARS": "Send a shorter text (split it into several rows or items)",
    "QVL_EMBED_MAX_LENGTH": "Send fewer or smaller images, or fewer video frames, in one item",
    "QVL_RERANK_MAX_LENGTH": "Send fewer or smaller images, or fewer video frames, in the query and each document",
    "QVL_MAX_RERANK_DOCUMENTS": "Rerank fewer documents in one call (split the array)",
    "QVL_MAX_ITEMS_PER_REQUEST": "Send fewer items in one call",
    "QVL_MAX_REQUEST_BYTES": "Send less in one call (fewer or smaller images, videos or documents)",
    "QVL_MAX_MEDIA_BYTES": "Send a smaller image or a shorter video",
    "QVL_MAX_SOURCE_IMAGE_PIXELS": "Send an image of fewer pixels (scale it down)",
    "QVL_MAX_VIDEO_FRAME_PIXELS": "Send a video of smaller frames",
    "QVL_MAX_VIDEO_SOURCE_FRAMES": "Send a video of fewer frames",
    "QVL_MAX_VIDEO_SECONDS": "Send a shorter video",
    "QVL_MAX_ITEM_DECODED_PIXELS": "Send fewer or smaller images or frames in one item",
    "QVL_MAX_REQUEST_DECODED_PIXELS": "Send fewer or smaller images or videos in one call",
    "QVL_MAX_IMAGES_PER_ITEM": "Send fewer images in one item",
    "QVL_MAX_VIDEOS_PER_ITEM": "Send fewer videos in one item",
    "QVL_VIDEO_CODECS": "Send the video in a codec the service decodes (H.264, for one)",
}
REQUEST_LIMITS = ("QVL_MAX_RERANK_DOCUMENTS", "QVL_MAX_ITEMS_PER_REQUEST")
DIMENSIONS_HINT = ("Ask for dimensions the model gives: from 32 up to its size (SELECT qvl.service_info()), "
                   "or NULL for all of them.")
# A refusal without a limit names its part: images, video frames and URIs get the media hint.
MEDIA_WORDS = re.compile(r"\b(images?|videos?|frames?|URIs?|URLs?)\b")

ITEM_PREFIX = re.compile(r"^((item|document) \d+|query): ")


class Failure(Exception):
    """A service error on its way to becoming a SQL error (caught where the caller can fall back)."""

    def __init__(self, message: str, detail: str | None = None, hint: str | None = None,
                 sqlstate: str = "XX000", status: int | None = None, reason: str | None = None) -> None:
        Exception.__init__(self, message)
        self.message, self.detail, self.hint, self.sqlstate, self.status = message, detail, hint, sqlstate, status
        self.reason = reason  # the service's typed reason (its error body's "reason"), if it gave one

    def raise_sql(self) -> NoReturn:
        # plpy.error writes a detail or hint of None as the text "None": pass only what there is.
        given = {k: v for k, v in (("detail", self.detail), ("hint", self.hint)) if v is not None}
        spi.plpy.error(self.message, sqlstate=self.sqlstate, **given)


def error_body(error: str, code: str) -> str:
    return json.dumps({"error": error, "code": code})


def answer(endpoint: str, status: int, text: str, what: What) -> Any:
    """The JSON of a 200 answer; else raises the Failure that ``status`` and ``text`` describe.
    A 200 that is not a JSON object is the service's failure (``malformed``), not the input's."""
    if status == 200:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise malformed(endpoint, f"a 200 answer that is not a JSON object: {text[:200]!r}")
        return data
    raise failure(endpoint, status, text, what)


def malformed(endpoint: str, what: str) -> Failure:
    return Failure("qvl: the model service answered something malformed", detail=f"{endpoint}: {what}",
                   hint="The service (or something between it and the database) is broken or not qvl's "
                        "service; check qvl.set_service and the service log.", sqlstate="XX000", status=200)


def failure(endpoint: str, status: int, text: str | None, what: What) -> Failure:
    """The SQL error (message, detail, hint, SQLSTATE) for a failed call."""
    try:
        info = json.loads(text) if text else {}
    except ValueError:
        info = {}
    if not isinstance(info, dict):
        info = {}
    error = str(info.get("error") or (text or "")[:300] or f"HTTP {status}")
    item = info.get("item")
    limit = info.get("limit")
    # A count of the request's inputs is the request's fault, not the query's (what(None) for a rerank).
    subject = "the request" if limit in REQUEST_LIMITS else what(item if isinstance(item, int) else None)
    reason = ITEM_PREFIX.sub("", error)
    if status == 0:
        message = "qvl: cannot reach the model service"
    elif status in (400, 404, 413, 422):
        message = f"qvl: the model service refused {subject}: {reason}"
    elif status in (401, 403):
        message = "qvl: the model service refused the token"
    elif status in (429, 503):
        message = "qvl: the model service is busy or starting"
    elif status == 504:
        message = "qvl: the model service did not answer in time"
    else:
        message = f"qvl: the model service failed on {subject}: {reason}"
    if isinstance(limit, str) and limit:
        hint = limit_hint(limit)
    elif status in (400, 422):
        hint = MEDIA_HINT if MEDIA_WORDS.search(reason) else INPUT_HINT
    elif status in (429, 503):
        hint = unavailable_hint(status, info)
    else:
        hint = HINTS.get(status) or HINTS[500]
    reason_name = info.get("reason")
    return Failure(message, detail=f"{endpoint} {status or 'unreachable'}: {error}", hint=hint,
                   sqlstate=SQLSTATE.get(status, "XX000"), status=status,
                   reason=reason_name if isinstance(reason_name, str) else None)


def unavailable_hint(status: int, info: Mapping[str, Any]) -> str:
    """What a 429/503 asks of the caller, read from the body's typed fields, never its words."""
    if info.get("reason") == NOT_READY:
        return UNREADY_HINT
    if status == 429 or info.get("code") == "RESOURCE_EXHAUSTED":
        return BUSY_HINT
    return UNAVAILABLE_HINT


def limit_hint(limit: str) -> str:
    """The hint of a refusal by one of the service's limits: what to send instead, and the setting."""
    if limit == "dimensions":
        return DIMENSIONS_HINT
    advice = LIMIT_ADVICE.get(limit, "Send less")
    return f"{advice}, or raise {limit} on the service."
