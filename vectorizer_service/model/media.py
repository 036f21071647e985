"""Media decoding: bytes or paths in, bounded RGB pixels out (the pipeline's first stage).

Every limit is checked on the header before pixels are decoded, so a decompression bomb or a
three-hour video costs a few bytes of parsing, not memory.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from qwen_vl_utils import vision_process as qvu
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvf

from vectorizer_service.core.errors import InputError, QvlError
from vectorizer_service.core.items import Decoded, ImageSource, VideoSource
from vectorizer_service.core.settings import Settings
from vectorizer_service.model.decode_budget import DecodeBudget, ItemBudget

IMAGE_FORMATS = {"PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF"}
# PyAV container names (FFmpeg demuxers) for MP4/MOV, WebM/MKV and GIF.
VIDEO_FORMATS = {"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "gif"}
MAX_ASPECT_RATIO = qvu.MAX_RATIO
# Our own pixel check runs first; PIL's bomb guard would otherwise fire (or only warn) at its own limit.
Image.MAX_IMAGE_PIXELS = None


@dataclass
class DecodedVideo(Decoded):
    """Frames as a uint8 tensor (T, C, H, W) before resizing, and the reference's metadata."""

    frames: torch.Tensor | list[Image.Image]
    metadata: dict[str, Any]
    resized: bool = False  # frames already at the size resize_video would give (resized as decoded)


def read_source(src: bytes | str | os.PathLike, settings: Settings, what: str) -> bytes:
    """Bytes of a media part, refusing empty and oversized input before reading it all."""
    if isinstance(src, bytes | bytearray | memoryview):
        data = bytes(src)
    elif hasattr(src, "uri"):  # request_items.UriSource: allow-listed reads only
        from vectorizer_service.model.uri_access import read_uri

        data = read_uri(src.uri, settings, what)
    else:
        path = os.fspath(src)
        if path.startswith("file://"):
            path = path[len("file://"):]
        try:
            size = os.path.getsize(path)
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte or a lone surrogate in the name
            raise InputError(f"cannot read {what} file {path!r}: {getattr(exc, 'strerror', None) or exc}") from None
        if size > settings.max_media_bytes:
            raise InputError(f"{what} file is {size} bytes, over the limit of {settings.max_media_bytes}",
                             status=413, limit="QVL_MAX_MEDIA_BYTES")
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise InputError(f"cannot read {what} file {path!r}: {exc.strerror or exc}") from None
    if not data:
        raise InputError(f"{what} is empty (0 bytes)")
    if len(data) > settings.max_media_bytes:
        raise InputError(f"{what} is {len(data)} bytes, over the limit of {settings.max_media_bytes}",
                         status=413, limit="QVL_MAX_MEDIA_BYTES")
    return data


