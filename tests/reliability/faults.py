"""What the fault tests break on purpose, each undone in its teardown.

* :class:`PgCluster`: a throw-away PostgreSQL cluster of its own (``initdb`` + ``pg_ctl`` of
  the installed server, run as the ``postgres`` user, in a temp directory, on a free loopback
  port), so that restarting it disturbs no one (the shared server on 5432 is never touched).
* :func:`small_tmpfs`: a tmpfs of a few MB (``mount -t tmpfs -o size=8m``) for a SQLite file
  whose disk is then filled (:func:`fill_disk`) and freed.
* :class:`NetnsHost`: a network namespace with a veth pair on link-local addresses
  (169.254.<n>.1 on our side, .2 inside), an sshd inside it, and :meth:`NetnsHost.cut` which
  takes the namespace's end of the link down (traffic never leaves the machine).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import sshd as sshd_support
from tests.support.services import free_port
from tests.support.sshd import Sshd

PG_USER = "postgres"


def _run(argv: list[str], *, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout}"
        )
    return proc.stdout


def _pg_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        raise AssertionError(
            f"{tool} not found under /usr/lib/postgresql/*/bin (install postgresql: "
            "scripts/test-deps.sh)"
        )
    return found[-1]


@dataclass
class PgCluster:
    """A private PostgreSQL cluster (see the module doc); ``trust`` auth for ``postgres``."""

    directory: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="rel-pg-", dir="/tmp"))
    )
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        entry = pwd.getpwnam(PG_USER)
        os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"

    def _as_postgres(self, *argv: str, timeout: float = 60) -> str:
        return _run(["runuser", "-u", PG_USER, "--", *argv], timeout=timeout)

    def init(self) -> None:
        self._as_postgres(
            _pg_bin("initdb"), "-D", str(self.data), "-U", PG_USER, "--auth=trust", "-E", "UTF8"
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=200"
        )
        self._as_postgres(
            _pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "-t", "60", "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (connections are cut, as on a restart) or ``immediate`` (a crash)."""
        self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        proc = subprocess.run(
            ["runuser", "-u", PG_USER, "--", _pg_bin("pg_ctl"), "-D", str(self.data), "status"],
            capture_output=True,
            check=False,
        )
        return proc.returncode == 0

    def close(self) -> None:
        if self.data.exists() and self.running():
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@contextlib.contextmanager
def small_tmpfs(size: str = "8m") -> Iterator[Path]:
    """A fresh tmpfs of ``size`` (root only), unmounted and removed afterwards."""
    if os.geteuid() != 0:
        raise AssertionError("the disk-full test mounts a tmpfs: it needs root (make test is)")
    path = Path(tempfile.mkdtemp(prefix="rel-tmpfs-", dir="/tmp"))
    _run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)])
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            path.rmdir()


def fill_disk(directory: Path, name: str = "filler") -> Path:
    """Write a file into ``directory`` until its file system is full (ENOSPC)."""
    path = directory / name
    block = b"\0" * 65536
    with open(path, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        # the last partial blocks too
        with contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 512)
    return path


# ---- a host behind a link we can cut ----------------------------------------------------------


def netns_problem() -> str | None:
    """Why network namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is missing"
    name = f"relprobe{secrets.token_hex(3)}"
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"`ip netns add` fails here: {proc.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


class NetnsSshd(Sshd):
    """An :class:`Sshd` started inside a network namespace (``ip netns exec``)."""

    namespace: str = ""

    def start(self, timeout: float = sshd_support.START_TIMEOUT) -> None:
        original = sshd_support.SSHD_BIN
        wrapper = self.directory / "sshd-in-netns"
        wrapper.write_text(
            f"#!/bin/sh\nexec ip netns exec {self.namespace} {original} \"$@\"\n"
        )
        wrapper.chmod(0o755)
        sshd_support.SSHD_BIN = str(wrapper)
        try:
            super().start(timeout)
        finally:
            sshd_support.SSHD_BIN = original


@dataclass
class NetnsHost:
    """A namespace ``rel<hex>`` joined to ours by a veth pair (169.254.<n>.1/30 here, .2
    inside), with ``lo`` up inside."""

    index: int
    name: str = field(default_factory=lambda: f"rel{secrets.token_hex(4)}")

    def __post_init__(self) -> None:
        self.outer = f"{self.name}o"
        self.inner = f"{self.name}i"
        third = 100 + self.index
        self.outer_address = f"169.254.{third}.1"
        self.address = f"169.254.{third}.2"

    def create(self) -> None:
        _run(["ip", "netns", "add", self.name])
        _run(["ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner])
        _run(["ip", "link", "set", self.inner, "netns", self.name])
        _run(["ip", "addr", "add", f"{self.outer_address}/30", "dev", self.outer])
        _run(["ip", "link", "set", self.outer, "up"])
        inside = ["ip", "netns", "exec", self.name]
        _run([*inside, "ip", "addr", "add", f"{self.address}/30", "dev", self.inner])
        _run([*inside, "ip", "link", "set", self.inner, "up"])
        _run([*inside, "ip", "link", "set", "lo", "up"])

    def cut(self) -> float:
        """Take the namespace's end of the link down: packets vanish, nothing is refused.
        Returns the instant (time.time())."""
        instant = time.time()
        _run(["ip", "netns", "exec", self.name, "ip", "link", "set", self.inner, "down"])
        return instant

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
