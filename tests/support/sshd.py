"""Real OpenSSH servers, users and keys for the SSH remote-execution tests.

Everything here drives the real system tools: ``/usr/sbin/sshd`` (Debian openssh-server),
``ssh-keygen``, ``useradd``/``userdel``/``chpasswd``, ``visudo`` and ``mount``. It needs root,
which ``missing_requirement()`` checks. ``scripts/test-deps.sh`` installs the packages.

Building blocks:

* Keys: ``generate_key`` writes an OpenSSH key pair (optionally passphrase-protected);
  ``sign_user_key``/``sign_host_key`` write ``<key>-cert.pub`` with ``ssh-keygen -s``;
  ``SshKeys.create`` makes the whole set the tests use (proxy key + user certificate, encrypted
  key, RSA key, a stranger key, user CA, host CA).
* ``TestUsers.create``: three throw-away accounts with ``/bin/sh`` as login shell and random
  passwords, plus a sudoers drop-in. Names carry a per-run suffix (``rexuser_1a2b3c``), so
  parallel test runs never share them; the GECOS field records the owning pid, so
  ``sweep_leftovers`` can remove what a crashed run left behind.
* ``Sshd``: one ``sshd -D`` process listening on a free port on one or more loopback addresses
  (127.0.0.0/8 all routes to ``lo``, so one server can play many hosts). Authorized keys live in
  the server's own directory (``AuthorizedKeysFile <dir>/authorized_keys/%u``), never in the
  users' homes. Start, stop, restart (optionally with a new host key) and drop live sessions.
* ``noexec_tmpfs``: a tmpfs mounted ``noexec`` (mode 1777).
* ``closed_port``/``blackhole_port``: a port that refuses connections, and one that accepts
  them but never sends an SSH banner.

All temporary paths are ``/tmp/rex-test-<kind>-<pid>-<random>`` (world-traversable: sshd reads
authorized keys as the target user), so ``sweep_leftovers`` recognises the ones whose owning
process is gone.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

SSHD_BIN = "/usr/sbin/sshd"
SSH_BIN = shutil.which("ssh") or "/usr/bin/ssh"
SSH_KEYGEN_BIN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start without it
SUDOERS_DIR = Path("/etc/sudoers.d")
TMP_ROOT = Path("/tmp")

OWNER_TAG = "rex-tests pid="  # GECOS of test users / first line of sudoers drop-ins
TEMP_PREFIX = "rex-test-"  # /tmp/rex-test-<kind>-<pid>-<random>
_TEMP_RE = re.compile(rf"^{re.escape(TEMP_PREFIX)}(?P<kind>[a-z]+)-(?P<pid>\d+)-")

USER_SHELL = "/bin/sh"  # dash: no start-up files worth mentioning (bash/root cost ~0.1 s)
SUDO_PROMPT = "rex login: "  # the prompt the runner passes with sudo -p
START_TIMEOUT = 10.0


def missing_requirement() -> str | None:
    """Why the real-sshd tests cannot run here, or None when they can (``make test`` runs as
    root and installs what they need, so a missing piece fails them)."""
    if os.geteuid() != 0:
        return "SSH tests need root (they create users, start sshd and mount a tmpfs)"
    for tool in (SSHD_BIN, SSH_BIN, SSH_KEYGEN_BIN):
        if not os.access(tool, os.X_OK):
            return f"{tool} missing (run scripts/test-deps.sh)"
    for tool in ("sudo", "visudo", "useradd", "userdel", "chpasswd", "setfacl"):
        if shutil.which(tool) is None:
            return f"{tool} missing (run scripts/test-deps.sh)"
    return None


def _run(argv: Sequence[str | os.PathLike[str]], *, input: str | None = None) -> str:
    """Run a tool to completion; raise with its output when it fails."""
    proc = subprocess.run(
        [os.fspath(a) for a in argv], input=input, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, argv))} exited {proc.returncode}: "
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def make_temp_dir(kind: str, *, parent: Path = TMP_ROOT, mode: int = 0o755) -> Path:
    """``/tmp/rex-test-<kind>-<pid>-<random>``, mode 755 unless told otherwise."""
    path = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{kind}-{os.getpid()}-", dir=parent))
    path.chmod(mode)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------
# Keys and certificates


@dataclass(frozen=True)
class KeyPair:
    """An OpenSSH key pair on disk: ``private``, ``private.pub``, maybe ``private-cert.pub``."""

    private: Path
    passphrase: str | None = None

    @property
    def public(self) -> Path:
        return Path(f"{self.private}.pub")

    @property
    def certificate(self) -> Path:
        """``<key>-cert.pub``; exists only once the key has been signed."""
        return Path(f"{self.private}-cert.pub")

    @property
    def has_certificate(self) -> bool:
        return self.certificate.exists()

    def public_text(self) -> str:
        """The ``.pub`` line: ``<type> <base64> <comment>``."""
        return self.public.read_text().strip()

    def public_key(self) -> str:
        """``<type> <base64>`` without the comment (as sshd logs and known_hosts store it)."""
        return " ".join(self.public_text().split()[:2])


def generate_key(
    path: Path | str,
    key_type: str = "ed25519",
    *,
    passphrase: str | None = None,
    comment: str | None = None,
    bits: int | None = None,
    kdf_rounds: int = 4,
) -> KeyPair:
    """Write a new key pair in OpenSSH format with ``ssh-keygen``; overwrite what is there.

    ``kdf_rounds`` applies to passphrase-protected keys only; the default 16 of ssh-keygen makes
    every decryption cost ~0.1 s, a few rounds keep the tests fast and the format identical.
    """
    path = Path(path)
    for stale in (path, Path(f"{path}.pub"), Path(f"{path}-cert.pub")):
        stale.unlink(missing_ok=True)
    argv: list[str] = [SSH_KEYGEN_BIN, "-q", "-t", key_type, "-f", str(path)]
    argv += ["-N", passphrase or "", "-C", comment or path.name]
    if bits is not None:
        argv += ["-b", str(bits)]
    if passphrase:
        argv += ["-a", str(kdf_rounds)]
    _run(argv)
    path.chmod(0o600)
    Path(f"{path}.pub").chmod(0o644)
    return KeyPair(path, passphrase)


def _sign(
    ca: KeyPair,
    key: KeyPair,
    principals: Iterable[str],
    *,
    host: bool,
    identity: str,
    validity: str,
    serial: int | None,
) -> Path:
    argv: list[str] = [SSH_KEYGEN_BIN, "-q", "-s", str(ca.private), "-I", identity]
    if host:
        argv.append("-h")
    argv += ["-n", ",".join(principals), "-V", validity]
    if serial is not None:
        argv += ["-z", str(serial)]
    if ca.passphrase:
        argv += ["-P", ca.passphrase]
    _run([*argv, str(key.public)])
    key.certificate.chmod(0o644)
    return key.certificate


def sign_user_key(
    ca: KeyPair,
    key: KeyPair,
    principals: Iterable[str],
    *,
    identity: str = "rex-test-user",
    validity: str = "-1h:+30d",
    serial: int | None = None,
) -> Path:
    """Write ``<key>-cert.pub``: a user certificate for ``principals`` (login names)."""
    return _sign(
        ca, key, principals, host=False, identity=identity, validity=validity, serial=serial
    )


def sign_host_key(
    ca: KeyPair,
    key: KeyPair,
    principals: Iterable[str],
    *,
    identity: str = "rex-test-host",
    validity: str = "-1h:+30d",
) -> Path:
    """Write ``<key>-cert.pub``: a host certificate for ``principals`` (host names/addresses)."""
    return _sign(ca, key, principals, host=True, identity=identity, validity=validity, serial=None)


def known_hosts_host(host: str, port: int) -> str:
    """How known_hosts names a host: ``host`` for port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def known_hosts_line(host: str, port: int, public_key: str) -> str:
    """One known_hosts line for ``public_key`` (``<type> <base64> [comment]``)."""
    return f"{known_hosts_host(host, port)} {' '.join(public_key.split()[:2])}"


