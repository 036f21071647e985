"""How the installer puts the PL/Python library into the SQL (one bundle of the package's modules,
imported from memory), and the incremental/idempotent split."""

from __future__ import annotations

import re
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from connectors.postgres import plpy_importer
from connectors.postgres.installer import (
    IDEMPOTENT,
    INCREMENTAL,
    InstallError,
    _has_statements,
    idempotent_files,
    latest_version,
    script,
    sql_dir,
    sql_files,
)
from connectors.postgres.plpy_bundle import LIBRARY_DIR, BundleError, Library, library, render

HEADER = re.compile(r"^(qvl\.\w+)\(.*?LANGUAGE (\w+)[^$]*? AS \$py\$\n(.*?)^\$py\$;", re.S | re.M)


def plpython_functions(text: str) -> list[tuple[str, str]]:
    """(name, body) of each PL/Python function (each quoted with $py$; the others with $$)."""
    found = []
    for chunk in text.split("CREATE OR REPLACE FUNCTION ")[1:]:
        m = HEADER.match(chunk)
        if m and m.group(2) == "plpython3u":
            found.append((m.group(1), m.group(3)))
        else:
            assert "LANGUAGE plpython3u" not in chunk.split(" AS ")[0], chunk[:200]
    return found


def idempotent_text() -> str:
    return "\n".join(f.path.read_text() for f in idempotent_files())


def run_body(body: str, plpy: Any, gd: dict[str, Any], **args: Any) -> Any:
    """A PL/Python function body run as PL/Python runs it: a function whose globals hold the arguments."""
    namespace: dict[str, Any] = {"plpy": plpy, "GD": gd, **args}
    exec("def __procedure():\n" + textwrap.indent(body, "    "), namespace)
    return namespace["__procedure"]()


def test_every_plpython_function_but_the_loader_starts_with_the_prologue_marker() -> None:
    functions = plpython_functions(idempotent_text())
    assert len(functions) >= 12
    for name, body in functions:
        first = body.splitlines()[0]
        assert first == ("# qvl:library" if name == "qvl._load" else "# qvl:prologue"), name
        assert "GD" not in body and "qvl_lib" not in body, name  # the key is the installer's business


def test_the_split_functions_are_idempotent_tables_are_incremental() -> None:
    for f in idempotent_files():
        text = f.path.read_text()
        assert not re.search(r"^CREATE (FUNCTION|VIEW|TABLE|TYPE|SCHEMA)\b", text, re.M), f.name
        assert f.version <= latest_version(), f"{f.name} would never be applied"
    for f in sql_files():
        assert "CREATE OR REPLACE" not in f.path.read_text(), f.name
    assert not list(sql_dir().glob("*.sql")), "every SQL file is incremental/ or idempotent/"


TOP_LEVEL = re.compile(r"^(?=CREATE |DROP |COMMENT |SELECT |GRANT |REVOKE |ALTER |DO )", re.M)
DEFINED = re.compile(r"^CREATE (?:OR REPLACE )?(FUNCTION|VIEW) qvl\.(\w+)")


def created_before_use(files: list[Path], existing: set[str]) -> list[str]:
    """Where a LANGUAGE sql function or a view, created file after file in this order, names a qvl
    function that no earlier statement creates (PostgreSQL checks those bodies at CREATE)."""
    defined, problems = set(existing), []
    for path in files:
        for chunk in TOP_LEVEL.split(path.read_text()):
            m = DEFINED.match(chunk)
            if not m:
                continue
            kind, name = m.groups()
            header, _, body = chunk.partition(" AS ")
            if kind == "VIEW" or re.search(r"\bLANGUAGE sql\b", header):
                code = re.sub(r"'(?:[^']|'')*'", "''", re.sub(r"--[^\n]*", "", body))  # strings are not checked
                for used in sorted(set(re.findall(r"\bqvl\.(\w+)\s*\(", code)) - defined - {name}):
                    problems.append(f"{path.name}: {kind.lower()} qvl.{name} uses qvl.{used} before it exists")
            defined.add(name)
    return problems


