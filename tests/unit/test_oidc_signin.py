"""Section 5: the sign-in flows beside the browser's: the device flow (RFC 8628) and the pasted
answer (login_flow = manual), a list of callback ports, browser_command, and when there is
plainly no browser; against local HTTP servers, a real pipe and real processes."""

import os
import re
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest

import oci_upst_session_manager as woci
from tests.unit.fakes import LocalServer, free_port, json_answer, make_settings, s256

DEVICE_ANSWER = {"device_code": "dc-1", "user_code": "WDJB-MJHT",
                 "verification_uri": "https://idp.example/device",
                 "verification_uri_complete": "https://idp.example/device?user_code=WDJB-MJHT",
                 "expires_in": 600, "interval": 2}
TOKENS = {"access_token": "at-1", "refresh_token": "rt-1"}


def pending():
    return json_answer(400, {"error": "authorization_pending"})


def oauth_error(error):
    return json_answer(400, {"error": error})


class Clock:
    """A monotonic clock that moves only when sleep() is called; the sleeps are recorded."""

    def __init__(self):
        self.t = 1000.0
        self.sleeps = []

    def now(self):
        return self.t

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.t += seconds


class DeviceProvider(LocalServer):
    """/device answers the device authorization; /token answers the polls in order."""

    def __init__(self, polls, device=None, device_status=200):
        self.device = dict(DEVICE_ANSWER if device is None else device)
        self.device_status = device_status
        self.polls = list(polls)
        super().__init__(self._respond)

    def _respond(self, request):
        if request.path == "/device":
            return json_answer(self.device_status, self.device)
        return self.polls.pop(0) if len(self.polls) > 1 else self.polls[0]

    @property
    def token_requests(self):
        return [r for r in self.requests if r.path == "/token"]

    def settings(self, **overrides):
        values = dict(token_url=self.url + "/token", device_authorization_url=self.url + "/device",
                      login_flow="device", scope="openid offline_access")
        values.update(overrides)
        return make_settings(**values)


def device_sign_in(server, clock=None, **overrides):
    clock = clock or Clock()
    return woci.device_sign_in(server.settings(**overrides), now=clock.now, sleep=clock.sleep)


# --- the device flow ---------------------------------------------------------------------------


def test_device_flow_shows_the_code_and_polls_until_approved(capsys):
    """client_id and scope to the device endpoint; the URI, the code and the complete URI on
    stderr (nothing on stdout); polls every interval with the device_code grant."""
    clock = Clock()
    with DeviceProvider([pending(), pending(), json_answer(200, TOKENS)]) as server:
        tokens = device_sign_in(server, clock)
    assert tokens == ("at-1", "rt-1")
    device_request = server.requests[0]
    assert device_request.form == {"client_id": "idp-client", "scope": "openid offline_access"}
    assert "authorization" not in device_request.headers
    assert [r.form for r in server.token_requests] == [
        {"grant_type": woci.DEVICE_CODE_GRANT, "device_code": "dc-1",
         "client_id": "idp-client"}] * 3
    assert clock.sleeps == [2.0, 2.0, 2.0]
    out, err = capsys.readouterr()
    assert out == ""
    assert "\n    https://idp.example/device\n" in err
    assert "enter the code: WDJB-MJHT" in err
    assert "https://idp.example/device?user_code=WDJB-MJHT" in err
    assert "dc-1" not in err


def test_device_flow_with_a_client_secret_uses_basic():
    with DeviceProvider([json_answer(200, TOKENS)]) as server:
        device_sign_in(server, auth_client_secret="idp-secret")
    assert all(r.basic == ("idp-client", "idp-secret") for r in server.requests)


def test_slow_down_adds_five_seconds_for_every_later_poll():
    """RFC 8628 3.5: after slow_down the interval grows by 5 s, and stays grown."""
    clock = Clock()
    with DeviceProvider([pending(), oauth_error("slow_down"), pending(), oauth_error("slow_down"),
                         json_answer(200, TOKENS)]) as server:
        device_sign_in(server, clock)
    assert clock.sleeps == [2.0, 2.0, 7.0, 7.0, 12.0]


def test_no_interval_means_five_seconds():
    clock = Clock()
    device = {k: v for k, v in DEVICE_ANSWER.items() if k != "interval"}
    with DeviceProvider([json_answer(200, TOKENS)], device=device) as server:
        device_sign_in(server, clock)
    assert clock.sleeps == [5.0]


def test_an_interval_longer_than_a_minute_is_capped():
    """A provider asking for an hour between polls would leave no poll within
    login_timeout: woci polls every minute (slow_down can still slow it)."""
    clock = Clock()
    with DeviceProvider([json_answer(200, TOKENS)], device={**DEVICE_ANSWER,
                                                            "interval": 3600}) as server:
        device_sign_in(server, clock)
    assert clock.sleeps == [float(woci.DEVICE_MAX_INTERVAL_SECONDS)]


