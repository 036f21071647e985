"""The bearer token check both listeners share (HTTP ``Authorization``, gRPC ``authorization``)."""

from __future__ import annotations

import hmac


def bearer_matches(header: str | bytes | None, token: bytes) -> bool:
    """``header`` is ``Bearer <token>``: the scheme in any case (RFC 7235), the token compared in
    constant time."""
    if header is None:
        return False
    raw = header.encode() if isinstance(header, str) else header
    scheme, _, credentials = raw.strip().partition(b" ")
    # compare_digest either way, so a wrong scheme costs what a wrong token does
    return hmac.compare_digest(credentials.strip(), token) and scheme.lower() == b"bearer"
