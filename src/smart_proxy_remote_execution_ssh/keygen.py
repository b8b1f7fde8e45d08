"""``python -m smart_proxy_remote_execution_ssh.keygen PATH``: make the proxy's SSH key if missing.

Writes an ed25519 private key (mode 600) and ``PATH.pub``, so a fresh checkout's ``make run``
has the key the `script` plugin needs. An existing key is left alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import asyncssh


def ensure_key(path: str | os.PathLike[str]) -> bool:
    """Create the key pair at ``path`` unless it exists; True when it was created."""
    key_path = Path(path).expanduser()
    if key_path.exists():
        return False
    key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="foreman-proxy")
    old = os.umask(0o077)
    try:
        key.write_private_key(str(key_path))
    finally:
        os.umask(old)
    key.write_public_key(str(key_path) + ".pub")
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m smart_proxy_remote_execution_ssh.keygen PATH", file=sys.stderr)
        return 2
    try:
        if ensure_key(args[0]):
            print(f"created SSH key {args[0]} (and {args[0]}.pub)")
    except OSError as exc:
        print(f"cannot create SSH key {args[0]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
