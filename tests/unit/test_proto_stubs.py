"""The committed gRPC stubs are what the .proto generates today."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_generated_stubs_are_current(tmp_path: Path) -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True, cwd=ROOT)
    committed = ROOT / "qvl_proto"
    for generated in sorted(tmp_path.rglob("*.py*")):
        rel = generated.relative_to(tmp_path)
        assert (committed / rel).read_text() == generated.read_text(), f"{rel} is stale: run scripts/gen_proto.sh"
