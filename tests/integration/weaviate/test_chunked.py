"""Issue 21 in Weaviate: ``ingest(..., chunking=...)`` writes one object per page, video window or text
passage, its vector qvl's embedding of that part alone, with its locator; nearText / nearImage and
rerank find parts like any objects; ingesting again replaces and removes a source's stale parts.

Against the real Weaviate server and the real service (the tiny checkpoint, random weights).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import weaviate
from PIL import Image
from weaviate.classes.config import DataType, Property
from weaviate.classes.query import Filter, MetadataQuery, Rerank
from weaviate.collections import Collection

from connectors.client import Client
from connectors.weaviate import (
    MODULE_VECTOR,
    CollectionError,
    IngestError,
    api_key_headers,
    copy_objects,
    create_collection,
    ingest,
    part_uuid,
)
from qvl_devtools.demo_media import sample_media
from qvl_devtools.launchers.weaviate import WeaviateServer, connect
from tests.document_factory import pdf_of, pictures, png, video_of
from tests.integration.weaviate.conftest import b64, cos
from tests.support.service import ServiceProcess
from vectorizer_service.core.settings import DEFAULT_QUERY_INSTRUCTION as QUERY

pytestmark = [pytest.mark.weaviate, pytest.mark.service]

# The demo's rings, stripes and grid as pages: on the tiny model's random weights each picture, embedded
# as a query, is still nearest its own page (by 0.1 and more; random colour fields are not).
PAGES = [Image.open(io.BytesIO(m["image"])).convert("RGB") for m in sample_media(videos=False)[:3]]
PDF = pdf_of(PAGES)
OTHER_PDF = pdf_of(pictures(2, seed=22))
VIDEO = video_of(pictures(3, seed=23), fps=2, repeat=4)  # 6 s
CLIP_PARITY = 0.998  # docs/documents.md: a clip decoded apart, the float noise of two batches
ARTICLE = ("Cranes lift heavy loads on building sites. The operator sits in a cabin high above. "
           "Wind limits the work: above a set speed the crane stops.\n\n"
           "Rivers carry water from hills to the sea. Their banks flood in spring. "
           "Bridges cross them where the valley narrows.\n\n"
           "Bread is baked from flour, water, salt and yeast. The dough rises for hours before it goes "
           "into a hot oven.")


@pytest.fixture(scope="module")
def cw(module_weaviate: WeaviateServer) -> Iterator[weaviate.WeaviateClient]:
    """The shared Weaviate; the API modules need some key, and the shared service takes any."""
    client = connect(module_weaviate, headers=api_key_headers("chunked-tests"))
    try:
        yield client
    finally:
        client.close()


def _parts(col: Collection, key: str) -> list[Any]:
    found = col.query.fetch_objects(filters=Filter.by_property("source_key").equal(key), limit=100,
                                    include_vector=True)
    return sorted(found.objects, key=lambda o: o.properties["chunk_seq"])


@pytest.fixture(scope="module")
def pages(cw: weaviate.WeaviateClient, qvl_service: ServiceProcess,
          qvl: Client) -> Iterator[tuple[Collection, dict[str, Any]]]:
    info = create_collection(cw, "ChunkPages", text_fields=["title"], document_fields=["pdf"], chunking="pages",
                             service_url=qvl_service.http_url, replace=True,
                             properties=[Property(name="shelf", data_type=DataType.TEXT)])
    assert info["module"] == "multi2vec-voyageai" and info["chunking"] == "pages"
    col = cw.collections.get("ChunkPages")
    docs = [{"id": "crane", "title": "Crane manual", "pdf": PDF, "shelf": "A"},
            {"id": "junk", "title": "Not a PDF", "pdf": b"these bytes are no PDF at all", "shelf": "B"},
            {"id": "river", "pdf": OTHER_PDF, "shelf": "C"},
            {"id": "nopdf", "title": "A title, no PDF", "shelf": "D"},
            {"id": "typed", "pdf": OTHER_PDF, "shelf": 5}]  # shelf is text: Weaviate refuses every page
    report = ingest(col, docs, qvl=qvl, key="id", chunking={"type": "pages"})
    yield col, report
    cw.collections.delete("ChunkPages")


def test_each_page_is_an_object_with_its_locator_and_the_pages_embedding(
        pages: tuple[Collection, dict[str, Any]], qvl: Client) -> None:
    col, report = pages
    assert report["inserted"] == 2 and report["parts"] == 5
    crane = _parts(col, "crane")
    assert [(o.properties["chunk_seq"], o.properties["page"]) for o in crane] == [(0, 1), (1, 2), (2, 3)]
    assert [str(o.uuid) for o in crane] == [part_uuid("ChunkPages", "crane", s) for s in range(3)]
    assert report["uuids"][0] == [str(o.uuid) for o in crane]
    assert {o.properties["title"] for o in crane} == {"Crane manual"} and crane[0].properties["shelf"] == "A"
    assert "pdf" not in crane[0].properties or crane[0].properties["pdf"] is None  # no copy of the PDF per page
    alone = qvl.embed([{"document": PDF, "page": n, "text": "Crane manual"} for n in (1, 2, 3)])
    for obj, want in zip(crane, alone, strict=True):
        assert cos(obj.vector[MODULE_VECTOR], want) >= 0.9999, obj.properties
    river = _parts(col, "river")
    alone = qvl.embed([{"document": OTHER_PDF, "page": n} for n in (1, 2)])
    assert [o.properties["page"] for o in river] == [1, 2]
    assert min(cos(o.vector[MODULE_VECTOR], w) for o, w in zip(river, alone, strict=True)) >= 0.9999


def test_a_bad_document_fails_alone_named_with_its_reason(pages: tuple[Collection, dict[str, Any]]) -> None:
    col, report = pages
    junk, nopdf, typed = report["failed"]  # one entry per source, not one per refused page
    assert junk["index"] == 1 and junk["stage"] == "embed"
    assert "object 1" in junk["error"] and "PDF" in junk["error"], junk
    assert nopdf["index"] == 3 and nopdf["stage"] == "read"
    assert "object 3" in nopdf["error"] and "'pdf'" in nopdf["error"] and "missing" in nopdf["error"], nopdf
    assert typed["index"] == 4 and typed["stage"] == "insert" and "object 4" in typed["error"], typed
    assert report["uuids"][1] is None and report["uuids"][3] is None and report["uuids"][4] is None
    assert _parts(col, "junk") == [] and _parts(col, "nopdf") == [] and _parts(col, "typed") == []


def test_near_image_finds_the_page_with_its_locator(pages: tuple[Collection, dict[str, Any]], qvl: Client) -> None:
    col, _ = pages
    for n, picture in enumerate(PAGES, 1):
        found = col.query.near_image(b64(png(picture)), target_vector=MODULE_VECTOR, limit=3, include_vector=True,
                                     filters=Filter.by_property("source_key").equal("crane"),  # which page of it
                                     return_metadata=MetadataQuery(distance=True))
        top = found.objects[0].properties
        assert (top["source_key"], top["page"], top["chunk_seq"]) == ("crane", n, n - 1), \
            [o.properties for o in found.objects]
        # Weaviate compared qvl's query embedding of the picture (the module's) with the stored parts.
        [query] = qvl.embed([{"image": png(picture)}], instruction=QUERY)
        for obj in found.objects:
            assert obj.metadata.distance == pytest.approx(1 - cos(query, obj.vector[MODULE_VECTOR]), abs=1e-4)


def test_ingesting_again_replaces_and_fewer_pages_removes_the_stale_ones(
        pages: tuple[Collection, dict[str, Any]], qvl: Client) -> None:
    col, _ = pages
    before = col.aggregate.over_all(total_count=True).total_count
    again = ingest(col, [{"id": "river", "pdf": OTHER_PDF, "shelf": "C2"}], qvl=qvl, key="id",
                   chunking={"type": "pages"})
    assert again["parts"] == 2 and again["removed"] == 0
    assert col.aggregate.over_all(total_count=True).total_count == before
    assert {o.properties["shelf"] for o in _parts(col, "river")} == {"C2"}

    one_page = pdf_of([PAGES[2].copy()])  # a fresh image: Pillow's save_all remembers what was appended
    shorter = ingest(col, [{"id": "crane", "title": "Crane manual, short", "pdf": one_page}], qvl=qvl, key="id",
                     chunking={"type": "pages"})
    assert shorter["parts"] == 1 and shorter["removed"] == 2 and shorter["failed"] == []
    [only] = _parts(col, "crane")
    assert (only.properties["page"], only.properties["title"]) == (1, "Crane manual, short")
    [want] = qvl.embed([{"document": one_page, "page": 1, "text": "Crane manual, short"}])
    assert cos(only.vector[MODULE_VECTOR], want) >= 0.9999
    assert col.aggregate.over_all(total_count=True).total_count == before - 2
    assert {o.properties["source_key"] for o in _parts(col, "river")} == {"river"}  # the neighbour untouched


def test_chunking_is_checked_against_the_collection(pages: tuple[Collection, dict[str, Any]], qvl: Client) -> None:
    col, _ = pages
    with pytest.raises(IngestError, match="key"):
        ingest(col, [{"pdf": PDF}], qvl=qvl, chunking={"type": "pages"})  # parts need a key
    with pytest.raises(IngestError, match="pages"):
        ingest(col, [{"id": "x", "pdf": PDF}], qvl=qvl, key="id", chunking={"type": "text", "tokens": 16})
    with pytest.raises(IngestError, match="chunking"):
        ingest(col, [{"id": "x", "pdf": PDF}], qvl=qvl, key="id")
    report = ingest(col, [{"id": "number", "pdf": 12345}], qvl=qvl, key="id", chunking={"type": "pages"})
    [failure] = report["failed"]  # named, not a TypeError out of base64
    assert failure["stage"] == "read" and "object 0: document field 'pdf' holds int" in failure["error"], failure


def test_video_windows_are_objects_with_their_spans(cw: weaviate.WeaviateClient, qvl_service: ServiceProcess,
                                                   qvl: Client) -> None:
    create_collection(cw, "ChunkClips", video_fields=["clip"], chunking="video", service_url=qvl_service.http_url,
                      replace=True)
    col = cw.collections.get("ChunkClips")
    try:
        report = ingest(col, [{"id": "talk", "clip": VIDEO}], qvl=qvl, key="id",
                        chunking={"type": "video", "seconds": 4, "overlap": 1})
        assert report["failed"] == [] and report["parts"] == 2
        clips = _parts(col, "talk")
        spans = [(o.properties["start_s"], o.properties["end_s"]) for o in clips]
        assert spans == [(0.0, 4.0), (3.0, 6.0)]
        alone = qvl.embed([{"video": VIDEO, "start_s": s, "end_s": e} for s, e in spans])
        for obj, want in zip(clips, alone, strict=True):
            assert cos(obj.vector[MODULE_VECTOR], want) >= CLIP_PARITY
    finally:
        cw.collections.delete("ChunkClips")


def test_passages_are_objects_found_by_near_text_and_reranked(cw: weaviate.WeaviateClient,
                                                             qvl_service: ServiceProcess, qvl: Client) -> None:
    create_collection(cw, "ChunkTexts", text_fields=["title", "body"], chunking="text", chunk_field="body",
                      service_url=qvl_service.http_url, replace=True)
    col = cw.collections.get("ChunkTexts")
    try:
        report = ingest(col, [{"id": "untitled", "title": "Only a title"},  # no body: the title is not split
                              {"id": "notes", "title": "Notes", "body": ARTICLE}], qvl=qvl, key="id",
                        chunking={"type": "text", "tokens": 24, "overlap": 0})
        [failure] = report["failed"]
        assert failure["index"] == 0 and "'body'" in failure["error"] and _parts(col, "untitled") == []
        assert report["inserted"] == 1 and report["parts"] >= 3
        passages = _parts(col, "notes")
        spans = [(o.properties["char_start"], o.properties["char_end"]) for o in passages]
        assert [o.properties["body"] for o in passages] == [ARTICLE[a:b] for a, b in spans]
        alone = qvl.embed([{"text": ["Notes", ARTICLE[a:b]]} for a, b in spans])
        for obj, want in zip(passages, alone, strict=True):
            assert cos(obj.vector[MODULE_VECTOR], want) >= 0.9999
        bread = next(o for o in passages if "Bread" in o.properties["body"])
        found = col.query.near_text(bread.properties["body"], target_vector=MODULE_VECTOR, limit=len(passages),
                                    return_metadata=MetadataQuery(distance=True))
        assert found.objects[0].uuid == bread.uuid
        assert (found.objects[0].properties["char_start"], found.objects[0].properties["char_end"]) == \
            (bread.properties["char_start"], bread.properties["char_end"])
        found = col.query.near_text(bread.properties["body"], target_vector=MODULE_VECTOR, limit=len(passages),
                                    rerank=Rerank(prop="body", query="baking bread"))
        want_scores = qvl.rerank("baking bread", [o.properties["body"] for o in found.objects]).scores
        got = np.asarray([o.metadata.rerank_score for o in found.objects])
        assert np.allclose(got, want_scores, atol=1e-3)
    finally:
        cw.collections.delete("ChunkTexts")


def test_copy_objects_refuses_a_collection_of_parts(cw: weaviate.WeaviateClient, qvl_service: ServiceProcess,
                                                     pages: tuple[Collection, dict[str, Any]]) -> None:
    """Parts hold no copy of their PDF: the module of a new collection cannot embed them again."""
    col, _ = pages
    create_collection(cw, "ChunkPagesNext", document_fields=["pdf"], chunking="pages",
                      service_url=qvl_service.http_url, replace=True)
    try:
        with pytest.raises(CollectionError, match="ingest"):
            copy_objects(col, cw.collections.get("ChunkPagesNext"))
        assert len(cw.collections.get("ChunkPagesNext")) == 0
    finally:
        cw.collections.delete("ChunkPagesNext")
