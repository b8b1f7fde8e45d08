"""Settings of the `script` plugin and the activation checks of §2.2."""

from __future__ import annotations

from pathlib import Path

import pytest

from smart_proxy.validators import ConfigurationError
from smart_proxy_remote_execution_ssh.keygen import ensure_key
from smart_proxy_remote_execution_ssh.settings import DEFAULTS, check, effective


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "id_rsa_foreman_proxy"
    assert ensure_key(path)
    assert not ensure_key(path)  # an existing key is kept
    return path


def test_defaults_and_home_expansion():
    values = effective({})
    assert values["mode"] == "ssh" and values["ssh_user"] == "root"
    assert values["ssh_identity_key_file"] == str(Path("~/.ssh/id_rsa_foreman_proxy").expanduser())
    assert set(DEFAULTS) <= set(values)
    # No proxy-side connect retries unless asked for (the job's connection_options are
    # Foreman's trigger retries, not ours).
    assert (values["connect_timeout"], values["connect_retries"]) == (30, 0)


def test_a_valid_key_passes(key: Path):
    values = check({"ssh_identity_key_file": str(key)}, "INFO")
    assert values["ssh_log_level"] == "error"
    assert oct(key.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mode": "telepathy"}, "Mode has to be one of ssh, pull, pull-mqtt, given telepathy"),
        ({"mode": "pull-mqtt"}, "'mqtt_broker' is required when mode is pull-mqtt"),
        ({"ssh_log_level": "chatty"}, "Wrong value 'chatty' for ssh_log_level"),
        ({"ssh_user_ca_public_key_file": "/nonexistent/ca.pub"}, "doesn't exist"),
        ({"ssh_ca_known_hosts_file": "/nonexistent/known"}, "doesn't exist"),
        ({"runner_refresh_interval": "soon"}, "runner_refresh_interval"),
        ({"max_starting_jobs": 0}, "'max_starting_jobs' must be a positive integer, got 0"),
        ({"max_starting_jobs": "many"}, "'max_starting_jobs' must be a positive integer"),
        ({"connect_timeout": 0}, "'connect_timeout' must be a positive number of seconds"),
        ({"connect_retries": -1}, "'connect_retries' must be 0 or a positive integer, got -1"),
        ({"connect_retries": 1.5}, "'connect_retries' must be 0 or a positive integer"),
        ({"connect_retry_interval": "often"}, "'connect_retry_interval' must be a number"),
    ],
)
def test_invalid_settings_are_explained(key: Path, overrides, message):
    with pytest.raises(ConfigurationError, match=message):
        check({"ssh_identity_key_file": str(key), **overrides}, "INFO")


def test_missing_key_suggests_ssh_keygen(tmp_path: Path):
    with pytest.raises(ConfigurationError, match="ssh-keygen -t rsa -b 4096 -f .*-N ''"):
        check({"ssh_identity_key_file": str(tmp_path / "nope")})
    (tmp_path / "only-private").write_text("x")
    with pytest.raises(ConfigurationError, match=r"only-private.pub doesn't exist"):
        check({"ssh_identity_key_file": str(tmp_path / "only-private")})


def test_user_ca_needs_the_certificate(key: Path, tmp_path: Path):
    ca = tmp_path / "ca.pub"
    ca.write_text("ssh-ed25519 AAAA ca")
    with pytest.raises(ConfigurationError, match="-cert.pub doesn't exist"):
        check({"ssh_identity_key_file": str(key), "ssh_user_ca_public_key_file": str(ca)})
    key.with_name(key.name + "-cert.pub").write_text("cert")
    check({"ssh_identity_key_file": str(key), "ssh_user_ca_public_key_file": str(ca)})


@pytest.mark.parametrize("proxy_level", ["WARN", "ERROR", "warning", "FATAL"])
def test_ssh_log_level_no_more_verbose_than_the_proxy(key: Path, proxy_level: str):
    """The original crashed on WARN; here every level gives a clear answer."""
    with pytest.raises(ConfigurationError, match="more verbose"):
        check({"ssh_identity_key_file": str(key), "ssh_log_level": "debug"}, proxy_level)
    check({"ssh_identity_key_file": str(key), "ssh_log_level": "fatal"}, proxy_level)
