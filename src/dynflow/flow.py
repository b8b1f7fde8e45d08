"""Flows: the ordering of run and finalize steps (spec §1.3).

A flow is an ``Atom`` (one step id), a ``Sequence`` or a ``Concurrence`` of flows. They encode to
JSON as the step id, ``["S", ...]`` and ``["C", ...]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


class Flow:
    def step_ids(self) -> Iterator[int]:
        raise NotImplementedError

    def encode(self) -> Any:
        raise NotImplementedError

    def includes(self, step_id: int) -> bool:
        return any(s == step_id for s in self.step_ids())

    @property
    def empty(self) -> bool:
        return False


class Atom(Flow):
    __slots__ = ("step_id",)

    def __init__(self, step_id: int) -> None:
        self.step_id = step_id

    def step_ids(self) -> Iterator[int]:
        yield self.step_id

    def encode(self) -> int:
        return self.step_id

    def __repr__(self) -> str:
        return f"Atom({self.step_id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Atom) and other.step_id == self.step_id

    def __hash__(self) -> int:
        return hash(("A", self.step_id))


class Composed(Flow):
    tag = "?"

    def __init__(self, children: list[Flow] | None = None) -> None:
        self.children: list[Flow] = list(children or [])

    def step_ids(self) -> Iterator[int]:
        for child in self.children:
            yield from child.step_ids()

    def encode(self) -> list[Any]:
        if self.tag not in ("S", "C"):  # decode() could not read it back
            raise ValueError(f"{type(self).__name__} has no flow identifier to be stored under")
        return [self.tag, *(c.encode() for c in self.children)]

    @property
    def empty(self) -> bool:
        return all(c.empty for c in self.children)

    def append(self, flow: Flow) -> None:
        self.children.append(flow)
        self.normalise()

    def normalise(self) -> None:
        """Splice children of the same type, unwrap single-child composed flows, drop empty ones."""
        result: list[Flow] = []
        for child in self.children:
            if isinstance(child, Composed):
                child.normalise()
                if child.empty:
                    continue
                while isinstance(child, Composed) and len(child.children) == 1:
                    child = child.children[0]
            if type(child) is type(self):
                assert isinstance(child, Composed)
                result.extend(child.children)
            else:
                result.append(child)
        self.children = result

    def add_and_resolve(self, required: Callable[[int], set[int]], new_flow: Flow) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.children!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.children == self.children

    __hash__ = object.__hash__


class Sequence(Composed):
    tag = "S"

    def add_and_resolve(self, required: Callable[[int], set[int]], new_flow: Flow) -> None:
        if new_flow.empty:
            return
        self.append(new_flow)


class Concurrence(Composed):
    tag = "C"

    def add_and_resolve(self, required: Callable[[int], set[int]], new_flow: Flow) -> None:
        """Add ``new_flow``; sub-flows holding steps it depends on are sequenced before it."""
        if new_flow.empty:
            return
        needed: set[int] = set()
        for step_id in new_flow.step_ids():
            needed |= required(step_id)
        satisfying = [c for c in self.children if any(c.includes(s) for s in needed)]
        if not satisfying:
            self.append(new_flow)
            return
        self.children = [c for c in self.children if all(c is not s for s in satisfying)]
        self.append(Sequence([Concurrence(satisfying), new_flow]))


def decode(data: Any) -> Flow:
    if isinstance(data, int):
        return Atom(data)
    if isinstance(data, list) and data and data[0] in ("S", "C"):
        cls = Sequence if data[0] == "S" else Concurrence
        return cls([decode(d) for d in data[1:]])
    raise ValueError(f"not a flow: {data!r}")
