"""The in-memory importer that ``qvl._load()`` runs: the PL/Python library's modules, shipped as one
text, imported as one package from a dict of their sources.

It runs in the database server's own Python (standard library only). ``qvl._load()``'s body, which
the installer writes (connectors/postgres/plpy_bundle.py), executes this file's text as a module and
calls ``load``. The package is named after the bundle's hash, which is also its GD key: two bundles
in one backend (the one a session loaded before an upgrade, and the new one) are two packages, and
each module imports its own bundle's siblings only. Nothing else in the backend is touched: the
finder is on ``sys.meta_path`` only while ``load`` runs, and answers only for the package's names.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from collections.abc import Mapping
from typing import Any

PACKAGE_MODULE = "__init__"  # the source that is the package itself
ORIGIN = "connectors/postgres/plpy/{}.py"  # what tracebacks name: the file each module came from


class BundleFinder:
    """Finds and executes the modules of one bundle: ``package`` and ``package.<name>`` for each
    source ``<name>``; any other name is left to the next finder."""

    def __init__(self, package: str, sources: Mapping[str, str]) -> None:
        self.package, self.sources = package, sources

    def source_name(self, fullname: str) -> str | None:
        if fullname == self.package:
            return PACKAGE_MODULE
        head, _, name = fullname.rpartition(".")
        if head == self.package and name != PACKAGE_MODULE and name in self.sources:
            return name
        return None

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        name = self.source_name(fullname)
        if name is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, origin=ORIGIN.format(name),
                                              is_package=name == PACKAGE_MODULE)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a plain module

    def exec_module(self, module: types.ModuleType) -> None:
        name = self.source_name(module.__name__)
        if name is None:
            raise ImportError(f"{module.__name__} is not in the bundle {self.package}", name=module.__name__)
        exec(compile(self.sources[name], ORIGIN.format(name), "exec", dont_inherit=True), module.__dict__)


def load(package: str, sources: Mapping[str, str]) -> types.ModuleType:
    """Imports every module of the bundle as ``package`` (and ``package.<name>``) and returns the
    package. Modules of that name that this backend loaded before (its GD entry was lost) are
    replaced, not reused: a load always starts from the sources."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]
    finder = BundleFinder(package, sources)
    sys.meta_path.insert(0, finder)
    try:
        root = importlib.import_module(package)
        for name in sorted(sources):
            if name != PACKAGE_MODULE:
                importlib.import_module(f"{package}.{name}")
    finally:
        sys.meta_path.remove(finder)
    return root
