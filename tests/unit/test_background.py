"""Section 8: when the background renews, how it backs off, and the daemon's pid file."""

import base64
import json
import multiprocessing
import os
import tempfile
import threading
from pathlib import Path

import pytest

import oci_upst_session_manager as woci


def make_token(iat: int, exp: int) -> str:
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'iat': iat, 'exp': exp})}.sig"


def settings(**overrides):
    values = dict(profile="p", oci_config_file=Path("/nonexistent/config"),
                  manager_config_file=None, authz_base_url="http://127.0.0.1:9/a",
                  token_url="http://127.0.0.1:9/t", token_exchange_url="http://127.0.0.1:9/t",
                  auth_client_id="c", client_id="c", client_secret="s")
    values.update(overrides)
    return woci.Settings(**values)


class ScriptedRenewals:
    """Stands in for ensure_session: renewals follow a script instead of the network.

    Only scheduling is under test here; the real ensure_session() is covered in
    test_session.py and end to end.
    """

    def __init__(self, script):
        self.script, self.calls = script, []

    def __call__(self, session, min_validity=woci.EXPIRY_MARGIN_SECONDS,
                 renewal=woci.Renewal.IF_NEEDED):
        self.calls.append(min_validity)
        outcome = self.script.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        Path(session.paths.token).write_text(outcome)
        return woci.read_session_token(session.paths)


@pytest.fixture
def clock():
    class Clock:
        t = 1_000_000.0

        def __call__(self):
            return self.t

    return Clock()


def renewer(clock, token, script, window=600, tmp_path=None):
    home = tmp_path or Path(tempfile.mkdtemp(prefix="woci-unit-"))
    session = woci.Session.open(settings(), {"HOME": str(home)}, now=clock)
    Path(session.paths.folder).mkdir(parents=True, exist_ok=True)
    Path(session.paths.token).write_text(token)
    return woci.Renewer(session, window, ensure=ScriptedRenewals(script))


def test_renewal_lead_is_the_window_for_long_tokens_and_a_third_for_short_ones():
    """600 s before exp for an hour-long UPST; at two thirds of life for a 6 s one."""
    assert woci.renewal_lead(woci.TokenState(make_token(0, 3600), 3600, None), 600) == 600
    assert woci.renewal_lead(woci.TokenState(make_token(0, 6), 6, None), 600) == 2
    assert woci.renewal_lead(woci.TokenState(None, None, None), 600) == 600


def test_fresh_session_is_not_renewed_and_the_wait_is_at_most_a_minute(clock):
    """Renewal due in 50 minutes: no renewal now, and the next look is within 60 s."""
    now = int(clock())
    r = renewer(clock, make_token(now, now + 3600), [])

    wait = r.step()

    assert r.ensure.calls == []
    assert wait == woci.BACKGROUND_MAX_SLEEP_SECONDS


def test_wall_clock_jump_past_the_due_time_renews_at_once(clock):
    """A suspended laptop wakes after exp - window: the very next step renews."""
    now = int(clock())
    r = renewer(clock, make_token(now, now + 3600), [make_token(now + 3100, now + 6700)])
    assert r.step() == 60

    clock.t += 3100   # the machine slept through the renewal time

    wait = r.step()
    assert r.ensure.calls == [600]
    assert r.last.ok is True
    assert wait == 60


def test_due_soon_wait_ends_at_the_due_time(clock):
    """Renewal due in 20 s: the wait is 20 s, not a full minute."""
    now = int(clock())
    r = renewer(clock, make_token(now - 3000, now + 620), [])

    assert r.step() == pytest.approx(20)


def test_transient_failures_back_off_and_are_recorded(clock):
    """Network trouble: 5 s, then 10 s, then 20 s; the failure is kept for --daemon-status."""
    now = int(clock())
    failure = woci.HttpError("the token endpoint at http://x failed 4 times")
    r = renewer(clock, make_token(now - 3500, now + 100),
                [failure, failure, failure, make_token(now, now + 3600)])

    assert [r.step(), r.step(), r.step()] == [5, 10, 20]
    assert r.last.ok is False and "failed 4 times" in r.last.message
    r.step()
    assert r.last.ok is True and r.failures == 0


@pytest.mark.parametrize("fatal", [woci.SignInNeeded("sign in"),
                                   woci.RefreshTokenError("damaged")])
def test_failures_waiting_cannot_fix_stop_the_background(clock, fatal):
    """A refused refresh token or an unreadable one is raised, not retried."""
    now = int(clock())
    r = renewer(clock, make_token(now - 3500, now + 100), [fatal])

    with pytest.raises(type(fatal)):
        r.step()


def test_the_background_never_signs_in(clock):
    """The renewer's manager may not open a browser, whatever the settings say."""
    now = int(clock())
    r = renewer(clock, make_token(now, now + 3600), [])

    assert r.session.can_sign_in is False
    assert r.session.settings.interactive is True


