"""Ports for the throwaway local servers, chosen so that a chosen port cannot fail a start.

Choosing a free port and having the child bind it later is a race: another process may take the
port in between (a full test run once lost Weaviate to ``bind: address already in use``). Three
things close it:

- ports are drawn at random from outside the kernel's ephemeral range
  (``/proc/sys/net/ipv4/ip_local_port_range``), from which the kernel picks the local port of every
  outgoing connection and of every ``bind(("", 0))``: no process takes such a port unless it names it;
- each port is reserved across processes by an abstract Unix socket, ``qvl-port-<n>``, held until
  the launcher that asked for it is gone (so a stopped server finds its ports again on restart);
  launchers in other processes (pytest-xdist workers, another session) skip reserved ports;
- the launchers still watch their child: on a first start, a bind failure (``bind_failed`` in its
  log, or a port it was given and does not listen on) starts it again on fresh ports.

Holding the port itself until the child binds works only where the child can take a socket
(HAProxy's ``bind fd@N``): ``SO_REUSEPORT`` across processes needs the child to set it too, and
Postgres (another OS user), Go's listeners and uvicorn do not.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import socket
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path

START_ATTEMPTS = 5  # a first start on fresh ports after a bind failure, this many times at most
LOWEST = 10000  # below it: the well-known ports of services a machine may start later

_BIND_FAILURE = re.compile(r"address already in use|failed to bind to address", re.IGNORECASE)
_held: dict[int, socket.socket] = {}
_lock = threading.RLock()  # re-entered when a finalizer (hold_for) runs during a pick
_random = random.Random()


class PortTaken(RuntimeError):
    """A server could not bind a port it was given (another process has it)."""


def bind_failed(log_text: str) -> bool:
    """Whether a server's log says it could not bind a port (Postgres, Go, uvicorn, gRPC, HAProxy)."""
    return bool(_BIND_FAILURE.search(log_text))


def _proc_text(name: str) -> str:
    try:
        return Path("/proc/sys/net/ipv4", name).read_text()
    except OSError:
        return ""


def _candidates() -> list[range]:
    """Port ranges outside the ephemeral one (all unprivileged ports where that leaves too few)."""
    low, high = (int(n) for n in (_proc_text("ip_local_port_range").split() or ["32768", "60999"]))
    spans = [s for s in (range(LOWEST, low), range(high + 1, 65536)) if len(s) > 0]
    return spans if sum(len(s) for s in spans) >= 2000 else [range(1024, 65536)]


def _kernel_reserved(port: int) -> bool:
    """In ip_local_reserved_ports ("8080,9000-9100"): ports the machine's owner keeps for a service."""
    for part in _proc_text("ip_local_reserved_ports").strip().split(","):
        if part:
            low, _, high = part.partition("-")
            if int(low) <= port <= int(high or low):
                return True
    return False


def _draw() -> int:
    spans = _candidates()
    n = _random.randrange(sum(len(s) for s in spans))
    for span in spans:
        if n < len(span):
            return span[n]
        n -= len(span)
    raise AssertionError("unreachable")


def _reserve(port: int) -> bool:
    """Take the port's cross-process reservation (False: another launcher, or this one, has it)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"\0qvl-port-{port}")
    except OSError:
        sock.close()
        return False
    _held[port] = sock
    return True


def _bindable(port: int, udp: bool) -> bool:
    """Nothing is bound to the port on any address (the launchers' children bind 127.0.0.1 or every
    address), TCP and, with ``udp``, UDP; no SO_REUSEADDR, so a TIME_WAIT leftover counts as taken."""
    kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM] if udp else [socket.SOCK_STREAM]
    for kind in kinds:
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            try:
                sock = socket.socket(family, kind)
            except OSError:  # no IPv6 here
                continue
            with sock:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind((host, port))
                except OSError as exc:
                    if family == socket.AF_INET6 and exc.errno == errno.EADDRNOTAVAIL:
                        continue
                    return False
    return True


def reserve(port: int, *, udp: bool = False) -> bool:
    """Reserve exactly ``port`` for this process: True if no launcher (here or in another process)
    has it and nothing is bound to it."""
    with _lock:
        if not 1024 <= port <= 65535 or port in _held or _kernel_reserved(port):
            return False
        if not _reserve(port):
            return False
        if _bindable(port, udp):
            return True
        _release(port)
        return False


def _release(port: int) -> None:
    sock = _held.pop(port, None)
    if sock is not None:
        sock.close()


def free_ports(count: int, *, udp: bool = False) -> list[int]:
    """``count`` distinct ports free on every address, reserved for this process until
    ``release_ports`` (or ``hold_for``'s owner goes)."""
    with _lock:
        ports: list[int] = []
        while len(ports) < count:
            port = _draw()
            if reserve(port, udp=udp):
                ports.append(port)
        return ports


def free_port() -> int:
    return free_ports(1)[0]


def free_port_pairs(count: int) -> list[int]:
    """``count`` ports p such that p (TCP and UDP) and p + 1 (TCP) are free and reserved.

    A node of a Weaviate cluster on one host finds its peers' data and Raft RPC ports at their
    gossip and Raft ports + 1 (Weaviate's convention for CLUSTER_IN_LOCALHOST); gossip is also UDP.
    """
    with _lock:
        found: list[int] = []
        spans = _candidates()
        while len(found) < count:
            port = _draw()
            if not any(port + 1 in span for span in spans) or not reserve(port, udp=True):
                continue
            if reserve(port + 1):
                found.append(port)
            else:
                _release(port)
        return found


def release_ports(ports: Iterable[int]) -> None:
    """Let other launchers have these ports again."""
    with _lock:
        for port in ports:
            _release(port)


def hold_for(owner: object, ports: list[int]) -> None:
    """Keep ``ports`` reserved while ``owner`` lives. The list is read when the owner goes, so a
    launcher that moves to fresh ports edits it in place."""
    weakref.finalize(owner, release_ports, ports)


def listening_ports(pids: Iterable[int]) -> set[int]:
    """TCP ports that the processes ``pids`` listen on (any address), from /proc."""
    inodes: set[int] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(int(target[8:-1]))
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[9]) in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
