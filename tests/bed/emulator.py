"""A local stand-in for the parts of OCI that woci and the OCI CLI talk to.

- `POST /oauth2/v1/token`: the identity domain's token exchange. It checks what OCI checks
  (client credentials, grant and token types, the subject token against the provider's JWKS,
  issuer, audience, expiry, the public key) and answers a UPST signed with the emulator's own
  RSA key, shaped like a real one.
- `GET /n` or `/n/` (Object Storage GetNamespace) and `GET /20160918/regions` (Identity ListRegions,
  which `oci session validate` calls): both verify the request signature exactly as OCI does
  (see ocisig), so a passing CLI call proves the session files woci wrote are right.

Faults can be injected at runtime to test woci's error handling; every answer is recorded.
`set_available(False)` makes every request get `503 {"code":"ServiceUnavailable"}`
(mode="503", the default) or a dropped connection (mode="drop").

Standalone: `python -m tests.bed.emulator --jwks-uri URL --issuer URL [--port N]` prints one
JSON line (url, token_exchange_url, upst_public_key_pem) and serves until SIGTERM.
"""

import argparse
import base64
import binascii
import collections
import hashlib
import json
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.bed import ocisig

TOKEN_PATH = "/oauth2/v1/token"
# oci-cli 3.95.1 and the SDK send `GET /n` (no slash); the API reference writes `/n/`.
NAMESPACE_PATHS = ("/n", "/n/")
REGIONS_PATH = "/20160918/regions"
NAMESPACE = "wociemulated"
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
UPST_TOKEN_TYPE = "urn:oci:token-type:oci-upst"
SUBJECT_TOKEN_TYPE = "jwt"
# Real UPSTs live at most an hour; a session (re-exchange window) at most a day.
MAX_UPST_LIFETIME = 3600
SESSION_LIFETIME = 24 * 3600
MIN_SESSION_KEY_BITS = 2048
JWKS_FETCH_TIMEOUT = 5
HANDLER_SOCKET_TIMEOUT = 10
REGIONS = [
    {"key": "IAD", "name": "us-ashburn-1"},
    {"key": "PHX", "name": "us-phoenix-1"},
    {"key": "FRA", "name": "eu-frankfurt-1"},
]

ANY_PATH_FAULTS = frozenset({"http500", "http429", "slow", "drop", "html", "bad_json"})
# A normal, fully checked exchange whose UPST (bound to the right key) is absurd in one way.
ABSURD_UPST_FAULTS = frozenset({"upst_not_ascii", "upst_exp_1e19", "upst_exp_2_days",
                                "upst_exp_string"})
EXCHANGE_ONLY_FAULTS = frozenset({"invalid_grant", "no_token", "wrong_jwk"}) | ABSURD_UPST_FAULTS
FAULT_KINDS = ANY_PATH_FAULTS | EXCHANGE_ONLY_FAULTS


