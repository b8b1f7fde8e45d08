"""Setting validators (§4, §13 ``validator_test``/``module_loader_test``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from smart_proxy.validators import (
    VALIDATORS,
    ConfigurationError,
    Validation,
    boolean,
    enum,
    file_readable,
    optional_url,
    presence,
    resolve,
    url,
    validate_settings,
)


def test_file_readable(tmp_path: Path) -> None:
    readable = tmp_path / "key"
    readable.write_text("x")
    file_readable("dns_key", str(readable), None, {})
    file_readable("dns_key", None, None, {})  # optional setting left unset
    with pytest.raises(ConfigurationError, match=r"'dns_key'.*doesn't exist or is unreadable"):
        file_readable("dns_key", str(tmp_path / "missing"), None, {})
    with pytest.raises(ConfigurationError):
        file_readable("dns_key", str(tmp_path), None, {})  # a directory
    if os.geteuid() != 0:
        readable.chmod(0)
        with pytest.raises(ConfigurationError):
            file_readable("dns_key", str(readable), None, {})


def test_presence() -> None:
    presence("x", "value", None, {})
    presence("x", 0, None, {})
    presence("x", False, None, {})
    for missing in (None, "", "   "):
        with pytest.raises(ConfigurationError, match="Parameter 'x' is expected to have a non"):
            presence("x", missing, None, {})


def test_url_requires_a_scheme() -> None:
    url("foreman_url", "https://foreman.example.com", None, {})
    url("foreman_url", "http://127.0.0.1:3000/", None, {})
    with pytest.raises(ConfigurationError, match="without a scheme"):
        url("foreman_url", "foreman.example.com", None, {})
    for bad in (None, "", 42):
        with pytest.raises(ConfigurationError, match="'foreman_url' is expected to contain a url"):
            url("foreman_url", bad, None, {})


def test_optional_url() -> None:
    optional_url("u", None, None, {})
    optional_url("u", "https://x.example.com", None, {})
    with pytest.raises(ConfigurationError):
        optional_url("u", "no-scheme", None, {})


def test_boolean() -> None:
    boolean("flag", True, None, {})
    boolean("flag", False, None, {})
    for bad in ("true", 1, None):
        with pytest.raises(ConfigurationError, match="'flag' is expected to be a boolean"):
            boolean("flag", bad, None, {})


def test_enum() -> None:
    enum("mode", "a", ["a", "b"], {})
    with pytest.raises(ConfigurationError, match=r"'mode' is expected to be one of 'a', 'b'"):
        enum("mode", "c", ["a", "b"], {})


def test_defaults_are_presence_validated_before_explicit_validations() -> None:
    seen: list[str] = []

    def record(setting: str, value: Any, args: Any, settings: Mapping[str, Any]) -> None:
        seen.append(setting)

    with pytest.raises(ConfigurationError, match="Parameter 'b'"):
        validate_settings(
            {"a": 1, "b": ""},
            defaults={"a": 1, "b": "x"},
            validations=[Validation("a", record)],
        )
    assert seen == []
    validate_settings({"a": 1, "b": "y"}, defaults={"a": 1, "b": "x"}, validations=[])


def test_predicates_and_custom_validators() -> None:
    calls: list[tuple[str, Any, Any]] = []

    def positive(setting: str, value: Any, args: Any, settings: Mapping[str, Any]) -> None:
        calls.append((setting, value, args))
        if value <= args:
            raise ConfigurationError(f"'{setting}' must be above {args}")

    checks = [
        Validation("count", "positive", args=0, when=lambda s: s.get("enabled") is True),
    ]
    validate_settings(
        {"enabled": False, "count": -1}, validations=checks, custom={"positive": positive}
    )
    assert calls == []
    with pytest.raises(ConfigurationError, match="'count' must be above 0"):
        validate_settings(
            {"enabled": True, "count": -1}, validations=checks, custom={"positive": positive}
        )
    assert calls == [("count", -1, 0)]


def test_unknown_validator_is_an_error_even_when_skipped() -> None:
    with pytest.raises(ConfigurationError, match="Unknown validator 'nonsense'"):
        validate_settings({}, validations=[Validation("x", "nonsense", when=lambda s: False)])
    with pytest.raises(ConfigurationError, match="Unknown validator"):
        resolve("also_nonsense")
    assert resolve("url") is VALIDATORS["url"]
    assert set(VALIDATORS) == {
        "presence",
        "file_readable",
        "url",
        "optional_url",
        "boolean",
        "enum",
    }
