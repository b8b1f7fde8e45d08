"""Secret masking in data structures and in free text."""

from __future__ import annotations

import copy
import json

import pytest

from smart_proxy.redact import FILTERED, is_sensitive_key, redact, redact_text

TASK_INPUT = {
    "task_id": "0d5c6b9e",
    "step_id": 3,
    "key": "value",
    "ssh_key_file": "/usr/share/foreman-proxy/.ssh/id_rsa_foreman_proxy",
    "hostname": "host.example.com",
    "secrets": {"ssh_password": "pw", "key_passphrase": "kp", "effective_user_password": "eu"},
    "input": {
        "ssh_password": "hunter2",
        "effective_user_password": None,
        "hosts": [{"name": "a", "sudo_password": "s3"}, {"name": "b"}],
        "callback": {"task_id": "t", "step_id": 1},
        "access_token": "abc",
        "tokens_used": 2,
    },
}


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "ssh_password",
        "EFFECTIVE_USER_PASSWORD",
        "key_passphrase",
        "secrets",
        "client_secret",
        "token",
        "access_token",
        "X-Auth-Token",
        "private_key",
        "ssh_private_key",
        "authorization",
        b"authorization",
        ":password",
        "otp",
    ],
)
def test_sensitive_keys(key: str | bytes) -> None:
    assert is_sensitive_key(key)


@pytest.mark.parametrize(
    "key",
    ["task_id", "step_id", "key", "ssh_key_file", "tokens_used", "hostname", "passage", 5, None],
)
def test_ordinary_keys(key: object) -> None:
    assert not is_sensitive_key(key)


def test_redact_masks_sensitive_values_and_keeps_the_rest() -> None:
    original = copy.deepcopy(TASK_INPUT)
    result = redact(TASK_INPUT)
    assert TASK_INPUT == original  # not modified in place
    assert result["secrets"] == FILTERED  # the whole sub-object
    assert result["input"]["ssh_password"] == FILTERED
    assert result["input"]["effective_user_password"] is None  # nothing to hide
    assert result["input"]["hosts"] == [{"name": "a", "sudo_password": FILTERED}, {"name": "b"}]
    assert result["input"]["access_token"] == FILTERED
    for key in ("task_id", "step_id", "key", "ssh_key_file", "hostname"):
        assert result[key] == TASK_INPUT[key]
    assert result["input"]["callback"] == {"task_id": "t", "step_id": 1}
    assert result["input"]["tokens_used"] == 2


def test_redact_header_pairs() -> None:
    headers = [(b"authorization", b"Basic dXNlcjpwYXNz"), (b"host", b"proxy")]
    assert redact(headers) == [(b"authorization", FILTERED), (b"host", b"proxy")]
    assert redact([("Cookie", "session=1")]) == [("Cookie", FILTERED)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password=abc&task_id=5", f"password={FILTERED}&task_id=5"),
        ("ssh_password: hunter2 step_id: 3", f"ssh_password: {FILTERED} step_id: 3"),
        ('{"password": "p\\"w", "task_id": "t"}', f'{{"password": "{FILTERED}", "task_id": "t"}}'),
        (
            "{'key_passphrase': 'x y', 'key': 'k'}",
            f"{{'key_passphrase': '{FILTERED}', 'key': 'k'}}",
        ),
        ('"secret"=>"s3"', f'"secret"=>"{FILTERED}"'),
        ("Authorization: Basic dXNlcjpwYXNz", f"Authorization: Basic {FILTERED}"),
        ("sent Bearer eyJhbGciOi.x-1 upstream", f"sent Bearer {FILTERED} upstream"),
        ("[(b'authorization', b'Basic abc=')]", f"[(b'authorization', b'{FILTERED}')]"),
        ('"secrets": {"a": "1", "b": "2"}, "x": 1', f'"secrets": "{FILTERED}", "x": 1'),
        ("access_token=XYZ", f"access_token={FILTERED}"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----", FILTERED),
    ],
)
def test_redact_text_masks_secrets(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Invalid username or password supplied",
        "Basic authentication is required",
        "task_id=42 step_id=3 key=value",
        "passage=foo",
        f"password: {FILTERED}",
        "",
    ],
)
def test_redact_text_leaves_ordinary_text_alone(text: str) -> None:
    assert redact_text(text) == text


def test_redact_text_is_idempotent_on_json_dumps() -> None:
    text = json.dumps(TASK_INPUT)
    once = redact_text(text)
    assert "hunter2" not in once and '"pw"' not in once and '"s3"' not in once
    assert redact_text(once) == once
    assert '"task_id": "0d5c6b9e"' in once
