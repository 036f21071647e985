"""Items: the JSON the service embeds or reranks, made from column values (text, images, video)."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

Row = Mapping[str, Any]  # a row as PL/Python hands it over (a table's, or a catalog row)
Item = dict[str, Any]  # one item of the service's JSON API (docs/api.md)

BINARY = (bytes, bytearray, memoryview)


def b64(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def _flat(values: Iterable[Any]) -> Iterator[Any]:
    for v in values:
        if isinstance(v, list):
            for x in v:
                if x is not None:
                    yield x
        elif v is not None:
            yield v


def make_item(texts: Iterable[Any] = (), images: Iterable[Any] = (), videos: Iterable[Any] = ()) -> Item | None:
    """A JSON item from column values: one joint item, or None when every value is NULL.

    Images: bytea = bytes, text = a path/URI for the service. Video: bytea = a file, bytea[] = its
    frames, text = a path/URI. Same order as the worker's gRPC items: video, images, URIs, texts.
    """
    item: Item = {}
    for v in videos:
        if v is None:
            continue
        if isinstance(v, list):
            item["frames"] = [b64(f) for f in v if f is not None]
        elif isinstance(v, BINARY):
            item["video"] = b64(v)
        else:
            item["video_uri"] = str(v)
    pictures = list(_flat(images))
    raw = [b64(x) for x in pictures if isinstance(x, BINARY)]
    uris = [str(x) for x in pictures if not isinstance(x, BINARY)]
    if raw:
        item["image"] = raw
    if uris:
        item["image_uri"] = uris
    text = [str(t) for t in _flat(texts)]
    if text:
        item["text"] = text
    return item or None


def row_item(cfg: Row, row: Row) -> Item | None:
    return make_item([row[c] for c in cfg["text_columns"]], [row[c] for c in cfg["image_columns"]],
                     [row[c] for c in cfg["video_columns"]])


def text_item(value: str | None) -> Item | None:
    return None if value is None else {"text": [value]}


def image_item(value: bytes | None) -> Item | None:
    return None if value is None else {"image": [b64(value)]}