def _check_dimensions(width: int, height: int, limit: int, what: str, setting: str) -> None:
    """``setting``: the QVL_* setting ``limit`` comes from (named in the refusal)."""
    if width <= 0 or height <= 0:
        raise InputError(f"{what} has no pixels ({width}x{height})")
    if width * height > limit:
        raise InputError(
            f"{what} is {width}x{height} = {width * height} pixels, over the limit of {limit}", status=413,
            limit=setting,
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise InputError(f"{what} aspect ratio {width}x{height} exceeds {MAX_ASPECT_RATIO}:1")


def _item_budget(budget: ItemBudget | None, settings: Settings) -> ItemBudget:
    return budget if budget is not None else DecodeBudget(settings).item()


def decode_image(src: ImageSource, settings: Settings, what: str = "image",
                 budget: ItemBudget | None = None) -> Image.Image:
    """A decoded RGB image (alpha flattened on white, as the reference does)."""
    budget = _item_budget(budget, settings)
    if isinstance(src, Image.Image):
        _check_dimensions(src.width, src.height, settings.max_source_image_pixels, what, "QVL_MAX_SOURCE_IMAGE_PIXELS")
        budget.take(src.width * src.height, what)
        return qvu.to_rgb(src)
    img = open_image(read_source(src, settings, what), settings, what)
    budget.take(img.width * img.height, what)
    return _load(img, what)


def open_image(data: bytes, settings: Settings, what: str) -> Image.Image:
    """The image's header, checked (format, size, aspect ratio); no pixels decoded yet."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InputError(f"{what} is not a recognised image (PNG, JPEG, WebP, GIF, BMP or TIFF)") from None
    except Exception as exc:  # PIL raises many types on hostile headers
        raise InputError(f"{what} could not be opened: {exc}") from None
    if img.format not in IMAGE_FORMATS:
        raise InputError(f"{what} format {img.format} is not supported "
                         "(PNG, JPEG, WebP, GIF, BMP or TIFF)")
    _check_dimensions(img.width, img.height, settings.max_source_image_pixels, what, "QVL_MAX_SOURCE_IMAGE_PIXELS")
    return img


def resize_image(img: Image.Image, settings: Settings) -> Image.Image:
    """Qwen's smart resize to multiples of 32 within the configured pixel bounds."""
    return qvu.fetch_image(
        {"image": img, "min_pixels": settings.image_min_pixels, "max_pixels": settings.image_max_pixels},
        image_patch_size=16,
    )


def sample_frame_list(frames: list[Any], max_frames: int) -> list[Any]:
    """The reference's even subsampling of a frame list longer than ``max_frames``."""
    if len(frames) <= max_frames:
        return frames
    return [frames[i] for i in np.linspace(0, len(frames) - 1, max_frames, dtype=int).tolist()]


def decode_video(src: VideoSource, settings: Settings, what: str = "video",
                 budget: ItemBudget | None = None) -> DecodedVideo:
    """A video file's sampled frames, or a frame list (subsampled to the frame limit)."""
    budget = _item_budget(budget, settings)
    if isinstance(src, list | tuple):
        if not src:
            raise InputError(f"{what} has no frames")
        if len(src) > settings.max_video_source_frames:
            raise InputError(f"{what} has {len(src)} frames, over the limit of "
                             f"{settings.max_video_source_frames}", status=413, limit="QVL_MAX_VIDEO_SOURCE_FRAMES")
        picked = sample_frame_list(list(src), settings.video_max_frames)
        # Every frame is decoded at full size before resizing (the reference's path): the headers
        # say how much that holds, before any pixel is decoded.
        headers: list[Image.Image] = []
        for i, f in enumerate(picked):
            name = f"{what} frame {i}"
            if isinstance(f, Image.Image):
                _check_dimensions(f.width, f.height, settings.max_source_image_pixels, name,
                                  "QVL_MAX_SOURCE_IMAGE_PIXELS")
                headers.append(f)
            else:
                headers.append(open_image(read_source(f, settings, name), settings, name))
        if any(h.size != headers[0].size for h in headers):
            raise InputError(f"{what} frames differ in size; all frames of a video must match")
        budget.take(sum(h.width * h.height for h in headers), what)
        frames = []
        for i, header in enumerate(headers):
            budget.check_deadline()
            frames.append(_load(header, f"{what} frame {i}"))
        return DecodedVideo(frames=frames, metadata={})
    return _decode_video_file(read_source(src, settings, what), settings, what, budget)


def _load(img: Image.Image, what: str) -> Image.Image:
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)
        img.load()
        return qvu.to_rgb(img)
    except Exception as exc:
        raise InputError(f"{what} data is truncated or corrupt: {exc}") from None


def _decode_video_file(data: bytes, settings: Settings, what: str, budget: ItemBudget) -> DecodedVideo:
    try:
        return _decode_container(data, settings, what, budget)
    except QvlError:
        raise
    except Exception as exc:  # FFmpeg reports damage through many exception types
        raise InputError(f"{what} is not a decodable video (truncated or corrupt): {exc}") from None


@dataclass(frozen=True)
class VideoHeader:
    """A video file's stream, checked against the limits from its header and packets (no frame decoded)."""

    total: int  # frames, counted from packets
    rate: float  # frames per second
    height: int
    width: int


def inspect_video(data: bytes, settings: Settings, what: str) -> VideoHeader:
    """Container, codec, frame size and length checked, frames counted; nothing decoded."""
    with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
        if container.format.name not in VIDEO_FORMATS:
            raise InputError(f"{what} container {container.format.name!r} is not supported "
                             "(MP4, MOV, WebM, MKV or GIF)")
        if not container.streams.video:
            raise InputError(f"{what} has no video stream")
        stream = container.streams.video[0]
        cc = stream.codec_context
        if cc.name not in settings.video_codecs:
            raise InputError(f"{what} codec {cc.name!r} is not allowed (allowed: {', '.join(settings.video_codecs)}; "
                             "QVL_VIDEO_CODECS)", limit="QVL_VIDEO_CODECS")
        _check_dimensions(cc.width, cc.height, settings.max_video_frame_pixels, f"{what} frame",
                          "QVL_MAX_VIDEO_FRAME_PIXELS")
        seconds = _duration_seconds(container, stream)
        if seconds is not None and seconds > settings.max_video_seconds:
            raise InputError(f"{what} lasts {seconds:.1f} s, over the limit of {settings.max_video_seconds} s",
                             status=413, limit="QVL_MAX_VIDEO_SECONDS")
        total = _count_frames(container, stream, settings, what)
        if total == 0:
            raise InputError(f"{what} has no frames")
        rate = float(stream.average_rate) if stream.average_rate else 0.0
        if rate <= 0:
            rate = total / seconds if seconds else 1.0
        return VideoHeader(total, rate, cc.height, cc.width)


