"""The session tools (--status, --logout, --doctor) and keyring storage, end to end: woci as a
subprocess with stdin closed, against the real provider, the OCI emulator and a real keyring
backend that stores in a file in the test HOME (keyrings.alt)."""

import base64
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
import requests

from tests.e2e.conftest import OCI_CLIENT_SECRET, REGION, free_port

# --status must answer fast enough for a shell prompt; generous for a loaded 2-core machine.
STATUS_BUDGET_SECONDS = 5
QUICK = 30
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
SESSION_KEYS = {"valid", "exp", "expires_at", "seconds_left", "subject", "tenancy"}


def sign_in(user, *args):
    result = user.run("--profile", user.profile, *args)
    assert result.returncode == 0, result.stderr
    return result


def status(user, *args, env=None):
    started = time.monotonic()
    result = user.run("--profile", user.profile, "--status", *args, env=env, timeout=QUICK)
    elapsed = time.monotonic() - started
    assert "Traceback" not in result.stderr, result.stderr
    return result, elapsed


def status_json(user, env=None):
    result, _ = status(user, "--json", env=env)
    assert result.stdout.count("\n") == 1, result.stdout
    document = json.loads(result.stdout)
    assert set(document) == {"profile", "session", "refresh_token", "daemon"}
    assert set(document["session"]) == SESSION_KEYS
    assert set(document["refresh_token"]) == {"stored", "storage", "expires_at"}
    assert set(document["daemon"]) == {"running", "pid"}
    return result.returncode, document


def token_claims(user):
    payload = user.token_text().split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def write_token_exp(user, exp):
    header, payload, signature = user.token_text().split(".")
    claims = token_claims(user)
    claims["exp"] = exp
    encoded = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    (user.session_dir / "token").write_text(".".join([header, encoded, signature]))


