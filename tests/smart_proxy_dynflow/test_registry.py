"""Launcher and action registries (cases 74-79 of §9.1)."""

from __future__ import annotations

import pytest

from dynflow import Action
from smart_proxy_dynflow.launcher import BatchLauncher, SingleLauncher
from smart_proxy_dynflow.registry import (
    ActionRegistry,
    LauncherRegistry,
    UnknownAction,
    UnknownOperation,
)


class Registered(Action):
    wire_names = ("Ruby::Registered",)

    def run(self) -> None:
        pass


class NotRegistered(Action):
    def run(self) -> None:
        pass


def test_launcher_register_fetch_and_order():
    registry = LauncherRegistry()
    for name in ("foo", "bar", "baz"):
        registry.register(name, SingleLauncher)
    assert registry.operations() == ["foo", "bar", "baz"]
    assert registry.fetch("bar") is SingleLauncher
    assert "foo" in registry and "qux" not in registry


def test_launcher_fetch_missing_raises_or_returns_default():
    registry = LauncherRegistry()
    with pytest.raises(UnknownOperation, match="Unknown operation 'missing' requested."):
        registry.fetch("missing")
    assert registry.fetch("missing", BatchLauncher) is BatchLauncher
    assert registry.fetch("missing", None) is None


def test_register_overwrites_keeping_order():
    registry = LauncherRegistry()
    registry.register("a", SingleLauncher)
    registry.register("b", SingleLauncher)
    registry.register("a", BatchLauncher)
    assert registry.operations() == ["a", "b"] and registry.fetch("a") is BatchLauncher


def test_actions_are_found_by_python_and_wire_names_only_when_registered():
    registry = ActionRegistry()
    registry.register(Registered, "Old::Name")
    for name in (Registered.name(), "Ruby::Registered", "Old::Name"):
        assert registry.lookup(name) is Registered
    # Known to the engine (it can load stored plans of it), but not triggerable over HTTP.
    with pytest.raises(UnknownAction, match="Unknown action class"):
        registry.lookup(NotRegistered.name())
    for name in ("os.system", "builtins.eval", "subprocess.Popen", None, 42):
        with pytest.raises(UnknownAction):
            registry.lookup(name)


def test_only_concrete_actions_can_be_registered():
    registry = ActionRegistry()
    with pytest.raises(TypeError):
        registry.register(dict)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        registry.register(Action)
