"""Settings of the `script` plugin (``settings.d/remote_execution_ssh.yml``, §2.1) and their checks.

The same file configures the plugin inside the Smart Proxy and inside the standalone core
service. :func:`check` applies the activation-time validation of §2.2 and raises
:class:`~smart_proxy.validators.ConfigurationError` with a message an admin can act on; the
plugin then fails cleanly (it is never left half-running).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smart_proxy.validators import ConfigurationError

SETTINGS_FILE = "remote_execution_ssh.yml"
SETTINGS_NAMES = ("remote_execution_ssh", "smart_proxy_remote_execution_ssh_core")

DEFAULTS: dict[str, Any] = {
    "ssh_identity_key_file": "~/.ssh/id_rsa_foreman_proxy",
    "ssh_user": "root",
    "remote_working_dir": "/var/tmp",
    "local_working_dir": "/var/tmp",
    "socket_working_dir": "/var/tmp",
    "kerberos_auth": False,
    "cockpit_integration": True,
    "ssh_log_level": "error",
    "cleanup_working_dirs": True,
    "mode": "ssh",
    "mqtt_resend_interval": 900,
    "mqtt_ttl": 5,
    "max_starting_jobs": 64,
    "connect_timeout": 30,
    "connect_retries": 0,
    "connect_retry_interval": 15,
}
"""Every key with a default; optional keys without one: ``runner_refresh_interval``,
``ssh_ca_known_hosts_file``, ``ssh_user_ca_public_key_file``, ``known_hosts_file`` (the file
that remembers host keys, default ``~/.ssh/known_hosts``), ``mqtt_broker``, ``mqtt_port``,
``mqtt_tls``, ``mqtt_rate_limit``."""

MODES = ("ssh", "pull", "pull-mqtt")
PULL_MODES = ("pull", "pull-mqtt")
SSH_LOG_LEVELS = ("debug", "info", "error", "fatal")
# Python/Ruby proxy log levels mapped onto the ssh_log_level scale.
_PROXY_LEVEL_POSITION = {
    "debug": 0,
    "info": 1,
    "warn": 2,
    "warning": 2,
    "error": 2,
    "fatal": 3,
    "critical": 3,
    "unknown": 3,
}


@dataclass(frozen=True)
class TlsFiles:
    """The proxy's TLS files, as the MQTT client presents them to the broker (§7.3):
    ``foreman_ssl_ca``/``cert``/``key``, falling back to ``ssl_ca_file``/``ssl_certificate``/
    ``ssl_private_key``."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def complete(self) -> bool:
        return bool(self.ca and self.cert and self.key)


