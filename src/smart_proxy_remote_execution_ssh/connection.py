"""One asyncssh connection per host job (§5.3), made inside the event loop.

Authentication methods are tried in the order of §5.3 on the same connection: ``password``
(``secrets.ssh_password``; keyboard-interactive carries it when the server has no plain
password method), ``publickey`` with the proxy key ``ssh_identity_key_file`` (and its
``<key>-cert.pub`` user certificate when present; an encrypted key needs ``key_passphrase``,
without one it is skipped) and, with ``kerberos_auth``, ``gssapi-with-mic``. Host keys are
checked by :class:`~smart_proxy_remote_execution_ssh.known_hosts.KnownHosts`.

Each attempt is limited to ``connect_timeout`` seconds. A connection error (refused,
unreachable, timed out, dropped during the handshake) ends the attempts at once with
:class:`HostUnreachable`, as in the original, unless the plugin setting ``connect_retries``
asks for more attempts (``connect_retry_interval`` seconds apart). The job input's
``connection_options`` play no part: they are Foreman's trigger retries. Authentication
failures and rejected host keys are never retried.

The identity key is read once per process for each (path, modification time, passphrase).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from .known_hosts import KnownHosts, host_token
from .options import ScriptOptions

logger = logging.getLogger("smart_proxy_remote_execution_ssh.connection")

KEEPALIVE_INTERVAL = 15
KEEPALIVE_COUNT_MAX = 3


class ConnectError(Exception):
    """A connection to the host could not be established."""


class HostUnreachable(ConnectError):
    """Every connection attempt failed with a network error; the job ends with "EXCEPTION"
    (the original's ssh failed to set up its master connection, ``start`` raised)."""


class AuthenticationFailed(ConnectError):
    """The host rejected every authentication method."""


class NoAuthenticationMethods(ConnectError):
    """Neither a password nor a usable key (nor Kerberos) is configured."""

    def __init__(self) -> None:
        super().__init__("There are no available authentication methods")


class HostKeyVerificationFailed(ConnectError):
    """The host key is not trusted (changed key, or not signed by a trusted CA)."""


# -- identity key cache -------------------------------------------------------


class KeyEncrypted(Exception):
    """The identity key is encrypted and no passphrase was given."""


@dataclass(frozen=True)
class Identity:
    """The proxy's private key, with its certificate when there is one."""

    path: str
    key: asyncssh.SSHKey
    certificate: asyncssh.SSHCertificate | None

    def keypairs(self) -> Sequence[asyncssh.SSHKeyPair]:
        """Fresh key pair objects (asyncssh mutates them while authenticating)."""
        if self.certificate is None:
            return asyncssh.load_keypairs([self.key])
        return asyncssh.load_keypairs([(self.key, self.certificate)])

    def describe(self) -> str:
        text = f"{self.path} ({self.key.get_algorithm()} {self.key.get_fingerprint()})"
        if self.certificate is not None:
            text += " with certificate"
        return text


_identities: dict[tuple[Any, ...], asyncio.Future[Identity]] = {}


def _stat_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _read_identity(path: str, passphrase: str | None) -> Identity:
    try:
        key = asyncssh.read_private_key(path)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
        if "passphrase" not in str(exc).lower():
            raise
        if not passphrase:
            raise KeyEncrypted(
                f"the key {path} is encrypted and no key_passphrase was given"
            ) from None
        key = asyncssh.read_private_key(path, passphrase)
    certificate = None
    cert_path = f"{path}-cert.pub"
    if os.path.exists(cert_path):
        certificate = asyncssh.read_certificate(cert_path)
    return Identity(path, key, certificate)


async def load_identity(path: str, passphrase: str | None = None) -> Identity:
    """The identity key (cached per path, file version and passphrase).

    Raises FileNotFoundError, :class:`KeyEncrypted`, or asyncssh.KeyImportError /
    KeyEncryptionError (wrong passphrase).
    """
    stat = _stat_key(path)
    if stat is None:
        raise FileNotFoundError(f"SSH identity key file {path} does not exist")
    cert_stat = _stat_key(f"{path}-cert.pub")
    digest = hashlib.sha256(passphrase.encode()).hexdigest() if passphrase else None
    cache_key = (path, stat, cert_stat, digest)
    future = _identities.get(cache_key)
    if future is None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        _identities[cache_key] = future
        # Forget older versions of the file.
        for other in [k for k in _identities if k[0] == path and k[1:3] != cache_key[1:3]]:
            if _identities[other].done():
                del _identities[other]
        try:
            identity = await asyncio.to_thread(_read_identity, path, passphrase)
        except BaseException as exc:
            del _identities[cache_key]
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning
            raise
        future.set_result(identity)
        return identity
    return await asyncio.shield(future)


def clear_identity_cache() -> None:
    """Forget the loaded identity keys (tests)."""
    _identities.clear()


# -- the connection -----------------------------------------------------------


@dataclass
class _AuthState:
    """What happened during authentication (for the error message)."""

    identity: Identity | None = None
    password_tried: bool = False
    key_tried: bool = False
    host_key_rejected: str | None = None
    server_methods: list[str] = field(default_factory=list)


class _Client(asyncssh.SSHClient):
    """Per-connection callbacks: host-key decisions and key/password bookkeeping."""

    def __init__(self, known_hosts: KnownHosts, state: _AuthState, pinned: bool = False) -> None:
        self._known_hosts = known_hosts
        self._state = state
        self._pinned = pinned
        self._key_given = False

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        if not self._pinned and self._known_hosts.accept_new(host, port, key):
            return True
        self._state.host_key_rejected = f"{key.get_algorithm()} {key.get_fingerprint()}"
        return False

    def validate_host_ca_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self._state.host_key_rejected = (
            f"a host certificate signed by {key.get_algorithm()} {key.get_fingerprint()}"
        )
        return False

    def public_key_auth_requested(self) -> Any:
        identity = self._state.identity
        if identity is None or self._key_given:
            return None
        self._key_given = True
        self._state.key_tried = True
        return identity.keypairs()


@dataclass
class _Plan:
    """The authentication methods to try, in order, and why others were left out."""

    methods: list[str]
    skipped: dict[str, str]
    identity: Identity | None


async def _plan_auth(options: ScriptOptions) -> _Plan:
    methods: list[str] = []
    skipped: dict[str, str] = {}
    if options.ssh_password:
        methods.append("password")
    identity = None
    try:
        identity = await load_identity(options.ssh_identity_key_file, options.key_passphrase)
    except KeyEncrypted as exc:
        skipped["publickey"] = str(exc)
    except FileNotFoundError as exc:
        skipped["publickey"] = str(exc)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, OSError, ValueError) as exc:
        skipped["publickey"] = f"cannot load the key {options.ssh_identity_key_file}: {exc}"
    else:
        methods.append("publickey")
    if options.kerberos_auth:
        methods.append("gssapi-with-mic")
    return _Plan(methods, skipped, identity)


