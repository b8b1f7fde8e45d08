"""How an outage of the database is reported: one ERROR line per cause, one INFO at its end."""

from __future__ import annotations

import logging

from dynflow.persistence.health import StoreHealth


def test_alternating_causes_of_one_outage_are_logged_once_each(caplog):
    """A pool cut at once: each dead pooled connection fails with "connection was closed", a
    new one with "Connect call failed", in turns. That used to log an ERROR at every turn."""
    caplog.set_level(logging.DEBUG, logger="dynflow.persistence")
    health = StoreHealth()
    closed, refused = "Error: connection was closed", "ConnectionRefusedError: refused"
    for cause in (closed, refused, closed, refused, closed):
        health.failed(cause, "write")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and closed in errors[0] and refused in errors[1]
    assert health.failure is not None and health.failure.cause == closed  # the latest

    health.ok()
    assert health.failure is None
    assert [r for r in caplog.records if "works again" in r.getMessage()]
    health.failed(refused)  # a new outage is reported again
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 3
