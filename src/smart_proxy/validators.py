"""Validation of a plugin's effective settings (§4, §5).

A plugin declares ``validations``, a list of :class:`Validation`::

    validations = [
        Validation("dns_key", "file_readable"),
        Validation("foreman_url", "url"),
        Validation("mode", "enum", args=["a", "b"], when=lambda s: s.get("enabled") is True),
    ]

The built-in validators are ``presence``, ``file_readable``, ``url``, ``optional_url``,
``boolean`` and ``enum`` (:data:`VALIDATORS`). A plugin adds its own through its
``validators`` mapping (name → :data:`ValidatorFunc`), or passes a function directly as the
``validator``. A validator raises :class:`ConfigurationError` with a message naming the setting.

Every key of the plugin's ``default_settings`` is implicitly validated with ``presence`` (not
None and not an empty string), before the explicit validations.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse


class ConfigurationError(Exception):
    """A setting has an unusable value; the message names the setting."""


ValidatorFunc = Callable[[str, Any, Any, Mapping[str, Any]], None]
"""``(setting, value, args, settings) -> None``; raises :class:`ConfigurationError`."""


@dataclass(frozen=True)
class Validation:
    """Validate ``setting`` with ``validator`` (a name or a function), given ``args``; only when
    ``when(settings)`` is true (always without a predicate)."""

    setting: str
    validator: str | ValidatorFunc
    args: Any = None
    when: Callable[[Mapping[str, Any]], bool] | None = None


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def presence(setting: str, value: Any, args: Any, settings: Mapping[str, Any]) -> None:
    """The value is set: not None and not an empty string."""
    if _blank(value):
        raise ConfigurationError(f"Parameter '{setting}' is expected to have a non-empty value")


def file_readable(setting: str, value: Any, args: Any, settings: Mapping[str, Any]) -> None:
    """The value names a readable file; an unset optional setting is skipped."""
    if value is None:
        return
    path = os.path.expanduser(str(value))
    if not (os.path.isfile(path) and os.access(path, os.R_OK)):
        raise ConfigurationError(
            f"File at '{value}' defined in '{setting}' parameter doesn't exist or is unreadable"
        )


def url(setting: str, value: Any, args: Any, settings: Mapping[str, Any]) -> None:
    """The value is a URL with a scheme and a host (or a path, for ``file:``-like URLs)."""
    if _blank(value) or not isinstance(value, str):
        raise ConfigurationError(f"Setting '{setting}' is expected to contain a url")
    try:
        parsed = urlparse(value.strip())
    except ValueError as exc:
        raise ConfigurationError(
            f"Setting '{setting}' is expected to contain a url, got {value!r}: {exc}"
        ) from exc
    if not parsed.scheme:
        raise ConfigurationError(f"Setting '{setting}' contains a url without a scheme: {value!r}")
    if not (parsed.netloc or parsed.path):
        raise ConfigurationError(f"Setting '{setting}' is expected to contain a url, got {value!r}")


def optional_url(setting: str, value: Any, args: Any, settings: Mapping[str, Any]) -> None:
    """Unset, or a URL."""
    if value is None:
        return
    url(setting, value, args, settings)


def boolean(setting: str, value: Any, args: Any, settings: Mapping[str, Any]) -> None:
    """``true`` or ``false`` (YAML booleans)."""
    if not isinstance(value, bool):
        raise ConfigurationError(
            f"Setting '{setting}' is expected to be a boolean (true or false), got {value!r}"
        )


def enum(setting: str, value: Any, args: Any, settings: Mapping[str, Any]) -> None:
    """One of the values listed in ``args``."""
    allowed = list(args) if isinstance(args, Iterable) and not isinstance(args, str) else [args]
    if value not in allowed:
        choices = ", ".join(repr(item) for item in allowed)
        raise ConfigurationError(
            f"Parameter '{setting}' is expected to be one of {choices}, got {value!r}"
        )


VALIDATORS: dict[str, ValidatorFunc] = {
    "presence": presence,
    "file_readable": file_readable,
    "url": url,
    "optional_url": optional_url,
    "boolean": boolean,
    "enum": enum,
}


def resolve(
    validator: str | ValidatorFunc, custom: Mapping[str, ValidatorFunc] | None = None
) -> ValidatorFunc:
    """The function for a validator name (custom ones first); unknown names raise."""
    if callable(validator):
        return validator
    name = str(validator)
    if custom and name in custom:
        return custom[name]
    if name in VALIDATORS:
        return VALIDATORS[name]
    known = ", ".join(sorted({*VALIDATORS, *(custom or {})}))
    raise ConfigurationError(f"Unknown validator '{name}' (known validators: {known})")


def validate_settings(
    settings: Mapping[str, Any],
    *,
    defaults: Mapping[str, Any] | None = None,
    validations: Iterable[Validation] = (),
    custom: Mapping[str, ValidatorFunc] | None = None,
) -> None:
    """Run the implicit presence checks for ``defaults`` keys, then ``validations``.

    Raises :class:`ConfigurationError` for the first failure (and for an unknown validator
    name, even when its predicate is false: a typo must not go unnoticed).
    """
    for key in defaults or {}:
        presence(key, settings.get(key), None, settings)
    for validation in validations:
        check = resolve(validation.validator, custom)
        if validation.when is not None and not validation.when(settings):
            continue
        check(validation.setting, settings.get(validation.setting), validation.args, settings)
