"""A reference model of the engine's documented behaviour, and the invariant checks.

The model (:class:`Model`) follows /work/shared/spec/dynflow.md, not the engine's code: the flow
cursor (§2.4: a failed step stops only its own sequence; success and skipped steps are done),
the finalize phase (all-or-nothing, steps reset to pending and run in order, stopping at the
first failure), auto-rescue (§1.6: the strategy of the root action, combined over the children,
at most once per set of failed steps: skip marks failed run steps ``skipping`` and failed
finalize steps ``skipped``; pause → ``paused``; fail → ``stopped``), resume (§2.5), the derived
result (§2.2) and recovery (§5.4: ``running`` steps of a dead world fail with "Abnormal
termination", or are re-run for ``rerun_on_recovery`` classes; then the rescue strategy; a
paused plan without errors is executed by auto-execute, one with errors waits for a human).

Given the planned plan (its flows and step ids, which the engine decides) and the behaviour of
every node (``engine_actions``), the model predicts the end state of every step, the plan's
``(state, result)`` and how often each step's code runs. :func:`check_plan` compares a finished
plan, its execution log and the store with a prediction and checks the invariants that hold
whatever the prediction: the stored result is derived from the steps, sequences and output
references are respected, no step runs concurrently with itself, nothing is left running.
:class:`TransitionTracer` records every step state change made in this process and reports the
ones the step state machines (§2.3) do not allow.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dynflow import flow as flows
from dynflow.execution_plan import ExecutionPlan
from dynflow.step import FinalizeStep, PlanStep, RunStep, Step

from . import engine_actions as ea

ABNORMAL = "Abnormal termination (previous state: running)"
TIMEOUT_MESSAGE = "Timeout exceeded."


def spec_result(states: list[str]) -> str:
    """§2.2, first rule that matches wins."""
    s = set(states)
    if "cancelled" in s:
        return "cancelled"
    if "error" in s:
        return "error"
    if s & {"skipping", "skipped"}:
        return "warning"
    if s <= {"success"}:
        return "success"
    return "pending"


def combine(suggestions: list[str]) -> str | None:
    """§1.6: all skip → skip, all fail → fail, any other mix → pause, none → None."""
    if not suggestions:
        return None
    if all(s == "skip" for s in suggestions):
        return "skip"
    if all(s == "fail" for s in suggestions):
        return "fail"
    return "pause"


# ---- the shape of a planned plan -----------------------------------------------------------------
@dataclass
class Shape:
    """Which steps belong to which node of the tree, and the flows the engine planned."""

    tree: dict[str, Any]
    nodes: dict[str, dict[str, Any]]
    children: dict[str, list[str]]
    plan_step: dict[str, int]
    run_step: dict[str, int | None]
    finalize_step: dict[str, int | None]
    step_node: dict[int, str]
    run_flow: flows.Flow
    finalize_order: list[int]

    def steps_of(self, node_id: str) -> list[int]:
        return [
            s
            for s in (
                self.plan_step[node_id], self.run_step[node_id], self.finalize_step[node_id]
            )
            if s is not None
        ]

    @property
    def root(self) -> str:
        return str(self.tree["id"])


def shape_of(plan: ExecutionPlan, tree: dict[str, Any]) -> Shape:
    nodes = {n["id"]: n for n in ea.walk(tree)}
    children = {n["id"]: [c["id"] for c in n.get("children", ())] for n in nodes.values()}
    plan_step: dict[str, int] = {}
    run_step: dict[str, int | None] = {}
    finalize_step: dict[str, int | None] = {}
    step_node: dict[int, str] = {}
    for action in plan.actions.values():
        node_id = action.input["node"]
        plan_step[node_id] = action.plan_step_id
        run_step[node_id] = action.run_step_id
        finalize_step[node_id] = action.finalize_step_id
        for s in (action.plan_step_id, action.run_step_id, action.finalize_step_id):
            if s is not None:
                step_node[s] = node_id
    assert set(plan_step) == set(nodes), "an action per node"
    return Shape(
        tree=tree,
        nodes=nodes,
        children=children,
        plan_step=plan_step,
        run_step=run_step,
        finalize_step=finalize_step,
        step_node=step_node,
        run_flow=plan.run_flow,
        finalize_order=list(plan.finalize_flow.step_ids()),
    )


# ---- the model -----------------------------------------------------------------------------------
@dataclass
class Counts:
    """How often the code of each step is expected to run (additions to what the log had)."""

    fresh: Counter[int] = field(default_factory=Counter)
    reentry: Counter[int] = field(default_factory=Counter)
    events: Counter[int] = field(default_factory=Counter)
    cancels: Counter[int] = field(default_factory=Counter)
    timers: Counter[int] = field(default_factory=Counter)
    finalize: Counter[int] = field(default_factory=Counter)


@dataclass
class Prediction:
    state: str
    result: str
    states: dict[int, str]
    errors: dict[int, str]
    counts: Counts
    executions: int  # times the plan was started ("start execution" entries to come)
    resumes: int  # human resumes the prediction used


class Model:
    """The plan as the spec says it evolves, from given step states (see the module doc)."""

    def __init__(
        self,
        shape: Shape,
        states: dict[int, str],
        *,
        fresh_attempts: dict[int, int] | None = None,
        finalize_attempts: dict[int, int] | None = None,
        waiting: dict[int, bool] | None = None,
        events_seen: dict[int, int] | None = None,
        errors: dict[int, str] | None = None,
        auto_rescue: bool = True,
    ) -> None:
        self.shape = shape
        self.states = dict(states)
        self.fresh_attempts: Counter[int] = Counter(fresh_attempts or {})
        self.finalize_attempts: Counter[int] = Counter(finalize_attempts or {})
        self.waiting = dict(waiting or {})
        self.events_seen: Counter[int] = Counter(events_seen or {})
        self.errors = dict(errors or {})
        self.auto_rescue = auto_rescue
        self.counts = Counts()
        self.executions = 0

    # what one run of a run step does
    def _run_step(self, step_id: int, previous: str) -> str:
        node = self.shape.nodes[self.shape.step_node[step_id]]
        # the action tells a re-entry from a fresh run by its stored output (engine_actions)
        if self.waiting.get(step_id):
            self.counts.reentry[step_id] += 1
        else:
            self.counts.fresh[step_id] += 1
            self.fresh_attempts[step_id] += 1
        self.waiting[step_id] = False
        behaviour = node.get("behaviour", "ok") if node["kind"] == "leaf" else "ok"
        outcome, error = "success", ""
        if behaviour == "fail":
            if self.fresh_attempts[step_id] <= int(node.get("fail_attempts", 0)):
                outcome, error = "error", ea.RUN_FAILURE
        elif behaviour == "event":
            needed = int(node.get("events", 1)) - self.events_seen[step_id]
            self.counts.events[step_id] += max(1, needed)
            self.events_seen[step_id] = int(node.get("events", 1))
        elif behaviour == "self_event":
            self.counts.timers[step_id] += 1
        elif behaviour == "timeout":
            self.counts.timers[step_id] += 1
            outcome, error = "error", TIMEOUT_MESSAGE
        elif behaviour == "cancel":
            self.counts.cancels[step_id] += 1
            if node.get("on_cancel") == "fail":
                outcome, error = "error", ea.CANCEL_FAILURE
        if outcome == "error":
            self.errors[step_id] = error
        else:
            self.errors.pop(step_id, None)
        return outcome

    def _cursor(self, node: flows.Flow) -> bool:
        """Run what the flow cursor reaches; True if the flow is done."""
        if isinstance(node, flows.Atom):
            s = node.step_id
            state = self.states[s]
            if state in ("success", "skipped"):
                return True
            if state == "skipping":
                self.states[s] = "skipped"
                return True
            assert state in ("pending", "error", "suspended"), (s, state)
            self.states[s] = self._run_step(s, state)
            return self.states[s] == "success"
        assert isinstance(node, flows.Composed)
        if isinstance(node, flows.Sequence):
            return all(self._cursor(child) for child in node.children)  # stops at the first
        results = [self._cursor(child) for child in node.children]
        return all(results)

    def _finalize_phase(self) -> bool:
        order = self.shape.finalize_order
        for s in order:
            if self.states[s] in ("success", "error"):
                self.states[s] = "pending"
        for s in order:
            if self.states[s] == "skipped":
                continue
            node = self.shape.nodes[self.shape.step_node[s]]
            self.counts.finalize[s] += 1
            self.finalize_attempts[s] += 1
            if self.finalize_attempts[s] <= int(node.get("fail_finalize", 0)):
                self.states[s] = "error"
                self.errors[s] = ea.FINALIZE_FAILURE
                return False
            self.states[s] = "success"
            self.errors.pop(s, None)
        return True

    def strategy(self, node_id: str) -> str | None:
        suggestions = []
        if any(self.states[s] == "error" for s in self.shape.steps_of(node_id)):
            suggestions.append(str(self.shape.nodes[node_id].get("rescue", "pause")))
        for child in self.shape.children[node_id]:
            suggestion = self.strategy(child)
            if suggestion is not None:
                suggestions.append(suggestion)
        return combine(suggestions)

    def plan_strategy(self) -> str:
        return self.strategy(self.shape.root) or "skip"

    def _skip_failed(self) -> None:
        for s, state in self.states.items():
            if state != "error":
                continue
            if s in self.shape.finalize_order:
                self.states[s] = "skipped"
            elif self.shape.run_step.get(self.shape.step_node[s]) == s:
                self.states[s] = "skipping"

    def execute(self) -> str:
        """One execution (start, resume or auto-execute) until the plan pauses or stops."""
        self.executions += 1
        rescued: set[int] = set()
        while True:
            ok = self._cursor(self.shape.run_flow)
            if ok and self.shape.finalize_order:
                ok = self._finalize_phase()
            if ok:
                return "stopped"
            failed = {s for s, state in self.states.items() if state == "error"}
            if not self.auto_rescue or failed <= rescued:
                return "paused"
            rescued |= failed
            strategy = self.plan_strategy()
            if strategy == "pause":
                return "paused"
            if strategy == "fail":
                return "stopped"
            self._skip_failed()

    def recover(self) -> str:
        """§5.4 for a plan whose executing world died: ``stopped``, ``paused`` (left for a
        human) or ``continue`` (executed again at once)."""
        for s, state in self.states.items():
            if state != "running":
                continue
            node = self.shape.nodes[self.shape.step_node[s]]
            if self.shape.run_step.get(node["id"]) == s and node.get("rerun"):
                self.states[s] = "suspended"
            else:
                self.states[s] = "error"
                self.errors[s] = ABNORMAL
        if not any(state == "error" for state in self.states.values()):
            return "continue"
        # As Dynflow's invalidation: the rescue strategy applies, auto_rescue or not.
        strategy = self.plan_strategy()
        if strategy == "pause":
            return "paused"
        if strategy == "fail":
            return "stopped"
        self._skip_failed()
        return "continue"

    def result(self) -> str:
        return spec_result(list(self.states.values()))

    def predict(self, start: str, resumes: int) -> Prediction:
        """``start``: ``execute`` (a plan just triggered), ``recover`` (its world died while
        it was running), ``restart`` (a parked or ended plan seen by a starting world)."""
        if start == "execute":
            outcome = self.execute()
        elif start == "recover":
            outcome = self.recover()
        else:
            raise ValueError(start)
        if outcome == "continue":
            outcome = self.execute()
        used = 0
        while outcome == "paused" and used < resumes:
            used += 1
            outcome = self.execute()
        return Prediction(
            state=outcome,
            result=self.result(),
            states=dict(self.states),
            errors=dict(self.errors),
            counts=self.counts,
            executions=self.executions,
            resumes=used,
        )


def predict_restart(model: Model, plan_state: str, resumes: int) -> Prediction:
    """A world starts on a database where the plan is ``plan_state`` and its executing world is
    gone (cleanly stopped or killed)."""
    if plan_state == "running":
        return model.predict("recover", resumes)
    outcome = plan_state
    if plan_state == "paused" and model.result() != "error":
        outcome = model.execute()  # auto-execute
    used = 0
    while outcome == "paused" and used < resumes:
        used += 1
        outcome = model.execute()
    return Prediction(
        state=outcome,
        result=model.result(),
        states=dict(model.states),
        errors=dict(model.errors),
        counts=model.counts,
        executions=model.executions,
        resumes=used,
    )


# ---- planning failures ---------------------------------------------------------------------------
@dataclass
class PlanningPrediction:
    failing: str | None
    entered: list[str]
    completed: list[str]


def predict_planning(tree: dict[str, Any]) -> PlanningPrediction:
    """Depth first; a leaf fails before ``plan_self``, a group after its children."""
    entered: list[str] = []
    completed: list[str] = []

    def visit(node: dict[str, Any]) -> str | None:
        entered.append(node["id"])
        for child in node.get("children", ()):
            failing = visit(child)
            if failing is not None:
                return failing
        if node.get("fail_plan"):
            return str(node["id"])
        completed.append(node["id"])
        return None

    return PlanningPrediction(visit(tree), entered, completed)


def check_planning_failure(plan: ExecutionPlan, tree: dict[str, Any]) -> None:
    pred = predict_planning(tree)
    assert pred.failing is not None
    assert (plan.state, plan.result) == ("stopped", "error"), plan
    # an action per node planning reached; only those that finished planning have an input
    assert len(plan.actions) == len(pred.entered), (pred, plan.actions)
    by_node = {a.input["node"]: a for a in plan.actions.values() if "node" in a.input}
    assert set(by_node) == set(pred.completed), (pred, sorted(by_node))
    failed_plan_steps = {s.id for s in plan.steps.values() if s.state == "error"}
    completed_steps = set()
    for node_id in pred.completed:
        action = by_node[node_id]
        completed_steps.add(action.plan_step_id)
        assert plan.steps[action.plan_step_id].state == "success"
        for s in (action.run_step_id, action.finalize_step_id):
            if s is not None:
                assert plan.steps[s].state == "pending", plan.steps[s]
    ancestors = len(pred.entered) - len(pred.completed)
    assert len(failed_plan_steps) == ancestors, (pred, failed_plan_steps)
    for s in failed_plan_steps:
        assert isinstance(plan.steps[s], PlanStep)
        assert plan.steps[s].error is not None
        assert plan.steps[s].error["message"] == ea.PLANNING_FAILURE
    assert plan.run_steps() == [] or all(s.state == "pending" for s in plan.run_steps())


# ---- the execution log ---------------------------------------------------------------------------
@dataclass
class LogView:
    """The entries of one plan, with each start's end (``None`` while running or cut)."""

    starts: list[dict[str, Any]]
    ends: dict[str, tuple[int, dict[str, Any]]]
    position: dict[str, int]

    @classmethod
    def of(cls, entries: list[dict[str, Any]], plan_id: str) -> LogView:
        starts = []
        position: dict[str, int] = {}
        ends: dict[str, tuple[int, dict[str, Any]]] = {}
        ids = set()
        for index, entry in enumerate(entries):
            if entry.get("e") == "start" and entry["p"] == plan_id:
                starts.append(entry)
                position[entry["i"]] = index
                ids.add(entry["i"])
            elif entry.get("e") == "end" and entry["i"] in ids:
                ends[entry["i"]] = (index, entry)
        return cls(starts, ends, position)

    def counts(self) -> Counts:
        c = Counts()
        for s in self.starts:
            kind = s["k"]
            if kind == "fresh":
                c.fresh[s["s"]] += 1
            elif kind == "reentry":
                c.reentry[s["s"]] += 1
            elif kind == "event":
                c.events[s["s"]] += 1
            elif kind == "cancel":
                c.cancels[s["s"]] += 1
            elif kind == "timer":
                c.timers[s["s"]] += 1
            elif kind == "finalize":
                c.finalize[s["s"]] += 1
        return c

    def of_step(self, step_id: int) -> list[dict[str, Any]]:
        return [s for s in self.starts if s["s"] == step_id]

    def end_of(self, start: dict[str, Any]) -> int | None:
        end = self.ends.get(start["i"])
        return end[0] if end else None

    def outcome_of(self, start: dict[str, Any]) -> str | None:
        end = self.ends.get(start["i"])
        return end[1]["o"] if end else None


