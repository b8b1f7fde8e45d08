"""The shared host-key store: accept-new, pruning, OpenSSH matching rules, strict CA mode."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
from pathlib import Path

import asyncssh
import pytest

from smart_proxy_remote_execution_ssh.known_hosts import KnownHosts, host_token


def new_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519").convert_to_public()


def key_text(key: asyncssh.SSHKey) -> str:
    return key.export_public_key("openssh").decode().strip()


def hashed(token: str) -> str:
    salt = os.urandom(20)
    digest = hmac.new(salt, token.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ssh" / "known_hosts"


def test_host_token() -> None:
    assert host_token("Host.Example", 22) == "host.example"
    assert host_token("10.0.0.1", 2222) == "[10.0.0.1]:2222"
    assert host_token("h", None) == "h"


async def test_unknown_host_is_accepted_and_persisted(path: Path) -> None:
    store = KnownHosts(path)
    key, other = new_key(), new_key()
    assert not store.is_known("web1", 22)
    assert store.connect_options("web1", 22)["server_host_key_algs"]  # plain keys only
    assert store.accept_new("web1", 22, key)
    assert store.accept_new("web1", 2222, other)  # another port is another host
    await store.flush()
    lines = path.read_text().splitlines()
    assert lines == [f"web1 {key_text(key)}", f"[web1]:2222 {key_text(other)}"]
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert store.known_keys("web1", 22) == [key]
    algs = store.connect_options("web1", 22)["server_host_key_algs"]
    assert algs[0] == "ssh-ed25519" and "cert" not in " ".join(algs)  # the known type first
    # A fresh store (another process) reads what was written.
    assert KnownHosts(path).trusted("web1", "10.0.0.1", None)[0] == [key]
    assert KnownHosts(path).trusted("web1", "10.0.0.1", 2222)[0] == [other]


async def test_changed_key_is_rejected(path: Path) -> None:
    store = KnownHosts(path)
    key = new_key()
    assert store.accept_new("web1", 22, key)
    assert not store.accept_new("web1", 22, new_key())
    await store.flush()
    assert path.read_text().count("\n") == 1  # nothing learned


async def test_port_entries_do_not_fall_back_to_the_plain_host(path: Path) -> None:
    path.parent.mkdir()
    key = new_key()
    path.write_text(f"web1 {key_text(key)}\n")
    store = KnownHosts(path)
    assert store.is_known("web1", 22)
    assert not store.is_known("web1", 2222)


def test_matching_rules(path: Path) -> None:
    path.parent.mkdir()
    keys = [new_key() for _ in range(6)]
    path.write_text(
        "\n".join(
            [
                "# a comment",
                "",
                f"alias1,Alias2 {key_text(keys[0])}",
                f"{hashed('secret.example')} {key_text(keys[1])}",
                f"*.example.com,!bad.example.com {key_text(keys[2])}",
                f"[10.1.*]:2222 {key_text(keys[3])}",
                f"@cert-authority *.ca.example {key_text(keys[4])}",
                f"@revoked alias1 {key_text(keys[5])}",
                "garbage",
                "broken ssh-ed25519 not-base64",
            ]
        )
        + "\n"
    )
    store = KnownHosts(path)
    assert store.known_keys("alias2") == [keys[0]]
    assert store.known_keys("secret.example") == [keys[1]]
    assert store.known_keys("www.example.com") == [keys[2]]
    assert store.known_keys("bad.example.com") == []
    assert store.known_keys("10.1.2.3", 2222) == [keys[3]]
    assert store.known_keys("10.1.2.3", 22) == []
    host_keys, ca_keys, revoked = store.trusted("a.ca.example", "1.2.3.4", None)
    assert (host_keys, ca_keys, revoked) == ([], [keys[4]], [])
    algs = store.connect_options("a.ca.example", 22)["server_host_key_algs"]
    assert "cert-v01@openssh.com" in algs[0]  # host certificates first
    # A plain key of a host covered by a CA only is new (as for OpenSSH).
    assert not store.is_known("a.ca.example")
    assert store.accept_new("a.ca.example", 22, new_key())
    assert store.trusted("alias1", "1.2.3.4", None)[2] == [keys[5]]
    assert not store.is_known("broken")


async def test_file_changed_by_someone_else_is_read_again(path: Path) -> None:
    store = KnownHosts(path)
    assert not store.is_known("web1")
    path.parent.mkdir()
    key = new_key()
    path.write_text(f"web1 {key_text(key)}\n")
    assert store.known_keys("web1") == [key]
    path.write_text("")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    assert not store.is_known("web1")


async def test_prune_drops_the_host_only(path: Path) -> None:
    path.parent.mkdir()
    web, web_port, other, ca = new_key(), new_key(), new_key(), new_key()
    path.write_text(
        f"web1 {key_text(web)}\n"
        f"{hashed('web1')} {key_text(web)}\n"
        f"[web1]:2222 {key_text(web_port)}\n"
        f"other {key_text(other)}\n"
        f"@cert-authority * {key_text(ca)}\n"
    )
    path.chmod(0o644)
    store = KnownHosts(path)
    assert await store.prune("web1", 22) == 2
    text = path.read_text()
    assert "web1 " not in text.replace("[web1]:2222 ", "") and "|1|" not in text
    assert f"[web1]:2222 {key_text(web_port)}" in text
    assert f"other {key_text(other)}" in text and "@cert-authority" in text
    assert path.stat().st_mode & 0o777 == 0o644  # mode kept
    assert not store.known_keys("web1")
    assert store.accept_new("web1", 22, new_key())  # a first execution learns the new key
    assert await store.prune("nothing-here", 22) == 0
    assert await store.prune("web1", 2222) == 1


async def test_prune_of_a_missing_file(path: Path) -> None:
    assert await KnownHosts(path).prune("web1") == 0
    assert not path.exists()


async def test_many_concurrent_accepts_are_written_once(path: Path) -> None:
    store = KnownHosts(path)
    keys = {f"host{i}": new_key() for i in range(50)}

    async def accept(host: str) -> bool:
        await asyncio.sleep(0)
        return store.accept_new(host, 22, keys[host])

    assert all(await asyncio.gather(*(accept(host) for host in keys)))
    await store.flush()
    lines = path.read_text().splitlines()
    assert sorted(lines) == sorted(f"{host} {key_text(key)}" for host, key in keys.items())


async def test_appends_after_a_missing_final_newline(path: Path) -> None:
    path.parent.mkdir()
    old = new_key()
    path.write_text(f"old {key_text(old)}")
    store = KnownHosts(path)
    key = new_key()
    assert store.accept_new("new", 22, key)
    await store.flush()
    assert path.read_text().splitlines() == [f"old {key_text(old)}", f"new {key_text(key)}"]


def test_strict_mode_trusts_the_ca_file_only(tmp_path: Path) -> None:
    ca = new_key()
    pinned = new_key()
    ca_file = tmp_path / "ca_known_hosts"
    ca_file.write_text(f"@cert-authority * {key_text(ca)}\npinned {key_text(pinned)}\n")
    store = KnownHosts(tmp_path / "known_hosts", ca_file=str(ca_file))
    assert store.strict
    assert store.trusted("any", "1.2.3.4", 2222)[1] == [ca]
    assert store.trusted("pinned", "1.2.3.4", None)[0] == [pinned]
    assert store.connect_options("any", 22) == {"server_host_key_algs": "default"}
    assert not store.accept_new("any", 22, new_key())
    assert not (tmp_path / "known_hosts").exists()


def test_from_settings(tmp_path: Path) -> None:
    store = KnownHosts.from_settings({"known_hosts_file": str(tmp_path / "kh")})
    assert store.path == str(tmp_path / "kh") and not store.strict
    default = KnownHosts.from_settings({})
    assert default.path == os.path.expanduser("~/.ssh/known_hosts")
    assert "accept-new" in repr(default)
