"""Fuzz a running server from its own OpenAPI schema with schemathesis: every operation, cases
that fit the schema (positive) and cases that do not (negative). A finding is a 5xx, or a 4xx
whose body is not the OpenAI error shape."""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

ERROR_KEYS = {"message", "type", "param", "code"}
DERANDOMIZE = os.environ.get("CI") == "true"
"""CI sends the same cases every run (a gate must not flake); elsewhere every run explores anew."""


@dataclass
class FuzzReport:
    counts: collections.Counter = field(default_factory=collections.Counter)
    """(operation, mode, status) -> cases sent."""
    findings: list[str] = field(default_factory=list)

    def cases(self, operation: str) -> int:
        return sum(n for (op, _, _), n in self.counts.items() if op == operation)

    def table(self) -> str:
        """Markdown: cases per operation and mode, by status class."""
        rows = collections.defaultdict(collections.Counter)
        for (op, mode, status), n in self.counts.items():
            rows[(op, mode)][f"{status // 100}xx"] += n
        lines = ["| operation | mode | cases | 2xx | 4xx | 5xx |", "|---|---|---|---|---|---|"]
        for (op, mode), by_class in sorted(rows.items()):
            lines.append(f"| {op} | {mode} | {sum(by_class.values())} | {by_class['2xx']} | {by_class['4xx']} "
                         f"| {by_class['5xx']} |")
        return "\n".join(lines)


def fuzz(url: str, max_examples: int, *, headers: dict[str, str] | None = None) -> FuzzReport:
    """Send up to `max_examples` cases per operation and mode to the server at `url`."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    report = FuzzReport()
    with requests.Session() as session:
        session.headers.update(headers or {})
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz_operation(session, url, operation, mode, max_examples, report)
    return report


def _fuzz_operation(session: requests.Session, url: str, operation, mode: GenerationMode, max_examples: int,
                    report: FuzzReport) -> None:
    @given(case=operation.as_strategy(mode))
    @settings(max_examples=max_examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate], derandomize=DERANDOMIZE)
    def send(case) -> None:
        if mode is GenerationMode.POSITIVE and isinstance(case.body, dict):
            # A random model name is a 404 before anything else is looked at: positive cases leave
            # the field out (it is optional), so that they reach the model; negative ones keep it.
            case.body.pop("model", None)
        response = case.call(base_url=url, session=session, timeout=120)
        report.counts[(operation.label, mode.value, response.status_code)] += 1
        finding = _check(response)
        if finding:
            report.findings.append(f"{operation.label} ({mode.value}) {case.body!r:.300} -> {response.status_code}: "
                                   f"{finding}")

    try:
        send()
    except Unsatisfiable:  # an operation without parameters has no negative case
        assert mode is GenerationMode.NEGATIVE, operation.label


def _check(response) -> str | None:
    if response.status_code >= 500:
        return f"server error {response.text[:300]}"
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            return f"not the OpenAI error shape: {response.text[:300]}"
        if set(error) != ERROR_KEYS or not isinstance(error["message"], str) or not error["message"]:
            return f"not the OpenAI error shape: {error}"
    return None
