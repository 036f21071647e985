"""A throwaway server's data directory is deleted after its stop, without the stop waiting on it."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from qvl_devtools.launchers.process import remove_detached


def _children() -> set[str]:
    """The command names of this process's children, zombies included (the kernel's list, as
    ``ServiceProcess.pids`` reads it)."""
    names = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            with contextlib.suppress(OSError):  # it ended meanwhile
                names.add(Path(f"/proc/{pid}/comm").read_text().strip())
    return names


def test_a_removed_directory_goes_in_the_background_and_leaves_no_child(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for n in range(50):
        folder = data / f"base/{n}"
        folder.mkdir(parents=True)
        (folder / "file").write_bytes(b"x" * 1000)
    odd = tmp_path / "-rf name with spaces"  # passed as one argument, after "--"
    odd.mkdir()
    remove_detached(data)
    remove_detached(odd)
    assert not _children() & {"sh", "rm"}, "the rm must not be left a child of the caller"
    deadline = time.monotonic() + 30
    while (data.exists() or odd.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not data.exists() and not odd.exists()
    assert tmp_path.exists()
