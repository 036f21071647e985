"""qvl for LangChain (``pip install 'qvl[langchain]'``): ``QvlEmbeddings`` (documents, queries with
the query instruction, images, videos) and ``QvlReranker`` (a document compressor)."""

from connectors.langchain.embeddings import QvlEmbeddings
from connectors.langchain.reranker import QvlReranker

__all__ = ["QvlEmbeddings", "QvlReranker"]
