"""Execution-plan and step states, their allowed transitions and the derived result (spec §2)."""

from __future__ import annotations

from .errors import IllegalTransition

PLAN_STATES = ("pending", "scheduled", "planning", "planned", "running", "paused", "stopped")

PLAN_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"scheduled", "planning", "stopped"}),
    "scheduled": frozenset({"planning", "stopped"}),
    "planning": frozenset({"planned", "stopped"}),
    "planned": frozenset({"running", "stopped"}),
    "running": frozenset({"paused", "stopped"}),
    "paused": frozenset({"running", "stopped"}),
    "stopped": frozenset(),
}

STEP_STATES = (
    "scheduling",
    "pending",
    "running",
    "success",
    "suspended",
    "skipping",
    "skipped",
    "error",
    "cancelled",
)

PLAN_STEP_TRANSITIONS: dict[str, frozenset[str]] = {
    "scheduling": frozenset({"pending", "error", "cancelled"}),
    "pending": frozenset({"running", "error", "cancelled"}),
    "running": frozenset({"success", "error", "cancelled"}),
}

RUN_STEP_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"running", "skipped", "error"}),
    "running": frozenset({"success", "error", "suspended"}),
    "success": frozenset({"suspended"}),
    "suspended": frozenset({"running", "error"}),
    "skipping": frozenset({"error", "skipped"}),
    "error": frozenset({"skipping", "running"}),
}

FINALIZE_STEP_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"running", "skipped"}),
    "running": frozenset({"success", "error"}),
    "success": frozenset({"pending"}),
    "error": frozenset({"pending", "skipped"}),
}

RESULTS = ("pending", "success", "warning", "error", "cancelled")


def check_plan_transition(old: str, new: str) -> None:
    if old == new:
        return
    if new not in PLAN_TRANSITIONS.get(old, frozenset()):
        raise IllegalTransition(f"execution plan cannot go from {old!r} to {new!r}")


def check_step_transition(table: dict[str, frozenset[str]], kind: str, old: str, new: str) -> None:
    if old == new:
        return
    if new not in table.get(old, frozenset()):
        raise IllegalTransition(f"{kind} cannot go from {old!r} to {new!r}")


def derive_result(step_states: list[str] | tuple[str, ...]) -> str:
    """The plan result over all its steps, first matching rule wins (§2.2)."""
    states = set(step_states)
    if "cancelled" in states:
        return "cancelled"
    if "error" in states:
        return "error"
    if "skipping" in states or "skipped" in states:
        return "warning"
    if states and states <= {"success"}:
        return "success"
    if not states:
        return "success"
    return "pending"
