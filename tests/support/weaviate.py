"""A throwaway single-node Weaviate server for integration tests (the shipped starter, reused)."""

from __future__ import annotations

from qvl_devtools.launchers.weaviate import (
    DEFAULT_WEAVIATE_BIN,
    NODE_NAME,
    SETUP_HINT,
    WeaviateServer,
    module_env,
    weaviate_binary,
)

__all__ = ["DEFAULT_WEAVIATE_BIN", "NODE_NAME", "SETUP_HINT", "WeaviateServer", "module_env", "weaviate_binary"]
