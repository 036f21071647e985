"""Chunking's plain parts: configurations, video windows, the frames of a span, page scales."""

from __future__ import annotations

import math

import pytest

from vectorizer_service.core.chunking import (
    Chunking,
    chunking_from_json,
    chunking_from_spec,
    video_windows,
    window_count,
)
from vectorizer_service.core.errors import InputError
from vectorizer_service.core.parts import window_frames
from vectorizer_service.core.settings import Settings
from vectorizer_service.model.pdf_renderer import page_scale


def test_window_count_is_the_number_of_windows_made() -> None:
    for seconds in [0.5, 1, 2.5, 9.99, 10, 10.01, 59.5, 3600]:
        for window, overlap in [(1, 0), (2.5, 0.5), (10, 0), (10, 9.5), (3, 1)]:
            made = video_windows(seconds, window, overlap)
            assert len(made) == window_count(seconds, window, overlap), (seconds, window, overlap)
            assert made[0][0] == 0 and made[-1][1] == seconds
            assert all(e - s <= window + 1e-9 for s, e in made)


def test_a_short_video_is_one_window() -> None:
    assert video_windows(4.0, 10, 2) == [(0.0, 4.0)]


def test_frames_of_a_span() -> None:
    assert window_frames(0, 3, 2.0, 16) == range(0, 6)
    assert window_frames(2, 5, 2.0, 16) == range(4, 10)
    assert window_frames(6, None, 2.0, 16) == range(12, 16)
    assert window_frames(7.9, 7.95, 2.0, 16) == range(15, 16)  # between two frames: the one before
    assert window_frames(100, 200, 2.0, 16) == range(15, 16)


def test_page_scale_fits_the_pixel_limit() -> None:
    limit = 1800 * 32 * 32
    assert page_scale(612, 792, 96, limit) == pytest.approx(96 / 72)
    scale = page_scale(14400, 14400, 96, limit)  # a 200-inch page
    assert math.ceil(14400 * scale) ** 2 <= limit


def test_configurations_and_their_refusals() -> None:
    settings = Settings()
    assert chunking_from_json({"type": "text", "tokens": 512, "overlap": 64}) == Chunking("text", tokens=512,
                                                                                         overlap=64)
    assert chunking_from_spec("video:10:2") == Chunking("video", seconds=10, overlap=2)
    assert chunking_from_spec("pages:50") == Chunking("pages", max_pages=50)
    for bad in [{"type": "text"}, {"type": "video", "seconds": "10"}, {"type": "pages", "every": 2}, ["pages"],
                {"type": "text", "tokens": math.nan}, {"type": "text", "tokens": 1e300}]:
        with pytest.raises(InputError):
            chunking_from_json(bad)
    for config in [Chunking("text", tokens=4), Chunking("text", tokens=10_000), Chunking("video", seconds=5, overlap=5),
                   Chunking("video", seconds=math.inf), Chunking("pages", max_pages=0)]:
        with pytest.raises(InputError):
            config.check(settings)
    with pytest.raises(InputError, match="--chunk"):
        chunking_from_spec("sentences")
