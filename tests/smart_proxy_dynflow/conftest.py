"""Fixtures of the task API tests."""

from __future__ import annotations

import pytest

from tests.support.services import FakeForeman


@pytest.fixture
async def foreman():
    """A fake Foreman that records callbacks, started on a free port."""
    f = FakeForeman()
    await f.start()
    try:
        yield f
    finally:
        await f.stop()
