"""The remote side of a job: the exit-status wrapper (§5.6) and the shell commands around it.

Everything the runner does on the host is a POSIX ``sh`` command built here, so the number
of SSH channels (round trips) per job stays small:

* :func:`launch_command`: ONE channel that creates ``<remote_working_dir>/foreman-ssh-cmd-<id>/``,
  writes ``script`` (500), ``script-wrapper`` (500) and an empty ``output`` (600), runs the
  preflight checks (§5.5), grants the effective user access with ``setfacl`` (§5.4), then runs
  the wrapper and streams its output; when the wrapper ends it prints the exit code and, when
  cleanup is on, removes the directory once the proxy acknowledged it, which the proxy does only
  after it stored the exit status (so a proxy that died meanwhile finds the result on the host
  when it comes back). A directory that exists already means an earlier launch of the same job
  (the runner id is the same for every run of a step): the command then only prints ``exists``
  and the runner re-attaches instead, so a script is never started twice.
  When the effective-user switch needs a password the launch channel only prepares the
  directory and :func:`pty_run_command` runs the user preflight and the wrapper on a PTY.
* :func:`reattach_command`: after a restart of the proxy, print the recorded output (or follow
  it while the wrapper still runs) and the exit code.
* :func:`kill_command`: SIGTERM the wrapper's process group (its whole tree), SIGKILL it after a
  grace period.
* :func:`cleanup_command`: ``rm -rf`` the directory.

The commands talk to the runner through marker lines ``<marker> <word> [args]`` with a random
marker per command: ``started`` (on stdout, just before the script output, once the job's
``pid`` file is written), ``exit <code>`` (on stdout, right after the script output, so no output
can come after it), ``fail <stage> <code>``, ``exists``, ``gone`` and ``nopid`` (on stderr; on
the PTY everything is on stdout) and ``user <code>`` (PTY only).
"""

from __future__ import annotations

import secrets
import shlex

from .user_method import UserMethod

COMMAND_LIMIT = 96 * 1024
"""The longest launch command with the script inside (sshd runs it as one argument of the
login shell, and Linux limits one argument to 128 KiB); with a larger script the script is
streamed on the channel's stdin instead."""

KILL_GRACE = 10
"""Seconds between the SIGTERM and the SIGKILL of :func:`kill_command`."""

PREFLIGHT_SCRIPT = "#!/bin/sh\\nexec true\\n"
"""printf format of the temporary ``script`` run by the preflight checks."""


def remote_dir(remote_working_dir: str, runner_id: str) -> str:
    """``<remote_working_dir>/foreman-ssh-cmd-<runner id>`` (§5.2)."""
    return f"{remote_working_dir.rstrip('/')}/foreman-ssh-cmd-{runner_id}"


def new_marker() -> str:
    """A marker no script prints by chance."""
    return f"REX-{secrets.token_hex(8)}"


def wrapper_script(directory: str, command: str) -> str:
    """The ``script-wrapper`` (§5.6) for the job in ``directory`` running ``command``.

    Outer call (no argument): run itself with the argument ``inner`` under ``unshare --fork
    --kill-child`` (the whole job then hangs below unshare), or directly when unshare is
    missing or too old (the inner call did not start: no ``pid`` file). Inner call: write its
    pid to ``pid``; run ``command`` (stdin /dev/null) with stdout and stderr through ``tee``
    into ``output``; write the command's exit status to ``exit_code``; exit with it, or with 1
    when ``exit_code`` is missing or empty.

    With ``REX_MARKER`` in the environment the inner call first prints ``$REX_MARKER
    started`` (the launch command runs the inner call under unshare itself, one process less,
    and so knows the wrapper could be executed: the noexec preflight). SIGHUP is ignored and
    ``tee`` ignores SIGPIPE, so the job (and its ``output`` file) keeps going when the proxy's
    connection is lost; the ``started`` line is printed with SIGPIPE ignored (a channel the
    proxy's crash closed just before does not kill the wrapper after it wrote its pid).
    """
    d = shlex.quote(directory)
    wrapper = shlex.quote(f"{directory}/script-wrapper")
    return f"""#!/bin/sh
# Foreman remote execution wrapper: records pid, output and exit code of the job.
# Keep running when the proxy's connection (and a PTY with it) goes away.
trap '' HUP
if [ "$1" != inner ]; then
  unshare --fork --kill-child {wrapper} inner 3>&2 2>/dev/null
  rex_code=$?
  [ -e {d}/pid ] || exec {wrapper} inner
  exit "$rex_code"
fi
[ -e /dev/fd/3 ] && exec 2>&3 3>&-
echo $$ > {d}/pid
if [ -n "${{REX_MARKER:-}}" ]; then
  trap '' PIPE  # a channel closed by a crash of the proxy must not stop the job here
  printf '%s started\\n' "$REX_MARKER"
  trap - PIPE
fi
unset REX_MARKER
(
  {command}
  echo $? > {d}/exit_code
) 2>&1 | (trap '' PIPE; exec tee {d}/output)
if [ -s {d}/exit_code ]; then
  read -r rex_code < {d}/exit_code
  exit "$rex_code"
fi
exit 1
"""


