"""The execution-plan cleaner: deletes old finished plans, and old paused ones too (§4.4)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

from .coordinator import CLEANER_ID, CLEANER_LOCK
from .persistence.health import StoreUnavailable
from .serialization import utcnow

if TYPE_CHECKING:
    from .persistence.store import Store

log = logging.getLogger("dynflow.cleaner")


class CleanerSettings(Protocol):
    """How old a plan gets before it is deleted (``WorldConfig`` is one)."""

    @property
    def stopped_max_age(self) -> float: ...
    @property
    def paused_max_age(self) -> float: ...


class CleanerWorld(Protocol):
    """What the cleaner uses of its world (``dynflow.world.World`` is one)."""

    @property
    def id(self) -> str: ...
    @property
    def store(self) -> Store: ...
    @property
    def config(self) -> CleanerSettings: ...
    def is_running(self, plan_id: str) -> bool: ...


class Cleaner:
    """Deletes stopped plans older than ``stopped_max_age`` and paused ones older than
    ``paused_max_age`` (the original never removed those). One world of a cluster cleans at a
    time, holding the ``execution-plan-cleaner`` lock."""

    def __init__(self, world: CleanerWorld) -> None:
        self.world = world

    async def clean(self) -> int:
        store = self.world.store
        config = self.world.config
        now = utcnow()
        deleted = 0
        if not await store.acquire_lock(
            CLEANER_LOCK, CLEANER_ID, self.world.id, {"world_id": self.world.id}
        ):
            return 0
        try:
            for states, age in (
                (["stopped"], config.stopped_max_age),
                (["paused"], config.paused_max_age),
            ):
                while True:
                    ids = await store.find_old_plans(states, now - timedelta(seconds=age))
                    ids = [i for i in ids if not self.world.is_running(i)]
                    if not ids:
                        break
                    deleted += await store.delete_plans(ids)
        finally:
            # refused only when the world stops during an outage: then the cancellation (or
            # the error) must go on, and the lock is freed with the world's other records
            with contextlib.suppress(StoreUnavailable):
                await store.release_lock(CLEANER_LOCK, CLEANER_ID, self.world.id)
        if deleted:
            log.info("cleaner deleted %d execution plans", deleted)
        return deleted

    async def loop(self, interval: float) -> None:
        while True:
            try:
                await self.clean()
            except Exception:
                log.exception("execution plan cleaner failed")
            await asyncio.sleep(interval)
