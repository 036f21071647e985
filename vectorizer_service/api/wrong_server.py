"""Requests meant for Weaviate that reached qvl: their 404 or 401 says so.

qvl serves HTTP on 8080 and gRPC on 50051, the ports ``weaviate.connect_to_local()`` assumes, so
in a layout where both run on one host (docs/weaviate.md, "Running it: weaviate-server directly")
a Weaviate client easily reaches qvl; a bare "Not Found" or "missing or wrong bearer token" then
reads like a Weaviate problem.
"""

from __future__ import annotations

import re

# Weaviate's REST API (its client asks for /v1/meta first); none of it is a qvl route.
WEAVIATE_REST = re.compile(r"/v1/(meta|\.well-known/[\w-]+|schema|graphql|objects|batch|nodes|cluster|backups"
                           r"|classifications|users|authz|aliases|replication|tasks)(/.*)?")


def wrong_server_hint(path: str) -> str | None:
    """What to tell a caller of ``path`` when it is Weaviate's, not qvl's."""
    if WEAVIATE_REST.fullmatch(path) is None:
        return None
    return (f"this is qvl serve (the model server), not Weaviate: {path} is Weaviate's REST API. Point the "
            "Weaviate client at Weaviate's own ports (docs/weaviate.md; in its direct-run layout "
            "weaviate.connect_to_local(port=8081, grpc_port=50052))")
