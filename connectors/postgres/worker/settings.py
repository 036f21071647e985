"""``qvl worker``'s settings (the command's flags, ``connectors/postgres/cli.py``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorkerSettings:
    dsn: str
    service: str  # a gRPC target: HOST:PORT, ipv4:H1:P1,H2:P2, dns:///NAME:PORT
    token: str | None = None
    batch: int = 64
    concurrency: int = 2
    lease_s: float = 300.0  # a claimed row returns to the queue this long after a worker died on it
    poll_s: float = 5.0  # fallback when notifications are missed (e.g. rows applied by replication)
    max_attempts: int = 5  # tries for a row the model fails on (bad input fails at once; outages never count)
    retry_delay_s: float = 5.0  # a failed row's first wait; doubled for each further attempt
    retry_delay_cap_s: float = 600.0
    probe_wait_s: float = 300.0  # how long a probe waits for a restarting service before calling it down
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    rpc_timeout_s: float = 600.0
    stall_s: float = 120.0  # no result for this long: the stream is abandoned and its rows given back
    write_lock_wait_s: float = 5.0  # a batch's write waits this long for rows other transactions hold locked
    log_every_s: float = 10.0
    heartbeat_s: float = 15.0  # qvl.worker_status.last_seen; a worker silent for 3 beats shows as stale
    forget_workers_s: float = 86400.0  # rows of workers not seen for this long are deleted (by live workers)
    prune_every_s: float = 300.0  # qvl.prune_failed: failures of deleted rows (and past the retention); 0: never
    vectorizers: tuple[str, ...] = ()  # names; empty = all
    exit_when_idle: bool = False
    application_name: str = ""  # default qvl-worker-<pid> (pg_stat_activity shows who is who)
    tls: bool = False  # gRPC over TLS, verified against the system's CAs (or ca_file)
    ca_file: str | None = None  # PEM CA bundle that signed the service's certificate (implies TLS)
    # Blue/green (docs/model-upgrades.md): fill the shadow columns of qvl.reembed(name, service, shadow)
    # instead of the vectorizers' own; --service is then the new model's.
    shadow: bool = False
    alive_file: str | None = None  # touched while the worker's loops turn (a liveness probe reads its age)
    # Prometheus metrics (docs/metrics.md): off unless a port is given (0: any free port, for tests). The
    # endpoint has no token: bind it where only the scraper reaches it.
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    metrics_every_s: float = 5.0  # how often the queue depth and failed rows are read for the gauges
