"""Secrets at rest: the passwords in a job's input are sealed before anything is stored.

Foreman sends a job's passwords in its input under ``secrets`` (the SSH plugin's
``ssh_password``, ``key_passphrase`` and ``effective_user_password``). The engine stores inputs
as they are, so without this they sit in clear text in the database until the cleaner deletes
the plan. Here:

* **Sealing.** Every value but ``None`` of a ``secrets`` mapping, at any depth of an input, is
  replaced by ``sealed:v1:<base64url(nonce + AES-256-GCM ciphertext of its JSON)>`` (the name of
  the value is the associated data, so a sealed value cannot be moved to another name). A
  string that starts with ``sealed:v1:`` is taken as sealed already.
  :func:`seal_secrets` is applied by the launchers before a plan is stored (the parent of a
  batch stores every task's input) and by the SSH plugin's ``RunScript`` when it plans.
* **Opening.** :func:`open_secrets` gives the clear values back, only where a runner needs them
  (the SSH plugin's job options). Values that are not sealed (plans stored by an older
  version) pass unchanged.
* **Erasing.** :func:`erase_secrets` sets every value of every ``secrets`` mapping to ``None``;
  the runner actions store that as their input once their exit status is stored, the batch
  parents once their children are planned (:meth:`dynflow.Action.change_stored_input`).

The key is 32 random bytes, kept base64url-encoded in a key file beside the proxy's SSH key
(``<dir of ssh_identity_key_file>/secrets.key``), created ``0600`` at the first start (written
to a temporary file, then linked into place: concurrent starts agree on one key, and a half
written key is never seen) and reused after restarts. A key file readable by group or others,
or that does not hold a key, stops the plugin with a message saying what to fix. Losing the key
file loses only the passwords of jobs that are still running (they end with an error saying
so). The box of a core is ``core.secret_box`` (given by the SSH plugin when it registers).

Redaction (the status API, the console, logs) hides the whole ``secrets`` mapping, sealed or not.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from secrets import token_bytes, token_hex
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("smart_proxy_dynflow.secrets")

SECRETS_KEY = "secrets"
PREFIX = "sealed:v1:"
KEY_FILE_NAME = "secrets.key"
KEY_FILE_MODE = 0o600
KEY_SIZE = 32
NONCE_SIZE = 12


class SecretsError(ValueError):
    """A sealed secret cannot be opened, or the key file is unusable (the message says why)."""


def key_file_beside(identity_key_file: str | os.PathLike[str]) -> Path:
    """The key file kept beside the proxy's SSH key."""
    return Path(identity_key_file).expanduser().parent / KEY_FILE_NAME


class SecretBox:
    """Seals and opens secret values with one key (AES-256-GCM)."""

    def __init__(self, key: bytes, path: Path | None = None) -> None:
        if len(key) != KEY_SIZE:
            raise SecretsError(f"a secrets key has {KEY_SIZE} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self.path = path

    def __repr__(self) -> str:
        return f"<SecretBox {self.path or 'in memory'}>"

    @classmethod
    def generate(cls) -> SecretBox:
        """A box with a new random key that is not kept anywhere (tests)."""
        return cls(AESGCM.generate_key(bit_length=KEY_SIZE * 8))

    @classmethod
    def from_key_file(cls, path: str | os.PathLike[str]) -> SecretBox:
        """The box of the key file at ``path``, created first if it does not exist."""
        path = Path(path).expanduser()
        if not path.exists():
            _create_key_file(path)
        try:
            stat = path.stat()
            text = path.read_text().strip()
        except OSError as exc:
            raise SecretsError(f"cannot read the secrets key file {path}: {exc}") from None
        if stat.st_mode & 0o077:
            raise SecretsError(
                f"the secrets key file {path} is readable by others (mode "
                f"{stat.st_mode & 0o777:04o}): chmod 600 {path}"
            )
        try:
            key = base64.urlsafe_b64decode(text.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            key = b""
        if len(key) != KEY_SIZE:
            raise SecretsError(
                f"the secrets key file {path} does not hold a key (32 bytes, base64url); "
                "move it away to have a new one made (running jobs then lose their passwords)"
            )
        return cls(key, path)

    # ---- one value ----------------------------------------------------------------------------
    def seal(self, name: str, value: Any) -> str:
        """``value`` (any JSON value) sealed under ``name``."""
        nonce = token_bytes(NONCE_SIZE)
        clear = json.dumps(value).encode("utf-8")
        sealed = self._aead.encrypt(nonce, clear, name.encode("utf-8"))
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, name: str, value: Any) -> Any:
        """The value sealed under ``name`` (a value that is not sealed is returned as it is)."""
        if not is_sealed(value):
            return value
        try:
            raw = base64.urlsafe_b64decode(value[len(PREFIX) :].encode("ascii"))
            clear = self._aead.decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], name.encode("utf-8"))
            return json.loads(clear.decode("utf-8"))
        except (InvalidTag, binascii.Error, UnicodeError, ValueError):
            raise SecretsError(
                f"the sealed secret {name!r} cannot be opened with the key "
                f"{self.path or '(in memory)'}: the key file changed since the job was stored"
            ) from None


def is_sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def _create_key_file(path: Path) -> None:
    """Write a new key: a private temporary file, fsynced, then linked to ``path`` (a
    concurrent start that linked first wins; its key is used)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = AESGCM.generate_key(bit_length=KEY_SIZE * 8)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    try:
        os.fchmod(fd, KEY_FILE_MODE)
        os.write(fd, base64.urlsafe_b64encode(key) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    else:
        log.info("created the secrets key file %s", path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        os.unlink(temporary)


# ---- whole inputs -------------------------------------------------------------------------------


def seal_secrets(value: Any, box: SecretBox | None) -> Any:
    """A copy of ``value`` whose ``secrets`` values are sealed (``value`` itself without a box
    or without secrets); ``None`` and values sealed already are kept."""
    if box is None or not has_secrets(value):
        return value

    def sealed(name: str, item: Any) -> Any:
        return item if item is None or is_sealed(item) else box.seal(name, item)

    return _map_secrets(value, sealed)


def open_secrets(value: Any, box: SecretBox | None) -> Any:
    """A copy of ``value`` whose sealed ``secrets`` values are clear again; raises
    :class:`SecretsError` for a sealed value without a box or with another key."""

    def opened(name: str, item: Any) -> Any:
        if not is_sealed(item):
            return item
        if box is None:
            raise SecretsError(
                f"the secret {name!r} is sealed, but this service has no secrets key"
            )
        return box.open(name, item)

    return _map_secrets(value, opened)


def erase_secrets(value: Any) -> Any:
    """A copy of ``value`` with every value of every ``secrets`` mapping ``None``."""
    return _map_secrets(value, lambda name, item: None)


def has_secrets(value: Any) -> bool:
    """Whether ``value`` holds a ``secrets`` mapping with a value that is not ``None``."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == SECRETS_KEY and isinstance(item, Mapping):
                if any(v is not None for v in item.values()):
                    return True
            elif has_secrets(item):
                return True
        return False
    if isinstance(value, list):
        return any(has_secrets(item) for item in value)
    return False


def _map_secrets(value: Any, change: Any) -> Any:
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            if key == SECRETS_KEY and isinstance(item, Mapping):
                result[key] = {str(name): change(str(name), v) for name, v in item.items()}
            else:
                result[key] = _map_secrets(item, change)
        return result
    if isinstance(value, list):
        return [_map_secrets(item, change) for item in value]
    return value
