"""Reliability on the real bed: parallel runs, rotation, faults, bad input, secrets.

Every case here is listed, with its expected outcome, in tests/README.md.
"""

import concurrent.futures
import glob
import os
import stat
import subprocess
import time

import pytest

from oci_upst_session_manager import decrypt_refresh_token
from tests.bed.emulator import TOKEN_PATH
from tests.bed.faultproxy import FaultProxy
from tests.e2e.conftest import RUN_TIMEOUT, WOCI, assert_namespace_printed
from tests.polling import wait_until

PARALLEL_RUNS = 20


def token_requests(idp, mark, grant_type):
    return [e for e in idp.events_since(mark)
            if e.get("event") == "token_request" and e.get("grant_type") == grant_type]


@pytest.fixture
def proxied_user(user, idp):
    """A user whose token endpoint is reached through a FaultProxy in front of the provider."""
    with FaultProxy(idp.issuer) as proxy:
        user.write_manager_ini(token_url=proxy.url + idp.token_url[len(idp.issuer):])
        user.proxy = proxy
        yield user


def snapshot(folder):
    return {path: open(path, "rb").read() for path in glob.glob(f"{folder}/**", recursive=True)
            if os.path.isfile(path) and not path.endswith(".lock")}


# --- 1. single flight --------------------------------------------------------------------------


def test_twenty_parallel_runs_on_an_expired_session_refresh_once(user, idp, emulator):
    """20 woci at once on an expiring UPST: one refresh grant, one exchange, 20 oci calls."""
    emulator.set_upst_lifetime(30)
    assert_namespace_printed(user.oci_ns_get())
    emulator.set_upst_lifetime(3600)   # the renewed session is fresh for everyone after it
    mark = idp.mark()
    exchanges = emulator.count("exchange_ok")

    with concurrent.futures.ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        results = list(pool.map(lambda _: user.oci_ns_get(timeout=180), range(PARALLEL_RUNS)))

    for result in results:
        assert_namespace_printed(result)
    assert len(token_requests(idp, mark, "refresh_token")) == 1
    assert emulator.count("exchange_ok") - exchanges == 1
    assert [e for e in idp.events_since(mark) if e.get("event") == "grant.error"] == []


def test_parallel_first_runs_open_one_browser(user):
    """Five woci at once with no session: one browser tab, one callback port, all succeed."""
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda _: user.oci_ns_get(timeout=180), range(5)))

    for result in results:
        assert_namespace_printed(result)
    assert len(user.browser_opens()) == 1


# --- 2. nothing lost -------------------------------------------------------------------------


def test_exchange_failure_after_refresh_keeps_the_rotated_refresh_token(user, idp, emulator):
    """The exchange fails after a successful refresh: the rotated refresh token is on disk."""
    emulator.set_upst_lifetime(30)
    assert_namespace_printed(user.oci_ns_get())
    old_refresh, old_upst = user.refresh_token_text(), user.token_text()
    emulator.inject(path="/oauth2/v1/token", kind="http500", count=10)

    failed = user.oci_ns_get()

    assert failed.returncode == 1
    assert "OCI token exchange" in failed.stderr and emulator.url in failed.stderr
    assert user.refresh_token_text() != old_refresh
    assert user.token_text() == old_upst
    emulator.clear_faults()
    mark = idp.mark()
    assert_namespace_printed(user.oci_ns_get())
    assert len(token_requests(idp, mark, "refresh_token")) == 1
    assert len(user.browser_opens()) == 1


