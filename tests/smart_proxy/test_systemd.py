"""sd_notify over a real unix datagram socket."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from smart_proxy import systemd


def test_notify_sends_ready_to_the_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert systemd.notify() is True
        assert listener.recv(1024) == b"READY=1"
        assert systemd.notify("STATUS=draining\nSTOPPING=1") is True
        assert listener.recv(1024) == b"STATUS=draining\nSTOPPING=1"


def test_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"smart-proxy-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1", unset_environment=True) is True
        assert listener.recv(1024) == b"READY=1"
    assert "NOTIFY_SOCKET" not in os.environ


def test_notify_outside_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify() is False


def test_notify_to_a_missing_socket_returns_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert systemd.notify() is False
