"""Reading media by URI: off unless the operator allows a scheme and a root (no open fetching)."""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.parse
import urllib.request

from vectorizer_service.core.errors import InputError
from vectorizer_service.core.settings import Settings


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect could leave the allow-listed prefix, so none is followed."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_opener = urllib.request.build_opener(NoRedirect)


def read_uri(uri: str, settings: Settings, what: str) -> bytes:
    """The bytes behind ``uri`` if its scheme and root are allowed, within the media size limit."""
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme or "file"
    if scheme not in settings.allow_uri_schemes:
        allowed = ", ".join(settings.allow_uri_schemes) or "none"
        raise InputError(f"{what}: URI scheme {scheme!r} is not allowed (allowed: {allowed}); send the bytes "
                         "instead or ask the operator to set QVL_ALLOW_URI_SCHEMES", status=400)
    if scheme == "file":
        return _read_file(parsed.path if parsed.scheme else uri, settings, what)
    if scheme in ("http", "https"):
        return _read_http(uri, settings, what)
    raise InputError(f"{what}: URI scheme {scheme!r} is not supported")


def _read_file(path: str, settings: Settings, what: str) -> bytes:
    try:
        real = os.path.realpath(path)
    except ValueError as exc:  # a NUL byte, a lone surrogate: no file has that name
        raise InputError(f"{what}: cannot read {path!r}: {exc}") from None
    roots = [os.path.realpath(r) for r in settings.allow_uri_roots if not r.startswith(("http://", "https://"))]
    if not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
        raise InputError(f"{what}: {path!r} is outside the allowed roots")
    try:
        size = os.path.getsize(real)
        if size > settings.max_media_bytes:
            raise InputError(f"{what}: {path!r} is {size} bytes, over the limit of {settings.max_media_bytes}",
                             status=413)
        with open(real, "rb") as fh:
            return fh.read()
    except (OSError, ValueError) as exc:
        raise InputError(f"{what}: cannot read {path!r}: {getattr(exc, 'strerror', None) or exc}") from None


def _read_http(uri: str, settings: Settings, what: str) -> bytes:
    prefixes = [r for r in settings.allow_uri_roots if r.startswith(("http://", "https://"))]
    if not any(uri.startswith(p) for p in prefixes):
        raise InputError(f"{what}: {uri!r} is outside the allowed URL prefixes")
    try:
        with _opener.open(uri, timeout=settings.uri_timeout_s) as resp:
            data = resp.read(settings.max_media_bytes + 1)
    # ValueError and HTTPException: a URL no request can carry (spaces, control characters, non-ASCII)
    except (urllib.error.URLError, TimeoutError, OSError, ValueError, http.client.HTTPException) as exc:
        raise InputError(f"{what}: cannot fetch {uri!r}: {exc}") from None
    if len(data) > settings.max_media_bytes:
        raise InputError(f"{what}: {uri!r} is over the limit of {settings.max_media_bytes} bytes", status=413)
    return data
