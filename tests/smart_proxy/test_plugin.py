"""The plugin model (§5): version requirements, ``enabled`` values, settings, entry points."""

from __future__ import annotations

from pathlib import Path

import pytest

from smart_proxy.plugin import (
    ENTRY_POINT_GROUP,
    Plugin,
    PluginSettings,
    RequirementError,
    check_plugin_class,
    comparable_version,
    discover_plugins,
    display_version,
    parse_enabled,
    version_matches,
)
from tests.support import proxy_plugins
from tests.support.proxy_plugins import HelloPlugin, write_plugin_dist


@pytest.mark.parametrize(
    ("available", "requirement", "expected"),
    [
        # Ruby gem style
        ("1.3.0", "~> 1.3", True),
        ("1.9.9", "~> 1.3", True),
        ("2.0.0", "~> 1.3", False),
        ("1.2.9", "~> 1.3", False),
        ("1.3.5", "~> 1.3.2", True),
        ("1.4.0", "~> 1.3.2", False),
        ("1.9", "~> 1", True),
        ("2.0", "~> 1", False),
        ("1.0", ">= 1.0", True),
        ("0.9", ">= 1.0", False),
        ("2.1", "= 2.1", True),
        ("2.1.1", "2.1", False),
        ("2.1", "2.1", True),
        ("1.5", ">= 1.0, < 2", True),
        ("2.5", ">= 1.0, < 2", False),
        # -develop / -RCn are ignored on both sides
        ("3.11.0-develop", "~> 3.11", True),
        ("3.11.0-develop", ">= 3.11.0", True),
        ("1.0.0-RC2", "= 1.0.0", True),
        ("1.0.0", ">= 1.0.0-rc1", True),
        # PEP 440
        ("1.3.7", "~=1.3", True),
        ("2.0", "~=1.3", False),
        ("1.4.2", "==1.*", True),
        ("2.0", "==1.*", False),
        ("1.5", "!=1.5", False),
        ("1.5", ">=1.0,<2.0", True),
        ("1.5", "", True),
    ],
)
def test_version_matches(available: str, requirement: str, expected: bool) -> None:
    assert version_matches(available, requirement) is expected


def test_invalid_requirements_and_versions() -> None:
    for bad in ("~> banana", ">= 1.0 2.0", "=> 1.0"):
        with pytest.raises(RequirementError):
            version_matches("1.0", bad)
    with pytest.raises(ValueError, match="invalid version"):
        comparable_version("not a version")
    assert display_version("3.11.0-develop") == "3.11.0"
    assert display_version("1.0.0-RC1") == "1.0.0-RC1"


@pytest.mark.parametrize(
    ("value", "ports"),
    [
        (True, (True, True)),
        (False, (False, False)),
        (None, (False, False)),
        ("http", (True, False)),
        ("https", (False, True)),
        (" HTTPS ", (False, True)),
        ("true", (True, True)),
        ("false", (False, False)),
    ],
)
def test_parse_enabled(value: object, ports: tuple[bool, bool]) -> None:
    assert parse_enabled(value) == ports


@pytest.mark.parametrize("value", ["yes please", 1, ["http"], "both"])
def test_parse_enabled_rejects_anything_else(value: object) -> None:
    with pytest.raises(ValueError, match="expected true, false, 'http' or 'https'"):
        parse_enabled(value)


def test_plugin_settings_are_read_only_with_attribute_access() -> None:
    settings = PluginSettings({"enabled": "http", "dns_ttl": 60})
    assert settings["dns_ttl"] == 60 and settings.dns_ttl == 60
    assert settings.missing is None
    assert dict(settings) == {"enabled": "http", "dns_ttl": 60}
    with pytest.raises(AttributeError):
        settings.dns_ttl = 5
    with pytest.raises(TypeError):
        settings["dns_ttl"] = 5  # type: ignore[index]


def test_plugin_instance_defaults() -> None:
    plugin = HelloPlugin(host=None, settings={"enabled": "https", "greeting": "hi"})  # type: ignore[arg-type]
    assert (plugin.http_enabled, plugin.https_enabled) == (False, True)
    assert plugin.settings.greeting == "hi"
    assert HelloPlugin.settings_file_name() == "hello.yml"
    assert plugin.logger.name == "smart_proxy.plugins.hello"

    class Custom(Plugin):
        name = "custom"
        settings_file = "shared.yml"

    assert Custom.settings_file_name() == "shared.yml"
    assert Custom(None, {}).asgi_app("http") is None  # type: ignore[arg-type]


def test_check_plugin_class() -> None:
    check_plugin_class(HelloPlugin)

    class Nameless(Plugin):
        pass

    class BadMount(Plugin):
        name = "bad_mount"
        mount_path = "bad"

    for cls, message in [
        (Plugin, "not a smart_proxy.plugin.Plugin subclass"),
        (object, "not a smart_proxy.plugin.Plugin subclass"),
        (Nameless, "invalid plugin name"),
        (BadMount, "mount_path must start with '/'"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_plugin_class(cls)


def test_discover_plugins_through_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = write_plugin_dist(
        tmp_path,
        {
            "hello": proxy_plugins.HelloPlugin,
            "hello_again": proxy_plugins.HelloPlugin,
            "computed": proxy_plugins.ComputedCapabilityPlugin,
        },
    )
    entry_points = dist / "smart_proxy_test_plugins-0.1.dist-info" / "entry_points.txt"
    entry_points.write_text(
        entry_points.read_text()
        + "missing_module = tests.support.no_such_module:Plugin\n"
        + "not_a_plugin = tests.support.proxy_plugins:write_plugin_dist\n"
    )
    monkeypatch.syspath_prepend(str(dist))
    found = discover_plugins(ENTRY_POINT_GROUP)
    assert proxy_plugins.HelloPlugin in found.classes
    assert proxy_plugins.ComputedCapabilityPlugin in found.classes
    assert found.classes.count(proxy_plugins.HelloPlugin) == 1
    assert set(found.errors) == {"missing_module", "not_a_plugin"}
    assert "No module named 'tests.support.no_such_module'" in found.errors["missing_module"]
    assert "is not a smart_proxy.plugin.Plugin subclass" in found.errors["not_a_plugin"]
