"""The plugin model of the Smart Proxy (§5).

A plugin is a subclass of :class:`Plugin` that declares, as class attributes::

    class DnsPlugin(Plugin):
        name = "dns"                       # the feature name Foreman sees
        version = "1.2.0"                  # "-develop" is dropped when reported
        settings_file = "dns.yml"          # default "<name>.yml" in settings_directory
        default_settings = {"dns_ttl": 86400}   # each key is also presence-validated
        validations = [Validation("dns_key", "file_readable")]
        validators = {}                    # custom validator functions by name
        requires = {"facts": "~> 1.3"}     # gem style or PEP 440 specifiers
        capabilities = ["a", lambda plugin: plugin.settings.get("x") and "b"]
        exposed_settings = ["use_provider"]
        mount_path = "/dns"

and may override :meth:`Plugin.asgi_app`, :meth:`Plugin.start` and :meth:`Plugin.stop`.

Plugins are found only through Python entry points in the group ``smart_proxy.plugins`` (each
names a :class:`Plugin` subclass), see :func:`discover_plugins`::

    [project.entry-points."smart_proxy.plugins"]
    dns = "my_package.dns:DnsPlugin"

The host (:mod:`smart_proxy.host`) loads the settings, validates them, checks ``requires``,
creates one instance per enabled plugin, awaits ``start()`` (in dependency order), mounts the
apps and, on shutdown, awaits ``stop()`` in reverse order. A plugin whose ``start()`` raises is
``failed`` and never mounted; ``stop()`` is still awaited so it can release what it acquired.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from smart_proxy.server import ASGIApp
from smart_proxy.validators import Validation, ValidatorFunc

if TYPE_CHECKING:
    from smart_proxy.host import Host

log = logging.getLogger("smart_proxy.plugin")

ENTRY_POINT_GROUP = "smart_proxy.plugins"

Protocol = Literal["http", "https"]
Capability = str | Callable[["Plugin"], None | str | Sequence[str]]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


# ---- settings -----------------------------------------------------------------------------------


class PluginSettings(Mapping[str, Any]):
    """The effective settings of a plugin: a read-only mapping that also allows attribute access
    (``settings.dns_ttl``; a missing key reads as None, like the original open struct)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_data", dict(data or {}))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        return self._data.get(key)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("plugin settings are read-only")

    def __repr__(self) -> str:
        return f"PluginSettings({self._data!r})"


def parse_enabled(value: Any) -> tuple[bool, bool]:
    """(http, https) for an ``enabled`` value: true, false, 'http' or 'https' (also the strings
    'true'/'false'). Raises ValueError for anything else."""
    if value is True:
        return True, True
    if value is False or value is None:
        return False, False
    if isinstance(value, str):
        word = value.strip().lower()
        if word == "http":
            return True, False
        if word == "https":
            return False, True
        if word == "true":
            return True, True
        if word == "false":
            return False, False
    raise ValueError(f"invalid value {value!r} (expected true, false, 'http' or 'https')")


# ---- versions and requirements ------------------------------------------------------------------

_SUFFIX = re.compile(r"[-.+]?(?:develop|rc\d*|pre\d*|alpha\d*|beta\d*)$", re.IGNORECASE)
_CLAUSE = re.compile(r"^\s*(~>|===|==|!=|>=|<=|~=|=|>|<)?\s*(\S+)\s*$")


class RequirementError(ValueError):
    """A version requirement cannot be parsed."""


def display_version(version: str) -> str:
    """The version as reported to Foreman (``-develop`` dropped)."""
    return re.sub(r"-develop$", "", str(version).strip())


def comparable_version(version: str) -> Version:
    """A :class:`Version` with ``-develop``/``-RCn`` suffixes ignored (ValueError if invalid)."""
    text = str(version).strip()
    previous = None
    while previous != text:
        previous, text = text, _SUFFIX.sub("", text)
    try:
        return Version(text)
    except InvalidVersion as exc:
        raise ValueError(f"invalid version {version!r}") from exc


def _pessimistic(available: Version, base: Version) -> bool:
    release = list(base.release)
    if len(release) == 1:
        upper = [release[0] + 1]
    else:
        upper = release[:-1]
        upper[-1] += 1
    return available >= base and available < Version(".".join(str(n) for n in upper))


