"""HAProxy in front of qvl replicas for integration tests (the shipped starter, reused)."""

from __future__ import annotations

from qvl_devtools.launchers.haproxy import SETUP_HINT, HAProxy, haproxy_binary, haproxy_config

__all__ = ["SETUP_HINT", "HAProxy", "haproxy_binary", "haproxy_config"]
