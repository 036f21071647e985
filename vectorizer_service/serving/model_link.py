"""What the request process needs of the model process: the seam ``Dispatcher`` is typed on.

``ModelProcessLink`` is the real one (a pipe to a spawned process). Tests of the request side
that are not about the model use a stand-in with the same surface
(``tests/support/fake_model_link.py``), so they run in one process without torch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from vectorizer_service.core.pipe_messages import BatchStats, Ready, RowValue, ToModelProcess


class ModelLink(Protocol):
    info: Ready | None  # what the model process reported when it loaded (None while it starts)
    alive: bool  # loaded and answering; False while starting, restarting or stopped
    exited: asyncio.Event  # set when a running model process goes away (the supervisor restarts it)
    on_stats: Callable[[BatchStats], None]  # each batch's statistics, as they arrive

    async def start(self) -> Ready:
        """Start (or restart) the model side; returns what it serves once its models are loaded."""
        ...

    async def stop(self, timeout: float = 30.0) -> None: ...

    def call(self, rows: int, expected: int,
             build: Callable[[int], ToModelProcess]) -> tuple[int, asyncio.Future[list[RowValue | None]]]:
        """Send ``build(rid)``; the future gets ``rows`` slots once ``expected`` of them are answered."""
        ...

    def cancel(self, rid: int) -> None:
        """The caller is gone: drop the request's work before compute."""
        ...
