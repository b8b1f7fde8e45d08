"""The state of the ``script`` plugin in a core: :class:`RexState` (§2, §4).

One per core, registered by the core plugin (:func:`~.plugin.register`) in the core's typed
extensions and found by the actions through their world (:func:`state_of`,
:func:`require_state`). It holds the plugin's settings, the host-key store shared by every job,
the bounds on starting jobs and on SSH handshakes, the secret box that opens the jobs'
passwords and, in the pull modes, the job index and the MQTT dispatcher. It is a service of the
core: :meth:`RexState.start` (after the world started) rebuilds the job index and starts the
dispatcher, :meth:`RexState.stop` stops it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dynflow import World
from smart_proxy_dynflow.context import context_of
from smart_proxy_dynflow.secret_box import SecretBox

from . import settings as rex_settings
from .jobs import JobIndex
from .mqtt import MqttConfig, MqttDispatcher
from .options import ScriptOptions

if TYPE_CHECKING:
    from .known_hosts import KnownHosts
    from .pull import PullScriptAction

log = logging.getLogger("smart_proxy_remote_execution_ssh")

MAX_CONCURRENT_HANDSHAKES = 512
"""How many connection attempts (TCP connect, key exchange, authentication) the jobs of a core
may have under way at once; a bound on sockets and memory when thousands of jobs start
together. Large, because an attempt to a dead host holds its slot until its timeout."""


class LoopSemaphore:
    """A semaphore of ``size`` for the running event loop, made again on another loop (a core
    stopped and started again on a new loop, as tests do, gets a fresh one)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._loop is not loop:
            self._semaphore = asyncio.Semaphore(self.size)
            self._loop = loop
        return self._semaphore


class RexState:
    """What the actions of one core need: settings, the shared host-key store, the start and
    handshake bounds, the secret box, and in pull modes the job index and the MQTT dispatcher.

    ``pull_labels`` and ``pull_action`` say which running plans hold pull jobs (the job index
    is rebuilt from them at :meth:`start`)."""

    def __init__(
        self,
        settings: dict[str, Any],
        world: World,
        *,
        tls_files: rex_settings.TlsFiles | None = None,
        box: SecretBox | None = None,
        pull_labels: Sequence[str] = (),
        pull_action: type[PullScriptAction] | None = None,
    ) -> None:
        # asyncssh (~0.3 s to import) is loaded when a core that runs jobs is built, not when
        # the plugin is: a Smart Proxy relaying to an external core never needs it.
        from .known_hosts import KnownHosts  # noqa: PLC0415 - defers asyncssh (see above)

        self.settings = settings
        self.world = world
        self.known_hosts: KnownHosts = KnownHosts.from_settings(settings)
        self.max_starting_jobs = int(settings.get("max_starting_jobs") or 64)
        self._starts = LoopSemaphore(self.max_starting_jobs)
        self._handshakes = LoopSemaphore(MAX_CONCURRENT_HANDSHAKES)
        self.jobs = JobIndex()
        # Opens the sealed passwords of a job's input (smart_proxy_dynflow.secret_box).
        self.box = box
        self.pull_labels = tuple(pull_labels)
        self.pull_action = pull_action
        self.mqtt: MqttDispatcher | None = None
        if settings.get("mode") == "pull-mqtt":
            config = MqttConfig.from_settings(settings, tls_files or rex_settings.TlsFiles())
            self.mqtt = MqttDispatcher(config)

    @property
    def mode(self) -> str:
        return str(self.settings.get("mode") or "ssh")

    @property
    def pull(self) -> bool:
        return self.settings.get("mode") in rex_settings.PULL_MODES

    async def start(self) -> None:
        if self.pull and self.pull_action is not None:
            added = await self.jobs.rebuild(self.world, self.pull_labels, self.pull_action)
            if added:
                log.info("%d pull job(s) are waiting for their hosts again", added)
        if self.mqtt is not None:
            self.mqtt.start()

    async def stop(self) -> None:
        if self.mqtt is not None:
            await self.mqtt.stop()

    def start_slots(self) -> asyncio.Semaphore:
        """Bounds the jobs that are connecting and launching at the same time.

        A batch of thousands of hosts does not open thousands of key exchanges at once: the
        jobs start ``max_starting_jobs`` at a time, and a job gives its slot back as soon as
        its script runs, so long scripts never hold one. Contending handshakes make every
        start slower; the first results arrive sooner and the batch ends sooner this way.
        """
        return self._starts.get()

    def handshake_slots(self) -> asyncio.Semaphore:
        """Bounds the connection attempts under way at once (:data:`MAX_CONCURRENT_HANDSHAKES`;
        an attempt holds a slot for its TCP connect and, again, for its SSH handshake)."""
        return self._handshakes.get()

    def options(self, input: dict[str, Any]) -> ScriptOptions:
        return ScriptOptions.from_input(input, self.settings, box=self.box)


def state_of(world: World | None) -> RexState | None:
    """The plugin's state in the core running ``world``; None for a bare world (engine tests)
    or a core the plugin is not registered in."""
    try:
        context = context_of(world)
    except RuntimeError:
        return None
    return context.extensions.get(RexState)


def require_state(world: World | None) -> RexState:
    """The plugin's state in the core running ``world``; raises ``RuntimeError`` for a bare
    world and ``LookupError`` for a core the plugin is not registered in."""
    return context_of(world).extensions.require(RexState)
