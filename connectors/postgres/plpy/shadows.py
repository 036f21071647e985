"""Blue/green upgrades (issue 23 item 3): the second service a shadow column is filled from, asked
what it serves (``qvl._service_info_at``, run by ``qvl.reembed(name, service => ..., shadow => ...)``).
Runs as the owner: the token and CA file of ``qvl.service`` go with the request."""

from __future__ import annotations

import json

from . import spi
from .addresses import check_service
from .errors import answer
from .transport import send


def service_info_at_sql(url: str) -> str:
    """GET /v1/info of the service at ``url`` (one address or replicas), as JSON text; a bad address is a
    22023 error, one that does not answer an error naming it."""
    try:
        checked = check_service(url or "", None)
    except ValueError as exc:
        spi.plpy.error(f"qvl: {url!r} is not a service address: {exc}", sqlstate="22023",
                       hint="Give the new model's service as http://host:8080 (its HTTP port).")
    status, body = send("info", "", url=checked)
    if status != 200:
        spi.plpy.error(f"qvl: the service at {checked} did not answer /v1/info (status {status})",
                       detail=body[:300], sqlstate="08001",
                       hint="Start the new model's service (qvl serve) and give its HTTP address.")
    return json.dumps(answer("info", status, body, lambda i: "the info request"))
