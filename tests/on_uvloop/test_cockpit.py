"""Cockpit sessions on uvloop, the event loop the shipped ``smart-proxy`` runs on (``POST
/ssh/session`` once died there on an assertion in the raw takeover and the client hung)."""

from __future__ import annotations

from tests.smart_proxy_remote_execution_ssh.test_cockpit import (  # noqa: F401 - run again
    cockpit_log,
    pki,
    test_echo_through_the_session,
    test_stopping_the_proxy_ends_an_open_session,
    test_unreachable_host_and_bad_bodies_are_bad_requests,
)
