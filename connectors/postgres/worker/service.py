"""The worker's calls to the service: a batch's streams (halved around bad input), the check of what
comes back, and the probes that tell a row's fault from the service's."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from connectors.client import (
    Client,
    ItemFailure,
    QvlClientError,
    StreamStalled,
    TransientError,
    Unauthenticated,
    not_ready,
)
from connectors.postgres.vectorizers import Vectorizer
from connectors.postgres.worker.attempts import is_transient
from connectors.postgres.worker.bisection import Attempt, bisect
from connectors.postgres.worker.errors import Malformed, ServiceDown
from connectors.postgres.worker.judge import service_words
from connectors.postgres.worker.settings import WorkerSettings
from qvl_proto import vectorizer_pb2 as pb

log = logging.getLogger("qvl.worker")

DEFAULT_MAX_ITEM_BYTES = 128 * 1024 * 1024 - 4096
STREAM_RETRIES = 2  # a lane's stream is carried on to another replica this many times in a row
PROBE_TEXT = "qvl worker probe"
# A stream quiet this long has the client ask the service on a new connection: one opened as the
# service went away can otherwise wait until the stall timeout.
STALL_PROBE_S = 5.0
NON_FINITE = "the service returned a vector that is not finite (NaN or infinity)"

Answer = np.ndarray | ItemFailure
Checked = np.ndarray | ItemFailure | ServiceDown | None


class ServiceCalls:
    def __init__(self, settings: WorkerSettings, stopping: threading.Event,
                 on_resent: Callable[[str, int], None]) -> None:
        self.settings, self.stopping = settings, stopping
        self.on_resent = on_resent  # (vectorizer name, streams that finished after being sent again)
        self.max_item_bytes = DEFAULT_MAX_ITEM_BYTES

    def client(self, *, timeout: float | None = None, retries: int = STREAM_RETRIES) -> Client:
        settings = self.settings
        roots = Path(settings.ca_file).read_bytes() if settings.ca_file else None
        return Client(settings.service, token=settings.token, timeout=timeout or settings.rpc_timeout_s,
                      retries=retries, root_certificates=roots, tls=settings.tls,
                      stall_timeout=settings.stall_s, stall_probe=STALL_PROBE_S)

    def learn_limits(self) -> None:
        try:
            with self.client(timeout=10, retries=0) as client:
                info = client.info()
            self.max_item_bytes = max(1024, int(info.limits.max_request_bytes) - 4096)
        except QvlClientError as exc:
            log.warning("the service is not answering yet; rows stay queued until it does",
                        extra={"service": self.settings.service, "error": str(exc)})

    # -- a batch's items -----------------------------------------------------------------------
    def embed_checked(self, client: Client, vectorizer: Vectorizer, items: Sequence[pb.Item]) -> list[Checked]:
        """One stream's results, judged: a non-finite vector is that item's failure; a malformed
        answer, items that never reached the model, or failures the probe shows the service has for
        any input become ``ServiceDown`` (the rows go back uncounted)."""
        out: list[Checked] = []
        for res in self.embed(client, vectorizer, items):
            if isinstance(res, np.ndarray):
                try:
                    out.append(check_vector(vectorizer, res))
                except Malformed as exc:
                    raise ServiceDown(f"the service answered a malformed result: {exc}") from None
            elif isinstance(res, ItemFailure) and not_ready(res.code, res.reason):
                out.append(ServiceDown(f"{res.code}: {service_words(res.message)}"))
            else:
                out.append(res)
        if any(isinstance(res, ItemFailure) for res in out) and not any(isinstance(res, np.ndarray) for res in out):
            # Nothing in this stream worked: the rows' fault, or the service's? A plain text answers.
            problem = self.probe(vectorizer)
            if problem is not None:
                down = ServiceDown(problem)
                return [down if isinstance(res, ItemFailure) else res for res in out]
        return out

    def embed(self, client: Client, vectorizer: Vectorizer, items: Sequence[pb.Item]) -> list[Answer | None]:
        """One result per item (None: not answered). A stream failing on bad input is halved until
        the item responsible stands alone, so it cannot block its neighbours."""
        return bisect(items, lambda part: self._stream(client, vectorizer, part))

    def _stream(self, client: Client, vectorizer: Vectorizer, items: Sequence[pb.Item]) -> Attempt[Answer, ItemFailure]:
        log.debug("embedding", extra={"vectorizer": vectorizer.name, "items": len(items)})
        got: list[Answer] = []
        retried = client.retried
        carried = False  # the stream reached its end (after any resends)
        try:
            stream = client.embed_stream(items, dimensions=vectorizer.dimensions, encoding=vectorizer.encoding,
                                         instruction=vectorizer.instruction, max_in_flight=max(1, len(items)),
                                         timeout=self.settings.rpc_timeout_s)
            for res in stream:
                got.append(res)
            carried = True
            return Attempt(got)
        except Exception as exc:
            if isinstance(exc, StreamStalled):  # the client cancelled it: nothing more will come
                raise self._abandoned(exc) from None
            # CANCELLED for a whole stream: the service stopped it (draining), not this input.
            if isinstance(exc, TransientError) or (isinstance(exc, QvlClientError) and exc.code == "CANCELLED"):
                if not got:
                    raise ServiceDown(str(exc)) from None
                return Attempt(got)  # keep what came back; the rest goes back to the queue
            if isinstance(exc, Unauthenticated):
                raise ServiceDown(f"the service refused the token (pass --token or QVL_TOKEN): {exc}") from None
            if not isinstance(exc, QvlClientError):
                raise
            return Attempt(got, ItemFailure(0, str(exc), exc.code, exc.limit, exc.reason))
        finally:
            # Only a stream that then finished was carried on; one whose retries all failed (a single
            # replica that is down) is the ServiceDown reported above, not a resend.
            if client.retried > retried and carried:
                log.info("a stream was carried on after its replica failed", extra={
                    "vectorizer": vectorizer.name, "times": client.retried - retried})
                self.on_resent(vectorizer.name, client.retried - retried)

    def _abandoned(self, stalled: StreamStalled) -> ServiceDown:
        log.warning("the service stream made no progress; abandoning it", extra={
            "stall_s": self.settings.stall_s, "unreachable": stalled.unreachable})
        if stalled.unreachable:
            return ServiceDown("the service went away while the stream waited; its rows were given back")
        return ServiceDown(f"no answer from the service for {self.settings.stall_s:g} s; the stream was "
                           f"abandoned and its rows given back")

    # -- probes ----------------------------------------------------------------------------------
    def probe_once(self, vectorizer: Vectorizer) -> str | None:
        """None when the service embeds a plain text with this vectorizer's options, else why not."""
        try:
            with self.client(timeout=30, retries=0) as client:
                got = list(client.embed_stream([pb.Item(parts=[pb.Part(text=PROBE_TEXT)])],
                                               dimensions=vectorizer.dimensions, encoding=vectorizer.encoding,
                                               instruction=vectorizer.instruction, timeout=30))
        except QvlClientError as exc:
            return f"{exc.code}: {exc}"
        if len(got) != 1:
            return "the service answered a probe with nothing"
        res = got[0]
        if isinstance(res, ItemFailure):
            return f"{res.code}: {service_words(res.message)}"
        try:
            checked = check_vector(vectorizer, res)
        except Malformed as exc:
            return f"the service answered a malformed result: {exc}"
        return checked.message if isinstance(checked, ItemFailure) else None

    def probe(self, vectorizer: Vectorizer) -> str | None:
        """Like ``probe_once``, but a service that is restarting (a transient failure) is waited
        for, up to probe_wait_s: a row that killed the model process is then counted, not excused."""
        deadline = time.monotonic() + self.settings.probe_wait_s
        while True:
            problem = self.probe_once(vectorizer)
            if problem is None or not is_transient(problem):
                return problem
            if time.monotonic() >= deadline or self.stopping.wait(1.0):
                return problem


def check_vector(vectorizer: Vectorizer, res: np.ndarray) -> np.ndarray | ItemFailure:
    want = (vectorizer.dimensions + 7) // 8 if vectorizer.storage == "bit" else vectorizer.dimensions
    if res.ndim != 1 or res.shape[0] != want:
        raise Malformed(f"a vector of {res.shape[0] if res.ndim == 1 else res.shape} values, expected {want}")
    if vectorizer.storage != "bit" and not np.isfinite(res).all():
        return ItemFailure(0, NON_FINITE, "INTERNAL")
    return res
