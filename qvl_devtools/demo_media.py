"""The demos' sample media, drawn in code (deterministic): six captioned pictures of different sizes
and formats, and two short videos as frame lists. Nothing is read from the test fixtures."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

Pixels = np.ndarray


def _grid(h: int, w: int) -> tuple[Pixels, Pixels]:
    return np.mgrid[0:h, 0:w].astype(np.float32)


def _rings(w: int, h: int) -> Pixels:
    y, x = _grid(h, w)
    r = np.hypot(x - w / 2, y - h / 2)
    band = (r // 16).astype(int) % 3
    palette = np.array([[220, 40, 40], [40, 160, 60], [40, 80, 220]], dtype=np.uint8)
    return palette[band]


def _stripes(w: int, h: int) -> Pixels:
    y, _ = _grid(h, w)
    on = (y // 20).astype(int) % 2 == 0
    return np.where(on[..., None], [250, 200, 30], [30, 30, 90]).astype(np.uint8)


def _squares(w: int, h: int) -> Pixels:
    y, x = _grid(h, w)
    on = ((x // 25).astype(int) + (y // 25).astype(int)) % 2 == 0
    return np.where(on[..., None], [240, 240, 240], [20, 120, 120]).astype(np.uint8)


def _gradient(w: int, h: int) -> Pixels:
    y, x = _grid(h, w)
    return np.stack([x / w * 255, y / h * 255, np.full_like(x, 128)], axis=-1).astype(np.uint8)


def _picture(draw: Callable[[int, int], Pixels], size: tuple[int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(draw(*size)).save(buf, format=fmt)
    return buf.getvalue()


PICTURES: list[tuple[str, str, Callable[[int, int], Pixels], tuple[int, int], str]] = [
    ("rings_256x256.png", "concentric coloured rings", _rings, (256, 256), "PNG"),
    ("stripes_320x240.png", "horizontal stripes", _stripes, (320, 240), "PNG"),
    ("grid_200x400.png", "a grid of squares", _squares, (200, 400), "PNG"),
    ("tall_96x480.png", "a tall narrow strip", _gradient, (96, 480), "PNG"),
    ("wide_640x160.jpg", "a wide panorama", _gradient, (640, 160), "JPEG"),
    ("small_48x40.png", "a tiny thumbnail", _rings, (48, 40), "PNG"),
]
VIDEOS = [("clipA", "a short animated clip", 8), ("clipB", "a longer animated clip", 12)]


def _frames(count: int, seed: int) -> list[bytes]:
    """A square moving across a 160x120 background, one PNG per frame."""
    out = []
    for k in range(count):
        frame = np.full((120, 160, 3), 30 + 40 * seed, dtype=np.uint8)
        x = 10 + k * 10
        frame[40:80, x:x + 40] = [240, 180 - 60 * seed, 40 + 100 * seed]
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def sample_media(*, videos: bool = True) -> list[dict[str, Any]]:
    """``[{"name", "caption", "image": bytes | None, "frames": [bytes] | None}]``: pictures, then videos."""
    rows: list[dict[str, Any]] = [
        {"name": name, "caption": caption, "image": _picture(draw, size, fmt), "frames": None}
        for name, caption, draw, size, fmt in PICTURES]
    for seed, (clip, caption, count) in enumerate(VIDEOS if videos else ()):
        rows.append({"name": f"{clip} (video)", "caption": caption, "image": None, "frames": _frames(count, seed)})
    return rows


def sample_pdf() -> bytes:
    """A three-page PDF (the rings, the stripes and the grid, one picture a page at 72 dpi: Pillow's
    PDF writer), for the demos' page hits."""
    pages = [Image.fromarray(draw(*size)) for _, _, draw, size, _ in PICTURES[:3]]
    buf = io.BytesIO()
    pages[0].save(buf, format="PDF", save_all=True, append_images=pages[1:], resolution=72.0)
    return buf.getvalue()


def sample_long_video(seconds_each: int = 4, fps: int = 2) -> bytes:
    """An MP4 (mpeg4) of three scenes, ``seconds_each`` seconds each: the rings, the stripes, the grid
    (160x120), for the demos' clip hits. Also ``scene_video(k)``: scene k alone."""
    return _mp4([draw(160, 120) for _, _, draw, _, _ in PICTURES[:3]], seconds_each, fps)


def scene_video(scene: int, seconds_each: int = 4, fps: int = 2) -> bytes:
    """Scene ``scene`` (0-based) of ``sample_long_video`` alone, as a short MP4."""
    _, _, draw, _, _ = PICTURES[scene]
    return _mp4([draw(160, 120)], seconds_each, fps)


def _mp4(scenes: list[Pixels], seconds_each: int, fps: int) -> bytes:
    import av  # the demos run with the server's extras; nothing else here needs PyAV

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = 160, 120
        stream.pix_fmt = "yuv420p"
        for pixels in scenes:
            for _ in range(seconds_each * fps):
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()