def _asyncssh_methods(methods: list[str]) -> list[str]:
    result: list[str] = []
    for method in methods:
        result.append(method)
        if method == "password":
            result.append("keyboard-interactive")
    return result


def base_options(known_hosts: KnownHosts, kerberos: bool) -> asyncssh.SSHClientConnectionOptions:
    """The options shared by every connection using ``known_hosts`` (built once, kept there)."""
    cache = known_hosts.connection_options
    options = cache.get(kerberos)
    if options is None:
        options = asyncssh.SSHClientConnectionOptions(
            known_hosts=known_hosts.trusted,
            client_keys=None,
            agent_path=None,
            x509_trusted_certs=None,
            x509_trusted_cert_paths=[],
            keepalive_interval=KEEPALIVE_INTERVAL,
            keepalive_count_max=KEEPALIVE_COUNT_MAX,
            gss_host=() if kerberos else None,
            gss_kex=False,
            gss_auth=kerberos,
            host_based_auth=False,
            request_pty=False,
        )
        cache[kerberos] = options
    return options


def _bounded(slots: asyncio.Semaphore | None) -> contextlib.AbstractAsyncContextManager[Any]:
    """One of ``slots`` while in the block (no bound without)."""
    return slots if slots is not None else contextlib.nullcontext()


class StartSlot:
    """A job's place among those allowed to hand-shake and launch at the same time.

    :func:`connect` takes it once the TCP connection is up (so a dead host never holds one
    while its connect times out) and gives it back before sleeping between retries; the
    runner gives it back once its script runs.
    """

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots = slots
        self.held = False

    async def take(self) -> None:
        if not self.held:
            await self._slots.acquire()
            self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self._slots.release()


