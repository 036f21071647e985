"""``QvlEmbeddings``: LangChain's ``Embeddings`` over qvl's gRPC API.

Documents are embedded with the document instruction (``instruction``, else the service's) and
queries with the query instruction (``query_instruction``, else the service's, asked once): the
query side of retrieval carries it, as the model was trained. Images and videos go through
``embed_image`` / ``embed_video`` (paths, URIs or bytes: ``connectors.media_sources``), and any
mix of parts through ``embed_items``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr

from connectors.client import ItemLike
from connectors.media_sources import media_item
from connectors.service_link import ServiceLink, default_service


def token_from_env() -> SecretStr | None:
    """``QVL_TOKEN``, as ``qvl worker`` reads it."""
    token = os.environ.get("QVL_TOKEN")
    return SecretStr(token) if token else None


class QvlEmbeddings(BaseModel, Embeddings):
    """Qwen3-VL embeddings from ``qvl serve``.

    ``service`` is a gRPC target (``host:50051``, several replicas as ``ipv4:h1:50051,h2:50051``;
    default ``QVL_SERVICE`` or 127.0.0.1:50051), ``token`` the service's bearer token (default
    ``QVL_TOKEN``). ``truncate``: a text past the service's maximum length is refused ("none", the
    default: ``InvalidInput`` naming it and ``QVL_EMBED_MAX_LENGTH``) or cut at its "start" or "end".
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    service: str = Field(default_factory=default_service)
    token: SecretStr | None = Field(default_factory=token_from_env)
    tls: bool = False
    ca_file: str | None = None  # PEM bundle that signed the service's certificate (implies tls)
    dimensions: int | None = None  # Matryoshka: the first N values, renormalized
    instruction: str | None = None  # documents; None: the service's document instruction
    query_instruction: str | None = None  # queries; None: the service's query instruction
    truncate: Literal["none", "start", "end"] = "none"
    batch_size: int = Field(64, ge=1)  # items per call
    timeout: float = Field(120.0, gt=0)

    _link: ServiceLink = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._link = ServiceLink(self.service, token=self.token.get_secret_value() if self.token else None,
                                 tls=self.tls, ca_file=self.ca_file, timeout=self.timeout)

    # -- text ------------------------------------------------------------------------------------
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_items(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.embed_items([text], query=True)[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await self.aembed_items(texts)

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_items([text], query=True))[0]

    # -- images, videos, any mix -----------------------------------------------------------------
    def embed_image(self, uris: list[Any]) -> list[list[float]]:
        """One vector per image: a path, an http(s)/file URI (read by the service where its
        allow-list admits it), a data URI, or bytes."""
        return self.embed_items([media_item("image", u, what=f"image {i}") for i, u in enumerate(uris)])

    async def aembed_image(self, uris: list[Any]) -> list[list[float]]:
        return await self.aembed_items([media_item("image", u, what=f"image {i}") for i, u in enumerate(uris)])

    def embed_video(self, uris: list[Any]) -> list[list[float]]:
        """One vector per video (as ``embed_image``)."""
        return self.embed_items([media_item("video", u, what=f"video {i}") for i, u in enumerate(uris)])

    async def aembed_video(self, uris: list[Any]) -> list[list[float]]:
        return await self.aembed_items([media_item("video", u, what=f"video {i}") for i, u in enumerate(uris)])

    def embed_items(self, items: Sequence[ItemLike], *, query: bool = False) -> list[list[float]]:
        """One vector per item: a string, or a dict of parts (``text``, ``image``, ``video``, ...: the
        Python client's items), embedded as one input; ``query`` picks the query instruction."""
        instruction = self.query_instruction if query else self.instruction  # None: the service's document one
        if query and instruction is None:
            instruction = self._link.query_instruction()
        client = self._link.client()
        out: list[list[float]] = []
        for start in range(0, len(items), self.batch_size):
            out += client.embed(items[start:start + self.batch_size], dimensions=self.dimensions,
                                instruction=instruction, truncate=self.truncate).tolist()
        return out

    async def aembed_items(self, items: Sequence[ItemLike], *, query: bool = False) -> list[list[float]]:
        instruction = self.query_instruction if query else self.instruction
        if query and instruction is None:
            instruction = await self._link.aquery_instruction()
        client = self._link.async_client()
        out: list[list[float]] = []
        for start in range(0, len(items), self.batch_size):
            rows = await client.embed(items[start:start + self.batch_size], dimensions=self.dimensions,
                                      instruction=instruction, truncate=self.truncate)
            out += rows.tolist()
        return out
