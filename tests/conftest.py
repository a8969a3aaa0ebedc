"""Shared by every test: CI's rule that nothing may be skipped, and clean environments."""

import os

import pytest

REQUIRE_ALL = os.environ.get("WOCI_REQUIRE_ALL_TESTS") == "1"


# Node ids of skipped tests, filled by the hook below during one pytest run.
_SKIPPED = []


def pytest_runtest_logreport(report):
    if report.skipped:
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    # CI must prove every test ran: a skip (a missing browser, kubectl, node) is a failure there.
    if REQUIRE_ALL and _SKIPPED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if REQUIRE_ALL and _SKIPPED:
        terminalreporter.write_line(
            f"WOCI_REQUIRE_ALL_TESTS=1: {len(_SKIPPED)} skipped test(s) fail this run:", red=True)
        for nodeid in _SKIPPED:
            terminalreporter.write_line(f"  {nodeid}", red=True)