def introspect(idp, token):
    answer = requests.post(idp.introspection_url,
                           data={"token": token, "client_id": idp.public_client_id},
                           timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def refresh_grant(idp, token):
    return requests.post(idp.token_url, data={"grant_type": "refresh_token",
                                              "refresh_token": token,
                                              "client_id": idp.public_client_id}, timeout=10)


def start_daemon(user):
    result = user.run("--profile", user.profile, "--daemon", timeout=QUICK)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


def kill_if_alive(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def daemon_pids():
    """Pids of daemons a test started: killed afterwards whatever happened."""
    pids = []
    yield pids
    for pid in pids:
        kill_if_alive(pid)


# --- --status ---------------------------------------------------------------------------------


def test_status_before_sign_in_needs_no_settings(user):
    """No manager INI at all, nothing stored: every field empty, exit 1, nothing on stderr."""
    user.manager_ini.unlink()

    code, document = status_json(user)
    text, _ = status(user)

    assert code == 1 and text.returncode == 1
    assert document == {
        "profile": "dev",
        "session": {"valid": False, "exp": None, "expires_at": None, "seconds_left": None,
                    "subject": None, "tenancy": None},
        "refresh_token": {"stored": False, "storage": None, "expires_at": None},
        "daemon": {"running": False, "pid": None},
    }
    assert text.stdout == ("profile: dev\nsession: none\nrefresh token: none\n"
                           "daemon: not running\n")
    assert text.stderr == ""


def test_status_of_a_valid_session_without_network_or_lock(user, idp):
    """After a sign-in: valid, the token's exp, subject and tenancy; fast with the provider
    settings pointing nowhere and the profile lock held by someone else."""
    sign_in(user)
    claims = token_claims(user)
    tenancy = user.oci_profile()["tenancy"]
    dead = f"http://127.0.0.1:{free_port()}/token"
    user.write_manager_ini(token_url=dead, authz_base_url=dead, token_exchange_url=dead)
    lock = os.open(user.session_dir / "woci.lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        code, document = status_json(user)
        text, elapsed = status(user)
    finally:
        os.close(lock)

    assert code == 0 and text.returncode == 0, text.stderr
    assert elapsed < STATUS_BUDGET_SECONDS
    session = document["session"]
    assert session["valid"] is True and session["exp"] == claims["exp"]
    assert ISO_UTC.match(session["expires_at"])
    assert session["expires_at"] == datetime.fromtimestamp(
        claims["exp"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert 3500 < session["seconds_left"] <= 3600
    assert session["subject"] == claims["sub"]
    assert session["tenancy"] == claims["tenant"] == tenancy
    assert document["refresh_token"] == {"stored": True, "storage": "file", "expires_at": None}
    assert document["daemon"] == {"running": False, "pid": None}
    lines = text.stdout.splitlines()
    assert lines[0] == "profile: dev"
    assert lines[1].startswith(f"session: valid until {session['expires_at']} (")
    assert f"subject: {claims['sub']}" in lines and f"tenancy: {tenancy}" in lines
    assert "refresh token: file" in lines and "daemon: not running" in lines
    assert text.stderr == ""


def test_status_of_an_expired_session_with_and_without_a_refresh_token(user):
    """Expired but a refresh token stored: usable without a browser (exit 0); without the
    refresh token: exit 1."""
    sign_in(user)
    expired_at = int(time.time()) - 300
    write_token_exp(user, expired_at)

    code, document = status_json(user)
    text, _ = status(user)

    assert code == 0 and text.returncode == 0
    assert document["session"]["valid"] is False
    assert document["session"]["exp"] == expired_at
    assert -400 < document["session"]["seconds_left"] <= -300
    assert document["refresh_token"]["stored"] is True
    assert "session: expired at " in text.stdout and " ago)" in text.stdout

    (user.session_dir / "refresh_token").unlink()
    code, document = status_json(user)
    assert code == 1
    assert document["refresh_token"] == {"stored": False, "storage": None, "expires_at": None}


def test_status_shows_the_running_daemon(user, daemon_pids):
    """A daemon runs: its pid in the JSON and the text."""
    sign_in(user)
    pid = start_daemon(user)
    daemon_pids.append(pid)
    try:
        code, document = status_json(user)
        text, _ = status(user)
    finally:
        user.run("--profile", user.profile, "--stop-daemon", timeout=QUICK)

    assert code == 0
    assert document["daemon"] == {"running": True, "pid": pid}
    assert f"daemon: running, pid {pid}" in text.stdout.splitlines()


def test_json_without_status_is_a_usage_error(user):
    """--json alone (or with another mode): exit 2, one line, nothing on stdout."""
    for args in (("--json",), ("--json", "--doctor")):
        result = user.run("--profile", user.profile, *args, timeout=QUICK)
        assert result.returncode == 2, result.stderr
        assert result.stdout == ""
        assert result.stderr.strip().splitlines() == [
            "woci: error: --json works only with --status: woci --status --json"]


def test_status_after_the_first_oci_word_belongs_to_oci(user, tmp_path):
    """`woci compute instance list --status RUNNING`: --status goes to oci, not to woci."""
    sign_in(user)
    probe = tmp_path / "bin"
    probe.mkdir()
    (probe / "oci").write_text("#!/bin/sh\necho \"$@\"\n")
    (probe / "oci").chmod(0o755)
    env = user.env(PATH=f"{probe}{os.pathsep}{user.env()['PATH']}")

    result = user.run("--profile", user.profile, "compute", "instance", "list", "--status",
                      "RUNNING", env=env, timeout=QUICK)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["--auth", "security_token", "--profile", "dev", "compute",
                                     "instance", "list", "--status", "RUNNING"]


# --- --logout ---------------------------------------------------------------------------------


OTHER_PROFILE = "# my own notes\n[other]\nuser=ocid1.user.oc1..me\nkey_file=/home/me/api.pem\n\n"


def config_with_notes(user):
    """An OCI config with another profile and the user's own keys in [dev]."""
    user.oci_dir.mkdir(mode=0o700, exist_ok=True)
    user.config_file.write_text(OTHER_PROFILE + "[dev]\n# keep me\ncustom_key = kept\n")
    user.config_file.chmod(0o600)


def without_session_keys(text):
    keep, section = [], None
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            section = line.strip()
        key = line.split("=", 1)[0].strip()
        if section == "[dev]" and key in ("security_token_file", "key_file", "fingerprint"):
            continue
        keep.append(line)
    return "".join(keep)


def test_logout_stops_the_daemon_revokes_and_removes_only_the_session(user, idp, daemon_pids):
    """Daemon stopped; the provider sees the refresh token inactive (introspection, and a
    refresh grant answers invalid_grant); session files and the OKE cache deleted; only
    security_token_file, key_file and fingerprint leave the profile, the rest byte for byte."""
    user.write_manager_ini(revocation_url=idp.revocation_url)
    config_with_notes(user)
    sign_in(user)
    refresh_token = user.refresh_token_text()
    assert introspect(idp, refresh_token)["active"] is True
    pid = start_daemon(user)
    daemon_pids.append(pid)
    cache = user.session_dir / "exec-credentials"
    cache.mkdir(mode=0o700)
    (cache / "0123abcd.json").write_text("{}")
    before = user.config_file.read_text()
    mark = idp.mark()

    result = user.run("--profile", user.profile, "--logout", timeout=QUICK)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    (line,) = result.stdout.splitlines()
    assert line.startswith("logged out of profile dev: ")
    assert f"stopped the daemon (pid {pid})" in line
    assert "revoked the refresh token at the provider" in line
    assert "removed security_token_file, key_file, fingerprint from [dev]" in line
    assert not pid_alive(pid)
    idp.wait_for("grant.revoked", since=mark, timeout=10)
    assert introspect(idp, refresh_token)["active"] is False
    refused = refresh_grant(idp, refresh_token)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    for name in ("token", "oci_api_key.pem", "oci_api_key_public.pem", "refresh_token",
                 "woci_refresh.pid", "exec-credentials"):
        assert not (user.session_dir / name).exists(), name
    after = user.config_file.read_text()
    assert after == without_session_keys(before)
    assert after.startswith(OTHER_PROFILE)
    assert "custom_key = kept" in after and f"region={REGION}" in after
    assert "tenancy=" in after
    assert status(user)[0].returncode == 1

    again = user.run("--profile", user.profile, "--logout", timeout=QUICK)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "nothing to do: no session is stored for profile dev\n"
    assert user.config_file.read_text() == after


def test_logout_with_the_provider_offline_warns_and_does_the_rest(user, idp):
    """revocation_url on a closed port: one warning naming it; files and profile keys gone;
    the refresh token is still active at the provider."""
    dead = f"http://127.0.0.1:{free_port()}/token/revocation"
    user.write_manager_ini(revocation_url=dead)
    sign_in(user)
    refresh_token = user.refresh_token_text()

    result = user.run("--profile", user.profile, "--logout", timeout=QUICK)

    assert result.returncode == 0, result.stderr
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 1 and "not revoked" in warnings[0] and dead in warnings[0]
    assert "revoked" not in result.stdout
    assert "deleted token, oci_api_key.pem" in result.stdout
    assert not (user.session_dir / "refresh_token").exists()
    assert "security_token_file" not in user.oci_profile()
    assert introspect(idp, refresh_token)["active"] is True


def test_logout_without_a_revocation_url_warns(user, idp):
    """No revocation_url: a warning that the token stays valid at the provider; exit 0."""
    sign_in(user)

    result = user.run("--profile", user.profile, "--logout", timeout=QUICK)

    assert result.returncode == 0, result.stderr
    assert "no revocation_url is configured" in result.stderr
    assert result.stdout.startswith("logged out of profile dev: deleted ")


def test_logout_with_nothing_stored_is_nothing_to_do(user):
    """A fresh machine: exit 0, "nothing to do", and no folder made under ~/.oci."""
    result = user.run("--profile", user.profile, "--logout", timeout=QUICK)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "nothing to do: no session is stored for profile dev\n"
    assert not (user.oci_dir / "sessions").exists()


# --- --doctor ---------------------------------------------------------------------------------


def doctor(user, env=None):
    result = user.run("--profile", user.profile, "--doctor", env=env, timeout=QUICK * 2)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(re.match(r"^(ok  |warn|FAIL) \S", line) for line in lines), lines
    return result, lines


def test_doctor_is_all_ok_on_a_healthy_bed_and_masks_secrets(user, idp):
    """A signed-in confidential client: every line ok, the sources named, secrets masked,
    no token anywhere in the output."""
    user.write_manager_ini(revocation_url=idp.revocation_url,
                           auth_client_id=idp.confidential_client_id,
                           auth_client_secret=idp.confidential_client_secret)
    sign_in(user)

    result, lines = doctor(user)

    assert result.returncode == 0, result.stdout
    assert [line for line in lines if not line.startswith("ok   ")] == []
    output = result.stdout + result.stderr
    for secret in (OCI_CLIENT_SECRET, idp.confidential_client_secret, user.token_text(),
                   user.refresh_token_text()):
        assert secret not in output
    assert f"ok   client_secret = oc*** ({len(OCI_CLIENT_SECRET)} characters) " \
           f"({user.manager_ini} [COMMON])" in lines
    assert f"ok   token_url = {idp.token_url} ({user.manager_ini} [COMMON])" in lines
    assert "ok   scope = openid offline_access (default)" in lines
    for fragment in (f"token endpoint {idp.token_url}: reachable",
                     f"OCI token exchange {user.emulator.token_exchange_url}: reachable",
                     f"revocation endpoint {idp.revocation_url}: reachable",
                     "clock: within", "oci: 3.95.1", "discovery: no issuer configured",
                     "session folder:", "session files:", "session token: valid until",
                     "refresh token: file", "daemon: not running",
                     f"OCI config: [dev] in {user.config_file} uses the session"):
        assert any(fragment in line for line in lines), fragment


def test_doctor_fails_on_a_closed_token_endpoint_and_a_missing_setting(user):
    """token_url on a closed port and no client_id: a FAIL line naming each, saying what to
    do; exit 1; every other check still runs."""
    dead = f"http://127.0.0.1:{free_port()}/token"
    user.write_manager_ini(token_url=dead, client_id=None)

    result, lines = doctor(user)

    assert result.returncode == 1
    fails = [line for line in lines if line.startswith("FAIL")]
    assert f"FAIL token endpoint {dead}: connection refused; check token_url, and the " \
           "network between here and there (proxy, VPN, firewall)" in fails
    assert any(line.startswith("FAIL client_id: not set; set it in [dev] or [COMMON] of "
                               f"{user.manager_ini}, or pass --client-id") for line in fails)
    assert len(fails) == 2, fails
    assert any(line.startswith("ok   daemon: not running") for line in lines)
    assert OCI_CLIENT_SECRET not in result.stdout + result.stderr


# --- keyring storage --------------------------------------------------------------------------

KEYRING_READ = ("import json, sys, keyring; "
                "print(json.dumps(keyring.get_password('woci', sys.argv[1])))")


@pytest.fixture
def keyring_user(user):
    """A user whose keyring is keyrings.alt's plain-file backend, configured and stored in
    the test HOME (keyringrc.cfg, XDG folders), never the machine's own keyring."""
    config = user.home / ".config" / "python_keyring"
    config.mkdir(parents=True)
    (config / "keyringrc.cfg").write_text(
        "[backend]\ndefault-keyring=keyrings.alt.file.PlaintextKeyring\n")
    user.extra_env.update({"XDG_CONFIG_HOME": str(user.home / ".config"),
                           "XDG_DATA_HOME": str(user.home / ".local" / "share")})
    user.keyring_file = user.home / ".local" / "share" / "python_keyring" / "keyring_pass.cfg"
    return user


def keyring_value(user):
    item = f"{os.path.realpath(user.config_file)} [{user.profile}]"
    result = subprocess.run([sys.executable, "-c", KEYRING_READ, item], env=user.env(),
                            capture_output=True, text=True, timeout=QUICK)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def token_requests(idp, mark, grant_type):
    return [e for e in idp.events_since(mark)
            if e.get("event") == "token_request" and e.get("grant_type") == grant_type]


def test_keyring_round_trip_refresh_and_logout(keyring_user, idp, emulator):
    """refresh_token_storage = keyring: the sign-in stores the token in the keyring file (no
    refresh_token file), a renewal refreshes from it and stores the rotated one there,
    --status and --doctor say keyring, --logout revokes it and deletes the item."""
    user = keyring_user
    user.write_manager_ini(refresh_token_storage="keyring", revocation_url=idp.revocation_url)
    emulator.set_upst_lifetime(30)
    sign_in(user)

    assert not (user.session_dir / "refresh_token").exists()
    first = keyring_value(user)
    assert first and user.keyring_file.exists()
    assert first not in (user.session_dir / "refresh_token.keyring").read_text()
    code, document = status_json(user)
    assert code == 0 and document["refresh_token"]["storage"] == "keyring"

    mark = idp.mark()
    renewed = user.run("--profile", user.profile, timeout=QUICK)
    assert renewed.returncode == 0, renewed.stderr
    assert len(token_requests(idp, mark, "refresh_token")) == 1
    assert len(user.browser_opens()) == 1
    rotated = keyring_value(user)
    assert rotated and rotated != first
    _, lines = doctor(user)
    assert any(line.startswith("ok   refresh token: in the OS keyring") for line in lines)

    result = user.run("--profile", user.profile, "--logout", timeout=QUICK)

    assert result.returncode == 0, result.stderr
    assert "revoked the refresh token" in result.stdout and "the keyring item" in result.stdout
    assert keyring_value(user) is None
    assert not (user.session_dir / "refresh_token.keyring").exists()
    assert introspect(idp, rotated)["active"] is False


def test_moving_between_file_and_keyring_keeps_the_session(keyring_user, idp):
    """file -> keyring -> file, each move by `session refresh`: no browser, the token moved
    (never in both places), every renewal working."""
    user = keyring_user
    sign_in(user)
    assert (user.session_dir / "refresh_token").exists()

    user.write_manager_ini(refresh_token_storage="keyring")
    moved = user.run("--profile", user.profile, "session", "refresh", timeout=QUICK)
    assert moved.returncode == 0, moved.stderr
    assert not (user.session_dir / "refresh_token").exists()
    assert keyring_value(user)
    assert status_json(user)[1]["refresh_token"]["storage"] == "keyring"

    user.write_manager_ini(refresh_token_storage="file")
    back = user.run("--profile", user.profile, "session", "refresh", timeout=QUICK)
    assert back.returncode == 0, back.stderr
    assert (user.session_dir / "refresh_token").exists()
    assert keyring_value(user) is None
    assert not (user.session_dir / "refresh_token.keyring").exists()
    assert status_json(user)[1]["refresh_token"]["storage"] == "file"
    assert len(user.browser_opens()) == 1
    for result in (moved, back):
        assert "WARNING" not in result.stderr and "error" not in result.stderr, result.stderr


def test_keyring_without_a_usable_backend_warns_once_and_uses_the_file(user, emulator):
    """keyring's own fail backend (no keyring on this machine): one warning, then the file,
    and the renewals work from it."""
    user.write_manager_ini(refresh_token_storage="keyring")
    user.extra_env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    emulator.set_upst_lifetime(30)

    first = sign_in(user)
    renewed = sign_in(user)

    for result in (first, renewed):
        keyring_lines = [line for line in result.stderr.splitlines() if "keyring" in line]
        assert len(keyring_lines) == 1, result.stderr
        assert "no usable keyring backend" in keyring_lines[0]
        assert "keeping the refresh token in" in keyring_lines[0]
    assert (user.session_dir / "refresh_token").exists()
    assert status_json(user)[1]["refresh_token"]["storage"] == "file"
    assert len(user.browser_opens()) == 1


def test_status_opens_no_keyring(keyring_user):
    """--status with keyring storage reads woci's marker file and never opens the keyring
    (which could ask to be unlocked): with the keyring gone it still says keyring."""
    user = keyring_user
    user.write_manager_ini(refresh_token_storage="keyring")
    sign_in(user)

    code, document = status_json(user, env=user.env(
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring"))

    assert code == 0 and document["refresh_token"]["storage"] == "keyring"


def test_doctor_with_only_an_issuer_takes_the_endpoints_from_discovery(user, idp):
    """No authz_base_url or token_url in the INI, only issuer: they are not missing, doctor
    names what discovery gave and probes the discovered token endpoint."""
    user.write_manager_ini(authz_base_url=None, token_url=None, issuer=idp.issuer)
    sign_in(user)

    result, lines = doctor(user)

    assert not [line for line in lines if line.startswith("FAIL")], lines
    assert f"ok   token_url = {idp.token_url} (discovery)" in lines
    assert any(line.startswith("ok   discovery: ") for line in lines), lines
    assert any(f"token endpoint {idp.token_url}: reachable" in line for line in lines), lines
