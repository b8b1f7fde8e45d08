"""Rescue strategies applied when a plan's run ends with an error (spec §1.6)."""

from __future__ import annotations

SKIP = "skip"
PAUSE = "pause"
FAIL = "fail"
STRATEGIES = (SKIP, PAUSE, FAIL)


def combine_strategies(suggestions: list[str]) -> str | None:
    """All Skip → Skip; all Fail → Fail; any other mix → Pause; nothing → None."""
    if not suggestions:
        return None
    for s in suggestions:
        if s not in STRATEGIES:
            raise ValueError(f"unknown rescue strategy {s!r}")
    if all(s == SKIP for s in suggestions):
        return SKIP
    if all(s == FAIL for s in suggestions):
        return FAIL
    return PAUSE
