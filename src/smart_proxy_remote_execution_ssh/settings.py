"""Settings of the `script` plugin (``settings.d/remote_execution_ssh.yml``, §2.1) and their checks.

The same file configures the plugin inside the Smart Proxy and inside the standalone core
service. :func:`check` applies the activation-time validation of §2.2 and raises
:class:`~smart_proxy.validators.ConfigurationError` with a message an admin can act on; the
plugin then fails cleanly (it is never left half-running).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
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
}
"""Every key with a default; optional keys without one: ``runner_refresh_interval``,
``ssh_ca_known_hosts_file``, ``ssh_user_ca_public_key_file``, ``known_hosts_file`` (the file
that remembers host keys, default ``~/.ssh/known_hosts``), ``mqtt_broker``, ``mqtt_port``,
``mqtt_tls``, ``mqtt_rate_limit``."""

MODES = ("ssh", "pull", "pull-mqtt")
SUPPORTED_MODES = ("ssh",)
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


def check(settings: Mapping[str, Any], proxy_log_level: str | None = None) -> dict[str, Any]:
    """Validate like §2.2; returns the effective settings."""
    values = effective(settings)
    mode = str(values["mode"]).strip().lower()
    if mode not in MODES:
        raise ConfigurationError(
            f"Mode has to be one of {', '.join(MODES)}, given {values['mode']}"
        )
    if mode not in SUPPORTED_MODES:
        raise ConfigurationError(
            f"Mode '{mode}' (pull-based remote execution) is not supported by this smart proxy; "
            "use mode 'ssh'"
        )
    values["mode"] = mode
    if mode == "ssh" or values.get("cockpit_integration"):
        key = Path(str(values["ssh_identity_key_file"]))
        if not key.is_file():
            raise ConfigurationError(
                f"SSH private key file {key} doesn't exist. "
                f"You can generate one with `ssh-keygen -t rsa -b 4096 -f {key} -N ''`"
            )
        if not key.with_name(key.name + ".pub").is_file():
            raise ConfigurationError(f"SSH public key file {key}.pub doesn't exist")
        ca = values.get("ssh_user_ca_public_key_file")
        if ca:
            if not Path(str(ca)).is_file():
                raise ConfigurationError(f"SSH user CA public key file {ca} doesn't exist")
            if not key.with_name(key.name + "-cert.pub").is_file():
                raise ConfigurationError(
                    f"SSH user certificate {key}-cert.pub doesn't exist, although "
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
    for key in ("ssh_ca_known_hosts_file",):
        path = values.get(key)
        if path and not Path(str(path)).is_file():
            raise ConfigurationError(f"{key} {path} doesn't exist")
    starting = values.get("max_starting_jobs")
    if isinstance(starting, bool) or not isinstance(starting, int) or starting < 1:
        raise ConfigurationError(
            f"Parameter 'max_starting_jobs' must be a positive integer, got {starting!r}"
        )
    refresh = values.get("runner_refresh_interval")
    if refresh is not None and (
        isinstance(refresh, bool) or not isinstance(refresh, int | float) or refresh <= 0
    ):
        raise ConfigurationError(
            f"Parameter 'runner_refresh_interval' must be a positive number, got {refresh!r}"
        )
    return values
