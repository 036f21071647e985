"""qvl_devtools.launchers.ports: the ports the local servers get (tests/integration/launchers/
test_port_race.py shows each launcher riding out a taken port)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

from qvl_devtools.launchers.ports import free_port_pairs, free_ports, hold_for, release_ports, reserve

ROOT = Path(__file__).parents[2]


def test_ports_come_from_outside_the_ephemeral_range() -> None:
    """The kernel gives outgoing connections and bind(0) their ports from that range: a port
    outside it is taken by no one who does not name it."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = free_ports(300)
    try:
        assert len(set(ports)) == 300
        assert not [p for p in ports if low <= p <= high]
    finally:
        release_ports(ports)


def test_a_port_reserved_in_one_process_is_not_handed_out_in_another() -> None:
    """As two pytest-xdist workers: nothing is bound to the other process's ports (its servers
    may be stopped for a restart), and still they are not ours."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from qvl_devtools.launchers.ports import free_ports; "
         "print(*free_ports(20), flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout is not None and child.stdin is not None
    theirs = [int(p) for p in child.stdout.readline().split()]
    try:
        assert len(theirs) == 20
        assert not [p for p in theirs if reserve(p)]
    finally:
        child.stdin.close()
        child.wait(30)
    taken = [p for p in theirs if reserve(p)]  # the reservations went with the process
    release_ports(taken)
    assert taken == theirs


def test_a_launcher_s_ports_are_kept_while_it_lives() -> None:
    class Launcher:
        pass

    launcher = Launcher()
    ports = free_ports(3)
    pairs = free_port_pairs(2)
    held = ports + pairs + [p + 1 for p in pairs]
    hold_for(launcher, held)
    assert not [p for p in held if reserve(p)], "reserved in this process too"
    del launcher
    gc.collect()
    again = [p for p in held if reserve(p)]
    release_ports(again)
    assert again == held
