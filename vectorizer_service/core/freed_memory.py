"""Keeping the service's resident memory flat: freed pixel buffers go back to the OS."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time

log = logging.getLogger("qvl.memory")
M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024 * 1024
_libc = None
_last_trim = 0.0
_lock = threading.Lock()
TRIM_INTERVAL_S = 0.5

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _libc.malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):  # not glibc: nothing to do
    _libc = None


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Large buffers (images, messages) come from mmap and go back to the OS when freed.

    By default glibc gives each thread an arena and raises its mmap threshold after large
    frees, so freed image buffers stay resident, per thread.
    """
    if _libc is not None:
        _libc.mallopt(M_ARENA_MAX, arenas)
        _libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release_free_memory() -> None:
    """malloc_trim after batches that carried media, at most every TRIM_INTERVAL_S."""
    global _last_trim
    if _libc is None:
        return
    now = time.monotonic()
    with _lock:
        if now - _last_trim < TRIM_INTERVAL_S:
            return
        _last_trim = now
    _libc.malloc_trim(0)
