"""Launchers: how ``POST /tasks/launch`` turns an operation's input into plans (§3).

* :class:`SingleLauncher` (operation ``single``): one action, one plan.
* :class:`BatchLauncher` (e.g. ``ssh``): one parent plan, answered at once as
  ``{"parent": ...}``; when it runs it plans one child per input key, **with the key as the
  child's plan id** (Foreman expects its own plan id back), each child an ordinary single task
  with its own callback.
* :class:`GroupLauncher` (e.g. ``ansible-runner``): like batch, but one runner serves every
  host: children are :class:`OutputCollector` plans that only absorb their host's output, one
  :class:`BatchRunnerAction` plan runs the shared runner, and Foreman gets one bulk callback.

Input is validated before anything is planned, so a bad request leaves the store untouched.
A batch launch sent again (Foreman retries after its read timeout) is idempotent: keys planned
already with the same action are answered as launched and not planned again (only the new ones
get a parent); a key planned with another action is a conflict (409).
Passwords in the input (``secrets``) are sealed before anything is stored, when the core has a
secret box (:mod:`.secret_box`): the parent of a batch stores every task's input. The parents
erase them from their stored input once their children are planned (the children keep theirs
until their runner finished).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, ClassVar

from dynflow import Action
from dynflow.action import ABORT, CANCEL, SKIP

from .callback import BatchCallbackAction
from .context import CoreContext, context_of
from .parent_runner import ParentRunner
from .runner import Runner
from .runner_action import RunnerAction
from .secret_box import erase_secrets, has_secrets, seal_secrets

log = logging.getLogger("smart_proxy_dynflow.launcher")

SPAWN_CHUNK = 200


class LaunchInputError(ValueError):
    """The launch input does not have the shape the operation needs (HTTP 422)."""


class DuplicateTask(ValueError):
    """A requested task id exists already as another kind of task (HTTP 409)."""


def format_result(result: Any) -> dict[str, Any]:
    """``{"result": "success", "task_id": ...}`` or ``{"result": "error", "errors": [...]}``."""
    if getattr(result, "planned", False):
        return {"result": "success", "task_id": result.id}
    error = getattr(result, "error", None) or {}
    message = error.get("message") or "planning failed"
    klass = error.get("exception_class") or "Error"
    return {"result": "error", "task_id": result.id, "errors": [f"{message} ({klass})"]}


def _check_uuid(key: str) -> None:
    try:
        uuid.UUID(key)
    except (ValueError, AttributeError, TypeError):
        raise LaunchInputError(f"input key {key!r} is not a task UUID") from None


class Launcher:
    """Base: made with the core, the callback host and the request's ``options``.

    ``core`` is the :class:`~.context.CoreContext` of the core (the API passes its ``Core``,
    the parent actions the context their world carries)."""

    def __init__(
        self,
        core: CoreContext,
        callback_host: str | None,
        options: dict[str, Any] | None = None,
        operation: str | None = None,
    ) -> None:
        self.core = core
        self.callback_host = callback_host
        self.options = dict(options or {})
        self.operation = operation

    def to_hash(self) -> dict[str, Any]:
        """Enough to make the launcher again inside a parent action."""
        return {
            "operation": self.operation,
            "callback_host": self.callback_host,
            "options": self.options,
        }

    @classmethod
    def from_hash(cls, core: CoreContext, data: dict[str, Any]) -> Launcher:
        launcher_class = core.launchers.fetch(data["operation"])
        return launcher_class(
            core, data.get("callback_host"), data.get("options"), operation=data["operation"]
        )

    @staticmethod
    def proxy_url(input: Any) -> str | None:
        """``action_input.proxy_url`` of the single input or of the first batch entry."""
        if not isinstance(input, dict):
            return None
        entry = input if "action_input" in input else next(iter(input.values()), None)
        if isinstance(entry, dict) and isinstance(entry.get("action_input"), dict):
            url = entry["action_input"].get("proxy_url")
            return url if isinstance(url, str) and url else None
        return None

    # ---- one task -------------------------------------------------------------------------------
    def validate_single(self, input: Any, where: str = "input") -> type[Action]:
        if not isinstance(input, dict):
            raise LaunchInputError(f"{where} must be an object with action_class and action_input")
        if not isinstance(input.get("action_class"), str):
            raise LaunchInputError(f"{where}.action_class must be a string naming an action")
        if not isinstance(input.get("action_input"), dict):
            raise LaunchInputError(f"{where}.action_input must be an object")
        return self.core.actions.lookup(input["action_class"])

    def transform_input(self, action_input: dict[str, Any]) -> dict[str, Any]:
        return self.seal({**action_input, "callback_host": self.callback_host})

    def seal(self, value: Any) -> Any:
        """``value`` with its ``secrets`` sealed with the core's secret box (if it has one)."""
        return seal_secrets(value, self.core.secret_box)

    async def trigger_single(
        self, input: dict[str, Any], *, id: str | None = None, parent: Action | None = None
    ) -> Any:
        action_class = self.validate_single(input)
        return await self.core.world.trigger_with_options(
            action_class,
            args=(self.transform_input(input["action_input"]),),
            id=id,
            caller_action=parent,
        )

    # ---- what operations implement ---------------------------------------------------------------
    def validate(self, input: Any) -> None:
        raise NotImplementedError

    async def launch(self, input: Any) -> dict[str, Any]:
        raise NotImplementedError


