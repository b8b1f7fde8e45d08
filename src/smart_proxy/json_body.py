"""Untrusted JSON request bodies and browser cross-site requests, for every JSON endpoint.

One place decides what a JSON body may hold, so that whatever is accepted can be stored by the
engine and shown by the console and the status API:

* **Content type** (:func:`is_json_content_type`): ``application/json`` (any parameters, e.g.
  ``; charset=utf-8``) or ``application/<anything>+json``; a body of another type, or without a
  ``Content-Type``, is refused with 415. (A browser can send ``text/plain`` or a typeless blob
  cross-site without a CORS preflight; it cannot send ``application/json``.) An empty body is
  not checked, so ``POST /tasks/:id/cancel`` with no body keeps working whatever its headers.
* **Size**: ``max_size`` bytes (413), checked against ``Content-Length`` and while reading.
* **Syntax**: strict JSON (400): UTF-8, no ``NaN``/``Infinity``.
* **Nesting** (400): at most :data:`MAX_JSON_DEPTH` levels of arrays and objects, the body
  itself being level 1. The engine stores and the console shows far deeper values; 64 leaves a
  wide margin while no real payload comes near it (Foreman's deepest, a batch launch, has 6).
* **Lone surrogates** (400): a ``\\ud800`` escape without its pair, in a key or a value, makes a
  string that cannot be encoded as UTF-8: it could be stored but never shown again.

Values stored before these checks existed may still hold lone surrogates; :func:`dumps_safe`
renders any value, replacing them with U+FFFD.

**Cross-site requests** (:func:`cross_site_denial`): refused with 403 when the browser says so
(``Sec-Fetch-Site: cross-site`` or ``same-site``) or when an ``Origin`` header names another
origin than the request's own (scheme of the connection, ``Host`` header). What Foreman really
sends was checked in its sources: ``ProxyAPI::Resource`` (foreman, app/services/proxy_api/
resource.rb) sets ``Accept: application/json`` plus ``X-Request-Id``/``X-Session-Id``, and
``ProxyAPI::ForemanDynflow::DynflowProxy::Task`` (foreman-tasks, app/lib/proxy_api/
foreman_dynflow/dynflow_proxy.rb) adds ``Content-Type: application/json`` to every task API
call; cancel posts an empty body (``post('', "<id>/cancel")``). RestClient sends no ``Origin``
and no ``Sec-Fetch-*`` headers. Hosts in pull mode (foreman_ygg_worker, src/
update_aggregator.go) post their updates with ``Content-Type: application/json``, and
foreman-cockpit-session (foreman_remote_execution, extra/cockpit) its session request too.
None of them is refused.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request

from smart_proxy.server import is_https

MAX_JSON_DEPTH = 64
"""The deepest nesting of arrays and objects a JSON body may have (the body is level 1)."""

_JSON_TYPE = re.compile(r"^application/(?:json|[!#$&^_.+\-\w]+\+json)$")
# A \uD800-\uDFFF escape: the only way a lone surrogate gets into a parsed string (raw bytes
# must be valid UTF-8, which has no surrogates).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE_ESCAPE_TEXT = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class JsonBodyError(Exception):
    """A body that is refused: ``status`` (400, 413, 415) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def is_json_content_type(value: str | None) -> bool:
    """``application/json`` or ``application/*+json``, with or without parameters."""
    if not value:
        return False
    media_type = value.split(";", 1)[0].strip().lower()
    return bool(_JSON_TYPE.match(media_type))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes | bytearray | str, what: str = "request body") -> Any:
    """The JSON value of ``raw``; :class:`JsonBodyError` (400) when it is not acceptable."""
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise JsonBodyError(
            400, f"the {what} is nested too deeply (at most {MAX_JSON_DEPTH} levels)"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonBodyError(400, f"malformed JSON in the {what}: {exc}") from None
    if isinstance(raw, str):
        escapes = _SURROGATE_ESCAPE_TEXT.search(raw) is not None
    else:
        escapes = _SURROGATE_ESCAPE.search(raw) is not None  # in place: no copy of the body
    check_value(value, what, surrogates=escapes)
    return value


def check_value(value: Any, what: str = "request body", *, surrogates: bool = True) -> None:
    """Refuse (400) a value nested deeper than :data:`MAX_JSON_DEPTH` or holding a lone
    surrogate in a key or a string (``surrogates=False`` skips that search)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > MAX_JSON_DEPTH:
                raise _too_deep(what)
            for key, child in item.items():
                if surrogates and _SURROGATE.search(key):
                    raise _lone_surrogate(what)
                if isinstance(child, dict | list):
                    stack.append((child, depth + 1))
                elif surrogates and isinstance(child, str) and _SURROGATE.search(child):
                    raise _lone_surrogate(what)
        elif isinstance(item, list):
            if depth > MAX_JSON_DEPTH:
                raise _too_deep(what)
            for child in item:
                if isinstance(child, dict | list):
                    stack.append((child, depth + 1))
                elif surrogates and isinstance(child, str) and _SURROGATE.search(child):
                    raise _lone_surrogate(what)
        elif surrogates and isinstance(item, str) and _SURROGATE.search(item):
            raise _lone_surrogate(what)


def _too_deep(what: str) -> JsonBodyError:
    return JsonBodyError(
        400, f"the {what} is nested too deeply (at most {MAX_JSON_DEPTH} levels)"
    )


def _lone_surrogate(what: str) -> JsonBodyError:
    return JsonBodyError(
        400,
        f"the {what} holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair), "
        "which is not text",
    )


async def read_body(request: Request, max_size: int, what: str = "request body") -> bytearray:
    """The raw body, at most ``max_size`` bytes (else 413), in one buffer: its pieces are
    appended as they arrive, never copied again (a launch of 100 hosts may be hundreds of MB)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_size:
        raise JsonBodyError(413, f"the {what} is larger than {max_size} bytes")
    raw = bytearray()
    async for piece in request.stream():
        raw += piece
        if len(raw) > max_size:
            raise JsonBodyError(413, f"the {what} is larger than {max_size} bytes")
    return raw


async def read_json(
    request: Request,
    max_size: int,
    *,
    required: bool = True,
    what: str = "request body",
) -> Any:
    """The JSON value of the body (None when it is empty and not ``required``).

    Refuses with :class:`JsonBodyError`: 413 too large, 415 not a JSON content type, 400 empty
    (when ``required``) or not acceptable JSON (see :func:`parse_json`).
    """
    raw = await read_body(request, max_size, what)
    if not raw:  # no body; one of only white space is malformed JSON, as any other text
        if required:
            raise JsonBodyError(400, f"the {what} must be a JSON object, got an empty body")
        return None
    content_type = request.headers.get("content-type")
    if not is_json_content_type(content_type):
        shown = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        raise JsonBodyError(
            415, f"the {what} must be JSON (Content-Type: application/json), got {shown}"
        )
    return parse_json(raw, what)


# ---- cross-site requests ------------------------------------------------------------------------


def _origin_key(scheme: str, netloc: str) -> tuple[str, str, int | None] | None:
    scheme = scheme.lower()
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if not host:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS.get(scheme)


def own_origin(request: Request) -> tuple[str, str, int | None] | None:
    """The request's own origin: the connection's scheme and the ``Host`` header."""
    scheme = "https" if is_https(request.scope) else "http"
    host = request.headers.get("host")
    return _origin_key(scheme, host) if host else None


def cross_site_denial(request: Request) -> str | None:
    """Why a browser's request from another site is refused (403), None when it is not one."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return f"cross-site requests are refused (Sec-Fetch-Site: {site.strip()[:40]})"
    origin = request.headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin.strip()) if origin.strip() != "null" else None
        theirs = _origin_key(parts.scheme, parts.netloc) if parts and parts.scheme else None
        if theirs is None or theirs != own_origin(request):
            return f"cross-site requests are refused (Origin: {origin.strip()[:100]})"
    return None


# ---- presenting stored values -------------------------------------------------------------------


def dumps_safe(value: Any) -> bytes:
    """Compact UTF-8 JSON of ``value``; lone surrogates (stored by older versions) become
    U+FFFD instead of failing the whole answer."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:
        return replace_surrogates(text).encode()


def replace_surrogates(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)
