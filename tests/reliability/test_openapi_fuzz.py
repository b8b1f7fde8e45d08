"""Schemathesis over the task API's OpenAPI document, against the shipped processes over HTTP.

Two deployments, each exactly as shipped (:class:`~tests.reliability.harness.Service`: its own
config directory, a free loopback port, an SQLite file): the standalone core
(``smart-proxy-dynflow-core``, the document at ``/openapi.json``) and the Smart Proxy with the
dynflow plugin in-process (``smart-proxy``, the document at ``/dynflow/openapi.json``). The
document each serves is loaded over HTTP (``schemathesis.openapi.from_url``) and must be the
one :func:`smart_proxy_dynflow.openapi.openapi_document` builds. A few simulated jobs
(``REX_SIMULATE``, a fake Foreman taking the callbacks) are launched first, through the
document's own ``POST /tasks/launch``, so that task ids in paths and bodies also reach real
plans, running ones included.

The requests, per deployment:

* **coverage**: schemathesis's deterministic coverage phase, valid and invalid values
  (boundaries, missing and wrongly typed fields, undeclared methods, other content types);
* **fuzzing**: Hypothesis drawing from ``operation.as_strategy()`` in both generation modes
  (positive: what the document allows; negative: what it forbids), and for the operations
  taking task ids once more with the ids of the launched jobs;
* **regressions**: requests that once got a 500 or broke the document (below).

Every response is counted by status and checked (``case.validate_response``): no 5xx, the
status code documented, the content type documented, the body matching the response schema,
documented headers, an undeclared method answered 405 with ``Allow`` (RFC 9110), a request the
document forbids not accepted (``negative_data_rejection``: the document says what the API
really takes). Not checked: ``positive_data_acceptance``, since a request the document allows
may still name an action, operation or task that does not exist (400/404/422 by design).
Afterwards the process must still run, its log must hold no traceback, and SIGTERM must stop
it with exit 0.

Figures (one JSON line each, :func:`harness.emit`): ``openapi_fuzz_requests``,
``openapi_fuzz_5xx``, ``openapi_fuzz_schema_violations`` (responses failing a check other than
the 5xx one), ``openapi_fuzz_seconds``, per deployment. The fast variant (``make test``) is
deterministic (``derandomize=True``) and sends a few hundred requests per deployment; the long
one (``reliability``) sends >= 2,000 in total with a seed it prints (``OPENAPI_FUZZ_SEED``
repeats a run).

Regressions found by this test and fixed in ``smart_proxy_dynflow``: ``{"step_id": "²"}`` (any
text ``str.isdigit`` takes and ``int`` refuses, or more than 4300 digits) at
``/tasks/:id/update`` and ``/done`` was a 500; a 405 lacked ``Allow``; the document left out
415 and 503 (every endpoint reading a body), 409 (unreadable stored plans), 403 of
``/tasks/operations``, that ``/tasks/statuses`` needs a non-empty ``task_ids`` and that
``/tasks/status`` takes ``null``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.core.failures import FailureGroup, ServerError

# The coverage phase has no public entry outside the pytest plugin and the CLI; these are the
# objects both use (schemathesis is pinned by the lock file).
from schemathesis.generation.drivers import CoverageGenerator
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.generation.overrides import Override

from smart_proxy_dynflow.openapi import openapi_document

from . import harness

CHECK_NAMES = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "unsupported_method",
    "negative_data_rejection",
)
CHECKS = [getattr(schemathesis.checks, name) for name in CHECK_NAMES]
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
JOBS = 6
"""Simulated jobs launched before the fuzzing (their ids and their parent's are the known ids)."""
JOB_LINES = 600
"""Output lines of a simulated job, one per runner refresh (1 s): they run through the fuzzing
unless a fuzzed cancel or halt ends them."""
EXAMPLES_LIMIT = 20
"""At most this many examples of each kind of failure are kept for the message."""
UNDECLARED = "PUT"
"""No path of the task API takes PUT."""

FAST_EXAMPLES = 5
LONG_EXAMPLES = 60  # about 2,800 requests over both documents
LONG_TOTAL = 2000


# ---- counting and checking -------------------------------------------------------------------


@dataclass
class Tally:
    """Every request one deployment got, its status, and what the checks said."""

    deployment: str
    base_url: str
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_source: Counter[str] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)
    server_errors: int = 0
    violations: int = 0
    known_task_2xx: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)
    without_negative: list[str] = field(default_factory=list)

    def example(self, kind: str, text: str) -> None:
        kept = self.examples.setdefault(kind, [])
        if len(kept) < EXAMPLES_LIMIT:
            kept.append(text)

    def record(
        self,
        case: Any,
        response: requests.Response,
        source: str,
        known: bool = False,
        validate: bool = True,
    ) -> None:
        self.requests += 1
        self.statuses[response.status_code] += 1
        self.by_source[source] += 1
        self.by_operation[case.operation.label] += 1
        if known and 200 <= response.status_code < 300:
            self.known_task_2xx += 1
        shown = f"{case.method} {case.formatted_path} -> {response.status_code}"
        if response.status_code >= 500:
            self.server_errors += 1
            self.example("5xx", f"{shown} {response.text[:200]!r}\n{self.curl(case)}")
        if not validate:
            return
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            failures = [f for f in group.exceptions if not isinstance(f, ServerError)]
            if failures:
                self.violations += 1
                for failure in failures:
                    self.example(
                        f"{case.operation.label}: {failure.title}",
                        f"{shown} ({source}) {failure.message[:300]}\n{self.curl(case)}",
                    )

    def curl(self, case: Any) -> str:
        try:
            command = str(case.as_curl_command(base_url=self.base_url))
        except Exception as exc:  # a case that cannot be shown still counts
            return f"(no curl: {exc!r})"
        return command if len(command) <= 600 else command[:600] + "..."

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "statuses": dict(sorted(self.statuses.items())),
            "sources": dict(self.by_source),
            "5xx": self.server_errors,
            "violations": self.violations,
            "known_task_2xx": self.known_task_2xx,
        }


