"""TLS contexts for the listeners and for outbound HTTPS, and client-certificate details.

Server side (``server_context``): the client certificate is *requested* and, when presented,
verified against the CA file; a connection without one is still accepted (``CERT_OPTIONAL``) and
the application decides (it answers 403 "No client SSL certificate supplied" where needed).
TLS 1.2 is the minimum version; ``tls_disabled_versions`` may switch off 1.2 or 1.3 as well.
The TLS <= 1.2 cipher list is the fixed :data:`CIPHERS` minus ``ssl_disabled_ciphers``.

Client side (``client_context``): the peer is always verified, against the given CA file or the
system trust store (the original skipped verification without a CA; we do not).
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

logger = logging.getLogger(__name__)

CIPHERS: tuple[str, ...] = (
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA256",
    "AES256-SHA256",
    "AES128-SHA",
    "AES256-SHA",
)

# Versions that may be disabled on top of the always-disabled SSLv2/SSLv3/TLS 1.0/TLS 1.1.
_VERSIONS: dict[str, ssl.TLSVersion] = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
_ALWAYS_DISABLED = {"1", "1.0", "1.1", "ssl2", "ssl3", "sslv2", "sslv3"}


class TLSConfigError(Exception):
    """The TLS material cannot be used (missing, unreadable, mismatched); names the file."""


@dataclass(frozen=True)
class ClientCertificate:
    """The (already verified) certificate a client presented."""

    der: bytes = field(repr=False)
    serial: int
    subject_cn: str | None
    san_dns: list[str]
    not_after: dt.datetime
    subject: str = ""
    issuer: str = ""

    @property
    def pem(self) -> str:
        """PEM text, what Rack servers put into ``SSL_CLIENT_CERT``."""
        cert = x509.load_der_x509_certificate(self.der)
        return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _normalise_version(entry: object) -> str:
    text = str(entry).strip().lower()
    for prefix in ("tlsv", "tls"):
        if text.startswith(prefix):
            text = text[len(prefix) :].strip()
            break
    return text.replace("_", ".")


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise TLSConfigError(f"cannot read {what} {path}: {reason}") from exc


def _check_certificate_file(path: str, what: str) -> None:
    data = _read(path, what)
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TLSConfigError(f"{what} {path} is not a PEM certificate: {exc}") from exc


def _check_key_file(path: str) -> None:
    data = _read(path, "private key")
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        message = f"private key {path} is encrypted; a passphrase is not supported"
        raise TLSConfigError(message) from exc
    except Exception as exc:  # ValueError, or UnsupportedAlgorithm for exotic keys
        raise TLSConfigError(f"private key {path} is not a PEM private key: {exc}") from exc


def _load_chain(ctx: ssl.SSLContext, certfile: str, keyfile: str | None) -> None:
    _check_certificate_file(certfile, "certificate")
    if keyfile is not None:
        _check_key_file(keyfile)
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"private key {keyfile or certfile} does not match certificate {certfile}: "
            f"{exc.reason or exc}"
        ) from exc
    except OSError as exc:
        raise TLSConfigError(f"cannot load certificate {certfile}: {exc}") from exc


def _load_ca(ctx: ssl.SSLContext, cafile: str) -> None:
    _check_certificate_file(cafile, "CA file")
    try:
        ctx.load_verify_locations(cafile=cafile)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"cannot load CA file {cafile}: {exc}") from exc


def server_context(
    certfile: str,
    keyfile: str,
    cafile: str,
    *,
    disabled_ciphers: Iterable[str] = (),
    disabled_versions: Iterable[object] = (),
) -> ssl.SSLContext:
    """The HTTPS listener's context (see the module docstring)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    enabled = dict(_VERSIONS)
    for entry in disabled_versions:
        version = _normalise_version(entry)
        if version in enabled:
            del enabled[version]
        elif version in _ALWAYS_DISABLED:
            logger.debug("TLSv%s is always disabled", version)
        else:
            logger.warning("TLSv%s was not found (tls_disabled_versions); ignoring it", version)
    if not enabled:
        raise TLSConfigError("tls_disabled_versions disables every supported TLS version")
    ctx.minimum_version = min(enabled.values())
    ctx.maximum_version = max(enabled.values())

    disabled = {str(name).strip().upper() for name in disabled_ciphers}
    unknown = disabled - set(CIPHERS)
    if unknown:
        names = ", ".join(sorted(unknown))
        logger.warning("ssl_disabled_ciphers not in the cipher list: %s", names)
    ciphers = [name for name in CIPHERS if name not in disabled]
    if not ciphers and ctx.minimum_version < ssl.TLSVersion.TLSv1_3:
        raise TLSConfigError("ssl_disabled_ciphers disables every TLS 1.2 cipher")
    if ciphers:
        try:
            ctx.set_ciphers(":".join(ciphers))
        except ssl.SSLError as exc:  # pragma: no cover - depends on the OpenSSL build
            raise TLSConfigError(f"no usable cipher in {ciphers}: {exc}") from exc

    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)

    _load_chain(ctx, certfile, keyfile)
    _load_ca(ctx, cafile)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(
    *,
    cafile: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> ssl.SSLContext:
    """Context for outbound HTTPS (callbacks to Foreman, relaying).

    The server is always verified: against ``cafile`` when given, else the system trust store.
    The client certificate and key are presented when both are given.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if cafile:
        _load_ca(ctx, cafile)
    if certfile and keyfile:
        _load_chain(ctx, certfile, keyfile)
    return ctx


def _first_certificate(data: bytes, path: str) -> x509.Certificate:
    if b"-----BEGIN" in data:
        try:
            return x509.load_pem_x509_certificates(data)[0]
        except ValueError as exc:
            raise TLSConfigError(f"certificate {path} is not a PEM certificate: {exc}") from exc
    try:
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise TLSConfigError(f"certificate {path} is neither PEM nor DER: {exc}") from exc


def certificate_serial(path: str) -> int:
    """Serial number of the (first) certificate in ``path`` (PEM or DER)."""
    return _first_certificate(_read(path, "certificate"), path).serial_number


def _describe(cert: x509.Certificate, der: bytes) -> ClientCertificate:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        san_dns = [str(name) for name in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        san_dns = []
    return ClientCertificate(
        der=der,
        serial=cert.serial_number,
        subject_cn=cn if isinstance(cn, str) else None,
        san_dns=san_dns,
        not_after=cert.not_valid_after_utc,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
    )


def peer_certificate(der: bytes) -> ClientCertificate:
    """Details of a DER certificate (as returned by ``getpeercert(binary_form=True)``)."""
    return _describe(x509.load_der_x509_certificate(der), der)


def load_certificate(path: str) -> ClientCertificate:
    """Details of the (first) certificate in ``path``."""
    cert = _first_certificate(_read(path, "certificate"), path)
    return _describe(cert, cert.public_bytes(serialization.Encoding.DER))