def version_matches(available: str, requirement: str) -> bool:
    """Whether ``available`` satisfies ``requirement``.

    ``requirement`` is a comma-separated list of clauses, each Ruby gem style (``~> 1.3``,
    ``>= 1.0``, ``= 2.1``, a bare ``2.1``) or a PEP 440 specifier (``==1.*``, ``~=1.3``,
    ``!=1.5``). ``-develop``/``-RCn`` suffixes are ignored on both sides. Raises
    :class:`RequirementError` for an unparsable requirement, ValueError for an invalid
    ``available`` version.
    """
    have = comparable_version(available)
    clauses = [part for part in str(requirement).split(",") if part.strip()]
    if not clauses:
        return True
    for clause in clauses:
        match = _CLAUSE.match(clause)
        if match is None:
            raise RequirementError(f"invalid version requirement {requirement!r}")
        operator, text = match.group(1) or "=", match.group(2)
        if operator == "~>":
            try:
                base = comparable_version(text)
            except ValueError as exc:
                raise RequirementError(f"invalid version requirement {requirement!r}") from exc
            if not _pessimistic(have, base):
                return False
            continue
        if operator == "=":
            operator = "=="
        if "*" not in text:
            try:
                text = str(comparable_version(text))
            except ValueError as exc:
                raise RequirementError(f"invalid version requirement {requirement!r}") from exc
        try:
            spec = SpecifierSet(f"{operator}{text}")
        except InvalidSpecifier as exc:
            raise RequirementError(f"invalid version requirement {requirement!r}") from exc
        if not spec.contains(have, prereleases=True):
            return False
    return True


# ---- the plugin base class ----------------------------------------------------------------------


class Plugin:
    """Base class of every Smart Proxy plugin (see the module docstring)."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0.0.0"
    settings_file: ClassVar[str | None] = None
    default_settings: ClassVar[Mapping[str, Any]] = {}
    validations: ClassVar[Sequence[Validation]] = ()
    validators: ClassVar[Mapping[str, ValidatorFunc]] = {}
    requires: ClassVar[Mapping[str, str]] = {}
    capabilities: ClassVar[Sequence[Capability]] = ()
    exposed_settings: ClassVar[Sequence[str]] = ()
    mount_path: ClassVar[str | None] = None

    def __init__(self, host: Host, settings: Mapping[str, Any]) -> None:
        self.host = host
        self.settings = (
            settings if isinstance(settings, PluginSettings) else PluginSettings(settings)
        )
        self.http_enabled, self.https_enabled = parse_enabled(self.settings.get("enabled"))
        self.logger = logging.getLogger(f"smart_proxy.plugins.{self.name}")

    @classmethod
    def settings_file_name(cls) -> str:
        """The file under ``settings_directory`` (``settings_file``, else ``<name>.yml``)."""
        return cls.settings_file or f"{cls.name}.yml"

    def asgi_app(self, protocol: Protocol) -> ASGIApp | None:
        """The app mounted at ``mount_path`` on ``protocol``'s listeners; None = not mounted.

        Called once per enabled protocol, after a successful :meth:`start`.
        """
        return None

    async def start(self) -> None:
        """Acquire resources and start background work. Raising fails the plugin."""

    async def stop(self) -> None:
        """Release what :meth:`start` acquired. Also called after a failed ``start``."""

    def state_note(self) -> str | None:
        """A problem of the running plugin worth telling Foreman (a database it cannot use,
        ...): shown as ``note`` next to ``"state": "running"`` in ``/v2/features``."""
        return None


def check_plugin_class(cls: Any) -> None:
    """Raise ValueError unless ``cls`` is a usable :class:`Plugin` subclass."""
    if not (isinstance(cls, type) and issubclass(cls, Plugin)) or cls is Plugin:
        raise ValueError(f"{cls!r} is not a smart_proxy.plugin.Plugin subclass")
    if not cls.name or not _NAME.match(cls.name):
        raise ValueError(f"{cls.__qualname__} has an invalid plugin name {cls.name!r}")
    if cls.mount_path is not None and not cls.mount_path.startswith("/"):
        raise ValueError(f"plugin '{cls.name}': mount_path must start with '/'")


# ---- discovery ----------------------------------------------------------------------------------


@dataclass
class Discovered:
    """Result of :func:`discover_plugins`: the classes, and entry points that failed to load
    (entry point name → message)."""

    classes: list[type[Plugin]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def discover_plugins(group: str = ENTRY_POINT_GROUP) -> Discovered:
    """Load every entry point of ``group`` (sorted by name, duplicates of one class ignored)."""
    found = Discovered()
    seen: set[type[Plugin]] = set()
    for ep in sorted(entry_points(group=group), key=lambda e: (e.name, e.value)):
        try:
            cls = ep.load()
            check_plugin_class(cls)
        except Exception as exc:
            message = f"cannot load plugin entry point {ep.name} = {ep.value}: {exc}"
            log.error("%s", message, exc_info=not isinstance(exc, ValueError))
            found.errors.setdefault(ep.name, message)
            continue
        if cls in seen:
            continue
        seen.add(cls)
        found.classes.append(cls)
    return found
