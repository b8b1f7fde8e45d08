"""Masking of secrets in data and in log text.

A key is sensitive when it is ``secrets`` (a whole sub-object of credentials, as Foreman sends it
in task input) or when its lower-cased name contains one of :data:`SENSITIVE_WORDS`, e.g.
``password``, ``ssh_password``, ``effective_user_password``, ``key_passphrase``,
``client_secret``, ``access_token``, ``ssh_private_key``. Ordinary keys such as ``task_id``,
``step_id``, ``key``, ``ssh_key_file`` or ``tokenless`` ... are left alone (``token`` must be a
whole ``_``/``-`` separated word of the key).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

FILTERED = "[FILTERED]"

# Matched anywhere in the lower-cased key.
SENSITIVE_WORDS: tuple[str, ...] = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "private_key",
    "privatekey",
    "api_key",
    "apikey",
    "credential",
    "authorization",
    "cookie",
)
# Matched as whole words of the key (split on "_", "-", ".").
SENSITIVE_PARTS: tuple[str, ...] = ("token", "otp", "pass")

_WORD_SPLIT = re.compile(r"[_\-.\s]+")


def is_sensitive_key(key: object) -> bool:
    """True when the value stored under ``key`` must not be shown."""
    if not isinstance(key, str | bytes):
        return False
    name = key.decode("latin-1") if isinstance(key, bytes) else key
    name = name.lower().lstrip(":")
    if any(word in name for word in SENSITIVE_WORDS):
        return True
    parts = _WORD_SPLIT.split(name)
    return any(part in SENSITIVE_PARTS or part.endswith("token") for part in parts if part)


def redact(value: Any) -> Any:
    """A deep copy of JSON-like ``value`` with every sensitive key's value replaced."""
    if isinstance(value, Mapping):
        return {
            key: (FILTERED if item is not None else None) if is_sensitive_key(key) else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, tuple):
        # ASGI-style header pairs: (b"authorization", b"Basic ...")
        if len(value) == 2 and is_sensitive_key(value[0]) and value[1] is not None:
            return (value[0], FILTERED)
        return tuple(redact(item) for item in value)
    return value


# ---- free text ----------------------------------------------------------------------------------

# Candidate keys; _replace_pair confirms them with is_sensitive_key.
_KEY = (
    r"[\w.\-]*(?:password|passwd|passphrase|secret|private_?key|api_?key|credential"
    r"|authorization|cookie|token|otp|pass)[\w.\-]*"
)
_VALUE = (
    r"(?:"
    r"(?:Basic|Bearer|Digest|Token|Negotiate)\s+[^\s\"',;&}\])]+"  # auth scheme + credentials
    r"|\"(?:[^\"\\]|\\.)*\""  # "double quoted"
    r"|'(?:[^'\\]|\\.)*'"  # 'single quoted'
    r"|b'(?:[^'\\]|\\.)*'"  # b'bytes repr'
    r"|\{[^{}]*\}"  # a flat object
    r"|\[[^\[\]]*\]"  # a flat list
    r"|[^\s,;&}\])\"'{\[][^\s,;&}\])\"']*"  # a bare word
    r")"
)
_PAIR = re.compile(
    r"(?P<kq>b?[\"'])?(?<![\w.\-])(?P<key>" + _KEY + r")(?P<kq2>[\"'])?"
    r"(?P<sep>\s*(?:=>|[:=]|(?(kq2),|(?!)))\s*)"
    r"(?P<value>" + _VALUE + r")",
    re.IGNORECASE,
)
_AUTH = re.compile(
    r"\b(?P<scheme>Basic|Bearer)\s+(?P<cred>(?=[A-Za-z0-9+/=._~\-]*[0-9+/=._~\-])"
    r"[A-Za-z0-9+/=._~\-]{6,})"
)
_PEM_KEY = re.compile(
    r"-----BEGIN (?P<kind>[A-Z ]*)PRIVATE KEY-----.*?-----END (?P=kind)PRIVATE KEY-----",
    re.DOTALL,
)


def _mask_value(value: str) -> str:
    scheme = re.match(r"(Basic|Bearer|Digest|Token|Negotiate)\s+", value, re.IGNORECASE)
    if scheme:
        return f"{scheme.group(1)} {FILTERED}"
    if value.startswith("b'"):
        return f"b'{FILTERED}'"
    if value[:1] in ("'", '"'):
        return f"{value[0]}{FILTERED}{value[0]}"
    if value[:1] in ("{", "["):
        return f'"{FILTERED}"'
    return FILTERED


def _replace_pair(match: re.Match[str]) -> str:
    text = match.group(0)
    offset = match.start()
    start, end = match.span("value")
    value = match.group("value")
    if not is_sensitive_key(match.group("key")):
        # Not a secret after all (``passage=...``): still look inside the value.
        return text[: start - offset] + redact_text(value) + text[end - offset :]
    if value.strip("'\"") == FILTERED:
        return text
    return text[: start - offset] + _mask_value(value) + text[end - offset :]


def redact_text(text: str) -> str:
    """Mask secrets in free text: ``key: value``, ``key=value``, ``"key": "value"``,
    ``'key': 'value'`` (and Ruby ``"key"=>"value"``, header tuples ``('authorization', '…')``)
    for sensitive keys, ``Basic``/``Bearer`` credentials, and PEM private keys."""
    if not text:
        return text
    text = _PEM_KEY.sub(FILTERED, text)
    text = _PAIR.sub(_replace_pair, text)
    text = _AUTH.sub(lambda m: f"{m.group('scheme')} {FILTERED}", text)
    return text
