"""The secret box: sealing, opening and erasing the passwords of an input, and its key file."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest

from smart_proxy_dynflow.secret_box import (
    PREFIX,
    SecretBox,
    SecretsError,
    erase_secrets,
    has_secrets,
    is_sealed,
    key_file_beside,
    open_secrets,
    seal_secrets,
)

PASSWORD = "MARKER-ssh-password-7f3a"
INPUT = {
    "hostname": "web01.example.com",
    "script": "echo hi",
    "secrets": {"ssh_password": PASSWORD, "key_passphrase": None, "effective_user_password": ""},
    "nested": [{"secrets": {"token": "MARKER-nested", "pin": 918273645}}],
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_seal_and_open_an_input() -> None:
    box = SecretBox.generate()
    sealed = seal_secrets(INPUT, box)
    assert PASSWORD not in repr(sealed) and "MARKER-nested" not in repr(sealed)
    assert "918273645" not in repr(sealed)  # not only strings: any value but None
    assert is_sealed(sealed["secrets"]["ssh_password"])
    assert sealed["secrets"]["key_passphrase"] is None  # nothing to hide
    assert is_sealed(sealed["secrets"]["effective_user_password"])
    assert sealed["hostname"] == INPUT["hostname"] and sealed["script"] == INPUT["script"]
    assert INPUT["secrets"]["ssh_password"] == PASSWORD  # the caller's value is not changed
    # Sealing twice keeps the sealed values (the launcher and RunScript both seal).
    assert seal_secrets(sealed, box) == sealed
    assert open_secrets(sealed, box) == INPUT
    # Two seals of one value differ (a random nonce each).
    assert box.seal("ssh_password", PASSWORD) != box.seal("ssh_password", PASSWORD)


def test_no_box_or_no_secrets_leaves_the_input_alone() -> None:
    assert seal_secrets(INPUT, None) is INPUT
    plain = {"hostname": "h", "secrets": {"ssh_password": None}}
    assert seal_secrets(plain, SecretBox.generate()) is plain
    assert not has_secrets(plain)
    assert has_secrets(INPUT)
    # Not sealed (stored by an older version): passes through.
    assert open_secrets(INPUT, None) == INPUT


def test_a_sealed_value_opens_only_with_its_key_and_its_name() -> None:
    box = SecretBox.generate()
    sealed = box.seal("ssh_password", PASSWORD)
    with pytest.raises(SecretsError, match="cannot be opened with the key"):
        SecretBox.generate().open("ssh_password", sealed)
    with pytest.raises(SecretsError, match="'effective_user_password' cannot be opened"):
        box.open("effective_user_password", sealed)  # moved to another name
    with pytest.raises(SecretsError, match="cannot be opened"):
        box.open("ssh_password", PREFIX + "not base64!")
    with pytest.raises(SecretsError, match="sealed, but this service has no secrets key"):
        open_secrets({"secrets": {"ssh_password": sealed}}, None)


def test_erase_secrets() -> None:
    erased = erase_secrets(seal_secrets(INPUT, SecretBox.generate()))
    assert erased["secrets"] == {
        "ssh_password": None,
        "key_passphrase": None,
        "effective_user_password": None,
    }
    assert erased["nested"] == [{"secrets": {"token": None, "pin": None}}]
    assert erased["script"] == INPUT["script"]
    assert not has_secrets(erased)


def test_the_key_file_is_created_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    path = key_file_beside(tmp_path / "ssh" / "id_rsa_foreman_proxy")
    assert path == tmp_path / "ssh" / "secrets.key"
    old = os.umask(0)
    try:
        box = SecretBox.from_key_file(path)
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert len(base64.urlsafe_b64decode(path.read_text().strip())) == 32
    assert [p.name for p in path.parent.iterdir()] == ["secrets.key"]  # no temporary left
    sealed = box.seal("ssh_password", PASSWORD)
    # After a restart the same key opens what was sealed before.
    assert SecretBox.from_key_file(path).open("ssh_password", sealed) == PASSWORD


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "secrets.key"
    boxes: list[SecretBox] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        try:
            barrier.wait()
            boxes.append(SecretBox.from_key_file(path))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    sealed = boxes[0].seal("ssh_password", PASSWORD)
    assert {box.open("ssh_password", sealed) for box in boxes} == {PASSWORD}
    assert [p.name for p in tmp_path.iterdir()] == ["secrets.key"]


def test_an_unusable_key_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "secrets.key"
    SecretBox.from_key_file(path)
    path.chmod(0o644)
    with pytest.raises(SecretsError, match=r"readable by others \(mode 0644\): chmod 600"):
        SecretBox.from_key_file(path)
    path.chmod(0o600)
    path.write_text("not a key\n")
    with pytest.raises(SecretsError, match="does not hold a key"):
        SecretBox.from_key_file(path)
