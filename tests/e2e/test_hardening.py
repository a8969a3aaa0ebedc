"""Hardening (issue 8): faults and hostile input that must not cost the user a session,
a secret, a config edit or a traceback.

Every fault comes from the bed: emulator fault switches, a second process, a hostile local
HTTP client, files edited by hand. woci itself always runs unpatched, as a subprocess.
Every case is listed, with its expected outcome, in tests/README.md.
"""

import configparser
import http.client
import json
import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.bed.emulator import ABSURD_UPST_FAULTS
from tests.polling import wait_until
from tests.e2e.conftest import (OCI_CLIENT_SECRET, RUN_TIMEOUT, WOCI, assert_namespace_printed,
                                free_port)

PASS_VAR = "SOME_VAR"
PASSPHRASE = "hardening pass phrase 8"
SECRET_ENV_VARS = ("WOCI_CLIENT_SECRET", "WOCI_AUTH_CLIENT_SECRET")
# How long a run that must fail fast may take before it counts as a hang.
QUICK_TIMEOUT = 20
WAIT = 30   # bound for waiting on a signal from the bed


# --- helpers ------------------------------------------------------------------------------------


def refresh_grants(idp, mark):
    """The refresh-token requests the provider received since mark (all of them: sync first)."""
    idp.sync()
    return [e for e in idp.events_since(mark, "token_request") if e.get("grant_type")
            == "refresh_token"]


def snapshot(folder):
    """Bytes and mtime of every file under folder (lock files aside: opening one is no change)."""
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and p.suffix != ".lock"}


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def bare(user, *args, **kwargs):
    """woci with no oci arguments: make the session valid (renew or sign in), run nothing."""
    return user.run("--profile", user.profile, *args, **kwargs)


def expire_session(user):
    """A UPST that is gone: the next run renews with the stored refresh token."""
    (user.session_dir / "token").unlink()


def run_quick(user, *args, env=None, timeout=QUICK_TIMEOUT):
    try:
        return user.run(*args, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"woci {' '.join(args)} still ran after {timeout} s: it hangs")


def start_woci(user, *args, env=None):
    return subprocess.Popen([str(WOCI), *args], env=env or user.env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=user.home)


