"""Effective-user methods (§5.1): prefixes, prompts, the responder and the secret filter."""

from __future__ import annotations

import pytest

from smart_proxy_remote_execution_ssh.user_method import (
    MASK,
    DzdoUserMethod,
    PasswordResponder,
    SecretFilter,
    SudoUserMethod,
    SuUserMethod,
    UserMethod,
    user_method,
)

SCRIPT = "/var/tmp/foreman-ssh-cmd-1/script"


def test_noop_when_no_effective_user_or_same_user() -> None:
    for method in (user_method("root", None), user_method("root", "root", "su")):
        assert type(method) is UserMethod
        assert not method.switches_user
        assert method.cli_command_prefix() == ""
        assert method.prompt is None
        assert method.command(SCRIPT) == f"{SCRIPT} < /dev/null"


def test_sudo() -> None:
    method = user_method("admin", "app", "sudo")
    assert isinstance(method, SudoUserMethod) and method.switches_user
    assert method.cli_command_prefix() == "sudo -p 'rex login: ' -u app "
    assert method.command(SCRIPT) == f"sudo -p 'rex login: ' -u app {SCRIPT} < /dev/null"
    assert method.prompt is not None and method.prompt.search("rex login: ")
    assert not method.prompt.search("Password: ")


def test_dzdo() -> None:
    method = user_method("admin", "app", "dzdo")
    assert isinstance(method, DzdoUserMethod)
    assert method.command(SCRIPT) == f"dzdo -u app {SCRIPT} < /dev/null"
    assert method.prompt is not None and method.prompt.search("[dzdo] PASSWORD for admin:")


def test_su_passes_the_script_as_one_argument() -> None:
    method = user_method("admin", "app", "su")
    assert isinstance(method, SuUserMethod)
    assert method.cli_command_prefix() == "su - app -c "
    assert method.command(SCRIPT) == f"su - app -c 'exec {SCRIPT} < /dev/null'"
    assert method.prompt is not None and method.prompt.search("password: ")


def test_user_names_are_quoted() -> None:
    assert "-u 'a b' " in user_method("root", "a b").command(SCRIPT)


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="effective_user_method 'pbrun' not supported"):
        user_method("root", "app", "pbrun")


def test_responder_answers_once_until_reset() -> None:
    responder = PasswordResponder(user_method("admin", "app"), "pw")
    assert not responder.all_data_sent
    assert responder.feed("some output\n") is None
    assert responder.feed("rex lo") is None
    assert responder.feed("gin: ") == b"pw\n"  # a prompt split over two reads
    assert responder.password_sent and responder.all_data_sent
    assert responder.feed("rex login: ") is None
    responder.reset()
    assert responder.feed("rex login: ") == b"pw\n"


def test_responder_without_password_sends_a_newline() -> None:
    responder = PasswordResponder(user_method("admin", "app", "su"), None)
    assert responder.all_data_sent
    assert responder.feed("Password: ") == b"\n"


def test_noop_responder_never_answers() -> None:
    assert PasswordResponder(user_method("root", None), "pw").feed("rex login: ") is None


def test_filter_masks_the_password() -> None:
    f = SecretFilter("hunter2")
    assert f.feed("before hunter2 after\n") == f"before {MASK} after\n"
    assert f.flush() == ""


def test_filter_catches_a_password_split_over_chunks() -> None:
    f = SecretFilter("hunter2")
    out = f.feed("x hun")
    assert out == "x "
    out += f.feed("ter2 y")
    assert out == f"x {MASK} y"
    out = f.feed("abc hunt")
    assert out == "abc "
    assert f.feed("ing\n") == "hunting\n"  # not the password after all
    assert f.feed("tail h") == "tail "
    assert f.flush() == "h"


def test_filter_without_secret_passes_everything() -> None:
    f = SecretFilter(None)
    assert f.feed("anything") == "anything"
    assert f.clean("x") == "x"
    assert SecretFilter("pw").clean("a pw b") == f"a {MASK} b"
