"""The store: SQLAlchemy (async) on SQLite or PostgreSQL, migrated at start, group-committed.

Reads use the connection pool (while the database cannot be reached they wait for a connection,
except inside ``health.impatient()``); every write goes through the ``Writer`` so that
concurrent plans share transactions. Nothing here reads a row before writing it, and changing
one step writes one step row. A SQLite database file (and its WAL) is owner-only:
:func:`prepare_sqlite_file`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid as uuidlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnClause,
    and_,
    bindparam,
    delete,
    event,
    func,
    insert,
    literal_column,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import RowMapping, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from .. import flow as flows
from ..action import Action, resolve_class
from ..errors import PlanUnreadable
from ..execution_plan import ExecutionPlan
from ..serialization import dumps, loads, parse_time
from ..step import STEP_CLASSES, Step
from .delayed import DelayedStore
from .health import StoreHealth, StoreUnavailable, is_impatient, store_failure_cause
from .rows import (
    INSERT_ACTION,
    INSERT_PLAN,
    INSERT_STEP,
    action_row,
    plan_row,
    plan_update_params,
    step_row,
    step_update_params,
)
from .schema import (
    actions,
    coordinator_records,
    execution_plans,
    output_chunks,
    plan_state_params,
    planned_events,
    steps,
)
from .writer import RETRY_FIRST, RETRY_MAX, Stmt, Write, Writer

log = logging.getLogger("dynflow.persistence")

MIGRATIONS = Path(__file__).parent / "migrations"

PLAN_FILTER_COLUMNS = {
    "label",
    "state",
    "result",
    "started_at",
    "ended_at",
    "real_time",
    "execution_time",
    "root_plan_step_id",
    "class",
    "uuid",
}
ORDER_COLUMNS = PLAN_FILTER_COLUMNS - {"uuid"}

# ---- statements, built once so the writer can fold equal ones into executemany --------------
INSERT_CHUNK = insert(output_chunks)
INSERT_EVENT = insert(planned_events)
UPDATE_PLAN = (
    update(execution_plans)
    .where(execution_plans.c.uuid == bindparam("b_uuid"))
    .values(**plan_state_params())
)
GUARDED_PLAN = (
    update(execution_plans)
    .where(
        execution_plans.c.uuid == bindparam("b_uuid"),
        execution_plans.c.state == bindparam("b_from"),
    )
    .values(**plan_state_params())
)
_STEP_VALUES: dict[str, BindParameter[Any]] = dict(
    state=bindparam("state"),
    error=bindparam("error"),
    started_at=bindparam("started_at"),
    ended_at=bindparam("ended_at"),
    real_time=bindparam("real_time"),
    execution_time=bindparam("execution_time"),
    progress_done=bindparam("progress_done"),
    progress_weight=bindparam("progress_weight"),
)
UPDATE_STEP = (
    update(steps)
    .where(steps.c.execution_plan_uuid == bindparam("b_uuid"), steps.c.id == bindparam("b_id"))
    .values(**_STEP_VALUES)
)
GUARDED_STEP = (
    update(steps)
    .where(
        steps.c.execution_plan_uuid == bindparam("b_uuid"),
        steps.c.id == bindparam("b_id"),
        steps.c.state == bindparam("b_from"),
    )
    .values(**_STEP_VALUES)
)
UPDATE_ACTION = (
    update(actions)
    .where(actions.c.execution_plan_uuid == bindparam("b_uuid"), actions.c.id == bindparam("b_id"))
    .values(output=bindparam("output"))
)
UPDATE_ACTION_INPUT = (
    update(actions)
    .where(actions.c.execution_plan_uuid == bindparam("b_uuid"), actions.c.id == bindparam("b_id"))
    .values(input=bindparam("input"))
)
DELETE_EVENT = delete(planned_events).where(planned_events.c.id == bindparam("b_id"))
DELETE_PLAN_EVENTS = delete(planned_events).where(
    planned_events.c.execution_plan_uuid == bindparam("b_uuid")
)
DELETE_LOCK = delete(coordinator_records).where(
    coordinator_records.c.id == bindparam("b_id"),
    coordinator_records.c["class"] == bindparam("b_class"),
)
DELETE_LOCK_OWNED = delete(coordinator_records).where(
    coordinator_records.c.id == bindparam("b_id"),
    coordinator_records.c["class"] == bindparam("b_class"),
    coordinator_records.c.owner_id == bindparam("b_owner"),
)
DELETE_LOCKS_OF_OWNER = delete(coordinator_records).where(
    coordinator_records.c["class"] == bindparam("b_class"),
    coordinator_records.c.owner_id == bindparam("b_owner"),
)
UPDATE_RECORD = (
    update(coordinator_records)
    .where(
        coordinator_records.c.id == bindparam("b_id"),
        coordinator_records.c["class"] == bindparam("b_class"),
    )
    .values(data=bindparam("data"))
)


_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError)


def _unreadable(plan_id: str, part: str, exc: BaseException) -> PlanUnreadable:
    return PlanUnreadable(
        f"execution plan {plan_id} cannot be read: {part} holds data this version cannot "
        f"decode ({type(exc).__name__}: {exc})"
    )


SQLITE_FILE_MODE = 0o600
SQLITE_DIR_MODE = 0o700
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def prepare_sqlite_file(path: Path) -> None:
    """Make the SQLite database file owner-only before SQLite opens it.

    A missing directory is created ``0700`` (its missing parents with the default mode); a
    directory that exists is left as it is (the admin's, e.g. ``/var/lib/foreman-proxy``). The
    file is created ``0600`` (``O_EXCL``, then ``fchmod``: whatever the umask), and an existing
    database file and its ``-wal``/``-shm``/``-journal`` are set to ``0600``; SQLite creates
    its side files with the database file's mode. A file the service may not change (another
    owner) is logged, not fatal.
    """
    directory = path.parent
    if not directory.exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            directory.mkdir(mode=SQLITE_DIR_MODE)
        except FileExistsError:  # created by a concurrent start
            pass
        else:
            os.chmod(directory, SQLITE_DIR_MODE)  # the umask may have taken bits away
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SQLITE_FILE_MODE)
    except FileExistsError:
        pass
    else:
        try:
            os.fchmod(fd, SQLITE_FILE_MODE)
        finally:
            os.close(fd)
    for name in (path, *(path.with_name(path.name + suffix) for suffix in SQLITE_SIDE_FILES)):
        try:
            mode = name.stat().st_mode & 0o777
            if mode != SQLITE_FILE_MODE:
                os.chmod(name, SQLITE_FILE_MODE)
                log.info("%s was mode %04o, now %04o", name, mode, SQLITE_FILE_MODE)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot make %s owner-only (mode 0600): %s", name, exc)


class Store:
    """Persistence of plans, steps, actions, output chunks, planned events and locks."""

    def __init__(self, url: str, *, pool_size: int = 5, sqlite_synchronous: str = "FULL") -> None:
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        self.sqlite_synchronous = sqlite_synchronous
        self.engine: AsyncEngine = self._create_engine(pool_size)
        # An in-memory database is one shared connection: readers must not interleave with (and
        # roll back) the writer's open transaction, so both take turns on this lock.
        self._shared_lock: asyncio.Lock | None = asyncio.Lock() if self.memory else None
        self.health = StoreHealth()  # the database's failure, if any (logged once per outage)
        self.writer = Writer(self.engine, lock=self._shared_lock, health=self.health)
        self._insert_ignore = self._make_insert_ignore()
        # Bumped after every committed write of a resource (a plan id): readers that cache
        # what they loaded compare versions instead of reading again.
        self._write_seq = 0
        self._versions: dict[str, int] = {}
        self.delayed = DelayedStore(self)  # delayed plans and dependencies between plans

    # ---- lifecycle -------------------------------------------------------------------------------
    def _create_engine(self, pool_size: int) -> AsyncEngine:
        url = self.url
        kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            database = url.database or ""
            if database in ("", ":memory:"):
                kwargs["poolclass"] = StaticPool
                kwargs["connect_args"] = {"check_same_thread": False}
            else:
                prepare_sqlite_file(Path(database))
                kwargs["pool_size"] = pool_size
        else:
            kwargs["pool_size"] = pool_size
            kwargs["pool_pre_ping"] = True
        engine = create_async_engine(url, **kwargs)
        if self.dialect == "sqlite":
            synchronous = self.sqlite_synchronous
            memory = (url.database or "") in ("", ":memory:")

            @event.listens_for(engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cursor = dbapi_conn.cursor()
                if not memory:
                    cursor.execute("PRAGMA journal_mode=WAL")
                    cursor.execute(f"PRAGMA synchronous={synchronous}")
                cursor.execute("PRAGMA busy_timeout=30000")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.close()

        return engine

    def _make_insert_ignore(self) -> Any:
        if self.dialect == "postgresql":
            return pg_insert(coordinator_records).on_conflict_do_nothing()
        return sqlite_insert(coordinator_records).on_conflict_do_nothing()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reading, closed (back to the pool) when the block ends.

        Every query of the store and of its parts (``store.delayed``) runs in one of these;
        nothing written through it is committed (writes go through ``write``). While the
        database cannot be reached it waits for a connection (``StoreUnavailable`` at once
        inside ``health.impatient()``); on an in-memory database it takes turns with the
        writer on their shared connection.
        """
        if self._shared_lock is None:
            conn = await self._connect_patiently()
            try:
                yield conn
            finally:
                await conn.close()
            return
        async with self._shared_lock, self.engine.connect() as conn:
            yield conn

    async def _connect_patiently(self) -> AsyncConnection:
        """A pooled connection for a read. While the database cannot be reached the engine's
        reads wait for it (back-off as the writer's), so a plan pauses instead of failing;
        a request's read (inside ``impatient()``) raises ``StoreUnavailable`` at once."""
        delay = RETRY_FIRST
        waited = False
        while True:
            try:
                conn = await self.engine.connect()
            except Exception as exc:
                cause = store_failure_cause(exc)
                if cause is None:
                    raise
                self.health.failed(cause, "read")
                if is_impatient() or self.writer.patience_over:
                    raise StoreUnavailable(cause) from exc
                waited = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if waited:
                self.health.ok()  # this read saw the outage end
            return conn

    @property
    def memory(self) -> bool:
        return self.dialect == "sqlite" and (self.url.database or "") in ("", ":memory:")

    async def start(self) -> None:
        await self.migrate()
        await self.writer.start()

    def stop_waiting_after(self, seconds: float) -> None:
        """A database outage is waited out for ``seconds`` more at most (see the writer's)."""
        self.writer.stop_waiting_after(seconds)

    async def abandon(self) -> None:
        """Stop writing at once and drop the connections (a crash, see ``World.abandon``)."""
        await self.writer.abandon()
        await self.engine.dispose()

    async def close(self) -> None:
        await self.writer.close()
        await self.engine.dispose()

    async def migrate(self, revision: str = "head") -> None:
        """Apply the Alembic migrations (idempotent; several processes may start together)."""
        # Alembic (~0.15 s to import) is loaded when a store starts, not with ``import dynflow``.
        from alembic import command  # noqa: PLC0415 - defers alembic to the migration
        from alembic.config import Config  # noqa: PLC0415 - defers alembic to the migration

        def run(sync_conn: Any) -> None:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = sync_conn
            command.upgrade(config, revision)

        async with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(4242017)"))
            await conn.run_sync(run)

    # ---- writing ---------------------------------------------------------------------------------
    async def write(self, resource: str, stmts: Sequence[Stmt]) -> bool:
        try:
            return await self.writer.write(Write(resource, stmts))
        finally:
            self._bump(resource)

    def _bump(self, resource: str) -> None:
        self._write_seq += 1
        self._versions[resource] = self._write_seq

    def version(self, resource: str) -> int:
        """Changes after each write of ``resource`` by this process (0: never written here)."""
        return self._versions.get(resource, 0)

    @staticmethod
    def insert_plan_stmts(plan: ExecutionPlan) -> list[Stmt]:
        stmts = [Stmt(INSERT_PLAN, plan_row(plan))]
        stmts += [Stmt(INSERT_ACTION, action_row(a)) for a in plan.actions.values()]
        stmts += [Stmt(INSERT_STEP, step_row(s)) for s in plan.steps.values()]
        return stmts

    @staticmethod
    def update_plan_stmt(plan: ExecutionPlan, guard_from: str | None = None) -> Stmt:
        """Save a plan's row; with ``guard_from`` only if its stored state still is that state
        (a start from a stale read of the plan must not run it again)."""
        params = plan_update_params(plan)
        if guard_from is None:
            return Stmt(UPDATE_PLAN, params)
        params["b_from"] = guard_from
        return Stmt(GUARDED_PLAN, params, guard=True)

    @staticmethod
    def update_step_stmt(step: Step, guard_from: str | None = None) -> Stmt:
        """Save a step; with ``guard_from`` only if its stored state still is that state."""
        params = step_update_params(step)
        if guard_from is None:
            return Stmt(UPDATE_STEP, params)
        params["b_from"] = guard_from
        return Stmt(GUARDED_STEP, params, guard=True)

    @staticmethod
    def update_action_stmt(action: Action) -> Stmt:
        return Stmt(
            UPDATE_ACTION,
            {
                "b_uuid": action.execution_plan_id,
                "b_id": action.id,
                "output": dumps(action.output_data),
            },
        )

    @staticmethod
    def update_action_input_stmt(action: Action) -> Stmt:
        """Store the action's (changed) input: :meth:`Action.change_stored_input`."""
        return Stmt(
            UPDATE_ACTION_INPUT,
            {
                "b_uuid": action.execution_plan_id,
                "b_id": action.id,
                "input": dumps(action.input),
            },
        )

    @staticmethod
    def insert_chunk_stmts(
        plan_id: str, action_id: int, chunks: list[dict[str, Any]]
    ) -> list[Stmt]:
        return [
            Stmt(
                INSERT_CHUNK,
                {
                    "execution_plan_uuid": plan_id,
                    "action_id": action_id,
                    "chunk": dumps(c["chunk"]),
                    "kind": c.get("kind"),
                    "timestamp": float(c["timestamp"]),
                },
            )
            for c in chunks
        ]

    @staticmethod
    def insert_event_stmt(
        event_id: str, plan_id: str, step_id: int, payload: Any, deliver_at: float, optional: bool
    ) -> Stmt:
        return Stmt(
            INSERT_EVENT,
            {
                "id": event_id,
                "execution_plan_uuid": plan_id,
                "step_id": step_id,
                "event": dumps(payload),
                "deliver_at": deliver_at,
                "optional": optional,
            },
        )

    @staticmethod
    def delete_event_stmt(event_id: str) -> Stmt:
        return Stmt(DELETE_EVENT, {"b_id": event_id})

    @staticmethod
    def delete_plan_events_stmt(plan_id: str) -> Stmt:
        """Forget every planned event of a plan that stops executing (paused or stopped)."""
        return Stmt(DELETE_PLAN_EVENTS, {"b_uuid": plan_id})

    def acquire_lock_stmt(self, cls: str, lock_id: str, owner: str, data: dict[str, Any]) -> Stmt:
        return Stmt(
            self._insert_ignore,
            {"id": lock_id, "class": cls, "owner_id": owner, "data": dumps(data)},
            guard=True,
        )

    @staticmethod
    def release_lock_stmt(cls: str, lock_id: str, owner: str | None = None) -> Stmt:
        if owner is None:
            return Stmt(DELETE_LOCK, {"b_id": lock_id, "b_class": cls})
        return Stmt(DELETE_LOCK_OWNED, {"b_id": lock_id, "b_class": cls, "b_owner": owner})

    @staticmethod
    def release_locks_of_owner_stmt(cls: str, owner: str) -> Stmt:
        """Release every lock of class ``cls`` that ``owner`` holds (e.g. a plan's singletons)."""
        return Stmt(DELETE_LOCKS_OF_OWNER, {"b_class": cls, "b_owner": owner})

    @staticmethod
    def update_record_stmt(cls: str, record_id: str, data: dict[str, Any]) -> Stmt:
        return Stmt(UPDATE_RECORD, {"b_id": record_id, "b_class": cls, "data": dumps(data)})

    # ---- reading: plans --------------------------------------------------------------------------
    def _plan_from_row(self, row: Any, world: Any) -> ExecutionPlan:
        try:
            return self._decode_plan_row(row, world)
        except _DECODE_ERRORS as exc:
            raise _unreadable(row.uuid, "its plan row", exc) from exc

    def _listed_plan(self, row: Any, world: Any) -> ExecutionPlan:
        """A plan of a list: its row, or only the plain columns when the rest is unreadable."""
        try:
            return self._plan_from_row(row, world)
        except PlanUnreadable as exc:
            log.error("%s", exc)
            plan = ExecutionPlan(
                row.uuid,
                world=world,
                state=row.state,
                label=row.label,
                result=row.result,
                started_at=parse_time(row.started_at),
                ended_at=parse_time(row.ended_at),
            )
            plan.unreadable = str(exc)
            return plan

    @staticmethod
    def _decode_plan_row(row: Any, world: Any) -> ExecutionPlan:
        return ExecutionPlan(
            row.uuid,
            world=world,
            state=row.state,
            label=row.label,
            result=row.result,
            root_plan_step_id=row.root_plan_step_id,
            run_flow=flows.decode(loads(row.run_flow)) if row.run_flow else None,
            finalize_flow=flows.decode(loads(row.finalize_flow)) if row.finalize_flow else None,
            step_ids=loads(row.step_ids) or [],
            started_at=parse_time(row.started_at),
            ended_at=parse_time(row.ended_at),
            execution_time=row.execution_time if row.execution_time is not None else 0.0,
            real_time=row.real_time or 0.0,
            execution_history=loads(row.execution_history) or [],
        )

    # Step and action rows are read as mappings (``Result.mappings()``): their ``class``
    # column is no Python attribute name.
    @staticmethod
    def _step_from_row(row: RowMapping) -> Step:
        cls = STEP_CLASSES[row["class"]]
        return cls(
            row["execution_plan_uuid"],
            row["id"],
            row["action_id"],
            row["action_class"],
            row["state"],
            error=loads(row["error"]),
            started_at=parse_time(row["started_at"]),
            ended_at=parse_time(row["ended_at"]),
            execution_time=row["execution_time"] or 0.0,
            real_time=row["real_time"] or 0.0,
            progress_done=row["progress_done"] or 0.0,
            progress_weight=row["progress_weight"] or 0.0,
            queue=row["queue"],
            children=loads(row["children"]),
        )

    @staticmethod
    def _action_from_row(row: RowMapping, world: Any, phase: str = "present") -> Action:
        cls = resolve_class(row["class"])
        return cls(
            world=world,
            execution_plan_id=row["execution_plan_uuid"],
            id=row["id"],
            plan_step_id=row["plan_step_id"],
            run_step_id=row["run_step_id"],
            finalize_step_id=row["finalize_step_id"],
            caller_execution_plan_id=row["caller_execution_plan_id"],
            caller_action_id=row["caller_action_id"],
            input=loads(row["input"]) or {},
            output=loads(row["output"]) or {},
            phase=phase,
        )

    @staticmethod
    async def _plan_gone(conn: AsyncConnection, plan_id: str) -> bool:
        uuid = execution_plans.c.uuid
        return (await conn.execute(select(uuid).where(uuid == plan_id))).first() is None

    async def load_plan(
        self, plan_id: str, world: Any = None, *, with_steps: bool = True, with_actions: bool = True
    ) -> ExecutionPlan | None:
        async with self.read() as conn:
            row = (
                await conn.execute(select(execution_plans).where(execution_plans.c.uuid == plan_id))
            ).first()
            if row is None:
                return None
            plan = self._plan_from_row(row, world)
            if row.state in ("scheduled", "planning"):
                plan.delayed = (await self.delayed.info_of(conn, [plan_id])).get(plan_id)
            if with_steps:
                for srow in (
                    await conn.execute(select(steps).where(steps.c.execution_plan_uuid == plan_id))
                ).mappings():
                    try:
                        step = self._step_from_row(srow)
                    except _DECODE_ERRORS as exc:
                        raise _unreadable(plan_id, f"its step {srow['id']}", exc) from exc
                    plan.steps[step.id] = step
                missing = [i for i in plan.step_ids if i not in plan.steps]
                if missing and await self._plan_gone(conn, plan_id):
                    return None  # deleted (the cleaner) between the two reads
                if missing:  # as Dynflow's DataConsistencyError: never load it as if whole
                    raise PlanUnreadable(
                        f"execution plan {plan_id} cannot be read: its steps "
                        f"{', '.join(map(str, missing[:10]))} are missing from the database"
                    )
            if with_actions:
                for arow in (
                    await conn.execute(
                        select(actions).where(actions.c.execution_plan_uuid == plan_id)
                    )
                ).mappings():
                    try:
                        action = self._action_from_row(arow, world)
                    except _DECODE_ERRORS as exc:
                        raise _unreadable(plan_id, f"its action {arow['id']}", exc) from exc
                    action.execution_plan = plan
                    plan.actions[action.id] = action
        if with_steps:
            for action in plan.actions.values():
                action.state = _action_state(plan, action)
        return plan

    def _filtered(self, query: Any, filters: dict[str, Any] | None) -> Any:
        if not filters:
            return query
        filters = dict(filters)
        caller_plan = filters.pop("caller_execution_plan_id", None)
        # "delayed" (any value): only plans with a delayed record (spec §4.3).
        delayed_only = "delayed" in filters
        filters.pop("delayed", None)
        caller_action = filters.pop("caller_action_id", None)
        if caller_action is not None and caller_plan is None:
            raise ValueError("filter caller_action_id requires caller_execution_plan_id")
        # "search": the label contains the text (any case) or the id starts with it.
        search = filters.pop("search", None)
        started_after = filters.pop("started_at_from", None)
        started_before = filters.pop("started_at_to", None)
        ended_after = filters.pop("ended_at_from", None)
        ended_before = filters.pop("ended_at_to", None)
        for key, value in filters.items():
            if key not in PLAN_FILTER_COLUMNS:
                raise ValueError(f"unknown filter {key!r}")
            column = execution_plans.c[key]
            if isinstance(value, list | tuple | set):
                values = list(value)
                query = query.where(column.in_(values)) if values else query.where(False)
            else:
                query = query.where(column == value)
        for name, op, value in (
            ("started_at", ">=", started_after),
            ("started_at", "<=", started_before),
            ("ended_at", ">=", ended_after),
            ("ended_at", "<=", ended_before),
        ):
            if value is not None:
                col = execution_plans.c[name]
                when = parse_time(value)
                query = query.where(col >= when if op == ">=" else col <= when)
        if delayed_only:
            query = query.where(DelayedStore.has_record())
        if caller_plan is not None:
            condition = [
                actions.c.execution_plan_uuid == execution_plans.c.uuid,
                actions.c.id == 1,
            ]
            plans = caller_plan if isinstance(caller_plan, list | tuple) else [caller_plan]
            condition.append(actions.c.caller_execution_plan_id.in_(list(plans)))
            if caller_action is not None:
                ids = caller_action if isinstance(caller_action, list | tuple) else [caller_action]
                condition.append(actions.c.caller_action_id.in_([int(i) for i in ids]))
            query = query.where(select(actions.c.id).where(and_(*condition)).exists())
        if search is not None and str(search).strip():
            query = query.where(self._search(str(search).strip()))
        return query

    def _search(self, term: str) -> Any:
        """The label contains ``term`` (any case) or the id starts with it. On SQLite both are
        looked up in the covering label and id indexes (not row by row)."""
        label = execution_plans.c.label.icontains(term, autoescape=True)
        uuid = execution_plans.c.uuid.startswith(term.lower(), autoescape=True)
        if self.dialect != "sqlite":
            return label | uuid
        found = execution_plans.alias("found")
        rowid: ColumnClause[Any] = literal_column("found.rowid")
        matching = union_all(
            select(rowid).select_from(found).where(found.c.label.icontains(term, autoescape=True)),
            select(rowid)
            .select_from(found)
            .where(found.c.uuid.startswith(term.lower(), autoescape=True)),
        )
        return literal_column(f"{execution_plans.name}.rowid").in_(matching)

    async def find_plans(
        self,
        world: Any = None,
        *,
        filters: dict[str, Any] | None = None,
        order_by: str | None = None,
        desc: bool = False,
        page: int | None = None,
        per_page: int | None = None,
        narrow: bool = False,
    ) -> list[ExecutionPlan]:
        """Plans matching ``filters``, ordered by ``order_by`` (then by id), a page of them.

        ``narrow`` (for deep pages of many plans, e.g. the console): sort and skip only the
        sort key and the row's key, then load the page's rows; on SQLite ties are then in
        insertion order instead of by id.
        """
        order = order_by or "started_at"
        if order not in ORDER_COLUMNS:
            raise ValueError(f"cannot order by {order!r}")
        column = execution_plans.c[order]
        if page is not None and per_page is None:
            raise ValueError("page requires per_page")

        def ordered(query: Any, tie: Any) -> Any:
            if desc:
                return query.order_by(column.desc(), tie.desc() if narrow else tie)
            return query.order_by(column.asc(), tie)

        if narrow and per_page is not None:
            if self.dialect == "sqlite":
                key: Any = literal_column(f"{execution_plans.name}.rowid")
                inner: Any = select(key).select_from(execution_plans)
            else:
                key = execution_plans.c.uuid
                inner = select(key)
            inner = ordered(self._filtered(inner, filters), key)
            inner = inner.limit(per_page).offset((page or 0) * per_page).correlate(None)
            query = ordered(select(execution_plans).where(key.in_(inner)), key)
        else:
            query = self._filtered(select(execution_plans), filters)
            query = ordered(query, execution_plans.c.uuid)
            if per_page is not None:
                query = query.limit(per_page).offset((page or 0) * per_page)
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
            waiting = [r.uuid for r in rows if r.state in ("scheduled", "planning")]
            delayed = await self.delayed.info_of(conn, waiting)
        plans = [self._listed_plan(r, world) for r in rows]
        for plan in plans:
            plan.delayed = delayed.get(plan.id)
        return plans

    async def count_plans(self, filters: dict[str, Any] | None = None) -> int:
        query = self._filtered(select(func.count()).select_from(execution_plans), filters)
        async with self.read() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def plan_statuses(
        self, filters: dict[str, Any] | None = None
    ) -> dict[str, dict[str, Any]]:
        if filters is not None and not filters:
            return {}
        query = self._filtered(
            select(execution_plans.c.uuid, execution_plans.c.state, execution_plans.c.result),
            filters,
        )
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return {r.uuid: {"state": r.state, "result": r.result} for r in rows}

    async def plan_counts(
        self, filters: dict[str, Any] | None = None, group_by: Sequence[str] = ("state",)
    ) -> dict[tuple[Any, ...], int]:
        """How many plans match ``filters``, per value of the ``group_by`` columns (one query)."""
        for name in group_by:
            if name not in PLAN_FILTER_COLUMNS:
                raise ValueError(f"cannot group by {name!r}")
        columns = [execution_plans.c[name] for name in group_by]
        query = self._filtered(select(*columns, func.count()).group_by(*columns), filters)
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return {tuple(row[:-1]): int(row[-1]) for row in rows}

    async def plan_labels(self, limit: int = 500) -> list[str]:
        """The distinct labels of stored plans, in order (read from the label index)."""
        column = execution_plans.c.label
        query = select(column).where(column.is_not(None)).distinct().order_by(column).limit(limit)
        async with self.read() as conn:
            return [row[0] for row in (await conn.execute(query)).all()]

    async def sub_plan_counts(self, plan_id: str) -> dict[int | None, int]:
        """How many sub-plans each action of ``plan_id`` spawned (caller action id → count)."""
        query = (
            select(actions.c.caller_action_id, func.count())
            .where(actions.c.caller_execution_plan_id == plan_id, actions.c.id == 1)
            .group_by(actions.c.caller_action_id)
        )
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return {row[0]: int(row[1]) for row in rows}

    async def load_actions(self, plan_id: str, world: Any = None) -> list[Action]:
        query = (
            select(actions).where(actions.c.execution_plan_uuid == plan_id).order_by(actions.c.id)
        )
        async with self.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [self._action_from_row(r, world) for r in rows]

    async def load_output_chunks(self, plan_id: str, action_id: int) -> list[dict[str, Any]]:
        query = (
            select(output_chunks)
            .where(
                output_chunks.c.execution_plan_uuid == plan_id,
                output_chunks.c.action_id == action_id,
            )
            .order_by(output_chunks.c.id)
        )
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {"id": r.id, "timestamp": r.timestamp, "kind": r.kind, "chunk": loads(r.chunk)}
            for r in rows
        ]

    async def load_plan_output_chunks(
        self, plan_id: str, after_id: int = 0
    ) -> list[dict[str, Any]]:
        """Every output chunk of a plan's actions with an id above ``after_id``, in order."""
        query = (
            select(output_chunks)
            .where(output_chunks.c.execution_plan_uuid == plan_id, output_chunks.c.id > after_id)
            .order_by(output_chunks.c.id)
        )
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {
                "id": r.id,
                "action_id": r.action_id,
                "timestamp": r.timestamp,
                "kind": r.kind,
                "chunk": loads(r.chunk),
            }
            for r in rows
        ]

    @staticmethod
    def delete_chunks_stmt(plan_id: str, action_id: int) -> Stmt:
        stmt = delete(output_chunks).where(
            output_chunks.c.execution_plan_uuid == plan_id, output_chunks.c.action_id == action_id
        )
        return Stmt(stmt, {})

    async def delete_output_chunks(self, plan_id: str, action_id: int) -> int:
        """Delete an action's output chunks; returns how many there were."""
        query = select(func.count()).select_from(output_chunks).where(
            output_chunks.c.execution_plan_uuid == plan_id, output_chunks.c.action_id == action_id
        )
        async with self.read() as conn:
            count = int((await conn.execute(query)).scalar() or 0)
        await self.write(plan_id, [self.delete_chunks_stmt(plan_id, action_id)])
        return count

    # ---- planned events --------------------------------------------------------------------------
    async def planned_events_of(self, plan_id: str) -> list[dict[str, Any]]:
        query = (
            select(planned_events)
            .where(planned_events.c.execution_plan_uuid == plan_id)
            .order_by(planned_events.c.deliver_at)
        )
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {
                "id": r.id,
                "execution_plan_id": r.execution_plan_uuid,
                "step_id": r.step_id,
                "event": loads(r.event),
                "deliver_at": r.deliver_at,
                "optional": bool(r.optional),
            }
            for r in rows
        ]

    # ---- coordinator records ---------------------------------------------------------------------
    async def find_records(
        self, cls: str | None = None, owner: str | None = None, record_id: str | None = None
    ) -> list[dict[str, Any]]:
        query = select(coordinator_records)
        if cls is not None:
            query = query.where(coordinator_records.c["class"] == cls)
        if owner is not None:
            query = query.where(coordinator_records.c.owner_id == owner)
        if record_id is not None:
            query = query.where(coordinator_records.c.id == record_id)
        async with self.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            {
                "id": r["id"],
                "class": r["class"],
                "owner_id": r["owner_id"],
                "data": loads(r["data"]),
            }
            for r in rows
        ]

    async def acquire_lock(self, cls: str, lock_id: str, owner: str, data: dict[str, Any]) -> bool:
        return await self.write(lock_id, [self.acquire_lock_stmt(cls, lock_id, owner, data)])

    async def release_lock(self, cls: str, lock_id: str, owner: str | None = None) -> None:
        await self.write(lock_id, [self.release_lock_stmt(cls, lock_id, owner)])

    # ---- deletion (cleaner) ----------------------------------------------------------------------
    async def delete_plans(self, plan_ids: Sequence[str]) -> int:
        if not plan_ids:
            return 0
        ids = list(plan_ids)
        stmts = [
            Stmt(delete(planned_events).where(planned_events.c.execution_plan_uuid.in_(ids)), {}),
            Stmt(delete(output_chunks).where(output_chunks.c.execution_plan_uuid.in_(ids)), {}),
            Stmt(delete(steps).where(steps.c.execution_plan_uuid.in_(ids)), {}),
            Stmt(delete(actions).where(actions.c.execution_plan_uuid.in_(ids)), {}),
            Stmt(delete(execution_plans).where(execution_plans.c.uuid.in_(ids)), {}),
        ]
        await self.write(f"delete:{uuidlib.uuid4()}", stmts)
        for plan_id in ids:
            self._versions.pop(plan_id, None)
        return len(ids)

    async def find_old_plans(
        self, states: Sequence[str], ended_before: datetime, limit: int = 1000
    ) -> list[str]:
        column = execution_plans.c.ended_at
        parent = execution_plans.alias("parent")
        parent_active = (
            select(actions.c.id)
            .join(parent, parent.c.uuid == actions.c.caller_execution_plan_id)
            .where(
                actions.c.execution_plan_uuid == execution_plans.c.uuid,
                actions.c.id == 1,
                parent.c.state != "stopped",
            )
            .exists()
        )
        query = (
            select(execution_plans.c.uuid)
            .where(execution_plans.c.state.in_(list(states)))
            .where(~parent_active)
            .where(
                (column <= ended_before)
                | (column.is_(None) & (execution_plans.c.started_at <= ended_before))
            )
            .limit(limit)
        )
        async with self.read() as conn:
            return [r.uuid for r in (await conn.execute(query)).all()]


def _action_state(plan: ExecutionPlan, action: Action) -> str | None:
    for step_id in (action.finalize_step_id, action.run_step_id, action.plan_step_id):
        if step_id is not None and step_id in plan.steps:
            state = plan.steps[step_id].state
            if state != "pending" or step_id == action.plan_step_id:
                return state
    return None
