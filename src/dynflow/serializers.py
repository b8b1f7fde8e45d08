"""What a delayed plan keeps until it is planned: its ``DelayOptions`` and its args serializer.

The root action's ``delay(delay_options, *args, **kwargs)`` returns an *args serializer*
(``JsonArgs`` by default: the arguments as JSON values); the delayed record stores its name and
what it made of the arguments, and the delayed executor turns them back into ``plan``'s
arguments when the plan is due (Dynflow's ``Dynflow::Serializers``). The delaying itself is
``dynflow.delayed``; this module sits below ``dynflow.action``, which names these types.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from .errors import DynflowError
from .serialization import dumps

TimeSpec = datetime | timedelta | int | float | None

# The engine's own serializers are stored by the names they had when they were defined in
# ``dynflow.delayed`` (where they can still be imported from): delayed records keep naming them.
_STORED_MODULE = "dynflow.delayed"


@dataclass(frozen=True)
class DelayOptions:
    """When a delayed plan may start.

    * ``start_at``: not before this time (None: as soon as the delayed executor sees it);
    * ``start_before``: if it could not start by then, it fails ("Execution plan could not be
      started before set time"); None: no deadline;
    * ``frozen``: never picked up until ``world.set_delayed_frozen(plan_id, False)``.

    Times are ``datetime`` (naive ones are UTC), ``timedelta`` or seconds, both from now.
    """

    start_at: TimeSpec = None
    start_before: TimeSpec = None
    frozen: bool = False

    @classmethod
    def coerce(cls, value: DelayOptions | dict[str, Any] | None) -> DelayOptions:
        if value is None:
            return cls()
        if isinstance(value, DelayOptions):
            return value
        if isinstance(value, dict):
            return cls(**value)
        raise TypeError(f"delay options are DelayOptions or a dict, not {value!r}")


_serializers: dict[str, type[ArgsSerializer]] = {}


class ArgsSerializer:
    """Turns the arguments of a delayed plan into JSON and back.

    Override ``serialize``/``deserialize`` (applied to every positional argument and keyword
    value) or, for full control, ``serialize_args``/``deserialize_args``. Subclasses are
    registered by name (``module.Class``, plus ``wire_names``), which is what the delayed
    record stores, so keep them in an importable module.
    """

    wire_names: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in (cls.name(), *cls.__dict__.get("wire_names", ())):
            _serializers[name] = cls

    def __init__(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> None:
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})

    @classmethod
    def name(cls) -> str:
        """The name a delayed record stores: ``module.Class``."""
        module = _STORED_MODULE if cls.__module__ == __name__ else cls.__module__
        return f"{module}.{cls.__qualname__}"

    def serialize(self, value: Any) -> Any:
        """One argument as a JSON value."""
        return value

    def deserialize(self, value: Any) -> Any:
        """One stored argument back as what ``plan()`` takes."""
        return value

    def serialize_args(self) -> dict[str, Any]:
        """The stored form: ``{"args": [...], "kwargs": {...}}``; must be JSON."""
        data = {
            "args": [self.serialize(a) for a in self.args],
            "kwargs": {k: self.serialize(v) for k, v in self.kwargs.items()},
        }
        dumps(data)
        return data

    def deserialize_args(self, data: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        data = data or {}
        args = tuple(self.deserialize(a) for a in data.get("args") or [])
        kwargs = {k: self.deserialize(v) for k, v in (data.get("kwargs") or {}).items()}
        return args, kwargs


class JsonArgs(ArgsSerializer):
    """The default: arguments are stored as they are (they must be JSON values)."""

    wire_names = ("Dynflow::Serializers::Noop",)


_serializers[ArgsSerializer.name()] = ArgsSerializer  # usable as is: JSON values, like JsonArgs


def serializer_class(name: str) -> type[ArgsSerializer]:
    try:
        return _serializers[name]
    except KeyError:
        raise DynflowError(f"args serializer {name!r} is not registered") from None
