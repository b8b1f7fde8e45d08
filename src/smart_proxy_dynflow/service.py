"""``smart-proxy-dynflow-core``: the standalone core service (§8.3).

Reads the settings (``settings.yml`` + ``settings.d/``), sets up logging, optionally
daemonizes, then in one event loop: starts the core (engine world, recovery, dispatcher),
loads the plugins, serves the task API over HTTP or HTTPS, and tells systemd it is ready.
SIGTERM/SIGINT stop it gracefully; SIGUSR1 reopens the log file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
from typing import Any

from smart_proxy import systemd
from smart_proxy.log import RequestLogMiddleware, install_sigusr1, setup_logging
from smart_proxy.server import Listener, ServerStartupError, serve
from smart_proxy.tls import TLSConfigError, certificate_serial, server_context

from .api import create_app
from .auth import SerialAuthorizer
from .console import ConsoleAccess, core_console_check
from .core import Core, CoreConfig
from .plugin import load_plugins
from .settings import CoreSettings, SettingsError, load_settings

log = logging.getLogger("smart_proxy_dynflow.service")

PROG = "smart-proxy-dynflow-core"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description="Smart Proxy Dynflow core service")
    parser.add_argument("-c", "--config-dir", help="directory with settings.yml and settings.d/")
    parser.add_argument(
        "-1", "--one-config", action="store_true", help="load only the first settings directory"
    )
    parser.add_argument(
        "-d",
        "--daemonize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run in the background (overrides the setting)",
    )
    parser.add_argument("-p", "--pid-file", help="pid file when daemonized (overrides the setting)")
    return parser.parse_args(argv)


def core_config(settings: CoreSettings) -> CoreConfig:
    cert = settings.foreman_client_cert()
    return CoreConfig(
        db_url=settings.db_url,
        pool_size=settings.pool_size,
        execution_plan_cleaner_age=float(settings.execution_plan_cleaner_age),
        runner_refresh_interval=float(settings.runner_refresh_interval),
        foreman_url=settings.foreman_url,
        foreman_ssl_ca=settings.foreman_ca(),
        foreman_ssl_cert=cert[0] if cert else None,
        foreman_ssl_key=cert[1] if cert else None,
        callback_retry_interval=float(settings.callback_retry_interval),
        callback_retry_max_interval=float(settings.callback_retry_max_interval),
        callback_retry_window=float(settings.callback_retry_window),
    )


def build_authorizer(settings: CoreSettings) -> Any:
    """Over HTTPS only the proxy's own client certificate is accepted (§2.2)."""
    if not settings.use_https:
        return None
    path = settings.foreman_cert_file()
    if not path:
        raise TLSConfigError(
            "use_https needs foreman_ssl_cert or ssl_certificate: the client certificate "
            "the Smart Proxy connects with"
        )
    return SerialAuthorizer(certificate_serial(path))


def console_access(settings: CoreSettings) -> ConsoleAccess:
    """The console: over HTTPS with ``console_auth`` the proxy's certificate (as the task API,
    and as the original's console; the relay comes with it) or a certificate whose CN is in
    ``console_trusted_hosts``; over HTTP only with ``console_http``."""
    check = None
    if settings.use_https and settings.console_auth:
        authorizer = build_authorizer(settings)
        check = core_console_check(authorizer.expected_serial, settings.console_trusted_hosts)
    elif settings.console_trusted_hosts is not None:
        log.warning(
            "console_trusted_hosts has no effect %s",
            "with console_auth: false" if settings.use_https else "without use_https",
        )
    return ConsoleAccess(
        console_auth=settings.console_auth,
        console_http=settings.console_http,
        check_client=check,
        settings_file="the core's settings.yml",
    )


def https_context(settings: CoreSettings) -> ssl.SSLContext:
    """The HTTPS listener's context. With ``use_https`` the settings name all three files
    (checked when they are loaded); ValueError if they do not."""
    cert, key, ca = settings.ssl_certificate, settings.ssl_private_key, settings.ssl_ca_file
    if not cert or not key or not ca:
        raise ValueError("use_https requires ssl_ca_file, ssl_certificate, ssl_private_key")
    return server_context(
        cert,
        key,
        ca,
        disabled_ciphers=settings.ssl_disabled_ciphers,
        disabled_versions=settings.tls_disabled_versions,
    )


async def run(settings: CoreSettings, *, shutdown: asyncio.Event | None = None) -> None:
    """Run the service until ``shutdown`` is set (or SIGTERM/SIGINT arrives)."""
    ssl_context = None
    if settings.use_https:
        ssl_context = https_context(settings)
    authorize = build_authorizer(settings)
    core = Core(core_config(settings))
    plugins = load_plugins(core, settings.plugins)
    app = RequestLogMiddleware(
        create_app(
            core,
            authorize=authorize,
            max_body_size=settings.max_body_size,
            console=console_access(settings),
        )
    )
    loop = asyncio.get_running_loop()
    stop = shutdown or asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    install_sigusr1(loop)
    await core.start()
    try:
        listener = Listener(settings.listen, settings.port, ssl_context, name="core")

        def ready() -> None:
            scheme = "https" if ssl_context else "http"
            log.info(
                "%s listening on %s://%s:%s (plugins: %s)",
                PROG,
                scheme,
                settings.listen,
                listener.bound_port,
                ", ".join(plugins.loaded) or "none",
            )
            systemd.notify("READY=1")

        await serve(
            app,
            [listener],
            on_ready=ready,
            shutdown=stop,
            header_timeout=settings.http_header_timeout,
            body_timeout=settings.http_body_timeout,
        )
    finally:
        systemd.notify("STOPPING=1")
        await core.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def daemonize(pid_file: str) -> None:
    """Detach from the terminal (double fork) and write ``pid_file``."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    with open(os.devnull, "rb") as devnull_in, open(os.devnull, "ab") as devnull_out:
        os.dup2(devnull_in.fileno(), 0)
        os.dup2(devnull_out.fileno(), 1)
        os.dup2(devnull_out.fileno(), 2)
    with open(pid_file, "w") as f:
        f.write(f"{os.getpid()}\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(args.config_dir, args.one_config)
        if args.daemonize is not None:
            settings.daemonize = args.daemonize
        if args.pid_file:
            settings.pid_file = args.pid_file
        setup_logging(
            settings.log_file,
            settings.log_level,
            file_pattern=settings.file_logging_pattern,
            system_pattern=settings.system_logging_pattern,
            rolling_size=int(settings.file_rolling_size),
            rolling_keep=int(settings.file_rolling_keep),
            rolling_age=settings.file_rolling_age,
            name=PROG,
        )
        if settings.use_https:
            # Fail fast, before daemonizing, on unreadable certificates.
            build_authorizer(settings)
            https_context(settings)
    except (SettingsError, TLSConfigError, ValueError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if settings.daemonize:
        daemonize(os.path.abspath(settings.pid_file))
    try:
        runner: Any = asyncio.run
        try:
            import uvloop  # noqa: PLC0415 - an optional dependency, used when installed

            runner = uvloop.run
        except ImportError:
            pass
        runner(run(settings))
    except (OSError, ServerStartupError) as exc:
        log.error("%s", exc)
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