def test_sigkill_during_renewal_leaves_working_files(user, emulator):
    """woci killed mid-renewal: the files are old or new, never torn, and the next run works."""
    emulator.set_upst_lifetime(30)
    assert_namespace_printed(user.oci_ns_get())
    emulator.inject(path=TOKEN_PATH, kind="slow", delay=3, count=1)
    proc = subprocess.Popen([str(WOCI), "--profile", user.profile], env=user.env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def exchange_in_hand():
        # Refreshed at the provider and now waiting on the exchange: mid-renewal.
        if proc.poll() is not None:
            raise AssertionError(f"woci exited ({proc.returncode}) before its exchange")
        return emulator.in_progress(TOKEN_PATH)

    wait_until(exchange_in_hand, RUN_TIMEOUT, "the emulator to hold woci's token exchange")
    proc.kill()
    proc.wait(timeout=10)

    leftovers = [p for p in os.listdir(user.session_dir) if p.endswith(".tmp")]
    assert leftovers == []
    assert_namespace_printed(user.oci_ns_get())
    assert len(user.browser_opens()) == 1
    # The held exchange is answered (to nobody) before the next test counts exchanges.
    wait_until(lambda: emulator.in_progress(TOKEN_PATH) == 0, 10,
               "the emulator to answer the killed run's exchange")


# --- 3. the right reaction to each failure ---------------------------------------------------


def test_provider_500s_are_retried_then_succeed(proxied_user, idp, emulator):
    """Two HTTP 500s from the provider are retried; the refresh still succeeds, no browser."""
    user = proxied_user
    emulator.set_upst_lifetime(30)
    assert_namespace_printed(user.oci_ns_get())
    user.proxy.inject("http500", count=2)

    assert_namespace_printed(user.oci_ns_get())

    assert user.proxy.count(status=500) == 2
    assert len(user.browser_opens()) == 1


def test_provider_429_retry_after_is_honoured(proxied_user, emulator):
    """A 429 with Retry-After: 2 makes woci wait at least that long before retrying."""
    user = proxied_user
    emulator.set_upst_lifetime(30)
    assert_namespace_printed(user.oci_ns_get())
    user.proxy.inject("http429", count=1, retry_after="2")

    assert_namespace_printed(user.oci_ns_get())

    times = [s["t"] for s in user.proxy.seen[-2:]]
    assert times[1] - times[0] >= 1.9


def test_provider_down_fails_with_exit_1_and_keeps_the_refresh_token(proxied_user, emulator):
    """Provider unreachable: exit 1 naming the endpoint, refresh token untouched, no browser."""
    user = proxied_user
    emulator.set_upst_lifetime(30)
    assert_namespace_printed(user.oci_ns_get())
    stored = user.refresh_token_text()
    user.proxy.set_down(True)

    result = user.oci_ns_get()

    assert result.returncode == 1
    assert user.proxy.url in result.stderr
    assert user.refresh_token_text() == stored
    assert len(user.browser_opens()) == 1
    assert result.stdout == ""


def test_provider_answering_html_is_a_clear_error(proxied_user, emulator):
    """A provider answering an HTML page: one line naming the endpoint, exit 1."""
    user = proxied_user
    emulator.set_upst_lifetime(30)
    assert_namespace_printed(user.oci_ns_get())
    user.proxy.inject("html", count=5)

    result = user.oci_ns_get()

    assert result.returncode == 1
    assert "instead of JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_clock_skew_is_named_in_the_error(proxied_user, emulator):
    """A provider whose Date is 10 minutes ahead: the failure message says the clock is off."""
    user = proxied_user
    emulator.set_upst_lifetime(30)
    assert_namespace_printed(user.oci_ns_get())
    user.proxy.date_offset = 600
    user.proxy.inject("http500", count=10)

    result = user.oci_ns_get()

    assert result.returncode == 1
    assert "clock" in result.stderr and "behind" in result.stderr


# --- 4. never hang -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["CI=true", "--non-interactive", "interactive = false"])
def test_no_sign_in_possible_fails_at_once_with_one_line(user, how):
    """A sign-in is needed but nobody can answer: exit 1 fast, no browser, what to run."""
    args, env = [], user.env()
    if how == "CI=true":
        env["CI"] = "true"
    elif how == "--non-interactive":
        args = ["--non-interactive"]
    else:
        user.write_manager_ini(interactive="false")

    started = time.monotonic()
    result = user.oci_ns_get(*args, env=env)

    assert result.returncode == 1
    assert time.monotonic() - started < 20
    assert user.browser_opens() == []
    assert "session authenticate" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_passphrase_prompt_without_a_terminal_is_an_error(user):
    """Passphrase by prompt with stdin closed: exit 2 with a clear line, no browser."""
    user.write_manager_ini(refresh_token_passphrase_prompt="true")

    result = user.oci_ns_get()

    assert result.returncode == 2
    assert "terminal" in result.stderr
    assert user.browser_opens() == []


# --- 5. bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("action, message", [
    ("deny", "access_denied"),
    # A wrong state is not woci's answer: ignored, so the sign-in runs out of time.
    ("tamper-state", "timed out"),
    ("drop-code", "no authorization code"),
])
def test_bad_callbacks_fail_the_sign_in_cleanly(user, action, message):
    """The browser comes back with an error, a wrong state or no code: exit 1, nothing saved."""
    user.write_manager_ini(login_timeout="4")
    result = user.oci_ns_get(env=user.env(WOCI_TEST_BROWSER_ACTION=action))

    assert result.returncode == 1
    assert message in result.stderr
    assert not (user.session_dir / "token").exists()
    assert "Traceback" not in result.stderr


