"""The runnable examples: ``examples/deploy.py``, ``examples/delayed.py``, the plugin author's
guide examples (``examples/{singleton,halt,middleware,subscriptions,progress,metrics}.py``) and
the engine demo (``python -m dynflow.demo``).

Each runs as a subprocess in a temporary directory, so the demo's ``./var/dynflow.db`` lands
there and nothing of the working tree is touched.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dynflow

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_EXAMPLE = ROOT / "examples" / "deploy.py"
DELAYED_EXAMPLE = ROOT / "examples" / "delayed.py"
TIMEOUT = 60


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The subprocess imports the same dynflow as this test run, installed or not.
    source = str(Path(dynflow.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def _counts(stdout: str) -> dict[str, int]:
    line = next(line for line in stdout.splitlines() if line.startswith("counts: "))
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def test_deploy_example(tmp_path: Path) -> None:
    result = _run([str(DEPLOY_EXAMPLE)], tmp_path)
    _assert_clean(result)
    out = result.stdout
    assert "deploy 1.0: stopped/success: shop-1.0.tar.gz (approved by alice)" in out
    assert "deploy 1.1: stopped/error: cancelled 1 step(s), release step pending" in out
    assert list(tmp_path.iterdir()) == []  # it keeps its database in a temporary directory


def test_delayed_example(tmp_path: Path) -> None:
    result = _run([str(DELAYED_EXAMPLE)], tmp_path)
    _assert_clean(result)
    assert result.stdout.splitlines() == [
        "report: scheduled, arguments stored as {'args': [{'server': 'db-1'}], 'kwargs': {}}",
        "backup: scheduled, waits for the report: True",
        "cleanup: stopped/cancelled: Delayed task cancelled",
        "greet: stopped/success: hello, elsewhere",
        "report: stopped/success: report of db-1 (10.0.0.5)",
        "backup: stopped/success: backed up db-1",
        "history of the backup: delay, start execution, finish execution",
    ]
    assert list(tmp_path.iterdir()) == []


# The plugin author's guide examples (README): file -> lines their output must contain.
GUIDE_EXAMPLES = {
    "singleton.py": [
        "first planned: True",
        "second planned: False - Action __main__.Reindex is already active",
        "first: stopped success",
        "third planned: True -> success",
    ],
    "halt.py": [
        "halt -> stopped",
        "plan: stopped pending step: suspended",
        "execute rejected: ",
        "planned plan halt -> stopped",
    ],
    "middleware.py": [
        "stack: Audit > AsUser > Retry > HideSecrets",
        "calls: Audit before, AsUser before, Retry before, run, Retry after, AsUser after, "
        "Audit after",
        "shown input: {'name': 'web1', 'root_password': '*****'}",
        "stored input: {'name': 'web1', 'root_password': 's3cr3t'}",
    ],
    "subscriptions.py": [
        "subscribers: ['SendWelcomeMail', 'AuditLog']",
        "run flow: ['C', 4, ['S', 2, 6]]",
        "SendWelcomeMail: {'mailed': 'welcome alice'}",
        "AuditLog: {'line': 'user alice has uid 1000'}",
    ],
    "progress.py": ["progress 0.25", "progress 0.50", "progress 0.75", "progress 1.00 success"],
    "metrics.py": [
        "dynflow_finished_execution_plans_total __main__.Ping success 3.0",
        "dynflow_step_execution_time_count run 3.0",
    ],
}


@pytest.mark.parametrize("name", sorted(GUIDE_EXAMPLES))
def test_guide_example(name: str, tmp_path: Path) -> None:
    result = _run([str(ROOT / "examples" / name)], tmp_path)
    _assert_clean(result)
    for line in GUIDE_EXAMPLES[name]:
        assert line in result.stdout, (line, result.stdout)
    assert list(tmp_path.iterdir()) == []


def test_demo_runs_twice_on_the_default_database(tmp_path: Path) -> None:
    first = _run(["-m", "dynflow.demo"], tmp_path)
    _assert_clean(first)
    out = first.stdout
    database = tmp_path / "var" / "dynflow.db"
    assert f"database {database}" in out
    assert database.is_file()
    assert "run flow:      sequence(concurrence(3:Build, 5:RunTests), 7:Release)" in out
    assert '"run_flow": ["S", ["C", 3, 5], 7],' in out
    assert '"state": "planned",' in out and '"state": "stopped",' in out
    assert "output of Release: " in out and '"released": "shop-1.4.2.tar.gz"' in out
    assert "deploy: state=stopped result=success" in out
    assert re.search(r"state=running, step \d+ is suspended", out)
    assert "approval: state=stopped result=success" in out
    assert '"approved_by": "alice"' in out
    assert "cancel sent to 1 step(s)" in out
    assert "cancel: state=stopped result=error" in out
    assert _counts(out)["stopped"] == 3
    assert out.rstrip().endswith("done")

    # Re-runnable: the same file accumulates plans.
    second = _run(["-m", "dynflow.demo"], tmp_path)
    _assert_clean(second)
    counts = _counts(second.stdout)
    assert counts["stopped"] == 6 and counts["total"] == 6


def test_demo_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynflow.demo"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + TIMEOUT
        # Interrupt once the world runs (imports before that are not the demo's business).
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("world ") and "started" in line:
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines) + out
    assert "Traceback" not in out + err, err
    # Usually the interrupt lands mid-demo; on a very fast machine the demo may already be done.
    if proc.returncode == 128 + signal.SIGINT:
        assert "interrupted (SIGINT): the world stopped cleanly" in out
        assert "world stopped" in out
    else:
        assert proc.returncode == 0, out + err
