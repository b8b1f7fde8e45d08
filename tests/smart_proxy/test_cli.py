"""``smart-proxy`` as a real process (§2, §7, §11; §13 ``launcher_test``): listeners on real
sockets, plugins from entry points, systemd readiness, signals, startup errors.

Each test writes a config directory and a fake dist-info (``entry_points.txt`` naming test
plugins of ``tests/support/proxy_plugins.py``), puts it and the checkout on the child's
``PYTHONPATH`` and talks to the child over TCP only. Children are killed at the end of a test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smart_proxy.cli import BOTH_DISABLED, CONFIG_DIRS, STARTUP_ERROR, default_config_dir
from smart_proxy.root import VERSION
from tests.support import proxy_plugins
from tests.support.certs import Pki, make_pki
from tests.support.proxy_plugins import write_plugin_dist, write_settings_d, yaml_settings
from tests.support.services import free_port

ROOT = Path(__file__).resolve().parents[2]
PROG = "smart-proxy"
TIMEOUT = 20.0
ERROR_PREFIX = STARTUP_ERROR.format("")


def command() -> list[str]:
    script = Path(sys.executable).parent / PROG
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "smart_proxy.cli"]


class Proxy:
    """A config directory, the fake plugin distribution, and the child process."""

    def __init__(self, directory: Path, **settings: Any) -> None:
        self.dir = directory
        self.config = directory / "config"
        self.config.mkdir(parents=True, exist_ok=True)
        self.log_file = directory / "proxy.log"
        self.settings: dict[str, Any] = {
            "bind_host": "127.0.0.1",
            "log_file": str(self.log_file),
            "log_level": "DEBUG",
            **settings,
        }
        self.dist = write_plugin_dist(
            directory / "dist",
            {
                "hello": proxy_plugins.HelloPlugin,
                "computed": proxy_plugins.ComputedCapabilityPlugin,
                "broken_start": proxy_plugins.BrokenStartPlugin,
                "slow_start": proxy_plugins.SlowStartPlugin,
            },
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: socket.socket | None = None

    def write(self, files: dict[str, Any] | None = None, raw: str | None = None) -> None:
        text = raw if raw is not None else yaml_settings(self.settings)
        (self.config / "settings.yml").write_text(text, encoding="utf-8")
        write_settings_d(self.config / "settings.d", files or {})

    def start(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "PYTHONPATH")}
        env["PYTHONPATH"] = os.pathsep.join([str(self.dist), str(ROOT)])
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = self.dir / "notify.sock"
        self.notify.bind(str(notify_path))
        self.notify.settimeout(TIMEOUT)
        env["NOTIFY_SOCKET"] = str(notify_path)
        with (
            open(self.dir / "stdout.txt", "wb") as stdout,
            open(self.dir / "stderr.txt", "wb") as stderr,
        ):
            self.proc = subprocess.Popen(
                [*command(), "-c", str(self.config)],
                env=env,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        return self.proc

    def run(self) -> tuple[int, str]:
        """Start and wait for the exit: (exit code, stderr)."""
        proc = self.start()
        code = proc.wait(TIMEOUT)
        return code, self.stderr()

    def wait_notify(self, expected: bytes) -> None:
        assert self.notify is not None
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                message = self.notify.recv(4096)
            except TimeoutError:
                break
            if expected in message.split(b"\n"):
                return
        pytest.fail(f"no {expected!r} from the proxy; stderr: {self.stderr()}; log: {self.log()}")

    def stderr(self) -> str:
        return (self.dir / "stderr.txt").read_text(errors="replace")

    def log(self, path: Path | None = None) -> str:
        target = path or self.log_file
        return target.read_text(errors="replace") if target.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        if self.notify is not None:
            self.notify.close()


@pytest.fixture
def proxies() -> Iterator[list[Proxy]]:
    created: list[Proxy] = []
    yield created
    for proxy in created:
        proxy.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("cli-pki"))


def test_serves_http_and_https_until_sigterm(
    tmp_path: Path, proxies: list[Proxy], pki: Pki
) -> None:
    http_port, https_port = free_port(), free_port()
    proxy = Proxy(
        tmp_path,
        http_port=http_port,
        https_port=https_port,
        ssl_certificate=pki.server_cert,
        ssl_private_key=pki.server_key,
        ssl_ca_file=pki.ca_cert,
        trusted_hosts=[pki.client_cn],
    )
    proxies.append(proxy)
    proxy.write(
        {
            "hello": {"enabled": True, "greeting": "hi"},
            "computed": ":enabled: true\n:with_d: [unclosed\n",  # broken YAML
            "broken_start": {"enabled": "https"},
        }
    )
    proc = proxy.start()
    proxy.wait_notify(b"READY=1")
    http_url = f"http://127.0.0.1:{http_port}"
    https_url = f"https://localhost:{https_port}"
    trusted = pki.client_ssl_context(cert=pki.client_cert, key=pki.client_key)

    with httpx.Client(base_url=http_url, timeout=10) as http:
        features = http.get("/features")
        assert features.status_code == 200
        assert features.json() == ["hello", "logs"]
        assert features.headers["server"] == f"foreman-proxy/{VERSION}"
        version = http.get("/version").json()
        assert version == {"version": VERSION, "modules": {"hello": "1.4.2", "logs": VERSION}}
        assert http.get("/hello/").json() == {"greeting": "hi", "protocol": "http"}
        # 127.0.0.1 resolves to localhost, which is not a trusted host
        assert http.get("/v2/features").status_code == 403
        missing = http.get("/nowhere")
        assert (missing.status_code, missing.json()) == (
            404,
            {"error": "Requested url was not found"},
        )

    with httpx.Client(base_url=https_url, verify=trusted, timeout=10) as https:
        v2 = https.get("/v2/features")
        assert v2.status_code == 200
        features = v2.json()
        assert features["hello"]["state"] == "running"
        assert features["hello"]["settings"] == {"exposed_value": "shown", "greeting": "hi"}
        assert features["computed"]["state"] == "failed"
        assert features["broken_start"] == {
            "http_enabled": False,
            "https_enabled": False,
            "settings": {},
            "state": "failed",
            "capabilities": ["static_broken"],
        }
        assert https.get("/hello/secret").text == "secret"
        logs = https.get("/logs", params={"from_timestamp": 0}).json()
        failed = logs["info"]["failed_modules"]
        assert set(failed) == {"computed", "broken_start"}
        settings_d = proxy.config / "settings.d"
        assert failed["computed"].startswith(f"{settings_d / 'computed.yml'}: invalid YAML")
        assert failed["broken_start"] == "cannot bind the frobnicator"
        assert any(e["level"] == "ERROR" and "computed" in e["message"] for e in logs["logs"])

    untrusted = pki.client_ssl_context()  # no client certificate
    with httpx.Client(base_url=https_url, verify=untrusted, timeout=10) as https:
        assert https.get("/features").status_code == 200
        assert https.get("/v2/features").status_code == 403

    # SIGUSR1 reopens the log file after logrotate moved it
    rotated = tmp_path / "proxy.log.1"
    proxy.log_file.rename(rotated)
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + TIMEOUT
    while "Reopened log file" not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Reopened log file" in proxy.log()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    proxy.wait_notify(b"STOPPING=1")
    log = proxy.log(rotated) + proxy.log()
    assert "2 socket(s)" in log
    assert "Disabling all modules in the group ['broken_start'] due to a failure" in log
    assert "Stopped plugin 'hello'" in log and "Smart proxy stopped" in log
    assert proxy.stderr() == ""


def test_sigint_exits_zero(tmp_path: Path, proxies: list[Proxy]) -> None:
    proxy = Proxy(tmp_path, http_port=free_port(), log_file="STDOUT")
    proxies.append(proxy)
    proxy.write()
    proc = proxy.start()
    proxy.wait_notify(b"READY=1")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(TIMEOUT) == 0
    out = (tmp_path / "stdout.txt").read_text()
    assert "1 socket(s)" in out and "Couldn't find settings file" in out


def test_sigterm_while_a_plugin_is_starting(tmp_path: Path, proxies: list[Proxy]) -> None:
    proxy = Proxy(tmp_path, http_port=free_port())
    proxies.append(proxy)
    proxy.write({"slow_start": {"enabled": True}})
    proc = proxy.start()
    deadline = time.monotonic() + TIMEOUT
    while "slow_start is starting" not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    log = proxy.log()
    assert "slow_start stopped" in log  # the interrupted start was cleaned up
    assert "socket(s)" not in log  # never served
    assert proxy.stderr() == ""


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(ERROR_PREFIX), stderr
    return lines[0].removeprefix(ERROR_PREFIX)


def test_broken_settings_yml(tmp_path: Path, proxies: list[Proxy]) -> None:
    proxy = Proxy(tmp_path)
    proxies.append(proxy)
    proxy.write(raw=":http_port: 8000\n:bind_host: [unclosed\n")
    code, stderr = proxy.run()
    assert code == 1
    message = _one_error_line(stderr)
    assert message.startswith(f"{proxy.config / 'settings.yml'}: invalid YAML at line")


def test_invalid_setting_value(tmp_path: Path, proxies: list[Proxy]) -> None:
    proxy = Proxy(tmp_path, http_port="eighty")
    proxies.append(proxy)
    proxy.write()
    code, stderr = proxy.run()
    assert code == 1
    assert _one_error_line(stderr).startswith(f"{proxy.config / 'settings.yml'}: http_port:")


def test_both_protocols_disabled(tmp_path: Path, proxies: list[Proxy]) -> None:
    proxy = Proxy(tmp_path)  # no http_port, no TLS files
    proxies.append(proxy)
    proxy.write()
    code, stderr = proxy.run()
    assert code == 1
    assert _one_error_line(stderr) == BOTH_DISABLED
    assert f"Error during startup, terminating: {BOTH_DISABLED}" in proxy.log()


def test_unusable_tls_material(tmp_path: Path, proxies: list[Proxy], pki: Pki) -> None:
    proxy = Proxy(
        tmp_path,
        https_port=free_port(),
        ssl_certificate=str(tmp_path / "missing.pem"),
        ssl_private_key=pki.server_key,
        ssl_ca_file=pki.ca_cert,
    )
    proxies.append(proxy)
    proxy.write()
    code, stderr = proxy.run()
    assert code == 1
    assert "missing.pem" in _one_error_line(stderr)
    assert "Traceback" not in stderr


def test_port_in_use(tmp_path: Path, proxies: list[Proxy]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proxy = Proxy(tmp_path, http_port=port)
        proxies.append(proxy)
        proxy.write({"hello": {"enabled": True}})
        code, stderr = proxy.run()
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in _one_error_line(stderr)
    assert "Stopped plugin 'hello'" in proxy.log()  # started plugins are stopped again


def test_default_config_dir(tmp_path: Path) -> None:
    first, second, third = (tmp_path / name for name in ("etc", "config-proxy", "config"))
    candidates = (str(first), str(second), str(third))
    assert default_config_dir(candidates) == third  # none exists: the last one
    second.mkdir()
    assert default_config_dir(candidates) == second  # the first existing directory
    third.mkdir()
    (third / "settings.yml").write_text(json.dumps({"http_port": 8000}))
    assert default_config_dir(candidates) == third  # the first one with a settings.yml
    assert CONFIG_DIRS == ("/etc/foreman-proxy", "./config")