def finish(proc, timeout=RUN_TIMEOUT):
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def wait_for_listener(port, proc, timeout=WAIT):
    """Poll-connect until something listens on 127.0.0.1:port (woci's callback)."""
    def listening():
        if proc.poll() is not None:
            raise AssertionError(f"woci exited ({proc.returncode}) before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(listening, timeout, f"something listening on 127.0.0.1:{port}")


def http_get(port, target):
    """(status, content type, body) of GET target on 127.0.0.1:port; status None if it failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        return (response.status, response.getheader("Content-Type") or "",
                response.read().decode("utf-8", "replace"))
    except (OSError, http.client.HTTPException) as exc:
        return None, "", f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def daemon_pid(user):
    pid_file = user.session_dir / "woci_refresh.pid"
    try:
        text = pid_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def kill_daemon(user, pid=None):
    """Stop a daemon a test started (by its pid), whatever state the test left it in."""
    for candidate in {pid, daemon_pid(user)} - {None}:
        try:
            os.kill(candidate, signal.SIGKILL)
        except ProcessLookupError:
            pass


def woci_has_status_option(user):
    return "--status" in user.run("--help").stdout


# --- 1. encryption switched on later --------------------------------------------------------------


@pytest.mark.parametrize("setting, phrase", [
    ({"refresh_token_passphrase_env": PASS_VAR}, PASS_VAR),
    ({"refresh_token_passphrase_prompt": "true"}, "terminal"),
], ids=["passphrase-env-unset", "passphrase-prompt-no-terminal"])
def test_encryption_switched_on_later_spends_no_refresh_token_without_a_passphrase(
        user, idp, emulator, setting, phrase):
    """A plain refresh token, then a passphrase setting that gives no passphrase: exit 2
    before any grant (its successor could not be stored), the file untouched; once the
    passphrase is there, the same token renews and is stored encrypted."""
    emulator.set_upst_lifetime(30)
    assert bare(user).returncode == 0
    path = user.session_dir / "refresh_token"
    plain = path.read_bytes()
    assert not plain.lstrip().startswith(b"{")
    user.write_manager_ini(**setting)
    env = user.env()
    env.pop(PASS_VAR, None)
    mark = idp.mark()

    refused = bare(user, env=env)

    assert refused.returncode == 2, refused.stderr
    assert phrase in refused.stderr
    assert "Traceback" not in refused.stderr
    assert refresh_grants(idp, mark) == [], "a refresh token was spent without a passphrase"
    assert path.read_bytes() == plain

    user.write_manager_ini(refresh_token_passphrase_env=PASS_VAR)
    mark = idp.mark()
    renewed = bare(user, env=user.env(**{PASS_VAR: PASSPHRASE}))

    assert renewed.returncode == 0, renewed.stderr
    assert len(refresh_grants(idp, mark)) == 1
    assert len(user.browser_opens()) == 1
    stored = path.read_text()
    assert stored.startswith("{") and '"ciphertext"' in stored


# --- 2. no silent downgrade -------------------------------------------------------------------


def test_sign_in_without_a_passphrase_never_replaces_an_encrypted_refresh_token(user, idp):
    """An encrypted refresh token and no passphrase setting: `session authenticate` exits 2
    before the browser opens, pointing at --logout; the encrypted file stays."""
    user.write_manager_ini(refresh_token_passphrase_env=PASS_VAR)
    assert bare(user, env=user.env(**{PASS_VAR: PASSPHRASE})).returncode == 0
    path = user.session_dir / "refresh_token"
    encrypted = path.read_bytes()
    assert encrypted.startswith(b"{")
    wait_until(lambda: user.browser_opens(), WAIT, "the first sign-in's browser record")
    user.browser_log.unlink()
    user.write_manager_ini()
    mark = idp.mark()

    result = user.run("--profile", user.profile, "session", "authenticate")

    assert result.returncode == 2, result.stderr
    assert "--logout" in result.stderr
    assert "Traceback" not in result.stderr
    assert path.read_bytes() == encrypted
    assert user.browser_opens() == []
    idp.sync()
    assert idp.events_since(mark, "interaction.started") == []


# --- 3. lost config edits ---------------------------------------------------------------------


def test_config_edit_made_during_a_renewal_is_kept(user, emulator):
    """Another tool adds a profile while woci waits for a slow exchange: woci's change is
    applied to the file as it is then, so both the new profile and woci's keys are there."""
    emulator.set_upst_lifetime(30)
    assert bare(user).returncode == 0
    # A new region in the INI: this renewal must write the profile.
    user.write_manager_ini(region="us-phoenix-1")
    emulator.inject(kind="slow", delay=3, count=1)
    slow_before = emulator.count("fault_slow")
    proc = start_woci(user, "--profile", user.profile)
    try:
        emulator.wait_for_count("fault_slow", slow_before + 1, WAIT)
        assert proc.poll() is None, "woci ended before its exchange was answered"
        text = user.config_file.read_text()
        with open(user.config_file, "a") as handle:
            handle.write(("" if text.endswith("\n") else "\n") + "[other]\nuser=ocid1.user.oc1..x\n")
    finally:
        out, err = finish(proc)

    assert proc.returncode == 0, err
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(user.config_file.read_text())
    assert parser.has_section("other"), "the edit made during the renewal was lost"
    assert parser["other"]["user"] == "ocid1.user.oc1..x"
    profile = parser[user.profile]
    assert profile["key_file"] == str(user.session_dir / "oci_api_key.pem")
    assert profile["security_token_file"] == str(user.session_dir / "token")
    assert profile["region"] == "us-phoenix-1"
    assert "fingerprint" in profile and "tenancy" in profile


# --- 4. folders that are not woci's ------------------------------------------------------------


def test_config_file_folders_of_the_user_keep_their_mode(user):
    """--config-file in an existing 0755 folder: it stays 0755 (and ~/.oci too); a folder woci
    makes for a config file is 0700."""
    user.oci_dir.chmod(0o755)
    project = user.home / "project"
    project.mkdir()
    project.chmod(0o755)
    config = project / "oci-config"

    result = user.run("--profile", user.profile, "--config-file", str(config))

    assert result.returncode == 0, result.stderr
    assert mode(project) == 0o755
    assert mode(user.oci_dir) == 0o755
    assert mode(config) == 0o600
    assert mode(user.session_dir) == 0o700

    made = user.home / "made-by-woci" / "deeper" / "oci-config"
    result = user.run("--profile", user.profile, "--config-file", str(made))

    assert result.returncode == 0, result.stderr
    assert made.exists()
    assert mode(made.parent) == 0o700 and mode(made.parent.parent) == 0o700
    assert mode(project) == 0o755


# --- 5. config lines ----------------------------------------------------------------------------


@pytest.mark.parametrize("separator", ["\x85", "\u2028", "\x0c"],
                         ids=["U+0085", "U+2028", "form-feed"])
def test_config_lines_are_split_where_configparser_splits_them(user, separator):
    """`# a note<sep>[dev]` is one comment line for configparser (and oci): woci must not see
    a [dev] header there, but add a real [dev] that oci then uses."""
    original = f"[DEFAULT]\n# a note{separator}[dev]\nregion=x\n".encode("utf-8")
    user.config_file.write_bytes(original)
    user.config_file.chmod(0o600)
    before = configparser.ConfigParser(interpolation=None)
    before.read_string(original.decode("utf-8"))
    assert not before.has_section(user.profile)   # the premise: oci sees no [dev]

    result = user.oci_ns_get()

    raw = user.config_file.read_bytes()
    assert raw.startswith(original), "the lines before woci's section changed"
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(raw.decode("utf-8"))
    assert parser.has_section(user.profile), "configparser (hence oci) sees no [dev] section"
    assert parser[user.profile]["key_file"] == str(user.session_dir / "oci_api_key.pem")
    assert parser[user.profile]["security_token_file"] == str(user.session_dir / "token")
    assert_namespace_printed(result)


# --- 6. the callback ------------------------------------------------------------------------------


def test_callback_ignores_requests_without_the_right_state(user, tmp_path):
    """A local client sends the callback a wrong state and no state before the browser comes
    back: each gets a short 4xx HTML page, and the real answer still signs in."""
    port = free_port()
    user.write_manager_ini(redirect_port=str(port))
    release = tmp_path / "release-browser"
    proc = start_woci(user, "--profile", user.profile,
                      env=user.env(WOCI_TEST_BROWSER_HOLD_FILE=str(release)))
    hostile = []
    try:
        wait_for_listener(port, proc)
        hostile.append(http_get(port, "/callback?state=wrong&code=x"))
        hostile.append(http_get(port, "/callback?code=x"))
        release.touch()
    finally:
        release.touch()
        out, err = finish(proc)

    assert proc.returncode == 0, err
    assert (user.session_dir / "token").exists()
    wait_until(lambda: user.browser_opens(), WAIT, "the browser's record")
    record = user.browser_opens()[0]
    assert record["held"] == "released" and record["callback_status"] == 200, record
    for status, content_type, body in hostile:
        assert status is not None and 400 <= status < 500, (status, body)
        assert content_type.startswith("text/html"), content_type
        assert "<html" in body.lower() and len(body) < 4096, body


def test_a_client_dribbling_bytes_cannot_stretch_the_login_timeout(user):
    """A client sends the callback one byte every 0.5 s; the browser never comes back: woci
    still gives up after login_timeout with "timed out"."""
    login_timeout = 4
    port = free_port()
    user.write_manager_ini(redirect_port=str(port), login_timeout=str(login_timeout))
    bound = login_timeout + 20
    stop, connected = threading.Event(), threading.Event()

    def dribble():
        deadline = time.monotonic() + bound + 30   # longer than woci may take
        sock = None
        while sock is None and not stop.is_set() and time.monotonic() < deadline:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=1)
            except OSError:
                stop.wait(0.05)
        if sock is None:
            return
        connected.set()
        with sock:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    sock.sendall(b"a")
                except OSError:
                    return
                stop.wait(0.5)

    dribbler = threading.Thread(target=dribble, name="dribbler", daemon=True)
    dribbler.start()
    try:
        result = run_quick(user, "--profile", user.profile, timeout=bound,
                           env=user.env(WOCI_TEST_BROWSER_ACTION="wrong-password"))
    finally:
        stop.set()
        dribbler.join(timeout=5)

    assert connected.is_set(), "the dribbler never reached the callback port"
    assert result.returncode == 1, result.stderr
    assert "timed out" in result.stderr


