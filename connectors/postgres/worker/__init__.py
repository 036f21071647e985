"""``qvl worker``: embeds queued rows through the gRPC service and writes the vectors back.

Each lane (``--concurrency``) loops: claim a batch in one autocommit statement (``FOR UPDATE
SKIP LOCKED`` plus a lease, so a killed worker's rows come back by themselves) → embed it over
EmbedStream with no transaction open → one short transaction stores the vectors where the row
still holds what was embedded (content hash), moves refused rows to the failed table, and gives
everything else back. A service outage only delays work: it stays queued while lanes back off.

``--service`` is a gRPC target: one replica, or several (``ipv4:a:50051,b:50051``,
``dns:///name:50051``) that the client balances with round_robin and health checking; a stream
whose replica dies is carried on by another (``connectors.client``), and what never came back is
given back to the queue. The worker runs against the primary only: on a hot standby it says so
and waits for a promotion.

The parts (docs/architecture.md, "The worker's parts"): ``root`` composes them; ``lane`` runs
one lane; ``batch`` takes one batch through ``judge`` (pure: what is written, failed, retried),
``service`` (streams, ``bisection``, probes; a stalled stream is the client's ``StreamStalled``)
and ``store`` (claim, lease, write, release); ``claims`` and ``holds`` hold back a vectorizer
whose claims fail; ``catalog``, ``features``, ``status``, ``progress``, ``monitor``,
``listener``, ``startup``. The rules (``judge``, ``attempts``, ``backoff``, ``bisection``,
``holds``) need neither Postgres nor gRPC.
"""

from connectors.postgres.worker.errors import Malformed, ServiceDown
from connectors.postgres.worker.judge import Claimed, Outcome
from connectors.postgres.worker.progress import Counters
from connectors.postgres.worker.root import Worker, run_worker
from connectors.postgres.worker.settings import WorkerSettings

__all__ = ["Claimed", "Counters", "Malformed", "Outcome", "ServiceDown", "Worker", "WorkerSettings", "run_worker"]
