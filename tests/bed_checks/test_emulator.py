"""The test bed itself, proven against the real OCI CLI, OCI Python SDK and kubectl.

No woci and no identity provider here: a stand-in JWKS server and access tokens minted with
PyJWT play the provider, and session files are written by hand the way SPEC section 4 says.
If the real clients accept what the emulator accepts and the emulator refuses what OCI refuses,
the e2e tests of woci built on this bed mean something.
"""

import base64
import email.utils
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import oci
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.bed import ocisig
from tests.bed.emulator import NAMESPACE, key_fingerprint
from tests.bed.kube_api import KubeApiServer, write_kubeconfig
from tests.conftest import started_emulator
from tests.polling import wait_until

AUDIENCE = "urn:oci:woci"
CLIENT_ID, CLIENT_SECRET = "oci-client", "oci-secret"
IDP_CLIENT_ID = "woci-cli"
PROFILE = "BEDTEST"
CLUSTER_ID = "ocid1.cluster.oc1..test"
REGION = "us-ashburn-1"
OCI_BIN = Path(sys.prefix) / "bin" / "oci"
HTTP_TIMEOUT = 10
CLI_TIMEOUT = 60


def new_key(bits=2048):
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def spki_b64(public_key):
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode("ascii")


# --- a stand-in identity provider: a JWKS on 127.0.0.1 and tokens minted here -------------


class StandInProvider:
    """Serves one RSA key as a JWKS; mints access tokens the way oidc-provider shapes them."""

    def __init__(self):
        self.key = new_key()
        self.kid = "idp-" + uuid.uuid4().hex[:8]
        jwk = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update(kid=self.kid, alg="RS256", use="sig")
        body = json.dumps({"keys": [jwk]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/jwks" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.jwks_uri = self.issuer + "/jwks"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def token(self, key=None, typ="at+jwt", **claims):
        now = int(time.time())
        payload = {"iss": self.issuer, "aud": AUDIENCE, "sub": "alice", "iat": now,
                   "exp": now + 300, "client_id": IDP_CLIENT_ID, "scope": "openid",
                   "jti": uuid.uuid4().hex}
        payload.update(claims)
        return jwt.encode(payload, key or self.key, algorithm="RS256",
                          headers={"typ": typ, "kid": self.kid})


@pytest.fixture(scope="module")
def stand_in():
    """The provider these checks play (not the session's real one: they mint their own tokens)."""
    provider = StandInProvider()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def emu(stand_in):
    """An emulator trusting the stand-in; tests/conftest.py heals it after each test."""
    with started_emulator(stand_in.jwks_uri, stand_in.issuer, audience=AUDIENCE,
                          clients={CLIENT_ID: CLIENT_SECRET}) as emulator:
        yield emulator


def exchange_form(access_token, session_public_key, **overrides):
    """The form woci sends (SPEC section 5); `overrides` replace or add fields."""
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "requested_token_type": "urn:oci:token-type:oci-upst",
        "subject_token": access_token,
        "subject_token_type": "jwt",
        "public_key": spki_b64(session_public_key),
    }
    form.update(overrides)
    return form


def post_exchange(emu, form, auth=(CLIENT_ID, CLIENT_SECRET)):
    return requests.post(emu.token_exchange_url, data=form, auth=auth, timeout=HTTP_TIMEOUT)


def exchange_ok(emu, stand_in, session_key):
    answer = post_exchange(emu, exchange_form(stand_in.token(), session_key.public_key()))
    assert answer.status_code == 200, answer.text
    return answer.json()["token"]


# --- session files written by hand, as SPEC section 4 describes -------------------------


@dataclass
class Session:
    home: Path
    config_file: Path
    key_file: Path
    token_file: Path
    key: object
    upst: str


def write_private(path, data):
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)


