"""Throw-away PKI for tests: a CA, a server certificate and client certificates.

``make_pki(tmp_path)`` writes PEM files into ``tmp_path / "pki"`` and returns a :class:`Pki`
with their paths::

    pki = make_pki(tmp_path)
    ctx = tls.server_context(pki.server_cert, pki.server_key, pki.ca_cert)
    httpx.AsyncClient(verify=pki.client_ssl_context())

* ``server_cert``/``server_key``: CN ``localhost``, SAN DNS ``localhost`` + IP ``127.0.0.1``
  and ``::1``, signed by the test CA;
* ``client_cert``/``client_key``: CN ``proxy.example.com`` (serial ``client_serial``);
* ``other_client_cert``/``other_client_key``: same CA, CN ``other.example.com``, another serial;
* ``foreign_client_cert``/``foreign_client_key``: CN ``proxy.example.com`` but issued by an
  unrelated CA (``foreign_ca_cert``), so the TLS layer must reject it.

``issue_client_certificate(pki, cn)`` adds a client certificate with any CN from the same CA.

RSA keys (the fixed TLS 1.2 cipher list only has RSA suites) are generated once per process and
reused, so building a PKI costs only a few milliseconds.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_KEYS: dict[str, rsa.RSAPrivateKey] = {}
_SERIALS = itertools.count(0x1000 + 17)


def _key(role: str) -> rsa.RSAPrivateKey:
    key = _KEYS.get(role)
    if key is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _KEYS[role] = key
    return key


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Smart Proxy Tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> str:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return str(path)


def _write_cert(path: Path, cert: x509.Certificate) -> str:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


@dataclass
class _Ca:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey


def _make_ca(cn: str, role: str) -> _Ca:
    key = _key(role)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(next(_SERIALS))
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Ca(cert, key)


def _issue(
    ca: _Ca,
    cn: str,
    role: str,
    *,
    serial: int,
    server: bool,
    san_dns: list[str] | None = None,
    san_ip: list[str] | None = None,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key(role)
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in san_dns or []]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in san_ip or []]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca.key, hashes.SHA256()), key


@dataclass
class Pki:
    """Paths (str) of the generated PEM files, plus the client serial numbers."""

    directory: str
    ca_cert: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    client_serial: int
    client_cn: str
    other_client_cert: str
    other_client_key: str
    other_client_serial: int
    other_client_cn: str
    foreign_ca_cert: str
    foreign_client_cert: str
    foreign_client_key: str
    foreign_client_serial: int

    def legacy_client_context(
        self,
        maximum: ssl.TLSVersion,
        *,
        cert: str | None = None,
        key: str | None = None,
    ) -> ssl.SSLContext:
        """A client able to speak TLS 1.0 up to ``maximum`` (OpenSSL security level 0)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.ca_cert)
        if cert is not None:
            ctx.load_cert_chain(cert, key)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = maximum
        return ctx

    def client_ssl_context(
        self, *, cert: str | None = None, key: str | None = None
    ) -> ssl.SSLContext:
        """A client context trusting the test CA, presenting ``cert``/``key`` when given."""
        ctx = ssl.create_default_context(cafile=self.ca_cert)
        if cert is not None:
            ctx.load_cert_chain(cert, key)
        return ctx


def make_pki(tmp_path: Path | str, *, client_cn: str = "proxy.example.com") -> Pki:
    """Generate a CA, a server certificate and three client certificates under ``tmp_path``."""
    directory = Path(tmp_path) / "pki"
    directory.mkdir(parents=True, exist_ok=True)

    ca = _make_ca("Smart Proxy Test CA", "ca")
    foreign_ca = _make_ca("Foreign Test CA", "foreign-ca")

    server, server_key = _issue(
        ca,
        "localhost",
        "server",
        serial=next(_SERIALS),
        server=True,
        san_dns=["localhost"],
        san_ip=["127.0.0.1", "::1"],
    )
    client_serial = next(_SERIALS)
    client, client_key = _issue(ca, client_cn, "client", serial=client_serial, server=False)
    other_serial = next(_SERIALS)
    other, other_key = _issue(
        ca, "other.example.com", "other-client", serial=other_serial, server=False
    )
    foreign_serial = next(_SERIALS)
    foreign, foreign_key = _issue(
        foreign_ca, client_cn, "foreign-client", serial=foreign_serial, server=False
    )

    return Pki(
        directory=str(directory),
        ca_cert=_write_cert(directory / "ca.pem", ca.cert),
        server_cert=_write_cert(directory / "server.pem", server),
        server_key=_write_key(directory / "server-key.pem", server_key),
        client_cert=_write_cert(directory / "client.pem", client),
        client_key=_write_key(directory / "client-key.pem", client_key),
        client_serial=client_serial,
        client_cn=client_cn,
        other_client_cert=_write_cert(directory / "other-client.pem", other),
        other_client_key=_write_key(directory / "other-client-key.pem", other_key),
        other_client_serial=other_serial,
        other_client_cn="other.example.com",
        foreign_ca_cert=_write_cert(directory / "foreign-ca.pem", foreign_ca.cert),
        foreign_client_cert=_write_cert(directory / "foreign-client.pem", foreign),
        foreign_client_key=_write_key(directory / "foreign-client-key.pem", foreign_key),
        foreign_client_serial=foreign_serial,
    )


def issue_client_certificate(pki: Pki, cn: str) -> tuple[str, str]:
    """A client certificate with CN ``cn`` signed by ``pki``'s CA (e.g. a host in pull mode,
    whose CN is its identity); returns the paths of the certificate and its key."""
    directory = Path(pki.directory)
    ca = _Ca(x509.load_pem_x509_certificate(Path(pki.ca_cert).read_bytes()), _key("ca"))
    cert, key = _issue(ca, cn, "host-client", serial=next(_SERIALS), server=False)
    return (
        _write_cert(directory / f"client-{cn}.pem", cert),
        _write_key(directory / f"client-{cn}-key.pem", key),
    )
