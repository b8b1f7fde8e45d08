"""The Cockpit web-console session ``POST /ssh/session`` (§9), end to end.

A raw client writes the request exactly as Foreman's ``foreman-cockpit-session`` does, over TLS
with Foreman's client certificate, to a real Smart Proxy (the ``script`` plugin) which connects
to a real sshd with asyncssh and relays the command's input and output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from smart_proxy.root import LogsPlugin
from smart_proxy_dynflow.proxy_plugin import DynflowPlugin
from smart_proxy_remote_execution_ssh.cockpit import INVALID_REQUEST, SWITCHING
from smart_proxy_remote_execution_ssh.plugin import ScriptPlugin
from tests.support.certs import Pki, make_pki
from tests.support.proxy import ProxyService, smart_proxy
from tests.support.sshd import KeyPair, Sshd, SshKeys, TestUsers, blackhole_port
from tests.support.waiting import wait_for

TIMEOUT = 10


@contextlib.asynccontextmanager
async def cockpit_proxy(
    tmp_path: Path,
    pki: Pki,
    key: KeyPair,
    known_hosts: Path,
    *,
    cockpit: bool = True,
    trusted: bool = True,
) -> AsyncIterator[ProxyService]:
    rex = {
        "enabled": True,
        "ssh_identity_key_file": str(key.private),
        "known_hosts_file": str(known_hosts),
        "cockpit_integration": cockpit,
    }
    dynflow = {"enabled": True, "database": f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"}
    async with smart_proxy(
        tmp_path / "proxy",
        [LogsPlugin, DynflowPlugin, ScriptPlugin],
        {"dynflow": dynflow, "remote_execution_ssh": rex},
        pki=pki,
        trusted_hosts=[pki.client_cn] if trusted else None,
    ) as proxy:
        yield proxy


def session_request(
    url: str,
    params: dict[str, Any] | str,
    *,
    connection: str | None = "upgrade",
    upgrade: str | None = "raw",
) -> bytes:
    """The request of foreman-cockpit-session's ``upgrade_connection!``, byte for byte (its
    heredoc ends the body with a newline, counted in Content-Length, and every newline becomes
    CRLF). A string is sent as the body instead of the JSON of ``params``."""
    parts = urlsplit(url)
    data = params if isinstance(params, str) else json.dumps(params)
    lines = ["POST /ssh/session HTTP/1.1", f"Host: {parts.hostname}:{parts.port}"]
    if connection is not None:
        lines.append(f"Connection: {connection}")
    if upgrade is not None:
        lines.append(f"Upgrade: {upgrade}")
    lines += [f"Content-Length: {len(data.encode()) + 2}", "Content-Type: application/json"]
    payload = "\n".join(lines) + f"\n\n{data}\n"
    return payload.replace("\n", "\r\n").encode()


def host_params(sshd: Sshd, user: str, command: str, **overrides: Any) -> dict[str, Any]:
    """What Foreman's ``/cockpit/host_ssh_params`` gives, plus the command."""
    params = {
        "hostname": sshd.host,
        "ssh_user": user,
        "ssh_port": sshd.port,
        "ssh_password": None,
        "ssh_key_passphrase": None,
        "effective_user_password": None,
        "proxy": "https://proxy.example.com:9090",
        "command": command,
    }
    params.update(overrides)
    return params


