"""The Postgres connector's pure parts: SQL file ordering, row -> item, vector text, SQL fragments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from connectors.postgres.installer import InstallError, latest_version, sql_files
from connectors.postgres.row_encoding import row_item, vector_literal
from connectors.postgres.vectorizers import Vectorizer


def vectorizer(**kw: object) -> Vectorizer:
    base: dict[str, object] = dict(
        id=7, name="photos", source='"public"."photos"', pk_columns=("id",), pk_types=("bigint",),
        text_columns=("caption", "tags"), image_columns=("image", "url"), video_columns=("clip",),
        destination="embedding", dimensions=12, storage="vector", instruction=None, mode="async",
        vector_schema="public", column_types={"caption": "text", "tags": "text[]", "image": "bytea", "url": "text",
                                              "clip": "bytea[]"})
    base.update(kw)
    return Vectorizer(**base)  # type: ignore[arg-type]


def test_sql_files_in_order_without_gaps(tmp_path: Path) -> None:
    files = sql_files()
    assert [f.version for f in files] == list(range(1, latest_version() + 1))
    (tmp_path / "001_a.sql").write_text("")
    (tmp_path / "003_c.sql").write_text("")
    with pytest.raises(InstallError, match="without gaps"):
        sql_files(tmp_path)


def test_row_item_is_one_joint_item_in_the_sql_order() -> None:
    v = vectorizer()
    item = row_item(v, {"caption": "a cat", "tags": ["pet", None, "sofa"], "image": b"\x89PNG", "url": "/m/cat.jpg",
                        "clip": [b"f1", b"f2"]})
    assert item is not None
    kinds = [p.WhichOneof("kind") for p in item.parts]
    assert kinds == ["frames", "image", "image_uri", "text", "text", "text"]
    assert [p.text for p in item.parts if p.WhichOneof("kind") == "text"] == ["a cat", "pet", "sofa"]
    assert row_item(v, dict.fromkeys(v.content_columns)) is None  # all NULL: no model call


def test_vector_literal_round_trips_float32_and_bits() -> None:
    values = np.random.default_rng(0).standard_normal(12).astype(np.float32)
    text = vector_literal(vectorizer(), values)
    assert np.array_equal(np.array([float(x) for x in text.strip("[]").split(",")], dtype=np.float32), values)
    bits = vector_literal(vectorizer(storage="bit"), np.packbits(values > 0))
    assert bits == "".join("1" if x > 0 else "0" for x in values)


def test_sql_fragments_name_everything_qualified() -> None:
    v = vectorizer()
    assert "md5(s.\"image\")" in v.content_hash() and "md5(s.\"tags\"::text)" in v.content_hash()
    claim = v.claim_sql()
    assert "FOR UPDATE SKIP LOCKED" in claim and "qvl.queue_7" in claim and '"public"."photos"' in claim
    assert "public.vector(12)" in v.write_sql()
    assert vectorizer(storage="bit").vector_type == "bit(12)"


def test_a_chunked_vectorizers_document_goes_after_the_video_and_its_write_locks_no_table_row() -> None:
    v = vectorizer(text_columns=("title",), image_columns=(), video_columns=(), document_columns=("pdf",),
                   chunking={"type": "pages"}, chunk_table='"public"."manual_pages"',
                   column_types={"title": "text", "pdf": "bytea"})
    item = row_item(v, {"title": "crane manual", "pdf": b"%PDF-1.4"})
    assert item is not None
    assert [p.WhichOneof("kind") for p in item.parts] == ["document", "text"]
    uri = row_item(vectorizer(text_columns=(), image_columns=(), video_columns=(), document_columns=("pdf",),
                              chunking={"type": "pages"}), {"pdf": "file:///m/crane.pdf"})
    assert uri is not None and uri.parts[0].document_uri == "file:///m/crane.pdf"
    assert 'md5(s."pdf")' in v.content_hash()  # a new document re-embeds, and a stale write is refused
    assert v.lock_source_sql() == "SELECT 0" and "FOR " not in v.lock_free_source_sql()
    assert '"public"."manual_pages"' in v.insert_chunks_sql() and "public.vector(12)" in v.insert_chunks_sql()


def test_a_chunked_vectorizers_destination_is_its_chunk_table_not_a_column() -> None:
    """The managed install's drift check (no schema guard) held every chunked vectorizer: it looked for
    its destination as a column of the source table."""
    types = {"id": "integer", "title": "text", "pdf": "bytea"}
    v = vectorizer(text_columns=("title",), image_columns=(), video_columns=(), document_columns=("pdf",),
                   chunking={"type": "pages"}, chunk_table='"public"."manual_pages"', destination="manual_pages",
                   column_types=types)
    assert v.schema_drift() is None
    gone = vectorizer(text_columns=("title",), image_columns=(), video_columns=(), document_columns=("pdf",),
                      chunking={"type": "pages"}, chunk_table='"public"."manual_pages"', destination="manual_pages",
                      column_types={"id": "integer", "title": "text"})
    assert "no column pdf" in (gone.schema_drift() or "")
