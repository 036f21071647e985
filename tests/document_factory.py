"""PDFs and videos made on the fly for the document tests: Pillow's multi-page PDFs (one page per
image, 72 dpi), hand-written PDF objects for odd pages and encryption, PyAV's mpeg4 video."""

from __future__ import annotations

import io
import os

import av
import numpy as np
from PIL import Image


def pictures(count: int, size: tuple[int, int] = (96, 72), seed: int = 0) -> list[Image.Image]:
    """Distinct pictures: a colour field with a few random blocks each."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        arr = np.empty((size[1], size[0], 3), dtype=np.uint8)
        arr[:] = rng.integers(0, 255, 3, dtype=np.uint8)
        for _ in range(6):
            y, x = rng.integers(0, size[1] - 8), rng.integers(0, size[0] - 8)
            arr[y:y + 16, x:x + 16] = rng.integers(0, 255, 3, dtype=np.uint8)
        out.append(Image.fromarray(arr))
    return out


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def pdf_of(images: list[Image.Image]) -> bytes:
    """One page per image, the image filling the page at 72 dpi (Pillow's PDF writer)."""
    buf = io.BytesIO()
    images[0].save(buf, format="PDF", save_all=True, append_images=images[1:], resolution=72.0)
    return buf.getvalue()


def hand_pdf(pages: list[bytes], trailer_extra: bytes = b"", extra_objects: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    """A PDF of empty pages from their page dictionaries' extra entries (e.g. a MediaBox)."""
    kids = " ".join(f"{3 + i} 0 R" for i in range(len(pages))).encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % len(pages)]
    objects += [b"<< /Type /Page /Parent 2 0 R " + page + b" >>" for page in pages]
    objects += list(extra_objects)
    out, offsets = b"%PDF-1.4\n", []
    for number, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R " % (len(objects) + 1) + trailer_extra + b">>\n"
    return out + b"startxref\n%d\n%%%%EOF\n" % xref


def encrypted_pdf() -> bytes:
    """A PDF under the standard security handler whose user password is not empty: no reader opens
    it without the password (PDFium: "Incorrect password error")."""
    encrypt = (b"<< /Filter /Standard /V 1 /R 2 /O <" + os.urandom(32).hex().encode() + b"> /U <"
               + os.urandom(32).hex().encode() + b"> /P -4 >>")
    ident = os.urandom(16).hex().encode()
    return hand_pdf([b"/MediaBox [0 0 200 200]"], b"/Encrypt 4 0 R /ID [<" + ident + b"> <" + ident + b">] ",
                    [encrypt])


def video_of(images: list[Image.Image], fps: int = 2, repeat: int = 1) -> bytes:
    """An mpeg4 MP4: each image shown for ``repeat`` frames."""
    buf = io.BytesIO()
    width, height = images[0].size
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        for img in images:
            for _ in range(repeat):
                for packet in stream.encode(av.VideoFrame.from_image(img)):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()
