"""TLS contexts and certificate details, exercised with real handshakes on local sockets."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
import warnings
from pathlib import Path

import pytest

from smart_proxy import tls
from tests.support.certs import Pki, make_pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def _tls12_ciphers(ctx: ssl.SSLContext) -> list[str]:
    return [c["name"] for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"]


class _EchoServer:
    """asyncio TLS server answering with the version and the client cert serial."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.port = 0
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> _EchoServer:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True)
            serial = tls.peer_certificate(der).serial if der else None
            writer.write(f"{ssl_object.version()} {serial}".encode())
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def talk(self, client: ssl.SSLContext, hostname: str = "localhost") -> str:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=client, server_hostname=hostname
        )
        try:
            return (await asyncio.wait_for(reader.read(), 5)).decode()
        finally:
            writer.close()


def test_cipher_list_is_the_fixed_smart_proxy_list() -> None:
    assert tls.CIPHERS == (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "AES128-SHA256",
        "AES256-SHA256",
        "AES128-SHA",
        "AES256-SHA",
    )


def test_server_context_defaults(pki: Pki) -> None:
    ctx = tls.server_context(pki.server_cert, pki.server_key, pki.ca_cert)
    assert ctx.verify_mode == ssl.CERT_OPTIONAL
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert sorted(_tls12_ciphers(ctx)) == sorted(tls.CIPHERS)


def test_disabled_ciphers_are_removed(pki: Pki) -> None:
    ctx = tls.server_context(
        pki.server_cert,
        pki.server_key,
        pki.ca_cert,
        disabled_ciphers=["AES128-SHA", "aes256-sha"],
    )
    assert sorted(_tls12_ciphers(ctx)) == sorted(set(tls.CIPHERS) - {"AES128-SHA", "AES256-SHA"})


