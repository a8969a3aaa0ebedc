"""Same contract as browser_user.py, but a real headless Chromium plays the user.

Put into BROWSER as "<venv python> <abs path>/chromium_user.py %s". Drives
Debian's /usr/bin/chromium through PyPI playwright (never `playwright install`:
there is no network for browser downloads). Fills `login`/`password`, clicks
`#submit`, then `#allow` (or `#deny`), lets the browser reach the client's
loopback callback and saves a screenshot of that final page to
WOCI_TEST_SCREENSHOT when set.

Device flow: given the verification URL (verification_uri_complete, or the plain one with
WOCI_TEST_USER_CODE set, which it types), it submits the user code, signs in, consents and
confirms (`deny` aborts at the confirm page), as browser_user.py does.

The browser follows the provider's redirects itself; the callback's status
and body are taken from the browser's own response. For tamper-state and
drop-code the redirect chain is rewritten (see rewrite_redirects). Requests
to any host other than 127.0.0.1 are aborted.

Environment and JSON record: see browser_user.py (plus WOCI_TEST_SCREENSHOT,
WOCI_TEST_CHROMIUM, default /usr/bin/chromium).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import urljoin, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_user import (  # noqa: E402
    ACTIONS, ALLOWED_HOSTS, altered_callback, append_record, new_record, redacted_query, scrub, strip_query)

TOTAL_BUDGET = 30.0
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]


class ChromiumFlow:
    def __init__(self, url: str, action: str) -> None:
        self.url = url
        self.action = action
        self.idp_netloc = urlsplit(url).netloc
        self.deadline = time.monotonic() + TOTAL_BUDGET
        self.context = None
        self.callback_response = None
        self.callback_failure: Optional[str] = None
        self.blocked: List[str] = []
        self.record: Dict = new_record(url, action, screenshot=None, device_result=None)

    def remaining_ms(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"flow took longer than {TOTAL_BUDGET}s")
        return left * 1000

    def is_callback(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.hostname in ALLOWED_HOSTS and parts.netloc != self.idp_netloc

    def callback_target(self, url: str) -> str:
        """The callback URL as the browser will GET it, altered for tamper-state/drop-code."""
        return altered_callback(url, self.action, self.record)

    def on_route(self, route) -> None:
        request = route.request
        url = request.url
        if urlsplit(url).hostname not in ALLOWED_HOSTS:
            self.blocked.append(strip_query(url))
            route.abort()
            return
        if (self.action in ("tamper-state", "drop-code") and request.method == "POST"
                and request.is_navigation_request() and urlsplit(url).netloc == self.idp_netloc):
            self.rewrite_redirects(route)
            return
        route.continue_()

    def rewrite_redirects(self, route) -> None:
        """Let the provider's redirect chain lead to an altered callback URL.

        Chromium does not hand redirect hops to route handlers, so the 303 to
        the callback cannot be caught on its own. Instead the form POST that
        starts the chain is replayed here; the provider's one-shot resume hops
        (/auth/<uid>) are followed with the context's own HTTP client (same
        cookie jar), and the browser gets a single 303 to the first idempotent
        URL: an interaction page, or the (altered) callback.
        """
        response = route.fetch(max_redirects=0, timeout=10_000)
        location = response.headers.get("location")
        hops = 0
        while location and response.status in (301, 302, 303, 307, 308) and hops < 10:
            hops += 1
            target = urljoin(response.url, location)
            if self.is_callback(target):
                route.fulfill(status=303, headers={"Location": self.callback_target(target)}, body="")
                return
            if urlsplit(target).netloc != self.idp_netloc or not urlsplit(target).path.startswith("/auth/"):
                route.fulfill(status=303, headers={"Location": target}, body="")
                return
            response = self.context.request.get(target, max_redirects=0, timeout=10_000)
            location = response.headers.get("location")
        route.fulfill(response=response)

    def on_response(self, response) -> None:
        # Only record; the body is read later from the main loop (blocking calls
        # inside sync-API event handlers can deadlock).
        if self.is_callback(response.url) and response.request.is_navigation_request():
            self.callback_response = response

    def on_request_failed(self, request) -> None:
        if self.is_callback(request.url) and request.is_navigation_request():
            self.callback_failure = scrub(f"callback request failed: {request.failure}")

    def visible(self, page, selector: str) -> bool:
        try:
            return page.locator(selector).count() > 0
        except Exception:  # navigation in progress: the DOM went away under us
            return False

    def run(self) -> None:
        if self.action == "none":
            return
        from playwright.sync_api import sync_playwright

        user = os.environ.get("WOCI_TEST_USER", "alice")
        password = os.environ.get("WOCI_TEST_PASSWORD", "wonderland-42")
        executable = os.environ.get("WOCI_TEST_CHROMIUM", "/usr/bin/chromium")
        profile = tempfile.mkdtemp(prefix="woci-chromium-")
        try:
            with sync_playwright() as pw:
                context = pw.chromium.launch_persistent_context(
                    profile, executable_path=executable, headless=True, args=CHROMIUM_ARGS,
                    timeout=self.remaining_ms(),
                )
                try:
                    self._drive(context, user, password)
                finally:
                    context.close()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    def _drive(self, context, user: str, password: str) -> None:
        self.context = context
        context.route("**/*", self.on_route)
        page = context.pages[0] if context.pages else context.new_page()
        page.on("framenavigated", lambda frame: frame == page.main_frame
                and self.record["pages"].append(strip_query(frame.url)))
        page.on("response", self.on_response)
        page.on("requestfailed", self.on_request_failed)
        page.goto(self.url, wait_until="load", timeout=self.remaining_ms())
        submitted_wrong = False
        while True:
            self.remaining_ms()  # raises when the budget is spent
            if self.callback_failure:
                self.record["error"] = self.callback_failure
                break
            if self.callback_response is not None and self.is_callback(page.url):
                page.wait_for_load_state("load", timeout=self.remaining_ms())
                response = self.callback_response
                if self.record["callback_keys"] is None:  # not rewritten: take what the browser got
                    self.callback_target(response.url)
                body = response.text()
                self.record["callback_status"] = response.status
                self.record["callback_body"] = body[:8000]
                self.record["final_status"] = response.status
                self.record["final_body"] = body[:8000]
                break
            if self.visible(page, "#device-success"):  # device flow: nothing to call back
                self.record["device_result"] = "success"
                self.record["final_body"] = page.content()[:8000]
                break
            if self.record["device_result"] == "aborted":  # the provider's "interrupted" page
                page.wait_for_load_state("load", timeout=self.remaining_ms())
                self.record["final_body"] = page.content()[:8000]
                break
            if self.visible(page, "#submit-code") and not self.visible(page, "#error"):
                # Device flow: verification_uri_complete pre-fills the user code; with the
                # plain verification_uri the user types it.
                user_code = os.environ.get("WOCI_TEST_USER_CODE")
                if user_code:
                    page.fill("input[name=user_code]", user_code, timeout=self.remaining_ms())
                with page.expect_navigation(wait_until="load", timeout=self.remaining_ms()):
                    page.click("#submit-code", timeout=self.remaining_ms())
                continue
            if self.visible(page, "#confirm"):
                button = "#abort" if self.action == "deny" else "#confirm"
                if self.action == "deny":
                    self.record["device_result"] = "aborted"
                with page.expect_navigation(wait_until="load", timeout=self.remaining_ms()):
                    page.click(button, timeout=self.remaining_ms())
                continue
            if self.visible(page, "input[name=login]"):
                if self.action == "wrong-password" and submitted_wrong and self.visible(page, "#error"):
                    self.record["error"] = page.locator("#error").inner_text(timeout=self.remaining_ms())
                    self.record["final_status"] = 200
                    self.record["final_body"] = page.content()[:8000]
                    break
                typed = password + "-wrong" if self.action == "wrong-password" else password
                submitted_wrong = self.action == "wrong-password"
                page.fill("input[name=login]", user, timeout=self.remaining_ms())
                page.fill("input[name=password]", typed, timeout=self.remaining_ms())
                with page.expect_navigation(wait_until="load", timeout=self.remaining_ms()):
                    page.click("#submit", timeout=self.remaining_ms())
                continue
            if self.visible(page, "#allow"):
                button = "#deny" if self.action == "deny" else "#allow"
                with page.expect_navigation(wait_until="commit", timeout=self.remaining_ms()):
                    page.click(button, timeout=self.remaining_ms())
                continue
            if self.visible(page, "#error"):
                raise RuntimeError(f"provider error page: {page.locator('body').inner_text()[:300]}")
            page.wait_for_timeout(100)
        if self.blocked:
            self.record["error"] = f"blocked non-loopback requests: {self.blocked}"
        shot = os.environ.get("WOCI_TEST_SCREENSHOT")
        if shot:
            page.screenshot(path=shot, timeout=self.remaining_ms())
            self.record["screenshot"] = shot


def main(argv: List[str]) -> int:
    log_path = os.environ.get("WOCI_TEST_BROWSER_LOG")
    if not log_path:
        print("chromium_user.py: WOCI_TEST_BROWSER_LOG is not set", file=sys.stderr)
        return 2
    action = os.environ.get("WOCI_TEST_BROWSER_ACTION", "login") or "login"
    url = argv[1] if len(argv) > 1 else ""
    flow: Optional[ChromiumFlow] = None
    try:
        if action not in ACTIONS:
            raise ValueError(f"unknown WOCI_TEST_BROWSER_ACTION {action!r}")
        if not url:
            raise ValueError("no URL given")
        flow = ChromiumFlow(url, action)
        flow.run()
    except BaseException as exc:  # the caller waits on us: record anything, exit 0
        record = flow.record if flow is not None else {
            "url": strip_query(url), "query": redacted_query(url), "action": action,
            "callback_status": None, "callback_body": None, "pages": [],
        }
        record["error"] = scrub(f"{type(exc).__name__}: {exc}")
        append_record(log_path, record)
        return 0
    append_record(log_path, flow.record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
