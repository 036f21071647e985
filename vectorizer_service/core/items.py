"""The input model: what an item is, how it is parsed from JSON-like data, and its size limits."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from vectorizer_service.core.errors import InputError
from vectorizer_service.core.parts import DocumentPage, VideoClip, check_page, check_span
from vectorizer_service.core.settings import Settings

# What an item may carry; the model process decodes them (``model.media``).
ImageSource = bytes | str | os.PathLike | Image.Image
VideoSource = bytes | str | os.PathLike | list[ImageSource]



class Decoded:
    """Media the model process has decoded already (a clip's frames, decoded once for all the
    windows of a video): it stands in an item's videos where the source stood."""


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_unicode(text: str, what: str) -> None:
    """Refuse text that is not valid Unicode: a lone surrogate (JSON may escape one, ``"\\ud800"``)
    has no UTF-8 form, so no tokenizer can take it; retrying never helps."""
    found = _SURROGATE.search(text)
    if found is not None:
        raise InputError(f"{what} contains a lone surrogate (U+{ord(found.group()):04X}) at character "
                         f"{found.start()}; send valid Unicode text")


def check_item_count(count: int, settings: Settings) -> None:
    """A request's items, counted before any of them is built (docs/api.md: limits)."""
    if count > settings.max_items_per_request:
        raise InputError(f"{count} items, over the limit of {settings.max_items_per_request}", status=413,
                         limit="QVL_MAX_ITEMS_PER_REQUEST")


def check_part_count(count: int, settings: Settings, what: str = "parts", *, item: int | None = None) -> None:
    """The parts of one item (a content-part list, its texts), counted before any of them is read."""
    if count > settings.max_parts_per_item:
        raise InputError(f"{count} {what} in one item, over the limit of {settings.max_parts_per_item}",
                         item=item, status=413, limit="QVL_MAX_PARTS_PER_ITEM")


def check_media_count(images: int, videos: int, settings: Settings, *, item: int | None = None) -> None:
    if images > settings.max_images_per_item:
        raise InputError(f"{images} images in one item, over the limit of {settings.max_images_per_item}",
                         item=item, status=413, limit="QVL_MAX_IMAGES_PER_ITEM")
    if videos > settings.max_videos_per_item:
        raise InputError(f"{videos} videos in one item, over the limit of {settings.max_videos_per_item}",
                         item=item, status=413, limit="QVL_MAX_VIDEOS_PER_ITEM")


def check_frame_count(frames: int, settings: Settings, what: str, *, item: int | None = None) -> None:
    """A video given as a list of frames, counted before any frame is read (``model.media`` checks
    the same limit again where frames are decoded)."""
    if frames > settings.max_video_source_frames:
        raise InputError(f"{what} has {frames} frames, over the limit of {settings.max_video_source_frames}",
                         item=item, status=413, limit="QVL_MAX_VIDEO_SOURCE_FRAMES")


@dataclass
class Item:
    """One input: any mix of texts, images and videos, with an optional instruction.

    Images are bytes, paths or PIL images; a video is bytes, a path, or a list of frames.
    """

    texts: list[str] = field(default_factory=list)
    images: list[ImageSource] = field(default_factory=list)
    videos: list[VideoSource] = field(default_factory=list)
    instruction: str | None = None

    @property
    def is_empty(self) -> bool:
        return not (self.texts or self.images or self.videos)

    @property
    def modalities(self) -> set[str]:
        return {name for name, parts in (("text", self.texts), ("image", self.images),
                                         ("video", self.videos)) if parts}

    def validate(self, settings: Settings) -> Item:
        """Cheap checks run before any decoding or tokenization."""
        check_part_count(len(self.texts) + len(self.images) + len(self.videos), settings)
        check_media_count(len(self.images), len(self.videos), settings)
        for i, text in enumerate(self.texts):
            if not isinstance(text, str):
                raise InputError(f"text {i} is {type(text).__name__}, not a string")
            if len(text) > settings.max_text_chars:
                raise InputError(f"text {i} has {len(text)} characters, over the limit of "
                                 f"{settings.max_text_chars}", status=413, limit="QVL_MAX_TEXT_CHARS")
            if "\x00" in text:
                raise InputError(f"text {i} contains a NUL character")
            check_unicode(text, f"text {i}")
        for i, img in enumerate(self.images):
            if isinstance(img, DocumentPage):
                if img.page is None:
                    raise InputError("a document needs a page (1-based), unless the request asks for chunking "
                                     '"pages"', part=f"image {i}")
                check_page(img.page)
            elif not isinstance(img, bytes | bytearray | str | os.PathLike | Image.Image) and not hasattr(img, "uri"):
                raise InputError(f"image {i} is {type(img).__name__}; expected bytes, a path or an image")
        for i, vid in enumerate(self.videos):
            if isinstance(vid, VideoClip):
                check_span(vid.start_s, vid.end_s)
            elif (not isinstance(vid, bytes | bytearray | str | os.PathLike | list | tuple | Decoded)
                  and not hasattr(vid, "uri")):
                raise InputError(f"video {i} is {type(vid).__name__}; expected bytes, a path or frames")
        if self.instruction is not None:
            if not isinstance(self.instruction, str):
                raise InputError("instruction must be a string")
            check_unicode(self.instruction, "instruction")
        return self


