"""Singleton actions: at most one active plan per action class (spec §1.9).

Mix ``Singleton`` into an action class. Planning it asks for the coordinator lock
``singleton-action:<class name>`` owned by ``execution-plan:<uuid>``; the lock is taken when the
plan is stored, and if another plan holds it the planning fails with "Action X is already
active". When its run starts the lock is taken again unless the plan still holds it (it is
released whenever the plan pauses); if another plan took it meanwhile, the step fails. Every
singleton lock of a plan is released when the plan enters ``paused`` or ``stopped``; locks left
behind by a crash are released at the next world start (``dynflow.locks``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from .action import Action
from .coordinator import SINGLETON_LOCK, plan_owner, singleton_lock_id
from .errors import ActionFailed
from .execution_plan import LockRequest
from .locks import lock_data
from .middleware import Middleware, MiddlewareRules


class SingletonMiddleware(Middleware):
    """Asks for the lock before ``plan`` and makes sure it is held before ``run``."""

    def plan(self, action: Action, next_: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        if isinstance(action, Singleton):
            action.request_singleton_lock()
        next_(*args, **kwargs)

    async def run(
        self, action: Action, next_: Callable[[Any], Awaitable[None]], event: Any
    ) -> None:
        if isinstance(action, Singleton):
            await action.singleton_lock()
        await next_(event)


class Singleton(Action, abstract=True):
    """Mixin: only one execution plan with this action class may be active at a time."""

    singleton: ClassVar[bool] = True
    middleware = MiddlewareRules([SingletonMiddleware])

    @classmethod
    def singleton_lock_id(cls) -> str:
        return singleton_lock_id(cls.name())

    def _singleton_message(self) -> str:
        return f"Action {self.name()} is already active"

    def request_singleton_lock(self) -> None:
        """Plan phase: the lock is taken when the plan is stored (or planning fails)."""
        assert self.execution_plan is not None
        self.execution_plan.lock_requests.append(
            LockRequest(
                SINGLETON_LOCK,
                self.singleton_lock_id(),
                plan_owner(self.execution_plan_id),
                lock_data(self.execution_plan_id, self.world.id if self.world else None),
                self._singleton_message(),
                self.id,
            )
        )

    async def _lock_owner(self) -> str | None:
        assert self.world is not None
        records = await self.world.store.find_records(
            cls=SINGLETON_LOCK, record_id=self.singleton_lock_id()
        )
        return str(records[0]["owner_id"]) if records else None

    async def holds_singleton_lock(self) -> bool:
        return await self._lock_owner() == plan_owner(self.execution_plan_id)

    async def singleton_lock(self) -> None:
        """Take the lock unless this plan holds it; fail if another plan does."""
        assert self.world is not None
        mine = plan_owner(self.execution_plan_id)
        owner = await self._lock_owner()
        if owner == mine:
            return
        if owner is None:
            store = self.world.store
            stmt = store.acquire_lock_stmt(
                SINGLETON_LOCK,
                self.singleton_lock_id(),
                mine,
                lock_data(self.execution_plan_id, self.world.id),
            )
            if await store.write(self.execution_plan_id, [stmt]):
                return
            if await self._lock_owner() == mine:
                return
        raise ActionFailed(self._singleton_message())

    async def singleton_unlock(self) -> None:
        """Release the lock if this plan holds it (another plan's lock is left alone)."""
        assert self.world is not None
        await self.world.store.release_lock(
            SINGLETON_LOCK, self.singleton_lock_id(), plan_owner(self.execution_plan_id)
        )