async def _open_socket(host: str, port: int) -> socket.socket:
    """A connected TCP socket to the first address of ``host`` that answers."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, type_, proto, _, address in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise last or OSError(f"{host} has no address")


_RETRYABLE = (OSError, TimeoutError, asyncio.TimeoutError, asyncssh.ConnectionLost)


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, asyncssh.PermissionDenied | asyncssh.HostKeyNotVerifiable):
        return False
    if isinstance(exc, _RETRYABLE):
        return True
    # Dropped by the server during the handshake (e.g. sshd MaxStartups), or "too many
    # connections" disconnects.
    return isinstance(exc, asyncssh.DisconnectError) and exc.code in (
        asyncssh.DISC_CONNECTION_LOST,
        asyncssh.DISC_TOO_MANY_CONNECTIONS,
        asyncssh.DISC_BY_APPLICATION,
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "connection timed out"
    if isinstance(exc, OSError) and exc.errno:
        return f"{os.strerror(exc.errno)} ({exc})"
    return str(exc) or type(exc).__name__


async def connect(
    options: ScriptOptions,
    known_hosts: KnownHosts,
    *,
    logger: logging.Logger | logging.LoggerAdapter[Any] = logger,
    sleep: Callable[[float], Any] = asyncio.sleep,
    slot: StartSlot | None = None,
    handshakes: asyncio.Semaphore | None = None,
) -> asyncssh.SSHClientConnection:
    """Connect and authenticate to ``options.hostname`` (see the module doc).

    With ``slot``, the SSH handshake waits for it once the TCP connection is up; it is still
    held when the connection is returned. With ``handshakes`` (the jobs of a core share one:
    :meth:`~.state.RexState.handshake_slots`), the TCP connect and then the SSH handshake each
    hold one of its slots; without, the attempt is not bounded (a lone connection: the web
    console's session).
    """
    plan = await _plan_auth(options)
    if not plan.methods:
        for method, reason in plan.skipped.items():
            logger.info("Authentication method %s is not available: %s", method, reason)
        raise NoAuthenticationMethods()
    host, port = options.hostname, options.ssh_port
    if options.first_execution:
        removed = await known_hosts.prune(host, port)
        if removed:
            logger.info("First execution on %s: removed %d stale host key(s)", host, removed)
    base = base_options(known_hosts, options.kerberos_auth)
    pinned = (
        asyncssh.import_public_key(options.host_public_key) if options.host_public_key else None
    )
    pinned_algs = [alg.decode() for alg in pinned.sig_algorithms] if pinned else []
    attempts = max(1, options.connect_attempts)
    last: BaseException | None = None
    for attempt in range(1, attempts + 1):
        state = _AuthState(identity=plan.identity)
        password = options.ssh_password

        def give_password(state: _AuthState = state, password: str | None = password) -> Any:
            state.password_tried = True
            return password

        kwargs: dict[str, Any] = dict(
            username=options.ssh_user,
            preferred_auth=_asyncssh_methods(plan.methods),
            client_factory=lambda state=state: _Client(known_hosts, state, pinned is not None),
            password=give_password if password else None,
            password_auth=bool(password),
            kbdint_auth=bool(password),
            public_key_auth=plan.identity is not None,
        )
        if pinned is not None:
            kwargs.update(known_hosts=([pinned], [], []), server_host_key_algs=pinned_algs)
        else:
            kwargs.update(known_hosts.connect_options(host, port))
        sock: socket.socket | None = None
        try:
            async with _bounded(handshakes):
                sock = await asyncio.wait_for(_open_socket(host, port), options.connect_timeout)
            if slot is not None:
                await slot.take()
            async with _bounded(handshakes):
                handshake = asyncssh.connect(host, port, sock=sock, options=base, **kwargs)
                sock = None  # asyncssh owns it now
                return await asyncio.wait_for(handshake, options.connect_timeout)
        except asyncssh.HostKeyNotVerifiable:
            detail = f": presented {state.host_key_rejected}" if state.host_key_rejected else ""
            message = f"Host key verification failed for {host_token(host, port)}{detail}"
            if pinned is not None:
                message += (
                    f" (the job pins the host key {pinned.get_algorithm()} "
                    f"{pinned.get_fingerprint()})"
                )
            elif known_hosts.strict:
                message += f" (not trusted by {known_hosts.ca_file})"
            else:
                message += (
                    f" (it does not match the key known in {known_hosts.path}; "
                    "if the host was reinstalled, run the job as a first execution)"
                )
            raise HostKeyVerificationFailed(message) from None
        except asyncssh.PermissionDenied as exc:
            raise AuthenticationFailed(_auth_failure_message(plan, state, exc)) from None
        except Exception as exc:
            if not _is_retryable(exc):
                raise
            last = exc
            logger.info(
                "Connecting to %s:%s failed (attempt %d of %d): %s",
                host,
                port,
                attempt,
                attempts,
                _describe(exc),
            )
            if slot is not None:
                slot.give_back()
            if attempt < attempts and options.connect_retry_interval > 0:
                await sleep(options.connect_retry_interval)
        finally:
            if sock is not None:
                sock.close()
    assert last is not None
    tries = f" ({attempts} attempts)" if attempts > 1 else ""
    raise HostUnreachable(
        f"Could not establish connection to remote host {host}:{port} as {options.ssh_user}"
        f"{tries}: {_describe(last)}"
    ) from last


def _auth_failure_message(plan: _Plan, state: _AuthState, exc: BaseException) -> str:
    lines = [
        "Could not establish connection to remote host using any available authentication "
        f"method, tried {', '.join(plan.methods)}",
        "",
    ]
    for method in plan.methods:
        if method == "password":
            reason = (
                "the server rejected the password"
                if state.password_tried
                else "the server does not accept password authentication"
            )
        elif method == "publickey":
            identity = plan.identity
            described = identity.describe() if identity is not None else "the key"
            reason = (
                f"the server rejected the key {described}"
                if state.key_tried
                else "the server does not accept public key authentication"
            )
        else:
            reason = str(exc)
        lines.append(f"Authentication method '{method}' failed with:")
        lines.append(reason)
    for method, reason in plan.skipped.items():
        lines.append(f"Authentication method '{method}' was not tried: {reason}")
    return "\n".join(lines)