def _sequences(node: flows.Flow) -> Iterator[flows.Sequence]:
    if isinstance(node, flows.Composed):
        if isinstance(node, flows.Sequence):
            yield node
        for child in node.children:
            yield from _sequences(child)


def check_log(
    view: LogView, shape: Shape, states: dict[int, str], *, crashed: bool = False
) -> None:
    """Invariants of the execution log that hold in any run (with restarts too); ``states``:
    the final step states."""
    # a step never runs concurrently with itself, and an invocation is never left open unless a
    # crash cut it
    for step_id in shape.step_node:
        intervals = []
        for start in view.of_step(step_id):
            begin = view.position[start["i"]]
            end = view.end_of(start)
            if end is None:
                assert crashed, f"invocation of step {step_id} never ended: {start}"
                continue
            intervals.append((begin, end))
        intervals.sort()
        for (_b1, e1), (b2, _e2) in zip(intervals, intervals[1:], strict=False):
            assert e1 < b2, f"step {step_id} ran twice at the same time"
    # the children of a sequence run one after the other
    for seq in _sequences(shape.run_flow):
        for before, after in zip(seq.children, seq.children[1:], strict=False):
            first_after = [
                view.position[s["i"]] for sid in after.step_ids() for s in view.of_step(sid)
            ]
            if not first_after:
                continue
            begin = min(first_after)
            for sid in before.step_ids():
                for s in view.of_step(sid):
                    assert view.position[s["i"]] < begin, (
                        f"step {sid} ran after step of a later sequence member started"
                    )
                    end = view.end_of(s)
                    assert end is None or end < begin, f"step {sid} still ran ({seq})"
    # output references: after the referenced step, with its stored value (None if the step
    # was skipped: no output; a success a crash lost counts as none)
    for start in view.starts:
        if "ref" not in start:
            continue
        node = shape.nodes[start["n"]]
        ref_step = shape.run_step[node["ref"]]
        assert ref_step is not None
        here = view.position[start["i"]]
        earlier = [s for s in view.of_step(ref_step) if view.position[s["i"]] < here]
        later = [s for s in view.of_step(ref_step) if view.position[s["i"]] > here]
        assert not later, f"step {start['s']} ran before the step {ref_step} it refers to"
        assert earlier, f"step {start['s']} ran before the step {ref_step} it refers to"
        expected = ea.value_of(node["ref"]) if states[ref_step] == "success" else None
        assert start["ref"] == expected, (start, expected)
    # finalize steps run once no run step does, and never before one
    run_positions = [
        (view.position[s["i"]], view.end_of(s)) for s in view.starts if s["ph"] == "run"
    ]
    for start in view.starts:
        if start["ph"] != "finalize":
            continue
        here = view.position[start["i"]]
        for begin, end in run_positions:
            assert begin < here, "a run step started after a finalize step"
            assert end is None or end < here, "a finalize step ran while a run step did"


