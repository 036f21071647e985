"""The worker's calls to the service: a batch's streams (halved around bad input), the check of what
comes back, and the probes that tell a row's fault from the service's."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from connectors.client import (
    Chunk,
    Client,
    InvalidInput,
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
from connectors.postgres.worker.errors import Malformed, ModelMismatch, ServiceDown
from connectors.postgres.worker.judge import CutVector, mismatch_words, service_words
from connectors.postgres.worker.settings import WorkerSettings
from qvl_proto import vectorizer_pb2 as pb

log = logging.getLogger("qvl.worker")

DEFAULT_MAX_ITEM_BYTES = 128 * 1024 * 1024 - 4096
STREAM_RETRIES = 2  # a lane's stream is carried on to another replica this many times in a row
PROBE_TEXT = "qvl worker probe"
DIMENSIONS_RECHECK_S = 30.0  # a service that could not say whether it gives a vectorizer's size is asked again
# A stream quiet this long has the client ask the service on a new connection: one opened as the
# service went away can otherwise wait until the stall timeout.
STALL_PROBE_S = 5.0
NON_FINITE = "the service returned a vector that is not finite (NaN or infinity)"
MODEL_MISMATCH = "MODEL_MISMATCH"  # the service's reason for a stream pinned to another model

Answer = np.ndarray | CutVector | list[Chunk] | ItemFailure  # a chunked vectorizer's item: its chunks
Checked = np.ndarray | CutVector | list[Chunk] | ItemFailure | ServiceDown | None


@dataclass
class ModelPin:
    """The model a batch's vectors come from: the vectorizer's recorded fingerprint, else the one the
    batch's first answered stream announced, so the batch's later streams (its other groups, the halves
    of a refused one) keep to it on a service whose replicas serve two models. None: not known yet (or
    a service older than fingerprints)."""

    fingerprint: str | None = None


class ServiceCalls:
    def __init__(self, settings: WorkerSettings, stopping: threading.Event,
                 on_resent: Callable[[str, int], None], on_stall: Callable[[str], None] = lambda name: None) -> None:
        self.settings, self.stopping = settings, stopping
        self.on_resent = on_resent  # (vectorizer name, streams that finished after being sent again)
        self.on_stall = on_stall  # (vectorizer name): a stream abandoned, its rows given back
        self.max_item_bytes = DEFAULT_MAX_ITEM_BYTES
        self.check_dimensions = False  # the managed install only (Features.unchecked_dimensions)
        self._dimensions_ok: set[tuple[int, int, str]] = set()  # (vectorizer, dimensions, encoding) the service gives
        self._dimensions_unknown: dict[tuple[int, int, str], float] = {}  # ... it could not say: ask again after

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

    def dimensions_refusal(self, vectorizer: Vectorizer) -> str | None:
        """Why the service cannot give ``vectorizer``'s dimensions, or None (it can, or cannot say now:
        the batch's own calls then find out). Asked once per vectorizer and size: create_vectorizer on
        the managed install could not ask (the database never calls the service)."""
        if not self.check_dimensions:
            return None  # the full install asked the service when the vectorizer was made
        key = (vectorizer.id, vectorizer.dimensions, vectorizer.encoding)
        if key in self._dimensions_ok or time.monotonic() < self._dimensions_unknown.get(key, 0.0):
            return None
        refused: str | None = None
        try:  # a client of its own: no retries, a short deadline (a lane never waits long on this)
            with self.client(timeout=10, retries=0) as probe:
                got = list(probe.embed_stream([pb.Item(parts=[pb.Part(text=PROBE_TEXT)])],
                                              dimensions=vectorizer.dimensions, encoding=vectorizer.encoding,
                                              timeout=10))
            failure = next((r for r in got if isinstance(r, ItemFailure)), None)
            if failure is not None and failure.code == "INVALID_ARGUMENT":
                refused = failure.message
            elif failure is not None or len(got) != 1:
                self._dimensions_unknown[key] = time.monotonic() + DIMENSIONS_RECHECK_S
                return None
        except InvalidInput as exc:
            refused = str(exc)
        except QvlClientError:  # down, busy, ...: the batch's own calls find out; ask again later
            self._dimensions_unknown[key] = time.monotonic() + DIMENSIONS_RECHECK_S
            return None
        if refused is not None:
            return (f"the service's embedding model cannot give {vectorizer.dimensions} dimensions ({refused}): its "
                    f"rows stay queued; SELECT qvl.reembed('{vectorizer.name}', dimensions => N) with a size it gives")
        self._dimensions_ok.add(key)
        return None

    def model_name(self, client: Client, fingerprint: str) -> str | None:
        """The name of the embedding model whose fingerprint is ``fingerprint``, as the service's Info
        says (None when the replica that answers Info serves another, or does not answer)."""
        try:
            models = client.info().models
        except QvlClientError:
            return None
        return next((m.name for m in models if m.task == "embed" and m.fingerprint == fingerprint), None)

    # -- a batch's items -----------------------------------------------------------------------
    def embed_checked(self, client: Client, vectorizer: Vectorizer, items: Sequence[pb.Item],
                      pin: ModelPin) -> list[Checked]:
        """One stream's results, judged: a non-finite vector is that item's failure; a malformed
        answer, items that never reached the model, or failures the probe shows the service has for
        any input become ``ServiceDown`` (the rows go back uncounted)."""
        out: list[Checked] = []
        for res in self.embed(client, vectorizer, items, pin):
            if isinstance(res, np.ndarray | CutVector | list):
                try:
                    checked = check_answer(vectorizer, res.vector if isinstance(res, CutVector) else res)
                except Malformed as exc:
                    raise ServiceDown(f"the service answered a malformed result: {exc}") from None
                out.append(res if isinstance(checked, np.ndarray) else checked)
            elif isinstance(res, ItemFailure) and not_ready(res.code, res.reason):
                out.append(ServiceDown(f"{res.code}: {service_words(res.message)}"))
            else:
                out.append(res)
        if (any(isinstance(res, ItemFailure) for res in out)
                and not any(isinstance(res, np.ndarray | CutVector | list) for res in out)):
            # Nothing in this stream worked: the rows' fault, or the service's? A plain text answers.
            problem = self.probe(vectorizer)
            if problem is not None:
                down = ServiceDown(problem)
                return [down if isinstance(res, ItemFailure) else res for res in out]
        return out

    def embed(self, client: Client, vectorizer: Vectorizer, items: Sequence[pb.Item],
              pin: ModelPin) -> list[Answer | None]:
        """One result per item (None: not answered). A stream failing on bad input is halved until
        the item responsible stands alone, so it cannot block its neighbours."""
        return bisect(items, lambda part: self._stream(client, vectorizer, part, pin))

    def _stream(self, client: Client, vectorizer: Vectorizer, items: Sequence[pb.Item],
                pin: ModelPin) -> Attempt[Answer, ItemFailure]:
        log.debug("embedding", extra={"vectorizer": vectorizer.name, "items": len(items)})
        got: list[Answer] = []
        retried = client.retried
        carried = False  # the stream reached its end (after any resends)
        try:
            stream = client.embed_stream(items, dimensions=vectorizer.dimensions, encoding=vectorizer.encoding,
                                         instruction=vectorizer.instruction, max_in_flight=max(1, len(items)),
                                         timeout=self.settings.rpc_timeout_s, fingerprint=pin.fingerprint,
                                         chunking=vectorizer.chunking)
            for res in stream:
                if isinstance(res, ItemFailure) and res.reason == MODEL_MISMATCH:
                    stream.close()  # cancels the call: the rest would be refused alike
                    raise self.mismatch(client, vectorizer, pin)
                # The text was cut to the service's maximum length (the client's default for a
                # vectorizer without chunking): written, and recorded as cut (qvl.cut_rows).
                cut = client.last_truncated.get(len(got), 0) if isinstance(res, np.ndarray) else 0
                got.append(CutVector(res, cut) if cut else res)
                if pin.fingerprint is None and isinstance(res, np.ndarray | list):
                    pin.fingerprint = client.last_fingerprint  # the model that answered
            carried = True
            return Attempt(got)
        except ModelMismatch:
            raise
        except Exception as exc:
            if isinstance(exc, QvlClientError) and exc.reason == MODEL_MISMATCH:
                raise self.mismatch(client, vectorizer, pin) from None
            if isinstance(exc, StreamStalled):  # the client cancelled it: nothing more will come
                self.on_stall(vectorizer.name)
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

    def mismatch(self, client: Client, vectorizer: Vectorizer, pin: ModelPin) -> ModelMismatch:
        """The service refused the batch's model: which model the vectorizer's vectors came from, which
        the service serves (its Info), and what to run."""
        try:
            served = next((m for m in client.info().models if m.task == "embed"), None)
        except QvlClientError:
            served = None
        recorded = pin.fingerprint or ""
        name = vectorizer.model_name if recorded == vectorizer.model_fingerprint else None
        return ModelMismatch(mismatch_words(vectorizer.name, recorded, name, served.fingerprint if served else None,
                                            served.name if served else None,
                                            vectorizer.destination if vectorizer.shadow else None))

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


def check_answer(vectorizer: Vectorizer, res: np.ndarray | list[Chunk]) -> np.ndarray | list[Chunk] | ItemFailure:
    """A vector as ``check_vector``; a chunked item's chunks each so (one bad chunk fails the row)."""
    if isinstance(res, np.ndarray):
        return check_vector(vectorizer, res)
    for chunk in res:
        checked = check_vector(vectorizer, chunk.vector)
        if isinstance(checked, ItemFailure):
            return checked
    return res


def check_vector(vectorizer: Vectorizer, res: np.ndarray) -> np.ndarray | ItemFailure:
    want = (vectorizer.dimensions + 7) // 8 if vectorizer.storage == "bit" else vectorizer.dimensions
    if res.ndim != 1 or res.shape[0] != want:
        raise Malformed(f"a vector of {res.shape[0] if res.ndim == 1 else res.shape} values, expected {want}")
    if vectorizer.storage != "bit" and not np.isfinite(res).all():
        return ItemFailure(0, NON_FINITE, "INTERNAL")
    return res
