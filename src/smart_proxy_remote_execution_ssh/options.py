"""The options of one SSH job: the action input (§3) merged with the plugin settings (§2.1).

:meth:`ScriptOptions.from_input` validates the input Foreman sends and fills in defaults from
the plugin settings. Secrets (``secrets.ssh_password``, ``secrets.key_passphrase`` and
``secrets.effective_user_password``) are stored sealed (:mod:`smart_proxy_dynflow.secret_box`):
they are opened here, with the core's box, and only here; they are kept out of ``repr()``.

``connection_options`` in the input (``retry_interval``, ``retry_count``, once ``timeout``) are
foreman-tasks' settings for retrying the *trigger* of the task on the proxy; the original plugin
ignores them, and so does this one. How the proxy connects to the host is the plugin's
business: ``connect_timeout`` (per attempt, default 30 s) and, off by default,
``connect_retries`` more attempts ``connect_retry_interval`` seconds apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smart_proxy_dynflow.secret_box import SecretBox, open_secrets

EFFECTIVE_USER_METHODS = ("sudo", "dzdo", "su")

DEFAULT_SSH_USER = "root"
DEFAULT_SSH_PORT = 22
DEFAULT_REMOTE_WORKING_DIR = "/var/tmp"
DEFAULT_IDENTITY_KEY_FILE = "~/.ssh/id_rsa_foreman_proxy"
DEFAULT_KNOWN_HOSTS_FILE = "~/.ssh/known_hosts"
DEFAULT_CONNECT_TIMEOUT = 30.0
"""Seconds one connection attempt (TCP connect, key exchange and authentication) may take."""
DEFAULT_CONNECT_RETRIES = 0
"""Extra connection attempts after a network error (setting ``connect_retries``): none, as
the original: Foreman shows an unreachable host at once."""
DEFAULT_CONNECT_RETRY_INTERVAL = 15.0


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "y", "t")
    return bool(value)


def _optional_str(value: Any) -> str | None:
    if value is None:
        return None
    value = str(value)
    return value or None


def _number(name: str, value: Any, *, minimum: float = 0) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be at least {minimum:g}, got {value!r}")
    return number


@dataclass
class ScriptOptions:
    """Everything a :class:`~smart_proxy_remote_execution_ssh.script_runner.ScriptRunner` needs."""

    hostname: str
    script: str
    ssh_user: str = DEFAULT_SSH_USER
    ssh_port: int = DEFAULT_SSH_PORT
    effective_user: str | None = None
    effective_user_method: str = "sudo"
    ssh_password: str | None = field(default=None, repr=False)
    key_passphrase: str | None = field(default=None, repr=False)
    effective_user_password: str | None = field(default=None, repr=False)
    remote_working_dir: str = DEFAULT_REMOTE_WORKING_DIR
    cleanup_working_dirs: bool = True
    execution_timeout_interval: float | None = None
    first_execution: bool = False
    connect_attempts: int = 1
    """Connection attempts (at least one): 1 + the ``connect_retries`` setting."""
    connect_retry_interval: float = DEFAULT_CONNECT_RETRY_INTERVAL
    """Seconds between two connection attempts (setting ``connect_retry_interval``)."""
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT
    """Seconds one connection attempt may take; None for no limit."""
    ssh_identity_key_file: str = os.path.expanduser(DEFAULT_IDENTITY_KEY_FILE)
    kerberos_auth: bool = False
    ssh_ca_known_hosts_file: str | None = None
    known_hosts_file: str = os.path.expanduser(DEFAULT_KNOWN_HOSTS_FILE)
    host_public_key: str | None = None
    """The host's public key (OpenSSH format): when given, only this key is accepted."""

    @property
    def user_switch(self) -> bool:
        """True when the script runs as another user than the SSH user."""
        return bool(self.effective_user) and self.effective_user != self.ssh_user

    @classmethod
    def from_input(
        cls,
        input: Mapping[str, Any],
        settings: Mapping[str, Any] | None = None,
        *,
        box: SecretBox | None = None,
    ) -> ScriptOptions:
        """Build the options of one job; raises ValueError for an invalid input (also for
        sealed secrets that ``box`` cannot open: :class:`~smart_proxy_dynflow.secret_box.
        SecretsError`)."""
        settings = settings or {}
        hostname = input.get("hostname")
        if not hostname or not str(hostname).strip():
            raise ValueError("Missing required input 'hostname'")
        script = input.get("script")
        if script is None:
            raise ValueError("Missing required input 'script'")
        secrets = input.get("secrets") or {}
        if not isinstance(secrets, Mapping):
            raise ValueError("Input 'secrets' must be a mapping")
        secrets = open_secrets({"secrets": dict(secrets)}, box)["secrets"]

        ssh_user = _optional_str(input.get("ssh_user")) or _optional_str(settings.get("ssh_user"))
        ssh_user = ssh_user or DEFAULT_SSH_USER

        port_value = input.get("ssh_port")
        if port_value is None or port_value == "":
            port_value = settings.get("ssh_port", DEFAULT_SSH_PORT)
        try:
            ssh_port = int(port_value)
        except (TypeError, ValueError):
            raise ValueError(f"ssh_port must be an integer, got {port_value!r}") from None
        if not 0 < ssh_port < 65536:
            raise ValueError(f"ssh_port must be between 1 and 65535, got {ssh_port}")

        method = _optional_str(input.get("effective_user_method")) or "sudo"
        if method not in EFFECTIVE_USER_METHODS:
            raise ValueError(f"effective_user_method '{method}' not supported")

        remote_working_dir = (
            _optional_str(input.get("remote_working_dir"))
            or _optional_str(settings.get("remote_working_dir"))
            or DEFAULT_REMOTE_WORKING_DIR
        )
        if not remote_working_dir.startswith("/"):
            raise ValueError(f"remote_working_dir must be absolute, got {remote_working_dir!r}")
        remote_working_dir = remote_working_dir.rstrip("/") or "/"

        cleanup = input.get("cleanup_working_dirs")
        if cleanup is None:
            cleanup = settings.get("cleanup_working_dirs", True)

        # input["connection_options"] is Foreman's trigger-retry policy: not ours (module doc).
        timeout = _number("connect_timeout", settings.get("connect_timeout"))
        if timeout is None:
            timeout = DEFAULT_CONNECT_TIMEOUT
        retries = _number("connect_retries", settings.get("connect_retries"))
        retry_interval = _number("connect_retry_interval", settings.get("connect_retry_interval"))

        host_public_key = _optional_str(input.get("host_public_key"))
        if host_public_key is not None:
            host_public_key = host_public_key.strip()
            try:
                # Not at the top: this module is loaded with the plugin, also by a Smart Proxy
                # relaying to an external core, which never needs asyncssh.
                import asyncssh  # noqa: PLC0415 - defers asyncssh to a pinned host key

                asyncssh.import_public_key(host_public_key)
            except (asyncssh.KeyImportError, ValueError):
                raise ValueError(
                    "host_public_key must be a public key in OpenSSH format "
                    "('<algorithm> <base64>'), got "
                    f"{host_public_key[:40]!r}"
                ) from None

        key_file = settings.get("ssh_identity_key_file") or DEFAULT_IDENTITY_KEY_FILE
        known_hosts_file = settings.get("known_hosts_file") or DEFAULT_KNOWN_HOSTS_FILE
        ca_file = _optional_str(settings.get("ssh_ca_known_hosts_file"))

        return cls(
            hostname=str(hostname).strip(),
            script=str(script).replace("\r", ""),
            ssh_user=ssh_user,
            ssh_port=ssh_port,
            effective_user=_optional_str(input.get("effective_user")),
            effective_user_method=method,
            ssh_password=_optional_str(secrets.get("ssh_password")),
            key_passphrase=_optional_str(secrets.get("key_passphrase")),
            effective_user_password=_optional_str(secrets.get("effective_user_password")),
            remote_working_dir=remote_working_dir,
            cleanup_working_dirs=_truthy(cleanup),
            execution_timeout_interval=_number(
                "execution_timeout_interval", input.get("execution_timeout_interval")
            ),
            first_execution=_truthy(input.get("first_execution", False)),
            connect_attempts=1 + int(retries if retries is not None else DEFAULT_CONNECT_RETRIES),
            connect_retry_interval=(
                retry_interval if retry_interval is not None else DEFAULT_CONNECT_RETRY_INTERVAL
            ),
            connect_timeout=timeout or None,
            ssh_identity_key_file=os.path.expanduser(str(key_file)),
            kerberos_auth=_truthy(settings.get("kerberos_auth", False)),
            ssh_ca_known_hosts_file=os.path.expanduser(ca_file) if ca_file else None,
            known_hosts_file=os.path.expanduser(str(known_hosts_file)),
            host_public_key=host_public_key,
        )
