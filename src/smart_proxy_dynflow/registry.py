"""The two registries through which plugins give the core its work.

* :class:`ActionRegistry`: the action classes Foreman may name in ``action_class`` /
  ``action_name``. Only what a plugin registered here can be triggered over HTTP; a request
  can never make the service import or instantiate anything else.
* :class:`LauncherRegistry`: operation name → launcher class (``single``, ``ssh``, ...),
  listed by ``GET /tasks/operations`` and advertised as capabilities.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynflow import Action

if TYPE_CHECKING:
    from .launcher import Launcher

_MISSING: Any = object()


class UnknownAction(LookupError):  # reads as "unknown action"
    def __init__(self, name: str) -> None:
        super().__init__(f"Unknown action class '{name}' requested.")
        self.name = name


class UnknownOperation(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"Unknown operation '{name}' requested.")
        self.name = name


class ActionRegistry:
    """Names (Python and Ruby wire names) under which actions may be triggered."""

    def __init__(self) -> None:
        self._by_name: dict[str, type[Action]] = {}

    def register(self, cls: type[Action], *aliases: str) -> None:
        """Register ``cls`` under its own name, its ``wire_names`` and ``aliases``."""
        if not (isinstance(cls, type) and issubclass(cls, Action)) or cls.abstract:
            raise TypeError(f"{cls!r} is not a concrete Action class")
        for name in (cls.name(), *cls.wire_names, *aliases):
            self._by_name[name] = cls

    def lookup(self, name: object) -> type[Action]:
        if not isinstance(name, str) or name not in self._by_name:
            raise UnknownAction(str(name))
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._by_name

    def names(self) -> list[str]:
        return list(self._by_name)


class LauncherRegistry:
    """Operation name → launcher class, in registration order (§3.1)."""

    def __init__(self) -> None:
        self._launchers: dict[str, type[Launcher]] = {}

    def register(self, name: str, launcher: type[Launcher]) -> None:
        self._launchers[name] = launcher

    def fetch(self, name: object, default: Any = _MISSING) -> type[Launcher]:
        if isinstance(name, str) and name in self._launchers:
            return self._launchers[name]
        if default is not _MISSING:
            return default
        raise UnknownOperation(str(name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._launchers

    def operations(self) -> list[str]:
        return list(self._launchers)