def new_rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_key_pem(public_key):
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def key_fingerprint(public_key):
    """SHA-256 hex of the DER SubjectPublicKeyInfo: a stable name for a session key."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def user_ocid(subject):
    """The same provider subject always maps to the same emulated user OCID."""
    return "ocid1.user.oc1.." + hashlib.sha256(subject.encode("utf-8")).hexdigest()[:60]


class ExchangeError(Exception):
    """An OAuth error answer: status, `error` code and `error_description`."""

    def __init__(self, status, error, description):
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


@dataclass
class Fault:
    path: str
    kind: str
    remaining: int
    delay: float
    retry_after: object


class OciEmulator:
    """OCI token exchange + Object Storage namespace + Identity regions on 127.0.0.1."""

    __test__ = False

    def __init__(self, jwks_uri, issuer, audience="urn:oci:woci", clients=None,
                 upst_lifetime=3600, tenancy="ocid1.tenancy.oc1..emulated",
                 region="us-ashburn-1", port=0):
        self.jwks_uri = jwks_uri
        self.issuer = issuer
        self.audience = audience
        self.clients = dict(clients if clients is not None else {"oci-client": "oci-secret"})
        self.tenancy = tenancy
        self.region = region
        self.signing_key = new_rsa_key()
        self.kid = "emulator-" + key_fingerprint(self.signing_key.public_key())[:16]
        self._port = port
        self._jwks = jwt.PyJWKClient(jwks_uri, timeout=JWKS_FETCH_TIMEOUT)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._upst_lifetime = upst_lifetime
        self._available = True
        self._unavailable_mode = "503"
        self._faults = []
        self._counts = collections.Counter()
        self._exchanges = []
        self._requests = []
        self._in_hand = collections.Counter()  # path: requests read, not answered yet
        self._last_denied_reason = None
        self._server = None
        self._thread = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self):
        self._stopping.clear()
        self._server = QuietThreadingServer(("127.0.0.1", self._port), _make_handler(self))
        self._thread = serve_in_thread(self._server, "oci-emulator")
        return self

    def stop(self):
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self):
        return self._server.server_address[1]

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_exchange_url(self):
        return self.url + TOKEN_PATH

    @property
    def public_key(self):
        """The key that verifies this emulator's UPSTs (what OCI services trust)."""
        return self.signing_key.public_key()

    @property
    def public_key_pem(self):
        return public_key_pem(self.public_key)

    # --- runtime controls --------------------------------------------------------------

    def inject(self, path=TOKEN_PATH, kind="http500", count=1, delay=0.0, retry_after=None):
        """Make the next `count` requests to `path` (query ignored) misbehave.

        Any path: `http500` (500, OAuth `server_error` on the token path, OCI
        `InternalServerError` elsewhere), `http429` (429 `too_many_requests` /
        `TooManyRequests`, plus `Retry-After: <retry_after>` when given), `slow` (sleep
        `delay` s, then answer normally; dropped instead if the emulator stops meanwhile),
        `drop` (read the request, close the connection without a byte), `html` (200 text/html),
        `bad_json` (200 application/json that is not JSON).
        Token path only: `invalid_grant` (400 invalid_grant), `no_token` (200 `{}`),
        `wrong_jwk` (a normal, fully checked exchange whose UPST names a different key), and
        UPSTs bound to the right key but absurd: `upst_not_ascii` (a non-ASCII character in
        the signature part), `upst_exp_1e19` (exp 10**19), `upst_exp_2_days` (exp two days
        ahead), `upst_exp_string` (exp a numeric string).
        Faults are used in injection order; each use counts `fault_<kind>`, counted as soon as
        the request (body read) is in hand, before any delay: see wait_for_count().
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(FAULT_KINDS)}")
        if kind in EXCHANGE_ONLY_FAULTS and path != TOKEN_PATH:
            raise ValueError(f"fault {kind!r} only applies to {TOKEN_PATH}")
        with self._lock:
            self._faults.append(Fault(path, kind, count, delay, retry_after))

    def clear_faults(self):
        with self._lock:
            self._faults.clear()

    def set_upst_lifetime(self, seconds):
        with self._lock:
            self._upst_lifetime = seconds

    def set_available(self, available, mode="503"):
        if mode not in ("503", "drop"):
            raise ValueError("mode must be '503' or 'drop'")
        with self._lock:
            self._available = available
            self._unavailable_mode = mode

    # --- records -----------------------------------------------------------------------

    def count(self, name):
        with self._lock:
            return self._counts[name]

    def wait_for_count(self, name, at_least, timeout):
        """Poll count(name) until it reaches at_least; TimeoutError after timeout seconds."""
        deadline = time.monotonic() + timeout
        while self.count(name) < at_least:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"emulator counter {name} stayed at {self.count(name)} "
                                   f"(< {at_least}) for {timeout} s")
            time.sleep(0.02)

    @property
    def exchanges(self):
        with self._lock:
            return [dict(e) for e in self._exchanges]

    @property
    def requests(self):
        with self._lock:
            return [dict(r) for r in self._requests]

    def in_progress(self, path=TOKEN_PATH):
        """Requests to `path` the emulator has read but not answered yet (e.g. held by `slow`):
        the moment a client is waiting on it."""
        with self._lock:
            return self._in_hand[path]

    @property
    def last_denied_reason(self):
        with self._lock:
            return self._last_denied_reason

    def _bump(self, name):
        with self._lock:
            self._counts[name] += 1

    def _record_request(self, method, path, status):
        with self._lock:
            self._in_hand[path] -= 1
            self._requests.append({"time": time.time(), "method": method, "path": path,
                                   "status": status})

    def _received(self, path):
        with self._lock:
            self._in_hand[path] += 1

    def _record_exchange(self, **fields):
        with self._lock:
            self._exchanges.append({"time": time.time(), **fields})

    def _deny(self, reason):
        with self._lock:
            self._last_denied_reason = reason

    def _take_fault(self, path):
        with self._lock:
            for fault in self._faults:
                if fault.path == path and fault.remaining > 0:
                    fault.remaining -= 1
                    return Fault(fault.path, fault.kind, 1, fault.delay, fault.retry_after)
            return None

    def _availability(self):
        with self._lock:
            return self._available, self._unavailable_mode

    @property
    def stopping(self):
        return self._stopping.is_set()

    def sleep(self, seconds):
        """Sleep that ends early when the emulator stops, so stop() is never held up."""
        self._stopping.wait(seconds)

    # --- UPSTs -------------------------------------------------------------------------

    def mint_upst(self, session_public_key, subject="emulated-user", lifetime=None,
                  issued_at=None, signing_key=None, exp=None):
        """A UPST like the exchange issues; tests use the keyword arguments to forge bad ones.

        exp, when given, is the claim as is (any JSON value), whatever the lifetime."""
        with self._lock:
            configured = self._upst_lifetime
        iat = int(time.time() if issued_at is None else issued_at)
        lifetime = min(configured if lifetime is None else lifetime, MAX_UPST_LIFETIME)
        kid = "session-" + key_fingerprint(session_public_key)[:16]
        claims = {
            "sub": user_ocid(subject),
            "tenant": self.tenancy,
            "iss": ocisig.UPST_ISSUER,
            "aud": ocisig.UPST_AUDIENCE,
            "ptype": "user",
            "pstype": "natv",
            "ttype": "x509",
            "iat": iat,
            "exp": iat + lifetime if exp is None else exp,
            "sess_exp": iat + SESSION_LIFETIME,
            "jti": str(uuid.uuid4()),
            "jwk": ocisig.jwk_json(session_public_key, kid),
        }
        return jwt.encode(claims, signing_key or self.signing_key, algorithm="RS256",
                          headers={"kid": self.kid})

    # --- the token exchange ------------------------------------------------------------

    def exchange(self, authorization, content_type, body, wrong_jwk=False, absurd=None):
        """Run one token exchange; return the UPST or raise ExchangeError.

        absurd: one of ABSURD_UPST_FAULTS, to answer a UPST made wrong in that way."""
        client_id = check_client(self.clients, authorization)
        form = parse_form(content_type, body)
        check_exchange_form(form)
        claims = self._verify_subject_token(form["subject_token"])
        session_key = load_session_public_key(form["public_key"])
        issued_for = new_rsa_key().public_key() if wrong_jwk else session_key
        exp = {"upst_exp_1e19": 10 ** 19,
               "upst_exp_2_days": int(time.time()) + 2 * 24 * 3600,
               "upst_exp_string": str(int(time.time()) + 3600)}.get(absurd)
        upst = self.mint_upst(issued_for, subject=claims["sub"], exp=exp)
        if absurd == "upst_not_ascii":
            upst = upst[:-1] + "\u00e9"
        return client_id, claims["sub"], key_fingerprint(session_key), upst

    def _verify_subject_token(self, token):
        try:
            signing_key = self._jwks.get_signing_key_from_jwt(token)
            return jwt.decode(
                token,
                signing_key.key,
                algorithms=["RS256"],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise ExchangeError(400, "invalid_grant", "subject token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise ExchangeError(
                400, "invalid_grant", f"subject token audience is not {self.audience}"
            ) from exc
        except jwt.PyJWKClientConnectionError as exc:
            raise ExchangeError(
                400, "invalid_grant", f"cannot fetch the provider's JWKS: {exc}"
            ) from exc
        except jwt.PyJWTError as exc:
            raise ExchangeError(400, "invalid_grant", f"subject token is invalid: {exc}") from exc


# --- exchange request checks (pure) -------------------------------------------------------


def check_client(clients, authorization):
    """HTTP Basic client authentication; return the client id."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise ExchangeError(401, "invalid_client", "client authentication (HTTP Basic) required")
    try:
        client_id, sep, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ExchangeError(401, "invalid_client", "malformed HTTP Basic credentials") from exc
    if not sep or clients.get(client_id) != secret:
        raise ExchangeError(401, "invalid_client", "client authentication failed")
    return client_id


