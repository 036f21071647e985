"""Issue 21, the service: parts of a source as items, chunking, and bad documents, on a real
`qvl serve` (tiny checkpoint) over HTTP and gRPC.

A chunk's vector must be the embedding of its part sent alone (the same rendering, sampling and
tokenization on both paths). Two rows of different batches may differ in the last float digits
on this CPU, so vectors are compared by cosine (pages and passages >= 0.9999, clips >= 0.998 as
the parity tests do for video).
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from tokenizers import Tokenizer

from qvl_proto import vectorizer_pb2 as pb
from qvl_proto import vectorizer_pb2_grpc as pb_grpc
from tests.document_factory import encrypted_pdf, hand_pdf, pdf_of, pictures, png, video_of
from tests.support.service import TINY, ServiceProcess

pytestmark = [pytest.mark.service, pytest.mark.slow]
CRASH, HANG = "QVL-CRASH-THE-RENDERER", "QVL-HANG-THE-RENDERER"
MAX_PAGES = 12
PICTURES = pictures(4, seed=7)
PDF = pdf_of(PICTURES)
LONG_TEXT = " ".join(
    f"Paragraph {p}: the lighthouse keeper counted {p * 7} ships before the storm. Every sentence here is a "
    f"little different, so passages differ too ({p})." + ("\n\n" if p % 3 == 2 else "") for p in range(40))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def doc_service() -> Iterator[ServiceProcess]:
    """The renderer's test hooks armed (a document carrying CRASH aborts its renderer, HANG makes
    it loop), a short document deadline and a low page limit."""
    env = {"QVL_TEST_RENDERER_CRASH_ON": CRASH, "QVL_TEST_RENDERER_HANG_ON": HANG, "QVL_DOCUMENT_TIMEOUT_S": "4",
           "QVL_MAX_DOCUMENT_PAGES": str(MAX_PAGES), "QVL_MAX_VIDEO_WINDOWS": "6"}
    with ServiceProcess(env=env) as svc:
        yield svc


def embed(svc: ServiceProcess, items: list[Any], **body: Any) -> dict[str, Any]:
    r = httpx.post(f"{svc.http_url}/v1/embed", json={"items": items, **body}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def vectors(answer: dict[str, Any]) -> np.ndarray:
    return np.array([e["embedding"] for e in answer["embeddings"]])


def chunk_vectors(chunks: list[dict[str, Any]]) -> np.ndarray:
    return np.array([c["embedding"] for c in chunks])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# -- pages ---------------------------------------------------------------------------------------
def test_each_page_is_its_page_sent_alone_and_nearest_its_own_picture(doc_service: ServiceProcess) -> None:
    answer = embed(doc_service, [{"document": b64(PDF), "text": "a manual"}], chunking={"type": "pages"})
    chunks = answer["chunks"][0]
    assert [c["locator"] for c in chunks] == [{"page": n} for n in range(1, 5)]
    alone = vectors(embed(doc_service, [{"document": b64(PDF), "page": n, "text": "a manual"} for n in range(1, 5)]))
    assert cosines(chunk_vectors(chunks), alone).min() >= 0.9999

    pages = chunk_vectors(embed(doc_service, [{"document": b64(PDF)}], chunking={"type": "pages"})["chunks"][0])
    sources = vectors(embed(doc_service, [{"image": b64(png(p))} for p in PICTURES]))
    similarity = pages @ sources.T
    assert list(similarity.argmax(axis=1)) == [0, 1, 2, 3], similarity


def test_pages_over_grpc_embed_and_stream_match_http(doc_service: ServiceProcess) -> None:
    http = chunk_vectors(embed(doc_service, [{"document": b64(PDF)}], chunking={"type": "pages"})["chunks"][0])
    options = pb.EmbedOptions(chunking=pb.Chunking(pages=pb.PageChunking()))
    item = pb.Item(parts=[pb.Part(document=PDF)])
    with grpc.insecure_channel(doc_service.grpc_target) as channel:
        stub = pb_grpc.VectorizerStub(channel)
        response = stub.Embed(pb.EmbedRequest(items=[item], options=options), timeout=120)
        [stream] = list(stub.EmbedStream(iter([pb.EmbedStreamRequest(seq=5, item=item, options=options)]),
                                         timeout=120))
        alone = stub.Embed(pb.EmbedRequest(items=[pb.Item(parts=[pb.Part(document=PDF, page=3)])]), timeout=120)
    assert not response.embeddings and len(response.chunks) == 1
    for chunks in (response.chunks[0].chunks, stream.chunks.chunks):
        assert [c.locator.page for c in chunks] == [1, 2, 3, 4]
        assert cosines(np.array([list(c.embedding.values) for c in chunks]), http).min() >= 0.9999
    assert stream.seq == 5
    assert float(cosines(np.array([list(alone.embeddings[0].values)]), http[2:3])[0]) >= 0.9999


def test_a_page_with_a_200_inch_mediabox_is_drawn_small(doc_service: ServiceProcess) -> None:
    # 14400 points a side: at 96 dpi that would be 19200 x 19200 pixels (1.1 GiB of RGBA).
    huge = hand_pdf([b"/MediaBox [0 0 14400 14400]", b"/MediaBox [0 0 612 792]"])
    answer = embed(doc_service, [{"document": b64(huge)}], chunking={"type": "pages"})
    assert [c["locator"] for c in answer["chunks"][0]] == [{"page": 1}, {"page": 2}]


def test_rerank_scores_pages_and_clips_as_documents(doc_service: ServiceProcess) -> None:
    video = video_of(PICTURES, fps=2, repeat=4)
    docs = [{"document": b64(PDF), "page": 2}, {"video": b64(video), "start_s": 2, "end_s": 4}, "plain text"]
    r = httpx.post(f"{doc_service.http_url}/v1/rerank", json={"query": "a picture", "documents": docs}, timeout=120)
    assert r.status_code == 200, r.text
    scores = r.json()["scores"]
    assert all(isinstance(s, float) for s in scores) and len(set(scores)) == 3


# -- text passages -------------------------------------------------------------------------------
def test_each_passage_is_its_text_slice_sent_alone(doc_service: ServiceProcess) -> None:
    answer = embed(doc_service, [{"text": LONG_TEXT}], chunking={"type": "text", "tokens": 96, "overlap": 16})
    chunks = answer["chunks"][0]
    spans = [(c["locator"]["char_start"], c["locator"]["char_end"]) for c in chunks]
    assert len(spans) > 5 and spans[0][0] == 0 and spans[-1][1] >= len(LONG_TEXT.rstrip())
    # In order, and together they cover the text: between two passages lies white space at most.
    assert all(a[0] < b[0] and not LONG_TEXT[a[1]:b[0]].strip() for a, b in itertools.pairwise(spans)), spans
    alone = vectors(embed(doc_service, [LONG_TEXT[s:e] for s, e in spans]))
    assert cosines(chunk_vectors(chunks), alone).min() >= 0.9999
    # Counted with the model's own tokenizer: no passage is longer than asked.
    tokenizer = Tokenizer.from_file(str(TINY / "tokenizer.json"))
    assert max(len(tokenizer.encode(LONG_TEXT[s:e], add_special_tokens=False).ids) for s, e in spans) <= 96


def test_a_title_rides_with_every_passage(doc_service: ServiceProcess) -> None:
    answer = embed(doc_service, [{"text": ["The Lighthouse", LONG_TEXT]}],
                   chunking={"type": "text", "tokens": 128, "overlap": 0})
    chunks = answer["chunks"][0]
    alone = vectors(embed(doc_service, [{"text": ["The Lighthouse", LONG_TEXT[c["locator"]["char_start"]:
                                                                             c["locator"]["char_end"]]]}
                                        for c in chunks]))
    assert cosines(chunk_vectors(chunks), alone).min() >= 0.9999


# -- video windows -------------------------------------------------------------------------------
def test_each_window_is_its_span_sent_alone(doc_service: ServiceProcess) -> None:
    video = video_of(PICTURES, fps=2, repeat=4)  # 16 frames: 8 s
    answer = embed(doc_service, [{"video": b64(video)}], chunking={"type": "video", "seconds": 3, "overlap": 1})
    chunks = answer["chunks"][0]
    spans = [(c["locator"]["start_s"], c["locator"]["end_s"]) for c in chunks]
    assert spans == [(0, 3), (2, 5), (4, 7), (6, 8)]
    alone = vectors(embed(doc_service, [{"video": b64(video), "start_s": s, "end_s": e} for s, e in spans]))
    assert cosines(chunk_vectors(chunks), alone).min() >= 0.998
    # A window is a clip of its own: each picture's window is nearest that picture's own clip.
    clips = vectors(embed(doc_service, [{"video": b64(video_of([p], fps=2, repeat=4))} for p in PICTURES]))
    windows = chunk_vectors(embed(doc_service, [{"video": b64(video)}],
                                  chunking={"type": "video", "seconds": 2})["chunks"][0])
    assert list((windows @ clips.T).argmax(axis=1)) == [0, 1, 2, 3]


def test_a_video_shorter_than_a_window_is_one_window(doc_service: ServiceProcess) -> None:
    video = video_of(PICTURES[:2], fps=2, repeat=2)  # 2 s
    answer = embed(doc_service, [{"video": b64(video)}], chunking={"type": "video", "seconds": 10})
    [chunk] = answer["chunks"][0]
    assert chunk["locator"] == {"start_s": 0.0, "end_s": 2.0}
    whole = vectors(embed(doc_service, [{"video": b64(video), "start_s": 0, "end_s": 2}]))
    assert float(cosines(chunk_vectors([chunk]), whole)[0]) >= 0.998


# -- bad input -----------------------------------------------------------------------------------
def test_bad_documents_fail_alone_with_their_reason(doc_service: ServiceProcess) -> None:
    too_many = pdf_of(pictures(MAX_PAGES + 1, size=(16, 16)))
    items = [{"document": b64(PDF[: len(PDF) // 2])}, {"document": b64(b"GIF89a, not a PDF at all")},
             {"document": b64(encrypted_pdf())}, {"document": b64(too_many)}, {"document": b64(PDF)},
             {"document": b64(PDF), "page": 9}]
    answer = embed(doc_service, items, chunking={"type": "pages"}, allow_partial=True)
    errors = {e["item"]: e for e in answer["errors"]}
    assert sorted(errors) == [0, 1, 2, 3, 5]
    assert "truncated or damaged" in errors[0]["error"]
    assert "not a PDF" in errors[1]["error"]
    assert "encrypted" in errors[2]["error"]
    assert errors[3]["limit"] == "QVL_MAX_DOCUMENT_PAGES" and f"{MAX_PAGES + 1} pages" in errors[3]["error"]
    assert "page 9 does not exist" in errors[5]["error"]
    assert len(answer["chunks"][4]) == 4
    # The caller's own max_pages, named in the refusal.
    capped = embed(doc_service, [{"document": b64(PDF)}], chunking={"type": "pages", "max_pages": 3},
                   allow_partial=True)
    assert capped["errors"][0]["limit"] == "max_pages"
    # Without allow_partial one bad document fails the call, naming it.
    r = httpx.post(f"{doc_service.http_url}/v1/embed", json={"items": [{"document": b64(PDF)}, items[2]],
                                                           "chunking": {"type": "pages"}}, timeout=60)
    assert r.status_code == 400 and r.json()["item"] == 1 and "encrypted" in r.json()["error"]


def test_a_dying_renderer_fails_its_document_alone_and_the_model_process_stays(doc_service: ServiceProcess) -> None:
    model = doc_service.model_pid()
    assert model is not None
    crashing = PDF + f"% {CRASH}\n".encode()
    items = [{"document": b64(PDF)}, {"document": b64(crashing)}, {"document": b64(PDF)}]
    answer = embed(doc_service, items, chunking={"type": "pages"}, allow_partial=True)
    [error] = answer["errors"]
    assert error["item"] == 1 and "renderer died" in error["error"] and "SIGABRT" in error["error"]
    assert len(answer["chunks"][0]) == len(answer["chunks"][2]) == 4
    # A page sent alone takes the same path.
    alone = embed(doc_service, [{"document": b64(crashing), "page": 1}, "a neighbour"], allow_partial=True)
    assert alone["errors"][0]["item"] == 0 and alone["embeddings"][1] is not None
    assert doc_service.model_pid() == model
    assert len(embed(doc_service, [{"document": b64(PDF)}], chunking={"type": "pages"})["chunks"][0]) == 4


def test_a_hanging_renderer_is_killed_at_the_document_deadline(doc_service: ServiceProcess) -> None:
    model = doc_service.model_pid()
    hanging = PDF + f"% {HANG}\n".encode()
    answer = embed(doc_service, [{"document": b64(hanging)}, {"document": b64(PDF)}], chunking={"type": "pages"},
                   allow_partial=True)
    [error] = answer["errors"]
    assert error["item"] == 0 and error["limit"] == "QVL_DOCUMENT_TIMEOUT_S"
    assert len(answer["chunks"][1]) == 4
    assert doc_service.model_pid() == model


def test_bad_chunking_and_parts_are_refused_naming_the_reason(doc_service: ServiceProcess) -> None:
    url = f"{doc_service.http_url}/v1/embed"
    cases = [
        ({"items": ["x"], "chunking": {"type": "pages"}}, 'splits one document'),
        ({"items": [{"text": "x"}], "chunking": {"type": "video", "seconds": 0}}, "seconds must be a positive"),
        ({"items": ["x"], "chunking": {"type": "text", "tokens": 64, "overlap": 64}}, "overlap must be"),
        ({"items": ["x"], "chunking": {"type": "paragraphs"}}, "chunking type must be"),
        ({"items": [{"document": b64(PDF)}]}, "needs a page"),
        ({"items": [{"document": b64(PDF), "page": 0}]}, "page must be a whole number from 1"),
        ({"items": [{"text": "x", "page": 2}]}, "has no document"),
        ({"items": [{"video": b64(b"v"), "start_s": 5, "end_s": 2}]}, "must be after start_s"),
    ]
    for body, words in cases:
        r = httpx.post(url, json=body, timeout=60)
        assert r.status_code == 400 and words in r.json()["error"], (body, r.text)
    long_video = video_of(PICTURES, fps=2, repeat=8)  # 16 s: 16 windows of 1 s, over the limit of 6
    r = httpx.post(url, json={"items": [{"video": b64(long_video)}], "chunking": {"type": "video", "seconds": 1}},
                   timeout=60)
    assert r.status_code == 413 and r.json()["limit"] == "QVL_MAX_VIDEO_WINDOWS"


def test_renderers_are_processes_beside_the_model_holding_no_model(doc_service: ServiceProcess) -> None:
    embed(doc_service, [{"document": b64(PDF)}], chunking={"type": "pages"})
    model = doc_service.model_pid()
    renderers = []
    for pid in doc_service.pids():
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            if b"vectorizer_service.model.pdf_renderer" in fh.read():
                renderers.append(pid)
    assert renderers, "no renderer process found"
    for pid in renderers:
        with open(f"/proc/{pid}/stat") as fh:
            assert int(fh.read().rsplit(")", 1)[1].split()[1]) == model  # started by the model process
        with open(f"/proc/{pid}/maps") as fh:
            maps = fh.read()
        assert "libtorch" not in maps and "pdfium" in maps


def test_the_document_deadline_counts_rendering_not_waiting_for_the_model() -> None:
    """A long document's pages are drawn as the model takes them (decoding pauses while prepared
    tensors are over budget): the time spent waiting between its page groups is not the document's
    rendering time, so a slow model never cuts a long document short."""
    env = {"QVL_DOCUMENT_TIMEOUT_S": "1.5", "QVL_MIN_WAIT_MS": "600", "QVL_PREPARED_MAX_BYTES": "1"}
    with ServiceProcess(env=env, reranker_model=None) as svc:
        pdf = pdf_of(pictures(20, size=(48, 48), seed=3))
        # 5 groups of 4 pages, each drawn once the model has taken the one before (0.6 s a batch)
        answer = embed(svc, [{"document": b64(pdf)}], chunking={"type": "pages"})
        assert [c["locator"]["page"] for c in answer["chunks"][0]] == list(range(1, 21))
