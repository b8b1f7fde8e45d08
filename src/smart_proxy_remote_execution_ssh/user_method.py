"""Effective-user methods (§5.1): noop, sudo, dzdo and su, and the password prompt responder.

A user method turns the path of the script into the command that runs it as the effective
user. When the method asks for a password, a :class:`PasswordResponder` answers the prompt
once with the password and a newline, and a :class:`SecretFilter` keeps the password out of
everything published or logged.
"""

from __future__ import annotations

import re
import shlex

MASK = "*****"
"""What a password found in the output is replaced with."""

PROMPT_WINDOW = 256
"""How many characters of recent output the responder keeps to match a prompt split over reads."""


class UserMethod:
    """No user switch: the script runs as the SSH user."""

    name = "noop"
    prompt: re.Pattern[str] | None = None

    def __init__(self, effective_user: str | None = None) -> None:
        self.effective_user = effective_user

    @property
    def switches_user(self) -> bool:
        """True when the command runs as another user (ACLs and the user preflight apply)."""
        return False

    def cli_command_prefix(self) -> str:
        """The text put in front of the quoted script path (§5.1)."""
        return ""

    def command(self, script_path: str) -> str:
        """The shell command running ``script_path`` as the effective user, stdin /dev/null.

        (su keeps its own stdin, the terminal its password prompt is answered on; the
        script it runs gets /dev/null.)
        """
        return f"{shlex.quote(script_path)} < /dev/null"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.effective_user!r}>"


class SudoUserMethod(UserMethod):
    name = "sudo"
    prompt = re.compile(re.escape("rex login: "))

    @property
    def switches_user(self) -> bool:
        return True

    def cli_command_prefix(self) -> str:
        return f"sudo -p 'rex login: ' -u {shlex.quote(str(self.effective_user))} "

    def command(self, script_path: str) -> str:
        return f"{self.cli_command_prefix()}{shlex.quote(script_path)} < /dev/null"


class DzdoUserMethod(SudoUserMethod):
    name = "dzdo"
    prompt = re.compile("password", re.IGNORECASE)

    def cli_command_prefix(self) -> str:
        return f"dzdo -u {shlex.quote(str(self.effective_user))} "


class SuUserMethod(SudoUserMethod):
    name = "su"
    prompt = re.compile("Password: ", re.IGNORECASE)

    def cli_command_prefix(self) -> str:
        return f"su - {shlex.quote(str(self.effective_user))} -c "

    def command(self, script_path: str) -> str:
        # One quoted argument that execs the script with stdin from /dev/null.
        inner = f"exec {shlex.quote(script_path)} < /dev/null"
        return self.cli_command_prefix() + shlex.quote(inner)


_METHODS: dict[str, type[UserMethod]] = {
    "sudo": SudoUserMethod,
    "dzdo": DzdoUserMethod,
    "su": SuUserMethod,
}


def user_method(ssh_user: str, effective_user: str | None, method: str = "sudo") -> UserMethod:
    """The method of §5.1: noop when there is no effective user or it is the SSH user."""
    if method not in _METHODS:
        raise ValueError(f"effective_user_method '{method}' not supported")
    if not effective_user or effective_user == ssh_user:
        return UserMethod(effective_user)
    return _METHODS[method](effective_user)


def _partial_suffix(text: str, needle: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``needle``."""
    for length in range(min(len(text), len(needle) - 1), 0, -1):
        if needle.startswith(text[-length:]):
            return length
    return 0


class SecretFilter:
    """Replaces every occurrence of ``secret`` in a stream of text chunks with :data:`MASK`.

    A secret split over two chunks is caught too: a chunk's tail that could be the start of
    the secret is held back until the next chunk (or :meth:`flush`).
    """

    def __init__(self, secret: str | None) -> None:
        self.secret = secret or ""
        self._pending = ""

    def feed(self, text: str) -> str:
        """The part of ``text`` (after what was held back) that is safe to publish now."""
        if not self.secret:
            return text
        text = (self._pending + text).replace(self.secret, MASK)
        keep = _partial_suffix(text, self.secret)
        if keep:
            self._pending = text[-keep:]
            return text[:-keep]
        self._pending = ""
        return text

    def flush(self) -> str:
        """What was held back (it turned out not to be the secret)."""
        text, self._pending = self._pending, ""
        return text

    def clean(self, text: str) -> str:
        """``text`` with the secret masked (a one-off string, e.g. a log message)."""
        return text.replace(self.secret, MASK) if self.secret else text


class PasswordResponder:
    """Answers the user method's password prompt once (§5.1).

    Feed it the output as it arrives; :meth:`feed` returns the bytes to write to the
    command's stdin (``password + "\\n"``; a missing password sends a bare newline) the first
    time the prompt shows up, else None. :meth:`reset` re-arms it (before the main command).
    """

    def __init__(
        self, method: UserMethod, password: str | None, *, on_repeat: bytes | None = None
    ) -> None:
        self.method = method
        self.password = password or ""
        self.on_repeat = on_repeat
        """Sent (once) when the prompt shows up again after the password: the password was
        wrong. EOF (``b"\\x04"`` on a terminal) makes sudo/su give up instead of waiting."""
        self.repeat_sent = False
        self.password_sent = False
        self.last_prompt = ""
        """The text of the prompt answered last."""
        self._recent = ""

    @property
    def all_data_sent(self) -> bool:
        return not self.password or self.password_sent

    def reset(self) -> None:
        self.password_sent = False
        self.repeat_sent = False
        self._recent = ""

    def feed(self, text: str) -> bytes | None:
        prompt = self.method.prompt
        if prompt is None:
            return None
        if self.password_sent and (self.on_repeat is None or self.repeat_sent):
            return None
        self._recent = (self._recent + text)[-PROMPT_WINDOW:]
        match = prompt.search(self._recent)
        if match is None:
            return None
        self._recent = ""
        if self.password_sent:
            self.repeat_sent = True
            return self.on_repeat
        self.password_sent = True
        self.last_prompt = match.group(0)
        return (self.password + "\n").encode()