def parse_form(content_type, body):
    if (content_type or "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise ExchangeError(400, "invalid_request",
                            "body must be application/x-www-form-urlencoded")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ExchangeError(400, "invalid_request", "malformed form body") from exc
    repeated = [name for name, values in fields.items() if len(values) > 1]
    if repeated:
        raise ExchangeError(400, "invalid_request", f"repeated parameter {repeated[0]}")
    return {name: values[0] for name, values in fields.items()}


def check_exchange_form(form):
    for name in ("grant_type", "requested_token_type", "subject_token", "subject_token_type",
                 "public_key"):
        if not form.get(name):
            raise ExchangeError(400, "invalid_request", f"missing parameter {name}")
    if form["grant_type"] != TOKEN_EXCHANGE_GRANT:
        raise ExchangeError(400, "unsupported_grant_type",
                            f"grant_type must be {TOKEN_EXCHANGE_GRANT}")
    if form["requested_token_type"] != UPST_TOKEN_TYPE:
        raise ExchangeError(400, "invalid_request",
                            f"requested_token_type must be {UPST_TOKEN_TYPE}")
    if form["subject_token_type"] != SUBJECT_TOKEN_TYPE:
        raise ExchangeError(400, "invalid_request",
                            f"subject_token_type must be {SUBJECT_TOKEN_TYPE}")


