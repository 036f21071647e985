"""What the dialects report as ``usage``: tokens of the input texts, pixels of the images.

The counts are the texts' own tokens under the served model's tokenizer (no instruction, no
chat template), so they say how much text was sent, not what the model computed; media are not
tokens here (Voyage's usage counts image pixels from the image headers; video pixels are 0).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence

from PIL import Image

from vectorizer_service.core.items import Item
from vectorizer_service.serving.dispatcher import Dispatcher

INLINE_CHARS = 20_000  # more text than this is counted on a thread, not on the event loop


def _count(dispatcher: Dispatcher, task: str, texts: list[str]) -> int:
    encoder = dispatcher.text.get(task)
    if encoder is None or not texts:
        return 0
    return sum(len(e.ids) for e in encoder.backend.encode_batch(texts, add_special_tokens=False))


async def text_tokens(dispatcher: Dispatcher, items: Sequence[Item], task: str = "embed") -> int:
    texts = [t for item in items for t in item.texts if isinstance(t, str)]
    if sum(map(len, texts)) > INLINE_CHARS:
        return await asyncio.to_thread(_count, dispatcher, task, texts)
    return _count(dispatcher, task, texts)


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