def test_daemon_loop_exits_1_on_a_fatal_failure_and_0_when_stopped(clock, tmp_path):
    """daemon_loop: exit 1 when the refresh token is refused, 0 when a signal stops it."""
    now = int(clock())
    paths = woci.SessionPaths(tmp_path)
    fatal = renewer(clock, make_token(now - 3500, now + 100), [woci.SignInNeeded("x")],
                    tmp_path=tmp_path)
    assert woci.daemon_loop(fatal, paths, threading.Event()) == woci.EXIT_FAILURE

    stopping = threading.Event()
    stopping.set()
    calm = renewer(clock, make_token(now, now + 3600), [], tmp_path=tmp_path)
    assert woci.daemon_loop(calm, paths, stopping) == woci.EXIT_OK


def test_daemon_state_file_records_the_last_renewal(clock, tmp_path):
    """After a renewal the state file holds its time, outcome and the next check."""
    now = int(clock())
    paths = woci.SessionPaths(tmp_path)
    r = renewer(clock, make_token(now - 3500, now + 100), [make_token(now, now + 3600)],
                tmp_path=tmp_path)
    wait = r.step()

    woci.write_daemon_state(paths, r, r.read_token(), clock() + wait)

    state = json.loads(Path(paths.daemon_state).read_text())
    assert state["last_renewal"]["ok"] is True
    assert state["next_renewal"] == clock() + 60
    assert (Path(paths.daemon_state).stat().st_mode & 0o777) == 0o600


def _hold_pid_file(path, ready, release):
    pid_file = woci.PidFile(Path(path))
    assert pid_file.acquire()
    ready.set()
    release.wait(10)
    pid_file.release()


def test_pid_file_lock_tells_a_live_daemon_from_a_stale_file(tmp_path):
    """A held pid file is a live daemon; the same file unheld is stale and removed."""
    path = tmp_path / "woci_refresh.pid"
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_pid_file, args=(str(path), ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        assert woci.PidFile(path).holder() == holder.pid
        assert woci.PidFile(path).acquire() is False
    finally:
        release.set()
        holder.join(10)
    path.write_text(f"{holder.pid}\n")   # what a SIGKILLed daemon leaves behind

    assert woci.PidFile(path).holder() is None
    assert woci.PidFile(path).remove_stale() is True
    assert not path.exists()


@pytest.mark.parametrize("existing", [None, 0o644])
def test_daemon_log_is_private_even_when_it_was_not(tmp_path, existing):
    """The daemon's log (new, or left 0644 by someone) is 0600 once the daemon writes it."""
    log = tmp_path / "woci_daemon.log"
    if existing is not None:
        log.write_text("old line\n")
        log.chmod(existing)
    pid = os.fork()
    if pid == 0:   # the redirect replaces this process's stdio: do it in a child
        try:
            woci._redirect_stdio(str(log))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert log.stat().st_mode & 0o777 == 0o600


# --- the daemon's renewals in a child process ----------------------------------------------------


def _session(tmp_path):
    session = woci.Session.open(settings(), {"HOME": str(tmp_path)})
    Path(session.paths.folder).mkdir(parents=True)
    return session


def test_renewal_child_hands_back_the_token_it_wrote(monkeypatch, tmp_path):
    """The child's renewal is on disk; the parent reads it from there."""
    token = make_token(1000, 5000)
    monkeypatch.setattr(woci, "ensure_session",
                        lambda session, *_a, **_k: Path(session.paths.token).write_text(token))
    assert woci.ensure_in_child(_session(tmp_path)) == (token, 5000, None)


@pytest.mark.parametrize("raised", [woci.SignInNeeded("sign in"), woci.RefreshTokenError("bad"),
                                    woci.WrongPassphrase("wrong"), woci.HttpError("down"),
                                    woci.WociError("odd", 7)])
def test_renewal_child_reports_the_failure_kind_message_and_exit_code(monkeypatch, tmp_path,
                                                                       raised):
    """A failure crosses the pipe whole: the background still tells fatal from transient."""
    def fail(*_args, **_kwargs):
        raise raised

    monkeypatch.setattr(woci, "ensure_session", fail)
    with pytest.raises(woci.WociError) as info:
        woci.ensure_in_child(_session(tmp_path))
    assert type(info.value) is type(raised)
    assert str(info.value) == str(raised) and info.value.exit_code == raised.exit_code


def test_renewal_child_that_dies_is_a_failure_to_retry(monkeypatch, tmp_path):
    """Killed before it could answer: a plain WociError, which the renewer retries."""
    monkeypatch.setattr(woci, "ensure_session", lambda *_a, **_k: os._exit(9))
    with pytest.raises(woci.WociError, match="ended without a word") as info:
        woci.ensure_in_child(_session(tmp_path))
    assert not isinstance(info.value, woci.FATAL_IN_BACKGROUND)


# --- hostile files -------------------------------------------------------------------------------


def test_a_daemon_state_file_nested_too_deeply_is_no_state(tmp_path):
    path = tmp_path / "woci_daemon.state"
    path.write_text('{"pid": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert woci.DaemonState.read(str(path)) is None


@pytest.mark.parametrize("iat", [-(10 ** 400), float("nan"), "yesterday"], ids=["huge-negative", "nan", "text"])
def test_renewal_lead_ignores_an_iat_that_is_no_time(iat):
    """(exp - iat) / 3 of an iat beyond a float's range would raise OverflowError."""
    part = base64.urlsafe_b64encode(json.dumps({"iat": iat, "exp": 2_000_000_000}).encode())
    token = "e30." + part.decode().rstrip("=") + ".sig"
    state = woci.TokenState(token, 2_000_000_000, None)
    assert woci.renewal_lead(state, 600) == 600


@pytest.mark.parametrize("upst_claims", [
    lambda now: {"exp": now + 100},                 # no iat: the whole window is the lead
    lambda now: {"iat": now - 7200, "exp": now - 3600},   # this clock is two hours ahead
], ids=["shorter-than-the-window", "already-expired"])
def test_a_renewal_whose_token_is_due_at_once_backs_off_instead_of_renewing_in_a_loop(
        clock, upst_claims, caplog):
    """A new UPST that is due for renewal the moment it arrives (it lives less than the
    safety window, or the clock is off) must not make the background renew again at once,
    and again: each try spends a refresh grant and an exchange. It backs off like a failure."""
    now = int(clock())

    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    short = f"{part({'alg': 'none'})}.{part(upst_claims(now))}.sig"
    r = renewer(clock, make_token(now - 3500, now + 10), [short, short, short])
    waits = [r.step(), r.step(), r.step()]
    assert waits == [5, 10, 20]
    assert len(r.ensure.calls) == 3
    assert r.last.ok is False and "due for renewal again at once" in r.last.message
    assert "refresh_safety_window" in caplog.text



@pytest.mark.parametrize("old_token", [
    lambda now: "garbage",                          # no usable token: the lead is the window
    lambda now: make_token(now - 3500, now + 100),  # an hour-long UPST: lead 600 s
], ids=["no-old-token", "old-token-lived-longer"])
def test_a_renewal_is_judged_by_the_new_tokens_own_lead(clock, old_token):
    """A 10-minute UPST (lead 200 s) replacing an hour-long one, or arriving where no token
    was, is a good renewal: it is due in 400 s, not again at once."""
    now = int(clock())
    r = renewer(clock, old_token(now), [make_token(now, now + 600)])

    wait = r.step()

    assert r.last.ok is True, r.last.message
    assert r.failures == 0
    assert wait == woci.BACKGROUND_MAX_SLEEP_SECONDS


def _hold_file_naming(path, text, ready, release):
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, text.encode())
    fcntl.flock(fd, fcntl.LOCK_EX)
    ready.set()
    release.wait(10)
    os.close(fd)


@pytest.mark.parametrize("text", ["9" * 60, "99999999999\n"], ids=["60-digits", "beyond-pid_t"])
def test_a_held_pid_file_naming_a_pid_no_process_can_have_names_no_pid(tmp_path, text):
    """os.kill of such a number raises OverflowError: --stop-daemon must say the file names
    no pid instead, and signal nothing."""
    path = tmp_path / "woci_refresh.pid"
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_file_naming, args=(str(path), text, ready,
                                                                     release))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(woci.DaemonError, match="names no pid"):
            woci.PidFile(str(path)).holder()
    finally:
        release.set()
        holder.join(10)


