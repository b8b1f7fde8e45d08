"""``smart-proxy-dynflow-core`` as a real process (§8.3): config dir, plugins, logging, systemd
readiness, signals, HTTPS with the serial check (§2.2), daemonizing and restart durability.

Every test starts the command as a child process with its own config directory (``-1`` so the
checkout's ``config/`` is not mixed in) and talks to it over TCP only. The ``local_command``
test plugin (``tests/support/plugin_dist``) is put on the child's ``PYTHONPATH``; it is loaded
only when ``settings.d/local_command.yml`` enables it. Children (and their descendants) are
always killed at the end of a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.support.certs import make_pki
from tests.support.services import FakeForeman, free_port

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIST = ROOT / "tests" / "support" / "plugin_dist"
PROG = "smart-proxy-dynflow-core"
RUN_SCRIPT = "ForemanRemoteExecutionCore::Actions::RunScript"
CALLBACK_CLASS = "smart_proxy_dynflow.callback.CallbackAction"
START_TIMEOUT = 20.0


def command() -> list[str]:
    script = Path(sys.executable).parent / PROG
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "smart_proxy_dynflow.service"]


def child_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DYNFLOW_DB_CONN_STRING", "NOTIFY_SOCKET")
    }
    paths = [str(PLUGIN_DIST), str(ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def yaml_settings(values: dict[str, Any]) -> str:
    """Ruby-symbol style settings, as Foreman's installer writes them (JSON is valid YAML)."""
    return "---\n" + "".join(f":{key}: {json.dumps(value)}\n" for key, value in values.items())


