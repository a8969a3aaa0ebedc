"""Section 9: the session tools. --status's document and text, --logout's steps, and the
--doctor checks, on real files in a temporary HOME and against local HTTP servers."""

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import oci_upst_session_manager as woci
from tests.unit.fakes import Answer, LocalServer, free_port, make_settings, unsigned_jwt
from tests.unit.test_fast_path import NOT_ON_THE_FAST_PATH

NOW = 1_800_000_000


def session_folder(tmp_path, token_claims=None, refresh=None):
    paths = woci.SessionPaths.for_profile("p", {"HOME": str(tmp_path)})
    Path(paths.folder).mkdir(parents=True, mode=0o700)
    if token_claims is not None:
        Path(paths.token).write_text(unsigned_jwt(token_claims))
    if refresh is not None:
        Path(paths.refresh_token).write_text(refresh)
    for path in Path(paths.folder).iterdir():
        path.chmod(0o600)
    return paths


# --- --status --------------------------------------------------------------------------------------


def test_status_of_nothing_is_every_field_empty(tmp_path):
    report = woci.session_status(woci.SessionPaths(tmp_path / "absent"), "p", NOW)
    assert report.document == {
        "profile": "p",
        "session": {"valid": False, "exp": None, "expires_at": None, "seconds_left": None,
                    "subject": None, "tenancy": None},
        "refresh_token": {"stored": False, "storage": None, "expires_at": None},
        "daemon": {"running": False, "pid": None}}
    assert not woci.status_usable(report)
    assert woci.status_text(report, NOW) == ("profile: p\nsession: none\nrefresh token: none\n"
                                             "daemon: not running\n")


def test_status_of_a_valid_session(tmp_path):
    paths = session_folder(tmp_path, {"exp": NOW + 3000, "sub": "alice", "tenant": "ocid1.t"},
                           refresh=unsigned_jwt({"exp": NOW + 86400}))
    report = woci.session_status(paths, "p", NOW + 0.5)
    assert report.document["session"] == {
        "valid": True, "exp": NOW + 3000, "expires_at": "2027-01-15T08:50:00Z",
        "seconds_left": 2999, "subject": "alice", "tenancy": "ocid1.t"}
    assert report.document["refresh_token"] == {"stored": True, "storage": "file",
                                                "expires_at": "2027-01-16T08:00:00Z"}
    assert woci.status_usable(report)
    assert woci.status_text(report, NOW) == (
        "profile: p\nsession: valid until 2027-01-15T08:50:00Z (49 min left)\n"
        "subject: alice\ntenancy: ocid1.t\n"
        "refresh token: file, expires 2027-01-16T08:00:00Z\ndaemon: not running\n")


def test_status_of_an_expired_session_is_usable_only_with_a_refresh_token(tmp_path):
    paths = session_folder(tmp_path, {"exp": NOW - 600})
    report = woci.session_status(paths, "p", NOW)
    assert report.document["session"]["valid"] is False
    assert report.document["session"]["seconds_left"] == -600
    assert not woci.status_usable(report)
    assert "session: expired at 2027-01-15T07:50:00Z (10 min ago)" in \
        woci.status_text(report, NOW)
    Path(paths.refresh_token).write_bytes(woci.encrypt_refresh_token("rt", "pw", 200_000))
    report = woci.session_status(paths, "p", NOW)
    assert woci.status_usable(report)
    assert report.document["refresh_token"]["storage"] == "encrypted-file"


@pytest.mark.parametrize("claims, expires_at", [
    ({"exp": 10 ** 19}, None), ({"exp": "soon"}, None), ({"exp": NOW + 60, "sub": 7}, "x")])
def test_status_never_breaks_on_odd_tokens(tmp_path, claims, expires_at):
    """An exp no date can hold, an exp that is no number, a subject that is no string."""
    paths = session_folder(tmp_path, claims)
    report = woci.session_status(paths, "p", NOW)
    json.dumps(report.document)
    woci.status_text(report, NOW)
    assert (report.document["session"]["expires_at"] is None) == (expires_at is None)
    assert report.document["session"]["subject"] is None


