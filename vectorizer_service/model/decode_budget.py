"""How many pixels decoding may hold, per item and per request, and until when it may run.

Checked on headers before pixels are decoded: an item's images and video frames add up to what
decoding will hold at once (a frame list decodes every frame at full size; a video file holds one
source frame and its resized frames), and a request's items share one budget across the
decoding threads. Decoding also stops once the call's deadline has passed.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

from vectorizer_service.core.errors import DeadlineError, InputError
from vectorizer_service.core.settings import Settings


class DecodeBudget:
    """One request's pixels (shared by the threads decoding its items) and its deadline."""

    def __init__(self, settings: Settings, deadline: float | None = None) -> None:
        self.settings = settings
        self.deadline = deadline
        self.left = settings.max_request_decoded_pixels
        self.lock = threading.Lock()
        self.documents = RequestDocuments(settings, deadline)

    def item(self) -> ItemBudget:
        return ItemBudget(self)

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineError("the deadline passed while decoding media")

    def _take(self, pixels: int, what: str) -> None:
        with self.lock:
            if pixels > self.left:
                total = self.settings.max_request_decoded_pixels
                raise InputError(f"{what} would decode {pixels} pixels, but this request has {max(self.left, 0)} of "
                                 f"its {total} left (QVL_MAX_REQUEST_DECODED_PIXELS); send fewer or smaller media "
                                 "per request", status=413, limit="QVL_MAX_REQUEST_DECODED_PIXELS")
            self.left -= pixels


class RequestDocuments:
    """One request's documents: each one's rendering time (``QVL_DOCUMENT_TIMEOUT_S`` in all, over
    the groups its pages are drawn in, on any renderer: time spent waiting for the model between
    groups is not counted, so a long document paced by the model is not cut short, while one that
    makes PDFium loop is) and its bytes with their digest, read once however many groups draw it."""

    def __init__(self, settings: Settings, call_deadline: float | None) -> None:
        self.timeout = settings.document_timeout_s
        self.call_deadline = call_deadline
        self.spent: dict[int, float] = {}
        self.read: dict[int, tuple[bytes, str]] = {}
        self.lock = threading.Lock()

    def left(self, source: object) -> float:
        """Seconds of rendering ``source`` may still take in this request."""
        with self.lock:
            return max(self.timeout - self.spent.get(id(source), 0.0), 0.0)

    @property
    def call_ends(self) -> float:
        return self.call_deadline if self.call_deadline is not None else time.monotonic() + 24 * 3600.0

    def charge(self, source: object, seconds: float) -> None:
        with self.lock:
            self.spent[id(source)] = self.spent.get(id(source), 0.0) + seconds

    def data(self, source: object, read: Callable[[], bytes]) -> tuple[bytes, str]:
        """The document's bytes and digest (``read`` at most once per source, unless it raised)."""
        with self.lock:
            found = self.read.get(id(source))
        if found is None:
            data = read()
            found = (data, hashlib.blake2b(data, digest_size=16).hexdigest())
            with self.lock:
                self.read[id(source)] = found
        return found


class ItemBudget:
    """One item's share: its own limit, then the request's."""

    def __init__(self, request: DecodeBudget) -> None:
        self.request = request
        self.used = 0

    def take(self, pixels: int, what: str) -> None:
        """Reserve ``pixels`` before decoding them; refuses (413) past the item or request limit."""
        self.request.check_deadline()
        limit = self.request.settings.max_item_decoded_pixels
        if self.used + pixels > limit:
            raise InputError(f"{what} would bring the item's decoded media to {self.used + pixels} pixels, over the "
                             f"limit of {limit} (QVL_MAX_ITEM_DECODED_PIXELS); send fewer frames or smaller media",
                             status=413, limit="QVL_MAX_ITEM_DECODED_PIXELS")
        self.request._take(pixels, what)
        self.used += pixels

    def check_deadline(self) -> None:
        self.request.check_deadline()
