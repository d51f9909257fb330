"""Shared test plumbing: figures that tests report (cases run, connections held, events counted).

`./dev reliability` runs the fault, security and bad-input suites and prints these figures at the
end; docs/RELIABILITY.md quotes them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

FIGURES: dict[str, object] = {}


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str, object], None]:
    def record(label: str, value: object) -> None:
        FIGURES[f"{request.node.name}: {label}"] = value

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("figures")
        for label, value in FIGURES.items():
            terminalreporter.write_line(f"{label} = {value}")