def test_status_reports_an_unusable_token_file(tmp_path):
    paths = session_folder(tmp_path)
    Path(paths.token).write_text("not a jwt\n")
    report = woci.session_status(paths, "p", NOW)
    assert report.document["session"]["exp"] is None
    assert "session: unusable (" in woci.status_text(report, NOW)


def test_status_loads_no_more_than_the_fast_path(tmp_path):
    """A shell prompt may run --status every time: it imports what a valid-session run does
    (not logging, configparser or requests), whatever the session's state."""
    session_folder(tmp_path, {"exp": NOW}, refresh="rt")
    script = textwrap.dedent(f"""
        import sys
        before = set(sys.modules)
        import oci_upst_session_manager as woci
        code = woci.main(["--profile", "p", "--status", "--json"], {{"HOME": {str(tmp_path)!r}}})
        print(code)
        print(" ".join(sorted(set(sys.modules) - before)))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    document, code, modules = result.stdout.splitlines()
    assert json.loads(document)["refresh_token"]["stored"] is True and code == "0"
    loaded = set(modules.split())
    assert loaded & NOT_ON_THE_FAST_PATH == set(), sorted(loaded & NOT_ON_THE_FAST_PATH)


def test_status_sees_a_running_daemon_by_its_lock(tmp_path):
    paths = session_folder(tmp_path)
    pid_file = woci.PidFile(paths.pid)
    assert pid_file.acquire()
    try:
        report = woci.session_status(paths, "p", NOW)
    finally:
        pid_file.release()
    import os

    assert report.document["daemon"] == {"running": True, "pid": os.getpid()}
    assert f"daemon: running, pid {os.getpid()}" in woci.status_text(report, NOW)


# --- --logout --------------------------------------------------------------------------------------


def logout_home(tmp_path):
    paths = session_folder(tmp_path, {"exp": NOW}, refresh="rt-to-revoke")
    for path in (paths.key, paths.public_key):
        Path(path).write_text("pem")
    Path(paths.credential_cache).mkdir()
    (Path(paths.credential_cache) / "abc.json").write_text("{}")
    config = tmp_path / ".oci" / "config"
    config.write_text(f"[p]\nkey_file={paths.key}\nsecurity_token_file={paths.token}\n"
                      "fingerprint=aa\ntenancy=t\n")
    return paths, config


def test_logout_revokes_and_deletes_everything_of_the_session(tmp_path):
    paths, config = logout_home(tmp_path)
    with LocalServer([Answer(200, b"")]) as server:
        settings = make_settings(oci_config_file=config, revocation_url=server.url + "/revoke")
        line = woci.logout(settings, {"HOME": str(tmp_path)})
    assert server.requests[0].form["token"] == "rt-to-revoke"
    assert line == ("logged out of profile p: revoked the refresh token at the provider; "
                    "deleted token, oci_api_key.pem, oci_api_key_public.pem, refresh_token, "
                    f"exec-credentials/; removed security_token_file, key_file, fingerprint "
                    f"from [p] in {config}\n")
    assert sorted(p.name for p in Path(paths.folder).iterdir()) == ["woci.lock"]
    assert config.read_text() == "[p]\ntenancy=t\n"
    assert woci.logout(settings, {"HOME": str(tmp_path)}).startswith("nothing to do")



def test_logout_reads_a_manager_ini_from_a_pipe_once(tmp_path):
    """`--manager-config <(vault ...)` gives its text to one read only: read twice, the
    second read found nothing, and the revocation endpoint it names was lost."""
    paths, config = logout_home(tmp_path)
    fifo = tmp_path / "manager.ini"
    os.mkfifo(fifo)
    with LocalServer([Answer(200, b"")]) as server:
        text = f"[p]\nclient_id = c\nrevocation_url = {server.url}/revoke\n"

        done = threading.Event()

        def feed_once():
            with open(fifo, "w") as pipe:
                pipe.write(text)
            while not done.wait(0.1):   # a second reader gets an empty pipe, not a hang
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:   # ENXIO: nobody is reading
                    pass

        feeder = threading.Thread(target=feed_once, daemon=True)
        feeder.start()
        try:
            code = woci.main(["--profile", "p", "--config-file", str(config),
                              "--manager-config", str(fifo), "--logout"],
                             {"HOME": str(tmp_path)})
        finally:
            done.set()
            feeder.join(timeout=10)
    assert code == 0
    assert [request.form["token"] for request in server.requests] == ["rt-to-revoke"]

def test_logout_warns_of_a_plain_http_revocation_endpoint_on_another_machine(
        tmp_path, caplog, monkeypatch):
    """The revocation carries the refresh token and the client secret: in clear text across
    the network it draws the renewal path's warning."""
    paths, config = logout_home(tmp_path)
    revoked = []
    monkeypatch.setattr(woci, "revoke_refresh_token",
                        lambda settings, url, token: revoked.append(url))
    settings = make_settings(oci_config_file=config, revocation_url="http://idp.example/revoke")
    with caplog.at_level(logging.WARNING, logger="woci"):
        woci.logout(settings, {"HOME": str(tmp_path)})
    assert revoked == ["http://idp.example/revoke"]
    (line,) = [r.getMessage() for r in caplog.records if "clear text" in r.getMessage()]
    assert line.startswith("revocation_url http://idp.example/revoke is plain http")


def test_logout_offline_warns_and_still_deletes(tmp_path, caplog):
    paths, config = logout_home(tmp_path)
    settings = make_settings(oci_config_file=config,
                             revocation_url=f"http://127.0.0.1:{free_port()}/revoke")
    started = time.monotonic()
    line = woci.logout(settings, {"HOME": str(tmp_path)})
    assert time.monotonic() - started < 30
    assert "revoked" not in line and "deleted token" in line
    assert any("was not revoked" in r.getMessage() for r in caplog.records)
    assert not Path(paths.refresh_token).exists()


def test_logout_of_an_encrypted_token_without_its_passphrase_still_deletes(tmp_path, caplog):
    paths, config = logout_home(tmp_path)
    Path(paths.refresh_token).write_bytes(woci.encrypt_refresh_token("rt", "pw", 200_000))
    settings = make_settings(oci_config_file=config, revocation_url="http://127.0.0.1:9/r")
    line = woci.logout(settings, {"HOME": str(tmp_path)})
    assert "deleted" in line and not Path(paths.refresh_token).exists()
    assert any("cannot revoke the refresh token" in r.getMessage() and "encrypted" in
               r.getMessage() for r in caplog.records)


# --- --doctor --------------------------------------------------------------------------------------


def context(tmp_path, argv=(), ini=None, environ=None):
    environ = {"HOME": str(tmp_path), "PATH": "/nonexistent", **(environ or {})}
    if ini is not None:
        (tmp_path / ".oci").mkdir(exist_ok=True)
        (tmp_path / ".oci" / "woci_manager.ini").write_text(ini)
    return woci.DoctorContext.gather(woci.split_command_line(["--profile", "p", *argv]),
                                     environ)


def test_doctor_masks_secrets_and_names_their_sources(tmp_path):
    ctx = context(tmp_path, ["--auth-client-secret", "flag-secret-value"],
                  "[COMMON]\nclient_secret = ini-secret-value-long\n",
                  {"WOCI_CLIENT_SECRET": "env-secret-value-long"})
    lines = [check.message for check in woci.check_settings(ctx)]
    assert "client_secret = en*** (21 characters) (env WOCI_CLIENT_SECRET)" in lines
    assert "auth_client_secret = fl*** (17 characters) (--auth-client-secret)" in lines
    assert not any("secret-value" in line for line in lines)


def test_doctor_warns_about_a_secret_given_as_a_flag(tmp_path):
    """SPEC 2: a secret flag is visible to every local user (ps), and woci says so, naming
    the option; --doctor says it in its report, as a warn line."""
    ctx = context(tmp_path, ["--client-secret", "flag-secret-value"],
                  "[COMMON]\nauth_client_secret = ini-secret-value-long\n")
    checks = woci.check_settings(ctx)
    warned = [check.message for check in checks if check.level == woci.WARN]
    assert len(warned) == 1 and "--client-secret" in warned[0] and "ps" in warned[0]
    assert "WOCI_CLIENT_SECRET" in warned[0]
    assert not any("secret-value" in check.message for check in checks)
    assert not any(check.level == woci.WARN for check in woci.check_settings(
        context(tmp_path, [], None, {"WOCI_CLIENT_SECRET": "env-secret-value-long"})))


def test_doctor_report_starts_every_line_with_its_level():
    report = woci.doctor_report([woci.Check("ok", "a"), woci.Check("warn", "b"),
                                 woci.Check("FAIL", "c")])
    assert report == "ok   a\nwarn b\nFAIL c\n"


@pytest.mark.parametrize("probe, level, fragment", [
    (woci.Probe(None, "", None, None, "connection refused"), "FAIL", "connection refused; check"),
    (woci.Probe(400, "application/json", "invalid_request", 0.0, None), "ok", "reachable"),
    (woci.Probe(503, "text/html", None, 0.0, None), "warn", "try again later"),
    (woci.Probe(404, "text/html", None, 0.0, None), "warn", "is token_url right?"),
])
def test_endpoint_check_levels(tmp_path, probe, level, fragment):
    ctx = context(tmp_path, ["--token-url", "http://idp.test/token"])
    ctx.probes["http://idp.test/token"] = probe
    check = woci.check_token_endpoint(ctx)
    assert check.level == level and fragment in check.message
    assert "http://idp.test/token" in check.message


@pytest.mark.parametrize("skew, level", [(5.0, "ok"), (-90.0, "warn"), (400.0, "FAIL")])
def test_clock_check_levels(tmp_path, skew, level):
    ctx = context(tmp_path)
    ctx.probes["http://idp.test/token"] = woci.Probe(400, "", "x", skew, None)
    check = woci.check_clock(ctx)
    assert check.level == level
    if level != "ok":
        assert "idp.test" in check.message and "fix the clock" in check.message


def test_doctor_fails_on_files_open_to_others_and_says_chmod(tmp_path):
    paths = session_folder(tmp_path, {"exp": NOW}, refresh="rt")
    Path(paths.refresh_token).chmod(0o644)
    check = woci.check_session_files(context(tmp_path))
    assert check.level == "FAIL" and f"chmod 600 {paths.refresh_token}" in check.message
    Path(paths.folder).chmod(0o755)
    check = woci.check_session_folder(context(tmp_path))
    assert check.level == "FAIL" and f"chmod 700 {paths.folder}" in check.message


def test_doctor_without_oci_on_path_fails_saying_how_to_install(tmp_path):
    check = woci.check_oci(context(tmp_path))
    assert check == woci.Check("FAIL", "oci: not found on PATH; install the OCI CLI "
                                       "(pip install oci-cli)")


def test_doctor_runs_oci_version_without_the_secrets_of_the_environment(tmp_path):
    """SPEC 7: the passphrase variable and WOCI_*_SECRET are removed from oci's environment,
    `oci --version` of --doctor included."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "oci").write_text("#!/bin/sh\nenv > \"$0.env\"\necho 3.95.1\n")
    (bin_dir / "oci").chmod(0o755)
    ctx = context(tmp_path, ["--refresh-token-passphrase-env", "MY_PASS"], None,
                  {"PATH": f"{bin_dir}:/usr/bin:/bin", "MY_PASS": "pass-value",
                   "WOCI_CLIENT_SECRET": "env-secret", "KEEP": "k"})
    assert woci.check_oci(ctx).level == "ok"
    seen = (bin_dir / "oci.env").read_text()
    assert "KEEP=k" in seen
    assert "MY_PASS" not in seen and "WOCI_CLIENT_SECRET" not in seen


def test_doctor_refresh_token_checks_never_show_the_token(tmp_path):
    session_folder(tmp_path, refresh=unsigned_jwt({"exp": int(time.time()) - 10}))
    check = woci.check_refresh_token(context(tmp_path))
    assert check.level == "FAIL" and "expired" in check.message
    paths = session_folder(tmp_path / "b", refresh="rt-very-secret")
    check = woci.check_refresh_token(context(tmp_path / "b"))
    assert check.level == "ok" and "rt-very-secret" not in check.message
    assert "readable only by you" in check.message
    Path(paths.refresh_token).chmod(0o644)   # check_session_files says chmod 600
    check = woci.check_refresh_token(context(tmp_path / "b"))
    assert "open to other users" in check.message and "readable only" not in check.message
    Path(paths.refresh_token).write_bytes(woci.encrypt_refresh_token("rt", "pw", 200_000))
    check = woci.check_refresh_token(context(tmp_path / "b"))
    assert check.level == "FAIL" and "no passphrase is configured" in check.message
    check = woci.check_refresh_token(context(
        tmp_path / "b", ini="[COMMON]\nrefresh_token_passphrase_env = PW\n",
        environ={"PW": "wrong"}))
    assert check.level == "FAIL" and "wrong passphrase" in check.message


def test_a_check_that_breaks_is_one_fail_line_and_the_rest_run(tmp_path, monkeypatch):
    def broken(ctx):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(woci, "DOCTOR_CHECKS", (broken, woci.check_discovery))
    checks = woci.run_doctor_checks(context(tmp_path))
    assert checks[0] == woci.Check("FAIL", "broken: [Errno 5] Input/output error")
    assert checks[1].level == "ok"


def test_doctor_with_a_broken_explicit_manager_config_still_runs(tmp_path):
    ctx = context(tmp_path, ["--manager-config", str(tmp_path / "missing.ini")])
    check = woci.check_manager_config(ctx)
    assert check.level == "FAIL" and "does not exist" in check.message
    assert isinstance(ctx.settings, woci.Settings)
    assert Path(str(tmp_path / "missing.ini")).name in check.message


@pytest.mark.parametrize("exp", [10 ** 400, -(10 ** 400)], ids=["huge", "huge-negative"])
def test_status_of_a_token_with_an_exp_no_float_can_hold(tmp_path, exp):
    """exp - now would raise OverflowError: the token is unusable, reported, no traceback."""
    paths = session_folder(tmp_path, {"exp": exp})
    report = woci.session_status(paths, "p", NOW)
    assert report.document["session"]["exp"] is None and report.token_problem
    woci.status_text(report, NOW)


@pytest.mark.parametrize("argv", [["--daemon-status"], ["--stop-daemon"]])
def test_a_folder_named_like_the_pid_file_is_one_error_line(tmp_path, argv, capsys):
    paths = session_folder(tmp_path)
    Path(paths.pid).mkdir()
    assert woci.main(["--profile", "p", *argv], {"HOME": str(tmp_path)}) == 1
    err = capsys.readouterr().err
    assert err.startswith("woci: error: ") and err.count("\n") == 1 and paths.pid in err


def test_a_folder_named_like_the_keyring_marker_is_one_error_line(tmp_path, capsys,
                                                                   monkeypatch):
    paths = session_folder(tmp_path, refresh="rt")
    Path(paths.keyring_marker).mkdir()

    class Backend:
        def get_password(self, service, username):
            return None

    monkeypatch.setattr(woci, "open_keyring", lambda: (Backend(), "test backend"))
    settings = woci.build_settings(woci.split_command_line(["--profile", "p"]),
                                   {"HOME": str(tmp_path)}, None, None, required=())
    store = woci.RefreshTokenStore(paths.refresh_token, woci.NoPassphrase(),
                                   paths.keyring_marker, open_backend=woci.open_keyring)
    with pytest.raises(woci.StorageError, match="Is a directory"):
        store.settle()
    assert "the keyring item" not in woci.logout(settings, {"HOME": str(tmp_path)})


def test_status_text_shows_a_subject_with_control_characters_harmlessly(tmp_path):
    """The subject comes from OCI's token: an escape sequence in it must not reach the
    terminal, a newline must not add a line to the report."""
    paths = session_folder(tmp_path, {"exp": NOW + 600, "sub": "me\n\x1b]0;owned\x07",
                                      "tenant": "ocid1.tenancy\x1b[2J"})
    text = woci.status_text(woci.session_status(paths, "p", NOW), NOW)
    assert "\x1b" not in text and "\x07" not in text
    assert "subject: me ?]0;owned?\n" in text and "tenancy: ocid1.tenancy?[2J\n" in text
