"""Global settings (``settings.yml``, §3): defaults, both YAML styles, normalisation, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import smart_proxy_dynflow.settings as dynflow_settings
from smart_proxy import settings as proxy_settings
from smart_proxy.settings import (
    ProxySettings,
    SettingsError,
    load_proxy_settings,
    normalise_keys,
    read_settings_file,
)


def _config(tmp_path: Path, text: str) -> Path:
    (tmp_path / "settings.yml").write_text(text, encoding="utf-8")
    return tmp_path


def test_defaults(tmp_path: Path) -> None:
    settings = load_proxy_settings(_config(tmp_path, "---\n"))
    assert settings.settings_directory == str(tmp_path / "settings.d")
    assert settings.http_port is None
    assert settings.https_port == 8443
    assert settings.log_file == "/var/log/foreman-proxy/proxy.log"
    assert settings.log_level == "INFO"
    assert settings.bind_host == ["*"]
    assert settings.trusted_hosts is None
    assert settings.forward_verify is True
    assert settings.foreman_url is None
    assert settings.ssl_disabled_ciphers == [] and settings.tls_disabled_versions == []
    assert (settings.file_rolling_size, settings.file_rolling_age, settings.file_rolling_keep) == (
        0,
        "weekly",
        6,
    )
    assert settings.file_logging_pattern == "%d %.8X{request} [%.1l] %m"
    assert settings.system_logging_pattern == "%m"
    assert (settings.log_buffer, settings.log_buffer_errors) == (2000, 1000)
    assert settings.dns_resolv_timeouts == [5, 8, 13]
    assert settings.http_enabled is False and settings.https_enabled is False
    assert settings.source == str(tmp_path / "settings.yml")
    assert settings.config_dir == str(tmp_path)
    # Built in code, the packaged layout applies.
    assert ProxySettings().settings_directory == "/etc/foreman-proxy/settings.d"


@pytest.mark.parametrize("style", ["ruby", "plain"])
def test_both_yaml_styles(tmp_path: Path, style: str) -> None:
    prefix = ":" if style == "ruby" else ""
    settings = load_proxy_settings(
        _config(
            tmp_path,
            f"---\n{prefix}http_port: 8000\n{prefix}bind_host: 127.0.0.1\n"
            f"{prefix}foreman_url: https://foreman.example.com\n"
            f"{prefix}trusted_hosts:\n  - Foreman.Example.COM\n  - proxy.example.com\n"
            f"{prefix}tls_disabled_versions: [1.2]\n{prefix}log_level: debug\n"
            f"{prefix}settings_directory: /srv/proxy/settings.d\n{prefix}custom_key: 42\n",
        )
    )
    assert settings.http_port == 8000
    assert settings.http_enabled is True
    assert settings.bind_host == ["127.0.0.1"]
    assert settings.foreman_url == "https://foreman.example.com/"
    assert settings.trusted_hosts == ["foreman.example.com", "proxy.example.com"]
    assert settings.tls_disabled_versions == ["1.2"]
    assert settings.log_level == "DEBUG"
    assert settings.settings_directory == "/srv/proxy/settings.d"
    assert settings.get("custom_key") == 42
    assert settings.get("http_port") == 8000
    assert settings.get("absent", "fallback") == "fallback"


def test_foreman_url_keeps_a_single_trailing_slash() -> None:
    assert ProxySettings(foreman_url="https://f.example.com/").foreman_url == (
        "https://f.example.com/"
    )
    assert ProxySettings(foreman_url="http://f:3000/sub").foreman_url == "http://f:3000/sub/"


def test_bind_host_string_or_list() -> None:
    assert ProxySettings(bind_host="::").bind_host == ["::"]
    assert ProxySettings(bind_host=["127.0.0.1", "::1"]).bind_host == ["127.0.0.1", "::1"]
    assert ProxySettings(bind_host=None).bind_host == ["*"]
    with pytest.raises(ValueError, match="bind_host"):
        ProxySettings(bind_host=[])


def test_trusted_hosts_unset_versus_empty() -> None:
    assert ProxySettings().trusted_hosts is None
    assert ProxySettings(trusted_hosts=[]).trusted_hosts == []
    assert ProxySettings(trusted_hosts="Single.Example.com").trusted_hosts == ["single.example.com"]


def test_https_needs_all_three_files() -> None:
    files = {"ssl_certificate": "c.pem", "ssl_private_key": "k.pem", "ssl_ca_file": "ca.pem"}
    assert ProxySettings(**files).https_enabled is True
    for missing in files:
        partial = {**files, missing: None}
        assert ProxySettings(**partial).https_enabled is False
    assert ProxySettings(**{**files, "ssl_ca_file": ""}).https_enabled is False


def test_foreman_tls_fallbacks() -> None:
    base = ProxySettings(ssl_certificate="c.pem", ssl_private_key="k.pem", ssl_ca_file="ca.pem")
    assert base.foreman_ca() == "ca.pem"
    assert base.foreman_client_cert() == ("c.pem", "k.pem")
    own = ProxySettings(
        ssl_certificate="c.pem",
        ssl_private_key="k.pem",
        ssl_ca_file="ca.pem",
        foreman_ssl_ca="fca.pem",
        foreman_ssl_cert="fc.pem",
        foreman_ssl_key="fk.pem",
    )
    assert own.foreman_ca() == "fca.pem"
    assert own.foreman_client_cert() == ("fc.pem", "fk.pem")
    assert ProxySettings(foreman_ssl_cert="fc.pem").foreman_client_cert() is None


def test_invalid_value_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "settings.yml"
    _config(tmp_path, "---\n:https_port: not-a-port\n")
    with pytest.raises(SettingsError) as info:
        load_proxy_settings(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{path}: https_port:")
    assert "\n" not in message


def test_invalid_log_level(tmp_path: Path) -> None:
    _config(tmp_path, ":log_level: CHATTY\n")
    with pytest.raises(SettingsError, match="log_level: invalid log level 'CHATTY'"):
        load_proxy_settings(tmp_path)


def test_file_rolling_age(tmp_path: Path) -> None:
    _config(tmp_path, ":file_rolling_age: Daily\n")
    assert load_proxy_settings(tmp_path).file_rolling_age == "daily"
    _config(tmp_path, ":file_rolling_age: fortnightly\n")
    with pytest.raises(SettingsError, match="file_rolling_age must be a number of seconds"):
        load_proxy_settings(tmp_path)


def test_yaml_error_names_file_and_line(tmp_path: Path) -> None:
    _config(tmp_path, "---\n:http_port: 8000\n:bind_host: [unclosed\n")
    with pytest.raises(SettingsError) as info:
        load_proxy_settings(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'settings.yml'}: invalid YAML at line")
    assert "\n" not in str(info.value)


def test_not_a_mapping(tmp_path: Path) -> None:
    _config(tmp_path, "- just\n- a list\n")
    with pytest.raises(SettingsError, match="expected a mapping of settings, got list"):
        load_proxy_settings(tmp_path)


def test_missing_file_or_directory(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="settings file not found"):
        load_proxy_settings(tmp_path)
    with pytest.raises(SettingsError, match="does not exist"):
        load_proxy_settings(tmp_path / "nope")


def test_read_settings_file_normalises_nested_keys(tmp_path: Path) -> None:
    path = tmp_path / "x.yml"
    path.write_text(":a:\n  :b: 1\n  c: [{':d': 2}]\nplain: 3\n")
    assert read_settings_file(path) == {"a": {"b": 1, "c": [{"d": 2}]}, "plain": 3}
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    assert read_settings_file(empty) == {}
    assert normalise_keys({":x": [{":y": 1}]}) == {"x": [{"y": 1}]}


def test_dynflow_settings_reuse_the_shared_helpers() -> None:
    assert dynflow_settings.SettingsError is proxy_settings.SettingsError
    assert dynflow_settings.read_settings_file is proxy_settings.read_settings_file
    assert dynflow_settings.normalise_keys is proxy_settings.normalise_keys
