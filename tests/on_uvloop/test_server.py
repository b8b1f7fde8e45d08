"""The raw takeover of the listeners (tests/smart_proxy/test_server.py) on uvloop."""

from __future__ import annotations

import asyncio

import uvloop

from tests.smart_proxy.test_server import (  # noqa: F401 - collected again, on uvloop
    pki,
    test_raw_takeover_of_an_upgrade_request,
)


async def test_the_loop_is_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
