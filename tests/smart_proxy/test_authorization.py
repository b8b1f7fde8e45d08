"""Trusted hosts and client certificates over real HTTP and HTTPS sockets (§8)."""

from __future__ import annotations

import ssl
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from smart_proxy.authorization import Authorizer, https_cert_cn
from smart_proxy.tls import server_context
from tests.support.certs import Pki, make_pki
from tests.support.services import start_app


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def protected_app(authorizer: Authorizer) -> Starlette:
    async def endpoint(request: Request) -> Response:
        denied = await authorizer.authorize_any(request)
        if denied is not None:
            return denied
        return JSONResponse({"cn": https_cert_cn(request)})

    return Starlette(routes=[Route("/protected", endpoint)])


async def call(
    authorizer: Authorizer,
    pki: Pki,
    *,
    https: bool,
    cert: str | None = None,
    key: str | None = None,
    local_address: str | None = None,
) -> httpx.Response:
    context = server_context(pki.server_cert, pki.server_key, pki.ca_cert) if https else None
    served = await start_app(protected_app(authorizer), ssl_context=context)
    try:
        verify: Any = pki.client_ssl_context(cert=cert, key=key) if https else True
        transport = httpx.AsyncHTTPTransport(verify=verify, local_address=local_address)
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.get(served.url + "/protected")
    finally:
        await served.stop()


async def test_no_trusted_hosts_http_is_open_https_needs_a_certificate(pki):
    authorizer = Authorizer(None)
    assert (await call(authorizer, pki, https=False)).status_code == 200
    denied = await call(authorizer, pki, https=True)
    assert denied.status_code == 403
    assert denied.json() == {"error": "No client SSL certificate supplied"}
    allowed = await call(authorizer, pki, https=True, cert=pki.client_cert, key=pki.client_key)
    assert allowed.json() == {"cn": pki.client_cn}


async def test_empty_trusted_hosts_denies_everyone(pki):
    authorizer = Authorizer([])
    assert (await call(authorizer, pki, https=False)).status_code == 403
    response = await call(authorizer, pki, https=True, cert=pki.client_cert, key=pki.client_key)
    assert response.status_code == 403
    assert "Untrusted client proxy.example.com" in response.json()["error"]


async def test_trusted_cn_over_https(pki):
    authorizer = Authorizer(["Proxy.Example.com"])  # compared lower-cased
    ok = await call(authorizer, pki, https=True, cert=pki.client_cert, key=pki.client_key)
    assert ok.status_code == 200
    other = await call(
        authorizer, pki, https=True, cert=pki.other_client_cert, key=pki.other_client_key
    )
    assert other.status_code == 403
    assert other.json()["error"] == (
        "Untrusted client other.example.com attempted to access /protected. "
        "Check :trusted_hosts: in settings.yml"
    )
    no_cert = await call(authorizer, pki, https=True)
    assert no_cert.status_code == 403


async def test_certificate_of_another_ca_fails_the_handshake(pki):
    with pytest.raises((httpx.ConnectError, httpx.ReadError, ssl.SSLError)):
        response = await call(
            Authorizer(None),
            pki,
            https=True,
            cert=pki.foreign_client_cert,
            key=pki.foreign_client_key,
        )
        # TLS 1.3 may report the refusal only on the first read.
        raise httpx.ReadError(f"unexpected answer {response.status_code}")


async def test_http_uses_reverse_and_forward_dns(pki):
    # 127.0.0.1 is "localhost" both ways in /etc/hosts.
    assert (await call(Authorizer(["localhost"]), pki, https=False)).status_code == 200
    denied = await call(Authorizer(["proxy.example.com"]), pki, https=False)
    assert denied.status_code == 403
    assert "Untrusted client localhost" in denied.json()["error"]


class PtrSaysLocalhost(Authorizer):
    """A PTR record claiming "localhost" for any address (forward DNS stays real)."""

    async def reverse_name(self, address: str) -> str:
        return "localhost"


async def test_forward_verification_catches_a_lying_reverse_record(pki):
    # From 127.0.0.2 the reverse name claims localhost, whose forward lookup is 127.0.0.1.
    lying = await call(PtrSaysLocalhost(["localhost"]), pki, https=False, local_address="127.0.0.2")
    assert lying.status_code == 403
    assert "no matching forward DNS lookup" in lying.json()["error"]
    unchecked = await call(
        PtrSaysLocalhost(["localhost"], forward_verify=False),
        pki,
        https=False,
        local_address="127.0.0.2",
    )
    assert unchecked.status_code == 200


async def test_unresolvable_client_is_denied(pki):
    # 127.0.0.3 has no name at all.
    response = await call(Authorizer(["localhost"]), pki, https=False, local_address="127.0.0.3")
    assert response.status_code == 403
    assert "Unable to resolve hostname" in response.json()["error"]
