"""Applied migrations never change: ``sql/incremental/frozen.txt`` holds the SHA-256 of every
``sql/incremental/NNN_*.sql`` as committed, and a unit test (tests/unit/test_frozen_migrations.py)
fails when a file no longer matches its line, when a listed file is gone, or when a file is not listed.

A database runs each migration once and records its number, so an edit to an applied migration
never reaches it: the change goes in a new migration. The list has ``sha256sum``'s format (the
digest of the file's bytes, two spaces, the file name), so ``cd sql/incremental && sha256sum -c
frozen.txt`` checks it too.

    python -m qvl_devtools.frozen_migrations          # what is wrong, if anything (exit 1)
    python -m qvl_devtools.frozen_migrations --add    # appends the line of each migration not listed
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

LIST_NAME = "frozen.txt"
COMMAND = "python -m qvl_devtools.frozen_migrations --add"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def list_line(path: Path) -> str:
    return f"{digest(path)}  {path.name}"


def read_list(listing: Path) -> dict[str, str]:
    """File name -> digest, from ``listing`` (empty when there is none); ValueError for a line that is
    not ``<64 hex digits>  <name>``."""
    if not listing.exists():
        return {}
    listed: dict[str, str] = {}
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        hexdigest, sep, name = line.partition("  ")
        if not sep or len(hexdigest) != 64 or not name or name in listed:
            raise ValueError(f"{listing}:{number}: not '<sha256>  <file name>' (or the name is listed twice): {line!r}")
        listed[name] = hexdigest
    return listed


def problems(directory: Path) -> list[str]:
    """What is wrong between ``directory``'s migrations and its frozen list, one sentence each."""
    listing = directory / LIST_NAME
    listed = read_list(listing)
    files = {p.name: p for p in sorted(directory.glob("*.sql"))}
    found = []
    for name, hexdigest in listed.items():
        if name not in files:
            found.append(f"{name} is listed in {listing} but gone: a migration a database has applied is never "
                         f"removed or renamed (databases recorded its number); put it back. (Only one that no "
                         f"release has shipped, renumbered at a merge, takes a new line in place of its old one.)")
        elif digest(files[name]) != hexdigest:
            found.append(f"{name} changed after it was frozen: a database that applied it never runs it again. "
                         f"Put it back as it was (git checkout -- {files[name]}) and make the change in a new "
                         f"migration, sql/incremental/NNN_<topic>.sql, with its line in {LIST_NAME}.")
    for name, path in files.items():
        if name not in listed:
            found.append(f"{name} is not in {listing}: add the line '{list_line(path)}' ({COMMAND}).")
    return found


def add_missing(directory: Path) -> list[str]:
    """Appends the line of each migration the list lacks (never changes a listed one); returns them."""
    listing = directory / LIST_NAME
    listed = read_list(listing)
    lines = [list_line(p) for p in sorted(directory.glob("*.sql")) if p.name not in listed]
    if lines:
        text = listing.read_text(encoding="utf-8") if listing.exists() else ""
        listing.write_text(text + "".join(line + "\n" for line in lines), encoding="utf-8")
    return lines


def main(argv: list[str] | None = None) -> int:
    from connectors.postgres.installer import INCREMENTAL, sql_dir

    parser = argparse.ArgumentParser(prog="python -m qvl_devtools.frozen_migrations", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--add", action="store_true", help=f"append the lines of migrations not in {LIST_NAME}")
    parser.add_argument("--dir", type=Path, default=None, help="the migrations' folder (default: sql/incremental)")
    args = parser.parse_args(argv)
    directory = args.dir or sql_dir() / INCREMENTAL
    if args.add:
        for line in add_missing(directory):
            print(f"added: {line}")
    found = problems(directory)
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
