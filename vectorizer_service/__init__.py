"""qvl model server: Qwen3-VL embedding and reranking behind gRPC and HTTP."""

__version__ = "0.1.0"
