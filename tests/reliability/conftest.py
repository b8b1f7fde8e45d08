"""Fixtures of the fault suite.

* ``ssh_users``, ``ssh_keys`` (session): the SSH tests' throw-away ``/bin/sh`` users and keys
  (tests/smart_proxy_remote_execution_ssh/conftest.py).
* ``ssh_fleet`` (function): a factory ``ssh_fleet(servers=4, sleeps=(3.0,), netns=0)`` →
  :class:`~tests.reliability.scenarios.SshHosts`: that many sshd servers on 127.0.0.1 (each
  its own port), then ``netns`` more, each inside a network namespace of its own behind a veth
  pair (``SshHosts.namespaces``, see ``faults.NetnsHost``), a remote working directory and a
  marker directory owned by the SSH user; everything is stopped and removed afterwards.

The long runs are marked ``reliability`` (deselected by ``make test``, run by ``make
reliability``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from tests.smart_proxy_remote_execution_ssh.conftest import ssh_keys, ssh_users  # noqa: F401
from tests.support import sshd as sshd_support
from tests.support.services import free_port
from tests.support.sshd import Sshd, SshKeys, TestUsers

from .faults import NetnsHost, NetnsSshd, netns_problem
from .scenarios import SshHosts


@pytest.fixture
def ssh_fleet(
    ssh_users: TestUsers,  # noqa: F811
    ssh_keys: SshKeys,  # noqa: F811
) -> Iterator[Callable[..., SshHosts]]:
    with contextlib.ExitStack() as stack:

        def make(
            servers: int = 4,
            sleeps: tuple[float, ...] = (3.0,),
            netns: int = 0,
            **extra_rex: object,
        ) -> SshHosts:
            fleet: list[Sshd] = []
            namespaces: list[NetnsHost] = []
            if netns:
                problem = netns_problem()
                if problem is not None:
                    pytest.fail(f"the network-cut test needs network namespaces: {problem}")
            for index in range(servers + netns):
                options = {
                    "user_ca": ssh_keys.user_ca,
                    "host_ca": ssh_keys.host_ca,
                    "allow_users": ssh_users.names,
                }
                if index < servers:
                    server = stack.enter_context(Sshd(**options))
                else:
                    namespace = NetnsHost(index)
                    stack.callback(namespace.remove)
                    namespace.create()
                    namespaces.append(namespace)
                    server = NetnsSshd(addresses=(namespace.address,), port=free_port(), **options)
                    server.namespace = namespace.name
                    stack.enter_context(server)
                server.authorize(ssh_users.rexuser.name, ssh_keys.proxy)
                server.start()
                fleet.append(server)
            workdir = stack.enter_context(sshd_support.user_directory(ssh_users.rexuser))
            markers = stack.enter_context(sshd_support.user_directory(ssh_users.rexuser))
            return SshHosts(
                fleet,
                ssh_users.rexuser.name,
                ssh_keys.proxy.private,
                workdir,
                markers,
                sleeps=sleeps,
                extra_rex=dict(extra_rex),
                namespaces=namespaces,
            )

        yield make