def _run_wrapper(env: str = "", redirect: str = "") -> str:
    """What the wrapper's outer call does, inline (one shell less): the inner call under
    ``unshare --fork --kill-child``, or directly when unshare did not start it; ``rc`` is set
    to its exit status."""
    wrapper = '"$d/script-wrapper"'
    return (
        f"{env}unshare --fork --kill-child {wrapper} inner 3>&2 2>/dev/null {redirect}\n"
        "rc=$?\n"
        f'if [ ! -e "$d/pid" ]; then {env}{wrapper} inner {redirect}; rc=$?; fi\n'
    )


def _write(path_expr: str, content: str) -> str:
    """Write ``content`` exactly with the shell's builtin printf (no process spawned)."""
    return f"printf '%s' {shlex.quote(content)} > {path_expr} || rex_fail upload $?\n"


def _prologue(directory: str, marker: str, cleanup: bool) -> str:
    clean = ' rm -rf "$d";' if cleanup else ""
    return (
        f"d={shlex.quote(directory)}\n"
        f"M={shlex.quote(marker)}\n"
        f'rex_fail() {{ printf \'%s fail %s %s\\n\' "$M" "$1" "$2" >&2;{clean} exit 1; }}\n'
    )


def _ack(cleanup: bool) -> str:
    """Wait for the proxy to have seen the exit code, then remove the directory."""
    if not cleanup:
        return ""
    return 'read -r rex_ack && [ "$rex_ack" = rm ] && rm -rf "$d"\n'


def _exists_check(replace: bool) -> str:
    """An earlier launch of this job left its directory: say ``exists`` (or, with
    ``replace``, remove a directory whose launch never started the wrapper)."""
    if replace:
        return 'if [ -e "$d" ] && [ ! -e "$d/pid" ]; then rm -rf "$d"; fi\n' + _exists_check(False)
    return 'if [ -e "$d" ]; then printf \'%s exists\\n\' "$M" >&2; exit 0; fi\n'


def _setfacl(user: str | None, perms: str, *paths: str) -> str:
    u = shlex.quote(f"u:{user}:{perms}")
    return (
        f"setfacl -m {u} {' '.join(paths)} || "
        f"printf 'Could not grant {perms} to the effective user with setfacl\\n'\n"
    )


def _upload(path_expr: str, size: int) -> str:
    """Write stdin to ``path_expr``; fewer than ``size`` bytes (the stream was cut) is a
    failed upload."""
    return (
        f"cat > {path_expr} || rex_fail upload $?\n"
        f'[ "$(wc -c < {path_expr})" -eq {size} ] || rex_fail upload 1\n'
    )