def test_sql_functions_and_views_use_only_what_earlier_statements_create(tmp_path: Path) -> None:
    """The idempotent files of one version apply in name order (003_vectorizer_api.sql before
    _checks, _objects, _security): on a fresh install a LANGUAGE sql body or a view that names a
    function of a later file fails to create."""
    migrations = "".join(f.path.read_text() for f in sql_files())
    made_once = set(re.findall(r"^CREATE FUNCTION qvl\.(\w+)", migrations, re.M))
    assert "_ddl_altered" in made_once
    assert created_before_use([f.path for f in idempotent_files()], made_once) == []
    # What it catches: a view and a sql function before what they call; strings and plpgsql are not checked.
    (tmp_path / "001_a.sql").write_text(
        "CREATE OR REPLACE VIEW qvl.v AS SELECT * FROM qvl._f(1);\n"
        "CREATE OR REPLACE FUNCTION qvl._g() RETURNS int LANGUAGE sql AS $$ SELECT qvl._f(2) -- qvl._h()\n$$;\n"
        "CREATE OR REPLACE FUNCTION qvl._p() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN qvl._h(); END $$;\n"
        "COMMENT ON FUNCTION qvl._g() IS 'calls qvl._h()';\n")
    (tmp_path / "001_b.sql").write_text("CREATE OR REPLACE FUNCTION qvl._f(i int) RETURNS int LANGUAGE sql AS $$ "
                                        "SELECT i $$;\n")
    assert created_before_use(sorted(tmp_path.glob("*.sql")), set()) == [
        "001_a.sql: view qvl.v uses qvl._f before it exists", "001_a.sql: function qvl._g uses qvl._f before it exists"]


def test_migrations_without_statements_are_recognised() -> None:
    assert not _has_statements("-- nothing\n\n  -- here\n")
    assert _has_statements("-- a table\nCREATE TABLE t ();\n")
    assert _has_statements(sql_files()[0].path.read_text())


def test_render_writes_the_library_and_the_prologue_with_one_key() -> None:
    lib = library()
    text = render(idempotent_text(), lib)
    assert not re.search(r"^\s*# qvl:", text, re.M)  # no marker line left
    keys = set(re.findall(r"qvl_lib_[0-9a-f]{16}", text))
    assert keys == {lib.key}
    assert text.count(f"lib = GD.get({lib.key!r})") == len(plpython_functions(idempotent_text())) - 1
    assert render("    # qvl:prologue\n", lib) == lib.prologue("    ") + "\n"  # indentation is kept


def test_the_key_follows_every_module_and_the_importer() -> None:
    lib = library()
    assert lib.key == library().key
    assert [name for name, _ in lib.modules] == sorted(p.stem for p in LIBRARY_DIR.glob("*.py"))
    changed = [Library(tuple((n, s + "\n# changed\n" if n == name else s) for n, s in lib.modules), lib.importer)
               for name, _ in lib.modules]
    keys = {c.key for c in changed} | {Library(lib.modules, lib.importer + "\n# changed\n").key}
    assert len(keys) == len(lib.modules) + 1 and lib.key not in keys


def test_render_refuses_unknown_markers_and_a_library_that_ends_the_body(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="unknown marker '# qvl:prolog'"):
        render("AS $py$\n# qvl:prolog\n$py$;", library(), "x.sql")
    assert "# qvl:prologue" in render("-- the `# qvl:prologue` marker, in a comment\n", library())
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "mod.py").write_text('X = "$py$"\n')
    with pytest.raises(BundleError, match=r"mod.py contains \$py\$"):
        library(tmp_path)
    (tmp_path / "mod.py").write_text("X = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.py").write_text("")
    with pytest.raises(BundleError, match=r"sub-packages \(sub\)"):
        library(tmp_path)


def test_the_installer_says_what_is_wrong_with_the_library(tmp_path: Path) -> None:
    (tmp_path / IDEMPOTENT).mkdir()
    (tmp_path / INCREMENTAL).mkdir()
    (tmp_path / INCREMENTAL / "001_schema.sql").write_text("CREATE SCHEMA qvl;\n")
    (tmp_path / IDEMPOTENT / "001_x.sql").write_text("AS $py$\n# qvl:prolog\n$py$;\n")
    with pytest.raises(InstallError, match=r"idempotent/001_x.sql: unknown marker"):
        script(tmp_path)


