"""Who may open the console, and how its forms are protected.

**Access** (:class:`ConsoleAccess`, checked on every console request but its static files):

* over HTTPS with ``console_auth`` (the default) the request must come with a client
  certificate, which the TLS layer has already verified against the CA (``ssl_ca_file``);
* with ``console_auth`` the client must then pass ``check_client``, the same check as the task
  API: on the Smart Proxy its authorizer (``trusted_hosts``: the certificate's CN over HTTPS,
  reverse DNS over HTTP), or one built from ``console_trusted_hosts`` when that is set (it then
  replaces ``trusted_hosts`` for the console); on the standalone core the Smart Proxy's own
  certificate (the serial check of its task API, :func:`core_console_check`) or a certificate
  whose CN is in the core's ``console_trusted_hosts``. (The original accepted any certificate
  of the CA: a managed host's certificate read every job's script and halted plans.)
* over plain HTTP the console answers only when ``console_http`` is true; otherwise 403 with a
  message that says what to do. (The original served the console over HTTP without any check.)
* ``console_auth: false`` turns every check off but ``console_http``.

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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

from smart_proxy.server import client_certificate, is_https

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


ClientCheck = Callable[[Request], Awaitable[str | None]]
"""Why a client may not open the console (None: it may), e.g. ``Authorizer.refusal``."""


@dataclass
class ConsoleAccess:
    """The console's access settings: ``console_auth``, ``console_http`` and who may come."""

    console_auth: bool = True
    console_http: bool = False
    # With console_auth, on both listeners: the check of the client (trusted hosts, the
    # proxy's serial); returns the reason to refuse it, None to accept.
    check_client: ClientCheck | None = None
    # Named in the refusal of plain HTTP ("set console_http: true in <settings_file>").
    settings_file: str = "the settings"

    async def denial(self, request: Request) -> str | None:
        """Why this request may not see the console, None when it may."""
        if not is_https(request.scope):
            if not self.console_http:
                return plain_http_refused(self.settings_file)
        elif self.console_auth and client_certificate(request.scope) is None:
            return NO_CERTIFICATE
        if not self.console_auth or self.check_client is None:
            return None
        return await self.check_client(request)


def core_console_check(
    expected_serial: int, console_trusted_hosts: Iterable[str] | None = None
) -> ClientCheck:
    """The standalone core over HTTPS: the Smart Proxy's own certificate (``expected_serial``,
    as its task API; the relay comes with it), or one whose CN is in ``console_trusted_hosts``.
    Plain HTTP is not checked (as the core's task API; ``console_http`` decides)."""
    trusted = {host.lower() for host in console_trusted_hosts or ()}

    async def check(request: Request) -> str | None:
        if not is_https(request.scope):
            return None
        cert = client_certificate(request.scope)
        if cert is None:
            return NO_CERTIFICATE
        if cert.serial == expected_serial:
            return None
        if cert.subject_cn and cert.subject_cn.lower() in trusted:
            return None
        if trusted:
            return (
                f"SSL certificate with unexpected serial supplied: {cert.subject_cn or 'no CN'} "
                "is neither the Smart Proxy nor in console_trusted_hosts of the core's "
                "settings.yml."
            )
        return (
            "SSL certificate with unexpected serial supplied: the core's console accepts "
            "only the Smart Proxy's certificate. Open the console through the Smart Proxy "
            "(/dynflow/console), or list the client's CN in console_trusted_hosts."
        )

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