def cert_authority_line(ca: KeyPair, pattern: str = "*") -> str:
    """An ``@cert-authority`` known_hosts line trusting host certificates signed by ``ca``."""
    return f"@cert-authority {pattern} {ca.public_key()}"


@dataclass(frozen=True)
class SshKeys:
    """The session's keys. All private keys are 0600; the directory is world-traversable.

    * ``proxy``: the proxy's identity (file ``id_rsa_foreman_proxy``, ed25519 for speed) with
      ``id_rsa_foreman_proxy-cert.pub``, a user certificate for every name in ``principals``.
    * ``proxy_encrypted``: passphrase-protected (``passphrase`` field), no certificate.
    * ``rsa``: an RSA-2048 key without certificate.
    * ``stranger``: a key no server authorizes and no CA signed (auth must fail).
    * ``user_ca``: the CA behind ``TrustedUserCAKeys``; ``host_ca``: signs host keys
      (``@cert-authority`` known_hosts, see ``host_ca_known_hosts_line``).
    """

    directory: Path
    proxy: KeyPair
    proxy_encrypted: KeyPair
    rsa: KeyPair
    stranger: KeyPair
    user_ca: KeyPair
    host_ca: KeyPair
    principals: tuple[str, ...]

    PROXY_KEY_NAME = "id_rsa_foreman_proxy"

    @classmethod
    def create(cls, principals: Iterable[str], directory: Path | None = None) -> SshKeys:
        directory = directory or make_temp_dir("sshkeys")
        principals = tuple(principals)
        user_ca = generate_key(directory / "user_ca", comment="rex-test user CA")
        host_ca = generate_key(directory / "host_ca", comment="rex-test host CA")
        proxy = generate_key(directory / cls.PROXY_KEY_NAME, comment="foreman-proxy@rex-test")
        sign_user_key(user_ca, proxy, principals, identity="foreman-proxy")
        encrypted = generate_key(
            directory / "id_encrypted",
            passphrase="rex-" + secrets.token_hex(6),
            comment="encrypted@rex-test",
        )
        rsa = generate_key(directory / "id_rsa", "rsa", bits=2048, comment="rsa@rex-test")
        stranger = generate_key(directory / "id_stranger", comment="stranger@rex-test")
        return cls(directory, proxy, encrypted, rsa, stranger, user_ca, host_ca, principals)

    def host_ca_known_hosts_line(self, pattern: str = "*") -> str:
        return cert_authority_line(self.host_ca, pattern)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Users and sudoers


