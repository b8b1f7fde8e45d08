"""Actions that give the console something to show: a release workflow with sequences and
concurrences, a step that fails once (resume), a step that always fails (skip), secrets in
inputs and outputs (redaction). Used by the console tests and ``scripts/console_screenshots.py``.
"""

from __future__ import annotations

import time
from typing import ClassVar

from dynflow import Action

SECRET = "hunter2-very-secret"


class Checkout(Action):
    def run(self) -> None:
        self.output["commit"] = "9f3c2e1"
        self.output_chunk({"fetched": "origin/main", "objects": 1243}, kind="git")


class Compile(Action):
    def run(self) -> None:
        time.sleep(float(self.input.get("sleep", 0)))
        self.output["artifact"] = f"{self.input['app']}-{self.input['commit']}.tar.gz"


class UnitTests(Action):
    def run(self) -> None:
        self.output.update(passed=412, failed=0)


class IntegrationTests(Action):
    def run(self) -> None:
        self.output.update(passed=57, failed=0)


class Lint(Action):
    def run(self) -> None:
        self.output["warnings"] = 3


class Publish(Action):
    """Has a password in its input and a token in its output: both must be redacted."""

    def run(self) -> None:
        self.output["url"] = f"https://registry.example.com/{self.input['artifact']}"
        self.output["upload_token"] = "tok-" + SECRET


class DeployHost(Action):
    def run(self) -> None:
        self.output["deployed_to"] = self.input["host"]


class Notify(Action):
    def run(self) -> None:
        self.output["sent"] = True

    def finalize(self) -> None:
        pass


class Release(Action):
    """``S[Checkout, Compile, C[UnitTests, IntegrationTests, Lint], Publish, C[Deploy…],
    Notify]`` plus a finalize step."""

    def plan(
        self, app: str, hosts: list[str], sleep: float = 0.0, deploy_script: str | None = None
    ) -> None:
        with self.sequence():
            checkout = self.plan_action(Checkout, repository=f"git@example.com:{app}.git")
            build = self.plan_action(
                Compile, app=app, commit=checkout.output["commit"], sleep=sleep
            )
            with self.concurrence():
                self.plan_action(UnitTests, artifact=build.output["artifact"])
                self.plan_action(IntegrationTests, artifact=build.output["artifact"])
                self.plan_action(Lint, app=app)
            self.plan_action(
                Publish,
                artifact=build.output["artifact"],
                registry={"user": "ci", "password": SECRET},
            )
            with self.concurrence():
                for host in hosts:
                    if deploy_script is None:
                        self.plan_action(DeployHost, host=host)
                    else:  # a runner: live output (needs a smart_proxy_dynflow core)
                        from .local_command import LocalCommand

                        script = deploy_script.replace("{host}", host)
                        self.plan_action(LocalCommand, {"hostname": host, "script": script})
            self.plan_action(Notify, channel="#releases")
        self.plan_self(app=app)

    def finalize(self) -> None:
        pass


class FailOnce(Action):
    """Fails the first time it runs in a plan (the plan pauses), succeeds when resumed."""

    failed_plans: ClassVar[set[str]] = set()

    def run(self) -> None:
        if self.execution_plan_id not in self.failed_plans:
            self.failed_plans.add(self.execution_plan_id)
            raise ConnectionError("database at db.example.com:5432 refused the connection")
        self.output["migrated"] = True


def _deep_failure(depth: int) -> None:
    if depth == 0:
        raise RuntimeError(f"disk /var is full (password={SECRET})")
    _deep_failure(depth - 1)


class AlwaysFails(Action):
    def run(self) -> None:
        _deep_failure(3)


class Report(Action):
    def run(self) -> None:
        self.output["report"] = "ok"


class Maintenance(Action):
    """``S[Checkout, Migrate (fails once), Cleanup (always fails), Report]``: pauses."""

    def plan(self, migrate: bool = True, always_fail: bool = True) -> None:
        with self.sequence():
            checkout = self.plan_action(Checkout, repository="git@example.com:db.git")
            if migrate:
                self.plan_action(FailOnce, database="inventory")
            if always_fail:
                cleanup = self.plan_action(AlwaysFails, path="/var", after=checkout.output)
                self.plan_action(Report, cleanup=cleanup.output)
            else:
                self.plan_action(Report)
