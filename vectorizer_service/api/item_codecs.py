"""Requests into items and results into responses, for the gRPC and HTTP JSON wire forms.

Service items carry bytes or allow-listed URIs only: a bare string is never read as a path.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from qvl_proto import vectorizer_pb2 as pb
from vectorizer_service.core.chunking import Chunking, ChunkVector
from vectorizer_service.core.errors import InputError, QvlError
from vectorizer_service.core.items import (
    Item,
    as_list,
    check_frame_count,
    check_media_count,
    check_part_count,
    with_source_parts,
)
from vectorizer_service.core.parts import DocumentPage, VideoClip, check_page, check_span
from vectorizer_service.core.settings import Settings
from vectorizer_service.core.vector_encoding import EncodedVector

ENCODING_NAMES = {pb.FLOAT32: "float32", pb.FLOAT16: "float16", pb.INT8: "int8", pb.BINARY: "binary"}
ENCODING_VALUES = {v: k for k, v in ENCODING_NAMES.items()}
TRUNCATE_NAMES = {pb.TRUNCATE_END: "end", pb.TRUNCATE_NONE: "none", pb.TRUNCATE_START: "start"}


@dataclass(frozen=True)
class UriSource:
    """Media named by URI, read in the preprocessing stage if the operator allows it."""

    uri: str


def uri_source(value: Any, what: str, index: int | None = None) -> UriSource:
    """A media URI, checked for URL syntax here (``http://[::1`` is no URL): the model process only
    reads it, where the operator's allow-list admits it."""
    if not isinstance(value, str) or not value:
        raise InputError(f"{what} must be a non-empty string (a URI), got {type(value).__name__}", item=index)
    try:
        urlsplit(value)
    except ValueError as exc:
        raise InputError(f"{what} is not a valid URI: {exc}", item=index) from None
    return UriSource(value)


def _source_part(part: pb.Part, kind: str | None, index: int) -> DocumentPage | VideoClip | None:
    """A document part (with its page), or a video part with a span; None for any other part."""
    page = part.page if part.HasField("page") else None
    span = (part.start_s if part.HasField("start_s") else None, part.end_s if part.HasField("end_s") else None)
    try:
        if kind in ("document", "document_uri"):
            if span != (None, None):
                raise InputError("start_s and end_s belong on a video part, not a document")
            source = part.document if kind == "document" else uri_source(part.document_uri, "document_uri", index)
            return DocumentPage(source, None if page is None else check_page(page))
        if page is not None:
            raise InputError("page belongs on a document part")
        if span != (None, None):
            if kind not in ("video", "video_uri"):
                raise InputError("start_s and end_s belong on a video part (a file or a URI)")
            start_s, end_s = check_span(*span)
            source = part.video if kind == "video" else uri_source(part.video_uri, "video_uri", index)
            return VideoClip(source, start_s, end_s)
    except InputError as exc:
        raise exc.at(item=index) from None
    return None


def item_from_proto(msg: pb.Item, index: int, settings: Settings) -> Item:
    """An item of the gRPC API; its parts and frames are counted before any is copied."""
    check_part_count(len(msg.parts), settings, item=index)
    item = Item(instruction=msg.instruction if msg.HasField("instruction") else None)
    for part in msg.parts:
        kind = part.WhichOneof("kind")
        source = _source_part(part, kind, index)
        if isinstance(source, DocumentPage):
            item.images.append(source)  # type: ignore[arg-type]
        elif isinstance(source, VideoClip):
            item.videos.append(source)  # type: ignore[arg-type]
        elif kind == "text":
            item.texts.append(part.text)
        elif kind == "image":
            item.images.append(part.image)
        elif kind == "video":
            item.videos.append(part.video)
        elif kind == "frames":
            check_frame_count(len(part.frames.frames), settings, f"video {len(item.videos)}", item=index)
            item.videos.append(list(part.frames.frames))
        elif kind == "image_uri":
            item.images.append(uri_source(part.image_uri, "image_uri", index))  # type: ignore[arg-type]
        elif kind == "video_uri":
            item.videos.append(uri_source(part.video_uri, "video_uri", index))  # type: ignore[arg-type]
        else:
            raise InputError("a part has no content (set text, image, video, frames, document or a URI)", item=index)
    return item


def _b64(value: Any, index: int | None, what: str) -> bytes:
    if not isinstance(value, str):
        raise InputError(f"{what} must be a base64 string, got {type(value).__name__}", item=index)
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what} is not valid base64", item=index) from None


ITEM_KEYS = {"text", "image", "video", "frames", "image_uri", "video_uri", "document", "document_uri", "page",
             "start_s", "end_s", "instruction"}


