"""The structured filter (jsonb): columns of the table, operators from a fixed list, values bound
as parameters cast to the column's type. What an application builds from its users' input."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NoReturn

from . import spi
from .filters import STRUCTURED_HINT, STRUCTURED_OPS, Filter, refuse_filter
from .items import Row
from .spi import plan

# {"column", "op", "value"}, {"and": [...]}, {"or": [...]}, {"not": {...}}. Values are parameters, cast
# to the column's own type (so its indexes serve): no value is SQL.
STRING_OPS = ("like", "not like", "ilike", "not ilike")
STRUCTURED_DEPTH = 32  # nesting of and/or/not
STRUCTURED_ITEMS = 1000  # items in one filter
COLUMNS_SQL = """
SELECT a.attname AS name, pg_catalog.format('%I.%I', tn.nspname, t.typname) AS type,
       t.typcategory = 'A' AS is_array, tn.nspname = 'pg_catalog' AND t.typname IN ('json', 'jsonb') AS is_json
  FROM qvl.vectorizer v
  JOIN pg_catalog.pg_attribute a ON a.attrelid = v.source
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
 WHERE v.id = $1 AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum"""


class Number(str):
    """A JSON number as written (exact: no float rounding on its way to a numeric column)."""


def json_text(value: Any) -> str:
    """JSON for a json/jsonb column, numbers as written."""
    if isinstance(value, Number):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(json_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {json_text(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def describe(value: Any) -> str:
    return "an array" if isinstance(value, list) else "an object" if isinstance(value, dict) else json_text(value)


class StructuredCompiler:
    """Compiles a structured filter into SQL over the table's columns, its values as parameters."""

    def __init__(self, cfg: Row, doc: str, columns: Sequence[Row]) -> None:
        self.cfg, self.doc = cfg, doc
        self.columns = {c["name"]: c for c in columns}
        self.args: list[Any] = []
        self.argtypes: list[str] = []
        self.leaves: list[tuple[str, str, str, int]] = []
        self.items = 0

    def refuse(self, path: str, why: str, sqlstate: str = "22023", hint: str = STRUCTURED_HINT) -> NoReturn:
        refuse_filter(self.doc, f"'s item {path} {why}", sqlstate, hint)

    def compile(self, node: Any, path: str = "$", depth: int = 0) -> list[str | int]:
        self.items += 1
        if depth > STRUCTURED_DEPTH or self.items > STRUCTURED_ITEMS:
            refuse_filter(self.doc, f"nests deeper than {STRUCTURED_DEPTH} levels or holds more than "
                                    f"{STRUCTURED_ITEMS} items", "54000")
        if not isinstance(node, dict):
            self.refuse(path, f"is {describe(node)}, not an object")
        for word, joiner, empty in (("and", " AND ", "true"), ("or", " OR ", "false")):
            if word in node:
                self.only(node, path, {word})
                items = node[word]
                if not isinstance(items, list):
                    self.refuse(path, f'("{word}") takes a list of filters, not {describe(items)}')
                if not items:
                    return [empty]
                parts: list[str | int] = ["("]
                for i, item in enumerate(items):
                    parts += ([joiner] if i else []) + self.compile(item, f"{path}.{word}[{i}]", depth + 1)
                return [*parts, ")"]
        if "not" in node:
            self.only(node, path, {"not"})
            return ["(NOT ", *self.compile(node["not"], f"{path}.not", depth + 1), ")"]
        self.only(node, path, {"column", "op", "value"})
        return self.leaf(node, path)

    def only(self, node: dict[str, Any], path: str, keys: set[str]) -> None:
        for key in node:
            if key not in keys:
                self.refuse(path, f'has key "{key}": an item is {{"column", "op", "value"}}, {{"and": [...]}}, '
                                  f'{{"or": [...]}} or {{"not": {{...}}}}')

    def leaf(self, node: dict[str, Any], path: str) -> list[str | int]:
        name, op = node.get("column"), node.get("op")
        if not isinstance(name, str):
            self.refuse(path, 'has no "column" (a column name)')
        if not isinstance(op, str):
            self.refuse(path, 'has no "op" (an operator)')
        column = self.columns.get(name)
        if column is None:
            self.refuse(path, f'names column "{name}", which {self.cfg["source_sql"]} does not have', "42703",
                        "Its columns: " + ", ".join(list(self.columns)[:50]))
        key = op.strip().lower()
        if key not in STRUCTURED_OPS:
            self.refuse(path, f'names operator "{op}", which is not one of ' + ", ".join(STRUCTURED_OPS))
        ref = f"{spi.plpy.quote_ident(self.cfg['source_name'])}.{spi.plpy.quote_ident(name)}"
        value = node.get("value")
        if key in ("is null", "is not null"):
            if value is not None:
                self.refuse(path, f'("{key}") takes no value')
            return [f"({ref} {STRUCTURED_OPS[key]})"]
        if value is None:
            self.refuse(path, f'("{key}") compares with null, which no row equals: use "op": "is null"')
        if key in ("in", "not in"):
            if not isinstance(value, list) or column["is_array"]:
                self.refuse(path, f'("{key}") takes a list of values, on a column that is not an array '
                                  f"(for arrays: \"&&\", \"@>\")")
            values = [self.scalar(v, f"{path}.value[{i}]", column) for i, v in enumerate(value)]
            index = self.bind(path, name, f"{column['type']}[]", "text[]", values)
            return [f"({ref} {STRUCTURED_OPS[key]} (CAST(", index, f" AS {column['type']}[])))"]
        if key in STRING_OPS and (not isinstance(value, str) or isinstance(value, Number)):
            self.refuse(path, f'("{key}") takes a string, not {describe(value)}')
        if column["is_json"]:
            bound: Any = json_text(value)
        elif column["is_array"]:
            if not isinstance(value, list):
                self.refuse(path, f"compares array column \"{name}\" with {describe(value)}: give a list")
            bound = [None if v is None else self.scalar(v, f"{path}.value[{i}]", column) for i, v in enumerate(value)]
        else:
            bound = self.scalar(value, f"{path}.value", column)
        index = self.bind(path, name, column["type"], "text[]" if isinstance(bound, list) else "text", bound)
        return [f"({ref} {STRUCTURED_OPS[key]} CAST(", index, f" AS {column['type']}))"]

    def scalar(self, value: Any, path: str, column: Row) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):  # numbers too (Number)
            return str(value)
        self.refuse(path, f"is {describe(value)}: column \"{column['name']}\" takes one value here")

    def bind(self, path: str, column: str, cast: str, argtype: str, value: Any) -> int:
        self.args.append(value)
        self.argtypes.append(argtype)
        self.leaves.append((path, column, cast, len(self.args) - 1))
        return len(self.args) - 1


def structured_filter(cfg: Row, doc: str) -> Filter:
    spec = json.loads(doc, parse_int=Number, parse_float=Number)
    columns = spi.plpy.execute(plan("columns", COLUMNS_SQL, ["int4"]), [cfg["id"]])
    compiler = StructuredCompiler(cfg, doc, list(columns))
    parts = compiler.compile(spec)
    return Filter(parts, ("json", tuple(parts), tuple(compiler.argtypes)), doc, compiler.argtypes, compiler.args,
                  compiler.leaves)
