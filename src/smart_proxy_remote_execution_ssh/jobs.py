"""The jobs hosts may fetch in pull mode (§7.1, §7.2), and how they survive a restart.

A pull job is what a host needs to run one :class:`~.pull.PullScriptAction`: its uuid, the
identity of the host that owns it, the script, the effective user, and the step to send the
host's updates to. The original kept them in an in-memory SQLite table, lost on every restart.

Here the **durable record is the action itself**: the job's uuid is chosen when the action is
planned, so it is stored in the action's input with the script, the effective user and the
host's names; the action's output says how far the job got (``state``). The
:class:`JobIndex` is only an in-memory index over those actions, owned by the plugin (the
engine knows nothing of it), filled

* by the action: its first run adds its job, and its run again after a restart (the engine's
  recovery re-runs suspended steps) adds it again;
* at start, before the proxy serves requests: :meth:`JobIndex.rebuild` reads the running plans
  of ``RunScript``/``PullScript`` through the world's public API and adds every job still
  waiting for its host, so a host asking right after a restart finds its job;

and emptied when the action finishes (the host reported its exit, or the job was killed) and
when its plan stops (an ``execution_plan_hooks`` hook). Nothing is written to the database
besides what the engine writes for the action anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Only for the annotation of JobIndex.rebuild: .pull imports this module at run time.
    from .pull import PullScriptAction

log = logging.getLogger("smart_proxy_remote_execution_ssh.pull")


def host_identity(input: Mapping[str, Any]) -> str | None:
    """Who owns a job: ``alternative_names.consumer_uuid``, else ``.fqdn``, else ``hostname``
    (§7.2). It names the MQTT topic and must be the CN of the host's client certificate."""
    names = input.get("alternative_names")
    if isinstance(names, Mapping):
        for key in ("consumer_uuid", "fqdn"):
            value = names.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    hostname = input.get("hostname")
    if isinstance(hostname, str) and hostname.strip():
        return hostname.strip()
    return None


@dataclass(frozen=True)
class PullJob:
    """One job waiting for (or being run by) its host."""

    uuid: str
    owner: str
    """The host identity, lower-cased (certificate CNs are compared without case)."""
    execution_plan_id: str
    run_step_id: int
    script: str
    effective_user: str | None
    created: float
    """When the job was stored (epoch seconds); ``GET /ssh/jobs`` lists the oldest first."""


class JobIndex:
    """Pull jobs by uuid and by owner (in memory; rebuilt from the actions, see the module)."""

    def __init__(self) -> None:
        self._jobs: dict[str, PullJob] = {}
        self._by_owner: dict[str, dict[str, PullJob]] = {}
        self._rebuilding = False
        self._forgotten: set[str] = set()

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job: PullJob) -> None:
        """Store ``job`` (again: the same uuid replaces the entry, keeping its place)."""
        if self._rebuilding:
            self._forgotten.discard(job.uuid)
        old = self._jobs.get(job.uuid)
        if old is not None and old.owner != job.owner:
            self._by_owner.get(old.owner, {}).pop(job.uuid, None)
        self._jobs[job.uuid] = job
        self._by_owner.setdefault(job.owner, {})[job.uuid] = job

    def find(self, uuid: str, owner: str) -> PullJob | None:
        """The job ``uuid`` if ``owner`` owns it (None for an unknown job or another owner)."""
        job = self._jobs.get(uuid)
        if job is None or job.owner != owner.lower():
            return None
        return job

    def get(self, uuid: str) -> PullJob | None:
        return self._jobs.get(uuid)

    def uuids_of(self, owner: str) -> list[str]:
        """The uuids of ``owner``'s jobs, oldest first."""
        jobs = self._by_owner.get(owner.lower(), {})
        return [job.uuid for job in sorted(jobs.values(), key=lambda j: j.created)]

    def forget(self, uuid: str) -> PullJob | None:
        job = self._jobs.pop(uuid, None)
        if self._rebuilding:
            self._forgotten.add(uuid)
        if job is not None:
            owned = self._by_owner.get(job.owner)
            if owned is not None:
                owned.pop(uuid, None)
                if not owned:
                    del self._by_owner[job.owner]
        return job

    def forget_step(self, execution_plan_id: str, run_step_id: int) -> list[PullJob]:
        """Forget the jobs of one step (the plan stopped)."""
        found = [
            j
            for j in self._jobs.values()
            if j.execution_plan_id == execution_plan_id and j.run_step_id == run_step_id
        ]
        for job in found:
            self.forget(job.uuid)
        return found

    async def rebuild(
        self, world: Any, labels: Iterable[str], action_class: type[PullScriptAction]
    ) -> int:
        """Add the jobs of the running plans labelled ``labels`` whose ``action_class`` action
        still waits for its host (§ module docstring); returns how many were added.

        A job forgotten while this runs (its action finished meanwhile) is not added back.
        """
        self._rebuilding = True
        self._forgotten.clear()
        added = 0
        try:
            plans = await world.find_plans(filters={"state": "running", "label": list(labels)})
            for listed in plans:
                try:
                    plan = await world.load_plan(listed.id)
                except Exception:  # one unreadable plan must not stop the rest
                    log.exception("cannot read plan %s while rebuilding the pull jobs", listed.id)
                    continue
                if plan is None or plan.state != "running":
                    continue
                for action in plan.actions.values():
                    if not isinstance(action, action_class):
                        continue
                    job = action.pull_job(created=_epoch(plan.started_at))
                    if job is None or job.uuid in self._forgotten:
                        continue
                    step = plan.steps.get(action.run_step_id)
                    if step is None or step.state not in ("pending", "running", "suspended"):
                        continue
                    if job.uuid not in self._jobs:
                        added += 1
                    self.add(job)
        finally:
            self._rebuilding = False
            self._forgotten.clear()
        return added


def _epoch(value: Any) -> float:
    """Epoch seconds of a stored time (naive UTC, as the engine stores them)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return time.time()
