"""The remote side, run locally with /bin/sh: the wrapper (§5.6) and the launch/kill commands."""

from __future__ import annotations

import os
import pwd
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from smart_proxy_remote_execution_ssh.user_method import UserMethod, user_method
from smart_proxy_remote_execution_ssh.wrapper import (
    cleanup_command,
    kill_command,
    launch_command,
    new_marker,
    pty_run_command,
    reattach_command,
    remote_dir,
    wrapper_script,
)


def make_job(tmp_path: Path, script: str) -> tuple[Path, Path]:
    """A job dir with ``script`` and the wrapper running it, as the launch command leaves it."""
    directory = tmp_path / "foreman-ssh-cmd-1"
    directory.mkdir()
    (directory / "script").write_text(script)
    (directory / "script").chmod(0o500)
    wrapper = directory / "script-wrapper"
    wrapper.write_text(wrapper_script(str(directory), UserMethod().command(f"{directory}/script")))
    wrapper.chmod(0o500)
    return directory, wrapper


def run_wrapper(wrapper: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(wrapper)], capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.PIPE
    )


def test_remote_dir() -> None:
    assert remote_dir("/var/tmp/", "abc") == "/var/tmp/foreman-ssh-cmd-abc"


def test_exit_code_output_and_pid(tmp_path: Path) -> None:
    directory, wrapper = make_job(
        tmp_path, "#!/bin/sh\necho out\necho err >&2\nread line && echo got-stdin\nexit 3\n"
    )
    proc = run_wrapper(wrapper)
    assert proc.returncode == 3
    assert proc.stdout == "out\nerr\n"  # stderr merged, stdin is /dev/null
    assert (directory / "output").read_text() == "out\nerr\n"
    assert (directory / "exit_code").read_text() == "3\n"
    pid = int((directory / "pid").read_text())
    assert pid > 1 and pid != proc.returncode


def test_exit_one_when_exit_code_is_missing(tmp_path: Path) -> None:
    # The script kills the subshell that would write exit_code.
    directory, wrapper = make_job(tmp_path, "#!/bin/sh\necho before\nkill -9 $PPID\n")
    proc = run_wrapper(wrapper)
    assert proc.returncode == 1
    assert not (directory / "exit_code").exists()
    assert (directory / "output").read_text().startswith("before")


