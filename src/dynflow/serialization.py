"""JSON values, time formats and the checks that keep the store clean."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from .errors import NotSerializable

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def utcnow() -> datetime:
    """Naive UTC now, the form stored in the database."""
    return datetime.now(UTC).replace(tzinfo=None)


def format_time(value: datetime | None) -> str | None:
    """``YYYY-MM-DD HH:MM:SS.mmm`` in UTC, as the plan hash carries it (spec §3.1)."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime(TIME_FORMAT) + f".{value.microsecond // 1000:03d}"


def parse_time(value: str | datetime | None) -> datetime | None:
    """Read a stored or API time: with or without milliseconds, ISO-8601 or the plan format."""
    if value is None or isinstance(value, datetime):
        return value
    text = value.strip().replace("T", " ").removesuffix("Z")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def dumps(value: Any) -> str:
    """Serialise a JSON value; anything else raises ``NotSerializable`` naming the culprit."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False, default=_reject)
    except NotSerializable:
        raise
    except (TypeError, ValueError) as exc:
        raise NotSerializable(str(exc)) from exc


def loads(text: str | bytes | None) -> Any:
    if text is None:
        return None
    return json.loads(text)


def _reject(value: Any) -> Any:
    raise NotSerializable(f"{type(value).__name__} is not a JSON value: {value!r:.80}")


def check_json(value: Any) -> None:
    dumps(value)
