"""The core: one engine world plus everything the task API needs around it.

A :class:`Core` owns the world, the runner dispatcher, the registries plugins fill, the
one-time passwords and the client that calls Foreman back. The standalone service
(``smart-proxy-dynflow-core``) and the Smart Proxy's dynflow plugin each build one; the HTTP
layer (:mod:`smart_proxy_dynflow.api`) only talks to it through its public methods.

Actions reach their core with :func:`core_of` (by world), since the engine creates them.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

from dynflow import World
from dynflow.errors import EventRejected

from .callback import ForemanClient
from .dispatcher import Dispatcher
from .otp import OtpManager
from .registry import ActionRegistry, LauncherRegistry
from .request_id import RequestIdMiddleware
from .runner import SuspendedAction, Update

log = logging.getLogger("smart_proxy_dynflow")

_cores: weakref.WeakValueDictionary[str, Core] = weakref.WeakValueDictionary()


def core_of(world: Any) -> Core:
    """The core that owns ``world`` (raises if the world does not belong to a core)."""
    try:
        return _cores[world.id]
    except (KeyError, AttributeError):
        raise RuntimeError("this world is not run by a smart_proxy_dynflow core") from None


@dataclass
class CoreConfig:
    """What the core needs, whatever settings file it came from."""

    db_url: str = "sqlite+aiosqlite:///var/dynflow.sqlite"
    pool_size: int = 5
    execution_plan_cleaner_age: float = 1800.0
    cleaner_interval: float | None = None
    runner_refresh_interval: float = 1.0
    foreman_url: str = "https://127.0.0.1:3000"
    foreman_ssl_ca: str | None = None
    foreman_ssl_cert: str | None = None
    foreman_ssl_key: str | None = None
    callback_retry_interval: float = 2.0
    callback_retry_max_interval: float = 300.0
    callback_retry_window: float = 600.0
    """Seconds from the first attempt during which a callback that could not be delivered
    (Foreman unreachable, 5xx, 408, 429) is retried; then the plan pauses and Foreman's status
    poll (every 600 s) closes the job from its result."""
    world_options: dict[str, Any] = field(default_factory=dict)


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
            from .launcher import SingleLauncher  # launchers build on the core

            self.launchers.register("single", SingleLauncher)
        self.otp = OtpManager()
        # State plugins keep for their actions (e.g. the SSH plugin's settings and host keys).
        self.extensions: dict[str, Any] = {}
        # Background work of plugins (e.g. the SSH plugin's pull jobs and MQTT dispatcher):
        # objects with ``async start()`` (after the world started, so recovery has run) and
        # ``async stop()`` (after the world stopped), in order and in reverse order.
        self.services: list[Any] = []
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
        self.world = World(self.config.db_url, **options)
        self.dispatcher = Dispatcher(
            self._deliver, refresh_interval=self.config.runner_refresh_interval
        )
        self._started = False

    # ---- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        # Registered before the world starts: recovery may re-run runner actions at once.
        _cores[self.world.id] = self
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
