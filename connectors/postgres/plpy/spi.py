"""PL/Python's side of a call: the ``plpy`` module every other module calls, and prepared statements.

``plpy`` is not imported: PL/Python provides it to the function bodies, and ``qvl._load()`` binds it
here once the bundle's modules have run. The other modules call it as ``spi.plpy`` (a module
attribute, read at each call), so binding it once (or a test setting a stand-in) reaches them all.
(A forwarding object would cost about 2 us per call through __getattr__; a query vector remembered
for the statement costs about 4 us a row in all.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

plpy: Any = None  # PL/Python's module, set by bind()


def bind(module: Any) -> None:
    """Makes ``module`` the ``plpy`` that every module of the library calls."""
    global plpy
    plpy = module


# Per backend: the library lives as long as the backend's GD entry.
plans: dict[Any, Any] = {}  # prepared statements by key


def plan(key: Any, query: str, argtypes: Sequence[str] = ()) -> Any:
    """The prepared statement of ``query``, prepared once per backend under ``key``.

    The text and argument types are part of the key: a vectorizer whose columns were renamed or
    whose key was widened (the schema guard follows both) gets a new statement, where a plan of the
    old text would fail once Postgres re-plans it."""
    full_key = (key, query, tuple(argtypes))
    p = plans.get(full_key)
    if p is None:
        p = plans[full_key] = plpy.prepare(query, list(argtypes))
    return p


def interrupts() -> None:
    """Raises (an SPIError) when the statement was cancelled or ran past statement_timeout."""
    plpy.execute(plan("tick", "SELECT 1"))


def spi_error_class() -> type[BaseException]:
    return getattr(plpy, "SPIError", Exception)
