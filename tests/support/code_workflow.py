"""The CodeWorkflowExample actions of the original test suite (spec §1.3 conformance)."""

from __future__ import annotations

from typing import Any

from dynflow import Action

EXECUTION_LOG: list[tuple[str, Any]] = []


class IncomingIssues(Action):
    def plan(self, issues: list[dict[str, Any]]) -> None:
        for issue in issues:
            self.plan_action(IncomingIssue, issue)
        self.plan_self(issues=issues)

    def finalize(self) -> None:
        EXECUTION_LOG.append(("finalize", self.name()))


class IncomingIssue(Action):
    def plan(self, issue: dict[str, Any]) -> None:
        self.plan_self(issue)
        triage = self.plan_action(Triage, issue)
        self.plan_action(
            UpdateIssue,
            author=triage.input["author"],
            text=triage.input["text"],
            assignee=triage.output["classification"]["assignee"],
            severity=triage.output["classification"]["severity"],
        )
        self.plan_action(NotifyAssignee, triage=triage.output)


class Triage(Action):
    def plan(self, issue: dict[str, Any]) -> None:
        if issue.get("text") == "fail planning":
            raise RuntimeError("Trolling detected")
        self.plan_self(issue)

    def run(self) -> None:
        if self.input.get("text") == "fail run":
            raise RuntimeError("Trolling detected")
        self.output["classification"] = {"assignee": "John Doe", "severity": "medium"}

    def finalize(self) -> None:
        EXECUTION_LOG.append(("finalize", self.name()))


class UpdateIssue(Action):
    def run(self) -> None:
        self.output["updated"] = {"assignee": self.input["assignee"]}


class NotifyAssignee(Action):
    def run(self) -> None:
        self.output["notified"] = self.input["triage"]["classification"]["assignee"]

    def finalize(self) -> None:
        EXECUTION_LOG.append(("finalize", self.name()))


class Ci(Action):
    def run(self) -> None:
        self.output["passed"] = True


class Review(Action):
    def run(self) -> None:
        self.output["passed"] = True


class Merge(Action):
    def run(self) -> None:
        self.output["passed"] = self.input["ci_result"] and all(self.input["review_results"])


class Commit(Action):
    def plan(self, commit: dict[str, Any], reviews: tuple[str, ...] = ("Morfeus", "Neo")) -> None:
        with self.sequence():
            with self.concurrence():
                ci = self.plan_action(Ci, commit=commit)
                review_actions = [
                    self.plan_action(Review, commit=commit, reviewer=r) for r in reviews
                ]
            self.plan_action(
                Merge,
                commit=commit,
                ci_result=ci.output["passed"],
                review_results=[r.output["passed"] for r in review_actions],
            )


ISSUES = [
    {"author": "Peter Smith", "text": "Failing test"},
    {"author": "John Doe", "text": "Internal server error"},
]
