"""``QvlReranker``: LangChain's reranker interface (``BaseDocumentCompressor``, as ``CohereRerank``)
over qvl's gRPC ``Rerank``.

``compress_documents(documents, query)`` answers the best ``top_n`` documents, best first, each a
copy with ``metadata["relevance_score"]`` set to qvl's score. A document may carry an image or a
video in its metadata (``image_key``, ``video_key``: bytes, a path or a URI), scored with its
text as one item.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import Document
from langchain_core.documents.compressor import BaseDocumentCompressor
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr

from connectors.client import RerankResult
from connectors.langchain.embeddings import token_from_env
from connectors.media_sources import media_item
from connectors.service_link import ServiceLink, default_service


class QvlReranker(BaseDocumentCompressor):
    """Qwen3-VL reranking from ``qvl serve`` (``service`` and ``token`` as ``QvlEmbeddings``).

    ``top_n``: how many documents to keep (None: all, ranked); ``instruction``: the reranker's
    (None: the service's).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    service: str = Field(default_factory=default_service)
    token: SecretStr | None = Field(default_factory=token_from_env)
    tls: bool = False
    ca_file: str | None = None
    top_n: int | None = Field(3, ge=1)
    instruction: str | None = None
    image_key: str = "image"
    video_key: str = "video"
    timeout: float = Field(120.0, gt=0)

    _link: ServiceLink = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._link = ServiceLink(self.service, token=self.token.get_secret_value() if self.token else None,
                                 tls=self.tls, ca_file=self.ca_file, timeout=self.timeout)

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        if not documents:
            return []
        result = self._link.client().rerank(query, self._items(documents), instruction=self.instruction,
                                            top_k=self.top_n)
        return self._ranked(documents, result)

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks: Callbacks | None = None) -> Sequence[Document]:
        if not documents:
            return []
        result = await self._link.async_client().rerank(query, self._items(documents), instruction=self.instruction,
                                                        top_k=self.top_n)
        return self._ranked(documents, result)

    def _items(self, documents: Sequence[Document]) -> list[dict[str, Any]]:
        items = []
        for i, doc in enumerate(documents):
            item: dict[str, Any] = {"text": doc.page_content} if doc.page_content else {}
            for kind, key in (("image", self.image_key), ("video", self.video_key)):
                if doc.metadata.get(key) is not None:
                    item.update(media_item(kind, doc.metadata[key], what=f"document {i} metadata[{key!r}]"))
            items.append(item)
        return items

    @staticmethod
    def _ranked(documents: Sequence[Document], result: RerankResult) -> list[Document]:
        return [Document(page_content=documents[i].page_content, id=documents[i].id,
                         metadata={**documents[i].metadata, "relevance_score": float(score)})
                for i, score in result.ranking]
