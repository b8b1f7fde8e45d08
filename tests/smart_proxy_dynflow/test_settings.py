"""Settings of the standalone core: defaults, YAML styles, directory precedence, validation."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from smart_proxy_dynflow.settings import (
    DEFAULT_DATABASE,
    CoreSettings,
    SettingsError,
    load_settings,
    normalise_db_url,
    read_settings_file,
)
from tests.support.certs import make_pki


@pytest.fixture(autouse=True)
def no_db_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYNFLOW_DB_CONN_STRING", raising=False)


def _dir(
    base: Path, name: str, settings: str | None, plugins: dict[str, str] | None = None
) -> Path:
    directory = base / name
    directory.mkdir(parents=True)
    if settings is not None:
        (directory / "settings.yml").write_text(settings)
    if plugins:
        (directory / "settings.d").mkdir()
        for stem, text in plugins.items():
            (directory / "settings.d" / f"{stem}.yml").write_text(text)
    return directory


def test_defaults() -> None:
    settings = CoreSettings()
    assert settings.database == DEFAULT_DATABASE == "/var/lib/foreman-proxy/dynflow/dynflow.sqlite"
    assert settings.db_url == "sqlite+aiosqlite:////var/lib/foreman-proxy/dynflow/dynflow.sqlite"
    assert settings.foreman_url == "https://127.0.0.1:3000"
    assert settings.foreman_ssl_ca is None and settings.foreman_ca() is None
    assert settings.foreman_client_cert() is None
    assert settings.console_auth is True
    assert (settings.listen, settings.port, settings.use_https) == ("127.0.0.1", 8008, False)
    assert settings.ssl_disabled_ciphers == [] and settings.tls_disabled_versions == []
    assert settings.daemonize is False
    assert settings.pid_file == "/var/run/foreman-proxy/smart_proxy_dynflow_core.pid"
    assert settings.log_file == "/var/log/foreman-proxy/smart_proxy_dynflow_core.log"
    assert settings.log_level == "ERROR"
    assert (settings.file_rolling_size, settings.file_rolling_age) == (0, "weekly")
    assert settings.file_rolling_keep == 6
    assert settings.file_logging_pattern == "%d %.8X{request} [%.1l] %m"
    assert settings.system_logging_pattern == "%.8X{request} [%.1l] %m"
    assert settings.execution_plan_cleaner_age == 1800
    assert settings.plugins == {}
    assert settings.pool_size == 5
    assert settings.runner_refresh_interval == 1.0
    assert (settings.callback_retry_interval, settings.callback_retry_max_interval) == (2.0, 300.0)
    assert settings.callback_retry_window == 600.0
    assert settings.max_body_size == 256 * 1024 * 1024


def test_no_settings_anywhere_gives_defaults(tmp_path: Path) -> None:
    settings = load_settings(default_dirs=[tmp_path / "missing", tmp_path])
    assert settings == CoreSettings()
    assert settings.sources == []


def test_ruby_symbol_and_plain_keys(tmp_path: Path) -> None:
    ruby = _dir(
        tmp_path,
        "ruby",
        "---\n:port: 9000\n:console_auth: false\n:plugins:\n  :rex:\n    :ssh_user: admin\n",
    )
    settings = load_settings(default_dirs=[ruby])
    assert settings.port == 9000
    assert settings.console_auth is False
    assert settings.plugins == {"rex": {"ssh_user": "admin"}}

    plain = _dir(tmp_path, "plain", "port: 9001\nlisten: 0.0.0.0\nlog_level: debug\n")
    settings = load_settings(default_dirs=[plain])
    assert (settings.port, settings.listen, settings.log_level) == (9001, "0.0.0.0", "DEBUG")


def test_nested_keys_are_normalised(tmp_path: Path) -> None:
    path = tmp_path / "x.yml"
    path.write_text(":a:\n  :b:\n    - :c: 1\n      d: 2\n")
    assert read_settings_file(path) == {"a": {"b": [{"c": 1, "d": 2}]}}


def test_directory_precedence_later_wins_key_by_key(tmp_path: Path) -> None:
    etc = _dir(tmp_path, "etc", ":port: 9000\n:listen: 10.0.0.1\n:log_level: INFO\n")
    home = _dir(tmp_path, "home", ":port: 9001\n")
    repo = _dir(tmp_path, "repo", ":log_level: DEBUG\n")
    explicit = _dir(tmp_path, "explicit", ":listen: 10.0.0.2\n")
    settings = load_settings(str(explicit), default_dirs=[etc, home, tmp_path / "none", repo])
    assert settings.port == 9001  # home over etc
    assert settings.log_level == "DEBUG"  # repo over etc
    assert settings.listen == "10.0.0.2"  # --config-dir last
    assert settings.sources == [
        str(etc / "settings.yml"),
        str(home / "settings.yml"),
        str(repo / "settings.yml"),
        str(explicit / "settings.yml"),
    ]


def test_one_config_uses_only_the_last_directory_with_settings(tmp_path: Path) -> None:
    etc = _dir(tmp_path, "etc", ":port: 9000\n:listen: 10.0.0.1\n")
    home = _dir(tmp_path, "home", ":port: 9001\n")
    no_settings = _dir(tmp_path, "empty", None, plugins={"ignored": "a: 1\n"})
    settings = load_settings(one_config=True, default_dirs=[etc, home, no_settings])
    assert settings.port == 9001
    assert settings.listen == "127.0.0.1"  # etc was not read at all
    assert settings.plugins == {}
    explicit = _dir(tmp_path, "explicit", ":log_level: WARN\n")
    settings = load_settings(explicit, one_config=True, default_dirs=[etc, home])
    assert (settings.port, settings.log_level) == (8008, "WARN")


def test_settings_d_files_become_plugins(tmp_path: Path) -> None:
    first = _dir(
        tmp_path,
        "first",
        ":port: 9000\n",
        plugins={
            "remote_execution_ssh": ":ssh_user: root\n:remote_working_dir: /var/tmp\n",
            "dynflow": ":enabled: true\n",
        },
    )
    second = _dir(
        tmp_path,
        "second",
        "port: 9001\n",
        plugins={"remote_execution_ssh": "ssh_user: foreman\n", "empty": ""},
    )
    settings = load_settings(default_dirs=[first, second])
    assert settings.plugins == {
        "dynflow": {"enabled": True},
        "empty": {},
        "remote_execution_ssh": {"ssh_user": "foreman", "remote_working_dir": "/var/tmp"},
    }
    assert settings.plugin("remote_execution_ssh")["ssh_user"] == "foreman"
    assert settings.plugin("missing") == {}
    assert str(second / "settings.d" / "empty.yml") in settings.sources


def test_database_variants(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert CoreSettings(database=None).database == DEFAULT_DATABASE
    assert CoreSettings(database="  ").database == DEFAULT_DATABASE
    with caplog.at_level(logging.WARNING):
        memory = CoreSettings(database=":memory:")
    assert "in-memory database" in caplog.text
    assert memory.db_url == "sqlite+aiosqlite:///:memory:"
    assert memory.database_path is None

    monkeypatch.chdir(tmp_path)
    relative = CoreSettings(database="./var/dynflow.sqlite")
    assert relative.db_url == f"sqlite+aiosqlite:///{tmp_path}/var/dynflow.sqlite"
    relative.ensure_database_dir()
    assert (tmp_path / "var").is_dir()

    monkeypatch.setenv("DYNFLOW_DB_CONN_STRING", "postgres://dyn:pw@db.example.com/dynflow")
    assert relative.db_url == "postgresql+asyncpg://dyn:pw@db.example.com/dynflow"
    assert relative.database_path is None
    monkeypatch.setenv("DYNFLOW_DB_CONN_STRING", "sqlite:////srv/dynflow.db")
    assert relative.db_url == "sqlite+aiosqlite:////srv/dynflow.db"


def test_normalise_db_url() -> None:
    assert normalise_db_url("postgresql://h/db") == "postgresql+asyncpg://h/db"
    assert normalise_db_url("postgresql+asyncpg://h/db") == "postgresql+asyncpg://h/db"
    assert normalise_db_url("sqlite:///rel.db") == "sqlite+aiosqlite:///rel.db"
    with pytest.raises(ValueError):
        normalise_db_url("/just/a/path")


def test_database_env_through_load_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = _dir(tmp_path, "conf", ":database: /srv/ignored.sqlite\n")
    monkeypatch.setenv("DYNFLOW_DB_CONN_STRING", "postgresql://localhost/dynflow")
    assert load_settings(default_dirs=[conf]).db_url == "postgresql+asyncpg://localhost/dynflow"


def test_foreman_tls_falls_back_to_ssl_settings() -> None:
    settings = CoreSettings(
        ssl_ca_file="/ca.pem", ssl_certificate="/cert.pem", ssl_private_key="/key.pem"
    )
    assert settings.foreman_ca() == "/ca.pem"
    assert settings.foreman_client_cert() == ("/cert.pem", "/key.pem")
    assert settings.foreman_cert_file() == "/cert.pem"
    own = settings.model_copy(
        update={
            "foreman_ssl_ca": "/f-ca.pem",
            "foreman_ssl_cert": "/f.pem",
            "foreman_ssl_key": "/fk",
        }
    )
    assert own.foreman_ca() == "/f-ca.pem"
    assert own.foreman_client_cert() == ("/f.pem", "/fk")


def test_use_https_requires_existing_files(tmp_path: Path) -> None:
    conf = _dir(tmp_path, "conf", ":use_https: true\n:ssl_certificate: /nowhere/cert.pem\n")
    with pytest.raises(SettingsError) as error:
        load_settings(default_dirs=[conf])
    message = str(error.value)
    assert "use_https requires ssl_ca_file, ssl_private_key" in message
    assert str(conf / "settings.yml") in message
    assert "\n" not in message

    absent = _dir(
        tmp_path,
        "absent",
        ":use_https: true\n:ssl_ca_file: /nowhere/ca.pem\n"
        ":ssl_certificate: /nowhere/cert.pem\n:ssl_private_key: /nowhere/key.pem\n",
    )
    with pytest.raises(SettingsError, match=r"file not found: ssl_ca_file \(/nowhere/ca.pem\)"):
        load_settings(default_dirs=[absent])

    pki = make_pki(tmp_path)
    ok = _dir(
        tmp_path,
        "ok",
        f":use_https: true\n:ssl_ca_file: {pki.ca_cert}\n:ssl_certificate: {pki.server_cert}\n"
        f":ssl_private_key: {pki.server_key}\n:tls_disabled_versions: [1.2]\n",
    )
    settings = load_settings(default_dirs=[ok])
    assert settings.use_https is True
    assert settings.tls_disabled_versions == ["1.2"]  # YAML float read as the version string


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (":port: [1, 2\n", "invalid YAML at line"),
        ("- just\n- a list\n", "expected a mapping of settings, got list"),
        ("plain text\n", "expected a mapping of settings, got str"),
    ],
)
def test_invalid_files_raise_settings_error(tmp_path: Path, text: str, problem: str) -> None:
    conf = _dir(tmp_path, "conf", text)
    with pytest.raises(SettingsError) as error:
        load_settings(default_dirs=[conf])
    assert str(conf / "settings.yml") in str(error.value)
    assert problem in str(error.value)


def test_invalid_plugin_file_raises_settings_error(tmp_path: Path) -> None:
    conf = _dir(tmp_path, "conf", ":port: 1\n", plugins={"broken": "a: [\n"})
    with pytest.raises(SettingsError, match=r"broken\.yml: invalid YAML"):
        load_settings(default_dirs=[conf])


def test_wrong_types_are_rejected(tmp_path: Path) -> None:
    conf = _dir(tmp_path, "conf", ":port: eighty\n:pool_size: 0\n:log_level: LOUD\n")
    with pytest.raises(SettingsError) as error:
        load_settings(default_dirs=[conf])
    message = str(error.value)
    assert message.startswith("invalid settings (from ")
    assert "port: Input should be a valid integer" in message and "'eighty'" in message
    assert "pool_size: Input should be greater than or equal to 1" in message
    assert "log_level: invalid log level 'LOUD'" in message
    with pytest.raises(SettingsError, match="foreman_url must be an http"):
        load_settings(default_dirs=[_dir(tmp_path, "url", ":foreman_url: foreman.example\n")])


def test_unknown_keys_only_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    conf = _dir(tmp_path, "conf", ":port: 9000\n:frobnicate: 1\n:standalone: true\n")
    with caplog.at_level(logging.WARNING):
        settings = load_settings(default_dirs=[conf])
    assert settings.port == 9000
    assert "Ignoring unknown settings: frobnicate" in caplog.text
    assert "standalone" not in caplog.text


def test_the_retired_callback_retry_timeout_is_explained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = _dir(tmp_path, "conf", ":callback_retry_timeout: 86400\n")
    with caplog.at_level(logging.WARNING):
        settings = load_settings(default_dirs=[conf])
    assert settings.callback_retry_window == 600.0
    assert "callback_retry_timeout is no longer used" in caplog.text
    assert "callback_retry_window" in caplog.text


def test_explicit_config_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="config directory .*missing does not exist"):
        load_settings(tmp_path / "missing", default_dirs=[])
    empty = _dir(tmp_path, "empty", None)
    with pytest.raises(SettingsError, match="has no settings.yml"):
        load_settings(empty, default_dirs=[])


def test_repository_development_config() -> None:
    repo_config = Path(__file__).resolve().parents[2] / "config" / "core"
    settings = load_settings(default_dirs=[repo_config])
    assert settings.log_file == "STDOUT"
    assert settings.log_level == "INFO"
    assert settings.use_https is False
    assert (settings.listen, settings.port) == ("127.0.0.1", 8008)
    assert settings.database == "./var/dynflow.sqlite"


def test_example_config_lists_valid_keys(tmp_path: Path) -> None:
    repo_config = Path(__file__).resolve().parents[2] / "config" / "core"
    lines = (repo_config / "settings.yml.example").read_text().splitlines()
    uncommented = "\n".join(line[1:] if line.startswith("#:") else line for line in lines)
    conf = _dir(tmp_path, "conf", uncommented.replace(":use_https: true", ":use_https: false"))
    data = read_settings_file(conf / "settings.yml")
    assert set(data) == set(CoreSettings.model_fields) - {"plugins"}
    load_settings(default_dirs=[conf])
