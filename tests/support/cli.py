"""The ``qvl`` command run in the test's own process: ``qvl_cli.main.main`` with its standard
streams, working directory and logging swapped for the call. A subprocess pays Python's start-up and
torch's import (about 5 s on 2 cores) on every call; here torch is imported once per test process.
Each command family keeps one subprocess smoke test (``python -m qvl_cli``) beside these."""

from __future__ import annotations

import io
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from qvl_cli.main import main


@dataclass(frozen=True)
class Ran:
    """What subprocess.run(..., capture_output=True) gives, for the fields the tests read."""

    args: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes


class _Kept(io.StringIO):
    """A standard stream the command may close (``with sys.stdout as dst``) and we still read."""

    def close(self) -> None:
        pass


class _Stdin(io.TextIOWrapper):
    def close(self) -> None:
        pass


def run_qvl(*args: str, stdin: bytes = b"", cwd: Path | None = None) -> Ran:
    """``qvl ARGS`` with ``stdin`` as its input, in ``cwd``; its exit code and output."""
    out, err = _Kept(), _Kept()
    root = logging.getLogger()
    saved_logging = (root.handlers[:], root.level)
    saved_streams = (sys.stdin, sys.stdout, sys.stderr)
    here = os.getcwd()
    sys.stdin, sys.stdout, sys.stderr = _Stdin(io.BytesIO(stdin), encoding="utf-8"), out, err
    try:
        if cwd is not None:
            os.chdir(cwd)
        try:
            code = main(list(args))
        except SystemExit as done:  # argparse: --help, or a refused flag
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        os.chdir(here)
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        root.handlers[:], level = saved_logging
        root.setLevel(level)
    return Ran(list(args), code, out.getvalue().encode(), err.getvalue().encode())
