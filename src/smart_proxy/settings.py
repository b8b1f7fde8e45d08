"""Global settings of the Smart Proxy (``settings.yml``) and the YAML helpers shared by every
settings file of the project.

Settings files are YAML in either style Foreman installers write: Ruby symbol keys
(``:https_port: 8443``) or plain keys (``https_port: 8443``). :func:`read_settings_file` reads
one file into a dict with plain keys; :func:`load_proxy_settings` reads
``<config dir>/settings.yml`` into a :class:`ProxySettings`.

Unknown keys are kept (plugins may read them with :meth:`ProxySettings.get`), as the original
open struct did. Every problem is a :class:`SettingsError` whose message is one line naming the
file and the key.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from smart_proxy.log import DEFAULT_FILE_PATTERN, LEVELS, rolling_age_setting
from smart_proxy.server import DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT

logger = logging.getLogger(__name__)

SETTINGS_FILE = "settings.yml"
SETTINGS_DIRECTORY = "settings.d"
SYSTEM_CONFIG_DIR = "/etc/foreman-proxy"
DEFAULT_LOG_FILE = "/var/log/foreman-proxy/proxy.log"
DEFAULT_SYSTEM_LOGGING_PATTERN = "%m"
_HTTPS_FILES = ("ssl_certificate", "ssl_private_key", "ssl_ca_file")


class SettingsError(Exception):
    """Settings cannot be loaded; the message is one line, fit for a CLI error."""


# ---- YAML helpers (shared with smart_proxy_dynflow.settings) ------------------------------------


def normalise_keys(value: Any) -> Any:
    """Strip the leading ``:`` of Ruby symbol keys, recursively (mappings and lists)."""
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            if name.startswith(":"):
                name = name[1:]
            result[name] = normalise_keys(item)
        return result
    if isinstance(value, list):
        return [normalise_keys(item) for item in value]
    return value


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """One YAML settings file as a dict with normalised keys (an empty file is ``{}``).

    Raises :class:`SettingsError` when the file cannot be read, is not valid YAML or does not
    hold a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SettingsError(f"{path}: cannot read settings: {reason}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SettingsError(f"{path}: invalid YAML{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SettingsError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return normalise_keys(data)


def validation_message(exc: ValidationError, source: str | None = None) -> str:
    """One line describing every problem of a pydantic error, prefixed with ``source``."""
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if "input" in error and error["type"] not in ("value_error", "missing"):
            message = f"{message} (got {error['input']!r})"
        problems.append(f"{location}: {message}" if location else message)
    text = "; ".join(problems)
    return f"{source}: {text}" if source else text


# ---- global settings ----------------------------------------------------------------------------


def string_list(value: Any) -> Any:
    """A list of strings from a list, a comma-separated string or nothing (YAML reads ``1.2``
    as a float, so numbers become strings)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list | tuple):
        return [
            str(item) if isinstance(item, int | float) and not isinstance(item, bool) else item
            for item in value
        ]
    return value


def log_level_name(value: Any) -> Any:
    """A log level setting as its upper-case name (``WARNING`` reads as ``WARN``)."""
    if isinstance(value, str):
        name = value.strip().upper()
        if name not in LEVELS:
            raise ValueError(
                f"invalid log level {value!r} (expected UNKNOWN, FATAL, ERROR, WARN, INFO or DEBUG)"
            )
        return "WARN" if name == "WARNING" else name
    return value


def _default_dns_resolv_timeouts() -> list[int | float]:
    """The default ``dns_resolv_timeouts`` (seconds), a new list for each settings object."""
    return [5, 8, 13]


class ProxySettings(BaseModel):
    """Every global setting with its default (§3). Unknown keys are kept as extra attributes."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    settings_directory: str = f"{SYSTEM_CONFIG_DIR}/{SETTINGS_DIRECTORY}"
    # listeners
    http_port: int | None = Field(None, ge=0, le=65535)
    https_port: int = Field(8443, ge=0, le=65535)
    bind_host: list[str] = Field(default_factory=lambda: ["*"])
    ssl_certificate: str | None = None
    ssl_private_key: str | None = None
    ssl_ca_file: str | None = None
    ssl_disabled_ciphers: list[str] = Field(default_factory=list)
    tls_disabled_versions: list[str] = Field(default_factory=list)
    # seconds a client has to send a request head (and the TLS handshake), and then its body
    http_header_timeout: float = Field(DEFAULT_HEADER_TIMEOUT, gt=0)
    http_body_timeout: float = Field(DEFAULT_BODY_TIMEOUT, gt=0)
    # authorization
    trusted_hosts: list[str] | None = None
    forward_verify: bool = True
    # Foreman
    foreman_url: str | None = None
    foreman_ssl_ca: str | None = None
    foreman_ssl_cert: str | None = None
    foreman_ssl_key: str | None = None
    # logging
    log_file: str = DEFAULT_LOG_FILE
    log_level: str = "INFO"
    file_rolling_size: int = Field(0, ge=0)
    file_rolling_age: str | int = "weekly"
    file_rolling_keep: int = Field(6, ge=0)
    file_logging_pattern: str = DEFAULT_FILE_PATTERN
    system_logging_pattern: str = DEFAULT_SYSTEM_LOGGING_PATTERN
    log_buffer: int = Field(2000, ge=0)
    log_buffer_errors: int = Field(1000, ge=0)
    # helpers
    dns_resolv_timeouts: list[int | float] = Field(default_factory=_default_dns_resolv_timeouts)

    # Where the settings were read from: given as the validation context (``source``,
    # ``config_dir``) by load_proxy_settings, None when built in code.
    _source: str | None = PrivateAttr(default=None)
    _config_dir: str | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        if isinstance(context, Mapping):
            self._source = context.get("source")
            self._config_dir = context.get("config_dir")

    # ---- validation -----------------------------------------------------------------------------

    @field_validator(
        "settings_directory",
        "log_file",
        "file_logging_pattern",
        "system_logging_pattern",
        "log_level",
        mode="before",
    )
    @classmethod
    def _not_blank(cls, value: Any, info: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            field = cls.model_fields[info.field_name]
            return field.get_default(call_default_factory=True)
        return value

    @field_validator(
        "ssl_certificate",
        "ssl_private_key",
        "ssl_ca_file",
        "foreman_url",
        "foreman_ssl_ca",
        "foreman_ssl_cert",
        "foreman_ssl_key",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("https_port", mode="before")
    @classmethod
    def _https_port(cls, value: Any) -> Any:
        return 8443 if value is None else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        return log_level_name(value)

    @field_validator("file_rolling_age", mode="before")
    @classmethod
    def _rolling_age(cls, value: Any) -> Any:
        return rolling_age_setting(value)

    @field_validator("ssl_disabled_ciphers", "tls_disabled_versions", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return string_list(value)

    @field_validator("bind_host", mode="before")
    @classmethod
    def _bind_host(cls, value: Any) -> Any:
        if value is None:
            return ["*"]
        value = string_list(value)
        if isinstance(value, list) and not value:
            raise ValueError("bind_host must name at least one address ('*' for all)")
        return value

    @field_validator("bind_host")
    @classmethod
    def _bind_host_entries(cls, value: list[str]) -> list[str]:
        hosts = [entry.strip() for entry in value]
        if any(not entry for entry in hosts):
            raise ValueError("bind_host has an empty entry")
        return hosts

    @field_validator("trusted_hosts", mode="before")
    @classmethod
    def _trusted_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        return value

    @field_validator("trusted_hosts")
    @classmethod
    def _trusted_hosts_lower(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        return [entry.strip().lower() for entry in value if entry.strip()]

    @field_validator("foreman_url")
    @classmethod
    def _foreman_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        return value if value.endswith("/") else value + "/"

    @field_validator("dns_resolv_timeouts", mode="before")
    @classmethod
    def _timeouts(cls, value: Any) -> Any:
        if value is None:
            return [5, 8, 13]
        if isinstance(value, int | float) and not isinstance(value, bool):
            return [value]
        return value

    # ---- derived values -------------------------------------------------------------------------

    @property
    def source(self) -> str | None:
        """The ``settings.yml`` these settings were read from (None when built in code)."""
        return self._source

    @property
    def config_dir(self) -> str | None:
        """The directory holding ``settings.yml`` (None when built in code)."""
        return self._config_dir

    @property
    def http_enabled(self) -> bool:
        """HTTP is served only when ``http_port`` is set."""
        return self.http_port is not None

    @property
    def https_enabled(self) -> bool:
        """HTTPS is served only when the certificate, its key and the client CA are all set."""
        return all(getattr(self, name) for name in _HTTPS_FILES)

    def foreman_ca(self) -> str | None:
        """CA file to verify Foreman with (``foreman_ssl_ca``, else ``ssl_ca_file``)."""
        return self.foreman_ssl_ca or self.ssl_ca_file

    def foreman_cert_file(self) -> str | None:
        """Client certificate towards Foreman (``foreman_ssl_cert``, else ``ssl_certificate``)."""
        return self.foreman_ssl_cert or self.ssl_certificate

    def foreman_client_cert(self) -> tuple[str, str] | None:
        """(certificate, key) presented to Foreman, None unless both are set."""
        cert = self.foreman_cert_file()
        key = self.foreman_ssl_key or self.ssl_private_key
        if cert and key:
            return cert, key
        return None

    def get(self, key: str, default: Any = None) -> Any:
        """Any setting by name, including unknown keys of the file (``default`` when absent)."""
        if key in type(self).model_fields:
            return getattr(self, key)
        extra = self.model_extra or {}
        return extra.get(key, default)


def load_proxy_settings(config_dir: str | os.PathLike[str]) -> ProxySettings:
    """Read ``<config_dir>/settings.yml``.

    ``settings_directory`` defaults to ``<config_dir>/settings.d``. Raises
    :class:`SettingsError` (one line naming the file and the key) on any problem.
    """
    directory = Path(config_dir).expanduser()
    path = directory / SETTINGS_FILE
    if not directory.is_dir():
        raise SettingsError(f"config directory {directory} does not exist")
    if not path.is_file():
        raise SettingsError(f"{path}: settings file not found")
    data = read_settings_file(path)
    if not data.get("settings_directory"):
        data["settings_directory"] = str(directory / SETTINGS_DIRECTORY)
    try:
        settings = ProxySettings.model_validate(
            data, context={"source": str(path), "config_dir": str(directory)}
        )
    except ValidationError as exc:
        raise SettingsError(validation_message(exc, str(path))) from exc
    logger.debug("Settings loaded from %s", path)
    return settings