def check_counts(view: LogView, before: Counts, pred: Counts, *, crashed: bool) -> None:
    """The log holds what it held ``before`` plus what the prediction adds, per step."""
    got = view.counts()
    for name in ("fresh", "reentry", "cancels", "timers", "finalize", "events"):
        want: Counter[int] = getattr(before, name) + getattr(pred, name)
        have: Counter[int] = getattr(got, name)
        if name == "events" and crashed:
            # an event processed while the process died was not saved; the driver sends more
            for s, n in want.items():
                assert have[s] >= n, (name, s, have[s], n)
            continue
        assert +have == +want, (name, dict(have), dict(want))


# ---- the plan ------------------------------------------------------------------------------------
def check_plan(
    plan: ExecutionPlan,
    shape: Shape,
    pred: Prediction,
    stored: dict[str, Any],
) -> None:
    """A finished plan against the prediction; ``stored`` is its row (plan_statuses)."""
    steps = plan.steps
    assert len(steps) == len(plan.step_ids) == len(shape.step_node)
    actual = {s.id: s.state for s in steps.values()}
    assert actual == pred.states, _diff(actual, pred.states, plan)
    assert (plan.state, plan.result) == (pred.state, pred.result), (plan, pred.state, pred.result)
    # the stored result is the one derived from the steps (§2.2)
    assert stored == {"state": pred.state, "result": pred.result}, stored
    assert spec_result(list(actual.values())) == plan.result
    # documented end states of a plan that is not executing
    assert plan.state in ("stopped", "paused")
    assert "running" not in actual.values(), actual
    history = [h["name"] for h in plan.execution_history]
    if "suspended" in actual.values():
        # only a plan the recovery stopped (rescue strategy fail, §5.4) keeps suspended steps,
        # as a halted one does (§1.9); an execution ends when no step is suspended
        assert plan.state == "stopped" and history[-2:] == [
            "terminate execution", "finish execution"
        ], (actual, history)
    if plan.state == "paused":
        assert plan.result == "error"
    if plan.result == "success":
        assert plan.state == "stopped" and plan.progress() == 1.0
    for step_id, state in actual.items():
        step = steps[step_id]
        if state == "error":
            assert step.error is not None, step
            message = str(step.error.get("message"))
            assert message.startswith(pred.errors[step_id]), (step, pred.errors[step_id])
        if isinstance(step, PlanStep):
            assert state == "success", step
    # outputs of what succeeded
    for node_id, run_step in shape.run_step.items():
        if run_step is None or actual[run_step] != "success":
            continue
        action = plan.actions[steps[run_step].action_id]
        assert action.output.get("value") == ea.value_of(node_id), action.output
        node = shape.nodes[node_id]
        if node.get("behaviour") == "event":
            assert action.output.get("events") == int(node.get("events", 1)), action.output
    assert history.count("start execution") >= 1, history
    assert history[-1] == ("finish execution" if plan.state == "stopped" else "pause execution")
    _check_history(history)


