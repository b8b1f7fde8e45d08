"""ScriptOptions.from_input: the job input of §3 merged with the plugin settings."""

from __future__ import annotations

import os

import pytest

from smart_proxy_dynflow.secret_box import SecretBox, seal_secrets
from smart_proxy_remote_execution_ssh.options import ScriptOptions

BASE = {"hostname": "host.example.com", "script": "echo hi"}


def test_defaults() -> None:
    options = ScriptOptions.from_input(BASE, {})
    assert options.hostname == "host.example.com"
    assert options.script == "echo hi"
    assert options.ssh_user == "root"
    assert options.ssh_port == 22
    assert options.effective_user is None
    assert options.effective_user_method == "sudo"
    assert options.remote_working_dir == "/var/tmp"
    assert options.cleanup_working_dirs is True
    assert options.execution_timeout_interval is None
    assert options.first_execution is False
    assert (options.connect_attempts, options.connect_retry_interval) == (1, 15.0)
    assert options.connect_timeout == 30.0
    assert options.ssh_identity_key_file == os.path.expanduser("~/.ssh/id_rsa_foreman_proxy")
    assert options.known_hosts_file == os.path.expanduser("~/.ssh/known_hosts")
    assert options.ssh_ca_known_hosts_file is None
    assert options.kerberos_auth is False
    assert not options.user_switch


def test_ssh_user_setting_is_the_default() -> None:
    assert ScriptOptions.from_input(BASE, {"ssh_user": "foreman"}).ssh_user == "foreman"
    assert (
        ScriptOptions.from_input({**BASE, "ssh_user": "admin"}, {"ssh_user": "foreman"}).ssh_user
        == "admin"
    )
    assert ScriptOptions.from_input({**BASE, "ssh_user": None}, {}).ssh_user == "root"


def test_input_overrides_settings() -> None:
    options = ScriptOptions.from_input(
        {
            **BASE,
            "ssh_port": "2222",
            "remote_working_dir": "/home/x/",
            "cleanup_working_dirs": False,
            "execution_timeout_interval": 30,
            "first_execution": True,
            "effective_user": "app",
            "effective_user_method": "su",
            "connection_options": {"retry_count": 3, "retry_interval": 0.5, "timeout": 7},
        },
        {
            "remote_working_dir": "/srv",
            "cleanup_working_dirs": True,
            "ssh_identity_key_file": "/etc/key",
            "kerberos_auth": True,
            "ssh_ca_known_hosts_file": "/etc/ca_known_hosts",
            "known_hosts_file": "/var/lib/kh",
            "connect_timeout": 99,
        },
    )
    assert options.ssh_port == 2222
    assert options.remote_working_dir == "/home/x"
    assert options.cleanup_working_dirs is False
    assert options.execution_timeout_interval == 30
    assert options.first_execution is True
    assert options.effective_user == "app" and options.effective_user_method == "su"
    assert options.user_switch
    # connection_options are Foreman's trigger retries: the settings decide how we connect.
    assert (options.connect_attempts, options.connect_timeout) == (1, 99)
    assert options.ssh_identity_key_file == "/etc/key"
    assert options.kerberos_auth is True
    assert options.ssh_ca_known_hosts_file == "/etc/ca_known_hosts"
    assert options.known_hosts_file == "/var/lib/kh"


def test_settings_fill_in() -> None:
    options = ScriptOptions.from_input(
        BASE, {"remote_working_dir": "/srv", "cleanup_working_dirs": False, "connect_timeout": 5}
    )
    assert options.remote_working_dir == "/srv"
    assert options.cleanup_working_dirs is False
    assert options.connect_timeout == 5


def test_carriage_returns_are_stripped() -> None:
    assert ScriptOptions.from_input({**BASE, "script": "a\r\nb\r\n"}).script == "a\nb\n"


