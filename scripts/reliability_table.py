#!/usr/bin/env python3
"""Summarise the figures of `make reliability` (one JSON line each) as a Markdown table.

    python3 scripts/reliability_table.py [var/reliability-figures.jsonl]

One row per scenario and figure: how many runs reported it, the sum and the largest value.
docs/reliability.md quotes this table for its last run.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "var/reliability-figures.jsonl")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        print(f"reliability_table: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 1
    rows: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    skipped = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            print(f"reliability_table: {path}:{number}: not JSON ({exc})", file=sys.stderr)
            return 1
        if "figure" not in record or not isinstance(record.get("value"), int | float):
            skipped += 1  # a summary line beside the figures (e.g. the fuzzer's statuses)
            continue
        where = "/".join(
            str(record[k]) for k in ("process", "store", "hosts", "deployment", "variant")
            if k in record
        )
        name = str(record.get("scenario", record["figure"].split("_")[0]))
        scenario = f"{name} ({where})" if where else name
        rows[(scenario, str(record["figure"]), str(record.get("unit", "")))].append(
            float(record["value"])
        )
    if skipped:
        print(f"reliability_table: {skipped} lines without a figure skipped", file=sys.stderr)
    print("| scenario | figure | runs | sum | max | unit |")
    print("|---|---|---:|---:|---:|---|")
    for (scenario, figure, unit), values in sorted(rows.items()):
        print(
            f"| {scenario} | {figure} | {len(values)} | {_number(sum(values))} "
            f"| {_number(max(values))} | {unit} |"
        )
    return 0


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
