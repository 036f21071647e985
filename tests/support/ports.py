"""Free TCP ports on 127.0.0.1 for the tests: the launchers' picker (qvl_devtools.launchers.ports),
so a port a test names (a dead address, say) is never handed to a server another test starts."""

from __future__ import annotations

from qvl_devtools.launchers.ports import free_port, free_ports

__all__ = ["free_port", "free_ports"]
