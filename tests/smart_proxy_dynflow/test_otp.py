"""One-time passwords (cases 31-38 of §9.1)."""

from __future__ import annotations

import base64

from smart_proxy_dynflow.otp import OtpManager


def test_no_passwords_generated_authenticate_is_false():
    assert OtpManager().authenticate(OtpManager.tokenize("user", "pw")) is False


def test_password_is_random_hex_string():
    otp = OtpManager()
    first, second = otp.generate("a"), otp.generate("b")
    assert isinstance(first, str) and len(first) == 32 and int(first, 16) >= 0
    assert first != second


def test_known_vector():
    assert OtpManager.tokenize("myuser", "123456789") == "bXl1c2VyOjEyMzQ1Njc4OQ=="


def test_authenticate_with_known_vector_and_single_use():
    otp = OtpManager()
    otp._passwords["myuser"] = "123456789"
    token = "bXl1c2VyOjEyMzQ1Njc4OQ=="
    assert otp.authenticate(token, expected_user="myuser", clear=False)
    assert otp.authenticate(token, expected_user="myuser")  # clear
    assert not otp.authenticate(token, expected_user="myuser")


def test_wrong_password_does_not_consume():
    otp = OtpManager()
    password = otp.generate("task")
    assert not otp.authenticate(OtpManager.tokenize("task", "wrong"))
    assert otp.authenticate(OtpManager.tokenize("task", password))


def test_expected_user_must_match():
    otp = OtpManager()
    password = otp.generate("task-a")
    otp.generate("task-b")
    assert not otp.authenticate(OtpManager.tokenize("task-a", password), expected_user="task-b")
    assert otp.authenticate(OtpManager.tokenize("task-a", password), expected_user="task-a")


def test_drop_needs_the_exact_password():
    otp = OtpManager()
    password = otp.generate("task")
    otp.drop("task", "other")
    assert len(otp) == 1
    otp.drop("task", password)
    assert len(otp) == 0


def test_regenerating_invalidates_the_old_password():
    otp = OtpManager()
    old = otp.generate("task")
    new = otp.generate("task")
    assert not otp.authenticate(OtpManager.tokenize("task", old), clear=False)
    assert otp.authenticate(OtpManager.tokenize("task", new))


def test_tokens_without_colon_or_garbage_never_match():
    otp = OtpManager()
    otp.generate("task")
    assert not otp.authenticate(base64.b64encode(b"task").decode())
    assert not otp.authenticate("%%% not base64 %%%")
    assert not otp.authenticate(base64.b64encode(b"\xff\xfe:x").decode())