class Service:
    """One config directory and the command started on it (possibly several times)."""

    def __init__(self, directory: Path, **settings: Any) -> None:
        self.dir = directory
        self.config_dir = directory / "config"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.port = int(settings.pop("port", None) or free_port())
        self.log_file = directory / "service.log"
        self.settings: dict[str, Any] = {
            "listen": "127.0.0.1",
            "port": self.port,
            "database": str(directory / "dynflow.sqlite"),
            "log_file": str(self.log_file),
            "log_level": "DEBUG",
            "runner_refresh_interval": 0.1,
            **settings,
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: list[int] = []  # daemonized processes (not our children)
        self.write()

    # ---- configuration ----------------------------------------------------------------------
    def write(self, plugins: dict[str, dict[str, Any]] | None = None) -> None:
        (self.config_dir / "settings.yml").write_text(yaml_settings(self.settings))
        for name, values in (plugins or {}).items():
            plugin_dir = self.config_dir / "settings.d"
            plugin_dir.mkdir(exist_ok=True)
            (plugin_dir / f"{name}.yml").write_text(yaml_settings(values))

    def enable_local_command(self) -> Service:
        self.write({"local_command": {"enabled": True}})
        return self

    @property
    def scheme(self) -> str:
        return "https" if self.settings.get("use_https") else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def log_text(self, path: Path | None = None) -> str:
        return (path or self.log_file).read_text(encoding="utf-8", errors="replace")

    # ---- processes --------------------------------------------------------------------------
    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.procs[-1]

    def spawn(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        run = len(self.procs)
        with (
            open(self.dir / f"stdout-{run}.txt", "wb") as stdout,
            open(self.dir / f"stderr-{run}.txt", "wb") as stderr,
        ):
            proc = subprocess.Popen(
                [*command(), "-1", "-c", str(self.config_dir), *args],
                env=child_env(**env),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                cwd=self.dir,
            )
        self.procs.append(proc)
        return proc

    def stderr(self, run: int = -1) -> str:
        index = run if run >= 0 else len(self.procs) + run
        return (self.dir / f"stderr-{index}.txt").read_text(errors="replace")

    def start(self, *args: str, **env: str) -> Service:
        self.spawn(*args, **env)
        self.wait_accepting(self.proc)
        return self

    def wait_accepting(self, proc: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(
                    f"{PROG} exited with {proc.returncode} during startup: {self.stderr()}"
                    f"\n--- log tail ---\n{self.log_tail()}"
                )
            if port_accepts(self.port):
                return
            time.sleep(0.02)
        raise AssertionError(f"{PROG} did not listen on {self.port} in {START_TIMEOUT} s")

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill_all(self) -> None:
        """Kill every process started here and whatever they started (runner commands)."""
        victims: list[psutil.Process] = []
        for pid in [p.pid for p in self.procs] + self.pids:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                victims += [process, *process.children(recursive=True)]
        for victim in victims:
            with contextlib.suppress(psutil.Error):
                victim.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        psutil.wait_procs(victims, timeout=5)


def port_accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    services: list[Service] = []

    def factory(name: str = "svc", **settings: Any) -> Service:
        service = Service(tmp_path / name, **settings)
        services.append(service)
        return service

    try:
        yield factory
    finally:
        for service in services:
            service.kill_all()


async def poll(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Await ``predicate()`` (sync or async) until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def callback_action(status: dict[str, Any]) -> dict[str, Any]:
    (action,) = [a for a in status["actions"] if a["class"] == CALLBACK_CLASS]
    return action


# ---- 1. the README flow over plain HTTP -------------------------------------------------------
async def test_readme_flow_over_http_and_request_log_lines(make_service) -> None:
    foreman = FakeForeman()
    await foreman.start()
    try:
        service = make_service(foreman_url=foreman.url).enable_local_command().start()
        request_id = "a1b2c3d4e5f60718"
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            response = await client.post(
                "/tasks",
                json={
                    "action_name": RUN_SCRIPT,
                    "action_input": {
                        "script": "echo hi; sleep 30",
                        "callback": {"task_id": "foreman-task-1", "step_id": 3},
                    },
                },
                headers={"X-Request-Id": request_id},
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-request-id"] == request_id
            task_id = response.json()["task_id"]
            uuid.UUID(task_id)

            count = await client.get("/tasks/count", params={"state": "running"})
            assert count.json() == {"count": 1, "state": "running"}

            async def output_so_far() -> list[str] | None:
                data = (await client.get(f"/tasks/{task_id}/status")).json()
                chunks = data["actions"][0]["output"].get("result") or []
                text = [c["output"] for c in chunks]
                return text if "".join(text).strip() == "hi" else None

            assert "".join(await poll(output_so_far)) == "hi\n"
            status = (await client.get(f"/tasks/{task_id}/status")).json()
            assert status["state"] == "running"
            assert status["actions"][0]["input"]["task_id"] == "foreman-task-1"
            assert "exit_status" not in status["actions"][0]["output"]

            cancel = await client.post(f"/tasks/{task_id}/cancel", content="")
            assert cancel.status_code == 200
            assert cancel.json() == {"task_id": task_id, "canceled_steps_count": 1}

            async def stopped() -> dict[str, Any] | None:
                data = (await client.get(f"/tasks/{task_id}/status")).json()
                return data if data["state"] == "stopped" else None

            final = await poll(stopped)
            output = final["actions"][0]["output"]
            assert output["exit_status"] != 0  # killed, not finished
            assert isinstance(output["exit_status_timestamp"], float)
            assert (await client.get("/tasks/count")).json() == {"count": 1, "state": "all"}
            assert (await client.get("/tasks/count", params={"state": "running"})).json() == {
                "count": 0,
                "state": "running",
            }
        await poll(lambda: foreman.callbacks)
        assert [c["callback"] for c in foreman.callbacks] == [
            {"task_id": "foreman-task-1", "step_id": 3}
        ]
        assert foreman.callbacks[0]["data"]["exit_status"] == output["exit_status"]
    finally:
        await foreman.stop()

    log = service.log_text()
    short = request_id[:8]
    assert re.search(rf"^\S+ {short} \[I\] Started POST /tasks$", log, re.M), log[-3000:]
    assert re.search(
        rf"^\S+ {short} \[I\] Finished POST /tasks with 200 \(\d+\.\d+ ms\)$", log, re.M
    ), log[-3000:]
    assert re.search(r"\[I\] Finished GET /tasks/count with 200 \(", log)


# ---- 2. nothing but `single` without plugins ---------------------------------------------------
async def test_default_installation_exposes_no_action(make_service) -> None:
    # The test plugin is importable (PYTHONPATH) but no settings.d enables it.
    service = make_service().start()
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        response = await client.post(
            "/tasks", json={"action_name": RUN_SCRIPT, "action_input": {"script": "id"}}
        )
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json"
        assert RUN_SCRIPT in response.json()["error"]
        launch = await client.post(
            "/tasks/launch",
            json={
                "operation": "single",
                "input": {"action_class": RUN_SCRIPT, "action_input": {"script": "id"}},
            },
        )
        assert launch.status_code == 400
        assert RUN_SCRIPT in launch.json()["error"]
        operations = await client.get("/tasks/operations")
        assert operations.json() == ["single"]
        assert (await client.get("/tasks/count")).json() == {"count": 0, "state": "all"}
    assert "plugin local_command loaded" not in service.log_text()


# ---- 3. systemd notification and SIGTERM -------------------------------------------------------
def test_systemd_ready_after_listening_and_sigterm_exits_cleanly(make_service) -> None:
    service = make_service()
    # A short path: unix socket addresses are limited to ~107 bytes.
    with tempfile.TemporaryDirectory(prefix="spd-", dir="/tmp") as short:
        address = os.path.join(short, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(address)
            notify.settimeout(START_TIMEOUT)
            proc = service.spawn(NOTIFY_SOCKET=address)
            message = notify.recv(4096).decode()
            assert message == "READY=1"
            # READY=1 is only sent once the port accepts connections.
            assert port_accepts(service.port)
            assert proc.poll() is None

            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
            assert time.monotonic() - started < 5
            notify.settimeout(1)
            assert notify.recv(4096).decode() == "STOPPING=1"
    assert not port_accepts(service.port)
    assert service.stderr() == ""


# ---- 4. SIGUSR1 reopens the log file -----------------------------------------------------------
def test_sigusr1_reopens_the_log_file(make_service) -> None:
    service = make_service().start()
    with httpx.Client(base_url=service.url, timeout=10) as client:
        client.get("/tasks/count", headers={"X-Request-Id": "before01-rotation"})
        rotated = service.log_file.with_name("service.log.1")
        service.log_file.rename(rotated)
        service.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not service.log_file.exists():
            assert time.monotonic() < deadline, "the log file was not reopened"
            time.sleep(0.02)
        client.get("/tasks/count", headers={"X-Request-Id": "after002-rotation"})
    assert service.terminate() == 0
    new = service.log_text()
    old = service.log_text(rotated)
    assert "before01 [I] Started GET /tasks/count" in old
    assert "after002 [I] Started GET /tasks/count" in new
    assert "after002 [I] Finished GET /tasks/count with 200" in new
    assert "after002" not in old
    assert "Reopened log file" in new


# ---- 5. HTTPS and the certificate serial check -------------------------------------------------
def _raw_get(port: int, ctx: ssl.SSLContext) -> tuple[str, bytes]:
    """TLS version and first bytes of the answer to a GET over a raw TLS connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /tasks/count HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return str(tls.version()), tls.recv(65536)


def test_https_accepts_only_the_proxy_certificate(make_service, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    service = make_service(
        use_https=True,
        ssl_certificate=pki.server_cert,
        ssl_private_key=pki.server_key,
        ssl_ca_file=pki.ca_cert,
        foreman_ssl_cert=pki.client_cert,
        foreman_ssl_key=pki.client_key,
    ).start()

    def client(cert: str | None = None, key: str | None = None) -> httpx.Client:
        ctx = pki.client_ssl_context(cert=cert, key=key)
        return httpx.Client(base_url=service.url, verify=ctx, timeout=10)

    with client(pki.client_cert, pki.client_key) as proxy:
        response = proxy.get("/tasks/count")
        assert response.status_code == 200
        assert response.json() == {"count": 0, "state": "all"}
        assert proxy.get("/tasks/operations").json() == ["single"]

    with client(pki.other_client_cert, pki.other_client_key) as other:
        for response in (other.get("/tasks/count"), other.post("/tasks/status", json={})):
            assert response.status_code == 403
            assert response.json() == {"error": "SSL certificate with unexpected serial supplied"}

    with client() as anonymous:
        response = anonymous.get("/tasks/count")
        assert response.status_code == 403
        assert response.json() == {"error": "No client SSL certificate supplied"}

        # Token endpoints do not need a certificate, but a wrong one-time password fails.
        task_id = str(uuid.uuid4())
        for path in (f"/tasks/{task_id}/update", f"/tasks/{task_id}/done"):
            response = anonymous.post(
                path, json={"step_id": 1}, headers={"Authorization": "Basic d3Jvbmc6d3Jvbmc="}
            )
            assert response.status_code == 403
            assert response.json() == {"error": "Invalid username or password supplied"}

    # A certificate of another CA: the TLS layer refuses it, the app never sees a request.
    seen = service.log_text().count("Started GET /tasks/count")
    foreign = pki.client_ssl_context(cert=pki.foreign_client_cert, key=pki.foreign_client_key)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        # TLS 1.2: the server checks the certificate inside the handshake
        _raw_get(
            service.port,
            pki.legacy_client_context(
                ssl.TLSVersion.TLSv1_2, cert=pki.foreign_client_cert, key=pki.foreign_client_key
            ),
        )
    try:
        # TLS 1.3: the client's handshake ends first, then the server drops the connection
        _, answer = _raw_get(service.port, foreign)
    except (ssl.SSLError, ConnectionError):
        answer = b""
    assert answer == b""
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{service.url}/tasks/count", verify=foreign, timeout=10)
    assert service.log_text().count("Started GET /tasks/count") == seen

    # TLS 1.1 is refused; the same client capped at TLS 1.2 gets in (control).
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _raw_get(
            service.port,
            pki.legacy_client_context(
                ssl.TLSVersion.TLSv1_1, cert=pki.client_cert, key=pki.client_key
            ),
        )
    version, answer = _raw_get(
        service.port,
        pki.legacy_client_context(ssl.TLSVersion.TLSv1_2, cert=pki.client_cert, key=pki.client_key),
    )
    assert version == "TLSv1.2"
    assert answer.startswith(b"HTTP/1.1 200")

    log = service.log_text()
    assert "SSL certificate with unexpected serial supplied" in log
    assert "No client SSL certificate supplied" in log
    assert service.proc.poll() is None


# ---- 6. configuration errors -------------------------------------------------------------------
def _bad_yaml(service: Service) -> list[str]:
    (service.config_dir / "settings.yml").write_text(":port: [1\n")
    return []


def _missing_dir(service: Service) -> list[str]:
    return ["-c", str(service.dir / "nowhere")]


def _missing_cert(service: Service) -> list[str]:
    service.settings.update(
        use_https=True,
        ssl_certificate=str(service.dir / "missing.pem"),
        ssl_private_key=str(service.dir / "missing-key.pem"),
        ssl_ca_file=str(service.dir / "missing-ca.pem"),
    )
    service.write()
    return []


def _garbage_cert(service: Service) -> list[str]:
    garbage = service.dir / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    service.settings.update(
        use_https=True,
        ssl_certificate=str(garbage),
        ssl_private_key=str(garbage),
        ssl_ca_file=str(garbage),
    )
    service.write()
    return []


def _bad_level(service: Service) -> list[str]:
    service.settings["log_level"] = "LOUD"
    service.write()
    return []


@pytest.mark.parametrize(
    ("prepare", "expected"),
    [
        pytest.param(_bad_yaml, "invalid YAML at line", id="invalid-yaml"),
        pytest.param(_missing_dir, "does not exist", id="missing-config-dir"),
        pytest.param(_missing_cert, "file not found", id="https-missing-cert"),
        pytest.param(_garbage_cert, "garbage.pem", id="https-garbage-cert"),
        pytest.param(_bad_level, "invalid log level 'LOUD'", id="invalid-log-level"),
    ],
)
def test_bad_configuration_is_one_line_on_stderr(make_service, prepare, expected: str) -> None:
    service = make_service()
    extra = prepare(service)
    args = [*command(), "-1"] + (extra or ["-c", str(service.config_dir)])
    proc = subprocess.run(
        args, env=child_env(), capture_output=True, text=True, timeout=30, cwd=service.dir
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{PROG}: "), lines
    assert expected in lines[0], lines
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not port_accepts(service.port)


def test_port_in_use_is_one_clear_line(make_service) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = make_service(port=port)
        proc = service.spawn()
        assert proc.wait(START_TIMEOUT) != 0
    lines = service.stderr().strip().splitlines()
    assert lines == [f"{PROG}: cannot listen on 127.0.0.1:{port} (core): Address already in use"]
    assert "Traceback" not in service.log_text()


# ---- 7. daemonizing ----------------------------------------------------------------------------
def test_daemonize_returns_at_once_and_the_daemon_serves(make_service) -> None:
    service = make_service()
    pid_file = service.dir / "run" / "core.pid"
    pid_file.parent.mkdir()
    started = time.monotonic()
    launcher = service.spawn("-d", "-p", str(pid_file))
    assert launcher.wait(START_TIMEOUT) == 0
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + START_TIMEOUT
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, "no pid file"
        time.sleep(0.02)
    pid = int(pid_file.read_text())
    service.pids.append(pid)
    assert pid != launcher.pid
    daemon = psutil.Process(pid)
    assert daemon.is_running() and daemon.status() != psutil.STATUS_ZOMBIE
    service.wait_accepting()
    response = httpx.get(f"{service.url}/tasks/count", timeout=10)
    assert response.json() == {"count": 0, "state": "all"}
    # detached: its own session, no terminal
    assert os.getsid(pid) != os.getsid(0)

    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while daemon.is_running() and daemon.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the daemon did not stop on SIGTERM"
        time.sleep(0.05)
    assert not port_accepts(service.port)


# ---- 8. durability across a SIGKILL --------------------------------------------------------------
async def test_callback_survives_sigkill_and_arrives_once(make_service) -> None:
    foreman = FakeForeman(port=free_port())  # reserved, not started: Foreman is down
    service = make_service(
        foreman_url=foreman.url,
        callback_retry_interval=0.1,
        callback_retry_max_interval=0.3,
    ).enable_local_command()
    service.start()
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        launch = await client.post(
            "/tasks/launch",
            json={
                "operation": "single",
                "input": {
                    "action_class": RUN_SCRIPT,
                    "action_input": {
                        "script": "echo durable",
                        "callback": {"task_id": "foreman-task-9", "step_id": 5},
                    },
                },
            },
        )
        assert launch.status_code == 200, launch.text
        assert launch.json()["result"] == "success"
        task_id = launch.json()["task_id"]

        async def callback_failed() -> dict[str, Any] | None:
            data = (await client.get(f"/tasks/{task_id}/status")).json()
            attempts = callback_action(data)["output"].get("attempts", 0)
            return data if attempts >= 1 else None

        status = await poll(callback_failed)
    assert status["state"] == "running"
    assert status["actions"][0]["output"]["exit_status"] == 0
    assert "Failed performing callback" in callback_action(status)["output"]["last_error"]

    assert service.terminate(signal.SIGKILL) == -signal.SIGKILL
    await foreman.start()
    try:
        assert foreman.callbacks == []
        service.start()
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:

            async def finished() -> dict[str, Any] | None:
                data = (await client.get(f"/tasks/{task_id}/status")).json()
                return data if data["state"] == "stopped" else None

            final = await poll(finished, timeout=15)
            assert final["result"] == "success"
            assert callback_action(final)["output"]["delivered_at"] > 0
            await asyncio.sleep(1.0)  # a duplicate would have been sent by now
        assert len(foreman.callbacks) == 1
        (delivered,) = foreman.callbacks
        assert delivered["callback"] == {"task_id": "foreman-task-9", "step_id": 5}
        assert delivered["data"]["exit_status"] == 0
        assert [c["output"] for c in delivered["data"]["result"]] == ["durable\n"]
        assert service.terminate() == 0
    finally:
        await foreman.stop()
