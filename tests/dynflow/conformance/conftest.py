"""The conformance scenarios run on both stores: on the SQLite file in ``make test``, and on
PostgreSQL as well in ``make reliability`` (marker ``reliability``), which keeps ``make test``
within its time budget; ``pytest tests/dynflow`` runs both."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "[postgresql" in item.nodeid and "conformance" in item.nodeid:
            item.add_marker(pytest.mark.reliability)
