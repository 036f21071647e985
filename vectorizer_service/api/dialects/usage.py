"""What the dialects report as ``usage``: tokens of the input texts, pixels of the images.

The counts are the texts' own tokens under the served model's tokenizer (no instruction, no
chat template), less the tokens truncation cut from an item: what the model embedded of the text
sent. Media are not tokens here (Voyage's usage counts image pixels from the image headers;
video pixels are 0).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence

from PIL import Image

from vectorizer_service.core.errors import QvlError
from vectorizer_service.core.items import Item
from vectorizer_service.core.vector_encoding import EncodedVector
from vectorizer_service.serving.dispatcher import Dispatcher

INLINE_CHARS = 20_000  # more text than this is counted on a thread, not on the event loop


def _count_each(dispatcher: Dispatcher, task: str, texts: list[list[str]]) -> list[int]:
    """Tokens of each item's texts."""
    encoder = dispatcher.text.get(task)
    flat = [t for item in texts for t in item]
    if encoder is None or not flat:
        return [0] * len(texts)
    lengths = iter([len(e.ids) for e in encoder.backend.encode_batch(flat, add_special_tokens=False)])
    return [sum(next(lengths) for _ in item) for item in texts]


async def _counts(dispatcher: Dispatcher, task: str, texts: list[list[str]]) -> list[int]:
    if sum(len(t) for item in texts for t in item) > INLINE_CHARS:
        return await asyncio.to_thread(_count_each, dispatcher, task, texts)
    return _count_each(dispatcher, task, texts)


def _texts(item: Item) -> list[str]:
    return [t for t in item.texts if isinstance(t, str)]


async def text_tokens(dispatcher: Dispatcher, items: Sequence[Item], task: str = "embed") -> int:
    return sum(await _counts(dispatcher, task, [_texts(item) for item in items]))


async def embedded_tokens(dispatcher: Dispatcher, items: Sequence[Item | QvlError],
                          results: Sequence[EncodedVector | QvlError]) -> int:
    """Text tokens the model embedded: each embedded item's own tokens less those truncation cut
    (``items`` and ``results`` side by side; an item that failed counts none)."""
    texts = [_texts(item) if isinstance(item, Item) and isinstance(r, EncodedVector) else []
             for item, r in zip(items, results, strict=True)]
    counts = await _counts(dispatcher, "embed", texts)
    return sum(max(0, n - r.cut) for n, r in zip(counts, results, strict=True) if isinstance(r, EncodedVector))


def image_pixels(items: Sequence[Item]) -> int:
    """Width x height of each image given as bytes, read from its header (no pixel is decoded)."""
    total = 0
    for item in items:
        for image in item.images:
            if isinstance(image, bytes | bytearray):
                try:
                    with Image.open(io.BytesIO(image)) as im:
                        total += im.width * im.height
                except Exception:  # not an image: the model process refuses it, the count skips it
                    continue
    return total