@pytest.mark.parametrize("interval", [0.001, 0.5])
def test_an_interval_under_a_second_is_raised_to_one(interval):
    """A provider (or whatever answers in its place) asking for a poll every millisecond
    would have woci hammer the token endpoint with the device code: one poll a second."""
    clock = Clock()
    with DeviceProvider([pending(), json_answer(200, TOKENS)],
                        device={**DEVICE_ANSWER, "interval": interval}) as server:
        device_sign_in(server, clock)
    assert clock.sleeps == [1.0, 1.0]


@pytest.mark.parametrize("error, fragment", [
    ("access_denied", "the sign-in was denied at the provider (access_denied)"),
    ("expired_token", "the code expired before the sign-in was approved"),
    ("invalid_grant", "sign-in failed: "),
    ("unauthorized_client", "is the device authorization grant enabled for client idp-client"),
])
def test_device_flow_ends_on_the_providers_answer(error, fragment):
    with DeviceProvider([pending(), oauth_error(error)]) as server, \
         pytest.raises(woci.AuthError) as info:
        device_sign_in(server)
    assert fragment in str(info.value) and info.value.exit_code == 1
    assert len(server.token_requests) == 2


def test_device_flow_stops_polling_when_the_code_expires():
    """Pending for ever, a code that lives 7 s, interval 2: polls at 2, 4, 6, then 'expired'
    without a poll after the code's end."""
    clock = Clock()
    with DeviceProvider([pending()], device={**DEVICE_ANSWER, "expires_in": 7}) as server, \
         pytest.raises(woci.AuthError, match="the code expired"):
        device_sign_in(server, clock)
    assert len(server.token_requests) == 3 and clock.t - 1000.0 == 6.0


def test_device_flow_is_bounded_by_login_timeout():
    clock = Clock()
    with DeviceProvider([pending()]) as server, \
         pytest.raises(woci.AuthError, match="sign-in timed out after 5 s") as info:
        device_sign_in(server, clock, login_timeout=5)
    assert "login_timeout" in str(info.value)
    assert len(server.token_requests) == 2


def test_device_authorization_refused_names_the_cause():
    with DeviceProvider([pending()], device={"error": "unauthorized_client"},
                        device_status=400) as server, \
         pytest.raises(woci.AuthError) as info:
        device_sign_in(server)
    assert "the device sign-in could not start" in str(info.value)
    assert "device authorization grant enabled" in str(info.value)
    assert server.token_requests == []


@pytest.mark.parametrize("change, fragment", [
    ({"device_code": None}, "device_code"),
    ({"user_code": "\x1b[31mred"}, "user_code"),
    ({"user_code": "two words"}, "user_code"),
    ({"verification_uri": "javascript:alert(1)"}, "verification_uri"),
    ({"verification_uri": None}, "verification_uri"),
])
def test_unusable_device_answers_are_refused(change, fragment, capsys):
    """Nothing a server sends reaches the terminal unless it is printable, one word, and the
    page an http(s) URL."""
    device = {k: v for k, v in {**DEVICE_ANSWER, **change}.items() if v is not None}
    with DeviceProvider([pending()], device=device) as server, \
         pytest.raises(woci.AuthError, match=f"without a usable {fragment}"):
        device_sign_in(server)
    assert "\x1b" not in capsys.readouterr().err


def test_odd_numbers_and_an_older_field_name_are_tolerated(capsys):
    """verification_url (drafts of RFC 8628), a bad complete URI dropped, nonsense numbers
    replaced by the defaults: expires_in by login_timeout, interval by 5 s."""
    clock = Clock()
    device = {"device_code": "d", "user_code": "U", "verification_url": "https://g.example/dev",
              "verification_uri_complete": "not a url", "expires_in": "soon", "interval": True}
    with DeviceProvider([json_answer(200, TOKENS)], device=device) as server:
        device_sign_in(server, clock, login_timeout=60)
    err = capsys.readouterr().err
    assert "https://g.example/dev" in err and "not a url" not in err
    assert "at most 60 s" in err and clock.sleeps == [5.0]


# --- the pasted answer -------------------------------------------------------------------------


STATE = "the-state"


@pytest.mark.parametrize("text, code", [
    ("http://127.0.0.1:8181/callback?code=c-1&state=the-state", "c-1"),
    ("  'http://127.0.0.1:8181/callback?state=the-state&code=c%2B1&iss=x'  ", "c+1"),
    ("<http://127.0.0.1:8181/callback?code=c-1&state=the-state>", "c-1"),
    ("/callback?code=c-1&state=the-state", "c-1"),
    ("code=c-1&state=the-state", "c-1"),
    ("c-1", "c-1"),
    ("c%2B1", "c+1"),
])
def test_pasted_address_or_bare_code(text, code):
    assert woci.parse_pasted_answer(text, STATE) == (code, None)


