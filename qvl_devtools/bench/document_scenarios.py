"""``qvl bench --scenario documents``: PDF pages through the service against their two halves.

Three measurements in one run, on one PDF of letter-size pages (pictures and lines of text):
pages/s rendered and embedded through ``qvl serve`` (``chunking: pages``), pages/s of rendering
alone (the same renderer processes, as many at once as the service runs), and pages/s of
embedding the same pages pre-rendered (PNG images) through the same service. Then the renderer
pool's peak memory on a 50-page and a 500-page PDF: each renderer's peak RSS (VmHWM), which must
not grow with the page count (a renderer holds one document and one page at a time).
"""

from __future__ import annotations

import base64
import hashlib
import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw

from qvl_devtools.bench.models import TINY_DIR
from qvl_devtools.launchers.service import ServiceProcess
from vectorizer_service.core.batch_planning import PAGE_GROUP
from vectorizer_service.core.settings import Settings
from vectorizer_service.model.renderer_pool import JobTime, RendererPool

LETTER = (612, 792)  # points: one pixel a point in the PDF Pillow writes
ROUNDS = 2


def _page(number: int, rng: np.random.Generator) -> Image.Image:
    """A page: a heading, lines of text and a picture, as a scanned manual page looks."""
    img = Image.new("RGB", LETTER, "white")
    draw = ImageDraw.Draw(img)
    draw.text((48, 40), f"Chapter {number}: maintenance of the harbour crane", fill="black")
    for line in range(24):
        words = " ".join(f"w{int(x)}" for x in rng.integers(0, 9999, 9))
        draw.text((48, 80 + 18 * line), words, fill="black")
    colour = tuple(int(c) for c in rng.integers(0, 255, 3))
    draw.rectangle((140, 540, 470, 740), fill=colour)
    return img


def make_pdf(pages: int, seed: int = 0) -> tuple[bytes, list[Image.Image]]:
    rng = np.random.default_rng(seed)
    images = [_page(n + 1, rng) for n in range(pages)]
    buf = io.BytesIO()
    images[0].save(buf, format="PDF", save_all=True, append_images=images[1:], resolution=72.0)
    return buf.getvalue(), images


def text_pdf(pages: int) -> bytes:
    """A PDF of letter pages of text in the standard Helvetica (a few hundred bytes a page): its
    size barely grows with its pages, so a renderer's memory shows what pages alone cost it."""
    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", font]
    kids = []
    for n in range(pages):
        lines = b"".join(b"0 -16 Td (Page %d, line %d: the harbour crane is serviced every spring.) Tj\n"
                         % (n + 1, k) for k in range(40))
        stream = b"BT /F1 11 Tf 56 740 Td\n" + lines + b"ET"
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                       b"/Contents %d 0 R >>" % len(objects))
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [" + b" ".join(kids) + b"] /Count %d >>" % pages
    out, offsets = b"%PDF-1.4\n", []
    for number, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1) + b"".join(b"%010d 00000 n \n" % o
                                                                                 for o in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)


def _render_all(pool: RendererPool, data: bytes, pages: int, workers: int) -> list[Image.Image]:
    groups = [list(range(start, min(start + PAGE_GROUP, pages + 1))) for start in range(1, pages + 1, PAGE_GROUP)]
    deadline = time.monotonic() + 3600
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    with ThreadPoolExecutor(workers) as threads:
        drawn = list(threads.map(lambda group: pool.render(data, digest, group, JobTime(3600, deadline), "document"),
                                 groups))
    out = [page for group in drawn for page in group]
    assert all(isinstance(p, Image.Image) for p in out), [p for p in out if not isinstance(p, Image.Image)][:1]
    return out  # type: ignore[return-value]


