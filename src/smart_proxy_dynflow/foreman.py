"""The client that calls Foreman back (§5.1).

:class:`ForemanClient` POSTs to ``<foreman_url>/foreman_tasks/api/tasks/callback`` with the
proxy's client certificate; only HTTP 200 counts as delivered, any other outcome raises
:class:`CallbackFailed`, which says whether sending again can help. The durable callback
actions that use it are in :mod:`.callback`; the core owns one client.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from smart_proxy.tls import client_context

CALLBACK_PATH = "/foreman_tasks/api/tasks/callback"


TRANSIENT_CLIENT_ERRORS = frozenset({408, 429})
"""4xx answers that say "later" (request timeout, too many requests), not "never"."""


class CallbackFailed(Exception):
    """An attempt failed; ``status`` is Foreman's HTTP status (None: no answer at all)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def permanent(self) -> bool:
        """Foreman rejected the callback (4xx but 408/429): sending it again cannot help."""
        status = self.status
        return status is not None and 400 <= status < 500 and status not in TRANSIENT_CLIENT_ERRORS


def callback_url(foreman_url: str) -> str:
    """The callback endpoint on Foreman; a path prefix in ``foreman_url`` is dropped (§5.1)."""
    parts = urlsplit(foreman_url)
    return urlunsplit((parts.scheme, parts.netloc, CALLBACK_PATH, "", ""))


class ForemanClient:
    def __init__(
        self,
        foreman_url: str,
        *,
        cafile: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.url = callback_url(foreman_url)
        self._cafile, self._certfile, self._keyfile = cafile, certfile, keyfile
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            verify: Any = True
            if self.url.startswith("https:"):
                verify = client_context(
                    cafile=self._cafile, certfile=self._certfile, keyfile=self._keyfile
                )
            self._client = httpx.AsyncClient(verify=verify, timeout=self._timeout)
        return self._client

    async def send(self, payload: dict[str, Any]) -> None:
        """POST ``payload``; raises :class:`CallbackFailed` unless Foreman answers 200."""
        try:
            response = await self._http().post(
                self.url,
                json=payload,
                headers={"Accept": "application/json,version=2"},
            )
        except (httpx.HTTPError, OSError) as exc:
            raise CallbackFailed(
                f"Failed performing callback to Foreman server: {type(exc).__name__} {exc}"
            ) from exc
        if response.status_code != 200:
            raise CallbackFailed(
                "Failed performing callback to Foreman server: "
                f"{response.status_code} {response.text[:500]}",
                response.status_code,
            )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
