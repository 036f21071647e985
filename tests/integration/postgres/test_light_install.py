"""The worker's install is light: a virtual environment with only `pip install '.[postgres]'` (no
torch, no transformers, no server) runs `qvl pg install` and `qvl worker` against the real service
and a real database, and the rows it embeds match the service's own vectors.

pip fetches the group's packages from the package index (or its local cache) as a user's install
would; the project itself is built from this checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connectors.client import Client
from qvl_devtools.launchers.postgres import WORKER_LOGIN
from tests.integration.postgres.conftest import ROOT, cosines, new_database, role_dsn, vec
from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess

# soak: a virtual environment built and installed with pip takes minutes on a loaded machine (the
# largest group of make test-fast but two); make test runs it first, beside the rest.
pytestmark = [pytest.mark.postgres, pytest.mark.service, pytest.mark.slow, pytest.mark.soak]


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kwargs)


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = tmp_path_factory.mktemp("worker-env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
    # A copy of the source: the build must not write into the checkout the other tests run from.
    src = tmp_path_factory.mktemp("src")
    _copy_tree(src)
    done = _run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 f"{src}[postgres]"])
    assert done.returncode == 0, done.stderr[-3000:]
    return env


def _copy_tree(dest: Path) -> None:
    """The files a build reads: the packages, the SQL, the metadata (not the tests or fixtures)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.decode().split("\0")
    wanted = ("pyproject.toml", "README.md", "vectorizer_service/", "connectors/", "qvl_proto/", "qvl_cli/",
              "qvl_devtools/", "sql/")
    for name in listed:
        if not name or not name.startswith(wanted):
            continue
        source, target = ROOT / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():  # connectors/postgres/sql -> ../../sql
            target.symlink_to(os.readlink(source))
        elif source.is_file():
            target.write_bytes(source.read_bytes())


def test_worker_environment_has_no_torch_and_embeds_rows(worker_env: Path, pg_server: PostgresServer,
                                                         service: ServiceProcess) -> None:
    python = str(worker_env / "bin" / "python")
    qvl = str(worker_env / "bin" / "qvl")
    installed = _run([python, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"]).stdout.lower()
    for heavy in ("torch==", "torchvision==", "transformers==", "fastapi==", "pillow=="):
        assert heavy not in installed, f"{heavy} is installed in the worker-only environment"
    probe = _run([python, "-c", "import importlib.util as u; print([m for m in ('torch', 'transformers', 'PIL') "
                  "if u.find_spec(m)])"])
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr

    dsn = new_database(pg_server, "light_install")
    env = {**os.environ, "PYTHONPATH": ""}  # nothing of the checkout's environment leaks in
    done = _run([qvl, "pg", "install", "--dsn", dsn, "--service-url", service.http_url,
                 "--worker-login", WORKER_LOGIN], env=env, cwd="/")
    assert done.returncode == 0, done.stdout + done.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes SELECT i, 'note number ' || i FROM generate_series(1, 40) i")
        conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => ARRAY['body'], dimensions => 64)")
    done = _run([qvl, "--log-format", "json", "worker", "--dsn", role_dsn(dsn, WORKER_LOGIN), "--service",
                 service.grpc_target, "--exit-when-idle", "--poll", "0.5"], env=env, cwd="/")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT id, body, embedding::text FROM notes ORDER BY id").fetchall()
    assert all(r[2] is not None for r in rows)
    with Client(service.grpc_target) as client:
        expected = client.embed([r[1] for r in rows])
    got = [vec(r[2]) for r in rows]
    assert min(cosines(got[i], expected[i]) for i in range(len(rows))) > 0.9999