class LoaderPlpy:
    """Enough of plpy for the prologue: SELECT qvl._load() runs the rendered loader."""

    def __init__(self, loader_body: str, gd: dict[str, Any]) -> None:
        self.loader_body, self.gd, self.loads = loader_body, gd, 0

    def execute(self, query: str) -> None:
        assert query == "SELECT qvl._load()"
        self.loads += 1
        run_body(self.loader_body, self, self.gd)


def test_the_rendered_loader_and_prologue_load_the_library_once_per_backend() -> None:
    lib = library()
    functions = dict(plpython_functions(render(idempotent_text(), lib)))
    gd: dict[str, Any] = {}
    plpy = LoaderPlpy(functions["qvl._load"], gd)
    rerank = next(body for name, body in plpython_functions(render(idempotent_text(), lib))
                  if name == "qvl.rerank")  # the first overload: (text, text[])
    assert "lib.rerank_sql" in rerank
    for _ in range(3):
        assert run_body(rerank, plpy, gd, query=None, documents=["a"], instruction=None, top_k=None) == []
    assert plpy.loads == 1
    module = gd[lib.key]
    assert module.__name__ == lib.key and module.spi.plpy is plpy
    assert module.items.make_item(["x"]) == {"text": ["x"]}
    assert module.addresses.target("http://h:1/p", "/v1/info") == ("http", "h", 1, "/p/v1/info")
    assert module.search.candidate_rows.__module__ == f"{lib.key}.candidates"  # its siblings, not the checkout's


def bundle_sources(value: str) -> dict[str, str]:
    """A small package: a relative import, a sibling's state, and a module nothing imports."""
    return {"__init__": "from .api import answer\n",
            "api": "from . import state\n\ndef answer():\n    state.calls += 1\n    return state.VALUE, state.calls\n",
            "state": f"VALUE = {value!r}\ncalls = 0\n",
            "unused": "LOADED = True\n"}


def test_the_importer_keeps_each_bundle_to_itself() -> None:
    """Two bundles in one backend (a session that loaded the library before an upgrade, then the new
    one): two packages, each module importing its own siblings; the finder is gone afterwards."""
    names = [f"qvl_lib_test_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    finders = list(sys.meta_path)
    old, new = (plpy_importer.load(name, bundle_sources(value)) for name, value in zip(names, ("old", "new"),
                                                                                       strict=True))
    assert sys.meta_path == finders
    assert old.answer() == ("old", 1) and new.answer() == ("new", 1) and old.answer() == ("old", 2)
    assert old.api.state is sys.modules[f"{names[0]}.state"] and new.api.state is not old.api.state
    assert sys.modules[f"{names[0]}.unused"].LOADED  # every module is imported at load, none later
    # The same bundle loaded again (its GD entry lost) starts from the sources, sharing nothing.
    again = plpy_importer.load(names[0], bundle_sources("old"))
    assert again is not old and again.answer() == ("old", 1)


def test_a_bundle_that_fails_to_import_leaves_no_finder_behind() -> None:
    name = f"qvl_lib_test_{uuid.uuid4().hex[:8]}"
    finders = list(sys.meta_path)
    sources = {**bundle_sources("x"), "broken": "from .missing import nothing\n"}
    with pytest.raises(ImportError, match="missing"):
        plpy_importer.load(name, sources)
    assert sys.meta_path == finders
    assert plpy_importer.load(name, bundle_sources("y")).answer() == ("y", 1)


def test_script_is_the_whole_install_for_psql() -> None:
    text = script(public_grant=False)
    for f in sql_files():
        assert f"-- {INCREMENTAL}/{f.path.name}" in text
        assert f"INSERT INTO qvl.schema_version (version, name) VALUES ({f.version}, '{f.name}');" in text
    for f in idempotent_files():
        assert f"-- {IDEMPOTENT}/{f.path.name}" in text
    assert text.rstrip().endswith("SELECT qvl._apply_grants(false);")
    for name, source in library().modules:  # the library, inside qvl._load()
        assert repr(source)[:60] in text, name