@dataclass
class Fuzzer:
    """Sends the cases of one deployment's document and records them in its :class:`Tally`."""

    tally: Tally
    schema: Any
    session: requests.Session = field(default_factory=requests.Session)

    def send(
        self, case: Any, source: str, known: bool = False, validate: bool = True
    ) -> requests.Response:
        response = case.call(base_url=self.tally.base_url, session=self.session, timeout=30)
        self.tally.record(case, response, source, known, validate)
        return response

    def operations(self) -> list[Any]:
        return [result.ok() for result in self.schema.get_all_operations()]

    # ---- the three sources ----

    def coverage(self) -> None:
        for operation in self.operations():
            cases = CoverageGenerator(
                operation=operation,
                generation_modes=list(MODES),
                generation_config=self.schema.config.generation_for(
                    operation=operation, phase="coverage"
                ),
                auth_storage=None,
                override=Override(),
                feedback=FeedbackSources(),
            )
            for case in cases:
                self.send(case, "coverage")

    def fuzz(self, known_ids: list[str], settings: hypothesis.settings, seed: int | None) -> None:
        for operation in self.operations():
            for mode in MODES:
                self.explore(
                    operation.as_strategy(generation_mode=mode),
                    settings,
                    seed,
                    source=f"fuzz-{mode.value}",
                    label=operation.label,
                )
            known = self.known_strategy(operation, known_ids)
            if known is not None:
                self.explore(known, settings, seed, source="fuzz-known", label=operation.label)

    def known_strategy(self, operation: Any, known_ids: list[str]) -> Any:
        """Valid cases naming the launched jobs (and one unknown id), or None."""
        if "{task_id}" in operation.path:
            return st.one_of(
                [operation.as_strategy(path_parameters={"task_id": t}) for t in known_ids]
            )
        if operation.path in ("/tasks/status", "/tasks/statuses"):
            ids = st.lists(
                st.sampled_from([*known_ids, str(uuid.UUID(int=1))]), min_size=1, max_size=4
            )
            return ids.flatmap(lambda chosen: operation.as_strategy(body={"task_ids": chosen}))
        return None

    def explore(
        self,
        strategy: Any,
        settings: hypothesis.settings,
        seed: int | None,
        *,
        source: str,
        label: str,
    ) -> None:
        known = source == "fuzz-known"

        @settings
        @given(case=strategy)
        def explore(case: Any) -> None:
            self.send(case, source, known)

        if seed is not None:
            explore = hypothesis.seed(seed)(explore)
        try:
            explore()
        except Unsatisfiable:
            # Nothing to negate (no parameters, no body): only positive cases exist.
            assert source == "fuzz-negative", f"{label}: no {source} cases"
            self.tally.without_negative.append(label)

    def regressions(self, known_ids: list[str]) -> None:
        """Requests that once got a 500 or broke the document, and undeclared methods."""
        for kind in ("update", "done"):
            operation = self.schema[f"/tasks/{{task_id}}/{kind}"]["POST"]
            for task_id in (known_ids[0], str(uuid.UUID(int=2))):
                for step_id in ("²", "\u0663", "1" * 5000, " 1 ", "\t2\n", "-1", 10**30):
                    case = operation.Case(
                        path_parameters={"task_id": task_id},
                        body={"step_id": step_id},
                        media_type="application/json",
                    )
                    response = self.send(case, "regression")
                    # Text that is not ASCII digits (or too many) is no step id: 422 (was 500).
                    refused = step_id in ("²", "\u0663", "1" * 5000)
                    if refused and response.status_code != 422:
                        self.tally.violations += 1
                        self.tally.example(
                            f"{operation.label}: step_id",
                            f"{step_id[:20]!r} -> {response.status_code} {response.text[:200]!r}",
                        )
        for operation in self.operations():
            # 405 is no answer the document lists for an operation: checked here, not there.
            params = {"task_id": known_ids[0]} if "{task_id}" in operation.path else {}
            case = operation.Case(method=UNDECLARED, path_parameters=params)
            response = self.send(case, "regression", validate=False)
            allow = ", ".join(response.headers.get("allow") or [])  # header -> list of values
            allowed = {method.strip().upper() for method in allow.split(",")}
            if response.status_code != 405 or operation.method.upper() not in allowed:
                self.tally.violations += 1
                self.tally.example(
                    f"{operation.label}: {UNDECLARED}",
                    f"{response.status_code} Allow: {allow!r} {response.text[:200]!r}",
                )


