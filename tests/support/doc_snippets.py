"""The code blocks of README.md and docs/*.md, each with the marker written just above it.

A Python or SQL block carries one of these HTML comments on the line before its fence:

- ``<!-- runs: tests/.../test_x.py -->``: that test runs it (``run_by(doc, __file__)`` hands it the
  blocks marked for it, in document order);
- ``<!-- test: setup -->`` / ``<!-- test: query -->`` / ``<!-- signatures -->``: docs/postgres.md's
  cookbook and signature lists (tests/integration/postgres/test_docs.py);
- ``<!-- illustrative: why it cannot run here -->``.

tests/unit/test_doc_snippets.py fails on a block with none, so a new one cannot be forgotten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[2]
CHECKED_LANGUAGES = ("python", "sql")
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
MARKER = re.compile(r"<!--\s*(.*?)\s*-->", re.S)


@dataclass(frozen=True)
class Snippet:
    doc: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    marker: str | None  # the comment's text: "runs: tests/...", "illustrative: ...", "test: setup", ...

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    @property
    def runner(self) -> str | None:
        """The test file named by ``runs:`` (relative to the repository root), else None."""
        kind, _, rest = (self.marker or "").partition(":")
        return rest.strip() if kind.strip() == "runs" else None


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def snippets(doc: Path) -> list[Snippet]:
    text = doc.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        # The marker is the last thing before the fence (blank lines allowed).
        before = text[:m.start()].rstrip()
        marker = MARKER.fullmatch(before[before.rfind("<!--"):]) if before.endswith("-->") else None
        out.append(Snippet(doc, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2),
                           marker.group(1) if marker else None))
    return out


def run_by(doc: Path, runner: str, language: str = "python") -> list[str]:
    """The code of ``doc``'s blocks in ``language`` marked ``runs: <runner>`` (``runner``: a test's
    ``__file__``), in document order."""
    name = str(Path(runner).resolve().relative_to(ROOT))
    return [s.code for s in snippets(doc) if s.language == language and s.runner == name]
