"""HAProxy in front of qvl replicas for integration tests (the shipped launcher, reused)."""

from __future__ import annotations

from qvl_devtools.launchers.haproxy import HAProxy, haproxy_config

__all__ = ["HAProxy", "haproxy_config"]
