"""``QvlEmbedding``: LlamaIndex's (multimodal) ``BaseEmbedding`` over qvl's gRPC API.

Texts (nodes) are embedded with the document instruction and queries with the query instruction
(``query_instruction``, else the service's, asked once); images with ``get_image_embedding`` (a
path, a URI, a data URI, bytes or a file object: ``connectors.media_sources``). Batches are one
call each (``embed_batch_size``).
"""

from __future__ import annotations

import os
from typing import Any, Literal

from llama_index.core.bridge.pydantic import Field, PrivateAttr, SecretStr
from llama_index.core.embeddings import MultiModalEmbedding
from llama_index.core.schema import ImageType

from connectors.client import ItemLike
from connectors.media_sources import media_item
from connectors.service_link import ServiceLink, default_service

Embedding = list[float]


def token_from_env() -> SecretStr | None:
    """``QVL_TOKEN``, as ``qvl worker`` reads it."""
    token = os.environ.get("QVL_TOKEN")
    return SecretStr(token) if token else None


class QvlEmbedding(MultiModalEmbedding):
    """Qwen3-VL embeddings from ``qvl serve``: ``service`` a gRPC target (default ``QVL_SERVICE`` or
    127.0.0.1:50051), ``token`` (default ``QVL_TOKEN``); ``truncate`` as ``QvlEmbeddings`` (LangChain)."""

    model_name: str = "qvl"
    service: str = Field(default_factory=default_service)
    token: SecretStr | None = Field(default_factory=token_from_env)
    tls: bool = False
    ca_file: str | None = None
    dimensions: int | None = None
    instruction: str | None = None  # documents; None: the service's
    query_instruction: str | None = None  # queries; None: the service's
    truncate: Literal["none", "start", "end"] = "none"
    timeout: float = Field(120.0, gt=0)
    embed_batch_size: int = Field(64, gt=0, le=2048)

    _link: ServiceLink = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._link = ServiceLink(self.service, token=self.token.get_secret_value() if self.token else None,
                                 tls=self.tls, ca_file=self.ca_file, timeout=self.timeout)

    @classmethod
    def class_name(cls) -> str:
        return "QvlEmbedding"

    def _embed(self, items: list[ItemLike], query: bool = False) -> list[Embedding]:
        instruction = self.query_instruction if query else self.instruction
        if query and instruction is None:
            instruction = self._link.query_instruction()
        return self._link.client().embed(items, dimensions=self.dimensions, instruction=instruction,
                                         truncate=self.truncate).tolist()

    async def _aembed(self, items: list[ItemLike], query: bool = False) -> list[Embedding]:
        instruction = self.query_instruction if query else self.instruction
        if query and instruction is None:
            instruction = await self._link.aquery_instruction()
        rows = await self._link.async_client().embed(items, dimensions=self.dimensions, instruction=instruction,
                                                     truncate=self.truncate)
        return rows.tolist()

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([query], query=True)[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self._aembed([query], query=True))[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([text])[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._aembed([text]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed(list(texts)) if texts else []

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await self._aembed(list(texts)) if texts else []

    def _get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return self._embed([media_item("image", img_file_path, what="image")])[0]

    async def _aget_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return (await self._aembed([media_item("image", img_file_path, what="image")]))[0]

    def _get_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        items = [media_item("image", p, what=f"image {i}") for i, p in enumerate(img_file_paths)]
        return self._embed(items) if items else []  # type: ignore[arg-type]

    async def _aget_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        items = [media_item("image", p, what=f"image {i}") for i, p in enumerate(img_file_paths)]
        return await self._aembed(items) if items else []  # type: ignore[arg-type]