class SingleLauncher(Launcher):
    """``{"action_class": ..., "action_input": {...}}`` → one plan (§3.3)."""

    def validate(self, input: Any) -> None:
        self.validate_single(input)

    async def launch(self, input: Any) -> dict[str, Any]:
        self.validate(input)
        return format_result(await self.trigger_single(input))


class BatchLauncher(Launcher):
    """``{"<task uuid>": {"action_class", "action_input"}, ...}`` → a parent and children."""

    def validate(self, input: Any) -> None:
        if not isinstance(input, dict) or not input:
            raise LaunchInputError("input must be a non-empty object keyed by task UUIDs")
        for key, entry in input.items():
            _check_uuid(key)
            self.validate_single(entry, where=f"input[{key!r}]")

    async def launch(self, input: Any) -> dict[str, Any]:
        self.validate(input)
        launched = await self.launched_before(input)
        todo = {key: entry for key, entry in input.items() if key not in launched}
        if not todo:  # all of them: answered as the first launch was
            return {"parent": {"result": "success", "task_id": next(iter(launched.values()))}}
        result = await self.core.world.trigger(
            self.parent_action(), input_hash=self.seal(todo), launcher=self.to_hash()
        )
        return {"parent": format_result(result)}

    async def launched_before(self, input: dict[str, Any]) -> dict[str, str]:
        """The keys of ``input`` an earlier launch planned already, each with the id of its
        parent plan: Foreman sends the same launch again after its read timeout, and those
        tasks are answered as launched, not planned (run) again. A key whose plan runs
        another action than this launch would plan is a :class:`DuplicateTask`."""
        world = self.core.world
        launched: dict[str, str] = {}
        conflicts: list[str] = []
        for key in await world.plan_statuses({"uuid": list(input)}):
            plan = await world.load_plan(key)
            root = plan.root_action() if plan is not None else None
            if root is not None and type(root) is self.child_action(input[key]):
                launched[key] = root.caller_execution_plan_id or key
            elif plan is not None:
                conflicts.append(key)
        if conflicts:
            raise DuplicateTask(
                "tasks with these ids exist already with another action: "
                + ", ".join(sorted(conflicts))
            )
        return launched

    def child_action(self, entry: dict[str, Any]) -> type[Action]:
        """The entry action of the plan of one task."""
        return self.validate_single(entry)

    def parent_action(self) -> type[Action]:
        """The action of the parent plan."""
        return BatchAction

    async def spawn_children(self, parent: Action, input_hash: dict[str, Any]) -> dict[str, int]:
        """Plan every child not planned yet (a restart may have cut an earlier run short)."""
        keys = list(input_hash)
        done = set(await self.core.world.plan_statuses({"uuid": keys}))
        counts = {"total_count": len(keys), "success_count": len(done), "failed_count": 0}
        todo = [k for k in keys if k not in done]
        for start in range(0, len(todo), SPAWN_CHUNK):
            chunk = todo[start : start + SPAWN_CHUNK]
            results = await asyncio.gather(
                *(self.spawn_child(parent, key, input_hash[key]) for key in chunk),
                return_exceptions=True,
            )
            for key, result in zip(chunk, results, strict=True):
                if isinstance(result, BaseException) or not getattr(result, "planned", False):
                    counts["failed_count"] += 1
                    log.error("child %s of %s failed to plan: %s", key, parent, result)
                else:
                    counts["success_count"] += 1
        counts["pending_count"] = 0
        return counts

    async def spawn_child(self, parent: Action, key: str, entry: dict[str, Any]) -> Any:
        return await self.trigger_single(entry, id=key, parent=parent)


