"""The HTTP dialects of other embedding and rerank APIs (OpenAI, Cohere, Voyage, Jina, vLLM,
NVIDIA), translated onto the one dispatcher: docs/api.md has the table of routes and fields."""