@pytest.mark.parametrize("text", [
    "http://127.0.0.1:8181/callback?code=c-1&state=other",
    "http://127.0.0.1:8181/callback?code=c-1",
    "code=c-1",
])
def test_pasted_address_with_a_wrong_or_missing_state_is_refused(text):
    result = woci.parse_pasted_answer(text, STATE)
    assert result.code is None and "wrong or missing state" in result.error


def test_pasted_error_from_the_provider_is_its_error():
    result = woci.parse_pasted_answer(
        "http://127.0.0.1:8181/callback?error=access_denied&error_description=no&state=the-state",
        STATE)
    assert result == (None, "the provider refused the sign-in: access_denied: no")


@pytest.mark.parametrize("text", ["two words", "bell\x07", "http://127.0.0.1:8181/callback"
                                  "?state=the-state",
                                  "http://[::1/callback?code=c-1&state=the-state",
                                  pytest.param(
                                      "http://[nope]:8181/callback?code=c-1&state=the-state",
                                      marks=pytest.mark.skipif(
                                          sys.version_info < (3, 11),
                                          reason="urlsplit checks a bracketed host from 3.11"))])
def test_pasted_nonsense_is_refused(text):
    result = woci.parse_pasted_answer(text, STATE)
    assert result.code is None and result.error


class Lines:
    """A read_line answering from a list: a line, None (end of input) or TimeoutError."""

    def __init__(self, *lines):
        self.lines, self.timeouts = list(lines), []

    def __call__(self, timeout):
        self.timeouts.append(timeout)
        line = self.lines.pop(0)
        if line is TimeoutError:
            raise TimeoutError
        return line


def pasted_url(err):
    return re.search(r"^    (\S+)$", err, re.M).group(1)


def test_manual_sign_in_prints_the_url_and_reads_the_address(capsys):
    """The authorization URL (PKCE, state, the first port's redirect_uri) on stderr; blank
    lines are skipped; the pasted address yields the code, verifier and redirect_uri."""
    settings = make_settings(redirect_port=7000, redirect_ports=(7000, 7001))
    query, calls = {}, []

    def read_line(timeout):
        calls.append(timeout)
        if not query:
            url = pasted_url(capsys.readouterr().err)
            query.update(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        if len(calls) < 3:
            return " " * (len(calls) - 1)   # an empty line, then one of blanks
        return f"{query['redirect_uri']}?code=c-9&state={query['state']}"

    grant = woci.manual_sign_in(settings, read_line)
    assert grant.code == "c-9" and len(calls) == 3
    assert grant.redirect_uri == query["redirect_uri"] == "http://127.0.0.1:7000/callback"
    assert query["code_challenge"] == s256(grant.verifier)
    assert query["code_challenge_method"] == "S256" and query["response_type"] == "code"
    assert all(0 < timeout <= settings.login_timeout for timeout in calls)
    assert capsys.readouterr().out == ""


def test_manual_sign_in_at_end_of_input_or_timeout():
    settings = make_settings(login_timeout=30)
    with pytest.raises(woci.AuthError, match="stdin ended before the sign-in answer"):
        woci.manual_sign_in(settings, Lines("", None))
    with pytest.raises(woci.AuthError, match="sign-in timed out after 30 s") as info:
        woci.manual_sign_in(settings, Lines(TimeoutError))
    assert "login_timeout" in str(info.value)


def test_manual_sign_in_with_a_wrong_state_is_an_auth_error():
    with pytest.raises(woci.AuthError, match="wrong or missing state") as info:
        woci.manual_sign_in(make_settings(), Lines("http://127.0.0.1:8181/callback?code=c&state=x"))
    assert info.value.exit_code == 1


@pytest.fixture
def stdin_pipe(monkeypatch):
    """sys.stdin replaced by the read end of a real pipe; the write end for the test."""
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "r")
    monkeypatch.setattr(sys, "stdin", reader)
    writer = os.fdopen(write_fd, "wb", buffering=0)
    yield writer
    reader.close()
    if not writer.closed:
        writer.close()


def test_read_pasted_line_reads_one_line_and_leaves_the_rest(stdin_pipe):
    """One line without its newline; what follows stays in the pipe for oci."""
    stdin_pipe.write(b"http://x/?code=1\nfor oci\n")
    assert woci.read_pasted_line(5) == "http://x/?code=1"
    assert os.read(sys.stdin.fileno(), 100) == b"for oci\n"


def test_read_pasted_line_at_end_of_input(stdin_pipe):
    stdin_pipe.write(b"last line without newline")
    stdin_pipe.close()
    assert woci.read_pasted_line(5) == "last line without newline"
    assert woci.read_pasted_line(5) is None


