"""The composition root: ``Worker`` builds the parts and runs the lanes, the listener and the
monitor; ``run_worker`` is the ``qvl worker`` entry point."""

from __future__ import annotations

import faulthandler
import functools
import logging
import os
import signal
import socket
import threading
from typing import Any

import psycopg

from connectors.postgres.worker.alive import AliveFile
from connectors.postgres.worker.attempts import AttemptRules
from connectors.postgres.worker.backoff import Backoff
from connectors.postgres.worker.batch import BatchRunner
from connectors.postgres.worker.catalog import Catalog
from connectors.postgres.worker.claims import Claims
from connectors.postgres.worker.connections import connect
from connectors.postgres.worker.features import Features
from connectors.postgres.worker.holds import Holds
from connectors.postgres.worker.lane import Lane, LaneParts
from connectors.postgres.worker.listener import listen
from connectors.postgres.worker.metrics import WorkerMetrics
from connectors.postgres.worker.monitor import Monitor
from connectors.postgres.worker.progress import Counters, Progress
from connectors.postgres.worker.service import ServiceCalls
from connectors.postgres.worker.settings import WorkerSettings
from connectors.postgres.worker.startup import check_install
from connectors.postgres.worker.status import StatusBoard
from connectors.postgres.worker.store import BatchStore

log = logging.getLogger("qvl.worker")


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        self.ident = f"{socket.gethostname()}:{os.getpid()}"
        self.connect = functools.partial(connect, settings.dsn, settings.application_name)
        self.catalog = Catalog(settings.vectorizers, shadows=settings.shadow)
        self.metrics = WorkerMetrics()
        self.progress = Progress(self.metrics)
        self.status = StatusBoard(self.ident, settings.service, settings.heartbeat_s, settings.forget_workers_s)
        self.service = ServiceCalls(settings, self.stopping, self.progress.add_resent, self.progress.add_stall)
        self.alive = AliveFile(settings.alive_file)
        self.store = store = BatchStore(settings, self.catalog, self.connect, self.stopping)
        rules = AttemptRules(settings.max_attempts, settings.retry_delay_s, settings.retry_delay_cap_s)
        parts = LaneParts(settings, self.stopping, self.connect, self.catalog,
                          Claims(store, Holds(self._backoff), self.catalog, self.metrics), self.status,
                          BatchRunner(rules, self.service, store, self.progress, settings.write_lock_wait_s),
                          self.service)
        self.lanes = [Lane(n, f"{self.ident}:{n}", parts) for n in range(max(1, settings.concurrency))]
        self.metrics.paused.set_function(lambda: sum(lane.down_since is not None for lane in self.lanes))
        self.metrics_port: int | None = None  # where the endpoint listens, once run() started it

    def _backoff(self) -> Backoff:
        return Backoff(self.settings.backoff_base_s, self.settings.backoff_cap_s)

    def stop(self) -> None:
        """Finish the batches in hand, then return from run()."""
        self.stopping.set()
        self._wake_all()

    def counters(self) -> dict[str, Counters]:
        return self.progress.counters()

    def run(self) -> None:
        if self.settings.metrics_port is not None:
            # First: a port that is taken fails the start, before any row is claimed.
            host, port = self.settings.metrics_host, self.settings.metrics_port
            try:
                self.metrics_port = self.metrics.serve(port, host)
            except OSError as exc:  # taken, or an address this host does not have
                raise RuntimeError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
            log.info("metrics endpoint listening", extra={"host": self.settings.metrics_host,
                                                         "port": self.metrics_port, "path": "/metrics"})
        try:
            self._run()
        finally:
            self.metrics.close()

    def _run(self) -> None:
        features = check_install(self.connect, self._backoff(), self.stopping, self.alive,
                                 exit_when_idle=self.settings.exit_when_idle)
        self.status.features = self.store.features = features = features or Features()
        self.service.check_dimensions = features.unchecked_dimensions
        if not features.cut_rows:
            log.info("rows the service cuts to its maximum length are embedded but not recorded in "
                     "qvl.vectorizer_status.cut: the database's qvl schema is older than version 12 (qvl pg install "
                     "upgrades it), or the worker's role may not write qvl.cut_rows (grant its login qvl_worker)")
        self.service.learn_limits()
        lanes = [threading.Thread(target=lane.run, name=f"qvl-lane-{lane.n}", daemon=True) for lane in self.lanes]
        listener = threading.Thread(target=listen, args=(self.connect, self._backoff(), self.stopping),
                                    kwargs={"poll_s": self.settings.poll_s, "on_config": self.catalog.invalidate,
                                            "wake_all": self._wake_all}, name="qvl-listen", daemon=True)
        for t in [*lanes, listener]:
            t.start()
        log.info("worker started", extra={"worker": self.ident, "service": self.settings.service,
                                          "concurrency": len(lanes), "batch": self.settings.batch})
        try:
            Monitor(self.settings, self.connect, self.stopping, catalog=self.catalog, status=self.status,
                    progress=self.progress, alive=self.alive, idle=self._idle).run()
        finally:
            self.stop()
            for t in lanes:
                t.join()
            listener.join(timeout=5)
            self._final_report()
            self._forget_status()
            log.info("worker stopped", extra={"worker": self.ident})

    def _idle(self) -> bool:
        return all(lane.idle for lane in self.lanes)

    def _wake_all(self) -> None:
        for lane in self.lanes:
            lane.wake.set()

    def _final_report(self) -> None:
        """Every vectorizer's last line, with the database's counts when it answers."""
        try:
            with self.connect() as conn:
                self.progress.report(self.catalog.known(), conn, final=True)
                return
        except psycopg.Error:
            pass
        self.progress.report(self.catalog.known(), final=True)

    def _forget_status(self) -> None:
        try:
            with self.connect() as conn:
                self.status.forget(conn)
        except psycopg.Error:
            pass


def run_worker(settings: WorkerSettings, *, handle_signals: bool = True) -> int:
    """The ``qvl worker`` entry point: SIGTERM/SIGINT finish the batches in hand, a second one exits now."""
    worker = Worker(settings)
    if handle_signals:
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: where is each lane?
        faulthandler.enable(all_threads=True)  # a crash in C code (SIGSEGV, SIGABRT) leaves every thread's stack

        def on_signal(signum: int, frame: Any) -> None:
            if worker.stopping.is_set():
                log.warning("second signal: exiting now (claimed rows return when their lease ends)")
                os._exit(1)
            log.info("signal received: finishing the batches in hand", extra={"signal": signum})
            worker.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        worker.run()
    except RuntimeError as exc:
        log.error(str(exc))
        return 2
    return 0
