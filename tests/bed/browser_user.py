"""A scripted user that plays the browser in woci's end-to-end tests.

A test sets BROWSER="<venv python> <abs path>/browser_user.py %s"; Python's
webbrowser module then runs this script with the authorize URL and WAITS for it
to exit, so everything here is bounded and the script always ends quickly.

It signs in on the test provider's own pages (tests/idp/server.mjs: inputs
`login`/`password`, button `#submit`; consent buttons `#allow`/`#deny`),
follows redirects by hand (127.0.0.1 only) up to the client's loopback
callback on another port, GETs it and records the outcome.

Environment:
    WOCI_TEST_BROWSER_LOG     required: file to which ONE JSON line is appended per run
    WOCI_TEST_BROWSER_ACTION  login (default) | deny | wrong-password | none |
                              tamper-state | drop-code
    WOCI_TEST_USER / WOCI_TEST_PASSWORD   default alice / wonderland-42
    WOCI_TEST_BROWSER_HOLD_FILE   optional: once at the callback, wait (at most HOLD_MAX
                              seconds) until this file exists before GETting the callback, so
                              a test can act first; the record's "held" says what happened

Record: {"url", "action", "callback_status", "callback_body", "pages", "error"}
plus a few extras (query, callback_error, callback_keys, final_status,
final_body, device_result).

Imported instead of run (tests of woci's login_flow = manual): address_after_sign_in(url)
plays the same user and returns the address the browser ends on, without visiting it.

Device flow: given the verification URL (verification_uri_complete, or the
plain one with WOCI_TEST_USER_CODE set) it submits the user code, signs in,
consents and confirms (`deny` aborts at the confirm page); device_result is
then "success" (or "aborted"), with no callback. URLs are logged WITHOUT query strings and the authorize query's
state/code_challenge/nonce values are redacted: codes and PKCE material must
not leak into test logs.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
from html.parser import HTMLParser
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

HTTP_TIMEOUT = 10.0
TOTAL_BUDGET = 30.0  # seconds for the whole flow; the caller is blocked meanwhile
HOLD_MAX = 20.0      # seconds the callback may be held back by WOCI_TEST_BROWSER_HOLD_FILE
HOLD_POLL = 0.05
MAX_STEPS = 25
ACTIONS = {"login", "deny", "wrong-password", "none", "tamper-state", "drop-code"}
REDACT = {"state", "code_challenge", "nonce", "code", "login_hint", "user_code"}
ALLOWED_HOSTS = {"127.0.0.1"}


def strip_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def scrub(text: str) -> str:
    """Drop query strings from free text (exception messages quote URLs with codes)."""
    return re.sub(r"\?[^\s'\"<>)]*", "?<query removed>", text)


def redacted_query(url: str) -> Dict[str, str]:
    return {k: ("<redacted>" if k in REDACT else v) for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)}


def new_record(url: str, action: str, **extra) -> Dict:
    """The JSON line one browser run appends, before anything happened (shared by both users)."""
    record: Dict = {"url": strip_query(url), "query": redacted_query(url), "action": action,
                    "callback_status": None, "callback_body": None, "callback_error": None,
                    "callback_keys": None, "pages": [], "final_status": None,
                    "final_body": None}
    record.update(extra)
    record["error"] = None
    return record


def altered_callback(url: str, action: str, record: Dict) -> str:
    """The callback URL as the user agent will GET it: altered for tamper-state/drop-code,
    with which keys it carries (and any error) noted in the record. Shared by both users."""
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    if action == "tamper-state":
        params = [(k, "tampered-" + secrets.token_urlsafe(8) if k == "state" else v) for k, v in params]
    elif action == "drop-code":
        params = [(k, v) for k, v in params if k != "code"]
    record["callback_keys"] = [k for k, _ in params]
    record["callback_error"] = dict(params).get("error")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(params), ""))


class FormParser(HTMLParser):
    """Collect forms with their fields and buttons; enough for our own simple pages."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: List[Dict] = []
        self._form: Optional[Dict] = None
        self._in_error = False
        self.error_text = ""
        self.ids: set = set()
        self._detached: List[Dict] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._form = {"action": a.get("action", ""), "method": a.get("method", "get").lower(),
                          "id": a.get("id", ""), "inputs": [], "buttons": []}
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None:
            self._form["inputs"].append(a)
        elif tag == "button" and a.get("form"):
            # <button form="..."> outside its form (the provider's device pages)
            self._detached.append(a)
        elif tag == "button" and self._form is not None:
            self._form["buttons"].append(a)
        if a.get("id"):
            self.ids.add(a["id"])
        if a.get("id") == "error" or "error" in a.get("class", "").split():
            self._in_error = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        if tag in ("p", "div", "span"):
            self._in_error = False

    def close(self) -> None:
        super().close()
        for button in self._detached:
            for form in self.forms:
                if form["id"] == button["form"]:
                    form["buttons"].append(button)

    def handle_data(self, data: str) -> None:
        if self._in_error:
            self.error_text += data.strip()


