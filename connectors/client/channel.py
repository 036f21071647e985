"""What the sync and async clients share: their settings, checked, and their channels' options."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np

from connectors.client.errors import QvlClientError
from connectors.client.options import optional_seconds, seconds, whole
from connectors.client.session import StreamSession, call_retry
from qvl_proto import vectorizer_pb2 as pb

MAX_MESSAGE = 256 * 1024 * 1024
SERVICE_NAME = "qvl.v1.Vectorizer"
# round_robin over every address the target resolves to, each watched with grpc.health.v1: a
# replica that is NOT_SERVING (loading, draining, restarting its model process) gets no calls.
# (pick_first, gRPC's default, would send everything to the first address that connects.)
SERVICE_CONFIG = {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": SERVICE_NAME}}
# A stall probe's Info call: a service that is there answers it in milliseconds.
PROBE_TIMEOUT_S = 3.0


class ClientBase:
    """Settings of ``Client`` and ``AsyncClient``.

    ``stall_timeout``: an ``embed_stream`` with items out (or owed) that answers nothing for this long is
    cancelled and raises ``StreamStalled``. ``stall_probe`` (None: never): once a stream has waited
    this long for an answer, the service is asked (``Info``, on a new connection) every that many
    seconds, and the stream is cancelled at once when nobody answers there (a stream opened just
    as the service went away can otherwise wait until ``stall_timeout``). ``cancel_grace``: a stalled
    stream whose receive is still blocked this long after its cancel is ended by force, so none
    stays blocked: ``Client`` closes its channel and uses a new one (other calls on the old one end
    CANCELLED and are sent again, as any CANCELLED is); ``AsyncClient`` interrupts the task that
    waits, and replaces its channel likewise.
    """

    def __init__(self, target: str, *, token: str | None = None, timeout: float = 120.0, retries: int = 6,
                 root_certificates: bytes | None = None, tls: bool = False, stall_timeout: float = 120.0,
                 stall_probe: float | None = None, cancel_grace: float = 3.0,
                 channel_options: Sequence[tuple[str, Any]] = ()) -> None:
        self.target = target
        self.timeout = seconds("timeout", timeout)
        self.retries = whole("retries", retries, least=0)
        self.stall_timeout = seconds("stall_timeout", stall_timeout)
        self.stall_probe = optional_seconds("stall_probe", stall_probe)
        self.cancel_grace = seconds("cancel_grace", cancel_grace)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        # Keepalive finds a dead connection in seconds; a short reconnect backoff finds a service
        # that came back (gRPC's default backoff grows to two minutes).
        defaults = {"grpc.max_send_message_length": MAX_MESSAGE, "grpc.max_receive_message_length": MAX_MESSAGE,
                    "grpc.keepalive_time_ms": 10_000, "grpc.keepalive_timeout_ms": 5_000,
                    "grpc.keepalive_permit_without_calls": 1, "grpc.http2.max_pings_without_data": 0,
                    "grpc.max_reconnect_backoff_ms": 5_000, "grpc.service_config": json.dumps(SERVICE_CONFIG)}
        self.options = list({**defaults, **dict(channel_options)}.items())
        # A probe's channel gets connections of its own: gRPC shares one connection among the
        # channels of a process that have the same options, and the probe asks a new one.
        self.probe_options = [*self.options, ("grpc.use_local_subchannel_pool", 1)]
        self.credentials = grpc.ssl_channel_credentials(root_certificates) if (tls or root_certificates) else None
        self.retried = 0  # calls and streams sent again (errors.RETRY)
        self.closed = False
        self.last_scales = np.zeros(0, dtype=np.float32)  # the int8 scales of the last ``embed``
        # The cut items of the last ``embed`` or ``embed_stream`` (filled as the stream's results come):
        # index in its input -> text tokens cut.
        self.last_truncated: dict[int, int] = {}
        # The fingerprint of the model that answered the last embed / embed_stream (metadata
        # "qvl-model-fingerprint"); None before, or from a service older than fingerprints.
        self.last_fingerprint: str | None = None

    def _timeout(self, value: float | None) -> float:
        return self.timeout if value is None else value

    def _session(self, options: pb.EmbedOptions, max_in_flight: int) -> StreamSession:
        return StreamSession(options, max_in_flight=max_in_flight, retries=self.retries,
                             stall_timeout=self.stall_timeout, stall_probe=self.stall_probe,
                             cancel_grace=self.cancel_grace)

    def _call_retry(self, error: QvlClientError, attempt: int) -> float:
        """The wait before a failed call is sent again (counted in ``retried``); raises ``error``
        when it is not."""
        delay = call_retry(error, attempt, retries=self.retries, closed=self.closed)
        self.retried += 1
        return delay
