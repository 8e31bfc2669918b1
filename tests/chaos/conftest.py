"""The chaos suite's row per scenario and the table printed at the end of the run."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from tests.chaos.kit import FULL, ROWS, Scenario, table
from tests.integration.gateway_env import model_servers

_PASSED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_PASSED] = report.passed
    return report


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Iterator[Scenario]:
    """The test's row, named by its docstring's first line; recorded whether it passed or not."""
    doc = (request.function.__doc__ or request.function.__name__).strip().splitlines()[0]
    row = Scenario(doc.rstrip("."))
    yield row
    row.ok = request.node.stash.get(_PASSED, False)
    ROWS.append(row.row())
    # Visible with -s (make chaos): the row as soon as its scenario ends.
    print("\n" + table([ROWS[-1]]))


@pytest.fixture(scope="session")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A stable (phase1) and a canary (phase2) `lvm-serve --profile stub` for scenarios that
    kill something else."""
    with model_servers(
        {"phase1": ["stub"], "phase2": ["stub"]}, tmp_path_factory.mktemp("stubs")
    ) as urls:
        yield urls


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ROWS:
        mode = "full, LVM_CHAOS=full" if FULL else "bounded; `make chaos` runs it in full"
        terminalreporter.section(f"chaos suite ({mode})")
        terminalreporter.write_line(table(sorted(ROWS)))  # by scenario number