@dataclass(frozen=True)
class TestUser:
    """A local account created for the tests (login shell ``/bin/sh``)."""

    __test__ = False  # not a pytest test class

    name: str
    password: str
    uid: int
    gid: int
    home: Path


def kill_processes(victims: Iterable[psutil.Process], timeout: float = 5.0) -> None:
    """SIGKILL the processes and wait until each is gone or a zombie.

    Not ``psutil.wait_procs``: orphans are reaped by pid 1 whenever it gets to it, and a
    zombie already counts as dead here.
    """
    victims = list(victims)
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for proc in victims:
        while time.monotonic() < deadline:
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.005)


def _kill_user_processes(uid: int) -> None:
    victims = []
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info["uids"]
        if uids is not None and uid in (uids.real, uids.effective):
            victims.append(proc)
    kill_processes(victims)


def _run_locked(argv: Sequence[str], *, input: str | None = None, attempts: int = 20) -> None:
    """useradd & co. fail at once when another run holds /etc/passwd's lock: retry a while."""
    for attempt in range(attempts):
        try:
            _run(argv, input=input)
            return
        except RuntimeError as exc:
            if "lock" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.1)


def create_user(name: str, password: str, *, comment: str) -> TestUser:
    _run_locked(
        ["useradd", "--create-home", "--user-group", "--shell", USER_SHELL, "-c", comment, name]
    )
    _run_locked(["chpasswd"], input=f"{name}:{password}\n")
    entry = pwd.getpwnam(name)
    return TestUser(name, password, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def remove_user(name: str) -> None:
    """Kill the user's processes, then ``userdel --remove --force``. Missing users are fine."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return
    _kill_user_processes(entry.pw_uid)
    proc = subprocess.run(
        ["userdel", "--remove", "--force", name], capture_output=True, text=True, check=False
    )
    # 6: no such user (raced with someone else); 12: home could not be removed.
    if proc.returncode not in (0, 6, 12):
        raise RuntimeError(f"userdel {name} exited {proc.returncode}: {proc.stderr.strip()}")
    if proc.returncode == 12:
        shutil.rmtree(entry.pw_dir, ignore_errors=True)


@dataclass
class TestUsers:
    """The three test accounts and the sudoers drop-in (``/etc/sudoers.d/rex-tests-<suffix>``).

    * ``rexuser``: the SSH login user (key, certificate or password login); may run anything as
      ``rextarget`` through sudo *with its own password* (timestamp_timeout=0: every sudo
      prompts; prompts and lecture off, no requiretty).
    * ``rextarget``: the effective user for sudo/su; ``su - rextarget`` takes its password.
    * ``rexnosudo``: can log in, but has no sudo rule at all.

    Real names are ``rexuser_<suffix>`` etc.; always use ``.name``.
    """

    __test__ = False  # not a pytest test class

    rexuser: TestUser
    rextarget: TestUser
    rexnosudo: TestUser
    sudoers_file: Path
    suffix: str

    @property
    def all(self) -> tuple[TestUser, ...]:
        return (self.rexuser, self.rextarget, self.rexnosudo)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(user.name for user in self.all)

    @classmethod
    def create(cls, suffix: str | None = None) -> TestUsers:
        suffix = suffix or secrets.token_hex(3)
        comment = f"{OWNER_TAG}{os.getpid()}"
        created: list[str] = []
        sudoers = SUDOERS_DIR / f"rex-tests-{suffix}"  # no dot: sudo skips names with dots
        try:
            users = {}
            for role in ("rexuser", "rextarget", "rexnosudo"):
                name = f"{role}_{suffix}"
                users[role] = create_user(name, "pw-" + secrets.token_hex(6), comment=comment)
                created.append(name)
            ssh_user, target, nosudo = users["rexuser"], users["rextarget"], users["rexnosudo"]
            text = (
                f"# {comment}\n"
                f"Defaults:{ssh_user.name} !requiretty, lecture=never, timestamp_timeout=0\n"
                f"Defaults:{nosudo.name} !requiretty, lecture=never, timestamp_timeout=0\n"
                f"{ssh_user.name} ALL=({target.name}) ALL\n"
            )
            candidate = SUDOERS_DIR / f".rex-tests-{suffix}.new"  # dotted: ignored by sudo
            candidate.write_text(text)
            candidate.chmod(0o440)
            _run(["visudo", "-cf", str(candidate)])
            candidate.replace(sudoers)
            return cls(ssh_user, target, nosudo, sudoers, suffix)
        except BaseException:
            for name in created:
                remove_user(name)
            sudoers.unlink(missing_ok=True)
            (SUDOERS_DIR / f".rex-tests-{suffix}.new").unlink(missing_ok=True)
            raise

    def remove(self) -> None:
        self.sudoers_file.unlink(missing_ok=True)
        for user in self.all:
            remove_user(user.name)


# --------------------------------------------------------------------------------------------
# Ports


def _port_free_on(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def free_port(addresses: Sequence[str] = ("127.0.0.1",)) -> int:
    """A TCP port nobody is bound to on any of ``addresses`` right now."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((addresses[0], 0))
            port = int(sock.getsockname()[1])
        if all(_port_free_on(address, port) for address in addresses):
            return port
    raise RuntimeError(f"no free port on {addresses}")


@contextlib.contextmanager
def closed_port(address: str = "127.0.0.1") -> Iterator[int]:
    """A port that is bound but not listening while the block runs: connects are refused.

    Holding the bind keeps other processes from taking the port meanwhile.
    """
    with socket.socket() as sock:
        sock.bind((address, 0))
        yield int(sock.getsockname()[1])


@contextlib.contextmanager
def blackhole_port(address: str = "127.0.0.1") -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) but never speaks SSH.

    Clients hang in the banner exchange until their own timeout (``ConnectTimeout``).
    """
    with socket.socket() as sock:
        sock.bind((address, 0))
        sock.listen(128)
        yield int(sock.getsockname()[1])


def loopback_addresses(count: int, first: int = 2) -> list[str]:
    """``count`` distinct loopback addresses ``127.0.0.<first>`` on (up to 127.0.0.254)."""
    if count < 0 or first < 1 or first + count - 1 > 254:
        raise ValueError("at most 127.0.0.1 .. 127.0.0.254")
    return [f"127.0.0.{n}" for n in range(first, first + count)]


def wait_for_banner(address: str, port: int, timeout: float = 2.0) -> str:
    """Connect and read the SSH identification line; raise OSError if there is none."""
    with socket.create_connection((address, port), timeout=timeout) as sock:
        sock.sendall(b"SSH-2.0-rex-test-probe\r\n")  # so sshd logs no "kex_exchange" error
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(256)
            if not chunk:
                raise ConnectionError("closed before the SSH banner")
            data += chunk
    line = data.split(b"\n", 1)[0].decode("ascii", "replace").strip()
    if not line.startswith("SSH-"):
        raise ConnectionError(f"not an SSH banner: {line!r}")
    return line


# --------------------------------------------------------------------------------------------
# sshd


@dataclass
class Sshd:
    """An OpenSSH server on ``addresses`` (all on the same ``port``) in its own directory.

    Create it, ``authorize`` keys, ``start()``; or use it as a context manager, which removes
    the directory (and stops the server) on exit. ``host``/``port`` name the first address.

    The config: password + publickey (+ ``TrustedUserCAKeys`` when ``user_ca`` is given),
    ``KbdInteractiveAuthentication no``, ``StrictModes no``, ``UseDNS no``,
    ``MaxStartups 1000:30:2000``, ``MaxSessions 100``, ``LogLevel ERROR`` (to ``log_path``),
    ``AllowUsers`` when ``allow_users`` is given. With ``host_ca`` the host key is also
    presented as a certificate for ``addresses`` + ``localhost``.

    ``use_pam`` is off by default: sshd then checks passwords against /etc/shadow itself and a
    wrong password fails in ~0.04 s; through PAM (Debian's default) pam_unix delays every
    failure by ~2.5 s and logins cost a little more. Both work here, as do sudo and su (they
    use PAM themselves either way).
    """

    addresses: Sequence[str] = ("127.0.0.1",)
    port: int = 0  # 0: pick a free one
    user_ca: KeyPair | None = None
    host_ca: KeyPair | None = None
    allow_users: Sequence[str] | None = None
    use_pam: bool = False
    host_key_type: str = "ed25519"
    extra_config: Sequence[str] = ()
    directory: Path = field(default_factory=lambda: make_temp_dir("sshd"))

    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    host_key: KeyPair = field(init=False)
    host_certificate: Path | None = field(default=None, init=False)
    _key_generation: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.addresses = tuple(self.addresses)
        self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.addresses)
        self.authorized_keys_dir.mkdir(mode=0o755, exist_ok=True)
        self.authorized_keys_dir.chmod(0o755)
        self.rotate_host_key()

    # -- paths and names

    @property
    def host(self) -> str:
        return self.addresses[0]

    @property
    def config_path(self) -> Path:
        return self.directory / "sshd_config"

    @property
    def log_path(self) -> Path:
        return self.directory / "sshd.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "sshd.pid"

    @property
    def authorized_keys_dir(self) -> Path:
        return self.directory / "authorized_keys"

    def authorized_keys_file(self, user: str) -> Path:
        return self.authorized_keys_dir / user

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- keys

    def authorize(self, user: str, *keys: KeyPair | str) -> None:
        """Append public keys (KeyPair or ``.pub`` text) to ``user``'s authorized keys."""
        path = self.authorized_keys_file(user)
        lines = [key.public_text() if isinstance(key, KeyPair) else key.strip() for key in keys]
        with path.open("a") as handle:
            handle.writelines(f"{line}\n" for line in lines)
        path.chmod(0o644)  # sshd reads it as the user

    def set_authorized_keys(self, user: str, keys: Iterable[KeyPair | str]) -> None:
        """Replace ``user``'s authorized keys (an empty list: certificates/passwords only)."""
        self.authorized_keys_file(user).unlink(missing_ok=True)
        self.authorized_keys_file(user).touch(mode=0o644)
        self.authorize(user, *keys)

    def rotate_host_key(self, *, certificate: bool = True) -> KeyPair:
        """Generate a new host key (takes effect on the next start/restart).

        With ``host_ca`` and ``certificate`` the new key is signed too; ``certificate=False``
        presents the bare key only (CA-trusting clients then reject the host).
        """
        self._key_generation += 1
        name = f"ssh_host_{self.host_key_type}_key.{self._key_generation}"
        self.host_key = generate_key(
            self.directory / name, self.host_key_type, comment=f"host-{self._key_generation}"
        )
        self.host_certificate = None
        if self.host_ca is not None and certificate:
            self.host_certificate = sign_host_key(
                self.host_ca, self.host_key, [*self.addresses, "localhost"]
            )
        return self.host_key

    def known_hosts_lines(self, addresses: Iterable[str] | None = None) -> list[str]:
        """Plain known_hosts lines pinning the current host key for each address."""
        return [
            known_hosts_line(address, self.port, self.host_key.public_key())
            for address in (addresses if addresses is not None else self.addresses)
        ]

    def write_known_hosts(self, path: Path, *, append: bool = True) -> Path:
        with path.open("a" if append else "w") as handle:
            handle.writelines(f"{line}\n" for line in self.known_hosts_lines())
        return path

    # -- config and process

    def _config_text(self) -> str:
        lines = [f"ListenAddress {address}:{self.port}" for address in self.addresses]
        lines.append(f"HostKey {self.host_key.private}")
        if self.host_certificate is not None:
            lines.append(f"HostCertificate {self.host_certificate}")
        lines += [
            f"AuthorizedKeysFile {self.authorized_keys_dir}/%u",
            "PubkeyAuthentication yes",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            "PermitEmptyPasswords no",
            f"UsePAM {'yes' if self.use_pam else 'no'}",
            "PermitRootLogin no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "MaxStartups 1000:30:2000",
            "MaxSessions 100",
            "MaxAuthTries 10",
            "LoginGraceTime 30",
            "LogLevel ERROR",
            f"PidFile {self.pid_file}",
            "AcceptEnv LANG LC_*",
            f"Subsystem sftp {SFTP_SERVER}",
        ]
        if self.user_ca is not None:
            lines.append(f"TrustedUserCAKeys {self.user_ca.public}")
        if self.allow_users:
            lines.append(f"AllowUsers {' '.join(self.allow_users)}")
        lines += list(self.extra_config)
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Write the config, start ``sshd -D -e`` and wait for a banner on every address."""
        if self.running:
            raise RuntimeError("sshd already running")
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self.config_path.write_text(self._config_text())
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [SSHD_BIN, "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        pending = list(self.addresses)
        while pending:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"sshd exited {self.process.returncode} at start:\n{self.log_text()}"
                )
            try:
                wait_for_banner(pending[0], self.port)
                pending.pop(0)
                continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"sshd not answering on {pending[0]}:{self.port}:\n{self.log_text()}"
                )
            time.sleep(0.01)

    def session_processes(self) -> list[psutil.Process]:
        """The per-connection sshd processes and everything running under them."""
        if self.process is None:
            return []
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill_sessions(self) -> int:
        """SIGKILL every connection (and its commands) but keep listening; returns the count.

        Clients see the connection drop (OpenSSH's ``ssh`` exits 255).
        """
        victims = self.session_processes()
        kill_processes(victims)
        return len(victims)

    def stop(self, *, kill_sessions: bool = True) -> None:
        """Stop listening (connects are then refused). With ``kill_sessions`` (the default)
        also drop live connections; without, they go on, as after ``systemctl stop ssh``."""
        if self.process is None:
            return
        sessions = self.session_processes() if kill_sessions else []
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        kill_processes(sessions)
        self.process = None

    def restart(self, *, new_host_key: bool = False, kill_sessions: bool = False) -> None:
        """Stop and start again on the same addresses and port.

        ``new_host_key``: come back with a freshly generated host key (signed by ``host_ca``
        when there is one). Live sessions survive unless ``kill_sessions``.
        """
        self.stop(kill_sessions=kill_sessions)
        if new_host_key:
            self.rotate_host_key()
        self.start()

    def close(self) -> None:
        """Stop (dropping all sessions) and delete the directory."""
        self.stop(kill_sessions=True)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Sshd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- clients

    def ssh_argv(
        self,
        user: str,
        command: str | None = None,
        *,
        identity: KeyPair | None = None,
        known_hosts: Path | None = None,
        address: str | None = None,
        batch: bool = True,
        options: Iterable[str] = (),
    ) -> list[str]:
        """An OpenSSH client command line for this server (no config files, no agent).

        Without ``known_hosts`` host keys are not checked at all.
        """
        argv = [SSH_BIN, "-F", "/dev/null", "-p", str(self.port), "-o", "LogLevel=ERROR"]
        if batch:
            argv += ["-o", "BatchMode=yes"]
        if known_hosts is None:
            argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        else:
            argv += ["-o", f"UserKnownHostsFile={known_hosts}"]
        if identity is not None:
            argv += ["-o", "IdentitiesOnly=yes", "-i", str(identity.private)]
        argv += ["-o", "IdentityAgent=none"]
        for option in options:
            argv += ["-o", option]
        argv.append(f"{user}@{address or self.host}")
        if command is not None:
            argv.append(command)
        return argv


# --------------------------------------------------------------------------------------------
# noexec tmpfs, working directories


@contextlib.contextmanager
def noexec_tmpfs(size: str = "16m") -> Iterator[Path]:
    """A fresh tmpfs mounted ``noexec,nosuid,nodev`` with mode 1777 (anyone may write)."""
    path = make_temp_dir("noexec")
    _run(
        ["mount", "-t", "tmpfs", "-o", f"noexec,nosuid,nodev,mode=1777,size={size}", "tmpfs", path]
    )
    try:
        yield path
    finally:
        _unmount(path)


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
    with contextlib.suppress(OSError):
        path.rmdir()


@contextlib.contextmanager
def user_directory(user: TestUser, parent: Path = Path("/var/tmp")) -> Iterator[Path]:
    """A fresh directory owned by ``user`` (mode 755), e.g. a remote working dir."""
    path = make_temp_dir("work", parent=parent)
    os.chown(path, user.uid, user.gid)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Leftovers of crashed runs


def _mount_points() -> list[Path]:
    points = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) > 1:
                points.append(Path(parts[1].replace("\\040", " ")))
    return points


def sweep_leftovers() -> list[str]:
    """Remove what test runs whose process is gone left behind; returns what was removed.

    Test users (GECOS ``rex-tests pid=N``), sudoers drop-ins (first line ``# rex-tests pid=N``),
    sshd processes started from ``/tmp/rex-test-sshd-N-*`` configs, noexec mounts and the
    ``/tmp`` and ``/var/tmp`` ``rex-test-*-N-*`` directories. Anything owned by a live pid is
    left alone, so concurrent runs do not disturb each other.
    """
    removed: list[str] = []

    def dead(pid_text: str) -> bool:
        return pid_text.isdigit() and not _pid_alive(int(pid_text))

    for entry in pwd.getpwall():
        if entry.pw_gecos.startswith(OWNER_TAG) and dead(entry.pw_gecos[len(OWNER_TAG) :]):
            remove_user(entry.pw_name)
            removed.append(f"user {entry.pw_name}")

    with contextlib.suppress(FileNotFoundError):
        for path in SUDOERS_DIR.iterdir():
            if not path.name.startswith(("rex-tests-", ".rex-tests-")):
                continue
            first = path.read_text(errors="replace").split("\n", 1)[0]
            tag = first.removeprefix("# ")
            if tag.startswith(OWNER_TAG) and dead(tag[len(OWNER_TAG) :]):
                path.unlink(missing_ok=True)
                removed.append(str(path))

    # sshd rewrites its title: "sshd: /usr/sbin/sshd -D -e -f <config> [listener] ...".
    config_re = re.compile(
        rf" -f {re.escape(str(TMP_ROOT))}/{re.escape(TEMP_PREFIX)}sshd-(?P<pid>\d+)-\S*/sshd_config"
    )
    for proc in psutil.process_iter(["cmdline"]):
        match = config_re.search(" ".join(proc.info["cmdline"] or []))
        if match and dead(match["pid"]):
            with contextlib.suppress(psutil.Error):
                kill_processes([*proc.children(recursive=True), proc])
            removed.append(f"sshd pid {proc.pid}")

    for point in _mount_points():
        match = _TEMP_RE.match(point.name)
        if point.parent in (TMP_ROOT, Path("/var/tmp")) and match and dead(match["pid"]):
            _unmount(point)
            removed.append(f"mount {point}")

    for parent in (TMP_ROOT, Path("/var/tmp")):
        with contextlib.suppress(FileNotFoundError):
            for path in parent.iterdir():
                match = _TEMP_RE.match(path.name)
                if match and dead(match["pid"]) and path.is_dir() and not path.is_mount():
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(str(path))
    return removed
