"""Which tests pytest-xdist sends to one worker together, decided from the node id alone.

Each file of tests/integration is one unit of work, so its module-scoped servers (a service with
its own settings, a Weaviate wired to it) start once, on one worker. Unit tests, and the files in
``EACH_TEST`` (long tests that start servers of their own, none per module), go to whichever
worker is free.

Why not ``xdist_group`` marks: xdist 3.8 passes a mark's group to its scheduler by rewriting the
item's ``_nodeid``, which pytest 9.2 no longer reads (node ids are structured), so under the
pinned pair every test was scheduled on its own and a file's servers started on both workers
(pytest-dev/pytest-xdist#1386). The scheduler here reads nothing but the ids the workers report.
"""

from __future__ import annotations

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling

GROUPED = "tests/integration/"
EACH_TEST = frozenset({"tests/integration/launchers/test_port_race.py"})


def file_group(nodeid: str) -> str | None:
    """The group of a test: its file for tests/integration (but ``EACH_TEST``), else none."""
    path = nodeid.split("::", 1)[0]
    if path.startswith(GROUPED) and path not in EACH_TEST:
        return path
    return None


class FileGroupScheduling(LoadScopeScheduling):
    """xdist's load-scope scheduling with ``file_group`` as the scope (a test alone when none)."""

    def _split_scope(self, nodeid: str) -> str:
        return file_group(nodeid) or nodeid


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> LoadScopeScheduling | None:
    """``--dist loadgroup`` (the Makefile's) schedules by ``file_group``; other modes are xdist's."""
    if config.getvalue("dist") == "loadgroup":
        return FileGroupScheduling(config, log)
    return None