# ---- the deployments ------------------------------------------------------------------------


def simulated_output(directory: Path) -> Path:
    path = directory / "simulated-output.txt"
    path.write_text("".join(f"simulated line {i}\n" for i in range(JOB_LINES)))
    return path


def make_service(directory: Path, kind: str, foreman: harness.Foreman, output: Path) -> Any:
    workdir = directory / kind
    workdir.mkdir()
    return harness.Service(
        workdir,
        kind,
        str(workdir / "dynflow.sqlite"),
        foreman.url,
        env={"REX_SIMULATE": "1", "REX_SIMULATE_PATH": str(output)},
    )


def load_document(service: harness.Service) -> Any:
    url = f"{service.url}{service.api}/openapi.json"
    served = requests.get(url, timeout=30)
    assert served.status_code == 200, (url, served.status_code, served.text[:300])
    assert served.json() == json.loads(json.dumps(openapi_document())), (
        f"{url} is not the document of smart_proxy_dynflow.openapi"
    )
    return schemathesis.openapi.from_url(url, timeout=30)


def launch_jobs(fuzzer: Fuzzer, rng: random.Random) -> list[str]:
    """``POST /tasks/launch`` (operation ``ssh``) of :data:`JOBS` simulated jobs, through the
    document (counted and checked like every other request); returns the parent's id and the
    jobs' ids."""
    keys = harness.new_keys(JOBS, rng)
    operation = fuzzer.schema["/tasks/launch"]["POST"]
    case = operation.Case(
        body={
            "operation": "ssh",
            "input": {key: harness.simulated_job(key) for key in keys},
            "options": {},
        },
        media_type="application/json",
    )
    response = fuzzer.send(case, "launch")
    assert response.status_code == 200, response.text[:500]
    return [response.json()["parent"]["task_id"], *keys]


def hypothesis_settings(examples: int, derandomize: bool) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=examples,
        derandomize=derandomize,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate),  # every case is recorded, none raises: no shrink
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


