"""A tiny Kubernetes API server that authenticates OKE tokens like OKE does.

`oci ce cluster generate-token` produces an ExecCredential whose token is base64url of a
presigned URL

    https://containerengine.<region>.oraclecloud.com/cluster_request/<cluster id>
        ?authorization=<Signature ...>&date=<HTTP date>

signed (date, (request-target), host) with the session key of the caller's UPST. This server
decodes the bearer token, checks the cluster and region, and verifies the embedded signature
with ocisig against the emulator's UPST key. It answers just enough for `kubectl version`,
`kubectl get pods` and `kubectl get --raw /version`.

kubectl sends no credentials over plain http, so this is HTTPS with a self-signed certificate
made at start; kubeconfigs point at it with `insecure-skip-tls-verify: true`.
"""

import base64
import binascii
import datetime
import ipaddress
import json
import os
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.bed import ocisig
from tests.bed.emulator import QuietThreadingServer, serve_in_thread

CLUSTER_REQUEST_PREFIX = "/cluster_request/"
HANDLER_SOCKET_TIMEOUT = 10
VERSION = {
    "major": "1", "minor": "32", "gitVersion": "v1.32.0-woci", "gitCommit": "0" * 40,
    "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23.4",
    "compiler": "gc", "platform": "linux/amd64",
}
API_VERSIONS = {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
API_GROUPS = {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
CORE_V1_RESOURCES = {
    "kind": "APIResourceList", "groupVersion": "v1",
    "resources": [{
        "name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
        "verbs": ["get", "list"], "shortNames": ["po"], "categories": ["all"],
    }],
}
EMPTY_POD_LIST = {"kind": "PodList", "apiVersion": "v1",
                  "metadata": {"resourceVersion": "1"}, "items": []}
ROUTES = {
    "/version": VERSION,
    "/api": API_VERSIONS,
    "/apis": API_GROUPS,
    "/api/v1": CORE_V1_RESOURCES,
    "/api/v1/namespaces/default/pods": EMPTY_POD_LIST,
}


def write_self_signed_cert(directory):
    """A fresh key and certificate for 127.0.0.1; return (cert_file, key_file)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file = os.path.join(directory, "kube-api.crt")
    key_file = os.path.join(directory, "kube-api.key")
    with open(cert_file, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_file, key_file


def decode_oke_token(token):
    """The presigned URL inside an OKE bearer token (base64url, padding optional)."""
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ocisig.SignatureError("bearer token is not base64url of a URL") from exc


def verify_oke_token(token, cluster_id, region, upst_public_key, now=None):
    """Verify an OKE bearer token as OKE does; return the UPST claims."""
    url = urlsplit(decode_oke_token(token))
    expected_host = f"containerengine.{region}.oraclecloud.com"
    if url.scheme != "https" or url.netloc != expected_host:
        raise ocisig.SignatureError(f"token is not for https://{expected_host}")
    if url.path != CLUSTER_REQUEST_PREFIX + cluster_id:
        raise ocisig.SignatureError(f"token is for {url.path}, not cluster {cluster_id}")
    query = parse_qs(url.query)
    missing = [name for name in ("authorization", "date") if len(query.get(name, [])) != 1]
    if missing:
        raise ocisig.SignatureError(f"token URL lacks {' and '.join(missing)}")
    # The signature covers the URL before the authorization/date parameters were added.
    headers = {"host": url.netloc, "date": query["date"][0],
               "authorization": query["authorization"][0]}
    return ocisig.verify_request("GET", url.path, headers, b"", upst_public_key, now)


class KubeApiServer:
    """HTTPS Kubernetes API stand-in on 127.0.0.1 that requires a valid OKE bearer token."""

    __test__ = False

    def __init__(self, tmp_dir, upst_public_key, cluster_id="ocid1.cluster.oc1..test",
                 region="us-ashburn-1"):
        self.tmp_dir = str(tmp_dir)
        self.upst_public_key = upst_public_key
        self.cluster_id = cluster_id
        self.region = region
        self.cert_file = None
        self.key_file = None
        self._lock = threading.Lock()
        self._checks = []
        self._server = None
        self._thread = None

    def start(self):
        self.cert_file, self.key_file = write_self_signed_cert(self.tmp_dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        server = QuietThreadingServer(("127.0.0.1", 0), _make_handler(self))
        # Handshake lazily in the handler thread, so a stuck client cannot block accept().
        server.socket = context.wrap_socket(server.socket, server_side=True,
                                            do_handshake_on_connect=False)
        self._server = server
        self._thread = serve_in_thread(server, "kube-api")
        return self

    def stop(self):
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def checks(self):
        """Every bearer check: time, path, ok, reason, sub (the UPST's user on success)."""
        with self._lock:
            return [dict(c) for c in self._checks]

    def ok_checks(self):
        return [c for c in self.checks if c["ok"]]

    def authenticate(self, authorization, path):
        """Check an Authorization header; return None when it passes, else the reason."""
        scheme, _, token = (authorization or "").partition(" ")
        sub, reason = None, None
        try:
            if scheme.lower() != "bearer" or not token:
                raise ocisig.SignatureError("no bearer token")
            claims = verify_oke_token(token.strip(), self.cluster_id, self.region,
                                      self.upst_public_key)
            sub = claims["sub"]
        except ocisig.SignatureError as exc:
            reason = exc.reason
        with self._lock:
            self._checks.append({"time": time.time(), "path": path, "ok": reason is None,
                                 "reason": reason, "sub": sub})
        return reason


def _make_handler(kube):
    class Handler(_KubeHandler):
        api = kube

    return Handler


class _KubeHandler(BaseHTTPRequestHandler):
    api = None  # set per server by _make_handler
    server_version = "KubeApiStandIn/1"
    protocol_version = "HTTP/1.0"
    timeout = HANDLER_SOCKET_TIMEOUT

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_GET(self):
        path = urlsplit(self.path).path
        reason = self.api.authenticate(self.headers.get("Authorization"), path)
        if reason is not None:
            self._send(401, status_doc(401, "Unauthorized", f"Unauthorized: {reason}"))
        elif path in ROUTES:
            self._send(200, ROUTES[path])
        else:
            self._send(404, status_doc(404, "NotFound", f"{path} not found"))

    def _send(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def status_doc(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def write_kubeconfig(path, server_url, exec_command, exec_args, env=None,
                     name="woci-test"):
    """A kubeconfig (JSON, which kubectl reads as YAML) whose user runs `exec_command`."""
    exec_entry = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "command": exec_command,
        "args": list(exec_args),
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()] or None,
        "interactiveMode": "Never",
        "provideClusterInfo": False,
    }
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server_url,
                                                "insecure-skip-tls-verify": True}}],
        "users": [{"name": name, "user": {"exec": exec_entry}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name,
                                                "namespace": "default"}}],
        "current-context": name,
        "preferences": {},
    }
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(config, f, indent=2)
    return path
