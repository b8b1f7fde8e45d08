"""Host-key checking for the SSH runner (§5.3), shared by every job of the service.

Two policies, as OpenSSH's ``StrictHostKeyChecking``:

* **accept-new** (default): the known-hosts file (``known_hosts_file``, by default the service
  user's ``~/.ssh/known_hosts``) is read once and cached in memory. A known host must present a
  known key (or a certificate signed by a matching ``@cert-authority``); any other key fails the
  connection with "Host key verification failed for <host>:<port>". An unknown host's key is
  accepted and appended to the file as ``host key`` (port 22) or ``[host]:port key``. Writes are
  serialised by an asyncio lock; the file is re-read when someone else changed it.
  ``first_execution`` prunes the host's entries before connecting (:meth:`KnownHosts.prune`).
* **strict** (``ssh_ca_known_hosts_file`` set): only host keys and host certificates trusted by
  that file (``@cert-authority`` lines, or plain entries) are accepted; nothing is learned.

Entries are matched like OpenSSH does: comma-separated patterns with ``*``/``?`` wildcards and
``!`` negation, hashed names (``|1|salt|hash``), ``@cert-authority`` and ``@revoked`` markers.
For a port other than 22 only ``[host]:port`` entries match.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncssh
from asyncssh.public_key import get_default_certificate_algs, get_default_public_key_algs

logger = logging.getLogger("smart_proxy_remote_execution_ssh.known_hosts")

DEFAULT_PORT = 22
_CA = "@cert-authority"
_REVOKED = "@revoked"


def host_token(host: str, port: int | None) -> str:
    """The name a host is stored under: ``host`` for port 22, else ``[host]:port``."""
    host = host.lower()
    if port is None or int(port) == DEFAULT_PORT:
        return host
    return f"[{host}]:{int(port)}"


def _hashed_match(pattern: str, token: str) -> bool:
    """``|1|base64(salt)|base64(hmac_sha1(salt, token))``."""
    parts = pattern.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt = base64.b64decode(parts[2])
        digest = base64.b64decode(parts[3])
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(hmac.new(salt, token.encode(), hashlib.sha1).digest(), digest)


@functools.lru_cache(maxsize=1024)
def _wildcard(pattern: str) -> re.Pattern[str]:
    """OpenSSH patterns know ``*`` and ``?`` only (``[`` is a literal, as in ``[host]:port``)."""
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    )


def _pattern_list_matches(patterns: str, token: str) -> bool:
    """OpenSSH's match_hostname(): any positive pattern matches and no negated one does."""
    matched = False
    for pattern in patterns.split(","):
        pattern = pattern.strip()
        if not pattern:
            continue
        negated = pattern.startswith("!")
        if negated:
            pattern = pattern[1:]
        if pattern.startswith("|"):
            hit = _hashed_match(pattern, token)
        elif "*" in pattern or "?" in pattern:
            hit = _wildcard(pattern.lower()).fullmatch(token) is not None
        else:
            hit = token == pattern.lower()
        if hit:
            if negated:
                return False
            matched = True
    return matched


def _is_plain(patterns: str) -> bool:
    return not any(c in patterns for c in "*?!|")


@dataclass
class _Entry:
    marker: str | None
    patterns: str
    key_text: str
    line: str
    _key: asyncssh.SSHKey | None = field(default=None, repr=False)
    _bad: bool = False

    def key(self) -> asyncssh.SSHKey | None:
        """The public key, parsed on first use (None when it cannot be parsed)."""
        if self._key is None and not self._bad:
            try:
                self._key = asyncssh.import_public_key(self.key_text)
            except (asyncssh.KeyImportError, ValueError) as exc:
                logger.warning("Ignoring a bad known_hosts entry %r: %s", self.line[:80], exc)
                self._bad = True
        return self._key


def _parse_line(line: str) -> _Entry | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    fields = stripped.split()
    marker = None
    if fields[0].startswith("@"):
        marker = fields.pop(0)
        if marker not in (_CA, _REVOKED):
            return None
    if len(fields) < 3:
        return None
    return _Entry(marker, fields[0], f"{fields[1]} {fields[2]}", stripped)


@dataclass
class _Match:
    host_keys: list[asyncssh.SSHKey] = field(default_factory=list)
    ca_keys: list[asyncssh.SSHKey] = field(default_factory=list)
    revoked: list[asyncssh.SSHKey] = field(default_factory=list)

    @property
    def known(self) -> bool:
        """Plain host keys are stored: any other plain key is a changed key.

        (A host covered by a ``@cert-authority`` line only that presents a plain key is new,
        as for OpenSSH.)
        """
        return bool(self.host_keys)


class KnownHosts:
    """The host-key store shared by all jobs (see the module doc)."""

    def __init__(self, path: str | os.PathLike[str], *, ca_file: str | None = None) -> None:
        self.path = os.path.expanduser(os.fspath(path))
        self.ca_file = os.path.expanduser(ca_file) if ca_file else None
        self._lock = asyncio.Lock()
        self._stat: tuple[int, int, int] | None = None
        self._loaded = False
        self._exact: dict[str, list[_Entry]] = {}
        self._patterns: list[_Entry] = []
        self._cache: dict[str, _Match] = {}
        self._pending: list[str] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._ca: asyncssh.SSHKnownHosts | None = None
        self._ca_stat: tuple[int, int, int] | None = None
        self.connection_options: dict[Any, Any] = {}
        """asyncssh options built on this store, shared by all connections (see connection)."""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> KnownHosts:
        """The store for the plugin settings (``known_hosts_file``, ``ssh_ca_known_hosts_file``)."""
        path = settings.get("known_hosts_file") or "~/.ssh/known_hosts"
        return cls(str(path), ca_file=settings.get("ssh_ca_known_hosts_file") or None)

    @property
    def strict(self) -> bool:
        """True when only the CA file decides (``ssh_ca_known_hosts_file``)."""
        return self.ca_file is not None

    def __repr__(self) -> str:
        mode = f"strict ca_file={self.ca_file}" if self.strict else "accept-new"
        return f"<KnownHosts {self.path} {mode}>"

    # -- reading -------------------------------------------------------------

    @staticmethod
    def _file_stat(path: str) -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _refresh(self) -> None:
        """(Re-)read the file when it changed since we last read or wrote it."""
        stat = self._file_stat(self.path)
        if self._loaded and stat == self._stat:
            return
        self._load(stat)

    def _load(self, stat: tuple[int, int, int] | None) -> None:
        exact: dict[str, list[_Entry]] = {}
        patterns: list[_Entry] = []
        if stat is not None:
            try:
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except OSError as exc:
                logger.warning("Cannot read known hosts file %s: %s", self.path, exc)
                text = ""
            for line in text.splitlines():
                entry = _parse_line(line)
                if entry is None:
                    continue
                if _is_plain(entry.patterns):
                    for name in entry.patterns.split(","):
                        exact.setdefault(name.lower(), []).append(entry)
                else:
                    patterns.append(entry)
        self._exact, self._patterns, self._cache = exact, patterns, {}
        self._stat = stat
        self._loaded = True
        # Keys accepted but not written yet stay known.
        for line in self._pending:
            self._index(_parse_line(line))

    def _index(self, entry: _Entry | None) -> None:
        if entry is None:
            return
        for name in entry.patterns.split(","):
            self._exact.setdefault(name.lower(), []).append(entry)
        self._cache.clear()

    def _match(self, token: str) -> _Match:
        self._refresh()
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        result = _Match()
        seen: set[int] = set()
        candidates = list(self._exact.get(token, ()))
        candidates += [e for e in self._patterns if _pattern_list_matches(e.patterns, token)]
        for entry in candidates:
            if id(entry) in seen:
                continue
            seen.add(id(entry))
            key = entry.key()
            if key is None:
                continue
            if entry.marker == _CA:
                result.ca_keys.append(key)
            elif entry.marker == _REVOKED:
                result.revoked.append(key)
            else:
                result.host_keys.append(key)
        self._cache[token] = result
        return result

    def known_keys(self, host: str, port: int | None = DEFAULT_PORT) -> list[asyncssh.SSHKey]:
        """The plain host keys stored for ``host``/``port`` (accept-new store only)."""
        return list(self._match(host_token(host, port)).host_keys)

    def is_known(self, host: str, port: int | None = DEFAULT_PORT) -> bool:
        """True when the store has a plain key for the host (accept-new store)."""
        return self._match(host_token(host, port)).known

    def _ca_known_hosts(self) -> asyncssh.SSHKnownHosts:
        assert self.ca_file is not None
        stat = self._file_stat(self.ca_file)
        if self._ca is None or stat != self._ca_stat:
            try:
                self._ca = asyncssh.read_known_hosts(self.ca_file)
            except OSError as exc:
                logger.error("Cannot read ssh_ca_known_hosts_file %s: %s", self.ca_file, exc)
                self._ca = asyncssh.import_known_hosts("")
            self._ca_stat = stat
        return self._ca

    # -- what asyncssh asks --------------------------------------------------

    def trusted(
        self, host: str, addr: str, port: int | None
    ) -> tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]]:
        """asyncssh ``known_hosts`` callable: (host keys, CA keys, revoked keys) for a host."""
        if self.strict:
            keys, cas, revoked, *_ = self._ca_known_hosts().match(host, addr, port)
            return list(keys), list(cas), list(revoked)
        match = self._match(host_token(host, port))
        return list(match.host_keys), list(match.ca_keys), list(match.revoked)

    def connect_options(self, host: str, port: int) -> dict[str, Any]:
        """Per-connection asyncssh options: the host key algorithms to ask for.

        Like OpenSSH: the algorithms of the known keys first (so a host that has several keys
        presents the one we know), host certificates first when a CA may vouch for the host.
        An unknown host (accept-new) is asked for a plain host key only, not a certificate
        (which could not be verified without a CA), so its key can be learned.
        """
        plain = [alg.decode() for alg in get_default_public_key_algs()]
        if self.strict:
            return {"server_host_key_algs": "default"}
        match = self._match(host_token(host, port))
        if not match.host_keys and not match.ca_keys:
            return {"server_host_key_algs": plain}
        algs: list[str] = []
        if match.ca_keys:
            algs += [alg.decode() for alg in get_default_certificate_algs()]
        for key in match.host_keys:
            algs += [alg.decode() for alg in key.sig_algorithms]
        algs += plain
        return {"server_host_key_algs": list(dict.fromkeys(algs))}

    def accept_new(self, host: str, port: int | None, key: asyncssh.SSHKey) -> bool:
        """asyncssh asks about a key not in :meth:`trusted`: accept it if the host is new."""
        if self.strict:
            logger.error(
                "Host key verification failed for %s: the key %s is not signed by a trusted CA",
                host_token(host, port),
                key.get_fingerprint(),
            )
            return False
        token = host_token(host, port)
        match = self._match(token)
        presented = key.public_data
        if any(known.public_data == presented for known in match.host_keys):
            return True  # learned meanwhile by a concurrent connection to the same host
        if match.known:
            logger.error(
                "Host key verification failed for %s: it presented %s %s, which is not the "
                "known key; remove the old key (or run the job as a first execution) if the "
                "host was reinstalled",
                token,
                key.get_algorithm(),
                key.get_fingerprint(),
            )
            return False
        logger.info("Permanently adding %s (%s) to %s", token, key.get_algorithm(), self.path)
        self._remember(token, key)
        return True

    def _remember(self, token: str, key: asyncssh.SSHKey) -> None:
        key_text = key.export_public_key("openssh").decode().split()
        line = f"{token} {key_text[0]} {key_text[1]}"
        self._pending.append(line)
        self._index(_parse_line(line))
        self._schedule_flush()

    # -- writing -------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop: write now
                self._write_pending()
                return
            self._flush_task = loop.create_task(self.flush())

    async def flush(self) -> None:
        """Write the accepted keys that are not in the file yet."""
        async with self._lock:
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        data = "".join(line + "\n" for line in lines).encode()
        try:
            self._ensure_dir()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                # Start on a new line if the file does not end with one.
                size = os.fstat(fd).st_size
                if size:
                    with open(self.path, "rb") as f:
                        f.seek(size - 1)
                        if f.read(1) != b"\n":
                            data = b"\n" + data
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            logger.error("Cannot add host keys to %s: %s", self.path, exc)
            return
        # Our index already has the lines: do not read the file again for them.
        self._stat = self._file_stat(self.path)

    def _ensure_dir(self) -> None:
        directory = os.path.dirname(self.path)
        if directory and not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)

    async def prune(self, host: str, port: int | None = DEFAULT_PORT) -> int:
        """Drop the entries of ``host``/``port`` (``ssh-keygen -R``); returns how many.

        ``@cert-authority`` and ``@revoked`` lines are kept.
        """
        token = host_token(host, port)
        async with self._lock:
            self._write_pending()
            self._refresh()
            if not self._match(token).host_keys:
                return 0
            try:
                with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
                    lines = f.read().splitlines()
            except FileNotFoundError:
                return 0
            kept: list[str] = []
            removed = 0
            for line in lines:
                entry = _parse_line(line)
                if (
                    entry is not None
                    and entry.marker is None
                    and _pattern_list_matches(entry.patterns, token)
                ):
                    removed += 1
                    continue
                kept.append(line)
            if removed:
                self._replace("".join(line + "\n" for line in kept))
                logger.info("Removed %d known host key(s) of %s from %s", removed, token, self.path)
            self._load(self._file_stat(self.path))
            return removed

    def _replace(self, text: str) -> None:
        directory = os.path.dirname(self.path) or "."
        try:
            mode = os.stat(self.path).st_mode & 0o777
        except FileNotFoundError:
            mode = 0o600
        fd, tmp = tempfile.mkstemp(prefix=".known_hosts.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(text)
            os.chmod(tmp, mode)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # -- helpers for callers -------------------------------------------------

    def add(self, host: str, port: int | None, key: asyncssh.SSHKey) -> None:
        """Remember ``key`` for a host (as if it was accepted as new)."""
        self._remember(host_token(host, port), key)
