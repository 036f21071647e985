"""Real `qvl serve` processes shared by the tests of one pytest process (one xdist worker), keyed
by their settings: a test that merely needs "a service with settings X" takes the one already
running instead of paying a start-up (a model load) and a drain of its own. Tests about start-up,
drain, restart or a crash start their own ``ServiceProcess``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from tests.support.service import ServiceProcess

Key = tuple[tuple[tuple[str, str], ...], str | None, tuple[str, ...]]


class ServicePool:
    def __init__(self) -> None:
        self.services: dict[Key, ServiceProcess] = {}

    def get(self, *, env: Mapping[str, str] | None = None, token: str | None = None,
            args: Sequence[str] = ()) -> ServiceProcess:
        """The running service with exactly these settings (started on first use)."""
        key: Key = (tuple(sorted((env or {}).items())), token, tuple(args))
        svc = self.services.get(key)
        if svc is None:
            svc = self.services[key] = ServiceProcess(env=env, token=token, args=args)
        if svc.proc is None or svc.proc.poll() is not None:
            svc.start()  # first use, or a test stopped it to show an outage
        return svc

    def close(self) -> None:
        """Every service stopped at once: their drains overlap (this runs at the end of a worker's session)."""
        with ThreadPoolExecutor(max_workers=max(1, len(self.services))) as stopping:
            list(stopping.map(lambda svc: svc.stop(), self.services.values()))
        self.services.clear()