async def connect(
    url: str, pki: Pki, *, certificate: bool = True
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    context: ssl.SSLContext | None = None
    if parts.scheme == "https":
        context = pki.client_ssl_context(
            cert=pki.client_cert if certificate else None,
            key=pki.client_key if certificate else None,
        )
    return await asyncio.open_connection(
        parts.hostname, parts.port, ssl=context, server_hostname="localhost" if context else None
    )


async def start_session(
    url: str, pki: Pki, params: dict[str, Any]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await connect(url, pki)
    writer.write(session_request(url, params))
    await writer.drain()
    return reader, writer


async def read_all(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), TIMEOUT)


async def http_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """An ordinary HTTP response (with a Content-Length)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    status, *lines = head.decode().strip().split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
    return int(status.split()[1]), headers, body


def no_session_processes(sshd: Sshd) -> Any:
    async def check() -> bool:
        return not sshd.session_processes()

    return check


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
def cockpit_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.mark.parametrize("scheme", ["https", "http"])
async def test_echo_through_the_session(
    tmp_path: Path,
    pki: Pki,
    sshd: Sshd,
    ssh_users: TestUsers,
    ssh_keys: SshKeys,
    known_hosts: Path,
    cockpit_log: pytest.LogCaptureFixture,
    scheme: str,
) -> None:
    # Trusted hosts over plain HTTP would need reverse DNS; HTTPS checks the certificate's CN.
    async with cockpit_proxy(
        tmp_path, pki, ssh_keys.proxy, known_hosts, trusted=scheme == "https"
    ) as proxy:
        url = proxy.https_url if scheme == "https" else proxy.http_url
        assert url is not None
        params = host_params(sshd, ssh_users.rexuser.name, "cat")
        reader, writer = await start_session(url, pki, params)
        # Exactly the four lines of the original, no HTTP status line.
        assert await asyncio.wait_for(reader.readexactly(len(SWITCHING)), TIMEOUT) == SWITCHING
        for chunk in (b"hello\n", b"\x00\x01binary\xff" * 1000):
            writer.write(chunk)
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(len(chunk)), TIMEOUT) == chunk
        writer.close()  # the client goes away: the command is stopped
        await wait_for(no_session_processes(sshd), TIMEOUT)
        await wait_for(lambda: _logged(cockpit_log, "Cockpit session on"), TIMEOUT)
    assert known_hosts.read_text().strip()  # the host key was learned (accept-new)
    assert f"running 'cat' on {ssh_users.rexuser.name}@{sshd.host}:{sshd.port}" in cockpit_log.text
    assert "Finished POST /ssh/session with a raw connection" in cockpit_log.text


async def test_output_exit_code_and_stderr_with_password_authentication(
    tmp_path: Path,
    pki: Pki,
    sshd: Sshd,
    ssh_users: TestUsers,
    ssh_keys: SshKeys,
    known_hosts: Path,
    cockpit_log: pytest.LogCaptureFixture,
) -> None:
    user = ssh_users.rexuser
    command = "sh -c 'echo bye; echo oops >&2; exit 3'"
    # The proxy's key is authorized nowhere: the password of the body logs in.
    async with cockpit_proxy(tmp_path, pki, ssh_keys.stranger, known_hosts) as proxy:
        assert proxy.https_url is not None
        params = host_params(sshd, user.name, command, ssh_password=user.password)
        reader, writer = await start_session(proxy.https_url, pki, params)
        # The command's output, then the proxy closes the connection.
        assert await read_all(reader) == SWITCHING + b"bye\n"
        writer.close()
        ended = f"Cockpit session on {user.name}@{sshd.host}:{sshd.port} ended: oops"
        await wait_for(lambda: _logged(cockpit_log, ended), TIMEOUT)
    assert "Process exited with code 3." in cockpit_log.text
    assert user.password not in cockpit_log.text


async def test_wrong_password_is_an_internal_error(
    tmp_path: Path,
    pki: Pki,
    sshd: Sshd,
    ssh_users: TestUsers,
    ssh_keys: SshKeys,
    known_hosts: Path,
    cockpit_log: pytest.LogCaptureFixture,
) -> None:
    password = "not-the-password-7f3a"
    async with cockpit_proxy(tmp_path, pki, ssh_keys.stranger, known_hosts) as proxy:
        assert proxy.https_url is not None
        params = host_params(sshd, ssh_users.rexuser.name, "cockpit-bridge", ssh_password=password)
        reader, writer = await start_session(proxy.https_url, pki, params)
        answer = await read_all(reader)
        writer.close()
    assert answer == (
        b"Status: 500\r\nConnection: close\r\nContent-Length: 14\r\n\r\nInternal error"
    )
    assert "Could not establish connection to remote host" in cockpit_log.text
    assert "the server rejected the password" in cockpit_log.text
    assert '"ssh_password": "[FILTERED]"' in cockpit_log.text  # the body, logged at DEBUG
    assert password not in cockpit_log.text


def status_400(answer: bytes) -> str:
    """The message of a ``Status: 400`` answer (checking its lines)."""
    head, _, message = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"Status: 400",
        b"Connection: close",
        b"Content-Length: %d" % len(message),
    ]
    return message.decode()


async def test_unreachable_host_and_bad_bodies_are_bad_requests(
    tmp_path: Path,
    pki: Pki,
    ssh_users: TestUsers,
    ssh_keys: SshKeys,
    known_hosts: Path,
    closed_port: int,
) -> None:
    params = {
        "hostname": "127.0.0.1",
        "ssh_user": ssh_users.rexuser.name,
        "ssh_port": closed_port,
        "command": "cockpit-bridge",
    }
    async with cockpit_proxy(tmp_path, pki, ssh_keys.proxy, known_hosts) as proxy:
        url = proxy.https_url
        assert url is not None
        answers = []
        for body in (params, {**params, "ssh_port": "ssh"}, {**params, "command": ""}, "{oops"):
            reader, writer = await start_session(url, pki, body)
            answers.append(status_400(await read_all(reader)))
            writer.close()
    unreachable, port, command, not_json = answers
    assert unreachable.startswith(
        f"Could not establish connection to remote host 127.0.0.1:{closed_port}"
    )
    assert "Connection refused" in unreachable
    assert port == "Invalid request: ssh_port must be an integer, got 'ssh'"
    assert command == "Invalid request: 'command' is missing"
    assert not_json.startswith("Invalid request: malformed JSON in the body")


async def test_a_raw_upgrade_is_required(
    tmp_path: Path, pki: Pki, sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys, known_hosts: Path
) -> None:
    params = host_params(sshd, ssh_users.rexuser.name, "cockpit-bridge")
    async with cockpit_proxy(tmp_path, pki, ssh_keys.proxy, known_hosts) as proxy:
        url = proxy.https_url
        assert url is not None
        for connection, upgrade, closed in [
            (None, None, False),
            (None, "raw", False),
            ("upgrade", None, False),
            ("keep-alive", "raw", False),
            ("Upgrade", "raw", True),  # must equal "upgrade"
            ("upgrade", "websocket", True),
        ]:
            reader, writer = await connect(url, pki)
            writer.write(session_request(url, params, connection=connection, upgrade=upgrade))
            status, headers, body = await http_response(reader)
            assert (status, body.decode()) == (400, INVALID_REQUEST), (connection, upgrade)
            # An upgrade request refused with an HTTP answer ends its connection.
            assert (headers.get("connection") == "close") is closed
            if closed:
                assert await read_all(reader) == b""
            writer.close()
    assert not sshd.session_processes()  # nothing was run


async def test_a_client_certificate_is_required_over_https(
    tmp_path: Path, pki: Pki, sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys, known_hosts: Path
) -> None:
    params = host_params(sshd, ssh_users.rexuser.name, "cockpit-bridge")
    async with cockpit_proxy(tmp_path, pki, ssh_keys.proxy, known_hosts) as proxy:
        url = proxy.https_url
        assert url is not None
        reader, writer = await connect(url, pki, certificate=False)
        writer.write(session_request(url, params))
        status, headers, body = await http_response(reader)
        writer.close()
    assert (status, headers["connection"]) == (403, "close")
    assert json.loads(body) == {"error": "No client SSL certificate supplied"}


async def test_no_session_without_cockpit_integration(
    tmp_path: Path, pki: Pki, sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys, known_hosts: Path
) -> None:
    params = host_params(sshd, ssh_users.rexuser.name, "cockpit-bridge")
    async with cockpit_proxy(tmp_path, pki, ssh_keys.proxy, known_hosts, cockpit=False) as proxy:
        url = proxy.https_url
        assert url is not None
        reader, writer = await connect(url, pki)
        writer.write(session_request(url, params))
        status, _, _ = await http_response(reader)
        writer.close()
    assert status == 404


async def test_stopping_the_proxy_ends_an_open_session(
    tmp_path: Path,
    pki: Pki,
    sshd: Sshd,
    ssh_users: TestUsers,
    ssh_keys: SshKeys,
    known_hosts: Path,
) -> None:
    loop = asyncio.get_running_loop()
    async with cockpit_proxy(tmp_path, pki, ssh_keys.proxy, known_hosts) as proxy:
        assert proxy.https_url is not None
        params = host_params(sshd, ssh_users.rexuser.name, "cat")
        reader, writer = await start_session(proxy.https_url, pki, params)
        assert await asyncio.wait_for(reader.readexactly(len(SWITCHING)), TIMEOUT) == SWITCHING
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"ping"
        stopping = loop.time()
    # The proxy stopped well within its graceful timeout (10 s), closing the session.
    assert loop.time() - stopping < 5
    assert await read_all(reader) == b""
    writer.close()
    await wait_for(no_session_processes(sshd), TIMEOUT)


async def test_stopping_the_proxy_while_connecting_does_not_wait(
    tmp_path: Path, pki: Pki, ssh_keys: SshKeys, known_hosts: Path
) -> None:
    loop = asyncio.get_running_loop()
    with blackhole_port() as port:  # accepts, never answers: connecting waits 30 s
        async with cockpit_proxy(tmp_path, pki, ssh_keys.proxy, known_hosts) as proxy:
            assert proxy.https_url is not None
            params = {"hostname": "127.0.0.1", "ssh_port": port, "command": "cockpit-bridge"}
            reader, writer = await start_session(proxy.https_url, pki, params)
            await asyncio.sleep(0.3)  # the session is connecting
            stopping = loop.time()
        assert loop.time() - stopping < 5
        assert await read_all(reader) == b""  # nothing was answered: the session never began
        writer.close()


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return text in caplog.text
