"""What the bench scripts share: JSON figure lines, and a service run as a subprocess.

Imported by the scripts next to it (``import benchlib``), which run with this directory on
``sys.path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CORE_PROG = "smart-proxy-dynflow-core"
START_TIMEOUT = 60.0


def emit(line: dict[str, Any]) -> None:
    """Print one figure line (flushed: a long bench shows its figures as they come)."""
    print(json.dumps(line), flush=True)


def figure_line(
    figure: str,
    value: float,
    store: str,
    units: Mapping[str, str],
    targets: Mapping[str, float],
    **extra: Any,
) -> dict[str, Any]:
    """``{"figure", "value", "unit", "store", ["target"], ...}``."""
    line: dict[str, Any] = {
        "figure": figure,
        "value": round(value, 3),
        "unit": units[figure],
        "store": store,
    }
    if figure in targets:
        line["target"] = targets[figure]
    line.update(extra)
    return line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def yaml_settings(values: Mapping[str, Any]) -> str:
    """A settings file in the ``:key: value`` style (JSON values are valid YAML)."""
    return "---\n" + "".join(f":{key}: {json.dumps(value)}\n" for key, value in values.items())


def core_command(profile_file: Path | None = None) -> list[str]:
    """How to start ``smart-proxy-dynflow-core`` (under cProfile with ``profile_file``)."""
    if profile_file is not None:
        return [sys.executable, "-m", "cProfile", "-o", str(profile_file)] + [
            "-m",
            "smart_proxy_dynflow.service",
        ]
    script = Path(sys.executable).parent / CORE_PROG
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "smart_proxy_dynflow.service"]


def proxy_command() -> list[str]:
    """How to start ``smart-proxy``."""
    script = Path(sys.executable).parent / "smart-proxy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "smart_proxy.cli"]


class ServiceProcess:
    """A service listening on ``127.0.0.1:port``, run in ``workdir`` as a subprocess.

    Subclasses write their configuration and give :meth:`command`; ``name`` names its stderr
    file (``<name>-stderr.txt``) and its log file (``<name>.log``), whose last lines explain a
    failed start.
    """

    name = "service"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "DYNFLOW_DB_CONN_STRING"}
        env.pop("REX_SIMULATE", None)
        return env

    def start(self) -> None:
        """Start it and wait until it listens (raises RuntimeError with its last log lines)."""
        with open(self.workdir / f"{self.name}-stderr.txt", "wb") as stderr:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen within {START_TIMEOUT:g} s: {self.tail()}")

    def tail(self) -> str:
        text = ""
        for path in (self.workdir / f"{self.name}-stderr.txt", self.log_file):
            if path.exists():
                text += path.read_text(errors="replace")
        return " | ".join(text.strip().splitlines()[-3:])

    def stop(self) -> None:
        """SIGTERM (a graceful stop), SIGKILL after a minute."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def peak_rss_kb(self) -> int | None:
        """``VmHWM``: the highest RSS the process ever had."""
        assert self.proc is not None
        try:
            with open(f"/proc/{self.proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None


class RawConnection:
    """One keep-alive HTTP/1.1 connection doing GETs: just enough HTTP for a load loop (httpx
    costs about 1 ms of CPU a request, which would be measured too)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawConnection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()

    async def get(self, path: str) -> tuple[int, bytes]:
        """The status and body of ``GET path``."""
        assert self.reader is not None and self.writer is not None
        self.writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Accept: application/json\r\n\r\n".encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    async def get_json(self, path: str) -> Any:
        """The JSON body of ``GET path``; RuntimeError unless it answers 200."""
        status, body = await self.get(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status} {body[:200]!r}")
        return json.loads(body)