# --- 7. secrets in ps ---------------------------------------------------------------------------


def secret_case(idp, which):
    """(INI key, flag, env var, the right secret, other INI settings) for the OCI client or
    the provider's confidential client."""
    if which == "oci":
        return "client_secret", "--client-secret", "WOCI_CLIENT_SECRET", OCI_CLIENT_SECRET, {}
    return ("auth_client_secret", "--auth-client-secret", "WOCI_AUTH_CLIENT_SECRET",
            idp.confidential_client_secret, {"auth_client_id": idp.confidential_client_id})


@pytest.mark.parametrize("which", ["oci", "auth"])
def test_secret_on_the_command_line_works_with_one_warning(user, idp, which):
    """A client secret as a flag works, draws one warning naming the flag, and is not echoed."""
    key, flag, _, secret, ini = secret_case(idp, which)
    user.write_manager_ini(**{key: None}, **ini)

    result = user.run(flag, secret, "--profile", user.profile)

    assert result.returncode == 0, result.stderr
    naming = [line for line in result.stderr.splitlines() if flag in line]
    assert len(naming) == 1, result.stderr
    assert secret not in result.stderr


def test_daemon_refuses_a_client_secret_from_the_command_line(user):
    """--daemon with --client-secret: exit 2 naming the flag, and no daemon runs (its command
    line, world-readable in /proc, would hold the secret)."""
    user.write_manager_ini(client_secret=None)
    result = None
    try:
        result = user.run("--client-secret", OCI_CLIENT_SECRET, "--profile", user.profile,
                          "--daemon")
        assert result.returncode == 2, result.stderr
        assert "--client-secret" in result.stderr
        assert OCI_CLIENT_SECRET not in result.stderr
        assert result.stdout == ""
        assert user.run("--profile", user.profile, "--daemon-status").returncode == 1
    finally:
        started = result.stdout.strip() if result is not None else ""
        kill_daemon(user, int(started) if started.isdigit() else None)


