"""Every Python and SQL block of README.md and docs/*.md runs in a test or says why it cannot.

The blocks are found here, not listed: a block added without a marker fails this test
(tests/support/doc_snippets.py says what the markers are)."""

from __future__ import annotations

from tests.support.doc_snippets import CHECKED_LANGUAGES, ROOT, Snippet, documents, snippets

POSTGRES_COOKBOOK = {"test: setup", "test: query", "signatures"}


def problem(s: Snippet) -> str | None:
    if s.runner is not None:
        test = ROOT / s.runner
        if not (s.runner.startswith("tests/") and test.name.startswith("test_") and test.is_file()):
            return f"runs: {s.runner} is not a test file"
        if s.doc.name not in test.read_text(encoding="utf-8"):
            return f"{s.runner} does not read {s.doc.name}"
        return None
    kind, _, reason = (s.marker or "").partition(":")
    if kind.strip() == "illustrative":
        return None if len(reason.split()) >= 3 else "illustrative: say why it cannot run in a test"
    if s.marker in POSTGRES_COOKBOOK and s.doc.name == "postgres.md":
        return None
    return "no marker: <!-- runs: tests/...py --> or <!-- illustrative: why -->"


def test_every_python_and_sql_block_runs_in_a_test_or_says_why_not() -> None:
    checked = [s for doc in documents() for s in snippets(doc) if s.language in CHECKED_LANGUAGES]
    assert len(checked) >= 30, "the fences were not found"
    problems = [f"{s.where} ({s.language}): {why}" for s in checked if (why := problem(s))]
    assert problems == [], "\n".join(problems)


def test_the_scanner_reads_markers_and_fences() -> None:
    """The scanner itself, on the forms the docs use (a marker, a blank line, another fence between)."""
    doc = ROOT / "docs" / "postgres.md"
    found = snippets(doc)
    assert [s.marker for s in found if s.language == "sql"][:2] == ["signatures", "signatures"]
    cookbook = [s for s in found if s.marker == "test: setup"]
    assert cookbook and cookbook[0].code.startswith("CREATE TABLE photos")
    assert all(s.marker is None for s in found if s.language == "")  # the tree diagrams
