"""The test bed itself, without woci: provider, launcher and the two scripted users.

If these fail, woci's end-to-end tests cannot be trusted, so they prove the
properties those tests rely on: JWT access tokens for the fixed audience,
refresh token rotation with reuse detection, revocation, client
authentication, the offline_access policy and the browser scripts' contract.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shlex
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import requests

from tests.bed.idp import TestIdP, token_fingerprint
from tests.polling import wait_until

BED = Path(__file__).resolve().parents[1] / "bed"
BROWSER_USER = BED / "browser_user.py"
CHROMIUM_USER = BED / "chromium_user.py"
CHROMIUM = Path("/usr/bin/chromium")
HTTP_TIMEOUT = 10

# `idp` is the run's one provider (tests/conftest.py), shared with tests/e2e: a test counts
# only the events after its own mark.


class CallbackCatcher:
    """Stands in for woci's loopback listener: records each callback query."""

    def __init__(self) -> None:
        self.queries: List[Dict[str, str]] = []
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                query = parse_qs(urlsplit(self.path).query)
                catcher.queries.append({k: v[0] for k, v in query.items()})
                body = b"<!DOCTYPE html><html><body><h1 id='done'>You can close this window</h1></body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/callback"

    def __enter__(self) -> "CallbackCatcher":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def pkce_pair():
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def run_browser(script: Path, url: str, tmp_path: Path, action: str = "login", **extra_env) -> Dict:
    """Run a user script exactly as webbrowser's GenericBrowser would for BROWSER='... %s'."""
    log = tmp_path / f"browser-{secrets.token_hex(4)}.jsonl"
    browser = f"{sys.executable} {script} %s"
    argv = [arg.replace("%s", url) for arg in shlex.split(browser)]
    env = dict(os.environ, WOCI_TEST_BROWSER_LOG=str(log), WOCI_TEST_BROWSER_ACTION=action, **extra_env)
    proc = subprocess.run(argv, env=env, timeout=60, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().splitlines()
    assert len(lines) == 1, lines
    return json.loads(lines[0])


def authorize(idp: TestIdP, tmp_path: Path, action: str = "login", client_id: Optional[str] = None,
              scope: str = "openid offline_access", script: Path = BROWSER_USER, extra_params=None,
              **extra_env):
    """One authorization request through a scripted user; returns what the callback got."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    with CallbackCatcher() as catcher:
        params = {
            "response_type": "code",
            "client_id": client_id or idp.public_client_id,
            "redirect_uri": catcher.redirect_uri,
            "scope": scope,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **(extra_params or {}),
        }
        record = run_browser(script, idp.authorize_url + "?" + urlencode(params), tmp_path, action, **extra_env)
    callback = catcher.queries[0] if catcher.queries else None
    return {"record": record, "callback": callback, "verifier": verifier, "state": state,
            "redirect_uri": params["redirect_uri"], "client_id": params["client_id"]}


def redeem(idp: TestIdP, flow: Dict, auth=None) -> requests.Response:
    return requests.post(idp.token_url, data={
        "grant_type": "authorization_code",
        "code": flow["callback"]["code"],
        "code_verifier": flow["verifier"],
        "redirect_uri": flow["redirect_uri"],
        "client_id": flow["client_id"],
    }, auth=auth, timeout=HTTP_TIMEOUT)


def refresh(idp: TestIdP, refresh_token: str, client_id: Optional[str] = None, auth=None) -> requests.Response:
    return requests.post(idp.token_url, data={
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": client_id or idp.public_client_id,
    }, auth=auth, timeout=HTTP_TIMEOUT)


def signed_in(idp, tmp_path, **kwargs) -> Dict:
    flow = authorize(idp, tmp_path, **kwargs)
    assert flow["record"]["error"] is None, flow["record"]
    assert flow["callback"] and flow["callback"]["state"] == flow["state"]
    resp = redeem(idp, flow)
    assert resp.status_code == 200, resp.text
    return resp.json()


# ---------------------------------------------------------------- tests


def test_code_flow_jwt_rotation_and_reuse_detection(idp, tmp_path):
    start = idp.mark()
    flow = authorize(idp, tmp_path)
    record = flow["record"]
    assert record["error"] is None and record["callback_status"] == 200
    assert record["callback_keys"] == ["code", "state", "iss"]
    # The scripted user never logs query strings or PKCE material.
    assert all("?" not in page for page in record["pages"])
    assert record["query"]["state"] == "<redacted>" and record["query"]["code_challenge"] == "<redacted>"
    assert flow["callback"]["state"] == flow["state"]

    resp = redeem(idp, flow)
    assert resp.status_code == 200, resp.text
    tokens = resp.json()

    access = tokens["access_token"]
    assert jwt.get_unverified_header(access)["typ"] == "at+jwt"
    key = jwt.PyJWKClient(idp.jwks_uri, timeout=HTTP_TIMEOUT).get_signing_key_from_jwt(access)
    claims = jwt.decode(access, key.key, algorithms=["RS256"], audience="urn:oci:woci", issuer=idp.issuer)
    assert claims["aud"] == "urn:oci:woci" and claims["iss"] == idp.issuer
    assert claims["sub"] == idp.user and claims["client_id"] == idp.public_client_id
    assert "offline_access" in tokens["scope"].split()
    id_claims = jwt.decode(tokens["id_token"], key.key, algorithms=["RS256"], audience=idp.public_client_id)
    assert id_claims["sub"] == idp.user
    first_rt = tokens["refresh_token"]

    resp = refresh(idp, first_rt)
    assert resp.status_code == 200, resp.text
    second_rt = resp.json()["refresh_token"]
    assert second_rt != first_rt, "rotation must issue a new refresh token"
    assert len(idp.events_since(start, "grant.success", grant_type="refresh_token")) >= 1

    mark = idp.mark()
    resp = refresh(idp, first_rt)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"
    # Reuse detection revoked the whole grant: the newest token is dead too.
    resp = refresh(idp, second_rt)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"

    reuse = idp.wait_for("grant.error", since=mark, grant_type="refresh_token")
    assert reuse["error"] == "invalid_grant" and "already used" in reuse["error_detail"]
    assert idp.events_since(mark, "grant.revoked")
    assert idp.events_since(mark, "token_request", grant_type="refresh_token", status=400)
    assert all("t" in e for e in idp.events)

    # Nothing secret reaches the provider's log.
    output = idp.output()
    for secret in (first_rt, second_rt, access, flow["callback"]["code"], flow["verifier"]):
        assert secret not in output


def test_events_name_what_the_client_presented_and_got(idp, tmp_path):
    """PKCE use, and the refresh tokens presented and issued by fingerprint, never by value;
    every request by method and path; sync() orders the events before it."""
    mark = idp.mark()
    flow = authorize(idp, tmp_path)
    first_rt = redeem(idp, flow).json()["refresh_token"]
    second_rt = refresh(idp, first_rt).json()["refresh_token"]
    assert refresh(idp, first_rt).status_code == 400  # reused: the grant is revoked
    idp.sync()
    syncs = len(idp.events_since(mark, "sync", synced=False))

    code, rotation, reuse = idp.events_since(mark, "token_request")
    assert code["grant_type"] == "authorization_code" and code["status"] == 200
    assert code["code_verifier_sent"] is True and code["refresh_token_fp"] is None
    assert code["issued_refresh_token_fp"] == token_fingerprint(first_rt)
    assert rotation["refresh_token_fp"] == token_fingerprint(first_rt)
    assert rotation["issued_refresh_token_fp"] == token_fingerprint(second_rt)
    assert rotation["code_verifier_sent"] is False
    assert reuse["status"] == 400 and reuse["refresh_token_fp"] == token_fingerprint(first_rt)
    assert reuse["issued_refresh_token_fp"] is None
    assert [e["code_challenge_method"] for e in idp.events_since(mark, "authorization.success")] \
        == ["S256"]
    requests_seen = [(e["method"], e["path"]) for e in idp.events_since(mark, "http_request")]
    assert ("GET", urlsplit(idp.authorize_url).path) in requests_seen
    assert requests_seen.count(("POST", urlsplit(idp.token_url).path)) == 3
    assert all(path != "/__test/sync" for _, path in requests_seen)
    assert all("?" not in path for _, path in requests_seen)
    assert syncs == 1   # sync() came back once its own event was read
    for secret in (first_rt, second_rt, flow["verifier"], flow["callback"]["code"]):
        assert secret not in idp.output()


def test_wrong_password_shows_error_and_no_code(idp, tmp_path):
    mark = idp.mark()
    flow = authorize(idp, tmp_path, action="wrong-password")
    record = flow["record"]
    assert record["error"] == "Invalid user name or password"
    assert record["final_status"] == 200 and "Invalid user name or password" in record["final_body"]
    assert record["callback_status"] is None and flow["callback"] is None
    assert idp.events_since(mark, "login.failed", login=idp.user)
    assert not idp.events_since(mark, "authorization.success")


def test_deny_returns_access_denied(idp, tmp_path):
    flow = authorize(idp, tmp_path, action="deny")
    assert flow["record"]["callback_error"] == "access_denied"
    assert flow["callback"]["error"] == "access_denied"
    assert flow["callback"]["state"] == flow["state"] and "code" not in flow["callback"]


@pytest.mark.parametrize("action", ["tamper-state", "drop-code"])
def test_callback_manipulation(idp, tmp_path, action):
    flow = authorize(idp, tmp_path, action=action)
    callback = flow["callback"]
    if action == "tamper-state":
        assert callback["state"] != flow["state"] and "code" in callback
    else:
        assert callback["state"] == flow["state"] and "code" not in callback


def test_none_action_only_records_url(idp, tmp_path):
    mark = idp.mark()
    flow = authorize(idp, tmp_path, action="none")
    assert flow["record"]["url"] == idp.authorize_url and flow["record"]["pages"] == []
    assert flow["record"]["query"]["client_id"] == idp.public_client_id
    assert flow["callback"] is None and not idp.events_since(mark, "interaction.started")


def test_revoked_refresh_token_is_dead(idp, tmp_path):
    tokens = signed_in(idp, tmp_path)
    resp = idp.revoke(tokens["refresh_token"])
    assert resp.status_code == 200, resp.text
    resp = refresh(idp, tokens["refresh_token"])
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"


def test_confidential_client_basic_auth(idp, tmp_path):
    start = idp.mark()
    flow = authorize(idp, tmp_path, client_id=idp.confidential_client_id)
    assert flow["callback"] and "code" in flow["callback"]

    # Authentication fails before the code is looked at, so the code stays usable.
    resp = redeem(idp, flow, auth=(idp.confidential_client_id, "wrong-secret"))
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"
    resp = redeem(idp, flow)  # no secret at all
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"

    good = (idp.confidential_client_id, idp.confidential_client_secret)
    resp = redeem(idp, flow, auth=good)
    assert resp.status_code == 200, resp.text
    tokens = resp.json()
    assert tokens["refresh_token"]
    resp = refresh(idp, tokens["refresh_token"], client_id=idp.confidential_client_id, auth=good)
    assert resp.status_code == 200, resp.text
    # Events reach us through node's stdout a moment after the HTTP answer: poll, bounded.
    def basic_grants():
        return len(idp.events_since(start, "token_request", client_id=idp.confidential_client_id,
                                    client_auth="basic", status=200))

    wait_until(lambda: basic_grants() >= 2, 5, "the provider's events of the two Basic-authenticated grants")
    assert basic_grants() >= 2
    assert idp.confidential_client_secret not in idp.output()


def test_strict_offline_access_needs_prompt_consent(tmp_path):
    with TestIdP(tmp_path / "strict", strict_offline_access=1) as strict:
        tokens = signed_in(strict, tmp_path)
        assert "refresh_token" not in tokens
        tokens = signed_in(strict, tmp_path, extra_params={"prompt": "consent"})
        assert tokens["refresh_token"]


def test_lenient_offline_access_with_other_prompt(idp, tmp_path):
    tokens = signed_in(idp, tmp_path, extra_params={"prompt": "login"})
    assert tokens["refresh_token"]


@pytest.mark.parametrize("action", ["login", "deny"])
def test_device_flow(idp, tmp_path, action):
    resp = requests.post(idp.device_url, data={"client_id": idp.public_client_id, "scope": "openid offline_access"},
                         timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text
    device = resp.json()
    assert device["interval"] == 1
    record = run_browser(BROWSER_USER, device["verification_uri_complete"], tmp_path, action)
    assert record["error"] is None, record
    assert record["device_result"] == ("success" if action == "login" else "aborted")
    resp = requests.post(idp.token_url, data={
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "device_code": device["device_code"],
        "client_id": idp.public_client_id,
    }, timeout=HTTP_TIMEOUT)
    if action == "login":
        assert resp.status_code == 200, resp.text
        assert resp.json()["refresh_token"]
    else:
        assert resp.status_code == 400 and resp.json()["error"] == "access_denied"


def device_authorization(idp):
    resp = requests.post(idp.device_url, data={"client_id": idp.public_client_id,
                                               "scope": "openid offline_access"},
                         timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text
    return resp.json()


def poll(idp, device):
    return requests.post(idp.token_url, data={
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "device_code": device["device_code"], "client_id": idp.public_client_id,
    }, timeout=HTTP_TIMEOUT)


def test_device_switches_slow_down_and_code_lifetime(idp):
    """device_control: the next N polls answer slow_down; new codes live code_ttl seconds
    (expires_in says so, and the provider then answers expired_token)."""
    try:
        assert idp.device_control(slow_down=1, code_ttl=2) == {"slow_down": 1, "code_ttl": 2}
        device = device_authorization(idp)
        assert device["expires_in"] == 2
        assert poll(idp, device).json()["error"] == "slow_down"
        assert poll(idp, device).json()["error"] == "authorization_pending"
        time.sleep(2.1)
        assert poll(idp, device).json()["error"] == "expired_token"
    finally:
        idp.reset_device_control()
    assert device_authorization(idp)["expires_in"] == 600


@pytest.mark.parametrize("complete", [True, False], ids=["complete-uri", "typed-code"])
def test_chromium_user_approves_a_user_code(idp, tmp_path, complete):
    """The real browser approves a device code: from verification_uri_complete, or from the
    plain page by typing the code."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    device = device_authorization(idp)
    url = device["verification_uri_complete"] if complete else device["verification_uri"]
    extra = {} if complete else {"WOCI_TEST_USER_CODE": device["user_code"]}
    record = run_browser(CHROMIUM_USER, url, tmp_path, **extra)
    assert record["error"] is None and record["device_result"] == "success", record
    resp = poll(idp, device)
    assert resp.status_code == 200, resp.text
    assert resp.json()["refresh_token"]


def test_chromium_user_reaches_callback(idp, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    shot = tmp_path / "callback.png"
    flow = authorize(idp, tmp_path, script=CHROMIUM_USER, WOCI_TEST_SCREENSHOT=str(shot))
    record = flow["record"]
    assert record["error"] is None, record
    assert record["callback_status"] == 200 and "close this window" in record["callback_body"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    resp = redeem(idp, flow)
    assert resp.status_code == 200, resp.text
    assert resp.json()["refresh_token"]