def test_oci_client_secret_from_the_environment(user, emulator):
    """No client_secret in the INI, WOCI_CLIENT_SECRET in the environment: a renewal's exchange
    (HTTP Basic, checked by the emulator) works."""
    assert bare(user).returncode == 0
    user.write_manager_ini(client_secret=None)
    expire_session(user)
    exchanges = emulator.count("exchange_ok")

    result = bare(user, env=user.env(WOCI_CLIENT_SECRET=OCI_CLIENT_SECRET))

    assert result.returncode == 0, result.stderr
    assert emulator.count("exchange_ok") == exchanges + 1
    assert len(user.browser_opens()) == 1


def test_provider_client_secret_from_the_environment(user, idp, emulator):
    """A confidential provider client, its secret only in WOCI_AUTH_CLIENT_SECRET: sign-in and
    refresh authenticate with HTTP Basic and succeed."""
    user.write_manager_ini(auth_client_id=idp.confidential_client_id)
    env = user.env(WOCI_AUTH_CLIENT_SECRET=idp.confidential_client_secret)
    mark = idp.mark()

    signed_in = bare(user, env=env)
    assert signed_in.returncode == 0, signed_in.stderr
    expire_session(user)
    renewed = bare(user, env=env)
    assert renewed.returncode == 0, renewed.stderr
    idp.sync()
    requests_seen = [e for e in idp.events_since(mark, "token_request")
                     if e.get("client_id") == idp.confidential_client_id]
    assert sorted(e["grant_type"] for e in requests_seen) == ["authorization_code",
                                                              "refresh_token"]
    assert all(e["client_auth"] == "basic" and e["status"] == 200 for e in requests_seen)


@pytest.mark.parametrize("which", ["oci", "auth"])
def test_client_secret_precedence_is_flag_then_environment_then_ini(user, idp, emulator, which):
    """A wrong secret in the INI loses to the right one in the environment; a wrong one in the
    environment loses to the right flag."""
    key, flag, var, secret, ini = secret_case(idp, which)
    user.write_manager_ini(**{key: "wrong-in-the-ini"}, **ini)

    from_env = bare(user, env=user.env(**{var: secret}))

    assert from_env.returncode == 0, from_env.stderr
    expire_session(user)
    from_flag = user.run(flag, secret, "--profile", user.profile,
                         env=user.env(**{var: "wrong-in-the-environment"}))
    assert from_flag.returncode == 0, from_flag.stderr
    assert len(user.browser_opens()) == 1


# --- 8. the children's environment -----------------------------------------------------------------


ENV_DUMP = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"


