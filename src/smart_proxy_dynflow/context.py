"""What the actions of a core reach of it, without importing it.

The :class:`~smart_proxy_dynflow.core.Core` is the composition root of the plugin: it builds
the world, the dispatcher, the registries and the Foreman client, and the plugins register
into it. The modules below it (the callbacks, the runner actions, the launchers, and the
plugins' actions) never import the core. They see it as a :class:`CoreContext`, the protocol
here (the ``Core`` is one), and find it through the world that runs them: the core builds a
:class:`CoreWorld`, an engine world carrying a typed reference to it, set once when it is
built. :func:`context_of` gives it (``RuntimeError`` for a world no core built: engine tests
plan actions on bare worlds).

Also here: :class:`CoreConfig` (what a core is made with, whatever settings file it came from)
and :class:`Extensions`, the typed registry of the state plugins keep in a core for their
actions (one object per class).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

from dynflow import World

from .dispatcher import Dispatcher
from .foreman import ForemanClient
from .registry import ActionRegistry, LauncherRegistry
from .secret_box import SecretBox

T = TypeVar("T")


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


class Extensions:
    """The state plugins keep in a core for their actions, one object per class.

    ``core.extensions.register(RexState, state)`` at registration, then
    ``context_of(world).extensions.require(RexState)`` in an action: typed both ways."""

    def __init__(self) -> None:
        self._by_class: dict[type[Any], Any] = {}

    def register(self, kind: type[T], value: T) -> T:
        """Make ``value`` the core's ``kind`` (replacing an earlier one); returns it."""
        if not isinstance(value, kind):
            raise TypeError(f"{value!r} is not a {kind.__name__}")
        self._by_class[kind] = value
        return value

    def get(self, kind: type[T]) -> T | None:
        """The core's ``kind``, None when no plugin registered one."""
        value: T | None = self._by_class.get(kind)
        return value

    def require(self, kind: type[T]) -> T:
        """The core's ``kind``; raises ``LookupError`` when no plugin registered one."""
        value = self.get(kind)
        if value is None:
            raise LookupError(f"no {kind.__name__} is registered in this core")
        return value

    def __contains__(self, kind: object) -> bool:
        return kind in self._by_class


class CoreContext(Protocol):
    """What the actions and launchers of a core use of it (the ``Core`` is one)."""

    @property
    def config(self) -> CoreConfig: ...

    @property
    def world(self) -> World: ...

    @property
    def actions(self) -> ActionRegistry: ...

    @property
    def launchers(self) -> LauncherRegistry: ...

    @property
    def dispatcher(self) -> Dispatcher: ...

    @property
    def foreman(self) -> ForemanClient: ...

    @property
    def secret_box(self) -> SecretBox | None:
        """Seals the passwords of the inputs before they are stored (None: no plugin gave
        the core one; :mod:`.secret_box`)."""
        ...

    @property
    def extensions(self) -> Extensions: ...


class CoreWorld(World):
    """The engine world of a core: a :class:`dynflow.World` that knows the core it belongs
    to, so that the actions it runs reach their collaborators (set once, by the core)."""

    def __init__(self, core: CoreContext, db_url: str | None = None, **options: Any) -> None:
        super().__init__(db_url, **options)
        self.core: Final[CoreContext] = core


def context_of(world: World | None) -> CoreContext:
    """The core whose world is ``world`` (raises ``RuntimeError`` for a world no core built)."""
    if isinstance(world, CoreWorld):
        return world.core
    raise RuntimeError("this world is not run by a smart_proxy_dynflow core")
