"""The model process's books on each request: rows still owed, sequences still being prepared.

Plain bookkeeping under the batcher's lock (the caller holds it). Getting it right matters: a
request whose rows are never all answered hangs its caller, and a "preparing" count that never
returns to zero makes every later batch wait ``max_wait_ms`` for company that is not coming.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vectorizer_service.core.call_context import CallContext
from vectorizer_service.core.pipe_messages import Row


@dataclass
class OpenRequest:
    ctx: CallContext
    pending: int  # rows not answered yet
    unprepared: int  # sequences not queued or answered yet


class RequestBooks:
    def __init__(self) -> None:
        self.requests: dict[int, OpenRequest] = {}
        self.preparing = 0  # sequences received and not queued yet (decoding, tokenizing), all requests

    def open(self, rid: int, ctx: CallContext, rows: int) -> None:
        self.requests[rid] = OpenRequest(ctx, rows, rows)
        self.preparing += rows

    def get(self, rid: int) -> OpenRequest | None:
        return self.requests.get(rid)

    def cancel(self, rid: int) -> bool:
        request = self.requests.get(rid)
        if request is None:
            return False
        request.ctx.cancelled = True
        return True

    def prepared(self, rid: int, count: int) -> None:
        """``count`` sequences of a request left preparation (queued, or answered without compute)."""
        request = self.requests.get(rid)
        if request is not None:
            done = min(count, request.unprepared)
            request.unprepared -= done
            self.preparing -= done

    def close(self, rid: int) -> bool:
        """The request failed as a whole: forget it; its queued sequences are dropped unanswered."""
        request = self.requests.pop(rid, None)
        if request is None:
            return False
        request.ctx.cancelled = True
        self.preparing -= request.unprepared
        return True

    def answered(self, rows: Iterable[Row]) -> list[Row]:
        """The rows still owed (others belong to requests that failed as a whole); a request is
        forgotten once all its rows are answered."""
        live = []
        for row in rows:
            request = self.requests.get(row[0])
            if request is None:
                continue
            request.pending -= 1
            if request.pending <= 0:
                del self.requests[row[0]]
            live.append(row)
        return live
