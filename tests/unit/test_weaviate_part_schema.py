"""The schema of a chunked Weaviate collection (connectors/weaviate/part_schema.py), without a server:
which layouts are accepted, the parts' properties, ids, and reading the layout back."""

from __future__ import annotations

import pytest

from connectors.weaviate.ingest import object_uuid
from connectors.weaviate.part_schema import (
    CHUNKED_MARK,
    PART_MODULE,
    PartLayout,
    check_layout,
    module_roles,
    part_properties,
    part_uuid,
    read_layout,
)


def roles(text: list[str] | None = None, image: list[str] | None = None, video: list[str] | None = None,
          document: list[str] | None = None) -> dict[str, list[str]]:
    return {"text": text or [], "image": image or [], "video": video or [], "document": document or []}


def test_layouts_follow_the_split_field_and_default_to_the_query_aware_module() -> None:
    assert check_layout("C", roles(text=["title"], document=["pdf"]), "pages", None, profile=None, module=None) == \
        (PartLayout("pages", "pdf"), PART_MODULE)
    assert check_layout("C", roles(video=["clip"]), {"type": "video", "seconds": 10}, None, profile=None,
                        module="multi2vec-bind") == (PartLayout("video", "clip"), "multi2vec-bind")
    layout, _ = check_layout("C", roles(text=["title", "body"]), "text", "body", profile=None, module=None)
    assert layout == PartLayout("text", "body") and layout.role == "text"
    assert check_layout("C", roles(text=["a"]), None, None, profile=None, module=None) == (None, None)


@pytest.mark.parametrize(("kwargs", "chunking", "chunk_field", "profile", "words"), [
    ({"text": ["title"]}, "pages", None, None, "splits one document field"),
    ({"text": ["title", "body"]}, "text", None, None, "name it with chunk_field"),
    ({"text": ["title"]}, "text", "body", None, "'body' is not one of its text fields"),
    ({"video": ["clip"], "document": ["pdf"]}, "video", None, None, "chunking 'pages' only"),
    ({"document": ["pdf"]}, None, None, None, "need chunking="),
    ({"document": ["pdf"]}, "pages", None, "small", "takes no profile"),
    ({"document": ["pdf"], "text": ["page"]}, "pages", None, None, "the parts' own properties"),
    ({"text": ["body"]}, "sentences", None, None, "chunking type must be"),
])
def test_a_layout_that_does_not_fit_is_refused_naming_the_collection(
        kwargs: dict[str, list[str]], chunking: str, chunk_field: str | None, profile: str | None, words: str) -> None:
    with pytest.raises(ValueError) as err:
        check_layout("Manuals", roles(**kwargs), chunking, chunk_field, profile=profile, module=None)
    assert words in str(err.value)
    assert "Manuals" in str(err.value) or "chunking type" in str(err.value)


def test_part_properties_ids_and_the_layout_read_back() -> None:
    names = [p.name for p in part_properties(PartLayout("video", "clip"))]
    assert names == ["source_key", "chunk_seq", "start_s", "end_s"]
    assert [p.name for p in part_properties(PartLayout("text", "body"))][2:] == ["char_start", "char_end"]
    ids = {part_uuid("Manuals", "crane", s) for s in range(3)}
    assert len(ids) == 3 and part_uuid("Manuals", "crane", 0) == part_uuid("Manuals", "crane", 0)
    assert part_uuid("Manuals", 7, 0) == part_uuid("Manuals", "7", 0)  # the key as text, as source_key holds it
    assert part_uuid("Other", "crane", 0) not in ids and object_uuid("Manuals", "crane") not in ids
    assert read_layout({"title": "qvl:text", "pdf": "qvl:document" + CHUNKED_MARK}) == PartLayout("pages", "pdf")
    assert read_layout({"title": "qvl:text", "pdf": "qvl:document"}) is None
    assert module_roles(roles(text=["t"], image=["i"], document=["pdf"]))["image"] == ["i", "pdf"]
