"""Deterministic benchmark inputs: texts of given word counts, JPEG images, MP4 videos."""

from __future__ import annotations

import io
import random

import av
import numpy as np
from PIL import Image

WORDS = (
    "the a of and to in is for on with as by at from that this be are was it an or which image video "
    "search query document retrieval model vector database table row column index postgres weaviate "
    "camera photo street night city river mountain dog cat woman man child beach sunset forest red "
    "blue green yellow black white small large old new fast slow open closed bright dark quiet loud "
    "warm cold "
).split()


def texts(n: int, min_words: int, max_words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) for _ in range(n)]


def _pattern(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour field plus noise: compresses like a photo, not like flat colour."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy = rng.uniform(0.005, 0.05, 2).tolist()
        phase = rng.uniform(0, 6.28)
        img[..., c] = 127 + 100 * np.sin(xs * fx + ys * fy + phase)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg_images(n: int, width: int = 640, height: int = 480, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(_pattern(width, height, rng)).save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def mp4_video(frames: int, width: int = 640, height: int = 360, fps: int = 1, seed: int = 0) -> bytes:
    """An H.264 MP4 of ``frames`` frames at ``fps`` (at 1 fps every frame is sampled)."""
    rng = np.random.default_rng(seed)
    base = _pattern(width, height, rng)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            frame = np.roll(base, shift=i * 7, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def mp4_videos(n: int, frames: int = 16, width: int = 640, height: int = 360, seed: int = 0) -> list[bytes]:
    return [mp4_video(frames, width, height, seed=seed + i) for i in range(n)]
