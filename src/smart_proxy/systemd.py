"""sd_notify(3) without libsystemd: tell systemd (``Type=notify`` units) about our state."""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)


def notify(state: str = "READY=1", *, unset_environment: bool = False) -> bool:
    """Send ``state`` (e.g. ``READY=1``, ``STOPPING=1``, ``STATUS=...``) to ``$NOTIFY_SOCKET``.

    The socket may be a filesystem path or an abstract name (``@name``). Returns True when the
    message was sent, False outside systemd (no ``NOTIFY_SOCKET``) or on a send error (logged).
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if unset_environment:
        os.environ.pop("NOTIFY_SOCKET", None)
    if not address:
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        logger.warning("NOTIFY_SOCKET %r is not a unix socket; not notifying systemd", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        logger.warning("Could not notify systemd (%s) via %s: %s", state, address, exc)
        return False
    logger.debug("Notified systemd: %s", state)
    return True
