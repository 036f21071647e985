"""``QvlRerank``: a LlamaIndex node postprocessor that reranks retrieved nodes with qvl.

The nodes come back best first, ``top_n`` of them, each with qvl's score. A node's text is its
content as the embedding saw it (``MetadataMode.EMBED``); an ``ImageNode``'s image (base64,
path or URL) is scored with it as one item.
"""

from __future__ import annotations

import base64
from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr, SecretStr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import ImageNode, MetadataMode, NodeWithScore, QueryBundle

from connectors.client import RerankResult
from connectors.llamaindex.embedding import token_from_env
from connectors.media_sources import media_item
from connectors.service_link import ServiceLink, default_service


class QvlRerank(BaseNodePostprocessor):
    """``service`` and ``token`` as ``QvlEmbedding``; ``top_n`` nodes kept (None: all, ranked);
    ``instruction``: the reranker's (None: the service's)."""

    service: str = Field(default_factory=default_service)
    token: SecretStr | None = Field(default_factory=token_from_env)
    tls: bool = False
    ca_file: str | None = None
    top_n: int | None = Field(3, ge=1)
    instruction: str | None = None
    timeout: float = Field(120.0, gt=0)

    _link: ServiceLink = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._link = ServiceLink(self.service, token=self.token.get_secret_value() if self.token else None,
                                 tls=self.tls, ca_file=self.ca_file, timeout=self.timeout)

    @classmethod
    def class_name(cls) -> str:
        return "QvlRerank"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if not nodes:
            return []
        result = self._link.client().rerank(_query(query_bundle), [_item(n, i) for i, n in enumerate(nodes)],
                                            instruction=self.instruction, top_k=self.top_n)
        return _ranked(nodes, result)

    async def _apostprocess_nodes(self, nodes: list[NodeWithScore],
                                  query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if not nodes:
            return []
        result = await self._link.async_client().rerank(_query(query_bundle),
                                                        [_item(n, i) for i, n in enumerate(nodes)],
                                                        instruction=self.instruction, top_k=self.top_n)
        return _ranked(nodes, result)


def _query(bundle: QueryBundle | None) -> str:
    if bundle is None:
        raise ValueError("QvlRerank needs the query: postprocess_nodes(nodes, query_str=...) or a query_bundle")
    return bundle.query_str


def _item(scored: NodeWithScore, index: int) -> dict[str, Any]:
    node = scored.node
    text = node.get_content(metadata_mode=MetadataMode.EMBED)
    if isinstance(node, ImageNode):
        source: Any = (base64.b64decode(node.image) if node.image else node.image_path or node.image_url)
        if source:
            return media_item("image", source, text=text, what=f"node {index}")
    return {"text": text}


def _ranked(nodes: list[NodeWithScore], result: RerankResult) -> list[NodeWithScore]:
    return [NodeWithScore(node=nodes[i].node, score=float(score)) for i, score in result.ranking]
