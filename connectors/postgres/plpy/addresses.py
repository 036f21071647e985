"""The service's address list in ``qvl.service.url``: one address or several replicas, checked
when it is set (``qvl.set_service``) and split into connection targets."""

from __future__ import annotations

import urllib.parse
from typing import Any

from . import spi

SERVICE_HINT = ("Give one address or several, comma-separated: SELECT qvl.set_service('http://qvl:8080'); or "
                "SELECT qvl.set_service('http://qvl-a:8080,http://qvl-b:8080');")


def service_urls(value: str) -> list[str]:
    """The addresses in ``qvl.service.url``: one, or several replicas separated by commas."""
    return [part.strip().rstrip("/") for part in value.split(",")]


def url_problem(url: str) -> str | None:
    """What is wrong with one service address (None: nothing). Never repeats credentials."""
    if not url:
        return "an empty address in the list (a comma too many?)"
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None or parts.password is not None:
        return "an address must not hold credentials; give the token as qvl.set_service(url, token)"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"{url!r} is not an http:// or https:// address"
    if not parts.hostname:
        return f"{url!r} names no host"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return f"{url!r}: the port must be a number from 1 to 65535"
    if parts.query or parts.fragment:
        return f"{url!r}: an address has no query (?) or fragment (#)"
    return None


def check_service(value: str, ca_file: str | None) -> str:
    """The address list as ``qvl.service`` keeps it (each address checked, schemes in lower case,
    no trailing slash, ", " -> ","); ValueError saying what is wrong."""
    urls = service_urls(value)
    for url in urls:
        problem = url_problem(url)
        if problem is not None:
            raise ValueError(problem)
    urls = [urllib.parse.urlunsplit(urllib.parse.urlsplit(url)) for url in urls]
    if ca_file is not None:
        for url in urls:
            if not url.startswith("https://"):
                raise ValueError(f"a CA file is for an https:// service, not {url}")
    return ",".join(urls)


def check_service_sql(value: str, ca_file: str | None) -> str:
    """qvl._check_service, which qvl.set_service calls: a bad address is a 22023 error."""
    try:
        return check_service(value, ca_file)
    except ValueError as exc:
        spi.plpy.error(f"qvl: {exc}", hint=SERVICE_HINT, sqlstate="22023")
        raise


def target(url: str, route_path: str) -> tuple[str, Any, int, str]:
    """(scheme, host, port, request path) of a route under the service URL (which may have a path)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/") + route_path
