"""Decoded-media budgets: what decoding will hold is added up from headers before any pixel is
decoded (per item and per request), video files shrink frame by frame as they are decoded, only
allowed codecs are decoded, and decoding stops at the call's deadline."""

from __future__ import annotations

import io
import time

import av
import numpy as np
import pytest
import torch

from tests.media_factory import image_bytes, png_bomb, video_bytes
from vectorizer_service.core.errors import DeadlineError, InputError
from vectorizer_service.core.items import Item
from vectorizer_service.core.settings import Settings
from vectorizer_service.model.decode_budget import DecodeBudget
from vectorizer_service.model.media import _resize_frames, decode_video, resize_video, video_target_size
from vectorizer_service.model.served_models import Models


def test_a_frame_list_is_refused_from_its_headers(tiny_settings: Settings) -> None:
    """20 frames of 6000x6000 (each under the per-image limit) would hold 720 Mpx at once."""
    frames = [png_bomb(6000, 6000)] * 20
    started = time.monotonic()
    with pytest.raises(InputError) as info:
        decode_video(frames, tiny_settings, "video 0")
    assert info.value.status == 413 and "QVL_MAX_ITEM_DECODED_PIXELS" in str(info.value)
    assert time.monotonic() - started < 2.0  # headers only: nothing was decoded


def test_a_requests_items_share_one_budget(models: Models, tiny_settings: Settings) -> None:
    assert models.embedder is not None
    small = tiny_settings.model_copy(update={"max_request_decoded_pixels": 10_000})
    items = [Item(images=[image_bytes("PNG", (64, 48), seed=i)]) for i in range(4)] + [Item(texts=["text"])]
    out = models.embedder.prepare(items, None, DecodeBudget(small))
    assert [isinstance(o, InputError) for o in out] == [False, False, False, True, False]
    assert out[3].status == 413 and "QVL_MAX_REQUEST_DECODED_PIXELS" in str(out[3])  # type: ignore[union-attr]


def _png_in_mov() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mov") as out:
        stream = out.add_stream("png", rate=2)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 40, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def test_only_allowed_codecs_are_decoded(tiny_settings: Settings) -> None:
    with pytest.raises(InputError, match="codec 'png' is not allowed"):
        decode_video(_png_in_mov(), tiny_settings, "video 0")
    allowed = tiny_settings.model_copy(update={"video_codecs": [*tiny_settings.video_codecs, "png"]})
    assert decode_video(_png_in_mov(), allowed, "video 0").frames.shape[0] >= 2


def test_frames_shrink_as_decoded_exactly_as_all_at_once(tiny_settings: Settings) -> None:
    data = video_bytes(frames=8, fps=2, size=(640, 480))
    small = tiny_settings.model_copy(update={"video_total_pixels": 4 * 128 * 32 * 32})
    video = decode_video(data, small, "video 0")
    indices = video.metadata["frames_indices"]
    assert video.resized and video.frames.shape[2:] == video_target_size(len(indices), 480, 640, small)
    with av.open(io.BytesIO(data)) as container:
        full = [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1) for f in container.decode(video=0)]
    whole = torch.stack([full[i] for i in indices])
    expected = _resize_frames(whole, video_target_size(len(indices), 480, 640, small)).float()
    frames, _ = resize_video(video, small)
    assert torch.equal(frames, expected)


def test_decoding_stops_at_the_deadline(tiny_settings: Settings) -> None:
    late = DecodeBudget(tiny_settings, deadline=time.monotonic() - 1)
    with pytest.raises(DeadlineError):
        decode_video(video_bytes(frames=8, fps=2), tiny_settings, "video 0", late.item())