def _check_history(history: list[str]) -> None:
    """Every execution starts, then ends (pause, finish, or terminate on a stop or a crash)."""
    open_ = False
    previous = None
    for name in history:
        if name == "start execution":
            assert not open_, history
            open_ = True
        elif name in ("pause execution", "finish execution"):
            # the recovery stops a plan its rescue strategy fails right after terminating it
            assert open_ or (name, previous) == ("finish execution", "terminate execution"), (
                history
            )
            open_ = False
        elif name == "terminate execution":
            open_ = False
        previous = name
    assert not open_, history


def _diff(actual: dict[int, str], expected: dict[int, str], plan: ExecutionPlan) -> str:
    lines = []
    for s in sorted(set(actual) | set(expected)):
        if actual.get(s) != expected.get(s):
            step = plan.steps.get(s)
            lines.append(
                f"step {s} ({type(step).__name__} {step.action_class if step else '?'}): "
                f"{actual.get(s)} != expected {expected.get(s)}"
                f" error={step.error.get('message') if step and step.error else None}"
            )
    return "\n".join(lines)


# ---- snapshots -----------------------------------------------------------------------------------
@dataclass
class Snapshot:
    """What the store says of a plan whose world is gone, before another world starts."""

    plan_state: str
    states: dict[int, str]
    waiting: dict[int, bool]
    events_seen: dict[int, int]
    errors: dict[int, str]


