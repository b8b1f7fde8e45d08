"""Who may open the console, and how its forms are protected.

**Access** (:class:`ConsoleAccess`, checked on every console request):

* over HTTPS with ``console_auth`` (the default) the request must come with a client
  certificate, which the TLS layer has already verified against the CA (``ssl_ca_file``); the
  standalone core additionally wants the Smart Proxy's own certificate (``check_certificate``,
  the serial check of its task API), as the original did;
* over plain HTTP the console answers only when ``console_http`` is true; otherwise 403 with a
  message that says what to do. (The original served the console over HTTP without any check.)

**Forms** (:class:`FormGuard`): every action is a POST carrying a signed token that must equal
the ``SameSite=Strict`` cookie the console set (a double-submit token signed with a per-process
key, so a cookie planted by a neighbouring site is not accepted either); requests a browser marks
as cross-site (``Sec-Fetch-Site``) or whose ``Origin`` is another host are refused before that.
Notices shown after an action travel in the redirect's query string, signed with the same key,
so a link cannot make the console display a message it did not write.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

from smart_proxy.server import client_certificate, is_https
from smart_proxy.tls import ClientCertificate

CSRF_COOKIE = "dynflow_console_csrf"
CSRF_FIELD = "csrf_token"

NO_CERTIFICATE = (
    "No client SSL certificate supplied. The Dynflow console requires a client certificate "
    "signed by the Smart Proxy's CA (console_auth is on): import one into your browser, or set "
    "console_auth: false."
)


def plain_http_refused(settings_file: str) -> str:
    return (
        "The Dynflow console is not served over plain HTTP. Open it over HTTPS, or set "
        f"console_http: true in {settings_file} to allow it on the HTTP listener (only "
        "where the HTTP listener is reachable from trusted machines alone)."
    )


@dataclass
class ConsoleAccess:
    """The console's access settings: ``console_auth`` and ``console_http``."""

    console_auth: bool = True
    console_http: bool = False
    # Over HTTPS with console_auth: an extra check of the verified certificate; returns the
    # reason to refuse it, None to accept.
    check_certificate: Callable[[ClientCertificate], str | None] | None = None
    # Named in the refusal of plain HTTP ("set console_http: true in <settings_file>").
    settings_file: str = "the settings"

    def denial(self, request: Request) -> str | None:
        """Why this request may not see the console, None when it may."""
        if not is_https(request.scope):
            return None if self.console_http else plain_http_refused(self.settings_file)
        if not self.console_auth:
            return None
        cert = client_certificate(request.scope)
        if cert is None:
            return NO_CERTIFICATE
        if self.check_certificate is not None:
            return self.check_certificate(cert)
        return None


def serial_check(expected_serial: int) -> Callable[[ClientCertificate], str | None]:
    """Accept only the certificate with ``expected_serial`` (the Smart Proxy's own)."""

    def check(cert: ClientCertificate) -> str | None:
        if cert.serial != expected_serial:
            return (
                "SSL certificate with unexpected serial supplied: the core's console accepts "
                "only the Smart Proxy's certificate. Open the console through the Smart Proxy "
                "(/dynflow/console)."
            )
        return None

    return check


class FormGuard:
    """Signed double-submit tokens, origin checks and signed notices (one key per process)."""

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key or secrets.token_bytes(32)

    def _sign(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()[:32]

    # ---- tokens -------------------------------------------------------------------------------
    def new_token(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign('csrf:' + nonce)}"

    def valid_token(self, token: str | None) -> bool:
        if not token or token.count(".") != 1:
            return False
        nonce, signature = token.split(".")
        return hmac.compare_digest(signature, self._sign("csrf:" + nonce))

    def token_for(self, request: Request) -> tuple[str, bool]:
        """The request's token (from its cookie) and whether the cookie must be (re)set."""
        token = request.cookies.get(CSRF_COOKIE)
        if self.valid_token(token):
            assert token is not None
            return token, False
        return self.new_token(), True

    def check(self, request: Request, submitted: str | None) -> str | None:
        """Why this POST is refused as a possible cross-site request forgery, None if fine."""
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return (
                f"Refused a {site} request: console actions are accepted only from the "
                "console's own pages."
            )
        origin = request.headers.get("origin")
        if origin is not None:
            hosts = {request.headers.get("host"), request.headers.get("x-forwarded-host")}
            if origin == "null" or urlsplit(origin).netloc not in hosts - {None}:
                return (
                    f"Refused a request from origin {origin}: console actions are accepted "
                    "only from the console's own pages."
                )
        cookie = request.cookies.get(CSRF_COOKIE)
        if not submitted or not cookie:
            return (
                "The form's security token is missing (are cookies blocked?). Reload the page "
                "and try again."
            )
        if not (
            self.valid_token(submitted) and hmac.compare_digest(submitted.encode(), cookie.encode())
        ):
            return (
                "The form's security token is invalid or expired (the service may have "
                "restarted). Reload the page and try again."
            )
        return None

    # ---- notices ------------------------------------------------------------------------------
    def sign_notice(self, level: str, text: str) -> str:
        return self._sign(f"notice:{level}:{text}")

    def valid_notice(self, level: str, text: str, signature: str) -> bool:
        return hmac.compare_digest(signature, self.sign_notice(level, text))
