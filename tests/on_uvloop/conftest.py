"""Tests run again on uvloop, the event loop ``smart-proxy`` and ``smart-proxy-dynflow-core``
run on as shipped (``uvloop.run``): each module here imports tests of another module, which
pytest collects here a second time, on uvloop.

uvloop differs where it matters to us: its transports are not ``asyncio.Transport`` subclasses
(the raw takeover of ``POST /ssh/session`` once died on that assertion, only as shipped).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import uvloop

from tests.smart_proxy_remote_execution_ssh.conftest import (  # noqa: F401 - their fixtures
    closed_port,
    known_hosts,
    ssh_keys,
    ssh_users,
    sshd,
)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"uvloop": uvloop.new_event_loop}
