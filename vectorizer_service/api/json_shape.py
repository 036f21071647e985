"""How much a JSON body will become once parsed, counted on its bytes before it is parsed.

A body's bytes say little about its parsed size: ``["ab","ab",...]`` is 5 bytes a value on the
wire and about 60 as Python objects (an empty list or object about 70), so a 128 MiB body of
tiny values would take gigabytes. ``json_values`` counts the values (list elements and object
members, nested ones included) and measures the nesting without building anything: the body's
strings are skipped with ``bytes.find`` (C speed, no copy of their contents) and the structure
left is counted with ``bytes.count`` (about 50 ms for a 100 MB body of images, a quarter of what
parsing it takes).
"""

from __future__ import annotations

import numpy as np

from vectorizer_service.core.errors import InputError

# Bytes of Python objects a parsed value may take beyond its characters (measured: 60 for a short
# string in a list, 70 for an empty list or object, 90 for a one-member object), held in the byte
# budget while the request runs (``http_service.HttpService.json``).
VALUE_BYTES = 128
_OPEN, _BRACE = ord("["), ord("{")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _outside_strings(raw: bytes) -> bytes | None:
    """The body with every string replaced by ``0`` (None: a string is never closed)."""
    if b"\\" in raw:  # escaped backslashes first, then escaped quotes: what remains of a quote is real
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    segments, pos = [], 0
    while (start := raw.find(b'"', pos)) >= 0:
        end = raw.find(b'"', start + 1)
        if end < 0:
            return None
        segments.append(raw[pos:start])
        pos = end + 1
    segments.append(raw[pos:])
    return b"0".join(segments)


def _depth(structure: bytes) -> int:
    brackets = np.frombuffer(structure.translate(None, _NOT_BRACKETS), dtype=np.uint8)
    if not len(brackets):
        return 0
    steps = np.where((brackets == _OPEN) | (brackets == _BRACE), 1, -1)  # "[" and "{" open, the others close
    return int(steps.cumsum().max())


def _too_many(limit: int) -> InputError:
    return InputError(f"the body holds more than {limit} JSON values (list elements and object members)",
                      status=413, limit="QVL_MAX_JSON_VALUES")


def json_values(raw: bytes, max_values: int, max_depth: int) -> int:
    """About how many values ``raw`` holds (at least as many as it does); refuses a body over
    ``max_values`` (413) or nested deeper than ``max_depth`` (400), naming the setting. A body that
    is no JSON at all passes here and is refused by the parser."""
    # A member is at most two strings (its key and its value): more strings than that is too many
    # values, whatever the structure. The quotes are counted without reading the strings.
    quotes = raw.count(b'"')
    if quotes // 4 > max_values and (quotes - raw.count(b'\\"')) // 4 > max_values:
        raise _too_many(max_values)
    structure = _outside_strings(raw)
    if structure is None:
        raise InputError("the body is not valid JSON: a string is not closed")
    # Every list or object but the body itself is a value: past max_values + 1 of them the count
    # below refuses the body, so the depth is measured on a bounded number of brackets.
    openers = structure.count(b"[") + structure.count(b"{")
    if max_depth < openers <= max_values + 1:
        depth = _depth(structure)
        if depth > max_depth:
            raise InputError(f"the body nests lists and objects {depth} deep, over the limit of {max_depth}",
                             limit="QVL_MAX_JSON_DEPTH")
    # Every value but a container's first follows a comma.
    values = structure.count(b",") + openers - structure.count(b"[]") - structure.count(b"{}") + 1
    if values > max_values:
        raise _too_many(max_values)
    return values
