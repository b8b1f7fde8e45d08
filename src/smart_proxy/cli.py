"""``smart-proxy``: the Smart Proxy service (§2).

Reads ``<config dir>/settings.yml``, sets up logging (plus the ``/logs`` buffer), initializes the
plugins, then serves HTTP on ``http_port`` (when set) and HTTPS on ``https_port`` (when the
certificate, key and CA are set) on every ``bind_host``, and tells systemd it is ready once every
listener accepts connections. SIGTERM/SIGINT stop it gracefully (exit 0); SIGUSR1 reopens the
log file. A startup problem prints one line, "Errors detected on startup, see log for details.
Exiting: ...", and exits with 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from smart_proxy import systemd
from smart_proxy.host import Host, SessionFilter
from smart_proxy.log import install_sigusr1, setup_logging
from smart_proxy.log_buffer import LogBuffer
from smart_proxy.root import VERSION
from smart_proxy.server import Listener, serve
from smart_proxy.settings import SETTINGS_FILE, ProxySettings, load_proxy_settings
from smart_proxy.tls import server_context

log = logging.getLogger("smart_proxy.cli")

PROG = "smart-proxy"
# Where ``settings.yml`` is looked for without ``--config-dir``: the packaged location, then
# the source checkout's development layouts (relative to the working directory).
CONFIG_DIRS: tuple[str, ...] = ("/etc/foreman-proxy", "./config")
STARTUP_ERROR = "Errors detected on startup, see log for details. Exiting: {}"
BOTH_DISABLED = "Both http and https are disabled, unable to start."


class StartupError(Exception):
    """The service cannot start; the message is one line."""


def default_config_dir(candidates: tuple[str, ...] = CONFIG_DIRS) -> Path:
    """The first candidate holding a ``settings.yml``, else the first existing directory,
    else the last candidate."""
    paths = [Path(candidate) for candidate in candidates]
    for path in paths:
        if (path / SETTINGS_FILE).is_file():
            return path
    for path in paths:
        if path.is_dir():
            return path
    return paths[-1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description="Foreman Smart Proxy")
    parser.add_argument(
        "-c",
        "--config-dir",
        help=f"directory with settings.yml (default: the first of {', '.join(CONFIG_DIRS)} "
        "that has one)",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {VERSION}")
    return parser.parse_args(argv)


def _bind_host(host: str) -> str:
    return "*" if host.strip() in ("*", "") else host.strip()


def build_listeners(settings: ProxySettings) -> list[Listener]:
    """One listener per enabled protocol and ``bind_host`` (``*``: every interface)."""
    listeners: list[Listener] = []
    if settings.http_enabled:
        assert settings.http_port is not None
        for host in settings.bind_host:
            listeners.append(Listener(_bind_host(host), settings.http_port, name="http"))
    if settings.https_enabled:
        context = https_context(settings)
        for host in settings.bind_host:
            listeners.append(Listener(_bind_host(host), settings.https_port, context, name="https"))
    if not listeners:
        raise StartupError(BOTH_DISABLED)
    return listeners


def https_context(settings: ProxySettings) -> ssl.SSLContext:
    assert settings.ssl_certificate and settings.ssl_private_key and settings.ssl_ca_file
    return server_context(
        settings.ssl_certificate,
        settings.ssl_private_key,
        settings.ssl_ca_file,
        disabled_ciphers=settings.ssl_disabled_ciphers,
        disabled_versions=settings.tls_disabled_versions,
    )


def setup(settings: ProxySettings) -> LogBuffer:
    """Logging to ``log_file`` plus the in-memory buffer; returns the buffer."""
    handler = setup_logging(
        settings.log_file,
        settings.log_level,
        file_pattern=settings.file_logging_pattern,
        system_pattern=settings.system_logging_pattern,
        rolling_size=settings.file_rolling_size,
        rolling_keep=settings.file_rolling_keep,
        rolling_age=settings.file_rolling_age,
        name="foreman-proxy",
    )
    handler.addFilter(SessionFilter())
    buffer = LogBuffer(settings.log_buffer, settings.log_buffer_errors, settings.log_level)
    buffer.addFilter(SessionFilter())
    logging.getLogger().addHandler(buffer)
    return buffer


async def run(
    settings: ProxySettings,
    log_buffer: LogBuffer | None = None,
    *,
    shutdown: asyncio.Event | None = None,
) -> None:
    """Initialize the plugins and serve until ``shutdown`` is set or SIGTERM/SIGINT arrives."""
    listeners = build_listeners(settings)  # fails fast on TLS material
    loop = asyncio.get_running_loop()
    stop = shutdown or asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    install_sigusr1(loop)
    host = Host(settings, log_buffer=log_buffer)
    try:
        if not await _until_stopped(host.initialize(), stop):
            return  # SIGTERM/SIGINT while the plugins were starting

        def ready() -> None:
            log.info(
                "Smart proxy %s started: %d socket(s) (%s)",
                VERSION,
                len(listeners),
                ", ".join(f"{item.name} {item.url}" for item in listeners),
            )
            systemd.notify("READY=1")

        await serve(
            host.dispatch_app(),
            listeners,
            on_ready=ready,
            shutdown=stop,
            lifespan="off",
            server_header=f"foreman-proxy/{VERSION}",
            header_timeout=settings.http_header_timeout,
            body_timeout=settings.http_body_timeout,
        )
    finally:
        systemd.notify("STOPPING=1")
        await host.shutdown()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
        log.info("Smart proxy stopped")


async def _until_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``work`` unless ``stop`` is set first (then cancel it); True when it completed."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False
    task.result()
    return not stop.is_set()


def _runner() -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run
    return uvloop.run


def _fail(exc: BaseException) -> int:
    """Log the startup error (when logging is set up) and print the one-line summary."""
    text = str(exc).strip()
    message = text.splitlines()[0] if text else type(exc).__name__
    if logging.getLogger().handlers:  # never let logging's last resort print to stderr
        if isinstance(exc, StartupError):
            log.error("Error during startup, terminating: %s", message)
        else:
            log.error("Error during startup, terminating", exc_info=exc)
    print(STARTUP_ERROR.format(message), file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config_dir = Path(args.config_dir) if args.config_dir else default_config_dir()
        settings = load_proxy_settings(config_dir)
        buffer = setup(settings)
    except Exception as exc:  # noqa: BLE001 - any startup error: one line, exit status 1
        return _fail(exc)
    try:
        _runner()(run(settings, buffer))
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # noqa: BLE001 - as above: the command's last word on any error
        return _fail(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