def test_effective_user_equal_to_ssh_user_is_no_switch() -> None:
    options = ScriptOptions.from_input({**BASE, "ssh_user": "app", "effective_user": "app"})
    assert not options.user_switch


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hostname": None}, "Missing required input 'hostname'"),
        ({"hostname": "  "}, "Missing required input 'hostname'"),
        ({"script": None}, "Missing required input 'script'"),
        ({"effective_user_method": "pbrun"}, "effective_user_method 'pbrun' not supported"),
        ({"ssh_port": "ssh"}, "ssh_port must be an integer"),
        ({"ssh_port": 70000}, "ssh_port must be between 1 and 65535"),
        ({"remote_working_dir": "tmp"}, "remote_working_dir must be absolute"),
        ({"execution_timeout_interval": "soon"}, "execution_timeout_interval must be a number"),
        ({"secrets": "pw"}, "Input 'secrets' must be a mapping"),
        ({"host_public_key": "ssh-ed25519 not-base64!"}, "host_public_key must be a public key"),
    ],
)
def test_invalid_input(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScriptOptions.from_input({**BASE, **changes}, {})


def test_secrets_are_not_in_repr() -> None:
    options = ScriptOptions.from_input(
        {
            **BASE,
            "secrets": {
                "ssh_password": "s3cret-ssh",
                "key_passphrase": "s3cret-key",
                "effective_user_password": "s3cret-sudo",
            },
        }
    )
    assert options.ssh_password == "s3cret-ssh"
    assert options.key_passphrase == "s3cret-key"
    assert options.effective_user_password == "s3cret-sudo"
    text = repr(options) + str(options)
    assert "s3cret" not in text
    assert "host.example.com" in text


def test_empty_secrets_count_as_missing() -> None:
    options = ScriptOptions.from_input(
        {**BASE, "secrets": {"ssh_password": "", "effective_user_password": None}}
    )
    assert options.ssh_password is None and options.effective_user_password is None


@pytest.mark.parametrize(
    "connection_options",
    [
        {"retry_interval": 15, "retry_count": 4, "proxy_batch_triggering": True},  # Foreman's
        {"retry_interval": 0.1, "retry_count": 10, "timeout": 60},  # pre-2018, with timeout
        {"retry_count": -1},
        "garbage",
        None,
    ],
)
def test_connection_options_are_ignored(connection_options: object) -> None:
    """foreman-tasks' trigger-retry settings, which the original ignores: one attempt, the
    plugin's connect_timeout, whatever they say (and however malformed)."""
    options = ScriptOptions.from_input({**BASE, "connection_options": connection_options}, {})
    assert (options.connect_attempts, options.connect_timeout) == (1, 30.0)


def test_connect_retries_are_a_plugin_setting() -> None:
    settings = {"connect_retries": 2, "connect_retry_interval": 0.5, "connect_timeout": 4}
    options = ScriptOptions.from_input(
        {**BASE, "connection_options": {"retry_count": 9, "retry_interval": 99}}, settings
    )
    assert (options.connect_attempts, options.connect_retry_interval) == (3, 0.5)
    assert options.connect_timeout == 4


def test_sealed_secrets_are_opened_with_the_box() -> None:
    box = SecretBox.generate()
    stored = seal_secrets(
        {
            **BASE,
            "secrets": {
                "ssh_password": "MARKER-ssh",
                "key_passphrase": None,
                "effective_user_password": "MARKER-sudo",
            },
        },
        box,
    )
    assert "MARKER" not in repr(stored)
    options = ScriptOptions.from_input(stored, {}, box=box)
    assert (options.ssh_password, options.key_passphrase, options.effective_user_password) == (
        "MARKER-ssh",
        None,
        "MARKER-sudo",
    )
    assert "MARKER" not in repr(options)
    # The key file changed since the job was stored (or there is none): a clear error.
    with pytest.raises(ValueError, match="'ssh_password' cannot be opened with the key"):
        ScriptOptions.from_input(stored, {}, box=SecretBox.generate())
    with pytest.raises(ValueError, match="sealed, but this service has no secrets key"):
        ScriptOptions.from_input(stored, {})
