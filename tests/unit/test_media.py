"""Decoding every accepted format, video sampling, and a bounded fuzz of the decoders."""

from __future__ import annotations

import contextlib
import random
import time

import numpy as np
import pytest

from tests.media_factory import image_bytes, video_bytes
from vectorizer_service.core.errors import InputError
from vectorizer_service.core.items import Item
from vectorizer_service.core.settings import Settings
from vectorizer_service.core.vector_encoding import EncodedVector
from vectorizer_service.model.media import decode_image, decode_video
from vectorizer_service.model.served_models import Models


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_image_format_decodes(tiny_settings: Settings, fmt: str) -> None:
    img = decode_image(image_bytes(fmt, (50, 30)), tiny_settings)
    assert img.mode == "RGB" and img.size == (50, 30)


def test_rgba_is_flattened_on_white(tiny_settings: Settings) -> None:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buf, format="PNG")
    assert decode_image(buf.getvalue(), tiny_settings).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(("container", "codec"), [("mp4", "libx264"), ("webm", "libvpx-vp9"),
                                                  ("matroska", "libx264"), ("mov", "libx264"), ("gif", "gif")])
def test_video_containers_decode(tiny_settings: Settings, container: str, codec: str) -> None:
    video = decode_video(video_bytes(frames=6, fps=2, container=container, codec=codec), tiny_settings)
    assert video.frames.shape[1:] == (3, 64, 96)  # type: ignore[union-attr]
    assert video.metadata["total_num_frames"] == 6


def test_video_sampling_follows_fps_and_max_frames(tiny_settings: Settings) -> None:
    # 40 frames at 4 fps = 10 s; at 1 fps we take 10 frames, evenly spaced.
    video = decode_video(video_bytes(frames=40, fps=4), tiny_settings)
    assert len(video.metadata["frames_indices"]) == 10
    assert video.metadata["frames_indices"][0] == 0 and video.metadata["frames_indices"][-1] == 39
    capped = tiny_settings.model_copy(update={"video_max_frames": 4})
    assert len(decode_video(video_bytes(frames=40, fps=4), capped).metadata["frames_indices"]) == 4


def test_video_bytes_embed_like_the_same_frames(models: Models) -> None:
    """An MP4 embeds to a finite unit vector; its timestamps come from the real frame rate."""
    assert models.embedder is not None
    [vec] = models.embedder.embed([Item(videos=[video_bytes(frames=8, fps=2)], texts=["clip"])])
    assert isinstance(vec, EncodedVector)
    assert abs(np.linalg.norm(vec.values) - 1) < 1e-5
    [enc] = models.embedder.prepare([Item(videos=[video_bytes(frames=8, fps=2)])])
    text = models.embedder.pre.tokenizer.decode(enc.input_ids)  # type: ignore[union-attr]
    # 4 s at 1 fps: frames 0, 2, 5, 7 of 8 at 2 fps; each pair labelled with its mean time
    assert "<0.5 seconds>" in text and "<3.0 seconds>" in text


def test_fuzz_decoders_only_raise_input_error(tiny_settings: Settings) -> None:
    """Random and truncated media bytes: no crash, no hang, only the project's error type."""
    rng = random.Random(1234)
    seeds = [image_bytes(f) for f in ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")]
    seeds += [video_bytes(frames=4), video_bytes(frames=4, container="webm", codec="libvpx-vp9")]
    cases: list[bytes] = []
    for data in seeds:
        for _ in range(12):
            cut = rng.randrange(1, len(data))
            cases.append(data[:cut])
            flipped = bytearray(data)
            for _ in range(rng.randint(1, 20)):
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
            cases.append(bytes(flipped))
    cases += [bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096))) for _ in range(40)]
    deadline = time.monotonic() + 120
    for data in cases:
        for decode in (decode_image, decode_video):
            start = time.monotonic()
            with contextlib.suppress(InputError):
                decode(data, tiny_settings)
            assert time.monotonic() - start < 10, "a decoder took too long"
        assert time.monotonic() < deadline