def load_session_public_key(encoded):
    """public_key: standard base64 of a DER SubjectPublicKeyInfo RSA key, no PEM armour."""
    try:
        der = base64.b64decode(encoded, validate=True)
        key = serialization.load_der_public_key(der)
    except (binascii.Error, ValueError) as exc:
        raise ExchangeError(400, "invalid_request",
                            "public_key is not base64 of a DER SubjectPublicKeyInfo") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ExchangeError(400, "invalid_request", "public_key is not an RSA key")
    if key.key_size < MIN_SESSION_KEY_BITS:
        raise ExchangeError(400, "invalid_request",
                            f"public_key has {key.key_size} bits, at least 2048 required")
    return key


# --- HTTP ---------------------------------------------------------------------------------


class QuietThreadingServer(ThreadingHTTPServer):
    """A threading server for test stand-ins that stop() never waits on.

    Handler threads may sleep in a `slow` fault, and clients in fault tests hang up on
    purpose; a broken pipe or a timed-out socket is then expected, not worth a traceback.
    """

    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def serve_in_thread(server, name):
    # A short poll interval keeps shutdown() (and so every test teardown) quick.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=name, daemon=True)
    thread.start()
    return thread



def _make_handler(emulator):
    class Handler(_EmulatorHandler):
        emu = emulator

    return Handler


