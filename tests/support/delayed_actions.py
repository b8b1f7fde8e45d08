"""Actions of the delayed-plan and chaining tests (importable by the crash worker too)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dynflow import Action
from dynflow.delayed import ArgsSerializer, DelayOptions
from dynflow.singleton import Singleton

EVENTS: list[tuple[str, str]] = []  # (plan id, hook kind) of HookRecorder
RUNS: dict[str, int] = {}  # plan id -> run count of Counted


class Greet(Action):
    def run(self) -> None:
        self.output["greeting"] = f"hello, {self.input['name']}"


class Counted(Action):
    def run(self) -> None:
        RUNS[self.execution_plan_id] = RUNS.get(self.execution_plan_id, 0) + 1


HOOK_KINDS = (
    "pending",
    "scheduled",
    "planning",
    "planned",
    "running",
    "paused",
    "stopped",
    "success",
    "failure",
)


class HookRecorder(Action):
    """Records ``(plan id, hook kind)`` into ``EVENTS`` for every hook kind."""

    execution_plan_hooks = {kind: [f"on_{kind}"] for kind in HOOK_KINDS}

    def run(self) -> None:
        self.output["ok"] = True

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_") and name[3:] in HOOK_KINDS:
            kind = name[3:]
            return lambda plan: EVENTS.append((plan.id, kind))
        raise AttributeError(name)


class PlanFails(Action):
    def plan(self, **kwargs: Any) -> None:
        raise RuntimeError("cannot plan this")


class FailAndStop(Action):
    """Fails its run step; the rescue strategy "fail" stops the plan (stopped/error)."""

    def run(self) -> None:
        raise RuntimeError("prerequisite broke")

    def rescue_strategy_for_self(self) -> str:
        return "fail"


# ---- a custom serializer: objects go to the store as ids -----------------------------------------
class Host:
    registry: dict[int, Host] = {}

    def __init__(self, id: int, name: str) -> None:
        self.id = id
        self.name = name
        Host.registry[id] = self


class HostSerializer(ArgsSerializer):
    def serialize(self, value: Any) -> Any:
        if isinstance(value, Host):
            return {"host_id": value.id}
        return value

    def deserialize(self, value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"host_id"}:
            return Host.registry[value["host_id"]]
        return value


class BrokenSerializer(ArgsSerializer):
    def serialize(self, value: Any) -> Any:
        raise ValueError("cannot serialize that")


class RebootHost(Action):
    def delay(self, delay_options: DelayOptions, *args: Any, **kwargs: Any) -> ArgsSerializer:
        return HostSerializer(args, kwargs)

    def plan(self, host: Host, reason: str = "") -> None:
        assert isinstance(host, Host), host
        self.plan_self(host_name=host.name, reason=reason)

    def run(self) -> None:
        self.output["rebooted"] = self.input["host_name"]


class BrokenDelay(Action):
    def delay(self, delay_options: DelayOptions, *args: Any, **kwargs: Any) -> ArgsSerializer:
        return BrokenSerializer(args, kwargs)

    def run(self) -> None:
        pass


# ---- the crash test: planning that hangs while a flag file exists --------------------------------
class HangingPlan(Action):
    """``plan`` appends to ``dir/plans.log``; while ``dir/block`` exists it then writes
    ``dir/planning`` and hangs (blocking the event loop) until the process is killed."""

    def plan(self, dir: str) -> None:
        base = Path(dir)
        with (base / "plans.log").open("a") as log:
            log.write(f"{self.execution_plan_id}\n")
        if (base / "block").exists():
            (base / "planning").write_text(self.execution_plan_id)
            time.sleep(120)
        self.plan_self(dir=dir)

    def run(self) -> None:
        self.output["ran"] = True


class OnlyOne(Singleton):
    """A singleton action that waits for an event ``{"finish": true}``."""

    def run(self, event: Any = None) -> None:
        if event is None:
            self.suspend()
