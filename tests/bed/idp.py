"""Launch the test OpenID provider (tests/idp/server.mjs) and watch its events.

The provider is a real panva/oidc-provider in a Node child process, on a free
127.0.0.1 port. It writes one JSON object per line on stdout for every event
of interest (see server.mjs); this module collects them so tests can assert on
server-side facts that never reach the client, e.g. why a refresh grant failed.

    with TestIdP(tmp_path, access_token_ttl=60) as idp:
        ...
        assert idp.count("grant.success", grant_type="refresh_token") == 1

Every request is an `http_request` event (method, path); a `token_request` event also names
the refresh token presented and the one issued by `token_fingerprint()`, never by value.
`sync()` makes sure every event of the requests answered so far has been read, so a test can
also assert that something did not happen.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import requests

from tests.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
IDP_DIR = ROOT / "tests" / "idp"
SERVER = IDP_DIR / "server.mjs"

HTTP_TIMEOUT = 10.0

PUBLIC_CLIENT_ID = "woci-public"
CONFIDENTIAL_CLIENT_ID = "woci-confidential"
DEFAULTS = {
    "IDP_AUDIENCE": "urn:oci:woci",
    "IDP_CONFIDENTIAL_CLIENT_SECRET": "s3cret-confidential",
    "IDP_USER": "alice",
    "IDP_PASSWORD": "wonderland-42",
}


def free_port() -> int:
    """A port that was free a moment ago (the usual bind-to-0 race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token_fingerprint(token: str) -> str:
    """How the provider's events name a token: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]


def _env_name(key: str) -> str:
    key = key.upper()
    return key if key.startswith("IDP_") else "IDP_" + key


def _matches(event: Dict[str, Any], name: str, match: Dict[str, Any]) -> bool:
    return event.get("event") == name and all(event.get(k) == v for k, v in match.items())


class TestIdP:
    """One provider process. Overrides map to env vars: access_token_ttl=60 -> IDP_ACCESS_TOKEN_TTL=60."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, workdir, **env_overrides: Any) -> None:
        self.workdir = Path(workdir)
        self.env_overrides = {
            _env_name(k): ("1" if v is True else "0" if v is False else str(v))
            for k, v in env_overrides.items()
        }
        self.settings = {**DEFAULTS, **self.env_overrides}
        self.port: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._events: List[Dict[str, Any]] = []
        self._lines: List[str] = []
        self._discovery: Optional[Dict[str, Any]] = None
        self._log = None

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 20.0) -> "TestIdP":
        if self._proc is not None:
            raise RuntimeError("TestIdP already started")
        if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
            raise RuntimeError("run `npm ci` in tests/idp (make test does it)")
        node = shutil.which("node") or "/usr/bin/node"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = dict(os.environ)
        env.update(self.env_overrides)
        env["IDP_PORT"] = str(self.port)
        self._log = open(self.workdir / "idp.log", "a", encoding="utf-8")
        # stderr joins stdout: the library's warnings and any crash trace then
        # land in the same captured output that start() reports on failure.
        self._proc = subprocess.Popen(
            [node, str(SERVER)],
            cwd=str(IDP_DIR),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name="idp-stdout", daemon=True)
        self._reader.start()
        try:
            self._wait_ready(timeout)
        except BaseException:
            output = self.output()
            self.stop()
            raise RuntimeError(f"test IdP did not start: see output below\n{output}") from None
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.wait_for("listening", timeout=timeout)
        url = self.issuer + "/.well-known/openid-configuration"
        last_error = "no answer yet"

        def discovery() -> Optional[Dict[str, Any]]:
            nonlocal last_error
            if self._proc.poll() is not None:
                raise RuntimeError(f"node exited with {self._proc.returncode}")
            try:
                resp = requests.get(url, timeout=min(2.0, HTTP_TIMEOUT))
            except requests.RequestException as exc:
                last_error = str(exc)
                return None
            if resp.status_code != 200:
                last_error = f"discovery answered {resp.status_code}"
                return None
            return resp.json()

        try:
            self._discovery = wait_until(discovery, max(0.0, deadline - time.monotonic()),
                                         f"the discovery document at {url}")
        except AssertionError as exc:
            raise TimeoutError(f"{exc}: {last_error}") from None

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            line = line.rstrip("\n")
            if self._log is not None:
                try:
                    self._log.write(line + "\n")
                    self._log.flush()
                except ValueError:  # closed by stop() while we were reading
                    pass
            event = None
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    event = None
            with self._lock:
                self._lines.append(line)
                if isinstance(event, dict):
                    self._events.append(event)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "TestIdP":
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def output(self) -> str:
        """Everything the process printed so far (for error messages)."""
        with self._lock:
            return "\n".join(self._lines)

    # ------------------------------------------------------------ endpoints

    @property
    def issuer(self) -> str:
        if self.port is None:
            raise RuntimeError("TestIdP not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def discovery(self) -> Dict[str, Any]:
        if self._discovery is None:
            raise RuntimeError("TestIdP not started")
        return dict(self._discovery)

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    @property
    def authorize_url(self) -> str:
        return self.discovery["authorization_endpoint"]

    @property
    def token_url(self) -> str:
        return self.discovery["token_endpoint"]

    @property
    def revocation_url(self) -> str:
        return self.discovery["revocation_endpoint"]

    @property
    def introspection_url(self) -> str:
        return self.discovery["introspection_endpoint"]

    @property
    def jwks_uri(self) -> str:
        return self.discovery["jwks_uri"]

    @property
    def device_url(self) -> str:
        return self.discovery["device_authorization_endpoint"]

    @property
    def audience(self) -> str:
        return self.settings["IDP_AUDIENCE"]

    # ------------------------------------------------------------ clients and user

    public_client_id = PUBLIC_CLIENT_ID
    confidential_client_id = CONFIDENTIAL_CLIENT_ID

    @property
    def confidential_client_secret(self) -> str:
        return self.settings["IDP_CONFIDENTIAL_CLIENT_SECRET"]

    @property
    def user(self) -> str:
        return self.settings["IDP_USER"]

    @property
    def password(self) -> str:
        return self.settings["IDP_PASSWORD"]

    # ------------------------------------------------------------ events

    @property
    def events(self) -> List[Dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def count(self, event: str, **match: Any) -> int:
        """How many such events the provider emitted for requests answered before this call
        (it syncs first: a count read at once could miss the newest)."""
        self.sync()
        return sum(1 for e in self.events if _matches(e, event, match))

    def mark(self) -> int:
        """Position in the event list; pass it to events_since()."""
        with self._lock:
            return len(self._events)

    def events_since(self, mark: int, event: Optional[str] = None, *, synced: bool = True,
                     **match: Any) -> List[Dict[str, Any]]:
        """The events at or after mark (named event, with these fields). It syncs first, so
        every event of a request answered before the call is there; synced=False reads what
        has arrived so far (wait_for polls that way)."""
        if synced:
            self.sync()
        with self._lock:
            tail = list(self._events[mark:])
        if event is None:
            return tail
        return [e for e in tail if _matches(e, event, match)]

    def wait_for(self, event: str, timeout: float = 10.0, since: int = 0, **match: Any) -> Dict[str, Any]:
        """First event (at or after index `since`) named `event` whose fields equal `match`.

        Events reach us through node's stdout a moment after the HTTP answer that caused them,
        so a test that has its answer waits here, bounded, rather than reading `events` at once.
        """

        def first_match() -> Optional[Dict[str, Any]]:
            found = self.events_since(since, event, synced=False, **match)
            if found:
                return found[0]
            proc = self._proc
            if proc is None or (proc.poll() is not None and self._reader is not None
                                and not self._reader.is_alive()):
                raise RuntimeError(f"test IdP not running while waiting for {event} {match}")
            return None

        return wait_until(first_match, timeout, f"a provider event {event} matching {match}")

    def sync(self, timeout: float = 10.0) -> None:
        """Return once every event of every request answered before this call has been read.

        The provider writes a request's events before its answer goes out, on one ordered pipe;
        the `sync` event of a request made now therefore comes after all of them.
        """
        sync_id = uuid.uuid4().hex
        mark = self.mark()
        resp = requests.get(f"{self.issuer}/__test/sync", params={"id": sync_id}, timeout=HTTP_TIMEOUT)
        if resp.status_code != 204:
            raise RuntimeError(f"the provider answered {resp.status_code} to a sync")
        self.wait_for("sync", timeout=timeout, since=mark, id=sync_id)

    # ------------------------------------------------------------ device flow switches

    def device_control(self, slow_down: Optional[int] = None,
                       code_ttl: Optional[int] = None) -> Dict[str, int]:
        """Runtime switches of the device flow: the next `slow_down` device-code polls at the
        token endpoint answer slow_down; device codes issued from now on live `code_ttl`
        seconds. Returns the switches as they are now."""
        body = {k: v for k, v in (("slow_down", slow_down), ("code_ttl", code_ttl)) if v is not None}
        resp = requests.post(self.issuer + "/test/device-control", json=body, timeout=HTTP_TIMEOUT)
        resp.raise_for_status()
        return resp.json()

    def reset_device_control(self) -> None:
        """Back to the launch settings: no forced slow_down, the configured code lifetime."""
        self.device_control(slow_down=0, code_ttl=int(self.settings.get("IDP_DEVICE_CODE_TTL", 600)))

    # ------------------------------------------------------------ helpers

    def revoke(self, token: str, client_id: Optional[str] = None, client_secret: Optional[str] = None,
               token_type_hint: Optional[str] = None) -> requests.Response:
        """RFC 7009 revocation; public clients send client_id in the body, confidential ones Basic."""
        data = {"token": token}
        if token_type_hint:
            data["token_type_hint"] = token_type_hint
        auth = None
        if client_secret is not None:
            auth = (client_id or self.confidential_client_id, client_secret)
        else:
            data["client_id"] = client_id or self.public_client_id
        return requests.post(self.revocation_url, data=data, auth=auth, timeout=HTTP_TIMEOUT)

    def __repr__(self) -> str:
        return f"<TestIdP {self.issuer if self.port else '(not started)'}>"