def form_with(forms: List[Dict], *, input_name: str = "", button_id: str = "") -> Optional[Dict]:
    for form in forms:
        if input_name and any(i.get("name") == input_name for i in form["inputs"]):
            return form
        if button_id and any(b.get("id") == button_id for b in form["buttons"]):
            return form
    return None


def form_data(form: Dict, button_id: str = "", **values: str) -> Dict[str, str]:
    """Fields as a browser would submit them: the inputs, then the clicked button's name=value."""
    data = {i["name"]: i.get("value", "") for i in form["inputs"] if i.get("name")}
    data.update(values)
    for b in form["buttons"]:
        if b.get("id") == button_id and b.get("name"):
            data[b["name"]] = b.get("value", "")
    return data


class Flow:
    """One user agent run. visit_callback=False stops at the callback without GETting it:
    callback_url is then the address the browser was sent to (altered for tamper-state and
    drop-code), what a user copies from the address bar when nothing listens there."""

    def __init__(self, url: str, action: str, visit_callback: bool = True) -> None:
        import requests  # imported here so `none` works even in a bare interpreter

        self.requests = requests
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "woci-test-browser-user/1"
        self.authorize_url = url
        self.action = action
        self.idp_netloc = urlsplit(url).netloc
        self.deadline = time.monotonic() + TOTAL_BUDGET
        self.record: Dict = new_record(url, action, device_result=None)
        self.visits_callback = visit_callback
        self.callback_url: Optional[str] = None

    # A callback is any 127.0.0.1 URL on another port than the provider's:
    # the client's loopback listener.
    def is_callback(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.hostname in ALLOWED_HOSTS and parts.netloc != self.idp_netloc

    def request(self, method: str, url: str, data: Optional[Dict[str, str]] = None):
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"flow took longer than {TOTAL_BUDGET}s")
        host = urlsplit(url).hostname
        if host not in ALLOWED_HOSTS:
            raise RuntimeError(f"refusing to visit non-loopback host {host!r}: {strip_query(url)}")
        self.record["pages"].append(strip_query(url))
        return self.session.request(method, url, data=data, allow_redirects=False, timeout=HTTP_TIMEOUT)

    def navigate(self, method: str, url: str, data: Optional[Dict[str, str]] = None) -> Tuple[Optional[object], str]:
        """Follow redirects at the provider; stop at the callback URL (returned, not visited)."""
        for _ in range(MAX_STEPS):
            if self.is_callback(url):
                return None, url
            resp = self.request(method, url, data)
            if resp.is_redirect or resp.status_code in (301, 302, 303, 307, 308):
                location = resp.headers.get("Location")
                if not location:
                    raise RuntimeError(f"redirect without Location from {strip_query(url)}")
                url = urljoin(url, location)
                if resp.status_code not in (307, 308):
                    method, data = "GET", None
                continue
            return resp, url
        raise RuntimeError(f"more than {MAX_STEPS} redirects")

    def page(self, resp) -> FormParser:
        self.record["final_status"] = resp.status_code
        self.record["final_body"] = resp.text[:8000]
        parser = FormParser()
        parser.feed(resp.text)
        parser.close()
        return parser

    def hold(self) -> None:
        """Wait for the test's go-ahead file, if one is named (bounded)."""
        path = os.environ.get("WOCI_TEST_BROWSER_HOLD_FILE")
        if not path:
            return
        deadline = time.monotonic() + HOLD_MAX
        while not os.path.exists(path):
            if time.monotonic() >= deadline:
                self.record["held"] = "timed out"
                return
            time.sleep(HOLD_POLL)
        self.record["held"] = "released"

    def visit_callback(self, url: str) -> None:
        self.hold()
        url = altered_callback(url, self.action, self.record)
        self.callback_url = url
        if not self.visits_callback:
            return
        resp = self.request("GET", url)
        self.record["callback_status"] = resp.status_code
        self.record["callback_body"] = resp.text[:8000]
        self.record["final_status"] = resp.status_code
        self.record["final_body"] = self.record["callback_body"]

    def run(self, user: Optional[str] = None, password: Optional[str] = None) -> None:
        if self.action == "none":
            return
        user = user or os.environ.get("WOCI_TEST_USER", "alice")
        password = password or os.environ.get("WOCI_TEST_PASSWORD", "wonderland-42")

        resp, url = self.navigate("GET", self.authorize_url)
        for _ in range(MAX_STEPS):
            if resp is None:  # reached the client's callback
                self.visit_callback(url)
                return
            parser = self.page(resp)
            login_form = form_with(parser.forms, input_name="login")
            consent_form = form_with(parser.forms, button_id="allow")
            code_form = form_with(parser.forms, button_id="submit-code")
            confirm_form = form_with(parser.forms, button_id="confirm")
            if "device-success" in parser.ids:  # device flow: nothing to call back
                self.record["device_result"] = "success"
                return
            if self.record["device_result"] == "aborted":  # the provider's "interrupted" page
                return
            if code_form is not None and not parser.error_text:
                # Device flow: verification_uri_complete pre-fills the user code.
                user_code = os.environ.get("WOCI_TEST_USER_CODE")
                values = {"user_code": user_code} if user_code else {}
                data = form_data(code_form, "submit-code", **values)
                resp, url = self.navigate("POST", urljoin(url, code_form["action"]), data)
            elif confirm_form is not None:
                data = form_data(confirm_form, "abort" if self.action == "deny" else "confirm")
                if self.action == "deny":
                    self.record["device_result"] = "aborted"
                resp, url = self.navigate("POST", urljoin(url, confirm_form["action"]), data)
            elif login_form is not None:
                if self.action == "wrong-password":
                    if parser.error_text:  # the re-rendered page: record it and stop
                        self.record["error"] = parser.error_text
                        return
                    data = form_data(login_form, "submit", login=user, password=password + "-wrong")
                else:
                    if parser.error_text:
                        raise RuntimeError(f"login refused: {parser.error_text}")
                    data = form_data(login_form, "submit", login=user, password=password)
                resp, url = self.navigate("POST", urljoin(url, login_form["action"]), data)
            elif consent_form is not None:
                button = "deny" if self.action == "deny" else "allow"
                data = form_data(consent_form, button)
                resp, url = self.navigate("POST", urljoin(url, consent_form["action"]), data)
            elif (len(parser.forms) == 1 and "document.forms[0].submit()" in resp.text
                  and all(i.get("type") == "hidden" for i in parser.forms[0]["inputs"])):
                # The provider's self-submitting form (JavaScript in a real browser).
                form = parser.forms[0]
                resp, url = self.navigate(form["method"].upper(), urljoin(url, form["action"]), form_data(form))
            else:
                detail = parser.error_text or re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", resp.text)).strip()[:300]
                raise RuntimeError(f"unexpected page {resp.status_code} at {strip_query(url)}: {detail}")
        raise RuntimeError(f"more than {MAX_STEPS} pages")


