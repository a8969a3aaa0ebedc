"""Shared by every test: CI's rule that nothing may be skipped, and the test bed's fixtures.

The bed fixtures serve both `tests/e2e` (woci against the bed) and `tests/bed_checks` (the bed
against real clients): one provider per run (`idp`), one emulator trusting it (`emulator`),
and every emulator made healthy again after each test.
"""

import contextlib
import os
from typing import Iterator, List

import pytest

from tests.bed.emulator import OciEmulator
from tests.bed.idp import TestIdP

REQUIRE_ALL = os.environ.get("WOCI_REQUIRE_ALL_TESTS") == "1"
# The OCI token-exchange client the session emulator accepts (HTTP Basic).
OCI_CLIENT_ID = "oci-client"
OCI_CLIENT_SECRET = "oci-secret-for-tests"
UPST_LIFETIME = 3600


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


# --- the test bed ----------------------------------------------------------------------------

# Every emulator a fixture has started and not stopped yet.
_RUNNING_EMULATORS: List[OciEmulator] = []


@contextlib.contextmanager
def started_emulator(*args, **kwargs) -> Iterator[OciEmulator]:
    """An OciEmulator(*args, **kwargs), running, healed after each test while it runs."""
    kwargs.setdefault("upst_lifetime", UPST_LIFETIME)
    with OciEmulator(*args, **kwargs) as emu:
        _RUNNING_EMULATORS.append(emu)
        try:
            yield emu
        finally:
            _RUNNING_EMULATORS.remove(emu)


@pytest.fixture(autouse=True)
def _healthy_emulators():
    """Faults, outages and lifetimes set by one test never leak into the next."""
    yield
    for emu in _RUNNING_EMULATORS:
        emu.clear_faults()
        emu.set_available(True)
        emu.set_upst_lifetime(UPST_LIFETIME)


@pytest.fixture(scope="session")
def idp(tmp_path_factory):
    """One provider for the whole run: rotation on, reuse revokes the grant."""
    with TestIdP(tmp_path_factory.mktemp("idp")) as provider:
        yield provider


@pytest.fixture(scope="session")
def emulator(idp):
    """OCI's token exchange and Object Storage, trusting `idp`'s access tokens."""
    with started_emulator(jwks_uri=idp.jwks_uri, issuer=idp.issuer,
                          clients={OCI_CLIENT_ID: OCI_CLIENT_SECRET}) as emu:
        yield emu
