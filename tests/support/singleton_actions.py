"""Singleton actions shared by ``tests/dynflow/test_singleton.py`` and its crash worker process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dynflow import CANCEL
from dynflow.singleton import Singleton


class SingletonAction(Singleton):
    """No run, no finalize: holds the lock from planning until the plan stops."""


class SingletonActionWithRun(Singleton):
    def run(self) -> None:
        self.output["ran"] = True


class SingletonActionWithFinalize(Singleton):
    def finalize(self) -> None:
        pass


class SuspendedSingletonAction(Singleton):
    def run(self, event: Any = None) -> None:
        if not self.output.get("suspended"):
            self.output["suspended"] = True
            self.suspend()
        if event == CANCEL:
            self.fail("cancelled")


FAIL: dict[str, bool] = {"fail": False}


class FailingSingleton(Singleton):
    """Fails while ``FAIL['fail']`` is set (the plan pauses, releasing its lock)."""

    def run(self) -> None:
        if FAIL["fail"]:
            raise RuntimeError("singleton failed")
        self.output["ok"] = True


class SlowSingleton(Singleton):
    """Writes ``input['marker']`` when its run starts, then blocks (the crash test kills it)."""

    def run(self) -> None:
        Path(self.input["marker"]).write_text("running")
        time.sleep(float(self.input.get("sleep", 60)))
        self.output["slept"] = True