def launch_command(
    *,
    directory: str,
    script: str | None,
    method: UserMethod,
    marker: str,
    cleanup: bool,
    pty: bool = False,
    script_on_stdin: bool = False,
    script_size: int | None = None,
    replace: bool = False,
) -> str:
    """The launch channel's command (see the module doc).

    ``replace``: a directory left by an earlier launch that never started the wrapper (no
    ``pid``, its launch shell gone) is removed first instead of reported as ``exists``.

    ``script`` is part of the command unless ``script_on_stdin`` (then the runner writes it
    to the channel's stdin and closes it; no cleanup acknowledgement is possible then, the
    runner removes the directory itself; ``script_size``, its length in bytes, is checked
    after the upload: a stream cut short, e.g. by a crash of the proxy, fails the launch at
    ``upload`` instead of running a truncated script). With ``pty`` (a user switch that
    needs a password) the command stops after the setup (printing ``<marker> ready``) and
    :func:`pty_run_command` continues.

    Few processes are spawned (each costs the host about a millisecond): files are written
    with the builtin ``printf``. Without a user switch the noexec preflight is the start of
    the wrapper itself (same directory, same kind of file as ``script``): when it cannot be
    executed, the command reports ``fail exec <code>`` before any output. With a user switch
    the real script waits as ``script.new`` while the temporary ``script`` of §5.5 is run (as
    the SSH user, then through the user method), then replaces it.
    """
    user = method.effective_user if method.switches_user else None
    target = '"$d/script"'
    parts = [_prologue(directory, marker, cleanup)]
    parts.append(_exists_check(replace))
    parts.append("{\n")
    parts.append('mkdir -p "$d" || rex_fail mkdir $?\n')
    parts.append('echo $$ > "$d/launch" || rex_fail mkdir $?\n')
    parts.append("umask 077\n")
    wrapper = wrapper_script(directory, method.command(f"{directory}/script"))
    parts.append(_write('"$d/script-wrapper"', wrapper))
    parts.append(': > "$d/output" || rex_fail upload $?\n')
    if script_on_stdin and script_size is None:
        raise ValueError("a script sent on stdin needs its script_size")
    if user is None:
        if script_on_stdin:
            parts.append(_upload(target, script_size or 0))
        else:
            parts.append(_write(target, script or ""))
        parts.append(f'chmod 500 {target} "$d/script-wrapper" || rex_fail upload $?\n')
        # The noexec preflight is the start of the wrapper itself (see below).
    else:
        # All modes are set before the ACLs: a later chmod would clear the ACL mask.
        parts.append(f"printf '{PREFLIGHT_SCRIPT}' > \"$d/script\" || rex_fail upload $?\n")
        if script_on_stdin:
            parts.append(_upload('"$d/script.new"', script_size or 0))
        else:
            parts.append(_write('"$d/script.new"', script or ""))
        parts.append(
            'chmod 500 "$d/script" "$d/script.new" "$d/script-wrapper" || rex_fail upload $?\n'
        )
        parts.append('"$d/script" < /dev/null || rex_fail exec $?\n')
        parts.append(
            _setfacl(user, "rx", '"$d"', '"$d/script"', '"$d/script.new"', '"$d/script-wrapper"')
        )
        parts.append(_setfacl(user, "rw", '"$d/output"'))
        if not pty:
            parts.append(f"{method.command(directory + '/script')} || rex_fail user $?\n")
            parts.append('mv -f "$d/script.new" "$d/script" || rex_fail upload $?\n')
    parts.append("} >&2\n")
    if pty:
        parts.append("printf '%s ready\\n' \"$M\" >&2\n")
        return "".join(parts)
    # The wrapper prints "started" once it runs; when it could not be executed (noexec) it
    # wrote no pid file.
    parts.append(_run_wrapper('REX_MARKER="$M" ', "< /dev/null"))
    parts.append(
        '[ -e "$d/pid" ] || rex_fail exec "$rc"\nprintf \'%s exit %s\\n\' "$M" "$rc"\n'
    )
    parts.append(_ack(cleanup and not script_on_stdin))
    parts.append('exit "$rc"\n')
    return "".join(parts)


def pty_run_command(*, directory: str, method: UserMethod, marker: str, cleanup: bool) -> str:
    """The main channel with a PTY: user preflight (password prompt), then the wrapper."""
    clean = ' rm -rf "$d";' if cleanup else ""
    return (
        _prologue(directory, marker, cleanup) + f"{method.command(directory + '/script')}\n"
        "rc=$?\n"
        'printf \'%s user %s\\n\' "$M" "$rc"\n'
        f'if [ "$rc" != 0 ]; then{clean} exit "$rc"; fi\n'
        'mv -f "$d/script.new" "$d/script" || rex_fail upload $?\n'
        + _run_wrapper('REX_MARKER="$M" ')
        + 'printf \'%s exit %s\\n\' "$M" "$rc"\n'
        + _ack(cleanup)
        + 'exit "$rc"\n'
    )


