"""The core: one engine world plus everything the task API needs around it.

A :class:`Core` owns the world, the runner dispatcher, the registries plugins fill, the
one-time passwords and the client that calls Foreman back. The standalone service
(``smart-proxy-dynflow-core``) and the Smart Proxy's dynflow plugin each build one; the HTTP
layer (:mod:`smart_proxy_dynflow.api`) only talks to it through its public methods.

The core is the composition root of the plugin: nothing below it imports it. Its world is a
:class:`~.context.CoreWorld` carrying it, through which the actions the engine creates reach
it as a :class:`~.context.CoreContext` (:func:`~.context.context_of`).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from dynflow.errors import EventRejected

from .context import CoreConfig, CoreWorld, Extensions
from .dispatcher import Dispatcher
from .foreman import ForemanClient
from .launcher import SingleLauncher
from .otp import OtpManager
from .registry import ActionRegistry, LauncherRegistry
from .request_id import RequestIdMiddleware
from .runner import SuspendedAction, Update
from .secret_box import SecretBox

log = logging.getLogger("smart_proxy_dynflow")

__all__ = ["Core", "CoreConfig", "Service"]


class Service(Protocol):
    """Background work a plugin gives the core (:attr:`Core.services`)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Core:
    def __init__(
        self,
        config: CoreConfig | None = None,
        *,
        actions: ActionRegistry | None = None,
        launchers: LauncherRegistry | None = None,
    ) -> None:
        self.config = config or CoreConfig()
        self.actions = actions or ActionRegistry()
        self.launchers = launchers or LauncherRegistry()
        if "single" not in self.launchers:
            self.launchers.register("single", SingleLauncher)
        self.otp = OtpManager()
        # State plugins keep for their actions (e.g. the SSH plugin's settings and host keys),
        # one object per class.
        self.extensions = Extensions()
        # Seals the passwords of the inputs before they are stored (given by the SSH plugin).
        self.secret_box: SecretBox | None = None
        # Background work of plugins (e.g. the SSH plugin's pull jobs and MQTT dispatcher):
        # objects with ``async start()`` (after the world started, so recovery has run) and
        # ``async stop()`` (after the world stopped), in order and in reverse order.
        self.services: list[Service] = []
        self.foreman = ForemanClient(
            self.config.foreman_url,
            cafile=self.config.foreman_ssl_ca,
            certfile=self.config.foreman_ssl_cert,
            keyfile=self.config.foreman_ssl_key,
        )
        age = self.config.execution_plan_cleaner_age
        options: dict[str, Any] = {
            "pool_size": self.config.pool_size,
            "stopped_max_age": age,
            # The cleaner wakes every `age` seconds, as the original's did (capped for long ages).
            "cleaner_interval": self.config.cleaner_interval or min(max(age, 1.0), 300.0),
            "middleware": [RequestIdMiddleware()],
            **self.config.world_options,
        }
        self.world = CoreWorld(self, self.config.db_url, **options)
        self.dispatcher = Dispatcher(
            self._deliver, refresh_interval=self.config.runner_refresh_interval
        )
        self._started = False

    # ---- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.world.start()
        self._started = True
        for service in self.services:
            try:
                await service.start()
            except Exception:  # a plugin's service must not stop the core
                log.exception("service %r failed to start", service)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self.dispatcher.stop()
        await self.world.stop()
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception:
                log.exception("service %r failed to stop", service)
        await self.foreman.aclose()

    async def __aenter__(self) -> Core:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._started

    async def _deliver(self, target: SuspendedAction, update: Update) -> bool:
        """Hand ``update`` to its step; True once the step stored it, False when the step
        does not take events (the plan is not running here, or the step finished)."""
        try:
            await self.world.event(target.execution_plan_id, target.step_id, update.to_event())
        except EventRejected as exc:
            log.debug("update for %s not delivered: %s", target, exc)
            return False
        return True

    def operations(self) -> list[str]:
        return self.launchers.operations()
