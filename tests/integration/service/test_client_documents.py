"""The Python client's side of issue 21: pages and spans as items, embed_chunks, chunked streams."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from connectors.client import AsyncClient, Chunk, Client, InvalidArgument
from tests.document_factory import pdf_of, pictures, video_of
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.service
PDF = pdf_of(pictures(3, seed=11))
VIDEO = video_of(pictures(3, seed=12), fps=2, repeat=4)  # 6 s


def test_embed_chunks_and_stream_give_chunks_equal_to_their_parts(service: ServiceProcess) -> None:
    with Client(service.grpc_target) as client:
        [pages] = client.embed_chunks([{"document": PDF, "text": "manual"}], chunking={"type": "pages"})
        [windows] = client.embed_chunks([{"video": VIDEO}], chunking={"type": "video", "seconds": 4, "overlap": 1})
        assert all(isinstance(c, Chunk) for c in pages)
        assert [c.locator for c in pages] == [{"page": 1}, {"page": 2}, {"page": 3}]
        alone = client.embed([{"document": PDF, "page": n, "text": "manual"} for n in (1, 2, 3)])
        assert min(float(c.vector @ a) for c, a in zip(pages, alone, strict=True)) >= 0.9999
        assert [c.locator for c in windows] == [{"start_s": 0.0, "end_s": 4.0}, {"start_s": 3.0, "end_s": 6.0}]
        [clip] = client.embed([{"video": VIDEO, "start_s": 3.0, "end_s": 6.0}])
        assert float(windows[1].vector @ clip) >= 0.998
        streamed = list(client.embed_stream([{"document": PDF}, "no document"], chunking={"type": "pages"}))
        assert [c.locator["page"] for c in streamed[0]] == [1, 2, 3]  # type: ignore[union-attr]
        assert "splits one document" in streamed[1].message  # type: ignore[union-attr]
        with pytest.raises(InvalidArgument):
            client.embed_chunks(["x"], chunking={"type": "sentences"})

    async def run() -> list[list[Chunk]]:
        async with AsyncClient(service.grpc_target) as client:
            return await client.embed_chunks(["one passage. " * 40], chunking={"type": "text", "tokens": 32})

    [passages] = asyncio.run(run())
    assert len(passages) > 1 and all(np.isfinite(c.vector).all() for c in passages)
    assert set(passages[0].locator) == {"char_start", "char_end"}