def reattach_command(*, directory: str, marker: str, cleanup: bool) -> str:
    """Print the job's output (following it while the wrapper runs) and its exit code."""
    return (
        f"d={shlex.quote(directory)}\n"
        f"M={shlex.quote(marker)}\n"
        'if [ ! -d "$d" ]; then printf \'%s gone\\n\' "$M" >&2; exit 0; fi\n'
        'pid=$(cat "$d/pid" 2>/dev/null)\n'
        # A launch still setting up (its shell goes on without the proxy): wait for it.
        'lp=$(cat "$d/launch" 2>/dev/null)\n'
        "i=0\n"
        'while [ -z "$pid" ] && [ -n "$lp" ] && kill -0 "$lp" 2>/dev/null && [ "$i" -lt 300 ]; do\n'
        '  sleep 0.1; i=$((i + 1)); pid=$(cat "$d/pid" 2>/dev/null)\n'
        "done\n"
        'if [ -z "$pid" ]; then printf \'%s nopid\\n\' "$M" >&2; exit 0; fi\n'
        "alive=\n"
        'if kill -0 "$pid" 2>/dev/null; then\n'
        "  alive=1\n"
        '  if [ -r "/proc/$pid/cmdline" ]; then\n'
        "    case \"$(tr '\\000' ' ' < \"/proc/$pid/cmdline\")\" in\n"
        '      *"$d/script-wrapper"*) ;;\n'
        "      *) alive= ;;\n"
        "    esac\n"
        "  fi\n"
        "fi\n"
        "printf '%s started\\n' \"$M\"\n"
        'if [ -n "$alive" ]; then\n'
        '  if tail --pid="$$" -c 0 /dev/null >/dev/null 2>&1; then\n'
        '    tail -c +1 -f --pid="$pid" "$d/output"\n'
        "  else\n"
        '    while kill -0 "$pid" 2>/dev/null; do sleep 1; done\n'
        '    cat "$d/output"\n'
        "  fi\n"
        "else\n"
        '  cat "$d/output" 2>/dev/null\n'
        "fi\n"
        "rc=\n"
        'if [ -s "$d/exit_code" ]; then read -r rc < "$d/exit_code"; fi\n'
        'printf \'%s exit %s\\n\' "$M" "${rc:-1}"\n' + _ack(cleanup) + 'exit "${rc:-1}"\n'
    )


def kill_command(directory: str, grace: float = KILL_GRACE) -> str:
    """SIGTERM the job's process group (SIGKILL after ``grace`` seconds).

    sshd starts every command in a session of its own, so the process group of the wrapper
    (the launch channel's session) is the whole job: the launch shell, the wrapper, the
    script and its children, ``tee``. Processes that moved to a session of their own escape,
    as do processes of another user the SSH user may not signal (sudo relays the signal to
    its command). When the group cannot be found (or is not a session) the wrapper's children
    and the wrapper are signalled instead.
    """
    d = shlex.quote(directory)
    return (
        # Right after the start the wrapper may not have written its pid yet.
        "i=0\n"
        f'while [ ! -s {d}/pid ] && [ -d {d} ] && [ ! -e {d}/exit_code ] && [ "$i" -lt 50 ]; do\n'
        "  sleep 0.1; i=$((i + 1))\n"
        "done\n"
        f"pid=$(cat {d}/pid 2>/dev/null)\n"
        'if [ -z "$pid" ]; then echo "The job has no pid file"; exit 0; fi\n'
        "pg=\nsid=\n"
        'if [ -r "/proc/$pid/stat" ]; then\n'
        '  read -r x1 x2 x3 x4 pg sid rest < "/proc/$pid/stat"\n'
        "fi\n"
        'if [ -z "$pg" ]; then\n'
        '  set -- $(ps -o pgid= -o sid= -p "$pid" 2>/dev/null)\n'
        "  pg=${1:-}; sid=${2:-}\n"
        "fi\n"
        'if [ -n "$pg" ] && [ "$pg" = "$sid" ] && [ "$pg" -gt 1 ]; then\n'
        '  t="-$pg"\n'
        "else\n"
        '  t="$pid"\n'
        '  pkill -TERM -P "$pid" 2>/dev/null\n'
        "fi\n"
        'kill -s TERM -- "$t" 2>/dev/null\n'
        f'(sleep {grace:g}; kill -s KILL -- "$t") >/dev/null 2>&1 < /dev/null &\n'
        "exit 0\n"
    )


def cleanup_command(directory: str) -> str:
    """Remove the job's directory."""
    return f"rm -rf {shlex.quote(directory)}"