@pytest.mark.parametrize("auto_refresh", [False, True], ids=["plain", "auto-refresh"])
@pytest.mark.parametrize("target", ["exec", "oci"])
def test_secrets_stay_out_of_the_childs_environment(user, idp, tmp_path, target, auto_refresh):
    """The passphrase variable and WOCI_*_SECRET never reach oci or the --exec command; the
    --exec command gets OCI_CLI_PROFILE, OCI_CLI_CONFIG_FILE and OCI_CLI_AUTH."""
    user.write_manager_ini(refresh_token_passphrase_env=PASS_VAR,
                           auth_client_id=idp.confidential_client_id,
                           auth_client_secret=idp.confidential_client_secret)
    secrets = {PASS_VAR: PASSPHRASE, "WOCI_CLIENT_SECRET": OCI_CLIENT_SECRET,
               "WOCI_AUTH_CLIENT_SECRET": idp.confidential_client_secret}
    env = user.env(**secrets)
    dump = tmp_path / "child-environ.json"
    args = ["--profile", user.profile] + (["--auto-refresh"] if auto_refresh else [])
    if target == "exec":
        result = user.run(*args, "--exec", "--", sys.executable, "-c", ENV_DUMP, str(dump),
                          env=env)
    else:
        # A probe named oci, first on PATH: it only records what oci would be given.
        probe_bin = tmp_path / "probe-bin"
        probe_bin.mkdir()
        probe = probe_bin / "oci"
        probe.write_text(f"#!{sys.executable}\n{ENV_DUMP.replace('sys.argv[1]', repr(str(dump)))}\n")
        probe.chmod(0o755)
        env["PATH"] = f"{probe_bin}{os.pathsep}{env['PATH']}"
        result = user.run(*args, "os", "ns", "get", env=env)

    assert result.returncode == 0, result.stderr
    child = json.loads(dump.read_text())
    leaked = sorted(name for name in secrets if name in child)
    assert leaked == [], f"{target} inherited {leaked}"
    for value in secrets.values():
        assert value not in dump.read_text()
    if target == "exec":
        assert child["OCI_CLI_PROFILE"] == user.profile
        assert child["OCI_CLI_CONFIG_FILE"] == str(user.config_file)
        assert child["OCI_CLI_AUTH"] == "security_token"


# --- 9. a tampered encrypted file ---------------------------------------------------------------


@pytest.mark.parametrize("iterations", [10 ** 12, 2 ** 31 - 1, 10_000_001, 199_999])
def test_implausible_iteration_count_is_a_damaged_file_at_once(user, emulator, iterations):
    """An iteration count outside 200,000-10,000,000: exit 2 "damaged" quickly (no PBKDF2 run
    for hours), no traceback, nothing under ~/.oci changed."""
    user.write_manager_ini(refresh_token_passphrase_env=PASS_VAR)
    env = user.env(**{PASS_VAR: PASSPHRASE})
    emulator.set_upst_lifetime(30)
    assert bare(user, env=env).returncode == 0
    path = user.session_dir / "refresh_token"
    text, count = re.subn(r'"iterations": \d+', f'"iterations": {iterations}', path.read_text())
    assert count == 1
    path.write_text(text)
    before = snapshot(user.oci_dir)

    result = run_quick(user, "--profile", user.profile, env=env)

    assert result.returncode == 2, result.stderr
    assert "damaged" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(user.oci_dir) == before


# --- 10. absurd answers -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(ABSURD_UPST_FAULTS))
def test_absurd_upst_from_the_exchange_saves_nothing(user, emulator, kind):
    """The exchange answers a UPST that is not ASCII, or whose exp is 10**19, two days ahead
    or a string: exit 1, no traceback, no token or key written, the OCI config unchanged."""
    other = b"[other]\nuser=ocid1.user.oc1..x\n"
    user.config_file.write_bytes(other)
    user.config_file.chmod(0o600)
    emulator.inject(kind=kind, count=1)
    used = emulator.count(f"fault_{kind}")

    result = bare(user)

    assert emulator.count(f"fault_{kind}") == used + 1, "the absurd answer was not given"
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "token exchange" in result.stderr.lower()
    for name in ("token", "oci_api_key.pem", "oci_api_key_public.pem"):
        assert not (user.session_dir / name).exists(), name
    assert user.config_file.read_bytes() == other