def fake_unshare(tmp_path: Path, body: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    unshare = bin_dir / "unshare"
    unshare.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/unshare.log\n{body}\n')
    unshare.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_runs_under_unshare_when_it_works(tmp_path: Path) -> None:
    env = fake_unshare(tmp_path, 'exec /usr/bin/unshare "$@"')
    _, wrapper = make_job(tmp_path, "#!/bin/sh\necho hi\n")
    proc = run_wrapper(wrapper, env)
    assert (proc.returncode, proc.stdout) == (0, "hi\n")
    calls = (tmp_path / "unshare.log").read_text().splitlines()
    assert calls == [f"--fork --kill-child {wrapper} inner"]


def test_falls_back_without_working_unshare(tmp_path: Path) -> None:
    env = fake_unshare(tmp_path, "echo \"unshare: unrecognized option '--kill-child'\" >&2; exit 1")
    directory, wrapper = make_job(tmp_path, "#!/bin/sh\necho hi\nexit 4\n")
    proc = run_wrapper(wrapper, env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (4, "hi\n", "")
    assert (tmp_path / "unshare.log").read_text().splitlines() == [
        f"--fork --kill-child {wrapper} inner"
    ]
    assert (directory / "exit_code").read_text() == "4\n"


def test_without_unshare_at_all(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "tee", "cat"):
        (bin_dir / tool).symlink_to(subprocess.check_output(["which", tool], text=True).strip())
    directory, wrapper = make_job(tmp_path, "#!/bin/sh\necho hi\n")
    proc = run_wrapper(wrapper, {"PATH": str(bin_dir)})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "hi\n", "")


def test_marker_is_printed_first_when_asked(tmp_path: Path) -> None:
    _, wrapper = make_job(tmp_path, '#!/bin/sh\necho "marker: ${REX_MARKER:-unset}"\n')
    proc = run_wrapper(wrapper, {**os.environ, "REX_MARKER": "REX-1"})
    assert proc.stdout == "REX-1 started\nmarker: unset\n"  # not passed on to the script


def test_job_survives_a_closed_stdout(tmp_path: Path) -> None:
    """The proxy's connection is gone: tee keeps writing ``output``, the exit code is kept."""
    directory, wrapper = make_job(
        tmp_path, "#!/bin/sh\necho first\nsleep 0.5\necho second\necho third\nexit 5\n"
    )
    proc = subprocess.Popen(
        [str(wrapper)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"first\n"
    proc.stdout.close()  # like sshd when the connection drops
    os.killpg(proc.pid, signal.SIGHUP)  # like the PTY hangup
    assert proc.wait(10) == 5
    assert (directory / "output").read_text() == "first\nsecond\nthird\n"
    assert (directory / "exit_code").read_text() == "5\n"


def test_job_runs_when_stdout_is_gone_before_the_started_line(tmp_path: Path) -> None:
    """The proxy died while the launch was starting the wrapper: its ``started`` line hits a
    closed channel. The job must still run (before, SIGPIPE killed the wrapper after it had
    written its pid: the job never ran, and the proxy reported exit 1 for it)."""
    witness = tmp_path / "ran"
    directory, wrapper = make_job(tmp_path, f"#!/bin/sh\ntouch {witness}\necho done\n")
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads the channel any more
    try:
        proc = subprocess.run(
            [str(wrapper)],
            stdout=write_end,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "REX_MARKER": "REX-1"},
            timeout=30,
        )
    finally:
        os.close(write_end)
    assert witness.exists()
    assert (directory / "exit_code").read_text() == "0\n"
    assert (directory / "output").read_text() == "done\n"
    assert proc.returncode == 0


# -- the launch command, as sshd would run it -------------------------------------------------


def run_launch(command: str, stdin: str = "rm\n") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", "-c", command],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,  # sshd starts every command in a session of its own
    )


def test_launch_runs_the_script_and_cleans_up_after_the_ack(tmp_path: Path) -> None:
    directory = remote_dir(str(tmp_path), "job1")
    marker = new_marker()
    script = '#!/bin/sh\necho "it\'s $(id -un)"\nexit 7'  # quotes, no final newline
    command = launch_command(
        directory=directory, script=script, method=UserMethod(), marker=marker, cleanup=True
    )
    proc = run_launch(command)
    assert proc.returncode == 7
    assert proc.stdout.startswith(f"{marker} started\n")
    # The exit marker follows the output on the same stream: nothing of it can come later.
    user = pwd.getpwuid(os.getuid()).pw_name
    assert proc.stdout == f"{marker} started\nit's {user}\n{marker} exit 7\n"
    assert not Path(directory).exists()


def test_launch_keeps_the_directory_until_the_ack(tmp_path: Path) -> None:
    """No acknowledgement (the proxy died before it stored the exit code): the directory and
    the result stay on the host."""
    directory = Path(remote_dir(str(tmp_path), "job1b"))
    marker = new_marker()
    command = launch_command(
        directory=str(directory), script="#!/bin/sh\nexit 3\n", method=UserMethod(),
        marker=marker, cleanup=True,
    )
    proc = run_launch(command, stdin="")
    assert proc.returncode == 3
    assert (directory / "exit_code").read_text() == "3\n"


def test_launch_of_an_existing_job_only_says_exists(tmp_path: Path) -> None:
    """A second launch of the same job (a re-run after a crash) never starts the script."""
    directory = Path(remote_dir(str(tmp_path), "job1c"))
    count = tmp_path / "count"
    script = f"#!/bin/sh\necho x >> {count}\n"
    for _ in range(2):
        marker = new_marker()
        proc = run_launch(
            launch_command(
                directory=str(directory), script=script, method=UserMethod(), marker=marker,
                cleanup=True,
            ),
            stdin="",
        )
    assert proc.returncode == 0
    assert f"{marker} exists" in proc.stderr
    assert f"{marker} started" not in proc.stdout
    assert count.read_text() == "x\n"


def test_launch_replace_removes_a_directory_that_never_started(tmp_path: Path) -> None:
    directory = Path(remote_dir(str(tmp_path), "job1d"))
    directory.mkdir()
    (directory / "output").write_text("")
    marker = new_marker()
    proc = run_launch(
        launch_command(
            directory=str(directory), script="#!/bin/sh\necho fresh\n", method=UserMethod(),
            marker=marker, cleanup=True, replace=True,
        ),
    )
    assert proc.stdout == f"{marker} started\nfresh\n{marker} exit 0\n"
    # With a pid file (the wrapper ran) replace still refuses: the script never runs twice.
    (directory).mkdir()
    (directory / "pid").write_text("1\n")
    marker = new_marker()
    proc = run_launch(
        launch_command(
            directory=str(directory), script="#!/bin/sh\necho again\n", method=UserMethod(),
            marker=marker, cleanup=True, replace=True,
        ),
    )
    assert f"{marker} exists" in proc.stderr and "again" not in proc.stdout


def test_launch_keeps_the_directory_without_cleanup(tmp_path: Path) -> None:
    directory = Path(remote_dir(str(tmp_path), "job2"))
    marker = new_marker()
    script = "#!/bin/sh\nprintf 'a\\nb'\n"
    command = launch_command(
        directory=str(directory), script=script, method=UserMethod(), marker=marker, cleanup=False
    )
    proc = run_launch(command, stdin="")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{marker} started\na\nb{marker} exit 0\n"
    assert (directory / "script").read_text() == script  # byte for byte
    assert (directory / "script").stat().st_mode & 0o777 == 0o500
    assert (directory / "script-wrapper").stat().st_mode & 0o777 == 0o500
    assert (directory / "output").stat().st_mode & 0o777 == 0o600
    assert (directory / "output").read_text() == "a\nb"
    assert (directory / "exit_code").read_text() == "0\n"


def test_launch_with_script_on_stdin(tmp_path: Path) -> None:
    directory = Path(remote_dir(str(tmp_path), "job3"))
    marker = new_marker()
    script = "#!/bin/sh\necho big\n" + "# padding\n" * 10
    command = launch_command(
        directory=str(directory),
        script=None,
        method=UserMethod(),
        marker=marker,
        cleanup=True,
        script_on_stdin=True,
        script_size=len(script.encode()),
    )
    assert "padding" not in command
    proc = run_launch(command, stdin=script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{marker} started\nbig\n{marker} exit 0\n"
    assert directory.exists()  # no acknowledgement possible: the runner removes it
    assert (directory / "script").read_text() == script


def test_a_script_upload_cut_short_is_a_failed_upload_not_a_run(tmp_path: Path) -> None:
    """The proxy dies while streaming a big script: the host sees the end of stdin early.
    The truncated script must not run (it could be any prefix of the admin's script)."""
    directory = Path(remote_dir(str(tmp_path), "job-cut"))
    marker = new_marker()
    witness = tmp_path / "ran"
    script = f"#!/bin/sh\ntouch {witness}\n" + "# padding\n" * 100
    command = launch_command(
        directory=str(directory),
        script=None,
        method=UserMethod(),
        marker=marker,
        cleanup=True,
        script_on_stdin=True,
        script_size=len(script.encode()),
    )
    proc = run_launch(command, stdin=script[: len(script) // 2])
    assert f"{marker} fail upload 1" in proc.stderr
    assert f"{marker} started" not in proc.stdout
    assert not witness.exists()


def test_launch_reports_a_failing_mkdir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    marker = new_marker()
    command = launch_command(
        directory=str(tmp_path / "file" / "job"),
        script="true",
        method=UserMethod(),
        marker=marker,
        cleanup=True,
    )
    proc = run_launch(command)
    assert proc.returncode == 1
    assert f"{marker} fail mkdir 1" in proc.stderr
    assert f"{marker} started" not in proc.stdout


def test_launch_reports_a_failing_preflight_exec(tmp_path: Path) -> None:
    directory = remote_dir(str(tmp_path), "job4")
    marker = new_marker()
    command = launch_command(
        directory=directory, script="true", method=UserMethod(), marker=marker, cleanup=True
    )
    # Simulate noexec: the wrapper cannot be executed (not even by root without an x bit).
    chmod = 'chmod 500 "$d/script" "$d/script-wrapper"'
    assert chmod in command
    command = command.replace(chmod, chmod.replace("500", "400"))
    proc = run_launch(command)
    assert f"{marker} fail exec 126" in proc.stderr
    assert not Path(directory).exists()  # removed on failure when cleanup is on


def test_pty_mode_setup_only_prepares(tmp_path: Path) -> None:
    directory = Path(remote_dir(str(tmp_path), "job5"))
    marker = new_marker()
    method = user_method("root", "nobody", "sudo")
    command = launch_command(
        directory=str(directory),
        script="#!/bin/sh\necho real\n",
        method=method,
        marker=marker,
        cleanup=True,
        pty=True,
    )
    proc = run_launch(command)
    assert proc.returncode == 0, proc.stderr
    assert f"{marker} ready" in proc.stderr
    assert (directory / "script").read_text() == "#!/bin/sh\nexec true\n"  # the preflight one
    assert (directory / "script.new").read_text() == "#!/bin/sh\necho real\n"
    assert "sudo -p 'rex login: ' -u nobody" in (directory / "script-wrapper").read_text()
    run = pty_run_command(directory=str(directory), method=method, marker=marker, cleanup=True)
    assert "sudo -p 'rex login: ' -u nobody" in run and 'mv -f "$d/script.new"' in run


def test_reattach_prints_output_and_exit_code(tmp_path: Path) -> None:
    directory = Path(remote_dir(str(tmp_path), "job6"))
    marker = new_marker()
    proc = run_launch(
        launch_command(
            directory=str(directory),
            script="#!/bin/sh\necho done\nexit 9\n",
            method=UserMethod(),
            marker=marker,
            cleanup=False,
        )
    )
    assert proc.returncode == 9
    again = new_marker()
    proc = run_launch(reattach_command(directory=str(directory), marker=again, cleanup=True))
    assert proc.stdout == f"{again} started\ndone\n{again} exit 9\n"
    assert proc.returncode == 9
    assert not directory.exists()
    proc = run_launch(reattach_command(directory=str(directory), marker=again, cleanup=True))
    assert f"{again} gone" in proc.stderr


def test_reattach_without_pid_file(tmp_path: Path) -> None:
    directory = tmp_path / "foreman-ssh-cmd-x"
    directory.mkdir()
    marker = new_marker()
    proc = run_launch(reattach_command(directory=str(directory), marker=marker, cleanup=False))
    assert f"{marker} nopid" in proc.stderr


def test_reattach_waits_for_a_launch_still_setting_up(tmp_path: Path) -> None:
    """The launch shell goes on without the proxy: a re-attach that comes while it still sets
    the job up waits for the wrapper's pid instead of saying ``nopid``."""
    directory = tmp_path / "foreman-ssh-cmd-y"
    directory.mkdir()
    launcher = subprocess.Popen(
        ["sh", "-c", f"sleep 0.5; echo 12345 > {directory}/pid; echo 0 > {directory}/exit_code"]
    )
    try:
        (directory / "launch").write_text(f"{launcher.pid}\n")
        marker = new_marker()
        proc = run_launch(reattach_command(directory=str(directory), marker=marker, cleanup=False))
        assert "nopid" not in proc.stderr
        assert proc.stdout == f"{marker} started\n{marker} exit 0\n"
    finally:
        launcher.wait(10)


def test_kill_command_stops_the_whole_tree(tmp_path: Path) -> None:
    directory = Path(remote_dir(str(tmp_path), "job7"))
    marker = new_marker()
    script = f"#!/bin/sh\nsleep 1000 &\necho $! > {tmp_path}/child\nsleep 1000\n"
    job = subprocess.Popen(
        [
            "sh",
            "-c",
            launch_command(
                directory=str(directory),
                script=script,
                method=UserMethod(),
                marker=marker,
                cleanup=False,
            ),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not (tmp_path / "child").exists() or not (tmp_path / "child").read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child = int((tmp_path / "child").read_text())
    killer = subprocess.run(
        ["sh", "-c", kill_command(str(directory), grace=1)], capture_output=True, timeout=10
    )
    assert killer.returncode == 0
    assert job.wait(10) == -signal.SIGTERM  # the launch shell shares the job's group
    deadline = time.monotonic() + 5
    while True:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the background sleep survived"
        time.sleep(0.05)


def test_kill_without_pid_file_is_harmless(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["sh", "-c", kill_command(str(tmp_path / "nothing"))], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "no pid file" in proc.stdout


def test_cleanup_command_quotes() -> None:
    assert cleanup_command("/var/tmp/a b") == "rm -rf '/var/tmp/a b'"
    assert shlex.split(cleanup_command("/x")) == ["rm", "-rf", "/x"]


@pytest.mark.parametrize("method", ["sudo", "su", "dzdo"])
def test_user_switch_launch_is_valid_sh(method: str) -> None:
    command = launch_command(
        directory="/var/tmp/foreman-ssh-cmd-1",
        script="echo 'hi'",
        method=user_method("admin", "app", method),
        marker="REX-x",
        cleanup=True,
    )
    assert subprocess.run(["sh", "-n", "-c", command]).returncode == 0
    assert "setfacl -m u:app:rx" in command and "setfacl -m u:app:rw" in command