def as_list(value: Any) -> list[Any]:
    """None -> [], a list or tuple -> a list, anything else -> [it] (one part or many)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _resolve(path: Any, base: str | None) -> Any:
    if isinstance(path, str) and base and not os.path.isabs(path) and "://" not in path:
        return os.path.join(base, path)
    return path


def item_from_local_json(obj: Any, base_dir: str | None = None) -> Item:
    """An item of a local JSON-lines file (`qvl embed`, `qvl rerank`): ``{"text", "image", "video",
    "instruction"}`` with file paths for media, or a plain string (a text item, as in the HTTP API
    and the Python client; the HTTP API's base64 items are ``api.item_codecs``).

    ``video`` is one path, or a list of frame paths (one video). Relative paths resolve
    against ``base_dir``.
    """
    if isinstance(obj, str):
        return Item(texts=[obj])
    if not isinstance(obj, dict):
        raise InputError(f"an item must be a JSON object or a string, got {type(obj).__name__}")
    unknown = set(obj) - LOCAL_KEYS
    if unknown:
        raise InputError(f"unknown item keys: {', '.join(sorted(unknown))} "
                         f"(expected {', '.join(sorted(LOCAL_KEYS))})")
    texts = as_list(obj.get("text"))
    images = [_resolve(p, base_dir) for p in as_list(obj.get("image"))]
    video = obj.get("video")
    videos: list[Any]
    if video is None:
        videos = []
    elif isinstance(video, list):
        videos = [[_resolve(p, base_dir) for p in video]]
    else:
        videos = [_resolve(video, base_dir)]
    for i, img in enumerate(images):
        if not isinstance(img, str):
            raise InputError(f"image {i} must be a path string in JSON input")
    document = obj.get("document")
    if document is not None:
        if not isinstance(document, str):
            raise InputError("document must be a path string in JSON input")
        images.append(_resolve(document, base_dir))
    item = Item(texts=texts, images=images, videos=videos, instruction=obj.get("instruction"))
    return with_source_parts(item, obj, has_document=document is not None)


LOCAL_KEYS = {"text", "image", "video", "document", "page", "start_s", "end_s", "instruction"}


def with_source_parts(item: Item, obj: dict[str, Any], *, has_document: bool) -> Item:
    """``page`` turns the item's document (its last image entry) into that page; ``start_s`` /
    ``end_s`` turn its video file into that span. Shared by every JSON form of an item."""
    page = obj.get("page")
    if has_document:
        item.images[-1] = DocumentPage(item.images[-1], None if page is None else check_page(page))
    elif page is not None:
        raise InputError("page selects a page of a document: the item has no document")
    start_s, end_s = check_span(obj.get("start_s"), obj.get("end_s"))
    if start_s is not None or end_s is not None:
        if len(item.videos) != 1 or isinstance(item.videos[0], list):
            raise InputError("start_s and end_s select a span of a video file: the item needs exactly one "
                             "video (not a frame list)")
        item.videos[0] = VideoClip(item.videos[0], start_s, end_s)
    return item