@pytest.mark.parametrize("kind", ["symlink", "folder"])
def test_a_daemon_log_that_cannot_be_opened_is_one_line_from_the_parent(tmp_path, kind,
                                                                        monkeypatch):
    """The detached child found out first, and printed its traceback on the user's terminal
    before its stdio was redirected, then the parent said 'see <a log that cannot exist>'.
    The parent now finds out before it forks."""
    paths = woci.SessionPaths(str(tmp_path))
    log_path = Path(paths.daemon_log)
    log_path.symlink_to(tmp_path / "elsewhere") if kind == "symlink" else log_path.mkdir()
    monkeypatch.setattr(woci.os, "fork", lambda: pytest.fail("forked"))
    with pytest.raises(woci.DaemonError, match="cannot open the daemon log"):
        woci.start_daemon(None, paths)


def test_daemon_status_shows_the_last_failure_on_one_plain_line(tmp_path):
    """The message comes from the state file (a provider's words, or anything written
    there): --daemon-status must not pass an escape sequence to the terminal or a newline
    into its report."""
    paths = woci.SessionPaths(str(tmp_path))
    Path(paths.daemon_state).write_text(json.dumps({
        "pid": 1, "profile": "p", "expires_at": None, "next_renewal": None,
        "last_renewal": {"time": 1_000_000, "ok": False, "message": "down\n\x1b[2Jowned"}}))
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_pid_file, args=(paths.pid, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        code, report = woci.daemon_status_report(paths, "p", 1_000_100)
    finally:
        release.set()
        holder.join(10)
    assert code == 0 and "\x1b" not in report
    assert "failed: down ?[2Jowned\n" in report
