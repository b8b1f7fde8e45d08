"""A host fails in the middle of a script; the rest of the batch must not notice.

* sshd killed (the server and its sessions, SIGKILL): the host's jobs end with 255, the
  status documented for a lost connection (spec rex_ssh.md §5.8), at once.
* the network path cut: the host is an sshd inside a network namespace the test creates (a veth
  pair on 169.254.<n>.0/30, nothing leaves the machine), and the namespace's end of the link goes
  down mid-script: no reset, packets vanish. The SSH keepalive (15 s × 3, spec rex_ssh.md §10)
  must notice: the jobs end with 255 within :data:`CUT_BOUND_S`.

Every other job of the batch ends with 0 and its output, called back once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from smart_proxy_remote_execution_ssh.connection import KEEPALIVE_COUNT_MAX, KEEPALIVE_INTERVAL

from . import scenarios

CUT_BOUND_S = KEEPALIVE_INTERVAL * (KEEPALIVE_COUNT_MAX + 1) + 15
"""Keepalives start after an idle interval and give up after ``count_max`` unanswered ones;
plus the time to report."""


def _check(run: scenarios.Run, observed: dict, bound: float) -> None:
    run.tally.assert_promise(run.figures)  # the rest of the batch
    assert run.figures["callbacks_doubled"] == 0, run.figures
    assert run.figures["tracebacks_in_log"] == 0, run.service.tail(40)
    assert observed["victims_255"] == observed["victim_jobs"], observed
    assert observed["victims_callbacks"] == observed["victim_jobs"], observed
    assert observed["victims_not_final"] == 0, observed
    assert observed["rest_ok"] == observed["rest_jobs"], observed
    assert observed["victims_reported_after_s"] <= bound, observed


async def test_sshd_killed_mid_script(tmp_path: Path, ssh_fleet) -> None:
    hosts = ssh_fleet(servers=4, sleeps=(8.0,))
    victim = hosts.servers[0]
    run, observed = await scenarios.host_fault_run(
        tmp_path,
        hosts,
        victims=[0],
        break_it=lambda: victim.stop(kill_sessions=True),
        tasks=40,
        seed=61,
        scenario="sshd-killed",
        timeout=60,
    )
    _check(run, observed, bound=10.0)


@pytest.mark.reliability
async def test_network_path_cut_mid_script(tmp_path: Path, ssh_fleet) -> None:
    hosts = ssh_fleet(servers=3, sleeps=(10.0,), netns=1)
    namespace = hosts.namespaces[0]
    run, observed = await scenarios.host_fault_run(
        tmp_path,
        hosts,
        victims=[3],
        break_it=namespace.cut,
        tasks=40,
        seed=901,
        scenario="network-cut",
        timeout=CUT_BOUND_S + 60,
    )
    _check(run, observed, bound=CUT_BOUND_S)