def snapshot_of(plan: ExecutionPlan, shape: Shape) -> Snapshot:
    waiting: dict[int, bool] = {}
    events: dict[int, int] = {}
    errors: dict[int, str] = {}
    for s in shape.run_step.values():
        if s is None:
            continue
        action = plan.actions[plan.steps[s].action_id]
        waiting[s] = bool(action.output.get("waiting"))
        events[s] = int(action.output.get("events", 0))
    for step in plan.steps.values():
        if step.state == "error" and step.error:
            errors[step.id] = _error_kind(str(step.error.get("message")))
    return Snapshot(
        plan_state=plan.state,
        states={s.id: s.state for s in plan.steps.values()},
        waiting=waiting,
        events_seen=events,
        errors=errors,
    )


def _error_kind(message: str) -> str:
    for known in (
        ea.RUN_FAILURE, ea.FINALIZE_FAILURE, ea.CANCEL_FAILURE, TIMEOUT_MESSAGE, ABNORMAL
    ):
        if message.startswith(known):
            return known
    return message


def attempts_from_log(view: LogView) -> tuple[dict[int, int], dict[int, int]]:
    c = view.counts()
    return dict(c.fresh), dict(c.finalize)


# ---- transitions --------------------------------------------------------------------------------
@dataclass
class Violation:
    plan_id: str
    step_id: int
    kind: str
    old: str
    new: str


