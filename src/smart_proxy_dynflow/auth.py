"""Who may call the standalone core service (§2.2).

Over HTTPS the only legitimate client is the local Smart Proxy, which connects with the client
certificate it also uses towards Foreman. Every request must present a certificate (verified
against ``ssl_ca_file`` by the TLS layer) whose serial is that certificate's serial. Plain HTTP
is not checked: the service listens on 127.0.0.1 by default. Hosts reporting back with a
one-time password are handled by the API itself (``/tasks/:id/update`` and ``/done``).
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from smart_proxy.server import client_certificate, is_https

log = logging.getLogger("smart_proxy_dynflow.auth")


class SerialAuthorizer:
    def __init__(self, expected_serial: int) -> None:
        self.expected_serial = expected_serial

    async def __call__(self, request: Request) -> Response | None:
        if not is_https(request.scope):
            return None
        cert = client_certificate(request.scope)
        if cert is None:
            message = "No client SSL certificate supplied"
        elif cert.serial != self.expected_serial:
            message = "SSL certificate with unexpected serial supplied"
        else:
            return None
        log.error("%s (%s %s)", message, request.method, request.url.path)
        return JSONResponse({"error": message}, status_code=403)