def with_video_header(data: bytes, settings: Settings, what: str) -> VideoHeader:
    """``inspect_video``, with FFmpeg's many exception types as one refusal of the input."""
    try:
        return inspect_video(data, settings, what)
    except QvlError:
        raise
    except Exception as exc:
        raise InputError(f"{what} is not a decodable video (truncated or corrupt): {exc}") from None


def _decode_container(data: bytes, settings: Settings, what: str, budget: ItemBudget) -> DecodedVideo:
    header = inspect_video(data, settings, what)
    total, rate = header.total, header.rate
    indices = sample_indices(total, rate, settings)
    target = video_target_size(len(indices), header.height, header.width, settings)
    # Frames shrink as they are decoded: decoding holds one source frame and the resized ones.
    source = header.height * header.width
    shrink = target[0] * target[1] < source
    held = len(indices) * (target[0] * target[1] if shrink else source)
    budget.take(held + (source if shrink else 0), what)
    # A second pass decodes only up to the last wanted frame (demuxing consumed the first).
    with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
        frames = _decode_frames(container, container.streams.video[0], indices, what, budget,
                                target if shrink else None)
    video = torch.stack(frames)
    meta = {"fps": rate, "frames_indices": indices, "total_num_frames": total}
    return DecodedVideo(frames=video, metadata=meta, resized=shrink)


def _duration_seconds(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _count_frames(container: Any, stream: Any, settings: Settings, what: str) -> int:
    """Frames counted from packets, without decoding; stops past the limit."""
    total = 0
    for packet in container.demux(stream):
        if packet.size:
            total += 1
            if total > settings.max_video_source_frames:
                raise InputError(f"{what} has more than {settings.max_video_source_frames} frames", status=413,
                                 limit="QVL_MAX_VIDEO_SOURCE_FRAMES")
    return total


def sample_indices(total: int, rate: float, settings: Settings) -> list[int]:
    """The reference reader's sampling: ``fps`` frames per second, at most ``max_frames``, even count."""
    if total < qvu.FRAME_FACTOR:
        return [0] * qvu.FRAME_FACTOR
    nframes = qvu.smart_nframes(
        {"fps": settings.video_fps, "max_frames": settings.video_max_frames}, total_frames=total, video_fps=rate
    )
    return torch.linspace(0, total - 1, nframes).round().long().tolist()


def _decode_frames(container: Any, stream: Any, indices: list[int], what: str, budget: ItemBudget,
                   target: tuple[int, int] | None) -> list[torch.Tensor]:
    """The wanted frames as (C, H, W) uint8 tensors, resized to ``target`` as they are decoded."""
    wanted: dict[int, int] = {}
    for i in indices:
        wanted[i] = wanted.get(i, 0) + 1
    out: list[torch.Tensor] = []
    last = max(indices)
    try:
        for ordinal, frame in enumerate(container.decode(stream)):
            budget.check_deadline()
            if ordinal in wanted:
                pixels = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                if target is not None:
                    pixels = _resize_frames(pixels[None], target)[0]
                out.extend([pixels.contiguous()] * wanted[ordinal])
            if ordinal >= last:
                break
    except QvlError:
        raise
    except Exception as exc:
        if not out:
            raise InputError(f"{what} frames could not be decoded: {exc}") from None
    if not out:
        raise InputError(f"{what} has no decodable frames")
    while len(out) < len(indices):  # a damaged tail: repeat the last good frame
        out.append(out[-1])
    return out


def resize_video(video: DecodedVideo, settings: Settings) -> tuple[torch.Tensor, dict[str, Any]]:
    """Frames resized under the per-frame and total pixel budgets, as the reference's reader does."""
    if isinstance(video.frames, list):
        # Frame lists go through qwen-vl-utils exactly as in the reference (parity cases).
        tensor, meta = qvu.fetch_video(
            {"video": video.frames, "total_pixels": settings.video_total_pixels},
            image_patch_size=16,
            return_video_metadata=True,
        )
        return tensor, meta
    frames = video.frames
    if video.resized:
        return frames.float(), dict(video.metadata)
    nframes, _, height, width = frames.shape
    return _resize_frames(frames, video_target_size(nframes, height, width, settings)).float(), dict(video.metadata)


def video_target_size(nframes: int, height: int, width: int, settings: Settings) -> tuple[int, int]:
    """The frame size the reference's reader resizes a video file's sampled frames to."""
    factor = 16 * qvu.SPATIAL_MERGE_SIZE
    min_pixels = qvu.VIDEO_MIN_TOKEN_NUM * factor * factor
    max_pixels = max(
        min(qvu.VIDEO_MAX_TOKEN_NUM * factor * factor, settings.video_total_pixels / nframes * qvu.FRAME_FACTOR),
        int(min_pixels * 1.05),
    )
    h, w = qvu.smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return int(h), int(w)


def _resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (T, C, H, W) to ``size``; each frame is resized on its own, so frame by frame or all
    at once give the same pixels."""
    return tvf.resize(frames, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)

