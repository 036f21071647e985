"""The test suite's own scheduling: under ``--dist loadgroup`` (the Makefile's) the tests of
one file of tests/integration run on one worker, so its module-scoped servers start once.

The second test runs a real pytest-xdist session (two worker processes) over two throwaway test
files laid out as tests/integration files, with ``tests.support.xdist_groups`` as the plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from tests.support.xdist_groups import EACH_TEST, file_group

ROOT = Path(__file__).parents[2]

TEST_FILE = '''
import os, time
from pathlib import Path

import pytest


@pytest.mark.parametrize("n", range(6))
def test_one(n):
    time.sleep(0.1)  # long enough that both workers are busy while the other file's tests wait
    out = Path(os.environ["XDIST_GROUPS_OUT"])
    (out / f"{Path(__file__).stem}-{n}").write_text(os.environ["PYTEST_XDIST_WORKER"])
'''


def test_a_file_of_integration_tests_is_one_group_and_the_rest_go_singly() -> None:
    assert file_group("tests/integration/postgres/test_x.py::test_a[1-2]") == "tests/integration/postgres/test_x.py"
    assert file_group("tests/integration/test_smoke.py::TestA::test_b") == "tests/integration/test_smoke.py"
    assert file_group("tests/unit/test_x.py::test_a") is None
    [each] = EACH_TEST
    assert (ROOT / each).is_file(), "EACH_TEST names a file that is gone"
    assert file_group(f"{each}::test_a") is None


def test_under_loadgroup_each_integration_file_runs_on_one_worker(tmp_path: Path) -> None:
    suite = tmp_path / "tests" / "integration"
    suite.mkdir(parents=True)
    for name in ("test_first", "test_second"):
        (suite / f"{name}.py").write_text(TEST_FILE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDIST_GROUPS_OUT": str(out)}
    env.pop("PYTEST_XDIST_WORKER", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.support.xdist_groups", "-p", "no:cacheprovider",
         "--import-mode=importlib", "-n", "2", "--dist", "loadgroup", "tests"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    workers: dict[str, set[str]] = defaultdict(set)
    for record in out.iterdir():
        workers[record.name.split("-")[0]].add(record.read_text())
    assert sum(1 for _ in out.iterdir()) == 12
    assert all(len(used) == 1 for used in workers.values()), dict(workers)
    assert workers["test_first"] != workers["test_second"], "the two files should share the two workers out"
