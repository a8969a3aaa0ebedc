"""Test doubles for the unit tests: a local HTTP server that records requests, and a fake
identity provider + OCI token exchange that mints real UPST-shaped JWTs.

Everything listens on 127.0.0.1 with an OS-chosen port and is stopped by its context manager.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import http.server
import json
import socket
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, NamedTuple

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from typing_extensions import Self

import oci_upst_session_manager as woci

REQUIRED = {"authz_base_url": "http://127.0.0.1:9/authorize",
                "token_url": "http://127.0.0.1:9/token",
                "token_exchange_url": "http://127.0.0.1:9/exchange",
                "auth_client_id": "idp-client", "client_id": "oci-client",
                "client_secret": "oci-secret"}


def make_settings(**overrides) -> woci.Settings:
    """A complete Settings with harmless defaults; overrides win."""
    values = dict(profile="p", oci_config_file=Path("/nonexistent/config"),
                  manager_config_file=None, **REQUIRED)
    values.update(overrides)
    return woci.Settings(**values)


def b64url_json(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def unsigned_jwt(claims: dict) -> str:
    """A JWT-shaped token with the given claims (woci never verifies signatures)."""
    return f"{b64url_json({'alg': 'none', 'typ': 'JWT'})}.{b64url_json(claims)}.c2ln"


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()
                                    ).rstrip(b"=").decode()


# A URL opener that never goes through a proxy from the environment: everything is local.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Request(NamedTuple):
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]          # lower-case names
    body: bytes

    @property
    def form(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.body.decode(), keep_blank_values=True))

    @property
    def basic(self) -> tuple | None:
        value = self.headers.get("authorization", "")
        if not value.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(value[6:]).decode().partition(":")
        return urllib.parse.unquote(user), urllib.parse.unquote(password)


class Answer(NamedTuple):
    status: int = 200
    body: object = b""               # bytes, or a dict/list sent as JSON
    headers: dict[str, str] = {}  # noqa: RUF012 - never mutated
    drop: bool = False               # close the connection without answering


def json_answer(status: int, document, **headers) -> Answer:
    return Answer(status, document, headers)


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 whose answers come from respond(request).

    respond may be a function or a list of Answers used in order (the last one repeats).
    date_offset shifts the Date header the server sends, to play a server with another clock.
    """

    def __init__(self, respond, date_offset: float = 0.0):
        self.requests: list[Request] = []
        self.connections: list[tuple] = []   # the client address of each connection accepted
        self.respond = respond
        self.date_offset = date_offset
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"   # keep-alive: a client may send several requests

            def setup(self):
                super().setup()
                owner.connections.append(self.client_address)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urllib.parse.urlsplit(self.path)
                request = Request(self.command, parts.path, urllib.parse.parse_qs(parts.query),
                                  {k.lower(): v for k, v in self.headers.items()}, body)
                owner.requests.append(request)
                answer = owner._answer_for(request)
                if answer.drop:
                    self.close_connection = True
                    return
                payload = answer.body
                ctype = "text/plain"
                if isinstance(payload, (dict, list)):
                    payload, ctype = json.dumps(payload).encode(), "application/json"
                elif isinstance(payload, str):
                    payload = payload.encode()
                self.send_response(answer.status)
                headers = {"Content-Type": ctype, **answer.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _handle

            def date_time_string(self, timestamp=None):
                return email.utils.formatdate(time.time() + owner.date_offset, usegmt=True)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def _answer_for(self, request: Request) -> Answer:
        if callable(self.respond):
            return self.respond(request)
        index = min(len(self.requests) - 1, len(self.respond) - 1)
        return self.respond[index]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.server.shutdown()
        finally:
            self.server.server_close()
            self.thread.join(timeout=5)


_PROVIDER_KEY = None


def provider_key():
    """The fake OCI's own signing key (RS256), made once per test run."""
    global _PROVIDER_KEY
    if _PROVIDER_KEY is None:
        _PROVIDER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _PROVIDER_KEY


class FakeIdentity:
    """One local server playing the provider's token endpoint (/token) and OCI's token
    exchange (/exchange); the browser side is browse(url), which answers the callback.

    It rotates refresh tokens, checks PKCE, mints UPSTs bound to the key it received, and
    records every request in .requests. It also serves its discovery document (issuer: its
    own URL) and the device flow (/device; a device code is approved at its
    device_pending_polls + 1st poll).
    """

    def __init__(self, tenant: str = "ocid1.tenancy.oc1..fake", lifetime: int = 3600,
                 algorithm: str = "RS256"):
        self.tenant, self.lifetime, self.algorithm = tenant, lifetime, algorithm
        self.valid_refresh_tokens = set()
        self.issued = 0
        self.rotate = True
        self.codes: dict[str, dict] = {}
        self.exchange_answer: Answer | None = None   # overrides minting when set
        self.on_refresh: Callable[[str], None] | None = None
        self.upsts: list[str] = []
        self.authorize_urls: list[str] = []
        self.access_tokens: list[str] = []
        self.device_pending_polls = 1
        self.device_polls = 0
        self.server = LocalServer(self._respond)

    # --- lifecycle
    def __enter__(self) -> Self:
        self.server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.server.__exit__(*exc)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def requests(self) -> list[Request]:
        return self.server.requests

    def settings(self, **overrides) -> woci.Settings:
        values = {"token_url": self.url + "/token", "token_exchange_url": self.url + "/exchange",
                      "authz_base_url": self.url + "/authorize"}
        values.update(overrides)
        return make_settings(**values)

    def grants(self, grant_type: str) -> list[Request]:
        return [r for r in self.requests if r.form.get("grant_type") == grant_type]

    @property
    def exchanges(self) -> list[Request]:
        return self.grants(woci.TOKEN_EXCHANGE_GRANT)

    # --- tokens
    def new_refresh_token(self) -> str:
        self.issued += 1
        token = f"rt-{self.issued}"
        self.valid_refresh_tokens.add(token)
        return token

    def _tokens(self) -> dict:
        self.issued += 1
        access = f"at-{self.issued}"
        self.access_tokens.append(access)
        return {"access_token": access, "token_type": "Bearer", "expires_in": 300,
                "id_token": f"idt-{self.issued}"}

    def mint_upst(self, public_key_der: bytes, **extra) -> str:
        public_key = serialization.load_der_public_key(public_key_der)
        now = int(time.time())
        claims = {"sub": "user@example.com", "tenant": self.tenant, "iat": now,
                  "exp": now + self.lifetime, "jwk": RSAAlgorithm.to_jwk(public_key)}
        claims.update(extra)
        if self.algorithm == "HS256":
            return jwt.encode(claims, "fake-oci-hmac-secret-0123456789abcdef", algorithm="HS256")
        return jwt.encode(claims, provider_key(), algorithm="RS256")

    # --- the server
    def discovery_document(self) -> dict:
        return {"issuer": self.url, "authorization_endpoint": self.url + "/authorize",
                "token_endpoint": self.url + "/token",
                "device_authorization_endpoint": self.url + "/device"}

    def _respond(self, request: Request) -> Answer:
        form = request.form
        if request.path == woci.DISCOVERY_PATH:
            return json_answer(200, self.discovery_document())
        if request.path == "/device":
            return json_answer(200, {"device_code": "dc-1", "user_code": "UC-1",
                                     "verification_uri": self.url + "/activate",
                                     "expires_in": 60, "interval": 1})
        if request.path == "/token" and form.get("grant_type") == woci.DEVICE_CODE_GRANT:
            self.device_polls += 1
            if self.device_polls <= self.device_pending_polls:
                return json_answer(400, {"error": "authorization_pending"})
            document = self._tokens()
            document["refresh_token"] = self.new_refresh_token()
            return json_answer(200, document)
        if request.path == "/token" and form.get("grant_type") == "refresh_token":
            token = form.get("refresh_token", "")
            if self.on_refresh:
                self.on_refresh(token)
            if token not in self.valid_refresh_tokens:
                return json_answer(400, {"error": "invalid_grant",
                                         "error_description": "grant request is invalid"})
            document = self._tokens()
            if self.rotate:
                self.valid_refresh_tokens.discard(token)
                document["refresh_token"] = self.new_refresh_token()
            return json_answer(200, document)
        if request.path == "/token" and form.get("grant_type") == "authorization_code":
            issued = self.codes.pop(form.get("code", ""), None)
            if (issued is None or s256(form.get("code_verifier", "")) != issued["challenge"]
                    or form.get("redirect_uri") != issued["redirect_uri"]):
                return json_answer(400, {"error": "invalid_grant"})
            document = self._tokens()
            document["refresh_token"] = self.new_refresh_token()
            return json_answer(200, document)
        # An identity domain as the provider: the exchange at its token endpoint too.
        if request.path == "/exchange" or form.get("grant_type") == woci.TOKEN_EXCHANGE_GRANT:
            if self.exchange_answer is not None:
                return self.exchange_answer
            upst = self.mint_upst(base64.b64decode(form["public_key"]))
            self.upsts.append(upst)
            return json_answer(200, {"token": upst})
        return json_answer(404, {"error": "not_found"})

    # --- the browser
    def answer_for(self, authorize_url: str) -> str:
        """The address a user who signs in at once is sent to, not visited."""
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(authorize_url).query))
        self.issued += 1
        code = f"code-{self.issued}"
        self.codes[code] = {"challenge": query["code_challenge"],
                            "redirect_uri": query["redirect_uri"]}
        self.authorize_urls.append(authorize_url)
        return woci.add_query(query["redirect_uri"], {"code": code, "state": query["state"]})

    def browse(self, authorize_url: str) -> bool:
        """Play a user who signs in at once: answer the callback with a fresh code."""
        target = self.answer_for(authorize_url)
        with NO_PROXY.open(target, timeout=5) as answer:
            answer.read()
        return True


class SlowServer:
    """A raw TCP server on 127.0.0.1 that reads a request and answers with `script`: a list
    of byte strings sent `pause` seconds apart (a server or proxy that dribbles its answer).
    Every connection gets the same script; all are closed when the server stops. cut_off
    counts the connections the client closed before the script ended."""

    def __init__(self, script: list[bytes], pause: float):
        self.script, self.pause = script, pause
        self.connections = 0
        self.cut_off = 0
        self.stopping = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.1)
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            thread = threading.Thread(target=self._answer, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5)
                conn.recv(65536)
                for piece in self.script:
                    if self.stopping.wait(self.pause):
                        return
                    conn.sendall(piece)
            except OSError:
                self.cut_off += 1

    def __enter__(self) -> Self:
        self.acceptor.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.acceptor.join(timeout=5)
        for thread in self.threads:
            thread.join(timeout=5)
        self.sock.close()
