"""Spans of a video file, each sampled as a video of its own; all spans of a file from one decode.

A span's frames are sampled by the reference's rules (``QVL_VIDEO_FPS``, ``QVL_VIDEO_MAX_FRAMES``,
the total pixel budget) among the frames that lie in it, and labelled with times from the span's
start, as a pre-cut clip would be. A clip sent alone and the same span cut by chunking run
through this one function, so their frames are the same pixels. The file is decoded once, front
to back: each frame is handed to the spans that want it, and a span leaves as soon as its last
frame is decoded, so memory holds the open spans' frames, not the whole video's.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import av
import torch

from vectorizer_service.core.errors import InputError, QvlError
from vectorizer_service.core.parts import SourceFacts, window_frames
from vectorizer_service.core.settings import Settings
from vectorizer_service.model.decode_budget import ItemBudget
from vectorizer_service.model.media import (
    DecodedVideo,
    VideoHeader,
    _resize_frames,
    sample_indices,
    video_target_size,
    with_video_header,
)

Span = tuple[float | None, float | None]


def video_facts(data: bytes, settings: Settings, what: str) -> SourceFacts:
    """A video's length for chunking: its frames over its frame rate (frame k is at k / rate)."""
    header = with_video_header(data, settings, what)
    return SourceFacts(seconds=header.total / header.rate)


@dataclass
class _Plan:
    """One span: the source frames it samples, the size they shrink to, what it holds so far."""

    number: int
    first: int  # the span's first frame: its time zero
    count: int  # frames in the span
    indices: list[int]  # sampled ordinals (a frame may repeat)
    target: tuple[int, int] | None  # None: kept at source size
    frames: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def last(self) -> int:
        return max(self.indices)

    def video(self, rate: float) -> DecodedVideo:
        good = [self.frames[i] for i in self.indices if i in self.frames]
        frames = [self.frames.get(i, good[-1]) for i in self.indices]  # a damaged tail repeats its last frame
        meta = {"fps": rate, "frames_indices": [i - self.first for i in self.indices], "total_num_frames": self.count}
        return DecodedVideo(frames=torch.stack(frames), metadata=meta, resized=self.target is not None)


def _plan(number: int, span: Span, header: VideoHeader, settings: Settings, budget: ItemBudget,
          what: str) -> _Plan:
    frames = window_frames(span[0], span[1], header.rate, header.total)
    indices = [frames.start + i for i in sample_indices(len(frames), header.rate, settings)]
    target = video_target_size(len(indices), header.height, header.width, settings)
    source = header.height * header.width
    shrink = target[0] * target[1] < source
    held = len(indices) * (target[0] * target[1] if shrink else source)
    budget.take(held + (source if shrink else 0), what)
    return _Plan(number, frames.start, len(frames), indices, target if shrink else None)


def decode_clips(data: bytes, spans: Sequence[Span], settings: Settings, what: str,
                 budgets: Sequence[ItemBudget]) -> Iterator[tuple[int, DecodedVideo | QvlError]]:
    """(span number, its frames or its own error) for every span, as each completes."""
    header = with_video_header(data, settings, what)
    plans: list[_Plan] = []
    for number, (span, budget) in enumerate(zip(spans, budgets, strict=True)):
        try:
            plans.append(_plan(number, span, header, settings, budget, what))
        except QvlError as err:
            yield number, err
    if not plans:
        return
    plans.sort(key=lambda p: (p.last, p.number))
    try:
        yield from _decode(data, plans, header.rate, budgets[0], what)
    except QvlError:
        raise
    except Exception as exc:  # FFmpeg reports damage through many exception types
        raise InputError(f"{what} frames could not be decoded: {exc}") from None


def _decode(data: bytes, plans: list[_Plan], rate: float, budget: ItemBudget,
            what: str) -> Iterator[tuple[int, DecodedVideo | QvlError]]:
    wanted: dict[int, list[_Plan]] = {}
    for plan in plans:
        for i in set(plan.indices):
            wanted.setdefault(i, []).append(plan)
    waiting = list(plans)  # by last frame
    with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
        for ordinal, frame in enumerate(container.decode(container.streams.video[0])):
            budget.check_deadline()
            if ordinal in wanted:
                pixels = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                for plan in wanted.pop(ordinal):
                    shrunk = pixels if plan.target is None else _resize_frames(pixels[None], plan.target)[0]
                    plan.frames[ordinal] = shrunk.contiguous()
            while waiting and waiting[0].last <= ordinal:
                plan = waiting.pop(0)
                yield plan.number, plan.video(rate)
            if not waiting:
                return
    for plan in waiting:  # the file ended early (damaged): spans with some frames keep them
        yield plan.number, (plan.video(rate) if plan.frames else
                            InputError(f"{what} has no decodable frames in the span of clip {plan.number}"))
