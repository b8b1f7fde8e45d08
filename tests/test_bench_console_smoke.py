"""Smoke run of ``bench/console.py``: the real service's console list, every figure once."""

from __future__ import annotations

from tests.support.bench import run_quick

PAGES = (
    "console_list_ms",
    "console_list_deep_ms",
    "console_list_filtered_ms",
    "console_list_search_ms",
    "console_list_search_deep_ms",
)


def test_bench_console_quick_sqlite() -> None:
    lines = run_quick("console.py", timeout=30)
    by_figure = {line["figure"]: line for line in lines}
    assert set(by_figure) == {f"{page}_{q}" for page in PAGES for q in ("p50", "p95")}
    for page in PAGES:
        p50, p95 = by_figure[f"{page}_p50"], by_figure[f"{page}_p95"]
        assert p95["value"] >= p50["value"], (p50, p95)
        assert p95["target"] == 300.0 and p95["plans"] == 2000 and p95["requests"] == 10
    # The deep pages really are deep: the last page of 2,000 plans, 20 per page.
    assert by_figure["console_list_deep_ms_p95"]["path"] == "/console?page=99"