class BatchAction(Action):
    """The parent of a batch launch: plans the children, then finishes (§3.4)."""

    wire_names = ("Proxy::Dynflow::Action::Batch",)
    # A crash while it plans the children re-runs it: it plans those not planned yet.
    rerun_on_recovery = True

    def plan(self, input_hash: dict[str, Any], launcher: dict[str, Any]) -> None:
        self.plan_self(input_hash=input_hash, launcher=launcher)

    async def run(self, event: Any = None) -> None:
        if event == SKIP:
            return  # skipped: the children not planned yet are not planned
        launcher = Launcher.from_hash(context_of(self.world), self.input["launcher"])
        assert isinstance(launcher, BatchLauncher)
        self.output.update(await launcher.spawn_children(self, self.input["input_hash"]))
        # Every child has its own copy now (stored with this step's save).
        if has_secrets(self.input):
            self.change_stored_input(erase_secrets)

    def rescue_strategy_for_self(self) -> str:
        return "fail"


# ---- group launches: one runner for many hosts (§3.5) -----------------------------------------
CHECK = "smart_proxy_dynflow.launcher.check"
GROUP_NAMESPACE = uuid.UUID("0f7c2a4e-93d1-4b6a-8e25-7c1d9b3a5f60")


class GroupLauncher(BatchLauncher):
    """A batch whose hosts share one :class:`ParentRunner` (``runner_class``)."""

    runner_class: ClassVar[type[ParentRunner]]

    def parent_action(self) -> type[Action]:
        return SingleRunnerBatchAction

    def child_action(self, entry: dict[str, Any]) -> type[Action]:
        return OutputCollector

    async def spawn_child(self, parent: Action, key: str, entry: dict[str, Any]) -> Any:
        action_input = self.transform_input(entry["action_input"])
        callback = action_input.pop("callback", None)
        if isinstance(callback, dict) and callback.get("task_id") is not None:
            action_input["task_id"] = callback["task_id"]
        action_input["runner_id"] = parent.output["runner_id"]
        return await self.core.world.trigger_with_options(
            OutputCollector, args=(action_input,), id=key, caller_action=parent
        )


class OutputCollector(RunnerAction):
    """A host's plan in a group launch: absorbs the updates the shared runner sends it."""

    wire_names = ("Proxy::Dynflow::Action::OutputCollector",)

    async def process_event(self, event: Any) -> None:
        if event is None:
            if "runner_id" not in self.output:
                self.output["result"] = []
                self.output["runner_id"] = self.input.get("runner_id")
            self.suspend()  # after a restart too: the batch runner re-attaches and reports
        await super().process_event(event)