def test_a_session_token_expiring_in_the_far_future_prints_no_traceback(user):
    """A token file written by hand with exp 10**19: --daemon-status (a daemon running),
    --status and `session refresh` print no traceback."""
    assert bare(user).returncode == 0
    started = user.run("--profile", user.profile, "--daemon")
    pid = int(started.stdout.strip()) if started.stdout.strip().isdigit() else None
    try:
        assert started.returncode == 0 and pid, started.stderr
        token = user.session_dir / "token"
        header, payload, signature = token.read_text().split(".")
        claims = json.loads(base64url_decode(payload))
        claims["exp"] = 10 ** 19
        token.write_text(".".join([header, base64url_encode(json.dumps(claims)), signature]))

        checks = [("--daemon-status",)]
        if woci_has_status_option(user):   # --status may not exist yet
            checks += [("--status",), ("--status", "--json")]
        for args in checks:
            result = run_quick(user, "--profile", user.profile, *args)
            assert "Traceback" not in result.stdout + result.stderr, (args, result.stderr)
            if args == ("--daemon-status",):
                assert result.returncode == 0, result.stderr
                assert f"pid {pid}" in result.stdout

        refreshed = run_quick(user, "--profile", user.profile, "session", "refresh")
        assert "Traceback" not in refreshed.stdout + refreshed.stderr, refreshed.stderr
        assert refreshed.returncode == 0, refreshed.stderr
    finally:
        user.run("--profile", user.profile, "--stop-daemon", timeout=QUICK_TIMEOUT)
        kill_daemon(user, pid)
    log = user.session_dir / "woci_daemon.log"
    assert "Traceback" not in (log.read_text() if log.exists() else "")


def base64url_decode(text):
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def base64url_encode(text):
    import base64

    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")


# --- 11. the pid file -------------------------------------------------------------------------------


PID_FILE_SQUATTER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, b"not a pid\\n")
print("locked", flush=True)
sys.stdin.read()
"""


def test_pid_file_locked_by_another_program_is_not_a_daemon(user):
    """A process that is not a woci daemon holds the pid file's lock, garbage in it:
    --daemon-status and --stop-daemon exit 1 naming the file, never "pid -1" or "no daemon"."""
    user.session_dir.mkdir(parents=True, mode=0o700)
    pid_file = user.session_dir / "woci_refresh.pid"
    squatter = subprocess.Popen([sys.executable, "-c", PID_FILE_SQUATTER, str(pid_file)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        ready, _, _ = select.select([squatter.stdout], [], [], WAIT)
        assert ready and squatter.stdout.readline() == b"locked\n", "the squatter did not lock"
        for mode_flag in ("--daemon-status", "--stop-daemon"):
            result = run_quick(user, "--profile", user.profile, mode_flag)
            said = result.stdout + result.stderr
            assert result.returncode == 1, (mode_flag, said)
            assert str(pid_file) in said, (mode_flag, said)
            assert "-1" not in said.replace(str(user.home), "<home>"), (mode_flag, said)
            assert "no woci daemon runs" not in said, (mode_flag, said)
            assert "Traceback" not in said, (mode_flag, said)
        assert squatter.poll() is None, "woci signalled a process that is not its daemon"
    finally:
        squatter.kill()
        squatter.wait(timeout=10)


def test_browser_helper_gets_no_secret_from_woci(user, idp):
    """The browser (here the scripted user, started through $BROWSER) runs without
    WOCI_*_SECRET and the passphrase variable in its environment."""
    user.write_manager_ini(client_secret=None, refresh_token_passphrase_env="SOME_VAR",
                           auth_client_id=idp.confidential_client_id)
    env = user.env(WOCI_CLIENT_SECRET=OCI_CLIENT_SECRET,
                   WOCI_AUTH_CLIENT_SECRET=idp.confidential_client_secret,
                   SOME_VAR="a passphrase")

    result = user.oci_ns_get(env=env)

    assert result.returncode == 0, result.stderr
    [opened] = user.browser_opens()
    assert "WOCI_TEST_PASSWORD" in opened["environment"]   # the probe does see woci's others
    assert {"WOCI_CLIENT_SECRET", "WOCI_AUTH_CLIENT_SECRET", "SOME_VAR"} & \
        set(opened["environment"]) == set()


def test_ctrl_c_during_a_daemon_sign_in_is_one_line_and_exit_130(user):
    """--daemon signs in in a child process; Ctrl-C (SIGINT to the terminal's group) while it
    waits: exit 130, "interrupted", no traceback from either process, no daemon, nothing saved."""
    user.write_manager_ini(login_flow="manual", login_timeout="30")
    proc = subprocess.Popen([str(WOCI), "--profile", user.profile, "--daemon"], env=user.env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("http" in line for line in seen):
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
        assert any("http" in line for line in seen), seen
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and out == ""
    assert not (user.session_dir / "token").exists()
    assert not (user.session_dir / "woci_refresh.pid").exists()