def _renderer_peaks(pool: RendererPool) -> list[int]:
    """Peak RSS (VmHWM) of each renderer process of the pool, in bytes."""
    peaks = []
    for renderer in pool.idle:
        with open(f"/proc/{renderer.proc.pid}/status") as fh:
            peaks += [int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:")]
    return peaks


def renderer_memory(settings: Settings, sizes: tuple[int, ...] = (50, 500)) -> dict[str, Any]:
    """Each renderer's peak RSS after drawing every page of a PDF (a fresh pool per PDF): text
    PDFs of 50 and 500 pages (a few hundred bytes a page), and the scanned-looking PDFs of the
    throughput run, whose bytes grow with their pages (a renderer holds the document's bytes once)."""
    out: dict[str, Any] = {}
    for kind, pages in [("text", n) for n in sizes] + [("pictures", n) for n in sizes]:
        data = text_pdf(pages) if kind == "text" else make_pdf(pages, seed=pages)[0]
        pool = RendererPool(settings)
        try:
            started = time.perf_counter()
            _render_all(pool, data, pages, settings.render_workers)
            seconds = time.perf_counter() - started
            out[f"{kind}_{pages}_pages"] = {"pdf_bytes": len(data), "renderer_peak_rss_bytes": _renderer_peaks(pool),
                                            "pages_per_s": pages / seconds}
        finally:
            pool.close()
    for kind in ("text", "pictures"):
        small, large = (max(out[f"{kind}_{n}_pages"]["renderer_peak_rss_bytes"]) for n in sizes)
        out[f"{kind}_growth_ratio"] = large / small
    return out


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{url}/v1/embed", json=body, timeout=3600)
    r.raise_for_status()
    return r.json()


def documents(args: Any) -> dict[str, Any]:
    pages = args.items or (24 if args.device == "cpu" else 256)
    model = getattr(args, "model", None) or str(TINY_DIR)
    if not getattr(args, "model", None):
        from qvl_devtools.tiny_model import build_checkpoint
        build_checkpoint(TINY_DIR)
    settings = Settings()
    data, _ = make_pdf(pages, seed=args.seed)
    pool = RendererPool(settings)
    try:
        _render_all(pool, data, min(pages, 4), settings.render_workers)  # start the renderers
        started = time.perf_counter()
        drawn = _render_all(pool, data, pages, settings.render_workers)
        t_render = time.perf_counter() - started
    finally:
        pool.close()
    pngs = []
    for img in drawn:
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=1)
        pngs.append(base64.b64encode(buf.getvalue()).decode())
    env = {"QVL_DEVICE": args.device or "cpu", "QVL_LOG_LEVEL": "WARNING"}
    document = base64.b64encode(data).decode()
    with ServiceProcess(embedding_model=model, reranker_model=None, env=env) as svc:
        _post(svc.http_url, {"items": [{"document": document, "page": 1}, {"image": pngs[0]}]})  # warm up
        # Alternated, best of each: the machine's other load moves both alike.
        t_service = t_images = float("inf")
        for _ in range(ROUNDS):
            started = time.perf_counter()
            chunked = _post(svc.http_url, {"items": [{"document": document}], "chunking": {"type": "pages"}})
            t_service = min(t_service, time.perf_counter() - started)
            started = time.perf_counter()
            prerendered = _post(svc.http_url, {"items": [{"image": p} for p in pngs]})
            t_images = min(t_images, time.perf_counter() - started)
    vectors = np.array([c["embedding"] for c in chunked["chunks"][0]])
    images = np.array([e["embedding"] for e in prerendered["embeddings"]])
    agreement = float(np.min(np.sum(vectors * images, axis=1)))
    return {
        "pages": pages, "page": "US letter (612 x 792 pt) of text lines and a picture, drawn at "
        f"{settings.document_dpi:g} dpi", "render_workers": settings.render_workers,
        "pages_per_s": pages / t_service, "render_only_pages_per_s": pages / t_render,
        "prerendered_pages_per_s": pages / t_images,
        "ratio": t_images / t_service, "ratio_vs_render_only": t_render / t_service,
        "agreement_min_cos": agreement,
        "renderer_memory": renderer_memory(settings),
    }


def run_document_scenario(args: Any) -> dict[str, Any]:
    return documents(args)
