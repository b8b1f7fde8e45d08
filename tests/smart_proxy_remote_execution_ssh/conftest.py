"""Fixtures for the SSH remote-execution tests: real sshd servers on loopback.

* ``ssh_users`` (session): ``TestUsers`` with ``.rexuser`` (SSH login; sudo to rextarget with
  its password), ``.rextarget`` (sudo/su target), ``.rexnosudo`` (no sudo rule). Each is a
  ``TestUser(name, password, uid, gid, home)``; names carry a per-run suffix, so use ``.name``.
* ``ssh_keys`` (session): ``SshKeys`` with ``.proxy`` (``id_rsa_foreman_proxy`` + ``.pub`` +
  ``-cert.pub`` for all test users), ``.proxy_encrypted`` (``.passphrase``), ``.rsa``,
  ``.stranger`` (authorized nowhere), ``.user_ca``, ``.host_ca``.
* ``sshd`` (function): a running ``Sshd`` on 127.0.0.1:<free port> trusting ``user_ca``, with a
  host certificate from ``host_ca``; ``rexuser`` and ``rexnosudo`` have ``proxy``,
  ``proxy_encrypted`` and ``rsa`` in their authorized keys.
* ``noexec_dir`` (function): a ``noexec`` tmpfs, mode 1777.
* ``remote_working_dir`` (function): an empty directory under /var/tmp owned by ``rexuser``.
* ``known_hosts`` (function): an empty known_hosts file.
* ``closed_port`` (function): a port on 127.0.0.1 that refuses connections.

All skip when the host cannot run them (not root, openssh-server missing).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import sshd as sshd_support
from tests.support.sshd import Sshd, SshKeys, TestUsers


def _require_sshd() -> None:
    reason = sshd_support.missing_requirement()
    if reason is not None:
        pytest.fail(reason)


@pytest.fixture(scope="session")
def ssh_users() -> Iterator[TestUsers]:
    _require_sshd()
    sshd_support.sweep_leftovers()
    users = TestUsers.create()
    try:
        yield users
    finally:
        users.remove()


@pytest.fixture(scope="session")
def ssh_keys(ssh_users: TestUsers) -> Iterator[SshKeys]:
    keys = SshKeys.create(principals=ssh_users.names)
    try:
        yield keys
    finally:
        keys.remove()


@pytest.fixture
def sshd(ssh_users: TestUsers, ssh_keys: SshKeys) -> Iterator[Sshd]:
    with Sshd(
        user_ca=ssh_keys.user_ca, host_ca=ssh_keys.host_ca, allow_users=ssh_users.names
    ) as server:
        for user in (ssh_users.rexuser, ssh_users.rexnosudo):
            server.authorize(user.name, ssh_keys.proxy, ssh_keys.proxy_encrypted, ssh_keys.rsa)
        server.start()
        yield server


@pytest.fixture
def noexec_dir() -> Iterator[Path]:
    _require_sshd()
    with sshd_support.noexec_tmpfs() as path:
        yield path


@pytest.fixture
def remote_working_dir(ssh_users: TestUsers) -> Iterator[Path]:
    with sshd_support.user_directory(ssh_users.rexuser) as path:
        yield path


@pytest.fixture
def known_hosts(tmp_path: Path) -> Path:
    path = tmp_path / "known_hosts"
    path.touch(mode=0o600)
    return path


@pytest.fixture
def closed_port() -> Iterator[int]:
    with sshd_support.closed_port() as port:
        yield port
