"""MQTT notifications of pull mode (``mode: pull-mqtt``, §7.3).

A host running the yggdrasil ``foreman`` worker subscribes to ``yggdrasil/<identity>/data/in``.
When a job is stored for it, the proxy publishes a *start* message there (QoS 1, not retained);
the host then fetches the job over HTTPS. A *cancel* message tells it to stop a job it fetched.

:class:`Tracker` is the bookkeeping of the original's dispatcher, without any I/O: ``jobs``
(uuid → topic and payload), a FIFO ``pending`` list, and the sets ``hot`` (sent during this
tick), ``cold`` (sent during the previous one) and ``running`` (fetched by the host).

:class:`MqttDispatcher` is one asyncio task owned by the plugin, started and stopped with the
core. It publishes what the tracker lets through (at most ``mqtt_rate_limit`` jobs in flight:
running + hot + cold), ticks every ``mqtt_ttl`` seconds while there is work (cold jobs get a
resend scheduled ``mqtt_resend_interval`` seconds later and give their slot back; hot jobs
become cold), and publishes cancel messages at once, bypassing the limit. Resends wait in a
heap inside the same task: no task or thread per job. An error in a round is logged and the
loop carries on with its state (the original's supervisor).

:class:`MqttConnection` keeps one connection to the broker (``aiomqtt``) for every publish
instead of the original's connection per message; a failed publish drops the connection and
is tried once more on a fresh one. A broker that cannot be reached is logged and left alone
for a moment; the jobs stay in the tracker and are sent again by the resend logic, so a broker
outage never fails a job's planning.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import json
import logging
import ssl
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiomqtt

from smart_proxy.tls import TLSConfigError, client_context

from .settings import TlsFiles

log = logging.getLogger("smart_proxy_remote_execution_ssh.mqtt")

PUBLISH_CHUNK = 100
"""Notifications published concurrently in one round."""


# ---- messages ------------------------------------------------------------------------------------


def topic_for(identity: str) -> str:
    return f"yggdrasil/{identity}/data/in"


def _envelope(content: str, metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "data",
        "message_id": str(uuidlib.uuid4()),
        "version": 1,
        "sent": datetime.now(UTC).isoformat(timespec="seconds"),
        "directive": "foreman",
        "content": content,
        "metadata": metadata,
    }


def start_message(job_uuid: str, proxy_url: str, effective_user: str | None) -> dict[str, Any]:
    """The yggdrasil "data" envelope announcing a job (§7.3)."""
    base = f"{proxy_url.rstrip('/')}/ssh/jobs/{job_uuid}"
    return _envelope(
        base,
        {
            "event": "start",
            "job_uuid": job_uuid,
            "return_url": f"{base}/update",
            "version": "v1",
            "effective_user": effective_user,
        },
    )


def cancel_message(job_uuid: str, proxy_url: str) -> dict[str, Any]:
    """The envelope asking the host to stop a job (§7.3)."""
    return _envelope(
        f"{proxy_url.rstrip('/')}/ssh/jobs/{job_uuid}/cancel",
        {"event": "cancel", "job_uuid": job_uuid},
    )


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


# ---- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MqttConfig:
    broker: str
    port: int
    tls: bool = False
    tls_files: TlsFiles = TlsFiles()
    rate_limit: int | None = None
    ttl: float = 5.0
    resend_interval: float = 900.0
    timeout: float = 10.0
    """Seconds a connection attempt or the acknowledgement of one publish may take."""

    @classmethod
    def from_settings(cls, values: Mapping[str, Any], tls_files: TlsFiles) -> MqttConfig:
        """From the checked settings (:func:`~.settings.check` derived ``mqtt_tls``)."""
        return cls(
            broker=str(values["mqtt_broker"]),
            port=int(values["mqtt_port"]),
            tls=bool(values.get("mqtt_tls")),
            tls_files=tls_files,
            rate_limit=values.get("mqtt_rate_limit"),
            ttl=float(values["mqtt_ttl"]),
            resend_interval=float(values["mqtt_resend_interval"]),
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        files = self.tls_files
        return client_context(cafile=files.ca, certfile=files.cert, keyfile=files.key)


# ---- bookkeeping ---------------------------------------------------------------------------------


class Tracker:
    """The dispatcher's state (§7.3), no I/O: what may be published now, what is due again."""

    def __init__(self, rate_limit: int | None = None) -> None:
        self.rate_limit = rate_limit
        self.jobs: dict[str, tuple[str, bytes]] = {}
        self.pending: list[str] = []
        self.hot: dict[str, None] = {}
        self.cold: dict[str, None] = {}
        self.running: dict[str, None] = {}

    def new(self, uuid: str, topic: str, payload: bytes) -> None:
        """A job to announce: remembered and appended to ``pending``."""
        self.jobs[uuid] = (topic, payload)
        self._unlist(uuid)
        self.pending.append(uuid)

    def pending_count(self) -> int:
        """How many pending jobs may be published now."""
        if self.rate_limit is None:
            return len(self.pending)
        in_flight = len(self.running) + len(self.hot) + len(self.cold)
        return max(0, min(len(self.pending), self.rate_limit - in_flight))

    def take(self) -> list[str]:
        """The jobs to publish now (first pending first); they become ``hot``."""
        count = self.pending_count()
        batch, self.pending = self.pending[:count], self.pending[count:]
        for uuid in batch:
            self.hot[uuid] = None
        return batch

    def tick(self) -> list[str]:
        """One ``mqtt_ttl`` period passed: returns the cold jobs (their resend is due later;
        they leave every set), then hot becomes cold."""
        leaving = list(self.cold)
        self.cold, self.hot = self.hot, {}
        return leaving

    def resend(self, uuid: str) -> bool:
        """A resend is due: a known job that is not in flight goes back to ``pending``."""
        if uuid not in self.jobs or uuid in self.running or uuid in self.hot or uuid in self.cold:
            return False
        if uuid not in self.pending:
            self.pending.append(uuid)
        return True

    def mark_running(self, uuid: str) -> None:
        """The host fetched the job: it holds a slot until it is done."""
        if uuid not in self.jobs:
            return
        self._unlist(uuid)
        self.running[uuid] = None

    def done(self, uuid: str) -> None:
        """The job ended: forget it (its slot is free)."""
        self.jobs.pop(uuid, None)
        self._unlist(uuid)

    def payload(self, uuid: str) -> tuple[str, bytes] | None:
        return self.jobs.get(uuid)

    @property
    def needs_processing(self) -> bool:
        """Whether the tick timer has to run: something pending, hot or cold."""
        return bool(self.pending or self.hot or self.cold)

    def _unlist(self, uuid: str) -> None:
        if uuid in self.pending:
            self.pending.remove(uuid)
        self.hot.pop(uuid, None)
        self.cold.pop(uuid, None)
        self.running.pop(uuid, None)


