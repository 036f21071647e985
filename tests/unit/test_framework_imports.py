"""The framework integrations stay light: importing them loads no torch, transformers or server code."""

from __future__ import annotations

import subprocess
import sys


def test_the_framework_integrations_import_no_torch() -> None:
    code = ("import sys, connectors.langchain, connectors.llamaindex\n"
            "print(sorted(m for m in ('torch', 'transformers', 'vectorizer_service') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