def address_after_sign_in(url: str, action: str = "login", user: Optional[str] = None,
                          password: Optional[str] = None) -> Tuple[Optional[str], Dict]:
    """Sign in at the provider for an authorization URL, in this process, and return the
    address the browser is sent to at the end without visiting it (None if it never got
    there), with the run's record: what a user pastes into woci's login_flow = manual."""
    flow = Flow(url, action, visit_callback=False)
    flow.run(user, password)
    return flow.callback_url, flow.record


def append_record(path: str, record: Dict) -> None:
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    # One write on an O_APPEND descriptor: concurrent invocations never interleave lines.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def main(argv: List[str]) -> int:
    log_path = os.environ.get("WOCI_TEST_BROWSER_LOG")
    if not log_path:
        print("browser_user.py: WOCI_TEST_BROWSER_LOG is not set", file=sys.stderr)
        return 2
    action = os.environ.get("WOCI_TEST_BROWSER_ACTION", "login") or "login"
    url = argv[1] if len(argv) > 1 else ""
    flow = None
    try:
        if action not in ACTIONS:
            raise ValueError(f"unknown WOCI_TEST_BROWSER_ACTION {action!r}")
        if not url:
            raise ValueError("no URL given")
        flow = Flow(url, action)
        flow.run()
    except BaseException as exc:  # the caller waits on us: record anything, exit 0
        if flow is None:
            flow_record = {"url": strip_query(url), "query": redacted_query(url), "action": action,
                           "callback_status": None, "callback_body": None, "pages": []}
        else:
            flow_record = flow.record
        flow_record["error"] = scrub(f"{type(exc).__name__}: {exc}")
        append_record(log_path, flow_record)
        return 0
    # Which variables reached the browser (names only): woci's secrets must not.
    flow.record["environment"] = sorted(os.environ)
    append_record(log_path, flow.record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
