"""An MQTT subscriber for tests: what the proxy published, as the hosts would receive it.

``async with subscriber("yggdrasil/web1/data/in") as inbox`` subscribes (QoS 1) on the test
broker (mosquitto on 127.0.0.1:1883, see ``scripts/test-deps.sh``) before returning; each
message lands in ``inbox.messages`` as ``Received(topic, payload, at)`` (``payload`` decoded
from JSON, ``at`` the loop time), and ``await inbox.next()`` waits for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from .certs import Pki
from .services import free_port

BROKER = "127.0.0.1"
PORT = 1883


@dataclass
class Received:
    topic: str
    payload: Any
    at: float


@dataclass
class Inbox:
    messages: list[Received] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _read: int = 0

    async def next(self, timeout: float = 5.0) -> Received:
        """The next message not returned yet (AssertionError after ``timeout`` seconds)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._read >= len(self.messages):
            self._arrived.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"no MQTT message within {timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        self._read += 1
        return self.messages[self._read - 1]

    async def quiet(self, seconds: float) -> None:
        """Assert that nothing new arrives for ``seconds``."""
        count = len(self.messages)
        await asyncio.sleep(seconds)
        assert len(self.messages) == count, self.messages[count:]


@contextlib.asynccontextmanager
async def subscriber(*topics: str, port: int = PORT) -> AsyncIterator[Inbox]:
    inbox = Inbox()
    async with aiomqtt.Client(BROKER, port) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)

        async def read() -> None:
            async for message in client.messages:
                payload = message.payload
                text = payload.decode() if isinstance(payload, bytes | bytearray) else payload
                inbox.messages.append(
                    Received(
                        str(message.topic),
                        json.loads(text),  # type: ignore[arg-type]
                        asyncio.get_running_loop().time(),
                    )
                )
                inbox._arrived.set()

        reader = asyncio.create_task(read())
        try:
            yield inbox
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


class Broker:
    """A private mosquitto: ``port`` plain (anonymous), ``tls_port`` mutual TLS with ``pki``'s
    CA and server certificate. :meth:`stop` and :meth:`start` again keep the ports."""

    def __init__(self, pki: Pki, directory: Path) -> None:
        self.pki = pki
        self.directory = directory
        self.port = free_port()
        self.tls_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "mosquitto.log"

    def _config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "mosquitto.conf"
        lines = [
            "per_listener_settings false",
            "allow_anonymous true",
            "persistence false",
            f"listener {self.port} {BROKER}",
            f"listener {self.tls_port} {BROKER}",
            f"cafile {self.pki.ca_cert}",
            f"certfile {self.pki.server_cert}",
            f"keyfile {self.pki.server_key}",
            "require_certificate true",
        ]
        if os.geteuid() == 0:
            lines.insert(0, "user root")  # keep reading the test's private files
        config.write_text("\n".join(lines) + "\n")
        return config

    async def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        config = self._config()
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(
                [binary, "-c", str(config)], stdout=output, stderr=subprocess.STDOUT
            )
        await self._listening(self.port)
        await self._listening(self.tls_port)

    async def _listening(self, port: int) -> None:
        assert self.process is not None
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            try:
                _, writer = await asyncio.open_connection(BROKER, port)
                writer.close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise AssertionError(f"mosquitto exited: {self.log.read_text()}") from None
                if asyncio.get_running_loop().time() > deadline:
                    message = f"mosquitto does not listen: {self.log.read_text()}"
                    raise AssertionError(message) from None
                await asyncio.sleep(0.02)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.asynccontextmanager
async def private_broker(pki: Pki, directory: Path) -> AsyncIterator[Broker]:
    """A private mosquitto (``scripts/test-deps.sh`` installs it), see :class:`Broker`."""
    broker = Broker(pki, directory)
    try:
        await broker.start()
        yield broker
    finally:
        broker.stop()