def effective(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults merged with ``settings``; ``~`` expanded in the key paths."""
    merged = {**DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
    for key in (
        "ssh_identity_key_file",
        "ssh_user_ca_public_key_file",
        "ssh_ca_known_hosts_file",
        "known_hosts_file",
    ):
        if isinstance(merged.get(key), str):
            merged[key] = os.path.expanduser(merged[key])
    return merged


def check(
    settings: Mapping[str, Any],
    proxy_log_level: str | None = None,
    *,
    tls_files: TlsFiles | None = None,
) -> dict[str, Any]:
    """Validate like §2.2; returns the effective settings.

    ``tls_files`` are the proxy's (or the core's) TLS files: with ``mode: pull-mqtt`` and no
    ``mqtt_tls`` setting, TLS is used towards the broker when all three are set.
    """
    values = effective(settings)
    mode = str(values["mode"]).strip().lower()
    if mode not in MODES:
        raise ConfigurationError(
            f"Mode has to be one of {', '.join(MODES)}, given {values['mode']}"
        )
    values["mode"] = mode
    if mode == "ssh" or values.get("cockpit_integration"):
        key_file = Path(str(values["ssh_identity_key_file"]))
        if not key_file.is_file():
            raise ConfigurationError(
                f"SSH private key file {key_file} doesn't exist. "
                f"You can generate one with `ssh-keygen -t rsa -b 4096 -f {key_file} -N ''`"
            )
        if not key_file.with_name(key_file.name + ".pub").is_file():
            raise ConfigurationError(f"SSH public key file {key_file}.pub doesn't exist")
        ca = values.get("ssh_user_ca_public_key_file")
        if ca:
            if not Path(str(ca)).is_file():
                raise ConfigurationError(f"SSH user CA public key file {ca} doesn't exist")
            if not key_file.with_name(key_file.name + "-cert.pub").is_file():
                raise ConfigurationError(
                    f"SSH user certificate {key_file}-cert.pub doesn't exist, although "
                    "ssh_user_ca_public_key_file is set"
                )
        level = str(values["ssh_log_level"]).strip().lower()
        if level not in SSH_LOG_LEVELS:
            raise ConfigurationError(
                f"Wrong value '{values['ssh_log_level']}' for ssh_log_level, "
                f"must be one of {', '.join(SSH_LOG_LEVELS)}"
            )
        if proxy_log_level:
            proxy = _PROXY_LEVEL_POSITION.get(str(proxy_log_level).strip().lower())
            if proxy is not None and SSH_LOG_LEVELS.index(level) < proxy:
                raise ConfigurationError(
                    f"ssh_log_level cannot be more verbose than the smart proxy's log_level "
                    f"({proxy_log_level}); got {level}"
                )
        values["ssh_log_level"] = level
    if mode == "pull-mqtt":
        _check_mqtt(values, tls_files or TlsFiles())
    for key in ("mqtt_ttl", "mqtt_resend_interval"):
        value = values.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigurationError(
                f"Parameter '{key}' must be a positive number of seconds, got {value!r}"
            )
    limit = values.get("mqtt_rate_limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigurationError(
            f"Parameter 'mqtt_rate_limit' must be a positive integer (or unset), got {limit!r}"
        )
    for key in ("ssh_ca_known_hosts_file",):
        path = values.get(key)
        if path and not Path(str(path)).is_file():
            raise ConfigurationError(f"{key} {path} doesn't exist")
    starting = values.get("max_starting_jobs")
    if isinstance(starting, bool) or not isinstance(starting, int) or starting < 1:
        raise ConfigurationError(
            f"Parameter 'max_starting_jobs' must be a positive integer, got {starting!r}"
        )
    _check_connect(values)
    refresh = values.get("runner_refresh_interval")
    if refresh is not None and (
        isinstance(refresh, bool) or not isinstance(refresh, int | float) or refresh <= 0
    ):
        raise ConfigurationError(
            f"Parameter 'runner_refresh_interval' must be a positive number, got {refresh!r}"
        )
    return values


def _check_connect(values: Mapping[str, Any]) -> None:
    """How the proxy connects to hosts: ``connect_timeout`` per attempt (> 0), and
    ``connect_retries`` more attempts after a network error (0, the default: none),
    ``connect_retry_interval`` seconds apart (>= 0). Not the job's ``connection_options``,
    which are Foreman's trigger retries."""
    timeout = values.get("connect_timeout")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigurationError(
            f"Parameter 'connect_timeout' must be a positive number of seconds, got {timeout!r}"
        )
    retries = values.get("connect_retries")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigurationError(
            f"Parameter 'connect_retries' must be 0 or a positive integer, got {retries!r}"
        )
    interval = values.get("connect_retry_interval")
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval < 0:
        raise ConfigurationError(
            "Parameter 'connect_retry_interval' must be a number of seconds (0 or more), "
            f"got {interval!r}"
        )


def _check_mqtt(values: dict[str, Any], tls_files: TlsFiles) -> None:
    """``pull-mqtt`` needs the broker's address; ``mqtt_tls`` unset means "if the files are
    there" (§2.2 step 3)."""
    broker = values.get("mqtt_broker")
    if not isinstance(broker, str) or not broker.strip():
        raise ConfigurationError("Parameter 'mqtt_broker' is required when mode is pull-mqtt")
    values["mqtt_broker"] = broker.strip()
    port = values.get("mqtt_port")
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port.strip())
    if port is None:
        raise ConfigurationError("Parameter 'mqtt_port' is required when mode is pull-mqtt")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigurationError(
            f"Parameter 'mqtt_port' must be a port number (1-65535), got {port!r}"
        )
    values["mqtt_port"] = port
    tls = values.get("mqtt_tls")
    if tls is None:
        values["mqtt_tls"] = tls_files.complete
        return
    if not isinstance(tls, bool):
        raise ConfigurationError(f"Parameter 'mqtt_tls' must be true or false, got {tls!r}")
    if tls and not tls_files.complete:
        raise ConfigurationError(
            "mqtt_tls is true, but the proxy has no complete set of TLS files for the broker "
            "(foreman_ssl_ca, foreman_ssl_cert, foreman_ssl_key, or ssl_ca_file, "
            "ssl_certificate, ssl_private_key)"
        )
