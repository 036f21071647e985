"""qvl for LlamaIndex (``pip install 'qvl[llamaindex]'``): ``QvlEmbedding`` (texts, queries with the
query instruction, images) and ``QvlRerank`` (a node postprocessor)."""

from connectors.llamaindex.embedding import QvlEmbedding
from connectors.llamaindex.rerank import QvlRerank

__all__ = ["QvlEmbedding", "QvlRerank"]
