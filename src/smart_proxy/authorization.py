"""Who may call a protected endpoint of the Smart Proxy (§8 of the host notes).

Two checks, combined by :meth:`Authorizer.authorize_any` for Foreman-facing endpoints:

* **Trusted hosts** (``trusted_hosts``; unset skips the check, ``[]`` denies everyone): over
  HTTPS the client is the CN of its verified certificate; over plain HTTP it is the reverse-DNS
  name of the peer address, which (with ``forward_verify``) must resolve back to that address.
* **SSL client**: over HTTPS a client certificate is required (the TLS layer has verified it
  against ``ssl_ca_file``); plain HTTP passes.

Whether a request is HTTPS comes from the connection, not from headers. Every refusal is a 403
with a JSON ``{"error": ...}`` body and an ERROR log line; :meth:`Authorizer.refusal` gives the
reason alone (the console answers with its HTML page, with the same checks). DNS lookups use the
event loop's resolver (a bounded thread pool), never blocking the loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .server import client_certificate, is_https

log = logging.getLogger("smart_proxy.authorization")


def deny(request: Request, message: str) -> Response:
    log.error("%s (%s %s)", message, request.method, request.url.path)
    return JSONResponse({"error": message}, status_code=403)


def https_cert_cn(request: Request) -> str | None:
    """The lower-cased CN of the verified client certificate, None without one."""
    if not is_https(request.scope):
        return None
    cert = client_certificate(request.scope)
    if cert is None or not cert.subject_cn:
        return None
    return cert.subject_cn.lower()


class Authorizer:
    def __init__(
        self,
        trusted_hosts: list[str] | None,
        forward_verify: bool = True,
        *,
        dns_timeout: float = 10.0,
        setting_hint: str = ":trusted_hosts: in settings.yml",
    ) -> None:
        self.trusted = None if trusted_hosts is None else {h.lower() for h in trusted_hosts}
        # Where a refused client's admin looks ("Check <setting_hint>").
        self.setting_hint = setting_hint
        self.forward_verify = forward_verify
        self.dns_timeout = dns_timeout

    async def authorize_any(self, request: Request) -> Response | None:
        """Trusted hosts, then the client certificate (``do_authorize_any``)."""
        return await self.trusted_hosts(request) or await self.ssl_client(request)

    async def refusal(self, request: Request) -> str | None:
        """Why :meth:`authorize_any` refuses this request (None: allowed), without answering
        or logging: for callers that answer in their own format (the console's HTML page)."""
        return await self._trusted_refusal(request) or self._ssl_refusal(request)

    async def ssl_client(self, request: Request) -> Response | None:
        message = self._ssl_refusal(request)
        return None if message is None else deny(request, message)

    async def trusted_hosts(self, request: Request) -> Response | None:
        message = await self._trusted_refusal(request)
        return None if message is None else deny(request, message)

    def _ssl_refusal(self, request: Request) -> str | None:
        if is_https(request.scope) and client_certificate(request.scope) is None:
            return "No client SSL certificate supplied"
        return None

    async def _trusted_refusal(self, request: Request) -> str | None:
        if self.trusted is None:
            return None
        if is_https(request.scope):
            cert = client_certificate(request.scope)
            if cert is None:
                return "No client SSL certificate supplied"
            if not cert.subject_cn:
                return "Client SSL certificate has no CN"
            fqdn = cert.subject_cn.lower()
        else:
            peer = request.client.host if request.client else None
            if not peer:
                return "Unable to determine the client address"
            try:
                fqdn = (await self.reverse_name(peer)).lower()
            except (OSError, TimeoutError) as exc:
                return f"Unable to resolve hostname for connection {peer}: {exc}"
            if self.forward_verify and not await self.resolves_to(fqdn, peer):
                return f"Untrusted client {fqdn} has no matching forward DNS lookup"
        if fqdn not in self.trusted:
            return (
                f"Untrusted client {fqdn} attempted to access {request.url.path}. "
                f"Check {self.setting_hint}"
            )
        return None

    async def reverse_name(self, address: str) -> str:
        loop = asyncio.get_running_loop()
        host, _ = await asyncio.wait_for(
            loop.getnameinfo((address, 0), socket.NI_NAMEREQD), self.dns_timeout
        )
        return host

    async def resolves_to(self, name: str, address: str) -> bool:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(name, None), self.dns_timeout)
        except (OSError, TimeoutError):
            return False
        wanted = ipaddress.ip_address(address.split("%")[0])
        for info in infos:
            try:
                if ipaddress.ip_address(str(info[4][0]).split("%")[0]) == wanted:
                    return True
            except ValueError:
                continue
        return False
