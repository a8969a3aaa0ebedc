"""An HTTP forwarder on 127.0.0.1 that can break on purpose: the network between woci and a peer.

It passes requests to an upstream (the real provider) unchanged, unless told to fail:
``down`` refuses every request by closing the connection unanswered, ``http500``/``http429``/
``html``/``slow`` answer the next ``count`` requests badly. It never reads or logs bodies
beyond forwarding them, with one exception: with ``present_as_issuer`` set, the ``issuer`` of
the OpenID discovery document it passes on becomes the proxy's own URL, as a gateway in front
of a provider would publish it, while the endpoints in the document still name the provider
itself. A client configured with the proxy as its issuer then reads discovery through the
proxy (where a test can break it) and talks to the provider directly for everything else.
"""

import email.utils
import http.client
import http.server
import json
import threading
import time
import urllib.parse
from typing import Dict, List, Optional


DISCOVERY_PATH = "/.well-known/openid-configuration"


class FaultProxy:
    __test__ = False

    def __init__(self, upstream: str):
        parts = urllib.parse.urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self._lock = threading.Lock()
        self._faults: List[Dict[str, object]] = []
        self._down = False
        # Seconds added to every Date header answered: a peer whose clock is off.
        self.date_offset = 0.0
        self.present_as_issuer = False
        self.seen: List[Dict[str, object]] = []   # method, path (no query), answered status
        self._server: Optional[http.server.ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # --- switches ---------------------------------------------------------------------------

    def inject(self, kind: str, count: int = 1, delay: float = 0.0,
               retry_after: Optional[str] = None) -> None:
        with self._lock:
            self._faults.append({"kind": kind, "count": count, "delay": delay,
                                 "retry_after": retry_after})

    def set_down(self, down: bool) -> None:
        with self._lock:
            self._down = down

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._down = False

    def count(self, path_suffix: str = "", status: Optional[object] = None) -> int:
        with self._lock:
            return sum(1 for s in self.seen if str(s["path"]).endswith(path_suffix)
                       and (status is None or s["status"] == status))

    def _next_fault(self) -> Optional[Dict[str, object]]:
        with self._lock:
            if self._down:
                return {"kind": "drop"}
            if not self._faults:
                return None
            fault = self._faults[0]
            fault["count"] = int(fault["count"]) - 1
            if fault["count"] <= 0:
                self._faults.pop(0)
            return dict(fault)

    def _record(self, method: str, path: str, status: object) -> None:
        with self._lock:
            self.seen.append({"method": method, "path": path.split("?")[0], "status": status,
                              "t": time.time()})

    # --- life -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                proxy._handle(self)

            def do_POST(self):  # noqa: N802
                proxy._handle(self)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _date(self) -> str:
        return email.utils.formatdate(time.time() + self.date_offset, usegmt=True)

    # --- forwarding -------------------------------------------------------------------------

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        fault = self._next_fault()
        kind = fault["kind"] if fault else None
        if kind == "drop":
            self._record(handler.command, handler.path, "dropped")
            handler.close_connection = True
            handler.connection.close()
            return
        if kind == "slow":
            time.sleep(float(fault["delay"]))
        if kind in ("http500", "http429", "html"):
            status = {"http500": 500, "http429": 429, "html": 200}[kind]
            payload = b"<html><body>Service unavailable</body></html>"
            handler.send_response_only(status)
            handler.send_header("Date", self._date())
            handler.send_header("Content-Type", "text/html")
            if fault.get("retry_after"):
                handler.send_header("Retry-After", str(fault["retry_after"]))
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            self._record(handler.command, handler.path, status)
            return
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=30)
        try:
            headers = {k: v for k, v in handler.headers.items()
                       if k.lower() not in ("host", "connection", "content-length")}
            conn.request(handler.command, handler.path, body=body or None, headers=headers)
            answer = conn.getresponse()
            payload = answer.read()
        finally:
            conn.close()
        if (self.present_as_issuer and answer.status == 200
                and handler.path.split("?")[0].endswith(DISCOVERY_PATH)):
            document = json.loads(payload)
            document["issuer"] = self.url
            payload = json.dumps(document).encode()
        # The upstream's own Date and Server headers pass through (clock-skew checks read Date).
        handler.send_response_only(answer.status)
        for name, value in answer.getheaders():
            if name.lower() == "date":
                value = self._date()
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
        self._record(handler.command, handler.path, answer.status)
