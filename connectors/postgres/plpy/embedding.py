"""Embeddings: one item's vector in pgvector's text form (``qvl.embed``, the sync trigger, query
vectors)."""

from __future__ import annotations

import array
import base64
import math
import sys
from collections.abc import Mapping
from typing import Any

from .errors import HINTS, Failure, What, malformed
from .items import Item, make_item
from .service import call


def vector_text(emb: Mapping[str, Any], storage: str, dims: int | None) -> str:
    """pgvector's text form ('[...]' or a bit string) of one answer."""
    if "embedding_b64" in emb:
        raw = base64.b64decode(emb["embedding_b64"])
        if storage == "bit":
            return "".join(format(b, "08b") for b in raw)[:dims]
        floats = array.array("f")
        floats.frombytes(raw)
        if sys.byteorder != "little":
            floats.byteswap()
        values = floats.tolist()
    else:
        values = emb["embedding"]
    return "[" + ",".join(map(repr, values)) + "]"


def embed_request(item: Item | None, instruction: str | None, dimensions: int | None, storage: str,
                  fingerprint: str | None = None) -> dict[str, Any]:
    """The POST /v1/embed body for one item (binary encoding for bit storage, else float32);
    ``fingerprint`` pins the model (the service refuses another with 409 MODEL_MISMATCH)."""
    payload: dict[str, Any] = {"items": [item if item is not None else {}], "format": "base64",
                               "encoding": "binary" if storage == "bit" else "float32"}
    if instruction is not None:
        payload["instruction"] = instruction
    if dimensions is not None:
        payload["dimensions"] = dimensions
    if fingerprint is not None:
        payload["fingerprint"] = fingerprint
    return payload


def embed_text(item: Item | None, instruction: str | None, dimensions: int | None, storage: str,
               what: What, fingerprint: str | None = None) -> str:
    """The vector's text; a Failure for an answer without one or with a value that is not finite."""
    return embed_answer(item, instruction, dimensions, storage, what, fingerprint)[0]


def embed_answer(item: Item | None, instruction: str | None, dimensions: int | None, storage: str,
                 what: What, fingerprint: str | None = None,
                 vectorizer_id: int | None = None) -> tuple[str, str | None, int]:
    """As ``embed_text``, with the fingerprint of the model that answered (None: a service older
    than fingerprints) and the text tokens the service cut (0: none; the answer's ``truncated``);
    ``vectorizer_id``: asked of that vectorizer's own service (``call``)."""
    resp = call("embed", embed_request(item, instruction, dimensions, storage, fingerprint), what, vectorizer_id)
    try:
        text = vector_text(resp["embeddings"][0], storage, resp.get("dimensions"))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise malformed("embed", f"no vector in the answer ({type(exc).__name__}: {exc})") from None
    if storage != "bit" and not all(math.isfinite(float(x)) for x in text.strip("[]").split(",")):
        raise Failure(f"qvl: the model service returned a vector that is not finite (NaN or infinity) for "
                      f"{what(None)}", detail="embed 200: a NaN or infinite value", hint=HINTS[500],
                      sqlstate="XX000", status=200)
    answered = resp.get("fingerprint")
    return text, answered if isinstance(answered, str) and answered else None, cut_tokens(resp)


def cut_tokens(resp: Mapping[str, Any]) -> int:
    """The tokens the service cut from the one item of ``resp`` (a service older than ``truncated``: 0)."""
    cut = resp.get("truncated")
    if not isinstance(cut, list):
        return 0
    return sum(int(c.get("tokens") or 0) for c in cut if isinstance(c, dict) and c.get("item") == 0)


def embed_sql(text: str | None, image: bytes | None, video: bytes | None, instruction: str | None,
              dimensions: int | None, storage: str) -> str | None:
    """qvl.embed and qvl.embed_halfvec."""
    item = make_item([text], [image], [video]) or {}
    try:
        return embed_text(item, instruction, dimensions, storage, lambda i: "the input")
    except Failure as f:
        f.raise_sql()
