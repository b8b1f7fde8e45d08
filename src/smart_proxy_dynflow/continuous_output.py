"""Output buffer of a runner: an ordered list of output records (spec §4.4).

A record is a JSON-ready dict::

    {"output_type": "stdout" | "stderr" | "debug", "output": "<chunk>",
     "timestamp": 1715072462.123, "id": <optional>}

``id`` is present only when it was given. Chunks are raw reads, not lines.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

REQUIRED_KEYS: tuple[str, ...] = ("output_type", "output", "timestamp")


def format_exception(context: str, exc: BaseException) -> str:
    """Return ``"<context>: <ExceptionClass> - <message>"``."""
    return f"{context}: {type(exc).__name__} - {exc}"


class ContinuousOutput:
    """Ordered output records collected by a runner."""

    def __init__(self, raw_outputs: Iterable[dict[str, Any]] = ()) -> None:
        self._records: list[dict[str, Any]] = []
        for record in raw_outputs:
            self.add_raw_output(record)

    def add_output(
        self,
        output: str,
        output_type: str = "debug",
        timestamp: float | None = None,
        id: Any = None,
    ) -> dict[str, Any]:
        """Append a record; ``timestamp`` defaults to now, ``id`` is kept only when given."""
        record: dict[str, Any] = {
            "output_type": output_type,
            "output": output,
            "timestamp": float(time.time() if timestamp is None else timestamp),
        }
        if id is not None:
            record["id"] = id
        self._records.append(record)
        return record

    def add_raw_output(self, record: dict[str, Any]) -> None:
        """Append a ready-made record; raise ValueError when a mandatory key is missing."""
        missing = [key for key in REQUIRED_KEYS if key not in record]
        if missing:
            raise ValueError(
                f"Missing required key(s) {', '.join(missing)} in output record {record!r}"
            )
        self._records.append(dict(record))

    @property
    def raw_outputs(self) -> list[dict[str, Any]]:
        """The records as a list of dicts (JSON ready)."""
        return self._records

    @property
    def empty(self) -> bool:
        """True when no record was added."""
        return not self._records

    def sort(self) -> None:
        """Sort the records by timestamp (stable)."""
        self._records.sort(key=lambda record: record["timestamp"])

    def humanize(self) -> str:
        """The outputs in timestamp order, joined by newlines."""
        self.sort()
        return "\n".join(str(record["output"]) for record in self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._records)

    def __repr__(self) -> str:
        return f"ContinuousOutput({self._records!r})"