# ---- the connection ------------------------------------------------------------------------------


class MqttUnavailable(Exception):
    """The broker cannot be reached or did not acknowledge a message."""


class MqttConnection:
    """One reused connection to the broker; reconnects when a publish fails."""

    def __init__(self, config: MqttConfig) -> None:
        self.config = config
        self._client: aiomqtt.Client | None = None
        self._lock = asyncio.Lock()
        self._down_until = 0.0
        self._down_reason = ""
        self.connects = 0
        """How many connections were made (one, as long as the broker keeps it)."""

    async def _connected(self) -> aiomqtt.Client:
        async with self._lock:
            if self._client is not None:
                return self._client
            loop = asyncio.get_running_loop()
            if loop.time() < self._down_until:
                raise MqttUnavailable(self._down_reason)
            try:
                client = aiomqtt.Client(
                    self.config.broker,
                    self.config.port,
                    identifier=f"foreman-proxy-{uuidlib.uuid4().hex[:12]}",
                    tls_context=self.config.ssl_context(),
                    timeout=self.config.timeout,
                    logger=log,
                )
                await client.__aenter__()
            except (aiomqtt.MqttError, OSError, TLSConfigError, ssl.SSLError) as exc:
                where = f"{self.config.broker}:{self.config.port}"
                self._down_reason = f"cannot connect to the MQTT broker {where}: {exc}"
                # Not again for a moment: a round of many jobs makes one attempt, not one each.
                self._down_until = loop.time() + min(self.config.ttl, 5.0)
                raise MqttUnavailable(self._down_reason) from exc
            self.connects += 1
            self._client = client
            log.info(
                "connected to the MQTT broker %s:%s%s",
                self.config.broker,
                self.config.port,
                " over TLS" if self.config.tls else "",
            )
            return client

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1 and wait for the broker's acknowledgement."""
        for attempt in (1, 2):
            client = await self._connected()
            try:
                await client.publish(topic, payload, qos=1, timeout=self.config.timeout)
                return
            except aiomqtt.MqttError as exc:
                await self._drop(client)
                if attempt == 2:
                    raise MqttUnavailable(f"publishing to {topic} failed: {exc}") from exc
                log.info("MQTT publish failed (%s); reconnecting", exc)

    async def _drop(self, client: aiomqtt.Client) -> None:
        async with self._lock:
            if self._client is client:
                self._client = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.__aexit__(None, None, None), 2.0)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.__aexit__(None, None, None), 2.0)


