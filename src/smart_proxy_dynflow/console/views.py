"""View models of the console: what the templates show, built from plans the world loaded.

Nothing here queries the database: the application loads plans, output chunks and counts
through the world's public methods and hands them in. Every value shown passes the redaction
the task API uses (:func:`smart_proxy.redact.redact` for data, :func:`redact_text` for free
text such as error messages, backtraces and command output). Values nested deeper than
:data:`MAX_SHOWN_DEPTH` are cut there and lone surrogates (stored by older versions) are shown
as U+FFFD, so that no stored value can make a page fail.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import yaml

from dynflow import flow as flows
from dynflow.states import PLAN_STATES, RESULTS
from smart_proxy.json_body import replace_surrogates
from smart_proxy.redact import redact, redact_text

# Output lines rendered per action on the first load; the rest is a download away.
MAX_OUTPUT_LINES = 2000
MAX_VALUE_CHARS = 64 * 1024
REFERENCE_CLASS = "Dynflow::ExecutionPlan::OutputReference"
# Levels of nesting shown of a value; deeper parts are replaced by a marker (the API accepts
# MAX_JSON_DEPTH = 64; older versions stored up to ~480, deeper than YAML can render).
MAX_SHOWN_DEPTH = 100
CLIPPED = "… (nested too deeply to show)"

# Columns the list can be ordered by (as shown → as stored).
ORDER_COLUMNS = {
    "started_at": "started_at",
    "ended_at": "ended_at",
    "label": "label",
    "state": "state",
    "result": "result",
    "duration": "real_time",
}
PER_PAGE_CHOICES = (10, 20, 50, 100)
MAX_PER_PAGE = 500
DEFAULT_PER_PAGE = 20
# ``filters[<column>][]`` of the original console.
FILTER_ALIASES = {"state": "state", "result": "result", "label": "label", "uuid": "id"}


class BadRequest(Exception):
    """A query the console cannot answer: shown as a 4xx page."""

    def __init__(
        self, message: str, status: int = 400, link: tuple[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.link = link  # (href, text): where to go instead


# ---- formatting ---------------------------------------------------------------------------------


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def format_time(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "–"


def iso_time(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else ""


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def ago(value: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """``3 min ago``, for times in the past."""
    if value is None:
        return ""
    seconds = ((now or utcnow()) - value).total_seconds()
    if seconds < 10:
        return "just now"
    if seconds < 90:
        return f"{int(seconds)} s ago"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min ago"
    if seconds < 48 * 3600:
        return f"{round(seconds / 3600)} h ago"
    return f"{round(seconds / 86400)} days ago"


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def _references(value: Any) -> Any:
    """Output references shown as the original did: ``Step(4).output[:a][:b]``."""
    if isinstance(value, Mapping):
        if value.get("class") == REFERENCE_CLASS and "step_id" in value:
            keys = "".join(f"[:{k}]" for k in value.get("subkeys") or [])
            return f"Step({value['step_id']}).output{keys}"
        return {str(k): _references(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_references(v) for v in value]
    return value


def _clip(value: Any, depth: int = 1) -> Any:
    """``value`` cut below :data:`MAX_SHOWN_DEPTH` levels, lone surrogates replaced."""
    if isinstance(value, Mapping):
        if depth > MAX_SHOWN_DEPTH:
            return CLIPPED
        return {_clip(key): _clip(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        if depth > MAX_SHOWN_DEPTH:
            return CLIPPED
        return [_clip(item, depth + 1) for item in value]
    if isinstance(value, str):
        return replace_surrogates(value)
    return value


def to_yaml(value: Any) -> str:
    """A redacted value as readable YAML (multi-line strings as blocks)."""
    value = _references(redact(_clip(value)))
    if isinstance(value, str) and "\n" not in value:
        text = value
    else:
        try:
            text = yaml.dump(
                value,
                Dumper=_Dumper,
                sort_keys=False,
                allow_unicode=True,
                default_flow_style=False,
                width=100,
            ).rstrip()
        except yaml.YAMLError:
            text = repr(value)
        if text.endswith("\n..."):
            text = text[:-4].rstrip()
    if len(text) > MAX_VALUE_CHARS:
        text = text[:MAX_VALUE_CHARS] + f"\n… ({len(text) - MAX_VALUE_CHARS} more characters)"
    return replace_surrogates(text)


# ---- the plan list ------------------------------------------------------------------------------


@dataclass
class ListQuery:
    """The list page's filters, order and page, parsed and checked from the query string."""

    states: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    search: str = ""
    order: str = "started_at"
    desc: bool = True
    page: int = 0
    per_page: int = DEFAULT_PER_PAGE
    parent: str | None = None
    parent_action: int | None = None

    @classmethod
    def parse(cls, params: Any) -> ListQuery:
        """From Starlette's ``request.query_params`` (a multi-dict); raises :class:`BadRequest`."""
        query = cls()
        multi: dict[str, list[str]] = {}
        for key, value in params.multi_items():
            name = key
            if key.startswith("filters[") and key.endswith("][]"):
                column = key[len("filters[") : -3]
                if column not in FILTER_ALIASES:
                    raise BadRequest(
                        f"Cannot filter by {column!r}: use one of "
                        + ", ".join(sorted(FILTER_ALIASES))
                    )
                name = FILTER_ALIASES[column]
            multi.setdefault(name, []).append(value)
        query.states = _unique(v for v in multi.get("state", []) if v)
        for state in query.states:
            if state not in PLAN_STATES:
                raise BadRequest(f"Unknown state {state!r}: use one of {', '.join(PLAN_STATES)}")
        query.results = _unique(v for v in multi.get("result", []) if v)
        for result in query.results:
            if result not in RESULTS:
                raise BadRequest(f"Unknown result {result!r}: use one of {', '.join(RESULTS)}")
        query.labels = _unique(v for v in multi.get("label", []) if v)
        query.search = (multi.get("q") or multi.get("id") or [""])[-1].strip()[:200]
        order = (multi.get("order") or multi.get("order_by") or ["started_at"])[-1]
        if order == "real_time":
            order = "duration"
        if order not in ORDER_COLUMNS:
            raise BadRequest(f"Cannot order by {order!r}: use one of {', '.join(ORDER_COLUMNS)}")
        query.order = order
        desc = multi.get("desc")
        if desc:
            value = desc[-1].lower()
            if value not in ("1", "0", "true", "false", "yes", "no", "on", "off", ""):
                raise BadRequest(f"'desc' must be true or false, not {desc[-1]!r}")
            query.desc = value in ("1", "true", "yes", "on")
        query.page = _int(multi.get("page"), "page", 0, minimum=0)
        query.per_page = _int(
            multi.get("per_page"), "per_page", DEFAULT_PER_PAGE, minimum=1, maximum=MAX_PER_PAGE
        )
        parent = multi.get("parent")
        query.parent = parent[-1] if parent and parent[-1] else None
        if multi.get("parent_action"):
            if query.parent is None:
                raise BadRequest("'parent_action' needs 'parent' (the id of the parent plan)")
            query.parent_action = _int(multi.get("parent_action"), "parent_action", 0, minimum=0)
        return query

    def base_filters(self) -> dict[str, Any]:
        """The filters other than state and result (the counts at the top use these)."""
        filters: dict[str, Any] = {}
        if self.labels:
            filters["label"] = list(self.labels)
        if self.search:
            filters["search"] = self.search
        if self.parent is not None:
            filters["caller_execution_plan_id"] = self.parent
            if self.parent_action is not None:
                filters["caller_action_id"] = self.parent_action
        return filters

    def filters(self) -> dict[str, Any]:
        filters = self.base_filters()
        if self.states:
            filters["state"] = list(self.states)
        if self.results:
            filters["result"] = list(self.results)
        return filters

    @property
    def filtered(self) -> bool:
        return bool(self.states or self.results or self.labels or self.search)

    def params(self, **changes: Any) -> list[tuple[str, str]]:
        values: dict[str, Any] = {
            "state": self.states,
            "result": self.results,
            "label": self.labels,
            "q": self.search,
            "order": self.order,
            "desc": self.desc,
            "page": self.page,
            "per_page": self.per_page,
            "parent": self.parent,
            "parent_action": self.parent_action,
        }
        values.update(changes)
        defaults = {"order": "started_at", "desc": True, "page": 0, "per_page": DEFAULT_PER_PAGE}
        pairs: list[tuple[str, str]] = []
        for key, value in values.items():
            if value is None or value == "" or value == [] or defaults.get(key, object()) == value:
                continue
            if isinstance(value, bool):
                pairs.append((key, "1" if value else "0"))
            elif isinstance(value, list):
                pairs.extend((key, str(v)) for v in value)
            else:
                pairs.append((key, str(value)))
        return pairs

    def qs(self, **changes: Any) -> str:
        """``?...`` of this query with ``changes`` (the page goes back to 0 unless given)."""
        changes.setdefault("page", 0)
        pairs = self.params(**changes)
        return "?" + urlencode(pairs) if pairs else "?"

    def order_qs(self, column: str) -> str:
        """Ordering by ``column``: toggles the direction when it already orders by it."""
        if column == self.order:
            return self.qs(desc=not self.desc)
        return self.qs(order=column, desc=column in ("started_at", "ended_at", "duration"))


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _int(
    values: list[str] | None,
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    if not values or values[-1] == "":
        return default
    raw = values[-1]
    try:
        number = int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be a whole number, not {raw[:50]!r}") from None
    if minimum is not None and number < minimum:
        raise BadRequest(f"'{name}' must be at least {minimum}, not {number}")
    if maximum is not None and number > maximum:
        raise BadRequest(f"'{name}' must be at most {maximum}, not {number}")
    return number


@dataclass
class PlanRow:
    id: str
    label: str
    state: str
    result: str
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    duration: float | None


def plan_row(plan: Any, now: dt.datetime) -> PlanRow:
    return PlanRow(
        id=plan.id,
        label=plan.label or "(no label)",
        state=plan.state,
        result=plan.result,
        started_at=plan.started_at,
        ended_at=plan.ended_at,
        duration=plan_duration(plan, now),
    )


def plan_duration(plan: Any, now: dt.datetime) -> float | None:
    if plan.started_at is None:
        return None
    if plan.ended_at is not None:
        return plan.real_time or (plan.ended_at - plan.started_at).total_seconds()
    return max(0.0, (now - plan.started_at).total_seconds())


@dataclass
class Counts:
    """Counts of the plans matching the base filters, per state and per result."""

    by_state: dict[str, int]
    by_result: dict[str, int]
    total: int
    matching: int


def counts(grouped: Mapping[tuple[Any, ...], int], query: ListQuery) -> Counts:
    """From ``world.plan_counts(base filters, ("state", "result"))``: per-state counts (for
    the chips at the top), per-result counts within the chosen states, and how many match."""
    by_state = dict.fromkeys(PLAN_STATES, 0)
    by_result = dict.fromkeys(RESULTS, 0)
    total = matching = 0
    for (state, result), n in grouped.items():
        total += n
        by_state[state] = by_state.get(state, 0) + n
        if not query.states or state in query.states:
            by_result[result] = by_result.get(result, 0) + n
            if not query.results or result in query.results:
                matching += n
    return Counts(by_state, by_result, total, matching)


# ---- the plan page ------------------------------------------------------------------------------


@dataclass
class OutputLine:
    kind: str  # stdout, stderr, debug, or a chunk's kind
    text: str
    timestamp: float | None = None


@dataclass
class StepView:
    id: int
    phase: str  # plan, run, finalize
    state: str
    action_id: int
    action_class: str
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    real_time: float | None
    execution_time: float | None
    progress: int  # percent
    queue: str | None
    input: str
    output: str | None
    error: dict[str, Any] | None
    lines: list[OutputLine] = field(default_factory=list)
    lines_omitted: int = 0
    has_output: bool = False
    cancellable: bool = False
    skippable: bool = False
    sub_plans: int = 0
    children: list[StepView] = field(default_factory=list)

    @property
    def short_name(self) -> str:
        return self.action_class.replace("::", ".").rsplit(".", 1)[-1]

    @property
    def namespace(self) -> str:
        name = self.action_class
        cut = max(name.rfind("."), name.rfind("::"))
        return name[: cut + (2 if name[cut : cut + 2] == "::" else 1)] if cut > 0 else ""

    @property
    def finished(self) -> bool:
        return self.state in ("success", "skipped", "error", "cancelled")


@dataclass
class FlowNode:
    kind: str  # step, sequence, concurrence
    step: StepView | None = None
    children: list[FlowNode] = field(default_factory=list)


@dataclass
class HistoryEntry:
    time: dt.datetime
    name: str
    world_id: str | None
    world: dict[str, Any] | None


@dataclass
class PlanView(PlanRow):
    """A plan's page: its row of the list, and everything else."""

    execution_time: float | None
    progress: int
    history: list[HistoryEntry]
    parent_id: str | None
    steps: dict[int, StepView]
    run_flow: FlowNode | None
    finalize_flow: FlowNode | None
    plan_tree: StepView | None
    resumable: bool
    cancellable: bool
    running_here: bool
    haltable: bool
    failed: list[StepView]
    sub_plans: list[PlanRow] = field(default_factory=list)
    sub_plan_count: int = 0
    last_chunk_id: int = 0
    runner_ids: list[str] = field(default_factory=list)
    # A scheduled plan's delayed record (start_at, start_before, frozen), chained plans.
    delayed: dict[str, Any] | None = None
    depends_on: list[str] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.state in ("pending", "scheduled", "planning", "planned", "running")

    @property
    def is_scheduled(self) -> bool:
        return bool(self.delayed) and self.state in ("scheduled", "planning")


def is_record(item: Any) -> bool:
    return isinstance(item, Mapping) and "output_type" in item and "output" in item


def chunk_lines(chunk: Mapping[str, Any]) -> list[OutputLine]:
    """The lines of one stored chunk: continuous-output records, else the value as text."""
    data = chunk.get("chunk")
    items: list[Any] = data if isinstance(data, list) else [data]
    if items and all(is_record(item) for item in items):
        return [
            OutputLine(
                str(item.get("output_type") or "stdout"),
                redact_text(str(item.get("output") or "")),
                item.get("timestamp"),
            )
            for item in items
        ]
    text = data if isinstance(data, str) else to_yaml(data)
    return [
        OutputLine(str(chunk.get("kind") or "chunk"), redact_text(text), chunk.get("timestamp"))
    ]


def presented_action(world: Any, plan: Any, action: Any) -> dict[str, Any]:
    """``action.to_hash()`` after the world's presentation middleware, secrets redacted."""
    present = getattr(world, "present_action", None)
    if present is not None:
        entry = present(plan, action.id)
    else:
        entry = action.to_hash()
        for middleware in world.middleware_for(type(action)):
            entry = middleware.present(action, entry)
    entry["input"] = redact(entry.get("input") or {})
    if "output" in entry:
        entry["output"] = redact(entry.get("output") or {})
    return entry


def redacted_error(error: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not error:
        return None
    return {
        "exception_class": str(error.get("exception_class") or "Error"),
        "message": redact_text(str(error.get("message") or "")),
        "backtrace": [redact_text(str(line)) for line in error.get("backtrace") or []],
    }


def build_plan_view(
    world: Any,
    plan: Any,
    *,
    chunks: list[dict[str, Any]],
    sub_plan_counts: Mapping[int | None, int],
    sub_plans: list[Any],
    worlds: Mapping[str, dict[str, Any]],
    running_here: bool,
    partial_output: bool = False,
    now: dt.datetime | None = None,
    max_lines: int = MAX_OUTPUT_LINES,
) -> PlanView:
    """The plan page's model. ``chunks`` are the plan's output chunks (with ``partial_output``
    only the newest ones, for a live update: output is then taken from them alone)."""
    now = now or utcnow()
    chunks_by_action: dict[int, list[dict[str, Any]]] = {}
    for chunk in chunks:
        chunks_by_action.setdefault(int(chunk["action_id"]), []).append(chunk)
    steps: dict[int, StepView] = {}
    presented: dict[int, dict[str, Any]] = {}
    runner_ids: list[str] = []
    for action in plan.actions.values():
        presented[action.id] = presented_action(world, plan, action)
    for step in sorted(plan.steps.values(), key=lambda s: s.id):
        action = plan.actions.get(step.action_id)
        entry = presented.get(step.action_id, {"input": {}, "output": {}})
        phase = {"PlanStep": "plan", "RunStep": "run", "FinalizeStep": "finalize"}.get(
            type(step).kind, "run"
        )
        real_time: float | None = step.real_time or None
        if step.started_at is not None and step.state in ("running", "suspended"):
            real_time = max(0.0, (now - step.started_at).total_seconds())
        view = StepView(
            id=step.id,
            phase=phase,
            state=step.state,
            action_id=step.action_id,
            action_class=step.action_class or (action.name() if action else "?"),
            started_at=step.started_at,
            ended_at=step.ended_at,
            real_time=real_time,
            execution_time=step.execution_time or None,
            progress=_percent(step),
            queue=step.queue,
            input=to_yaml(entry.get("input") or {}),
            output=None,
            error=redacted_error(step.error),
            sub_plans=int(sub_plan_counts.get(step.action_id, 0)) if phase == "run" else 0,
        )
        if phase != "plan" and "output" in entry:
            output = dict(entry["output"] or {})
            lines: list[OutputLine] = []
            if phase == "run":
                for chunk in chunks_by_action.get(step.action_id, []):
                    lines.extend(chunk_lines(chunk))
                result = output.get("result")
                if isinstance(result, list) and result and all(is_record(r) for r in result):
                    if not lines and not partial_output:
                        lines = chunk_lines({"chunk": result})
                    output["result"] = f"({len(result)} output records, shown as Output)"
                view.has_output = bool(lines) or "runner_id" in output
                if len(lines) > max_lines:
                    view.lines_omitted = len(lines) - max_lines
                    lines = lines[-max_lines:]
                view.lines = lines
                if step.state in ("running", "suspended") and output.get("runner_id"):
                    runner_ids.append(str(output["runner_id"]))
            view.output = to_yaml(output) if output else None
        if action is not None and step.state in ("running", "suspended") and phase == "run":
            view.cancellable = bool(type(action).cancellable) and running_here
        view.skippable = plan.state == "paused" and step.state == "error" and phase == "run"
        steps[step.id] = view
    for view in steps.values():
        if view.phase == "plan":
            step = plan.steps[view.id]
            view.children = [steps[c] for c in step.children or [] if c in steps]
    history = []
    for entry in plan.execution_history:
        world_id = entry.get("world_id")
        try:
            when = dt.datetime.fromtimestamp(float(entry.get("time") or 0), dt.UTC)
        except (TypeError, ValueError, OverflowError):
            when = dt.datetime.fromtimestamp(0, dt.UTC)
        history.append(
            HistoryEntry(
                when.replace(tzinfo=None),
                str(entry.get("name") or "?"),
                world_id,
                worlds.get(world_id) if world_id else None,
            )
        )
    root = plan.root_action()
    parent_id = None
    if root is not None and root.caller_execution_plan_id not in (None, plan.id):
        parent_id = root.caller_execution_plan_id
    failed = [s for s in steps.values() if s.state == "error"]
    cancellable = plan.state == "running" and any(s.cancellable for s in steps.values())
    return PlanView(
        **vars(plan_row(plan, now)),
        execution_time=plan.execution_time,
        progress=round(plan.progress() * 100) if plan.steps else 0,
        history=history,
        parent_id=parent_id,
        steps=steps,
        run_flow=flow_node(plan.run_flow, steps),
        finalize_flow=flow_node(plan.finalize_flow, steps),
        plan_tree=steps.get(plan.root_plan_step_id) if plan.root_plan_step_id else None,
        resumable=plan.state == "paused",
        cancellable=cancellable,
        running_here=running_here,
        haltable=plan.state != "stopped",
        failed=failed,
        sub_plans=[plan_row(p, now) for p in sub_plans],
        sub_plan_count=sum(sub_plan_counts.values()),
        last_chunk_id=max((int(c["id"]) for c in chunks), default=0),
        runner_ids=runner_ids,
        delayed=getattr(plan, "delayed", None),
    )


def _percent(step: Any) -> int:
    if step.state in ("success", "skipped"):
        return 100
    if step.state == "pending":
        return 0
    try:
        return max(0, min(100, round(float(step.progress_done or 0) * 100)))
    except (TypeError, ValueError):
        return 0


def flow_node(flow: Any, steps: Mapping[int, StepView]) -> FlowNode | None:
    """The flow as nested boxes; steps the plan does not have are left out."""
    if isinstance(flow, flows.Atom):
        step = steps.get(flow.step_id)
        return FlowNode("step", step) if step is not None else None
    if isinstance(flow, flows.Composed):
        children = [n for n in (flow_node(c, steps) for c in flow.children) if n is not None]
        if not children:
            return None
        if len(children) == 1:
            return children[0]
        kind = "concurrence" if isinstance(flow, flows.Concurrence) else "sequence"
        return FlowNode(kind, children=children)
    return None