class BatchRunnerAction(RunnerAction):
    """Runs the group's :class:`ParentRunner`; host output goes to the collectors."""

    wire_names = ("Proxy::Dynflow::Action::BatchRunner",)

    async def process_update(self, update: Any) -> None:
        await super().process_update(update)  # suspends unless the runner finished
        parent = self.input.get("parent")
        if isinstance(parent, dict):
            # Wake the group's parent now instead of at its next poll.
            self.plan_event(
                CHECK,
                execution_plan_id=parent["execution_plan_id"],
                step_id=parent["step_id"],
                optional=True,
            )

    def initiate_runner(self) -> Runner:
        launcher_class = context_of(self.world).launchers.fetch(self.input["operation"])
        runner_class: type[ParentRunner] = launcher_class.runner_class  # type: ignore[attr-defined]
        return runner_class(
            self.input["targets"],
            suspended_action=self.suspended_action,
            id=self.input["runner_id"],
        )


class SingleRunnerBatchAction(Action):
    """The parent of a group launch: collectors + one batch runner, then one bulk callback."""

    wire_names = ("Proxy::Dynflow::Action::SingleRunnerBatch",)
    cancellable = True
    polling_interval: ClassVar[float] = 10.0
    # Re-run after a crash: the runner ids are derived from the plan, so the children and the
    # batch runner planned by the interrupted run are found, not planned again.
    rerun_on_recovery = True

    def plan(self, input_hash: dict[str, Any], launcher: dict[str, Any]) -> None:
        self.plan_self(input_hash=input_hash, launcher=launcher)
        targets = {key: entry["action_input"].get("callback") for key, entry in input_hash.items()}
        if any(callback is not None for callback in targets.values()):
            self.plan_action(BatchCallbackAction, targets=targets, results=self.output["results"])

    async def run(self, event: Any = None) -> None:
        if event == SKIP:
            return  # skipped: the children not planned yet are not planned
        core = context_of(self.world)
        world = core.world
        keys = list(self.input["input_hash"])
        if event is None and "runner_id" not in self.output:
            self.output["runner_id"] = str(
                uuid.uuid5(GROUP_NAMESPACE, f"{self.execution_plan_id}/runner")
            )
            self.output["batch_runner_id"] = str(
                uuid.uuid5(GROUP_NAMESPACE, f"{self.execution_plan_id}/batch-runner")
            )
        if event is None:
            launcher = Launcher.from_hash(core, self.input["launcher"])
            assert isinstance(launcher, GroupLauncher)
            self.output.update(await launcher.spawn_children(self, self.input["input_hash"]))
            if not await world.plan_statuses({"uuid": [self.output["batch_runner_id"]]}):
                targets = {
                    key: {
                        "execution_plan_id": key,
                        "run_step_id": 2,
                        "input": self.input["input_hash"][key]["action_input"],
                    }
                    for key in keys
                }
                await world.trigger_with_options(
                    BatchRunnerAction,
                    kwargs={
                        "targets": targets,
                        "operation": launcher.operation,
                        "runner_id": self.output["runner_id"],
                        "parent": {
                            "execution_plan_id": self.execution_plan_id,
                            "step_id": self.run_step_id,
                        },
                    },
                    id=self.output["batch_runner_id"],
                    caller_action=self,
                )
            # The children and the batch runner have their own copies now.
            if has_secrets(self.input):
                self.change_stored_input(erase_secrets)
        elif event in (CANCEL, ABORT):
            await world.cancel(self.output["batch_runner_id"], force=event == ABORT)
            for key in keys:
                await world.cancel(key, force=event == ABORT)
        statuses = await world.plan_statuses({"uuid": keys})
        finished = [k for k, s in statuses.items() if s["state"] in ("stopped", "paused")]
        self.output["success_count"] = sum(
            1 for k in finished if statuses[k]["result"] in ("success", "warning")
        )
        self.output["failed_count"] = len(finished) - self.output["success_count"]
        self.output["pending_count"] = len(keys) - len(finished)
        if len(finished) < len(keys):
            self.plan_event(CHECK, self.polling_interval, optional=True)
            self.suspend()
        results: dict[str, Any] = {}
        for key in keys:
            plan = await world.load_plan(key)
            entry = plan.actions.get(1) if plan is not None else None
            results[key] = getattr(entry, "_output", None) if entry is not None else None
        self.output["results"] = results

    def rescue_strategy_for_self(self) -> str:
        return "skip"