class _EmulatorHandler(BaseHTTPRequestHandler):
    emu = None  # set per server by _make_handler
    server_version = "OciEmulator/1"
    # HTTP/1.0: one request per connection, so no idle keep-alive threads outlive stop().
    protocol_version = "HTTP/1.0"
    timeout = HANDLER_SOCKET_TIMEOUT

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def _dispatch(self):
        self.path_only = urlsplit(self.path).path
        self.body = self._read_body()
        self.emu._received(self.path_only)
        available, mode = self.emu._availability()
        if not available:
            self._unavailable(mode)
            return
        fault = self.emu._take_fault(self.path_only)
        if fault is not None:
            self.emu._bump(f"fault_{fault.kind}")
            if self._apply_fault(fault):
                return
        kind = fault.kind if fault is not None else None
        self._route(wrong_jwk=kind == "wrong_jwk",
                    absurd=kind if kind in ABSURD_UPST_FAULTS else None)

    def _read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _route(self, wrong_jwk=False, absurd=None):
        routes = {
            ("POST", TOKEN_PATH): lambda: self._token_exchange(wrong_jwk, absurd),
            ("GET", REGIONS_PATH): lambda: self._signed(self._regions, "regions"),
        }
        for path in NAMESPACE_PATHS:
            routes[("GET", path)] = lambda: self._signed(self._namespace, "ns")
        handler = routes.get((self.command, self.path_only))
        if handler is None:
            self._send_json(404, {"code": "NotAuthorizedOrNotFound",
                                  "message": f"{self.command} {self.path_only} is not emulated"})
        else:
            handler()

    # --- answers -----------------------------------------------------------------------

    def _send(self, status, body, content_type, extra_headers=()):
        # Recorded first: whoever has the answer can already see the record.
        self.emu._record_request(self.command, self.path_only, status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("opc-request-id", uuid.uuid4().hex.upper())
        for name, value in extra_headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status, value, extra_headers=()):
        self._send(status, json.dumps(value).encode(), "application/json", extra_headers)

    def _drop(self):
        # Nothing is written: the client sees the connection closed without an answer.
        self.close_connection = True
        self.emu._record_request(self.command, self.path_only, 0)

    def _error(self, status, code, message, extra_headers=()):
        """OAuth-style errors on the token endpoint, OCI-style elsewhere."""
        if self.path_only == TOKEN_PATH:
            body = {"error": code, "error_description": message}
        else:
            body = {"code": code, "message": message}
        self._send_json(status, body, extra_headers)

    def _unavailable(self, mode):
        if mode == "drop":
            self._drop()
        else:
            self._send_json(503, {"code": "ServiceUnavailable",
                                  "message": "the emulator is set unavailable"})

    def _apply_fault(self, fault):
        """Answer according to the fault; False when the request should go on normally."""
        kind = fault.kind
        if kind == "slow":
            self.emu.sleep(fault.delay)
            if self.emu.stopping:
                self._drop()
                return True
            return False
        if kind == "wrong_jwk" or kind in ABSURD_UPST_FAULTS:
            return False
        # Recorded before answering: a client that has the answer also sees the record.
        if self.path_only == TOKEN_PATH:
            self.emu._record_exchange(client_id=None, sub=None, key_fingerprint=None,
                                      outcome=f"fault:{kind}")
        if kind == "drop":
            self._drop()
        elif kind == "http500":
            self._error(500, "server_error" if self.path_only == TOKEN_PATH
                        else "InternalServerError", "injected fault")
        elif kind == "http429":
            extra = [] if fault.retry_after is None else [("Retry-After", str(fault.retry_after))]
            self._error(429, "too_many_requests" if self.path_only == TOKEN_PATH
                        else "TooManyRequests", "injected fault", extra)
        elif kind == "html":
            self._send(200, b"<html><body><h1>Sign in</h1></body></html>", "text/html")
        elif kind == "bad_json":
            self._send(200, b'{"token": "unterminated', "application/json")
        elif kind == "no_token":
            self._send_json(200, {})
        elif kind == "invalid_grant":
            self._error(400, "invalid_grant", "injected fault")
        return True

    # --- endpoints ---------------------------------------------------------------------

    def _token_exchange(self, wrong_jwk, absurd=None):
        emu = self.emu
        try:
            client_id, sub, fingerprint, upst = emu.exchange(
                self.headers.get("Authorization"), self.headers.get("Content-Type"),
                self.body, wrong_jwk=wrong_jwk, absurd=absurd)
        except ExchangeError as exc:
            emu._bump("exchange_error")
            emu._record_exchange(client_id=None, sub=None, key_fingerprint=None,
                                 outcome=exc.error, error_description=exc.description)
            extra = [("WWW-Authenticate", 'Basic realm="oci"')] if exc.status == 401 else []
            self._error(exc.status, exc.error, exc.description, extra)
            return
        emu._bump("exchange_ok")
        emu._record_exchange(client_id=client_id, sub=sub, key_fingerprint=fingerprint,
                             outcome="ok", wrong_jwk=wrong_jwk, absurd=absurd)
        self._send_json(200, {"token": upst})

    def _signed(self, answer, counter):
        """Answer only a request whose OCI signature verifies."""
        try:
            ocisig.verify_request(self.command, self.path, self.headers, self.body,
                                  self.emu.public_key)
        except ocisig.SignatureError as exc:
            self.emu._bump(f"{counter}_denied")
            self.emu._deny(exc.reason)
            self._error(401, "NotAuthenticated", exc.reason)
            return
        self.emu._bump(f"{counter}_ok")
        answer()

    def _namespace(self):
        self._send_json(200, NAMESPACE)

    def _regions(self):
        self._send_json(200, REGIONS)


# --- standalone demo ----------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Run the OCI emulator until SIGTERM.")
    parser.add_argument("--jwks-uri", required=True, help="The identity provider's JWKS URL.")
    parser.add_argument("--issuer", required=True, help="The access tokens' expected iss.")
    parser.add_argument("--audience", default="urn:oci:woci",
                        help="The access tokens' expected aud (default: urn:oci:woci).")
    parser.add_argument("--client", action="append", metavar="ID:SECRET",
                        help="An exchange client; repeatable (default: oci-client:oci-secret).")
    parser.add_argument("--upst-lifetime", type=int, default=3600,
                        help="UPST lifetime in seconds, at most 3600 (default: 3600).")
    parser.add_argument("--port", type=int, default=0, help="Port on 127.0.0.1 (default: free).")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    clients = dict(c.split(":", 1) for c in args.client) if args.client else None
    emu = OciEmulator(args.jwks_uri, args.issuer, audience=args.audience, clients=clients,
                      upst_lifetime=args.upst_lifetime, port=args.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with emu:
        print(json.dumps({"url": emu.url, "token_exchange_url": emu.token_exchange_url,
                          "upst_public_key_pem": emu.public_key_pem}), flush=True)
        while not stop.wait(1):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
