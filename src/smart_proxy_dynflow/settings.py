"""Settings of the standalone core service (``smart-proxy-dynflow-core``).

Files are YAML; both styles Foreman installers write are accepted: Ruby symbol keys
(``:port: 8008``) and plain keys (``port: 8008``). :func:`load_settings` reads every config
directory in order (``/etc/smart_proxy_dynflow_core``, ``~/.config/smart_proxy_dynflow_core``,
the source checkout's ``config``, then ``--config-dir``); later files win key by key. Each
directory's ``settings.d/<name>.yml`` files become ``plugins[<name>]``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from dynflow.persistence.store import prepare_sqlite_file
from smart_proxy.log import DEFAULT_FILE_PATTERN, DEFAULT_SYSTEM_PATTERN, rolling_age_setting
from smart_proxy.server import DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT

# The YAML helpers live in smart_proxy.settings (shared with the Smart Proxy host); they stay
# importable from here under their old names.
from smart_proxy.settings import SettingsError as SettingsError
from smart_proxy.settings import log_level_name, string_list
from smart_proxy.settings import normalise_keys as normalise_keys
from smart_proxy.settings import read_settings_file as read_settings_file

logger = logging.getLogger(__name__)

DEFAULT_DATABASE = "/var/lib/foreman-proxy/dynflow/dynflow.sqlite"
MEMORY_DATABASE = ":memory:"
DB_ENV = "DYNFLOW_DB_CONN_STRING"
SETTINGS_FILE = "settings.yml"
PLUGIN_DIR = "settings.d"
SYSTEM_CONFIG_DIR = "/etc/smart_proxy_dynflow_core"
USER_CONFIG_DIR = "~/.config/smart_proxy_dynflow_core"
# Flags the original kept in the same structure; harmless if a file carries them.
_INTERNAL_KEYS = frozenset({"standalone", "loaded"})
_HTTPS_FILES = ("ssl_ca_file", "ssl_certificate", "ssl_private_key")
RETIRED_CALLBACK_TIMEOUT = (
    "callback_retry_timeout is no longer used: a callback Foreman rejects (4xx) fails at once, "
    "others are retried for callback_retry_window seconds (default 600), then the plan pauses "
    "and Foreman's status poll closes the job"
)


def normalise_db_url(url: str) -> str:
    """SQLAlchemy async URL for a database URL (``postgres://`` → ``postgresql+asyncpg://``,
    ``sqlite://`` → ``sqlite+aiosqlite://``; URLs naming a driver are kept)."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a database URL: {url!r}")
    scheme = scheme.lower()
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+asyncpg://{rest}"
    if scheme == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    return f"{scheme}://{rest}"


def database_url(database: str | None) -> str:
    """SQLAlchemy async URL of the ``database`` setting; ``$DYNFLOW_DB_CONN_STRING`` wins.

    Unset or blank means the durable default file; ``:memory:`` an in-memory database; a URL
    is taken as it is; a relative path is relative to the current working directory.
    """
    env = os.environ.get(DB_ENV, "").strip()
    if env:
        return normalise_db_url(env)
    database = (database or "").strip() or DEFAULT_DATABASE
    if database == MEMORY_DATABASE:
        return "sqlite+aiosqlite:///:memory:"
    if "://" in database:
        return normalise_db_url(database)
    return "sqlite+aiosqlite:///" + os.path.abspath(os.path.expanduser(database))


class CoreSettings(BaseModel):
    """Every setting of the core service with its default (spec §7.3, plus our own keys)."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    # persistence
    database: str = DEFAULT_DATABASE
    execution_plan_cleaner_age: float = Field(1800, gt=0)
    pool_size: int = Field(5, ge=1)
    # Foreman
    foreman_url: str = "https://127.0.0.1:3000"
    foreman_ssl_ca: str | None = None
    foreman_ssl_cert: str | None = None
    foreman_ssl_key: str | None = None
    # listener
    listen: str = "127.0.0.1"
    port: int = Field(8008, ge=0, le=65535)
    use_https: bool = False
    ssl_ca_file: str | None = None
    ssl_certificate: str | None = None
    ssl_private_key: str | None = None
    ssl_disabled_ciphers: list[str] = Field(default_factory=list)
    tls_disabled_versions: list[str] = Field(default_factory=list)
    console_auth: bool = True
    # The console (/console) over plain HTTP; off: only over HTTPS.
    console_http: bool = False
    # CNs of client certificates that may open the console directly, besides the Smart
    # Proxy's own (HTTPS with console_auth); unset: the proxy's certificate alone.
    console_trusted_hosts: list[str] | None = None
    max_body_size: int = Field(256 * 1024 * 1024, gt=0)
    # seconds a client has to send a request head (and the TLS handshake), and then its body
    http_header_timeout: float = Field(DEFAULT_HEADER_TIMEOUT, gt=0)
    http_body_timeout: float = Field(DEFAULT_BODY_TIMEOUT, gt=0)
    # process
    daemonize: bool = False
    pid_file: str = "/var/run/foreman-proxy/smart_proxy_dynflow_core.pid"
    # logging
    log_file: str = "/var/log/foreman-proxy/smart_proxy_dynflow_core.log"
    log_level: str = "ERROR"
    file_rolling_size: int = Field(0, ge=0)
    file_rolling_age: str | int = "weekly"
    file_rolling_keep: int = Field(6, ge=0)
    file_logging_pattern: str = DEFAULT_FILE_PATTERN
    system_logging_pattern: str = DEFAULT_SYSTEM_PATTERN
    # runners and callbacks
    runner_refresh_interval: float = Field(1.0, gt=0)
    callback_retry_interval: float = Field(2.0, gt=0)
    callback_retry_max_interval: float = Field(300.0, gt=0)
    # Transient callback failures are retried for this many seconds from the first attempt,
    # then the plan pauses and Foreman's 600 s status poll picks the result up.
    callback_retry_window: float = Field(600.0, gt=0)
    # settings.d/<name>.yml contents
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)

    # The files read, in load order: the validation context's ``sources`` (load_settings).
    _sources: list[str] = PrivateAttr(default_factory=list)

    def model_post_init(self, context: Any, /) -> None:
        if isinstance(context, Mapping):
            self._sources = list(context.get("sources") or [])

    # ---- validation -----------------------------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _warn_unknown(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(
                str(key)
                for key in data
                if key not in cls.model_fields and key not in _INTERNAL_KEYS
            )
            if unknown:
                logger.warning("Ignoring unknown settings: %s", ", ".join(unknown))
            if "callback_retry_timeout" in data:
                logger.warning(RETIRED_CALLBACK_TIMEOUT)
        return data

    @field_validator("database", mode="before")
    @classmethod
    def _database(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return DEFAULT_DATABASE
        if isinstance(value, str):
            value = value.strip()
            if value == MEMORY_DATABASE:
                logger.warning("Using an in-memory database: tasks are lost when the service stops")
        return value

    @field_validator("log_file", "pid_file", mode="before")
    @classmethod
    def _not_blank(cls, value: Any, info: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return cls.model_fields[info.field_name].default
        return value

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
    def _string_list(cls, value: Any) -> Any:
        return string_list(value)

    @field_validator("console_trusted_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("console_trusted_hosts")
    @classmethod
    def _hosts_lower(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        hosts = [entry.strip().lower() for entry in value]
        if any(not entry for entry in hosts):
            raise ValueError("console_trusted_hosts has an empty entry")
        return hosts

    @field_validator("foreman_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"foreman_url must be an http:// or https:// URL, got {value!r}")
        return value

    @field_validator("plugins", mode="before")
    @classmethod
    def _plugins(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _https_files(self) -> CoreSettings:
        if not self.use_https:
            return self
        missing = [name for name in _HTTPS_FILES if not getattr(self, name)]
        if missing:
            raise ValueError(f"use_https requires {', '.join(missing)} to be set")
        absent = [
            f"{name} ({getattr(self, name)})"
            for name in _HTTPS_FILES
            if not Path(getattr(self, name)).expanduser().is_file()
        ]
        if absent:
            raise ValueError(f"use_https: file not found: {', '.join(absent)}")
        return self

    # ---- derived values -------------------------------------------------------------------------

    @property
    def sources(self) -> list[str]:
        """The settings files this object was loaded from, in load order."""
        return list(self._sources)

    @property
    def db_url(self) -> str:
        """SQLAlchemy async URL: ``$DYNFLOW_DB_CONN_STRING`` if set, else ``database``."""
        return database_url(self.database)

    @property
    def database_path(self) -> Path | None:
        """The SQLite file in use, None for in-memory or URL databases."""
        if os.environ.get(DB_ENV, "").strip():
            return None
        if self.database == MEMORY_DATABASE or "://" in self.database:
            return None
        return Path(os.path.abspath(os.path.expanduser(self.database)))

    def ensure_database_dir(self) -> None:
        """Create the SQLite file owner-only, in a ``0700`` directory if it has to be made
        (:func:`dynflow.persistence.store.prepare_sqlite_file`; the store does it too)."""
        path = self.database_path
        if path is not None:
            prepare_sqlite_file(path)

    def foreman_ca(self) -> str | None:
        """CA file to verify Foreman with (``foreman_ssl_ca``, else ``ssl_ca_file``)."""
        return self.foreman_ssl_ca or self.ssl_ca_file

    def foreman_cert_file(self) -> str | None:
        """The client certificate used towards Foreman (``foreman_ssl_cert``, else
        ``ssl_certificate``); its serial is the one the standalone API accepts (§2.2)."""
        return self.foreman_ssl_cert or self.ssl_certificate

    def foreman_client_cert(self) -> tuple[str, str] | None:
        """(certificate, key) presented to Foreman, None unless both are set."""
        cert = self.foreman_cert_file()
        key = self.foreman_ssl_key or self.ssl_private_key
        if cert and key:
            return cert, key
        return None

    def plugin(self, name: str) -> dict[str, Any]:
        """``settings.d/<name>.yml`` contents ({} when there is none)."""
        return dict(self.plugins.get(name, {}))


# ---- loading ------------------------------------------------------------------------------------


def package_config_dir() -> Path | None:
    """``config/core/`` of a source checkout (next to ``pyproject.toml``), None when installed."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "config" / "core").is_dir():
        return root / "config" / "core"
    return None


def default_config_dirs() -> list[Path]:
    dirs = [Path(SYSTEM_CONFIG_DIR), Path(USER_CONFIG_DIR).expanduser()]
    checkout = package_config_dir()
    if checkout is not None:
        dirs.append(checkout)
    return dirs


def _validation_message(exc: ValidationError, sources: list[str]) -> str:
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if "input" in error and error["type"] not in ("value_error", "missing"):
            message = f"{message} (got {error['input']!r})"
        problems.append(f"{location}: {message}" if location else message)
    origin = f" (from {', '.join(sources)})" if sources else ""
    return f"invalid settings{origin}: " + "; ".join(problems)


def load_settings(
    config_dir: str | os.PathLike[str] | None = None,
    one_config: bool = False,
    *,
    default_dirs: Iterable[str | os.PathLike[str]] | None = None,
) -> CoreSettings:
    """Load the settings from the config directories (see the module docstring).

    ``default_dirs`` replaces the standard list (tests). ``config_dir`` (``--config-dir``) is
    appended and must exist and contain ``settings.yml``. With ``one_config`` the order is
    reversed and only the first directory holding a ``settings.yml`` is used. No settings file
    anywhere means all defaults.
    """
    dirs = [Path(d).expanduser() for d in (default_dirs or [])]
    if default_dirs is None:
        dirs = default_config_dirs()
    if config_dir is not None:
        explicit = Path(config_dir).expanduser()
        if not explicit.is_dir():
            raise SettingsError(f"config directory {config_dir} does not exist")
        if not (explicit / SETTINGS_FILE).is_file():
            raise SettingsError(f"config directory {config_dir} has no {SETTINGS_FILE}")
        dirs.append(explicit)
    if one_config:
        dirs.reverse()

    merged: dict[str, Any] = {}
    plugins: dict[str, dict[str, Any]] = {}
    sources: list[str] = []
    for directory in dirs:
        settings_file = directory / SETTINGS_FILE
        if not settings_file.is_file():
            continue
        data = read_settings_file(settings_file)
        sources.append(str(settings_file))
        inline_plugins = data.pop("plugins", None) or {}
        if not isinstance(inline_plugins, Mapping):
            raise SettingsError(f"{settings_file}: plugins must be a mapping")
        for name, values in inline_plugins.items():
            if not isinstance(values, Mapping):
                raise SettingsError(f"{settings_file}: plugins.{name} must be a mapping")
            plugins.setdefault(str(name), {}).update(values)
        merged.update(data)
        plugin_dir = directory / PLUGIN_DIR
        if plugin_dir.is_dir():
            for plugin_file in sorted(plugin_dir.glob("*.yml")):
                plugins.setdefault(plugin_file.stem, {}).update(read_settings_file(plugin_file))
                sources.append(str(plugin_file))
        if one_config:
            break

    merged["plugins"] = plugins
    try:
        settings = CoreSettings.model_validate(merged, context={"sources": sources})
    except ValidationError as exc:
        raise SettingsError(_validation_message(exc, sources)) from exc
    if sources:
        logger.debug("Settings loaded from %s", ", ".join(sources))
    return settings