def test_read_pasted_line_waits_at_most_its_timeout(stdin_pipe):
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        woci.read_pasted_line(0.3)
    assert time.monotonic() - started < 3


def test_read_pasted_line_without_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)
    assert woci.read_pasted_line(1) is None


def test_read_pasted_line_refuses_a_huge_line(stdin_pipe):
    threading.Thread(target=stdin_pipe.write, args=(b"x" * (woci.PASTED_LINE_MAX_BYTES + 10),),
                     daemon=True).start()
    with pytest.raises(woci.AuthError, match="longer than"):
        woci.read_pasted_line(5)


# --- a list of callback ports ------------------------------------------------------------------


@pytest.fixture
def busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def test_first_free_port_of_the_list_is_used(busy_port):
    free = free_port()
    server, port = woci.open_first_free_callback_server((busy_port, free), "/callback", "s")
    server.server_close()
    assert port == free


def test_all_ports_busy_names_each(busy_port):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        second = other.getsockname()[1]
        with pytest.raises(woci.CallbackPortBusy) as info:
            woci.open_first_free_callback_server((busy_port, second), "/callback", "s")
    assert f"ports {busy_port}, {second} on 127.0.0.1 are all in use" in str(info.value)
    assert "redirect_port" in str(info.value) and info.value.exit_code == 1


def test_one_busy_port_keeps_its_own_message(busy_port):
    with pytest.raises(woci.CallbackPortBusy, match=f"port {busy_port} on 127.0.0.1 is in use"):
        woci.open_first_free_callback_server((busy_port,), "/callback", "s")


def test_browser_sign_in_asks_for_the_port_it_listens_on(busy_port):
    """The authorize request and the code grant both carry the free port's redirect_uri."""
    free = free_port()
    seen = []

    def browser(url):
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        seen.append(query["redirect_uri"])
        target = woci.add_query(query["redirect_uri"], {"code": "c", "state": query["state"]})
        with urllib.request.urlopen(target, timeout=5):
            pass
        return True

    settings = make_settings(redirect_port=busy_port, redirect_ports=(busy_port, free))
    grant = woci.browser_sign_in(settings, browser)
    assert seen == [grant.redirect_uri] == [f"http://127.0.0.1:{free}/callback"]
    with LocalServer([json_answer(200, TOKENS)]) as server:
        woci.redeem_code(make_settings(token_url=server.url + "/token"), grant.code,
                         grant.verifier, grant.redirect_uri)
    assert server.requests[0].form["redirect_uri"] == grant.redirect_uri


# --- browser_command, and no browser at all ----------------------------------------------------


def test_browser_command_gets_the_url_last_and_its_output_goes_to_stderr(tmp_path, capfd):
    """Split like a shell, run without one, the URL appended; stdout stays empty."""
    seen = tmp_path / "seen"
    command = woci.browser_command_argv(
        f"sh -c 'echo launcher output; printf %s \"$0\" > {seen}'")
    assert woci.launch_browser("https://idp.example/a?x=1&y=2", command)
    deadline = time.monotonic() + 10
    while not (seen.exists() and seen.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen.read_text() == "https://idp.example/a?x=1&y=2"
    time.sleep(0.2)
    out, err = capfd.readouterr()
    assert out == "" and "launcher output" in err


def test_a_browser_command_that_cannot_start_is_a_warning(caplog):
    assert woci.launch_browser("https://x", ["/nonexistent/browser"]) is False
    assert "cannot start browser_command /nonexistent/browser" in caplog.text


@pytest.mark.parametrize("command, fragment", [("firefox 'unclosed", "cannot be split"),
                                               ("   ", "is empty")])
def test_a_browser_command_that_cannot_be_split_is_a_configuration_error(command, fragment):
    with pytest.raises(woci.ConfigError, match=fragment) as info:
        woci.browser_sign_in(make_settings(browser_command=command, redirect_port=free_port()))
    assert info.value.exit_code == 2


@pytest.mark.parametrize("environ, platform, settings, expected", [
    ({}, "linux", {}, True),
    ({"DISPLAY": ":0"}, "linux", {}, False),
    ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", {}, False),
    ({"BROWSER": "lynx"}, "linux", {}, False),
    ({}, "linux", {"browser_command": "wslview"}, False),
    ({}, "darwin", {}, False),
])
def test_no_browser_here(environ, platform, settings, expected):
    assert woci.no_browser_here(make_settings(**settings), environ, platform) is expected


# --- hostile input -------------------------------------------------------------------------------


def test_an_authorize_url_that_is_no_url_is_a_configuration_error():
    settings = make_settings(authz_base_url="http://[::1/authorize")
    with pytest.raises(woci.ConfigError, match="authz_base_url"):
        woci.authorization_url(settings, "http://127.0.0.1:8181/callback", "s", "c")