def item_from_json(obj: Any, index: int | None, settings: Settings) -> Item:
    """An item of the HTTP JSON API (docs/api.md); a plain string is a text item. Its parts are
    counted against the limits before any is decoded."""
    if isinstance(obj, str):
        return Item(texts=[obj])
    if not isinstance(obj, dict):
        raise InputError(f"an item must be an object or a string, got {type(obj).__name__}", item=index)
    unknown = set(obj) - ITEM_KEYS
    if unknown:
        raise InputError(f"unknown item keys {sorted(unknown)}; expected {sorted(ITEM_KEYS)}", item=index)
    texts, images, image_uris = as_list(obj.get("text")), as_list(obj.get("image")), as_list(obj.get("image_uri"))
    frames = obj.get("frames")
    videos = sum(obj.get(key) is not None for key in ("video", "frames", "video_uri"))
    documents = sum(obj.get(key) is not None for key in ("document", "document_uri"))
    if documents > 1:
        raise InputError("an item has one document: set document or document_uri, not both", item=index)
    check_part_count(len(texts) + len(images) + len(image_uris) + videos + documents, settings, item=index)
    check_media_count(len(images) + len(image_uris) + documents, videos, settings, item=index)
    if frames is not None:
        frames = as_list(frames)
        check_frame_count(len(frames), settings, "frames", item=index)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"text {i} must be a string", item=index)
    item = Item(texts=texts)
    if obj.get("video") is not None:
        item.videos.append(_b64(obj["video"], index, "video"))
    if frames is not None:
        item.videos.append([_b64(f, index, f"frame {i}") for i, f in enumerate(frames)])
    if obj.get("video_uri") is not None:
        item.videos.append(uri_source(obj["video_uri"], "video_uri", index))  # type: ignore[arg-type]
    item.images += [_b64(b, index, f"image {i}") for i, b in enumerate(images)]
    item.images += [uri_source(u, f"image_uri {i}", index) for i, u in enumerate(image_uris)]  # type: ignore[misc]
    if obj.get("document") is not None:
        item.images.append(_b64(obj["document"], index, "document"))
    elif obj.get("document_uri") is not None:
        item.images.append(uri_source(obj["document_uri"], "document_uri", index))  # type: ignore[arg-type]
    instruction = obj.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise InputError("instruction must be a string", item=index)
    item.instruction = instruction
    try:
        return with_source_parts(item, obj, has_document=documents == 1)
    except InputError as exc:
        raise exc.at(item=index) from None


def embedding_to_proto(vec: EncodedVector) -> pb.Embedding:
    out = pb.Embedding(dimensions=vec.dimensions, encoding=ENCODING_VALUES[vec.encoding], truncated_tokens=vec.cut)
    if vec.encoding == "float32":
        out.values.extend(vec.values.tolist())
    else:
        out.packed = vec.values.astype(vec.values.dtype.newbyteorder("<"), copy=False).tobytes()
        if vec.scale is not None:
            out.scale = vec.scale
    return out


def embedding_to_json(vec: EncodedVector, fmt: str) -> dict[str, Any]:
    """JSON lists for float encodings (or little-endian base64 with ``format: base64``); packed ones base64."""
    if vec.encoding in ("float32", "float16") and fmt != "base64":
        return {"embedding": vec.values.astype(np.float32).tolist()}
    data = vec.values.astype(vec.values.dtype.newbyteorder("<"), copy=False).tobytes()
    out: dict[str, Any] = {"embedding_b64": base64.b64encode(data).decode("ascii")}
    if vec.scale is not None:
        out["scale"] = vec.scale
    return out


def chunking_from_proto(msg: pb.EmbedOptions) -> Chunking | None:
    """``EmbedOptions.chunking`` (unset: no chunking)."""
    if not msg.HasField("chunking"):
        return None
    kind = msg.chunking.WhichOneof("kind")
    if kind == "pages":
        pages = msg.chunking.pages
        return Chunking("pages", max_pages=pages.max_pages if pages.HasField("max_pages") else None)
    if kind == "video":
        return Chunking("video", seconds=msg.chunking.video.seconds, overlap=msg.chunking.video.overlap)
    if kind == "text":
        return Chunking("text", tokens=msg.chunking.text.tokens, overlap=msg.chunking.text.overlap)
    raise InputError("chunking has no kind: set pages, video or text")


def chunks_to_proto(chunks: list[ChunkVector]) -> pb.Chunks:
    return pb.Chunks(chunks=[pb.Chunk(embedding=embedding_to_proto(c.vector), locator=pb.Locator(**c.locator))
                             for c in chunks])


def chunks_to_json(chunks: list[ChunkVector], fmt: str) -> list[dict[str, Any]]:
    return [{**embedding_to_json(c.vector, fmt), "locator": c.locator} for c in chunks]


def error_dict(index: int, err: QvlError) -> dict[str, Any]:
    out: dict[str, Any] = {"item": index, "error": str(err), "code": error_code(err)}
    if isinstance(err, InputError) and err.limit is not None:
        out["limit"] = err.limit
    if err.error_reason is not None:
        out["reason"] = err.error_reason.value
    return out


def item_error(index: int, err: QvlError, message: str | None = None) -> pb.ItemError:
    """The gRPC form of one item's error (``limit`` and ``reason`` as in ``error_dict``)."""
    limit = err.limit if isinstance(err, InputError) and err.limit is not None else ""
    return pb.ItemError(index=index, message=str(err) if message is None else message, code=error_code(err),
                        limit=limit, reason=reason_to_proto(err))


def reason_to_proto(err: QvlError) -> int:
    """``err.error_reason`` as the proto's ``ErrorReason`` (the names are the same)."""
    return pb.ErrorReason.Value(err.error_reason.value) if err.error_reason is not None else pb.REASON_UNSPECIFIED


def error_code(err: BaseException) -> str:
    return err.code if isinstance(err, QvlError) else "INTERNAL"