def test_sign_in_that_never_comes_back_times_out(user):
    """A wrong password leaves the user at the login page: woci gives up after login_timeout."""
    user.write_manager_ini(login_timeout="3")

    result = user.oci_ns_get(env=user.env(WOCI_TEST_BROWSER_ACTION="wrong-password"))

    assert result.returncode == 1
    assert "timed out" in result.stderr


@pytest.mark.parametrize("content", [b"", b"\x00\xff\xfe binary", b"not-a-jwt",
                                     b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.sig"])
def test_damaged_session_token_is_replaced_by_a_renewal(user, content):
    """An empty, binary, non-JWT or exp-less token file: a warning, then a silent renewal."""
    assert_namespace_printed(user.oci_ns_get())
    (user.session_dir / "token").write_bytes(content)

    result = user.oci_ns_get()

    assert_namespace_printed(result)
    assert "unusable" in result.stderr
    assert len(user.browser_opens()) == 1


@pytest.mark.parametrize("content", [b"", b"\x00\x01binary\xff", b'{"format": "woci-refresh'])
def test_damaged_refresh_token_is_exit_2_and_left_alone(user, emulator, content):
    """Empty, binary or truncated refresh token: exit 2, one line, no file changed."""
    emulator.set_upst_lifetime(30)
    assert_namespace_printed(user.oci_ns_get())
    (user.session_dir / "refresh_token").write_bytes(content)
    before = snapshot(user.oci_dir)

    result = user.oci_ns_get()

    assert result.returncode == 2
    assert "refresh token" in result.stderr and "damaged" in result.stderr
    assert snapshot(user.oci_dir) == before


def test_tampered_encrypted_refresh_token_is_exit_2_and_left_alone(user, emulator):
    """A flipped byte in the ciphertext: exit 2, the file is not changed or deleted."""
    user.write_manager_ini(refresh_token_passphrase_env="PASS")
    env = user.env(PASS="pass-phrase-1")
    emulator.set_upst_lifetime(30)
    assert_namespace_printed(user.oci_ns_get(env=env))
    path = user.session_dir / "refresh_token"
    text = path.read_text()
    marker = '"ciphertext": "'
    at = text.index(marker) + len(marker)
    path.write_text(text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1:])
    before = snapshot(user.oci_dir)

    result = user.oci_ns_get(env=env)

    assert result.returncode == 2
    assert "wrong passphrase, or the file was altered" in result.stderr
    assert snapshot(user.oci_dir) == before


def test_invalid_oci_config_is_exit_2_and_unchanged(user):
    """An OCI config that is not INI: exit 2 before any sign-in, the file untouched."""
    user.config_file.parent.mkdir(parents=True, exist_ok=True)
    user.config_file.write_text("this is not\n[an ini\nfile")

    result = user.oci_ns_get()

    assert result.returncode == 2
    assert "is not valid INI" in result.stderr
    assert user.config_file.read_text() == "this is not\n[an ini\nfile"
    assert user.browser_opens() == []


def test_manager_ini_with_a_duplicate_section_is_exit_2(user):
    """Two [COMMON] sections: exit 2 naming the problem, no sign-in."""
    text = user.manager_ini.read_text()
    user.manager_ini.write_text(text + "\n[COMMON]\nscope = openid\n")

    result = user.oci_ns_get()

    assert result.returncode == 2
    assert "already exists" in result.stderr or "duplicate" in result.stderr.lower()
    assert user.browser_opens() == []


@pytest.mark.parametrize("kind, message", [
    ("no_token", "without a token"),
    ("wrong_jwk", "another key"),
    ("bad_json", "instead of JSON"),
])
def test_bad_exchange_answers_save_nothing(user, emulator, kind, message):
    """The exchange answers nonsense: exit 1 with a clear line, no token or key written."""
    emulator.inject(path="/oauth2/v1/token", kind=kind, count=1)

    result = user.oci_ns_get()

    assert result.returncode == 1
    assert message in result.stderr
    assert not (user.session_dir / "token").exists()


def test_exchange_refusal_shows_the_oauth_error(user, emulator):
    """Wrong OCI client secret: the exchange's error and description reach the user."""
    user.write_manager_ini(client_secret="wrong-secret")

    result = user.oci_ns_get()

    assert result.returncode == 1
    assert "invalid_client" in result.stderr
    assert "wrong-secret" not in result.stderr


# --- 6. secrets --------------------------------------------------------------------------------


def test_no_secret_reaches_stderr_logs_or_files_of_others(user, idp, emulator):
    """A whole flow at DEBUG: no token, refresh token, secret or passphrase in any output."""
    user.write_manager_ini(refresh_token_passphrase_env="WOCI_PASS", log_level="DEBUG",
                           auth_client_id=idp.confidential_client_id,
                           auth_client_secret=idp.confidential_client_secret)
    env = user.env(WOCI_PASS="very-secret-passphrase")
    emulator.set_upst_lifetime(30)
    outputs, secrets_seen = [], {"very-secret-passphrase", idp.confidential_client_secret,
                                 "oci-secret-for-tests"}

    def remember_tokens():
        secrets_seen.add(user.token_text())
        secrets_seen.add(decrypt_refresh_token(user.refresh_token_text().encode(),
                                               "very-secret-passphrase", user.session_dir))

    outputs.append(user.oci_ns_get(env=env))              # sign-in
    remember_tokens()
    outputs.append(user.oci_ns_get(env=env))              # refresh
    remember_tokens()
    outputs.append(user.run("--profile", user.profile, "session", "refresh", env=env))
    remember_tokens()

    for result in outputs:
        assert result.returncode == 0, result.stderr
        assert "DEBUG" in result.stderr
        for secret in secrets_seen:
            assert secret not in result.stderr and secret not in result.stdout
    for record in user.browser_opens():
        for secret in secrets_seen:
            assert secret not in record["url"]
    for path in glob.glob(f"{user.oci_dir}/**", recursive=True):
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, path


def test_world_readable_manager_ini_with_a_secret_draws_a_warning(user):
    """A manager INI holding client_secret that others can read: a warning names chmod 600,
    at the run that signs in and at the next, which finds the session valid."""
    user.manager_ini.chmod(0o644)

    for _ in range(2):
        result = user.oci_ns_get()

        assert_namespace_printed(result)
        assert "chmod 600" in result.stderr


def test_oci_child_gets_only_the_users_arguments(user, tmp_path):
    """The oci woci starts sees the profile, --auth and the user's arguments: no secret."""
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    argv_file = tmp_path / "oci-argv"
    (fake_bin / "oci").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv_file}\n')
    (fake_bin / "oci").chmod(0o755)
    env = user.env()
    env["PATH"] = f"{fake_bin}{os.pathsep}{env['PATH']}"

    result = user.run("--profile", user.profile, "os", "ns", "get", env=env)

    assert result.returncode == 0, result.stderr
    # The user gave --profile, so woci adds only --auth, then passes theirs on in order.
    assert argv_file.read_text().split() == ["--auth", "security_token", "--profile",
                                             user.profile, "os", "ns", "get"]


def test_missing_oci_is_exit_127_with_one_line(user):
    """oci not on PATH: the session is made, then exit 127 saying how to install oci."""
    env = user.env()
    env["PATH"] = "/nonexistent"

    result = subprocess.run([str(WOCI), "--profile", user.profile, "os", "ns", "get"],
                            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=90)

    assert result.returncode == 127
    assert "oci not found" in result.stderr
