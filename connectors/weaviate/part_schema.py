"""The schema of a chunked collection (issue 21): one object per page, video window or text passage.

A chunked collection names one **chunked field** (a PDF ``document`` field under ``pages``, a video
field under ``video``, a text field under ``text``) and declares, beside the source's own
properties, ``source_key`` (the source's key, as text), ``chunk_seq`` (0-based) and the locator
properties of its chunking (``page``; ``start_s`` / ``end_s``; ``char_start`` / ``char_end``). A part's
id follows from its collection, key and sequence (``part_uuid``), so ingesting a source again replaces
its parts. The chunked field is marked in its property description, where ``ingest`` reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from weaviate.classes.config import DataType, Property
from weaviate.util import generate_uuid5

SOURCE_KEY = "source_key"
CHUNK_SEQ = "chunk_seq"
# Each chunking: the role of the field it splits, and its locator's properties (the service's words).
CHUNKINGS: dict[str, tuple[str, tuple[tuple[str, DataType], ...]]] = {
    "pages": ("document", (("page", DataType.INT),)),
    "video": ("video", (("start_s", DataType.NUMBER), ("end_s", DataType.NUMBER))),
    "text": ("text", (("char_start", DataType.INT), ("char_end", DataType.INT))),
}
CHUNKED_MARK = " chunked"
# A chunked collection's default module: it tells queries from objects (nearText, nearImage, nearVideo
# embedded with the query instruction), and its parts' vectors come from ``ingest`` over gRPC.
PART_MODULE = "multi2vec-voyageai"  # appended to the chunked field's role in its description ("qvl:document chunked")


@dataclass(frozen=True)
class PartLayout:
    """How a chunked collection splits its sources: the chunking type and the field it splits."""

    chunking: str
    field: str

    @property
    def role(self) -> str:
        return CHUNKINGS[self.chunking][0]


def part_uuid(collection_name: str, key: Any, chunk_seq: int) -> str:
    """The id of part ``chunk_seq`` of the source whose key is ``key``: Weaviate's ``generate_uuid5`` of
    ``["<key>", seq]`` (JSON), namespaced by the collection's name (never equal to an unchunked
    ``object_uuid``, whose text is the bare key)."""
    return generate_uuid5(json.dumps([str(key), int(chunk_seq)]), collection_name)


def chunking_type(chunking: str | Mapping[str, Any] | None) -> str | None:
    """``"pages"`` from ``"pages"`` or ``{"type": "pages", ...}``; ValueError for an unknown type."""
    if chunking is None:
        return None
    kind = chunking if isinstance(chunking, str) else chunking.get("type")
    if kind not in CHUNKINGS:
        raise ValueError(f"chunking type must be {', '.join(CHUNKINGS)}, got {kind!r}")
    return str(kind)


def check_layout(name: str, roles: Mapping[str, Sequence[str]], chunking: str | Mapping[str, Any] | None,
                 chunk_field: str | None, *, profile: str | None,
                 module: str | None) -> tuple[PartLayout | None, str | None]:
    """(the layout a new collection gets (None: unchunked), its module), once its fields fit the
    chunking: one object per page of its one ``document_fields`` PDF (``pages``), window of its video
    (``video``) or passage of its text (``text``); ``chunk_field`` names the split field among several.
    Its module defaults to ``PART_MODULE``; it takes no profile."""
    kind = chunking_type(chunking)
    if kind is None:
        if chunk_field is not None or roles.get("document"):
            raise ValueError(f"collection {name!r}: chunk_field and document_fields need chunking=")
        return None, module
    if profile:  # ingest embeds the parts over gRPC with the service's own instructions, not a profile's
        raise ValueError(f"collection {name!r}: a chunked collection takes no profile")
    role = CHUNKINGS[kind][0]
    fields = list(roles.get(role, ()))
    if chunk_field is None:
        if len(fields) != 1:
            raise ValueError(f"collection {name!r}: chunking {kind!r} splits one {role} field; it has "
                             f"{fields or 'none'} (name it with chunk_field=)")
        chunk_field = fields[0]
    elif chunk_field not in fields:
        raise ValueError(f"collection {name!r}: chunk_field {chunk_field!r} is not one of its {role} fields {fields}")
    if role != "document" and roles.get("document"):
        raise ValueError(f"collection {name!r}: document fields are split by chunking 'pages' only")
    taken = {SOURCE_KEY, CHUNK_SEQ, *(p for p, _ in CHUNKINGS[kind][1])}
    clash = taken & {f for fs in roles.values() for f in fs}
    if clash:
        raise ValueError(f"collection {name!r}: {sorted(clash)} name the parts' own properties")
    return PartLayout(kind, chunk_field), module or PART_MODULE


def module_roles(roles: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The fields a module reads: a PDF field stands as an image field (the parts' vectors come from
    ``ingest``; the module embeds the queries)."""
    return {"text": list(roles["text"]), "image": [*roles["image"], *roles.get("document", ())],
            "video": list(roles["video"])}


def part_properties(layout: PartLayout) -> list[Property]:
    """The properties every part carries beside the source's: its source's key, sequence and locator."""
    props = [Property(name=SOURCE_KEY, data_type=DataType.TEXT, description="qvl: the key of the part's source"),
             Property(name=CHUNK_SEQ, data_type=DataType.INT, description="qvl: the part's place, 0-based")]
    return props + [Property(name=p, data_type=t, description=f"qvl: locator ({layout.chunking})")
                    for p, t in CHUNKINGS[layout.chunking][1]]


def read_layout(descriptions: Mapping[str, str]) -> PartLayout | None:
    """The layout of a collection from its properties' descriptions (None: not chunked)."""
    for field, text in descriptions.items():
        if text.endswith(CHUNKED_MARK) and text.startswith("qvl:"):
            role = text[len("qvl:"):-len(CHUNKED_MARK)]
            kind = next((k for k, (r, _) in CHUNKINGS.items() if r == role), None)
            if kind is not None:
                return PartLayout(kind, field)
    return None
