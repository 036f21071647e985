"""Media references and content parts of the dialects, as core ``Item``s.

A media reference is a data URI (``data:image/png;base64,...``: its bytes), an http(s) or file
URL (read in the model process only where the operator's URI allow-list admits it, as everywhere
in qvl), or, where a dialect sends one, bare base64. Content parts are the chat-style parts
OpenAI/vLLM (``text``, ``image_url``, ``video_url``), Cohere (``text``, ``image_url``) and Voyage
(``text``, ``image_url``, ``image_base64``, ``video_url``, ``video_base64``) send; all the parts of
one input are one item (one vector).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from vectorizer_service.api.item_codecs import UriSource, uri_source
from vectorizer_service.core.errors import InputError
from vectorizer_service.core.items import Item, check_part_count
from vectorizer_service.core.settings import Settings

Media = bytes | UriSource
MediaKind = Literal["image", "video"]

# data:[<type>/<subtype>][;param=value]*[;base64],<data>
DATA_URI = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,",
                      re.IGNORECASE)
URL_SCHEMES = ("http", "https", "file")
PART_TYPES = ("text", "image_url", "image_base64", "video_url", "video_base64")


def decode_base64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what} is not valid base64") from None


def media_data_uri(value: str, what: str) -> tuple[MediaKind, bytes] | None:
    """A base64 data URI of an image or a video: its kind and bytes. None when ``value`` is no data
    URI at all; a data URI of another type (text/plain, application/pdf) or without base64 is refused."""
    found = DATA_URI.match(value)
    if found is None:
        return None
    mime = (found["mime"] or "text/plain").lower()
    kind = mime.split("/", 1)[0]
    if kind not in ("image", "video"):
        raise InputError(f"{what} is a data URI of type {mime}, neither an image nor a video")
    if not found["b64"]:
        raise InputError(f"{what} is a data URI without ';base64': send the {kind} base64-encoded")
    return kind, decode_base64(value[found.end():], what)  # type: ignore[return-value]


def url_scheme(value: str, what: str) -> str:
    """The scheme of a URL, lower case ("" for none); a string urllib cannot split (``http://[::1``)
    is bad input."""
    try:
        return urlsplit(value).scheme.lower()
    except ValueError as exc:
        raise InputError(f"{what} is not a valid URL: {exc}") from None


def _a(kind: str) -> str:
    return f"an {kind}" if kind == "image" else f"a {kind}"


def media_reference(value: Any, kind: MediaKind, what: str, *, bare_base64: bool = False) -> Media:
    """An image or video given as a data URI, a URL (allow-listed) or, with ``bare_base64``, base64."""
    if not isinstance(value, str) or not value:
        raise InputError(f"{what} must be a non-empty string (a data URI or a URL), got {type(value).__name__}")
    if value[:5].lower() == "data:":
        found = media_data_uri(value, what)
        if found is None:
            raise InputError(f"{what} is not a valid data URI (data:{kind}/<format>;base64,<data>)")
        if found[0] != kind:
            raise InputError(f"{what} is a data URI of {_a(found[0])}, where {_a(kind)} is expected")
        return found[1]
    if url_scheme(value, what) in URL_SCHEMES:
        return uri_source(value, what)
    if bare_base64:
        return decode_base64(value, what)
    raise InputError(f"{what} must be a data URI (data:{kind}/<format>;base64,...) or an http(s) URL")


def add_media(item: Item, kind: MediaKind, media: Media) -> None:
    (item.images if kind == "image" else item.videos).append(media)  # type: ignore[arg-type]


def _url_of(value: Any) -> Any:
    """``image_url`` is ``{"url": ...}`` (OpenAI, vLLM, Cohere) or the URL itself (Voyage)."""
    return value.get("url") if isinstance(value, dict) else value


def add_part(item: Item, part: Any, what: str) -> None:
    """One content part into ``item``."""
    if not isinstance(part, dict):
        raise InputError(f"{what} must be an object with a type ({', '.join(PART_TYPES)}), "
                         f"got {type(part).__name__}")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise InputError(f"{what}.text must be a string")
        item.texts.append(text)
    elif kind in ("image_url", "video_url"):
        media = kind.split("_")[0]
        add_media(item, media, media_reference(_url_of(part.get(kind)), media, f"{what}.{kind}"))  # type: ignore[arg-type]
    elif kind in ("image_base64", "video_base64"):
        media = kind.split("_")[0]
        add_media(item, media, media_reference(part.get(kind), media, f"{what}.{kind}",  # type: ignore[arg-type]
                                               bare_base64=True))
    else:
        raise InputError(f"{what} has type {kind!r}; expected one of {', '.join(PART_TYPES)}")


def item_from_parts(parts: Any, what: str, settings: Settings) -> Item:
    """The parts of one input (a list), as one item; they are counted before any is read."""
    if isinstance(parts, str):
        return Item(texts=[parts])
    if not isinstance(parts, list) or not parts:
        raise InputError(f"{what} must be a non-empty list of content parts")
    check_part_count(len(parts), settings, f"content parts ({what})")
    item = Item()
    for k, part in enumerate(parts):
        add_part(item, part, f"{what}[{k}]")
    return item


def string_item(value: str, what: str) -> Item:
    """A plain string input: text, or an image/video when it is a base64 data URI (NVIDIA's
    multi2vec-nvidia sends images that way, in the same ``input`` list as texts)."""
    if value[:5].lower() == "data:":
        found = media_data_uri(value, what)
        if found is not None:
            item = Item()
            add_media(item, found[0], found[1])
            return item
    return Item(texts=[value])