def test_disabled_versions(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    only13 = tls.server_context(
        pki.server_cert, pki.server_key, pki.ca_cert, disabled_versions=["1.2"]
    )
    assert only13.minimum_version == ssl.TLSVersion.TLSv1_3
    only12 = tls.server_context(
        pki.server_cert, pki.server_key, pki.ca_cert, disabled_versions=[1.3]
    )
    assert only12.maximum_version == ssl.TLSVersion.TLSv1_2
    with caplog.at_level(logging.WARNING, logger="smart_proxy.tls"):
        ctx = tls.server_context(
            pki.server_cert, pki.server_key, pki.ca_cert, disabled_versions=["1.5"]
        )
    assert "TLSv1.5 was not found" in caplog.text
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(tls.TLSConfigError, match="every supported TLS version"):
        tls.server_context(
            pki.server_cert, pki.server_key, pki.ca_cert, disabled_versions=["1.2", "1.3"]
        )


def test_missing_key_file_names_it(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(tls.TLSConfigError, match=f"cannot read private key {missing}"):
        tls.server_context(pki.server_cert, missing, pki.ca_cert)


def test_mismatched_key_names_both_files(pki: Pki) -> None:
    with pytest.raises(tls.TLSConfigError) as error:
        tls.server_context(pki.server_cert, pki.client_key, pki.ca_cert)
    assert pki.client_key in str(error.value)
    assert pki.server_cert in str(error.value)
    assert "does not match" in str(error.value)


def test_garbage_certificate_and_ca(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(tls.TLSConfigError, match=f"certificate {garbage} is not a PEM"):
        tls.server_context(str(garbage), pki.server_key, pki.ca_cert)
    with pytest.raises(tls.TLSConfigError, match=f"CA file {garbage}"):
        tls.server_context(pki.server_cert, pki.server_key, str(garbage))
    with pytest.raises(tls.TLSConfigError, match="is not a PEM private key"):
        tls.server_context(pki.server_cert, str(garbage), pki.ca_cert)


def test_certificate_details(pki: Pki) -> None:
    assert tls.certificate_serial(pki.client_cert) == pki.client_serial
    assert tls.certificate_serial(pki.other_client_cert) == pki.other_client_serial
    assert pki.client_serial != pki.other_client_serial

    server = tls.load_certificate(pki.server_cert)
    assert server.subject_cn == "localhost"
    assert server.san_dns == ["localhost"]
    assert server.not_after > dt.datetime.now(dt.UTC)

    client = tls.load_certificate(pki.client_cert)
    again = tls.peer_certificate(client.der)
    assert again.serial == pki.client_serial
    assert again.subject_cn == "proxy.example.com"
    assert again.san_dns == []
    assert "CN=Smart Proxy Test CA" in again.issuer
    assert again.pem.startswith("-----BEGIN CERTIFICATE-----")
    assert Path(pki.client_cert).read_text().strip() == again.pem.strip()


def test_certificate_serial_of_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(tls.TLSConfigError, match="cannot read certificate"):
        tls.certificate_serial(str(tmp_path / "missing.pem"))


async def test_handshake_with_and_without_client_certificate(pki: Pki) -> None:
    server = tls.server_context(pki.server_cert, pki.server_key, pki.ca_cert)
    async with _EchoServer(server) as echo:
        with_cert = tls.client_context(
            cafile=pki.ca_cert, certfile=pki.client_cert, keyfile=pki.client_key
        )
        assert await echo.talk(with_cert) == f"TLSv1.3 {pki.client_serial}"
        without = tls.client_context(cafile=pki.ca_cert)
        assert await echo.talk(without) == "TLSv1.3 None"


async def test_client_context_verifies_the_server(pki: Pki) -> None:
    server = tls.server_context(pki.server_cert, pki.server_key, pki.ca_cert)
    async with _EchoServer(server) as echo:
        # System trust store: our test CA is unknown, so the handshake must fail.
        with pytest.raises(ssl.SSLCertVerificationError):
            await echo.talk(tls.client_context())
        # Right CA but wrong name.
        with pytest.raises(ssl.SSLCertVerificationError):
            await echo.talk(tls.client_context(cafile=pki.ca_cert), hostname="foreman.example")
    ctx = tls.client_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname


async def test_tls11_client_is_refused_but_can_talk_to_a_legacy_server(pki: Pki) -> None:
    client = pki.legacy_client_context(ssl.TLSVersion.TLSv1_1)

    # Control: the same client completes a TLS 1.1 handshake with a server allowing it.
    legacy = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    legacy.load_cert_chain(pki.server_cert, pki.server_key)
    legacy.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        legacy.minimum_version = ssl.TLSVersion.TLSv1
    async with _EchoServer(legacy) as echo:
        assert (await echo.talk(client)).startswith("TLSv1.1")

    server = tls.server_context(pki.server_cert, pki.server_key, pki.ca_cert)
    async with _EchoServer(server) as echo:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await echo.talk(client)


async def test_disabled_tls12_refuses_a_tls12_only_client(pki: Pki) -> None:
    server = tls.server_context(
        pki.server_cert, pki.server_key, pki.ca_cert, disabled_versions=["1.2"]
    )
    async with _EchoServer(server) as echo:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await echo.talk(pki.legacy_client_context(ssl.TLSVersion.TLSv1_2))
        assert (await echo.talk(tls.client_context(cafile=pki.ca_cert))).startswith("TLSv1.3")


async def test_tls12_uses_only_the_configured_ciphers(pki: Pki) -> None:
    server = tls.server_context(
        pki.server_cert,
        pki.server_key,
        pki.ca_cert,
        disabled_ciphers=[c for c in tls.CIPHERS if c != "ECDHE-RSA-AES256-GCM-SHA384"],
    )
    client = tls.client_context(cafile=pki.ca_cert)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    async with _EchoServer(server) as echo:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", echo.port, ssl=client, server_hostname="localhost"
        )
        try:
            cipher = writer.get_extra_info("ssl_object").cipher()[0]
            assert cipher == "ECDHE-RSA-AES256-GCM-SHA384"
            await reader.read()
        finally:
            writer.close()