def md5_fingerprint(public_key):
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.md5(der).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def write_session(home, key, upst, tenancy):
    session_dir = home / ".oci" / "sessions" / PROFILE
    session_dir.mkdir(parents=True, mode=0o700)
    key_file, token_file = session_dir / "oci_api_key.pem", session_dir / "token"
    write_private(key_file, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    write_private(token_file, upst.encode())  # no trailing newline: the CLI rejects one
    config_file = home / ".oci" / "config"
    write_private(config_file, (
        f"[{PROFILE}]\n"
        f"key_file={key_file}\n"
        f"security_token_file={token_file}\n"
        f"fingerprint={md5_fingerprint(key.public_key())}\n"
        f"tenancy={tenancy}\n"
        f"region={REGION}\n"
    ).encode())
    return Session(home, config_file, key_file, token_file, key, upst)


@pytest.fixture(scope="module")
def session(emu, stand_in, tmp_path_factory):
    key = new_key()
    return write_session(tmp_path_factory.mktemp("home"), key, exchange_ok(emu, stand_in, key),
                         emu.tenancy)


def client_env(home):
    """The environment a clean user would have: no OCI_CLI_* or CA bundle overrides."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OCI_CLI_") and k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env["HOME"] = str(home)
    return env


def require_oci_cli():
    if not OCI_BIN.exists():
        pytest.skip(f"the OCI CLI is not installed at {OCI_BIN} (pip install oci-cli==3.95.1)")


def run_oci(session, *args):
    require_oci_cli()
    return subprocess.run(
        [str(OCI_BIN), "--config-file", str(session.config_file), "--profile", PROFILE,
         *args],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=client_env(session.home),
        timeout=CLI_TIMEOUT, check=False,
    )


# --- the real CLI and SDK against the emulator --------------------------------------------


def test_oci_cli_os_ns_get_prints_the_namespace(emu, session):
    before = emu.count("ns_ok")
    done = run_oci(session, "--auth", "security_token", "os", "ns", "get",
                   "--endpoint", emu.url, "--no-retry")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"data": NAMESPACE}
    assert emu.count("ns_ok") == before + 1
    assert emu.requests[-1] == {**emu.requests[-1], "method": "GET", "path": "/n",
                                "status": 200}


def test_oci_session_validate_calls_list_regions(emu, session):
    before = emu.count("regions_ok")
    done = run_oci(session, "session", "validate", "--endpoint", emu.url)
    assert done.returncode == 0, done.stderr
    assert "Session is valid until" in done.stderr
    assert emu.count("regions_ok") == before + 1


def test_oci_sdk_get_namespace(emu, session):
    config = oci.config.from_file(str(session.config_file), PROFILE)
    token = Path(config["security_token_file"]).read_text()
    key = oci.signer.load_private_key_from_file(config["key_file"])
    signer = oci.auth.signers.SecurityTokenSigner(token, key)
    client = oci.object_storage.ObjectStorageClient(config, signer=signer,
                                                    service_endpoint=emu.url)
    assert client.get_namespace().data == NAMESPACE


# --- what OCI refuses, the emulator refuses -----------------------------------------------


def signed_get(emu, upst, key, path="/n/", headers=None):
    signer = oci.auth.signers.SecurityTokenSigner(upst, key)
    return requests.get(emu.url + path, auth=signer, headers=headers or {},
                        timeout=HTTP_TIMEOUT)


def stale_date():
    return email.utils.formatdate(time.time() - 600, usegmt=True)


@pytest.mark.parametrize("case, reason", [
    ("expired_upst", "UPST has expired"),
    ("upst_by_other_key", "UPST signature does not verify"),
    ("signed_by_wrong_key", "signature does not verify with the UPST's session key"),
    ("stale_date", "from server time (max 300 s)"),
])
def test_namespace_refuses_bad_signatures(emu, session, case, reason):
    upst, key, headers = session.upst, session.key, {}
    if case == "expired_upst":
        upst = emu.mint_upst(key.public_key(), issued_at=time.time() - 7200)
    elif case == "upst_by_other_key":
        upst = emu.mint_upst(key.public_key(), signing_key=new_key())
    elif case == "signed_by_wrong_key":
        key = new_key()
    elif case == "stale_date":
        headers = {"date": stale_date()}  # the SDK signer keeps a date it is given
    before = emu.count("ns_denied")
    answer = signed_get(emu, upst, key, headers=headers)
    assert answer.status_code == 401
    assert answer.json()["code"] == "NotAuthenticated"
    assert reason in answer.json()["message"]
    assert reason in emu.last_denied_reason
    assert emu.count("ns_denied") == before + 1


def test_unsigned_request_is_refused(emu):
    answer = requests.get(emu.url + "/n/", timeout=HTTP_TIMEOUT)
    assert answer.status_code == 401
    assert answer.json() == {"code": "NotAuthenticated", "message": "no Authorization header"}


def test_regions_checks_the_signature_too(emu, session):
    assert signed_get(emu, session.upst, session.key, "/20160918/regions").status_code == 200
    assert signed_get(emu, session.upst, new_key(), "/20160918/regions").status_code == 401


def signed_post(session, body, body_headers=("content-length", "content-type",
                                             "x-content-sha256")):
    signer = oci.auth.signers.SecurityTokenSigner(session.upst, session.key,
                                                  body_headers=list(body_headers))
    request = requests.Request("POST", "http://127.0.0.1:1/n/x?y=1", data=body,
                               headers={"content-type": "application/json"}).prepare()
    return signer(request)


def test_ocisig_checks_the_body_digest(emu, session):
    request = signed_post(session, b'{"a": 1}')
    claims = ocisig.verify_request("POST", request.path_url, request.headers, request.body,
                                   emu.public_key)
    assert claims["tenant"] == emu.tenancy
    with pytest.raises(ocisig.SignatureError, match="x-content-sha256 does not match"):
        ocisig.verify_request("POST", request.path_url, request.headers, b'{"a": 2}',
                              emu.public_key)


def test_ocisig_requires_body_headers_signed(emu, session):
    request = signed_post(session, b"{}", body_headers=())
    with pytest.raises(ocisig.SignatureError,
                       match="required headers not signed: content-length content-type"):
        ocisig.verify_request("POST", request.path_url, request.headers, request.body,
                              emu.public_key)


def test_ocisig_request_target_covers_the_query(emu, session):
    request = signed_post(session, b"{}")
    with pytest.raises(ocisig.SignatureError, match="does not verify"):
        ocisig.verify_request("POST", "/n/x?y=2", request.headers, request.body,
                              emu.public_key)


# --- the token exchange -------------------------------------------------------------------


def test_exchange_issues_a_upst_like_oci(emu, stand_in):
    key = new_key()
    upst = exchange_ok(emu, stand_in, key)
    claims = ocisig.verify_upst(upst, emu.public_key)
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["tenant"] == emu.tenancy
    assert claims["sub"].startswith("ocid1.user.oc1..")
    assert claims["ptype"] == "user" and claims["sess_exp"] > claims["exp"]
    assert key_fingerprint(ocisig.session_public_key(claims)) == key_fingerprint(
        key.public_key())
    again = ocisig.verify_upst(exchange_ok(emu, stand_in, new_key()), emu.public_key)
    assert again["sub"] == claims["sub"] and again["jti"] != claims["jti"]
    record = emu.exchanges[-2]
    assert record["outcome"] == "ok" and record["client_id"] == CLIENT_ID
    assert record["sub"] == "alice"
    assert record["key_fingerprint"] == key_fingerprint(key.public_key())


@pytest.mark.parametrize("lifetime, expected", [(120, 120), (7200, 3600)])
def test_upst_lifetime_is_settable_and_capped(emu, stand_in, lifetime, expected):
    emu.set_upst_lifetime(lifetime)
    claims = jwt.decode(exchange_ok(emu, stand_in, new_key()), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == expected


def refused_exchange(emu, stand_in, case):
    key = new_key().public_key()
    if case == "bad_basic_credentials":
        return post_exchange(emu, exchange_form(stand_in.token(), key), auth=(CLIENT_ID, "nope"))
    if case == "no_client_authentication":
        return post_exchange(emu, exchange_form(stand_in.token(), key), auth=None)
    if case == "client_id_in_body_only":
        form = exchange_form(stand_in.token(), key, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        return post_exchange(emu, form, auth=None)
    if case == "json_body":
        return requests.post(emu.token_exchange_url, json=exchange_form(stand_in.token(), key),
                             auth=(CLIENT_ID, CLIENT_SECRET), timeout=HTTP_TIMEOUT)
    overrides = {
        "wrong_grant_type": {"grant_type": "client_credentials"},
        "wrong_requested_token_type": {"requested_token_type": "urn:oci:token-type:other"},
        "wrong_subject_token_type": {
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token"},
        "missing_subject_token": {"subject_token": ""},
        "id_token_as_subject": {"subject_token": stand_in.token(typ="JWT", aud=IDP_CLIENT_ID)},
        "expired_subject": {"subject_token": stand_in.token(iat=int(time.time()) - 900,
                                                       exp=int(time.time()) - 600)},
        "wrong_issuer": {"subject_token": stand_in.token(iss="http://127.0.0.1:1")},
        "subject_signed_by_unknown_key": {"subject_token": stand_in.token(key=new_key())},
        "garbage_subject": {"subject_token": "not-a-jwt"},
        "garbage_public_key": {"public_key": "not base64 at all!"},
        "pem_public_key": {"public_key": new_key().public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo).decode()},
        "small_public_key": {"public_key": spki_b64(new_key(1024).public_key())},
    }[case]
    return post_exchange(emu, exchange_form(stand_in.token(), key, **overrides))


@pytest.mark.parametrize("case, status, error, description", [
    ("bad_basic_credentials", 401, "invalid_client", "client authentication failed"),
    ("no_client_authentication", 401, "invalid_client", "HTTP Basic"),
    ("client_id_in_body_only", 401, "invalid_client", "HTTP Basic"),
    ("json_body", 400, "invalid_request", "x-www-form-urlencoded"),
    ("wrong_grant_type", 400, "unsupported_grant_type", "grant_type must be"),
    ("wrong_requested_token_type", 400, "invalid_request", "requested_token_type"),
    ("wrong_subject_token_type", 400, "invalid_request", "subject_token_type must be jwt"),
    ("missing_subject_token", 400, "invalid_request", "missing parameter subject_token"),
    ("id_token_as_subject", 400, "invalid_grant", "audience is not urn:oci:woci"),
    ("expired_subject", 400, "invalid_grant", "subject token has expired"),
    ("wrong_issuer", 400, "invalid_grant", "issuer"),
    ("subject_signed_by_unknown_key", 400, "invalid_grant", "subject token is invalid"),
    ("garbage_subject", 400, "invalid_grant", "subject token is invalid"),
    ("garbage_public_key", 400, "invalid_request", "public_key is not base64"),
    ("pem_public_key", 400, "invalid_request", "public_key is not base64"),
    ("small_public_key", 400, "invalid_request", "1024 bits"),
])
def test_exchange_refusals(emu, stand_in, case, status, error, description):
    before = emu.count("exchange_error")
    answer = refused_exchange(emu, stand_in, case)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == error
    assert description in answer.json()["error_description"]
    assert emu.count("exchange_error") == before + 1
    assert emu.exchanges[-1]["outcome"] == error


# --- fault injection ----------------------------------------------------------------------


def test_fault_http500_then_normal(emu, stand_in):
    emu.inject(kind="http500", count=2)
    for _ in range(2):
        answer = post_exchange(emu, exchange_form(stand_in.token(), new_key().public_key()))
        assert answer.status_code == 500 and answer.json()["error"] == "server_error"
    assert post_exchange(emu, exchange_form(stand_in.token(), new_key().public_key())).ok
    assert emu.count("fault_http500") >= 2
    assert [e["outcome"] for e in emu.exchanges[-3:]] == ["fault:http500"] * 2 + ["ok"]


def test_fault_http429_sends_retry_after(emu, stand_in):
    emu.inject(kind="http429", retry_after=7)
    answer = post_exchange(emu, exchange_form(stand_in.token(), new_key().public_key()))
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "7"
    assert answer.json()["error"] == "too_many_requests"


def test_fault_slow_delays_a_normal_answer(emu, stand_in):
    emu.inject(kind="slow", delay=0.5)
    started = time.monotonic()
    answer = post_exchange(emu, exchange_form(stand_in.token(), new_key().public_key()))
    assert time.monotonic() - started >= 0.5
    assert answer.status_code == 200 and "token" in answer.json()


def test_fault_slow_trips_a_client_timeout(emu, stand_in):
    before = len(emu.exchanges)
    emu.inject(kind="slow", delay=1)
    with pytest.raises(requests.Timeout):
        requests.post(emu.token_exchange_url, auth=(CLIENT_ID, CLIENT_SECRET), timeout=0.3,
                      data=exchange_form(stand_in.token(), new_key().public_key()))
    # The server still finishes that exchange; let it, so its record cannot land in the
    # middle of the next test's assertions.
    wait_until(lambda: len(emu.exchanges) > before, 5, "the emulator to finish the slow exchange")


def test_in_progress_counts_a_held_request_until_it_is_answered(emu, stand_in):
    emu.inject(kind="slow", delay=2)
    answers = []
    client = threading.Thread(target=lambda: answers.append(
        post_exchange(emu, exchange_form(stand_in.token(), new_key().public_key()))))
    assert emu.in_progress() == 0
    client.start()
    wait_until(lambda: emu.in_progress() == 1, 5, "the emulator to hold the exchange")
    client.join(timeout=10)
    assert answers[0].status_code == 200
    assert emu.in_progress() == 0
    assert emu.in_progress("/n") == 0


def test_fault_drop_closes_without_answer(emu, stand_in):
    emu.inject(kind="drop")
    with pytest.raises(requests.ConnectionError):
        post_exchange(emu, exchange_form(stand_in.token(), new_key().public_key()))
    assert emu.requests[-1]["status"] == 0


@pytest.mark.parametrize("kind, status, content_type, check", [
    ("invalid_grant", 400, "application/json",
     lambda a: a.json() == {"error": "invalid_grant", "error_description": "injected fault"}),
    ("html", 200, "text/html", lambda a: a.text.startswith("<html>")),
    ("bad_json", 200, "application/json", lambda a: not _is_json(a.text)),
    ("no_token", 200, "application/json", lambda a: a.json() == {}),
])
def test_fault_bad_answers(emu, stand_in, kind, status, content_type, check):
    emu.inject(kind=kind)
    answer = post_exchange(emu, exchange_form(stand_in.token(), new_key().public_key()))
    assert answer.status_code == status
    assert answer.headers["Content-Type"] == content_type
    assert check(answer)
    assert emu.exchanges[-1]["outcome"] == f"fault:{kind}"


def _is_json(text):
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def test_fault_wrong_jwk_gives_an_unusable_upst(emu, stand_in):
    key = new_key()
    emu.inject(kind="wrong_jwk")
    upst = exchange_ok(emu, stand_in, key)
    claims = ocisig.verify_upst(upst, emu.public_key)
    assert key_fingerprint(ocisig.session_public_key(claims)) != key_fingerprint(
        key.public_key())
    answer = signed_get(emu, upst, key)
    assert answer.status_code == 401
    assert "session key" in answer.json()["message"]


def test_faults_on_the_namespace_path(emu, session):
    emu.inject(path="/n/", kind="http500")
    answer = signed_get(emu, session.upst, session.key)
    assert answer.status_code == 500 and answer.json()["code"] == "InternalServerError"
    assert signed_get(emu, session.upst, session.key).status_code == 200
    with pytest.raises(ValueError, match="only applies to /oauth2/v1/token"):
        emu.inject(path="/n/", kind="no_token")
    with pytest.raises(ValueError, match="unknown fault kind"):
        emu.inject(kind="teapot")


def test_unavailable_answers_503_or_drops(emu, session):
    emu.set_available(False)
    answer = signed_get(emu, session.upst, session.key)
    assert answer.status_code == 503 and answer.json()["code"] == "ServiceUnavailable"
    emu.set_available(False, mode="drop")
    with pytest.raises(requests.ConnectionError):
        signed_get(emu, session.upst, session.key)
    emu.set_available(True)
    assert signed_get(emu, session.upst, session.key).status_code == 200


def test_oci_cli_sees_an_unavailable_service(emu, session):
    emu.set_available(False)
    done = run_oci(session, "--auth", "security_token", "os", "ns", "get",
                   "--endpoint", emu.url, "--no-retry")
    assert done.returncode != 0
    assert "ServiceUnavailable" in done.stderr


# --- kubectl through `oci ce cluster generate-token` --------------------------------------


@pytest.fixture
def kube_api(emu, tmp_path):
    with KubeApiServer(tmp_path, emu.public_key, cluster_id=CLUSTER_ID,
                       region=REGION) as server:
        yield server


def test_kubectl_authenticates_with_an_oke_token(emu, session, kube_api, tmp_path):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (expected /usr/bin/kubectl, version 1.32)")
    require_oci_cli()
    kubeconfig = write_kubeconfig(
        str(tmp_path / "kubeconfig"), kube_api.url, str(OCI_BIN),
        ["ce", "cluster", "generate-token", "--cluster-id", CLUSTER_ID, "--region", REGION,
         "--profile", PROFILE, "--auth", "security_token",
         "--config-file", str(session.config_file)])
    env = client_env(session.home)

    def run(*args):
        return subprocess.run([kubectl, "--kubeconfig", kubeconfig, *args],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=env, timeout=CLI_TIMEOUT, check=False)

    pods = run("get", "pods")
    assert pods.returncode == 0, pods.stderr
    assert "No resources found in default namespace" in pods.stderr
    version = run("get", "--raw", "/version")
    assert version.returncode == 0, version.stderr
    assert json.loads(version.stdout)["gitVersion"] == "v1.32.0-woci"

    checks = kube_api.checks
    assert checks and all(c["ok"] for c in checks), checks
    assert {c["sub"] for c in checks} == {ocisig.verify_upst(session.upst, emu.public_key)["sub"]}
    assert "/api/v1/namespaces/default/pods" in {c["path"] for c in checks}


def oke_token(emu, session, cluster_id=CLUSTER_ID, region=REGION, key=None):
    """What `oci ce cluster generate-token` builds, made with the SDK signer in-process."""
    signer = oci.auth.signers.SecurityTokenSigner(session.upst, key or session.key)
    url = f"https://containerengine.{region}.oraclecloud.com/cluster_request/{cluster_id}"
    signed = signer.do_request_sign(requests.Request("GET", url).prepare())
    presigned = requests.Request("GET", url, params={
        "authorization": signed.headers["authorization"], "date": signed.headers["date"],
    }).prepare()
    return base64.urlsafe_b64encode(presigned.url.encode()).decode()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.parametrize("case, reason", [
    ("good", None),
    ("other_cluster", "not cluster ocid1.cluster.oc1..test"),
    ("other_region", "not for https://containerengine.us-ashburn-1.oraclecloud.com"),
    ("wrong_key", "signature does not verify"),
    ("garbage", "not for https://"),
    ("no_bearer", "no bearer token"),
])
def test_kube_api_bearer_checks(emu, session, kube_api, case, reason):
    token = {
        "good": lambda: oke_token(emu, session),
        "other_cluster": lambda: oke_token(emu, session, cluster_id="ocid1.cluster.oc1..other"),
        "other_region": lambda: oke_token(emu, session, region="us-phoenix-1"),
        "wrong_key": lambda: oke_token(emu, session, key=new_key()),
        "garbage": lambda: base64.urlsafe_b64encode(b"hello").decode(),
        "no_bearer": lambda: None,
    }[case]()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = requests.get(kube_api.url + "/version", headers=headers, verify=False,
                          timeout=HTTP_TIMEOUT)
    assert answer.status_code == (200 if reason is None else 401)
    check = kube_api.checks[-1]
    assert check["ok"] is (reason is None)
    if reason is not None:
        assert reason in check["reason"]
        assert answer.json()["kind"] == "Status"
