"""The parts of pull mode on their own: settings (§2.2), the MQTT tracker (§7.3, the original's
``mqtt_dispatcher_test``), the messages, update payloads (§7.4), host identity and the job index."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from smart_proxy.validators import ConfigurationError
from smart_proxy_remote_execution_ssh.jobs import JobIndex, PullJob, host_identity
from smart_proxy_remote_execution_ssh.keygen import ensure_key
from smart_proxy_remote_execution_ssh.mqtt import (
    MqttConfig,
    Tracker,
    cancel_message,
    encode,
    start_message,
    topic_for,
)
from smart_proxy_remote_execution_ssh.pull_api import PayloadError, parse_update
from smart_proxy_remote_execution_ssh.settings import TlsFiles, check

FILES = TlsFiles("/etc/ca.pem", "/etc/proxy.pem", "/etc/proxy-key.pem")
MQTT = {"mode": "pull-mqtt", "mqtt_broker": "broker.example.com", "mqtt_port": 1883}


# ---- settings ------------------------------------------------------------------------------------


def test_pull_modes_need_no_ssh_key_without_cockpit(tmp_path: Path):
    missing = str(tmp_path / "no-key")
    for mode in ("pull", "pull-mqtt"):
        values = check(
            {**MQTT, "mode": mode, "cockpit_integration": False, "ssh_identity_key_file": missing}
        )
        assert values["mode"] == mode
    with pytest.raises(ConfigurationError, match="doesn't exist"):
        check({**MQTT, "ssh_identity_key_file": missing})  # cockpit_integration defaults to true
    key = tmp_path / "id_rsa_foreman_proxy"
    ensure_key(key)
    assert check({**MQTT, "mode": "PULL", "ssh_identity_key_file": str(key)})["mode"] == "pull"


def test_mqtt_tls_is_derived_from_the_proxys_files():
    base = {**MQTT, "cockpit_integration": False}
    assert check(base, tls_files=FILES)["mqtt_tls"] is True
    assert check(base, tls_files=TlsFiles("/etc/ca.pem", "/etc/proxy.pem"))["mqtt_tls"] is False
    assert check(base)["mqtt_tls"] is False
    assert check({**base, "mqtt_tls": False}, tls_files=FILES)["mqtt_tls"] is False
    assert check({**base, "mqtt_tls": True}, tls_files=FILES)["mqtt_tls"] is True
    assert check({**base, "mqtt_port": "8883"})["mqtt_port"] == 8883
    values = check({**base, "mqtt_rate_limit": 10}, tls_files=FILES)
    config = MqttConfig.from_settings(values, FILES)
    assert (config.broker, config.port, config.tls) == ("broker.example.com", 1883, True)
    assert (config.rate_limit, config.ttl, config.resend_interval) == (10, 5.0, 900.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mqtt_broker": None}, "'mqtt_broker' is required when mode is pull-mqtt"),
        ({"mqtt_broker": "  "}, "'mqtt_broker' is required"),
        ({"mqtt_port": None}, "'mqtt_port' is required when mode is pull-mqtt"),
        ({"mqtt_port": 70000}, "'mqtt_port' must be a port number"),
        ({"mqtt_port": "mqtt"}, "'mqtt_port' must be a port number"),
        ({"mqtt_tls": "maybe"}, "'mqtt_tls' must be true or false"),
        ({"mqtt_tls": True}, "mqtt_tls is true, but the proxy has no complete set"),
        ({"mqtt_rate_limit": 0}, "'mqtt_rate_limit' must be a positive integer"),
        ({"mqtt_rate_limit": 2.5}, "'mqtt_rate_limit' must be a positive integer"),
        ({"mqtt_ttl": 0}, "'mqtt_ttl' must be a positive number"),
        ({"mqtt_resend_interval": "soon"}, "'mqtt_resend_interval' must be a positive number"),
    ],
)
def test_invalid_pull_settings_are_explained(overrides: dict[str, Any], message: str):
    with pytest.raises(ConfigurationError, match=message):
        check({**MQTT, "cockpit_integration": False, **overrides})


def test_plain_pull_needs_no_broker():
    values = check({"mode": "pull", "cockpit_integration": False})
    assert values["mode"] == "pull" and "mqtt_tls" not in values


# ---- the tracker ---------------------------------------------------------------------------------


def tracker(limit: int | None = None, *jobs: str) -> Tracker:
    t = Tracker(limit)
    for job in jobs:
        t.new(job, topic_for(job), b"{}")
    return t


def test_tracker_without_a_limit():
    t = tracker()
    assert t.pending_count() == 0 and not t.needs_processing
    t.new("1", "topic", b"{}")
    assert t.pending_count() == 1 and t.needs_processing
    assert t.take() == ["1"]
    assert t.pending_count() == 0 and t.needs_processing  # hot
    assert t.tick() == [] and list(t.cold) == ["1"] and t.needs_processing
    assert t.tick() == ["1"]  # its resend is scheduled; it left every set
    assert not (t.pending or t.hot or t.cold) and not t.needs_processing
    assert t.resend("1") and t.take() == ["1"]
    assert not t.resend("25")  # unknown jobs are not resent


def test_tracker_with_a_limit_of_two():
    t = tracker(2, "1", "2", "3")
    assert t.pending_count() == 2
    assert t.take() == ["1", "2"] and t.pending == ["3"] and list(t.hot) == ["1", "2"]
    assert t.tick() == [] and t.take() == []  # 1 and 2 are cold, still in flight
    assert t.tick() == ["1", "2"]  # they leave for their resend cooldown...
    assert t.take() == ["3"]  # ...and free the slots
    assert not t.resend("3") and t.resend("1") and t.resend("2")
    assert t.take() == ["1"]  # one slot left: 3 is hot


def test_tracker_running_and_done():
    t = tracker(2, "1", "2", "3")
    assert t.take() == ["1", "2"]
    t.mark_running("1")  # a fetched job holds its slot until it is done
    assert t.tick() == [] and t.tick() == ["2"] and list(t.running) == ["1"]
    assert t.take() == ["3"] and t.pending_count() == 0
    t.new("4", "topic", b"{}")
    assert t.take() == []
    t.done("1")
    assert t.take() == ["4"] and "1" not in t.jobs
    t.mark_running("unknown")
    assert "unknown" not in t.running


# ---- messages, payloads, identity ----------------------------------------------------------------


def test_messages():
    start = start_message("j-1", "https://proxy:9090/", None)
    assert start["content"] == "https://proxy:9090/ssh/jobs/j-1"
    assert start["metadata"] == {
        "event": "start",
        "job_uuid": "j-1",
        "return_url": "https://proxy:9090/ssh/jobs/j-1/update",
        "version": "v1",
        "effective_user": None,
    }
    cancel = cancel_message("j-1", "https://proxy:9090")
    assert cancel["content"] == "https://proxy:9090/ssh/jobs/j-1/cancel"
    assert cancel["message_id"] != start["message_id"]
    assert json.loads(encode(cancel)) == cancel
    assert datetime.fromisoformat(cancel["sent"]).tzinfo is not None
    assert topic_for("web1.example.com") == "yggdrasil/web1.example.com/data/in"


def test_version_1_updates():
    update = parse_update(
        {
            "version": "1",
            "updates": [
                {"type": "output", "stream": "stdout", "content": "a", "timestamp": "2024-05-01"},
                {
                    "type": "output",
                    "stream": "stderr",
                    "content": "b",
                    "timestamp": "2024-05-01T10:00:00.5+02:00",
                },
                {"type": "exit", "exit_code": 1, "timestamp": "2024-05-01T08:00:01Z"},
                {"type": "exit", "exit_code": 2, "timestamp": "2024-05-01T08:00:02Z"},
            ],
        }
    )
    day = datetime(2024, 5, 1, tzinfo=UTC).timestamp()
    assert update.output == [
        {"output_type": "stdout", "output": "a", "timestamp": day},
        {"output_type": "stderr", "output": "b", "timestamp": day + 8 * 3600 + 0.5},
    ]
    assert update.exit_status == 2  # the last one wins
    assert update.exit_status_timestamp == day + 8 * 3600 + 2
    assert parse_update({"version": 1, "updates": []}).output == []


def test_legacy_updates():
    update = parse_update({"output": ["x", "y"], "type": "stderr", "exit_code": "4"})
    assert [(r["output_type"], r["output"]) for r in update.output] == [
        ("stderr", "x"),
        ("stderr", "y"),
    ]
    assert update.exit_status == 4 and isinstance(update.exit_status_timestamp, float)
    untyped = parse_update({"output": "z"})
    assert untyped.output[0]["output_type"] == "debug" and untyped.exit_status is None
    with pytest.raises(PayloadError, match="unsupported update version True"):
        parse_update({"version": True})


def test_host_identity():
    assert host_identity({"hostname": "10.0.0.1"}) == "10.0.0.1"
    assert host_identity({"hostname": "10.0.0.1", "alternative_names": {"fqdn": "w"}}) == "w"
    names = {"fqdn": "w", "consumer_uuid": "c-1"}
    assert host_identity({"hostname": "h", "alternative_names": names}) == "c-1"
    assert host_identity({"alternative_names": {"fqdn": " "}}) is None


def test_job_index():
    index = JobIndex()
    plan = str(uuid.uuid4())

    def job(name: str, owner: str, created: float, step: int = 2) -> PullJob:
        return PullJob(name, owner, plan, step, "script", None, created)

    index.add(job("b", "web", 2.0))
    index.add(job("a", "web", 1.0, step=5))
    index.add(job("c", "db", 3.0))
    assert index.uuids_of("WEB") == ["a", "b"]
    assert index.find("a", "Web") is not None and index.find("a", "db") is None
    assert [j.uuid for j in index.forget_step(plan, 5)] == ["a"]
    assert index.uuids_of("web") == ["b"] and len(index) == 2
    assert index.forget("c") is not None and index.uuids_of("db") == []