def fuzz_deployment(
    service: harness.Service, examples: int, derandomize: bool, seed: int | None
) -> tuple[Tally, float]:
    """Everything one deployment gets (runs in a thread: the fake Foreman keeps serving)."""
    began = time.monotonic()
    schema = load_document(service)
    tally = Tally(service.kind, f"{service.url}{service.api}")
    fuzzer = Fuzzer(tally, schema)
    known_ids = launch_jobs(fuzzer, random.Random(seed if seed is not None else 1))
    fuzzer.coverage()
    fuzzer.fuzz(known_ids, hypothesis_settings(examples, derandomize), seed)
    fuzzer.regressions(known_ids)
    fuzzer.session.close()
    return tally, time.monotonic() - began


async def run_deployments(
    tmp_path: Path, examples: int, *, derandomize: bool, seed: int | None, variant: str
) -> list[Tally]:
    foreman = harness.Foreman()
    await foreman.start()
    output = simulated_output(tmp_path)
    services = [make_service(tmp_path, kind, foreman, output) for kind in ("core", "proxy")]
    tallies: list[Tally] = []
    try:
        await asyncio.gather(*(service.start() for service in services))
        for index, service in enumerate(services):
            own_seed = None if seed is None else seed + index  # other cases for each
            tally, seconds = await asyncio.to_thread(
                fuzz_deployment, service, examples, derandomize, own_seed
            )
            tallies.append(tally)
            context = {"deployment": service.kind, "variant": variant, "seed": own_seed}
            harness.emit("openapi_fuzz_requests", tally.requests, unit="requests", **context)
            harness.emit("openapi_fuzz_5xx", tally.server_errors, unit="responses", **context)
            harness.emit(
                "openapi_fuzz_schema_violations", tally.violations, unit="responses", **context
            )
            harness.emit("openapi_fuzz_seconds", round(seconds, 2), unit="s", **context)
            print(json.dumps({"deployment": service.kind, **tally.summary()}), flush=True)
            assert service.proc is not None and service.proc.poll() is None, service.tail(40)
            assert service.tracebacks() == 0, service.tail(60)
        for service in services:
            await service.terminate()
    finally:
        for service in services:
            service.close()
        await foreman.stop()
    return tallies


def check(tallies: Iterable[Tally], minimum_total: int) -> None:
    tallies = list(tallies)
    total = sum(t.requests for t in tallies)
    report = {t.deployment: {**t.summary(), "examples": t.examples} for t in tallies}
    shown = json.dumps(report, indent=1, ensure_ascii=False)[:12000]
    assert sum(t.server_errors for t in tallies) == 0, shown
    assert sum(t.violations for t in tallies) == 0, shown
    assert total >= minimum_total, f"{total} requests < {minimum_total}: {shown}"
    for tally in tallies:
        # The fuzzing reached real plans, not only unknown ids.
        assert tally.known_task_2xx > 0, shown
        for source in ("launch", "coverage", "fuzz-positive", "fuzz-negative", "fuzz-known"):
            assert tally.by_source[source] > 0, (source, shown)
        assert {"/tasks/launch", "/tasks/{task_id}/update"} <= {
            label.split(" ", 1)[1] for label in tally.by_operation
        }, shown


# ---- the tests --------------------------------------------------------------------------------


def _seed() -> int:
    configured = os.environ.get("OPENAPI_FUZZ_SEED")
    return int(configured) if configured else random.randrange(2**32)


async def test_openapi_fuzz_fast(tmp_path: Path) -> None:
    """Both deployments, deterministic, a few hundred requests each (``make test``)."""
    tallies = await run_deployments(
        tmp_path, FAST_EXAMPLES, derandomize=True, seed=None, variant="fast"
    )
    check(tallies, minimum_total=300)


@pytest.mark.reliability
async def test_openapi_fuzz_long(tmp_path: Path) -> None:
    """Both deployments, >= 2,000 requests in total, seeded (``OPENAPI_FUZZ_SEED``)."""
    seed = _seed()
    print(f"OPENAPI_FUZZ_SEED={seed}", flush=True)
    tallies = await run_deployments(
        tmp_path, LONG_EXAMPLES, derandomize=False, seed=seed, variant="long"
    )
    check(tallies, minimum_total=LONG_TOTAL)
