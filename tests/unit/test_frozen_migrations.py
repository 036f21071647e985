"""Applied migrations never change (issue 20 item 3): sql/incremental/frozen.txt holds each
migration's SHA-256, and an edited, removed or unlisted migration fails here with what to do."""

from __future__ import annotations

import shutil
from pathlib import Path

from connectors.postgres.installer import INCREMENTAL, sql_dir, sql_files
from qvl_devtools.frozen_migrations import LIST_NAME, add_missing, list_line, main, problems, read_list

MIGRATIONS = sql_dir() / INCREMENTAL


def test_no_migration_changed_since_it_was_frozen() -> None:
    found = problems(MIGRATIONS)
    assert not found, "\n".join(found)
    assert list(read_list(MIGRATIONS / LIST_NAME)) == [f.path.name for f in sql_files()]


def copy_of_the_migrations(tmp_path: Path) -> Path:
    directory = tmp_path / INCREMENTAL
    shutil.copytree(MIGRATIONS, directory)
    return directory


def test_an_edited_removed_or_unlisted_migration_is_named_with_what_to_do(tmp_path: Path) -> None:
    directory = copy_of_the_migrations(tmp_path)
    edited, removed = directory / "006_retries.sql", directory / "009_queue_upkeep.sql"
    edited.write_text(edited.read_text() + "-- a comment is a change too\n")
    removed.unlink()
    new = directory / "011_next.sql"
    new.write_text("ALTER TABLE qvl.vectorizer ADD COLUMN x int;\n")
    found = problems(directory)
    assert len(found) == 3, found
    assert found[0].startswith("006_retries.sql changed after it was frozen") and "new migration" in found[0]
    assert found[1].startswith("009_queue_upkeep.sql is listed") and "gone" in found[1]
    assert found[2].startswith("011_next.sql is not in") and f"'{list_line(new)}'" in found[2]


def test_add_appends_the_lines_of_new_migrations_only(tmp_path: Path) -> None:
    directory = copy_of_the_migrations(tmp_path)
    before = (directory / LIST_NAME).read_text()
    new = directory / "011_next.sql"
    new.write_text("SELECT 1;\n")
    edited = directory / "001_schema.sql"
    edited.write_text(edited.read_text() + "\n")
    assert main(["--dir", str(directory), "--add"]) == 1  # the edit still stands: --add never re-freezes a file
    assert (directory / LIST_NAME).read_text() == before + list_line(new) + "\n"
    assert add_missing(directory) == []
    assert [p.split(" changed")[0] for p in problems(directory)] == ["001_schema.sql"]
