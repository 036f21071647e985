"""The worker's Prometheus metrics (``qvl worker --metrics-port``; docs/metrics.md lists them).

One registry per ``Worker`` (not the process's default one), so two workers in one process (the
tests) count apart. Names share the service's style (``qvl_``, counters without ``_total`` here:
prometheus-client adds it) with a ``qvl_worker_`` prefix. Labels stay low-cardinality: the
vectorizer's name and, for holds, one of ``HOLD_REASONS``.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Why a vectorizer is held back (its rows stay queued, none is failed):
#   rights: the worker's role may not read or write its table (a grant, row-level security);
#   model: the service serves another model than the one its vectors came from;
#   claims: claiming its rows fails otherwise (a definition the table no longer matches, ...).
HOLD_REASONS = ("rights", "model", "claims")


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        v = ["vectorizer"]
        self.batches = Counter("qvl_worker_batches", "Batches claimed and written", v, registry=r)
        self.embedded = Counter("qvl_worker_rows_embedded", "Rows whose vector was written", v, registry=r)
        self.failed = Counter("qvl_worker_rows_failed", "Rows moved to the failed table (each move: a row "
                              "failed again after qvl.retry_failed counts again; qvl_worker_failed_rows is "
                              "the rows failed now)", v, registry=r)
        self.retried = Counter("qvl_worker_rows_retried", "Rows the model failed on, kept queued with an "
                               "attempt counted and a delay (failed after --max-attempts)", v, registry=r)
        self.released = Counter("qvl_worker_rows_released", "Rows given back to the queue unwritten, no attempt "
                                "counted (the service stopped answering mid-batch, a stalled stream, a write "
                                "the table changed under)", v, registry=r)
        self.cut = Counter("qvl_worker_rows_cut", "Rows written whose text the service cut to "
                           "QVL_EMBED_MAX_LENGTH", v, registry=r)
        self.resent = Counter("qvl_worker_streams_resent", "Streams carried on after their replica failed",
                              v, registry=r)
        self.stalls = Counter("qvl_worker_stream_stalls", "Streams abandoned for making no progress "
                              "(--stall-timeout) or because the service went away; their rows were given back",
                              v, registry=r)
        self.batch_seconds = Histogram("qvl_worker_batch_seconds", "A batch from its claim to its write", v,
                                       registry=r, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                                                            30, 60, 120, 300, 600))
        self.queue_depth = Gauge("qvl_worker_queue_depth", "Rows queued (pending, claimed or not), read "
                                 "every --metrics-every seconds", v, registry=r)
        self.failed_rows = Gauge("qvl_worker_failed_rows", "Rows in the failed table now (as qvl.vectorizer_status "
                                 "says), read every --metrics-every seconds", v, registry=r)
        self.held = Gauge("qvl_worker_held", "1 while the vectorizer is held back (its rows stay queued) for the "
                          "reason: rights, model or claims", ["vectorizer", "reason"], registry=r)
        self.paused = Gauge("qvl_worker_paused_lanes", "Lanes pausing because the service cannot embed now",
                            registry=r)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def serve(self, port: int, host: str) -> int:
        """Start the endpoint (GET /metrics on ``host:port``); the port it listens on (0: a free one)."""
        self._server, self._thread = start_http_server(port, host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
