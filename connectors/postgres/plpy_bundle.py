"""The PL/Python library as an install ships it: the modules of ``connectors/postgres/plpy/`` bundled
into one text, the body of ``qvl._load()``, and the prologue that every PL/Python function starts with.

The SQL files mark where these go: ``# qvl:library`` (the body of ``qvl._load()``) and
``# qvl:prologue`` (the first lines of every other PL/Python function). ``qvl._load()`` runs the
in-memory importer (``plpy_importer.py``) over a dict of the modules' sources and keeps the package in
``GD``. The GD key, which is also the package's name in the backend, is a hash of the bundle (every
module, the importer, the loader and the prologue): backends that loaded an older library load the
new one after an upgrade, two bundles never share modules, and nobody bumps a key by hand.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBRARY_DIR = HERE / "plpy"
IMPORTER = HERE / "plpy_importer.py"
LIBRARY_MARKER = re.compile(r"^[ \t]*# qvl:library[ \t]*$", re.M)
PROLOGUE_MARKER = re.compile(r"^([ \t]*)# qvl:prologue[ \t]*$", re.M)
ANY_MARKER = re.compile(r"^[ \t]*# qvl:\w+[ \t]*$", re.M)
DOLLAR_TAG = "$py$"  # the SQL files quote PL/Python bodies with it
KEY_PREFIX = "qvl_lib_"

# qvl._load(): the importer's text runs as a module, which imports the bundle as the package named by
# the key; `plpy` (PL/Python's, a global of function bodies only) is bound once the modules have run.
LOADER = """import types
importer = types.ModuleType("qvl_importer")
exec(compile({importer!r}, "connectors/postgres/plpy_importer.py", "exec"), importer.__dict__)
lib = importer.load({key!r}, {sources!r})
lib.bind(plpy)
GD[{key!r}] = lib"""
# What every PL/Python function runs first: the library, loaded once per backend and bundle.
PROLOGUE = """lib = GD.get({key!r})
if lib is None:
    plpy.execute("SELECT qvl._load()")
    lib = GD[{key!r}]"""


class BundleError(RuntimeError):
    """The library's files cannot be shipped as they are; the message says which and why."""


@dataclass(frozen=True)
class Library:
    """The bundle: each module's (name, text) in name order, and the importer's text."""

    modules: tuple[tuple[str, str], ...]
    importer: str

    @cached_property
    def key(self) -> str:
        parts = [LOADER, PROLOGUE, self.importer, *(f"{name}\0{text}" for name, text in self.modules)]
        return KEY_PREFIX + hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:16]

    def loader(self) -> str:
        return LOADER.format(importer=self.importer, key=self.key, sources=dict(self.modules))

    def prologue(self, indent: str = "") -> str:
        return "\n".join(indent + line for line in PROLOGUE.format(key=self.key).splitlines())


def library(directory: Path = LIBRARY_DIR, importer: Path = IMPORTER) -> Library:
    """The bundle of ``directory``'s modules (one flat package: the importer knows no sub-packages)."""
    nested = sorted(p.parent.name for p in directory.glob("*/*.py") if p.parent.name != "__pycache__")
    if nested:
        raise BundleError(f"{directory}: sub-packages ({', '.join(nested)}) are not bundled; keep the in-database "
                          f"library one flat package")
    modules = tuple((p.stem, p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.py")))
    if not any(name == "__init__" for name, _ in modules):
        raise BundleError(f"{directory}: no __init__.py (the package the SQL functions call)")
    for path, text in [(importer, importer.read_text(encoding="utf-8"))] + [
            (directory / f"{name}.py", text) for name, text in modules]:
        if DOLLAR_TAG in repr(text):
            raise BundleError(f"{path} contains {DOLLAR_TAG}, which ends the function body that carries it")
    return Library(modules, importer.read_text(encoding="utf-8"))


def render(text: str, lib: Library, where: str = "sql") -> str:
    """``text`` with the loader written at ``# qvl:library`` and the prologue at ``# qvl:prologue``."""
    text = LIBRARY_MARKER.sub(lambda m: lib.loader(), text)
    text = PROLOGUE_MARKER.sub(lambda m: lib.prologue(m.group(1)), text)
    left = ANY_MARKER.search(text)
    if left:
        raise BundleError(f"{where}: unknown marker {left.group(0).strip()!r} (known: # qvl:library, "
                          f"# qvl:prologue)")
    return text
