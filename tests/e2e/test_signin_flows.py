"""Signing in where no browser reaches 127.0.0.1, and with only the issuer configured.

woci runs as a process against the real provider and the OCI emulator, and the real oci runs
afterwards on the session it made: discovery from the issuer alone (a wrong issuer, an outage
with and without a usable copy), the device flow (approved by the scripted and the Chromium
user, denied, expired, slowed down), the pasted flow (fed by a pipe or a terminal: the whole
address, the bare code, a wrong state, end of input), a browser command, and a list of
callback ports. Faults come from the bed: the provider's device switches and a fault proxy
that serves the discovery document like a gateway.
"""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from contextlib import ExitStack
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from tests.bed.browser_user import address_after_sign_in
from tests.bed.faultproxy import DISCOVERY_PATH, FaultProxy
from tests.e2e.conftest import BED, RUN_TIMEOUT, WOCI, WociUser, assert_namespace_printed, free_port

BROWSER_USER = BED / "browser_user.py"
CHROMIUM_USER = BED / "chromium_user.py"
CHROMIUM = Path("/usr/bin/chromium")
# Bound for one line of woci's prompt to appear, and for one user agent run.
LINE_TIMEOUT = 30
USER_AGENT_TIMEOUT = 60
SESSION_FILES = ("token", "refresh_token", "oci_api_key.pem", "oci_api_key_public.pem")
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
INDENTED_URL = r"^    (https?://\S+)$"


@pytest.fixture(autouse=True)
def _provider_device_defaults(idp):
    """Device switches set by one test never reach the next."""
    yield
    idp.reset_device_control()


