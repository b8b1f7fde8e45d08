"""Middleware: a chain of objects wrapped around an action's phases (spec §1.7).

A middleware subclasses ``Middleware`` and overrides the phases it cares about, calling
``next_`` to continue the chain (not calling it short-circuits):

* ``delay``, ``plan`` (synchronous), ``run``, ``finalize`` and ``hook`` wrap one action;
* ``plan_phase`` (synchronous) and ``finalize_phase`` wrap the whole planning and the whole
  finalize phase of a plan; they use the middleware of the plan's root action;
* ``present`` filters what the console and the status API show of an action (storage is never
  touched).

Where a middleware is used is decided by *rules* (``MiddlewareRules``): the world's
(``world.middleware.use(M, before=..., after=..., replace=...)``), then those of every ancestor
class of the action, from ``Action`` down, then the class's own (``middleware = [...]`` in the
class body, or ``MyAction.middleware.use(...)`` / ``.do_not_use(M)`` later). The stack of a class
is the topological order of all those rules: ``before``/``after`` order two middleware (a rule
naming a middleware that is not in the stack is ignored), ``replace`` puts a middleware in the
place of another, ``do_not_use`` removes one. Without constraints the order is the order of
registration, so world middleware comes first (outermost). Contradicting rules raise
``MiddlewareCycle``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import DynflowError

if TYPE_CHECKING:
    from .action import Action
    from .execution_plan import ExecutionPlan


class MiddlewareCycle(DynflowError):
    """The ``before``/``after`` rules of a middleware stack contradict each other."""


class Middleware:
    def delay(self, action: Action, next_: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Wraps the action's ``delay`` (a delayed plan's arguments); returns what it returns."""
        return next_(*args, **kwargs)

    def plan(self, action: Action, next_: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        next_(*args, **kwargs)

    def plan_phase(
        self, action: Action, next_: Callable[[], None], plan: ExecutionPlan
    ) -> None:
        """Wraps the planning of a whole plan (``action`` is its root action)."""
        next_()

    async def run(
        self, action: Action, next_: Callable[[Any], Awaitable[None]], event: Any
    ) -> None:
        await next_(event)

    async def finalize(self, action: Action, next_: Callable[[], Awaitable[None]]) -> None:
        await next_()

    async def finalize_phase(
        self, action: Action, next_: Callable[[], Awaitable[None]], plan: ExecutionPlan
    ) -> None:
        """Wraps the whole finalize phase of a plan (``action`` is its root action)."""
        await next_()

    async def hook(
        self,
        action: Action,
        next_: Callable[[ExecutionPlan, str], Awaitable[None]],
        plan: ExecutionPlan,
        kind: str,
    ) -> None:
        await next_(plan, kind)

    def present(self, action: Action, data: dict[str, Any]) -> dict[str, Any]:
        """Filter what the console and status API show of an action; storage is untouched."""
        return data


# ---- rules -------------------------------------------------------------------------------------
MiddlewareKey = type  # a Middleware subclass

_generation = 0  # bumped by every change of any rule set: resolved stacks are cached by it


def generation() -> int:
    """Changes whenever a rule is added anywhere (worlds cache their stacks by it)."""
    return _generation


def _bump() -> None:
    global _generation
    _generation += 1


def _key(middleware: Any) -> MiddlewareKey:
    if isinstance(middleware, type):
        if not issubclass(middleware, Middleware):
            raise TypeError(f"{middleware.__name__} is not a dynflow.middleware.Middleware")
        return middleware
    if not isinstance(middleware, Middleware):
        raise TypeError(f"{middleware!r} is not a dynflow.middleware.Middleware")
    return type(middleware)


def _keys(value: Any) -> list[MiddlewareKey]:
    if value is None:
        return []
    if isinstance(value, list | tuple | set | frozenset):
        return [_key(v) for v in value]
    return [_key(value)]


@dataclass
class Rule:
    """How one middleware is used: the ones it goes before/after or replaces."""

    before: list[MiddlewareKey] = field(default_factory=list)
    after: list[MiddlewareKey] = field(default_factory=list)
    replace: list[MiddlewareKey] = field(default_factory=list)
    instance: Middleware | None = None


@dataclass(frozen=True)
class Use:
    """A ``use`` rule written in a class body: ``middleware = [use(M, before=N)]``."""

    middleware: Any
    before: Any = None
    after: Any = None
    replace: Any = None


@dataclass(frozen=True)
class DoNotUse:
    """A ``do_not_use`` rule written in a class body: ``middleware = [do_not_use(M)]``."""

    middleware: Any


def use(middleware: Any, *, before: Any = None, after: Any = None, replace: Any = None) -> Use:
    return Use(middleware, before, after, replace)


def do_not_use(middleware: Any) -> DoNotUse:
    return DoNotUse(middleware)


class MiddlewareRules:
    """The middleware rules of a world or of one action class (the original's ``Register``).

    ``entries`` may hold middleware classes, instances, ``use(...)`` and ``do_not_use(...)``.
    """

    def __init__(self, entries: Iterable[Any] = ()) -> None:
        self.rules: dict[MiddlewareKey, Rule] = {}
        self.removed: list[MiddlewareKey] = []
        for entry in entries:
            self.add(entry)

    def add(self, entry: Any) -> MiddlewareRules:
        if isinstance(entry, Use):
            return self.use(
                entry.middleware, before=entry.before, after=entry.after, replace=entry.replace
            )
        if isinstance(entry, DoNotUse):
            return self.do_not_use(entry.middleware)
        return self.use(entry)

    def use(
        self, middleware: Any, *, before: Any = None, after: Any = None, replace: Any = None
    ) -> MiddlewareRules:
        """Use ``middleware`` (a class, or an instance to share), ordered by the options."""
        key = _key(middleware)
        rule = self.rules.setdefault(key, Rule())
        rule.before += [k for k in _keys(before) if k not in rule.before]
        rule.after += [k for k in _keys(after) if k not in rule.after]
        rule.replace += [k for k in _keys(replace) if k not in rule.replace]
        if not isinstance(middleware, type):
            rule.instance = middleware
        _bump()
        return self

    def do_not_use(self, middleware: Any) -> MiddlewareRules:
        """Remove ``middleware`` from the stack, wherever it was added (world or ancestors)."""
        key = _key(middleware)
        if key not in self.removed:
            self.removed.append(key)
        _bump()
        return self

    def merge(self, other: MiddlewareRules) -> MiddlewareRules:
        for key, rule in other.rules.items():
            mine = self.rules.setdefault(key, Rule())
            mine.before += [k for k in rule.before if k not in mine.before]
            mine.after += [k for k in rule.after if k not in mine.after]
            mine.replace += [k for k in rule.replace if k not in mine.replace]
            if rule.instance is not None:
                mine.instance = rule.instance
        self.removed += [k for k in other.removed if k not in self.removed]
        return self

    def __iter__(self) -> Iterator[MiddlewareKey]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __bool__(self) -> bool:
        return bool(self.rules or self.removed)

    def __repr__(self) -> str:
        names = ", ".join(k.__name__ for k in self.rules)
        return f"<MiddlewareRules [{names}]>"

    def resolve(self) -> list[MiddlewareKey]:
        """These rules alone, in stack order (outermost first)."""
        return [key for key, _ in resolve([self])]


def rules_of(cls: type) -> list[MiddlewareRules]:
    """The rules of ``cls`` and its ancestors, from the most basic class to ``cls``."""
    result: list[MiddlewareRules] = []
    for klass in reversed(cls.__mro__):
        own = klass.__dict__.get("middleware")
        if isinstance(own, MiddlewareRules):
            result.append(own)
        elif isinstance(own, list | tuple):  # a plain mixin (not an Action) listing middleware
            result.append(MiddlewareRules(own))
    return result


def resolve(
    registers: Iterable[MiddlewareRules],
) -> list[tuple[MiddlewareKey, Middleware | None]]:
    """Merge rule sets (in order) and sort them: ``[(class, shared instance or None)]``."""
    merged = MiddlewareRules()
    for register in registers:
        merged.merge(register)
    rules = merged.rules
    substitute: dict[MiddlewareKey, MiddlewareKey | None] = {}
    for key, rule in rules.items():
        for old in rule.replace:
            if old is not key:
                substitute[old] = key
    for old in merged.removed:
        substitute[old] = None

    def final(key: MiddlewareKey) -> MiddlewareKey | None:
        seen: set[MiddlewareKey] = set()
        current: MiddlewareKey | None = key
        while current is not None and current in substitute and current not in seen:
            seen.add(current)
            current = substitute[current]
        return current

    present = [key for key in rules if final(key) is key]
    deps: dict[MiddlewareKey, list[MiddlewareKey]] = {key: [] for key in present}
    for key, rule in rules.items():
        target = final(key)
        if target is None:
            continue
        for other in rule.after:
            dep = final(other)
            if dep in deps and dep is not target and dep not in deps[target]:
                deps[target].append(dep)
        for other in rule.before:
            later = final(other)
            if later in deps and later is not target and target not in deps[later]:
                deps[later].append(target)

    order: list[MiddlewareKey] = []
    state: dict[MiddlewareKey, int] = {}
    path: list[MiddlewareKey] = []

    def visit(key: MiddlewareKey) -> None:
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            cycle = [*path[path.index(key) :], key]
            raise MiddlewareCycle(
                "middleware rules form a cycle: "
                + " -> ".join(k.__name__ for k in cycle)
                + " (each must come after the next)"
            )
        state[key] = 1
        path.append(key)
        for dep in deps[key]:
            visit(dep)
        path.pop()
        state[key] = 2
        order.append(key)

    for key in present:
        visit(key)
    return [(key, rules[key].instance) for key in order]


def class_middleware(cls: type[Action]) -> list[type[Middleware]]:
    """The middleware classes of an action class alone (without any world's), in stack order."""
    return [key for key, _ in resolve(rules_of(cls))]


# ---- chains --------------------------------------------------------------------------------------
def delay_chain(
    chain: list[Middleware], action: Action, final: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    def call(index: int, a: tuple[Any, ...], k: dict[str, Any]) -> Any:
        if index == len(chain):
            return final(*a, **k)
        return chain[index].delay(action, lambda *a2, **k2: call(index + 1, a2, k2), *a, **k)

    return call(0, args, kwargs)


def plan_phase_chain(
    chain: list[Middleware], action: Action, final: Callable[[], None], plan: ExecutionPlan
) -> None:
    def call(index: int) -> None:
        if index == len(chain):
            final()
        else:
            chain[index].plan_phase(action, lambda: call(index + 1), plan)

    call(0)


async def run_chain(
    chain: list[Middleware], action: Action, final: Callable[[Any], Awaitable[None]], event: Any
) -> None:
    async def call(index: int, ev: Any) -> None:
        if index == len(chain):
            await final(ev)
        else:
            await chain[index].run(action, lambda e: call(index + 1, e), ev)

    await call(0, event)


async def finalize_chain(
    chain: list[Middleware], action: Action, final: Callable[[], Awaitable[None]]
) -> None:
    async def call(index: int) -> None:
        if index == len(chain):
            await final()
        else:
            await chain[index].finalize(action, lambda: call(index + 1))

    await call(0)


async def finalize_phase_chain(
    chain: list[Middleware],
    action: Action,
    final: Callable[[], Awaitable[None]],
    plan: ExecutionPlan,
) -> None:
    async def call(index: int) -> None:
        if index == len(chain):
            await final()
        else:
            await chain[index].finalize_phase(action, lambda: call(index + 1), plan)

    await call(0)


async def hook_chain(
    chain: list[Middleware],
    action: Action,
    final: Callable[[ExecutionPlan, str], Awaitable[None]],
    plan: ExecutionPlan,
    kind: str,
) -> None:
    async def call(index: int, p: ExecutionPlan, k: str) -> None:
        if index == len(chain):
            await final(p, k)
        else:
            await chain[index].hook(action, lambda p2, k2: call(index + 1, p2, k2), p, k)

    await call(0, plan, kind)


def present_chain(chain: list[Middleware], action: Action, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (an action hash) through every ``present`` of the stack, outermost first."""
    for middleware in chain:
        data = middleware.present(action, data)
    return data
