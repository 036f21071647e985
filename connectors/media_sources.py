"""Images and videos as the frameworks hand them over (a path, a URI, a data URI, bytes), as client items.

A local path (or ``file://`` URI with ``local_files``) is read here and sent as bytes; an ``http(s)``
or ``file`` URI is sent as a URI for the service to read (only where its operator's allow-list
admits it, ``QVL_ALLOW_URI_SCHEMES`` / ``QVL_ALLOW_URI_ROOTS``); a ``data:`` URI is decoded.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Any, Literal

from connectors.client import InvalidArgument

MediaKind = Literal["image", "video"]
REMOTE_SCHEMES = ("http://", "https://", "file://")


def media_item(kind: MediaKind, source: Any, *, text: str | None = None, what: str = "") -> dict[str, Any]:
    """One item of ``kind`` from ``source`` (with ``text`` beside it, when given)."""
    item: dict[str, Any] = {} if not text else {"text": text}
    where = f"{what}: " if what else ""
    if isinstance(source, bytes | bytearray | memoryview):
        item[kind] = bytes(source)
    elif hasattr(source, "read"):  # a file object (LlamaIndex hands images over as BytesIO)
        item[kind] = source.read()
    elif isinstance(source, str | os.PathLike):
        value = os.fspath(source)
        if value.startswith("data:"):
            item[kind] = _data_uri(value, where)
        elif value.lower().startswith(REMOTE_SCHEMES):
            item[f"{kind}_uri"] = value
        else:
            try:
                item[kind] = Path(value).read_bytes()
            except OSError as exc:
                raise InvalidArgument(f"{where}cannot read the {kind} file {value!r}: {exc.strerror or exc}") from None
    else:
        raise InvalidArgument(f"{where}an {kind} is a path, a URI or bytes, got {type(source).__name__}")
    return item


def _data_uri(value: str, where: str) -> bytes:
    head, _, data = value.partition(",")
    if not head.endswith(";base64"):
        raise InvalidArgument(f"{where}a data URI must be base64 (data:<type>;base64,...)")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{where}the data URI is not valid base64") from None