class LiveWoci:
    """woci running with its stderr read line by line (every wait bounded) and its stdin fed
    by the test: a pipe, a terminal (pty=True), or closed."""

    def __init__(self, user: WociUser, *args: str, env: Optional[Dict[str, str]] = None,
                 stdin: str = "closed"):
        self.args = [str(WOCI), *args]
        self._pty_master: Optional[int] = None
        if stdin == "pty":
            self._pty_master, slave = os.openpty()
            stdin_arg = slave
        else:
            stdin_arg = subprocess.PIPE if stdin == "pipe" else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(self.args, env=env or user.env(), stdin=stdin_arg,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, cwd=user.home)
        finally:
            if stdin == "pty":
                os.close(slave)
        self.err: List[str] = []
        self.out: List[str] = []
        self._lines: "queue.Queue[str]" = queue.Queue()
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stderr, True),
                                          daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stdout, False),
                                          daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, is_stderr: bool) -> None:
        for line in stream:
            (self.err if is_stderr else self.out).append(line)
            if is_stderr:
                self._lines.put(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def line(self, pattern: str, timeout: float = LINE_TIMEOUT) -> re.Match:
        """The first stderr line from now on that matches pattern."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(f"no stderr line matching {pattern!r} within {timeout} s; "
                                     f"stderr so far:\n{self.stderr}") from None
            match = re.search(pattern, line)
            if match:
                return match

    def send(self, text: str) -> None:
        if self._pty_master is not None:
            os.write(self._pty_master, text.encode())
        else:
            self.proc.stdin.write(text)
            self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()

    def wait(self, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return subprocess.CompletedProcess(self.args, code, "".join(self.out), self.stderr)

    def __enter__(self) -> "LiveWoci":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self._pty_master is not None:
            os.close(self._pty_master)


def run_user_agent(user: WociUser, script: Path, url: str, action: str = "login",
                   **extra_env: str) -> dict:
    """A user at another device: the scripted or Chromium user given one URL, as a process;
    its record. Its log is its own, so user.browser_opens() still counts woci's openings."""
    log = user.home / f"user-agent-{time.monotonic_ns()}.jsonl"
    env = user.env(WOCI_TEST_BROWSER_LOG=str(log), WOCI_TEST_BROWSER_ACTION=action,
                   **extra_env)
    done = subprocess.run([sys.executable, str(script), url], env=env, timeout=USER_AGENT_TIMEOUT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (line,) = log.read_text().splitlines()
    return json.loads(line)


def assert_nothing_saved(user: WociUser) -> None:
    for name in SESSION_FILES:
        assert not (user.session_dir / name).exists(), name
    assert not user.config_file.exists()


def error_lines(result: subprocess.CompletedProcess) -> List[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("woci: error:")]


def one_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 1, exactly one error line holding every fragment, nothing on stdout."""
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    (line,) = error_lines(result)
    for fragment in fragments:
        assert fragment in line, line
    return line


def device_polls(idp, since: int) -> List[dict]:
    idp.sync()
    return idp.events_since(since, "token_request", grant_type=DEVICE_GRANT)


def age_discovery_copy(user: WociUser, seconds: float) -> None:
    """Make the kept discovery document look fetched `seconds` ago."""
    path = user.session_dir / "discovery.json"
    document = json.loads(path.read_text())
    document["fetched_at"] = time.time() - seconds
    path.write_text(json.dumps(document))


# --- discovery ---------------------------------------------------------------------------------


@pytest.fixture
def gateway(idp):
    """The provider's discovery document at another address, naming that address as the
    issuer (endpoints still the provider's own): where a test can make discovery fail."""
    with FaultProxy(idp.issuer) as proxy:
        proxy.present_as_issuer = True
        yield proxy


def issuer_only(user: WociUser, issuer: str, **extra: Optional[str]) -> None:
    """A manager INI with the issuer, the client ids and the secret: no provider endpoint."""
    user.write_manager_ini(authz_base_url=None, token_url=None, issuer=issuer, **extra)
    text = user.manager_ini.read_text()
    assert "authz_base_url" not in text and "token_url" not in text


def test_issuer_alone_signs_in_and_discovery_is_read_once_a_day(user, idp, emulator, gateway):
    """Only the issuer: the endpoints come from discovery, which is fetched once and kept
    (0600); later renewals use the copy, and a valid session never reads it, even when old."""
    issuer_only(user, gateway.url)
    emulator.set_upst_lifetime(30)   # every run renews

    assert_namespace_printed(user.oci_ns_get())
    assert len(user.browser_opens()) == 1
    assert user.browser_opens()[0]["url"] == idp.authorize_url
    assert gateway.count(DISCOVERY_PATH) == 1
    kept = user.session_dir / "discovery.json"
    assert kept.stat().st_mode & 0o777 == 0o600
    document = json.loads(kept.read_text())
    assert document["issuer"] == gateway.url
    assert document["endpoints"]["token_endpoint"] == idp.token_url
    assert document["endpoints"]["device_authorization_endpoint"] == idp.device_url

    mark = idp.mark()
    assert_namespace_printed(user.oci_ns_get())   # a renewal with the kept copy
    assert idp.count("grant.success", grant_type="refresh_token") >= 1
    assert idp.events_since(mark, "grant.success", grant_type="refresh_token")
    assert gateway.count(DISCOVERY_PATH) == 1

    emulator.set_upst_lifetime(3600)
    assert_namespace_printed(user.oci_ns_get())
    age_discovery_copy(user, 3 * 24 * 3600)
    assert_namespace_printed(user.oci_ns_get())   # valid session: no discovery at all
    assert gateway.count(DISCOVERY_PATH) == 1
    assert len(user.browser_opens()) == 1


def test_a_document_for_another_issuer_is_refused(user, idp):
    """The document at the configured issuer names another issuer: exit 1 saying both, no
    browser, nothing saved (not even the document)."""
    with FaultProxy(idp.issuer) as proxy:   # passes the provider's document on unchanged
        issuer = proxy.url
        issuer_only(user, issuer)
        result = user.oci_ns_get()
    line = one_error(result, f"is for issuer '{idp.issuer}'", f"not the configured '{issuer}'")
    assert DISCOVERY_PATH in line
    assert len(result.stderr.strip().splitlines()) == 1
    assert user.browser_opens() == []
    assert_nothing_saved(user)
    assert not (user.session_dir / "discovery.json").exists()


def test_discovery_outage_uses_a_copy_up_to_a_week_old(user, idp, emulator, gateway):
    """Discovery unreachable: a two-day-old copy is used with a warning and the renewal
    works; an eight-day-old one is not: exit 1 naming the document, refresh token kept."""
    issuer_only(user, gateway.url)
    emulator.set_upst_lifetime(30)
    assert_namespace_printed(user.oci_ns_get())
    gateway.set_down(True)

    age_discovery_copy(user, 2 * 24 * 3600)
    result = user.oci_ns_get()
    assert_namespace_printed(result)
    assert "using the copy of the discovery document from 48 h 0 min ago" in result.stderr
    assert gateway.count(DISCOVERY_PATH, status="dropped") >= 1
    assert len(user.browser_opens()) == 1   # a refresh, no new sign-in

    age_discovery_copy(user, 8 * 24 * 3600)
    refresh_token = user.refresh_token_text()
    result = user.oci_ns_get()
    one_error(result, gateway.url + DISCOVERY_PATH, "too old to use")
    assert user.refresh_token_text() == refresh_token
    assert len(user.browser_opens()) == 1


# --- the device flow -------------------------------------------------------------------------


def device_prompt(live: LiveWoci):
    """The verification URI, the user code and the complete URI woci printed."""
    uri = live.line(INDENTED_URL).group(1)
    code = live.line(r"and enter the code: (\S+)$").group(1)
    complete = live.line(INDENTED_URL).group(1)
    return uri, code, complete


@pytest.mark.parametrize("agent", ["scripted", "chromium"])
def test_device_flow_approved_on_another_device(user, idp, agent):
    """login_flow = device: the code and the page on stderr, approved by a user elsewhere
    (scripted: the complete link; Chromium: the page, typing the code); woci opens no
    browser, polls at the provider's interval, and the real oci works afterwards."""
    if agent == "chromium" and not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package")
    if agent == "scripted":   # the device endpoint from discovery
        issuer_only(user, idp.issuer, login_flow="device")
    else:
        user.write_manager_ini(login_flow="device", device_authorization_url=idp.device_url)
    mark = idp.mark()
    with LiveWoci(user, "--profile", user.profile) as live:
        uri, code, complete = device_prompt(live)
        assert uri == idp.issuer + "/device"
        assert complete == f"{uri}?user_code={urllib.parse.quote(code)}"
        if agent == "scripted":
            record = run_user_agent(user, BROWSER_USER, complete)
        else:
            record = run_user_agent(user, CHROMIUM_USER, uri, WOCI_TEST_USER_CODE=code)
        result = live.wait()
    assert record["error"] is None and record["device_result"] == "success", record
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert user.browser_opens() == []
    polls = device_polls(idp, mark)
    assert polls[-1]["status"] == 200
    times = [poll["t"] for poll in polls]
    assert all(b - a >= 0.9 for a, b in zip(times, times[1:])), times   # interval 1 s
    assert user.refresh_token_text()
    assert_namespace_printed(user.oci_ns_get())
    assert len(device_polls(idp, mark)) == len(polls)   # the valid session asked nothing


def test_device_flow_denied_saves_nothing(user, idp):
    """The user aborts at the provider: exit 1 with one line saying it was denied."""
    user.write_manager_ini(login_flow="device", device_authorization_url=idp.device_url)
    with LiveWoci(user, "--profile", user.profile) as live:
        _, _, complete = device_prompt(live)
        record = run_user_agent(user, BROWSER_USER, complete, action="deny")
        result = live.wait()
    assert record["device_result"] == "aborted", record
    one_error(result, "denied", "access_denied")
    assert_nothing_saved(user)


def test_device_code_that_expires_ends_the_wait(user, idp):
    """Nobody approves a code that lives 2 s: exit 1 within seconds, 'expired', nothing
    saved, and no poll after the code's lifetime."""
    idp.device_control(code_ttl=2)
    user.write_manager_ini(login_flow="device", device_authorization_url=idp.device_url)
    mark = idp.mark()
    started = time.monotonic()
    with LiveWoci(user, "--profile", user.profile) as live:
        device_prompt(live)
        result = live.wait()
    assert time.monotonic() - started < 15
    one_error(result, "expired")
    assert_nothing_saved(user)
    assert all(poll["error"] == "authorization_pending" for poll in device_polls(idp, mark))


def test_device_flow_slows_down_when_asked(user, idp):
    """The provider answers the first poll with slow_down: the next poll comes 5 s later
    than the interval (1 s) and the sign-in still succeeds."""
    idp.device_control(slow_down=1)
    user.write_manager_ini(login_flow="device", device_authorization_url=idp.device_url)
    mark = idp.mark()
    with LiveWoci(user, "--profile", user.profile, "--log-level", "INFO") as live:
        _, _, complete = device_prompt(live)
        run_user_agent(user, BROWSER_USER, complete)
        result = live.wait()
    assert result.returncode == 0, result.stderr
    assert "poll more slowly: every 6 s now" in result.stderr
    polls = device_polls(idp, mark)
    assert [poll["error"] for poll in polls[:1]] == ["slow_down"]
    assert polls[1]["t"] - polls[0]["t"] >= 5.9, polls
    assert_namespace_printed(user.oci_ns_get())


def test_device_flow_is_not_started_when_nobody_can_answer(user, idp):
    """--non-interactive with login_flow = device: exit 1 at once naming the command to run;
    no device code is asked for."""
    user.write_manager_ini(login_flow="device", device_authorization_url=idp.device_url)
    started = time.monotonic()
    result = user.oci_ns_get("--non-interactive")
    assert time.monotonic() - started < 20
    line = one_error(result, f"woci --profile {user.profile} session authenticate")
    assert "--login-flow device" in line
    assert "enter the code" not in result.stderr


# --- the pasted flow -----------------------------------------------------------------------


def pasted_sign_in(user: WociUser, live: LiveWoci, action: str = "login") -> str:
    """Read the sign-in URL from woci, sign in at the provider as the scripted user, and
    return the address the browser ends on (nothing listens there)."""
    url = live.line(INDENTED_URL).group(1)
    live.line(r"paste it here:$")
    address, record = address_after_sign_in(url, action, user.idp.user, user.idp.password)
    assert record["error"] is None, record
    assert address is not None and address.startswith("http://127.0.0.1:"), record
    return address


def test_manual_flow_fed_by_a_pipe(user, idp):
    """login_flow = manual: the URL on stderr, the address the browser ended on written to
    stdin; signed in, no browser opened, no listener used, and oci works afterwards."""
    user.write_manager_ini(login_flow="manual")
    with LiveWoci(user, "--profile", user.profile, stdin="pipe") as live:
        address = pasted_sign_in(user, live)
        live.send(address + "\n")
        result = live.wait()
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert user.browser_opens() == []
    assert_namespace_printed(user.oci_ns_get())


def test_manual_flow_with_the_bare_code(user, idp):
    """Only the code value pasted (no state to check): signed in."""
    user.write_manager_ini(login_flow="manual")
    with LiveWoci(user, "--profile", user.profile, stdin="pipe") as live:
        address = pasted_sign_in(user, live)
        (code,) = urllib.parse.parse_qs(urllib.parse.urlsplit(address).query)["code"]
        live.send(f"  {code}  \n")
        result = live.wait()
    assert result.returncode == 0, result.stderr
    assert_namespace_printed(user.oci_ns_get())


def test_manual_flow_with_a_wrong_state_never_redeems_the_code(user, idp):
    """The pasted address carries another state: exit 1 saying so, the code never sent to
    the token endpoint, nothing saved."""
    user.write_manager_ini(login_flow="manual")
    mark = idp.mark()
    with LiveWoci(user, "--profile", user.profile, stdin="pipe") as live:
        address = pasted_sign_in(user, live, action="tamper-state")
        live.send(address + "\n")
        result = live.wait()
    one_error(result, "wrong or missing state", "its code was not used")
    idp.sync()
    assert idp.events_since(mark, "token_request", grant_type="authorization_code") == []
    assert_nothing_saved(user)


def test_manual_flow_at_end_of_input(user):
    """stdin closed (as kubectl and CI run woci) with login_flow = manual: exit 1 at once."""
    user.write_manager_ini(login_flow="manual")
    started = time.monotonic()
    result = user.oci_ns_get()
    assert time.monotonic() - started < 20
    one_error(result, "stdin ended before the sign-in answer was pasted")
    assert_nothing_saved(user)


def test_no_browser_on_a_terminal_turns_into_the_pasted_flow(user, idp):
    """login_flow = browser with no $BROWSER, no display, and a terminal on stdin (an SSH
    session): a one-line note, then the pasted flow, typed on the terminal."""
    env = user.env()
    for name in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(name, None)
    with LiveWoci(user, "--profile", user.profile, env=env, stdin="pty") as live:
        live.line(r"^woci: no browser here .* signing in with login_flow = manual")
        address = pasted_sign_in(user, live)
        live.send(address + "\n")
        result = live.wait()
    assert result.returncode == 0, result.stderr
    assert user.browser_opens() == []
    assert_namespace_printed(user.oci_ns_get())


# --- the browser: a command of the user's, and a list of ports --------------------------------


def test_browser_command_opens_the_page_and_its_output_stays_off_stdout(user):
    """browser_command runs with the URL as its last argument (BROWSER is ignored); what it
    prints reaches stderr, never oci's stdout."""
    launcher = (f"sh -c 'echo launcher says hello; exec {sys.executable} {BROWSER_USER} \"$0\"'")
    user.write_manager_ini(browser_command=launcher)
    result = user.oci_ns_get(env=user.env(BROWSER="true %s"))   # a BROWSER that does nothing
    assert_namespace_printed(result)
    assert "launcher says hello" in result.stderr
    (opened,) = user.browser_opens()
    assert opened["callback_status"] == 200, opened


@pytest.fixture
def busy_ports():
    """Ports on 127.0.0.1 held by another program, as many as asked for."""
    with ExitStack() as stack:
        def take(count: int) -> List[int]:
            ports = []
            for _ in range(count):
                sock = stack.enter_context(socket.socket())
                sock.bind(("127.0.0.1", 0))
                sock.listen()
                ports.append(sock.getsockname()[1])
            return ports
        yield take


def test_busy_first_port_signs_in_on_the_next(user, busy_ports):
    """redirect_port = busy,free: the callback listens on the free one, and the sign-in
    asks for that redirect_uri."""
    (busy,) = busy_ports(1)
    free = free_port()
    user.write_manager_ini(redirect_port=f"{busy}, {free}")
    assert_namespace_printed(user.oci_ns_get())
    (opened,) = user.browser_opens()
    assert opened["query"]["redirect_uri"] == f"http://127.0.0.1:{free}/callback"


def test_all_ports_busy_is_one_line_naming_them(user, busy_ports):
    """Every registered port taken: exit 1 naming each, no browser, nothing saved."""
    first, second = busy_ports(2)
    user.write_manager_ini(redirect_port=f"{first},{second}")
    result = user.oci_ns_get()
    one_error(result, f"ports {first}, {second} on 127.0.0.1 are all in use")
    assert user.browser_opens() == []
    assert_nothing_saved(user)
