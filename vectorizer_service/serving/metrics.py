"""Prometheus metrics of the service (one registry per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from vectorizer_service.core.pipe_messages import BatchStats

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter("qvl_requests", "Requests by entry point and outcome", ["endpoint", "code"], registry=REGISTRY)
ERRORS = Counter("qvl_errors", "Errors by kind", ["kind"], registry=REGISTRY)
ITEMS = Counter("qvl_items", "Items (embed) or pairs (rerank) computed", ["task"], registry=REGISTRY)
TOKENS = Counter("qvl_tokens", "Tokens through the model (rate() gives tokens/s)", ["task"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("qvl_queue_depth", "Sequences waiting for the model", ["task"], registry=REGISTRY)
ADMITTED = Gauge("qvl_admitted_items", "Items admitted and not finished (bounded by the queue limit)",
                 registry=REGISTRY)
ADMITTED_BYTES = Gauge("qvl_admitted_media_bytes", "Raw media bytes admitted and not finished", registry=REGISTRY)
WIRE_BYTES = Gauge("qvl_wire_bytes", "Request bytes held (HTTP bodies, gRPC messages, stream read-ahead)",
                   registry=REGISTRY)
PREPARED_BYTES = Gauge("qvl_prepared_bytes", "Decoded pixel tensors waiting for or in the model", registry=REGISTRY)
BATCH_SIZE = Histogram("qvl_batch_size", "Sequences per model batch", ["task"], registry=REGISTRY,
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
BATCH_TOKENS = Histogram("qvl_batch_tokens", "Padded tokens per model batch", ["task"], registry=REGISTRY,
                         buckets=(64, 256, 1024, 4096, 16384, 65536, 262144))
FORWARD_SECONDS = Histogram("qvl_forward_seconds", "Model forward time per batch", ["task"], registry=REGISTRY,
                            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
LATENCY = Histogram("qvl_request_seconds", "Request latency", ["endpoint"], registry=REGISTRY,
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
QUEUE_WAIT = Histogram("qvl_queue_wait_seconds", "Time a sequence waits for its batch", ["task"],
                       registry=REGISTRY, buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5))
DROPPED = Counter("qvl_dropped", "Sequences dropped before compute (caller gone or deadline passed)", ["reason"],
                  registry=REGISTRY)


def record_batch(stats: BatchStats) -> None:
    """The model process's batch statistics, exported from the request process."""
    for name, depth in stats.depth.items():
        QUEUE_DEPTH.labels(name).set(depth)
    PREPARED_BYTES.set(stats.prepared_bytes)
    for wait in stats.waits:
        QUEUE_WAIT.labels(stats.task).observe(wait)
    for reason, count in stats.dropped.items():
        if count:
            DROPPED.labels(reason).inc(count)
    if stats.size:
        FORWARD_SECONDS.labels(stats.task).observe(stats.seconds)
        BATCH_SIZE.labels(stats.task).observe(stats.size)
        BATCH_TOKENS.labels(stats.task).observe(stats.padded)
        ITEMS.labels(stats.task).inc(stats.size)
        TOKENS.labels(stats.task).inc(stats.tokens)