# ---- the dispatcher ------------------------------------------------------------------------------


class MqttDispatcher:
    """The single task that publishes notifications (see the module docstring).

    Its methods are plain calls from the event loop (actions, endpoints); they record the change
    and wake the task.
    """

    def __init__(self, config: MqttConfig) -> None:
        self.config = config
        self.tracker = Tracker(config.rate_limit)
        self.connection = MqttConnection(config)
        self._urgent: collections.deque[tuple[str, bytes]] = collections.deque()
        self._resends: list[tuple[float, int, str]] = []
        self._sequence = 0
        self._next_tick: float | None = None
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        """Messages the broker acknowledged."""

    # -- what actions and endpoints call ---------------------------------------------------------
    def new(self, uuid: str, topic: str, message: Mapping[str, Any]) -> None:
        """Announce a job (start message), within the rate limit."""
        self.tracker.new(uuid, topic, encode(message))
        self._wakeup.set()

    def running(self, uuid: str) -> None:
        """The host fetched the job."""
        self.tracker.mark_running(uuid)
        self._wakeup.set()

    def track_running(self, uuid: str, topic: str, message: Mapping[str, Any]) -> None:
        """A job the host fetched before a restart: it holds its slot again."""
        self.tracker.jobs[uuid] = (topic, encode(message))
        self.tracker.mark_running(uuid)
        self._wakeup.set()

    def done(self, uuid: str) -> None:
        """The job ended: forget it and let the next one through."""
        self.tracker.done(uuid)
        self._wakeup.set()

    def cancel(self, topic: str, message: Mapping[str, Any]) -> None:
        """Publish a cancel message as soon as possible, whatever the rate limit."""
        self._urgent.append((topic, encode(message)))
        self._wakeup.set()

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def running_task(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._wakeup.set()
            self._task = asyncio.create_task(self._run(), name="rex-mqtt-dispatcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.connection.close()

    # -- the task --------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:  # the dispatcher outlives a failed round
                log.exception("MQTT dispatcher round failed; carrying on")
                await asyncio.sleep(min(self.config.ttl, 1.0))

    async def _round(self) -> None:
        loop = asyncio.get_running_loop()
        self._wakeup.clear()
        while self._urgent:
            topic, payload = self._urgent.popleft()
            await self._publish(topic, payload, "cancel")
        now = loop.time()
        while self._resends and self._resends[0][0] <= now:
            _, _, uuid = heapq.heappop(self._resends)
            if self.tracker.resend(uuid):
                log.debug("resending the notification of job %s", uuid)
        if self._next_tick is not None and now >= self._next_tick:
            self._next_tick = None
            for uuid in self.tracker.tick():
                self._sequence += 1
                heapq.heappush(
                    self._resends, (now + self.config.resend_interval, self._sequence, uuid)
                )
        batch = self.tracker.take()
        for start in range(0, len(batch), PUBLISH_CHUNK):
            await asyncio.gather(
                *(self._publish_job(uuid) for uuid in batch[start : start + PUBLISH_CHUNK])
            )
        now = loop.time()
        if not self.tracker.needs_processing:
            self._next_tick = None
        elif self._next_tick is None:
            self._next_tick = now + self.config.ttl
        deadlines = [self._next_tick] if self._next_tick is not None else []
        if self._resends:
            deadlines.append(self._resends[0][0])
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _publish_job(self, uuid: str) -> None:
        entry = self.tracker.payload(uuid)
        if entry is not None:
            await self._publish(entry[0], entry[1], f"start of job {uuid}")

    async def _publish(self, topic: str, payload: bytes, what: str) -> None:
        try:
            await self.connection.publish(topic, payload)
        except MqttUnavailable as exc:
            # A start message is sent again by the resend logic; a cancel is not repeated
            # (the job's pickup or execution timeout still ends it on the proxy).
            log.warning("MQTT notification (%s) not sent: %s", what, exc)
            return
        self.published += 1
        log.debug("MQTT notification (%s) published to %s", what, topic)