class TransitionTracer:
    """Records step state changes made in this process that §2.3 does not allow."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []

    @contextlib.contextmanager
    def installed(self) -> Iterator[TransitionTracer]:
        member = Step.__dict__["state"]
        tracer = self

        class Traced:
            def __get__(self, obj: Any, owner: Any = None) -> Any:
                if obj is None:
                    return self
                return member.__get__(obj, owner)

            def __set__(self, obj: Any, value: str) -> None:
                try:
                    old = member.__get__(obj, type(obj))
                except AttributeError:
                    old = None  # the first assignment, in __init__
                if old is not None and old != value and value not in obj.transitions.get(
                    old, frozenset()
                ):
                    tracer.violations.append(
                        Violation(obj.execution_plan_id, obj.id, obj.kind, old, value)
                    )
                member.__set__(obj, value)

        Step.state = Traced()  # type: ignore[assignment,misc]
        try:
            yield self
        finally:
            Step.state = member  # type: ignore[misc]

    def of_plan(self, plan_id: str) -> list[Violation]:
        return [v for v in self.violations if v.plan_id == plan_id]


__all__ = [
    "ABNORMAL",
    "Counts",
    "FinalizeStep",
    "LogView",
    "Model",
    "Prediction",
    "RunStep",
    "Shape",
    "Snapshot",
    "TransitionTracer",
    "attempts_from_log",
    "check_counts",
    "check_log",
    "check_plan",
    "check_planning_failure",
    "predict_planning",
    "predict_restart",
    "shape_of",
    "snapshot_of",
    "spec_result",
]
