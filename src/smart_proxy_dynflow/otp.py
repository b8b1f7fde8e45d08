"""One-time passwords for host → proxy callbacks (``/tasks/:id/update`` and ``/done``, §2.3).

A runner that lets a host report back generates a password for its task (the username is the
task's execution plan id) and hands the host ``tokenize(task_id, password)`` as a Basic token.
``update`` checks the token and keeps it; ``done`` checks and consumes it. Passwords live in
memory only: a restart invalidates them, as in the original.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets


class OtpManager:
    def __init__(self) -> None:
        self._passwords: dict[str, str] = {}

    def generate(self, username: str) -> str:
        """A fresh password for ``username``; any previous one stops working."""
        password = secrets.token_hex(16)
        self._passwords[username] = password
        return password

    @staticmethod
    def tokenize(username: str, password: str) -> str:
        return base64.b64encode(f"{username}:{password}".encode()).decode("ascii")

    def authenticate(
        self, token: str, expected_user: str | None = None, clear: bool = True
    ) -> bool:
        """Does ``token`` carry the current password of its user (``expected_user`` if given)?

        On success with ``clear`` the password is consumed. A token without ``user:`` never
        matches (the original let such a token match a user without a password).
        """
        try:
            decoded = base64.b64decode(token.strip() + "===", validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        username, sep, password = decoded.partition(":")
        if not sep or not username:
            return False
        if expected_user is not None and username != expected_user:
            return False
        stored = self._passwords.get(username)
        if stored is None or not hmac.compare_digest(stored.encode(), password.encode()):
            return False
        if clear:
            self._passwords.pop(username, None)
        return True

    def drop(self, username: str, password: str) -> None:
        """Forget ``username``'s password, but only if it is still ``password``."""
        stored = self._passwords.get(username)
        if stored is not None and hmac.compare_digest(stored.encode(), password.encode()):
            del self._passwords[username]

    def __len__(self) -> int:
        return len(self._passwords)
