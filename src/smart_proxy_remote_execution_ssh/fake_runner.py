"""The simulation runner (``REX_SIMULATE``, §5.14): demos and load tests without hosts.

``REX_SIMULATE=yes|true|1`` makes every job use it. Its output is the lines of the file named by
``REX_SIMULATE_PATH`` (or a short built-in banner), one line per refresh; then it exits with 0,
or with ``REX_SIMULATE_EXIT`` when a roll of ``REX_SIMULATE_FAIL_CHANCE`` percent says so.
``kill`` ends it at once. After a restart of the service it re-attaches: it goes on after the
lines the proxy had stored (``published_lines``), as a real job would have gone on.
"""

from __future__ import annotations

import os
import random
from functools import cache
from typing import Any

from smart_proxy_dynflow.runner import Runner

BANNER = [
    "====== Simulated Remote Execution ======",
    "",
    "This is an output of a simulated remote execution job.",
    "No host was contacted; set REX_SIMULATE to no to run on real hosts.",
    "",
]


def simulate() -> bool:
    return os.environ.get("REX_SIMULATE", "").strip().lower() in ("yes", "true", "1")


@cache
def _lines(path: str | None) -> tuple[str, ...]:
    if path:
        with open(path, encoding="utf-8", errors="replace") as f:
            return tuple(line.rstrip("\n") for line in f)
    return tuple(BANNER)


class FakeRunner(Runner):
    recoverable = True

    def __init__(self, *, published_lines: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lines = list(_lines(os.environ.get("REX_SIMULATE_PATH") or None))
        self.position = min(published_lines, len(self.lines))

    async def start(self) -> None:
        self.publish_started()
        self._next_line()

    async def reattach(self) -> None:
        self._next_line()

    async def refresh(self) -> None:
        self._next_line()

    async def kill(self) -> None:
        self.publish_data("The simulated job was killed", "debug")
        self.publish_exit_status(143)

    def _next_line(self) -> None:
        if self.exit_status is not None:
            return
        if self.position < len(self.lines):
            self.publish_data(self.lines[self.position] + "\n", "stdout")
            self.position += 1
        if self.position >= len(self.lines):
            self.publish_exit_status(self.exit_code())

    @staticmethod
    def exit_code() -> int:
        code = int(os.environ.get("REX_SIMULATE_EXIT", "0") or 0)
        if code == 0:
            return 0
        chance = int(os.environ.get("REX_SIMULATE_FAIL_CHANCE", "0") or 0)
        return 0 if chance < round(random.random() * 100) else code
