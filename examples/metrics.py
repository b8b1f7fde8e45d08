"""Metrics: the engine's Prometheus metrics (served as ``GET /metrics`` by the core service and
as ``/dynflow/metrics`` by the Smart Proxy).

    .venv/bin/python examples/metrics.py
"""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from dynflow import Action, World, telemetry


class Ping(Action):
    async def run(self) -> None:
        self.output["pong"] = True


async def main() -> None:
    async with World("sqlite+aiosqlite://") as world:
        for _ in range(3):
            await (await world.trigger(Ping)).wait()
        body, content_type = telemetry.exposition()  # what GET /metrics answers
        print("content type:", content_type)
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == "dynflow_finished_execution_plans_total":
                    labels = sample.labels
                    print(sample.name, labels["action"], labels["result"], sample.value)
                if sample.name == "dynflow_step_execution_time_count":
                    print(sample.name, sample.labels["phase"], sample.value)


if __name__ == "__main__":
    asyncio.run(main())
