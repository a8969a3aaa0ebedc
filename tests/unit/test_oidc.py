"""Section 5: the form POST (auth, retries, errors), the grants, the callback server and the
browser sign-in, against real local HTTP servers."""

import base64
import json
import logging
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse

import pytest
import requests
import urllib3.response

import oci_upst_session_manager as woci
from tests.unit.fakes import (
    NO_PROXY,
    Answer,
    LocalServer,
    SlowServer,
    free_port,
    json_answer,
    make_settings,
    s256,
)

OK = json_answer(200, {"access_token": "at-1", "refresh_token": "rt-2"})


class Sleeps(list):
    """A sleep that records the delays instead of waiting."""

    def __call__(self, seconds):
        self.append(seconds)


def post(server, form=None, basic=None, sleep=None, path="/token", http=None):
    return woci.post_form(server.url + path, form or {"a": "1"}, "token endpoint", basic,
                          sleep=sleep if sleep is not None else Sleeps(),
                          jitter=lambda: 0.0, http=http)


# --- post_form -----------------------------------------------------------------------------------


def test_form_is_url_encoded_with_json_accept():
    """The body is application/x-www-form-urlencoded with every field; JSON is asked for."""
    with LocalServer([OK]) as server:
        answer = post(server, {"grant_type": "refresh_token", "scope": "openid offline_access",
                               "odd": "a&b=c"})
    assert answer == {"access_token": "at-1", "refresh_token": "rt-2"}
    (request,) = server.requests
    assert request.method == "POST" and request.path == "/token"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["accept"] == "application/json"
    assert request.form == {"grant_type": "refresh_token", "scope": "openid offline_access",
                            "odd": "a&b=c"}


@pytest.fixture
def netrc_home(tmp_path, monkeypatch):
    """A HOME whose ~/.netrc (also named by NETRC) has credentials for 127.0.0.1."""
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-pass\n")
    netrc.chmod(0o600)
    # requests reads ~/.netrc from the process environment: there is no seam but this.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(netrc))
    return tmp_path


def test_netrc_is_never_used(netrc_home):
    """A public client sends no Authorization even with a netrc for the host; a confidential
    client sends its own Basic, not the netrc's."""
    with LocalServer([OK]) as server:
        requests.post(server.url + "/control", data={"x": "1"}, timeout=5)
        woci.refresh_grant(make_settings(token_url=server.url + "/token"), "rt-1")
        woci.refresh_grant(make_settings(token_url=server.url + "/token",
                                         auth_client_secret="idp-secret"), "rt-1")
    control, public, confidential = server.requests
    assert control.basic == ("netrc-user", "netrc-pass")  # the netrc would be picked up
    assert "authorization" not in public.headers
    assert public.form["client_id"] == "idp-client"
    assert confidential.basic == ("idp-client", "idp-secret")
    assert confidential.form["client_id"] == "idp-client"


def test_retries_server_errors_then_succeeds():
    """500, 502, then 200: three requests, two backoff waits, the JSON answer."""
    sleeps = Sleeps()
    with LocalServer([json_answer(500, {}), Answer(502, b"bad gateway"), OK]) as server:
        assert post(server, sleep=sleeps)["access_token"] == "at-1"
    assert len(server.requests) == 3
    assert sleeps == [0.25, 0.5]
    # each retry on a connection of its own: behind a balancer, maybe another server
    assert len(server.connections) == 3


def test_calls_sharing_a_client_share_its_connection():
    """A renewal's calls to one host go over one connection (one TCP and TLS handshake)."""
    with LocalServer([OK]) as server, woci.open_http() as http:
        for _ in range(3):
            assert post(server, http=http)["access_token"] == "at-1"
    assert len(server.requests) == 3 and len(server.connections) == 1


def test_429_retry_after_is_honoured():
    """429 with Retry-After: 7 waits 7 s (recorded, not slept), then succeeds."""
    sleeps = Sleeps()
    with LocalServer([json_answer(429, {"error": "slow_down"}, **{"Retry-After": "7"}),
                      OK]) as server:
        assert post(server, sleep=sleeps)["access_token"] == "at-1"
    assert sleeps == [7.0]


def test_dropped_connection_is_retried():
    """A connection closed without an answer is retried."""
    sleeps = Sleeps()
    with LocalServer([Answer(drop=True), OK]) as server:
        assert post(server, sleep=sleeps)["access_token"] == "at-1"
    assert len(server.requests) == 2 and len(sleeps) == 1


def test_gives_up_after_the_attempts_naming_the_url():
    """Always 503: HTTP_ATTEMPTS requests, then HttpError naming the URL and the last status."""
    sleeps = Sleeps()
    with LocalServer([Answer(503, b"down")]) as server, pytest.raises(woci.HttpError) as info:
        post(server, sleep=sleeps)
    assert len(server.requests) == woci.HTTP_ATTEMPTS
    assert len(sleeps) == woci.HTTP_ATTEMPTS - 1
    message = str(info.value)
    assert f"{server.url}/token" in message
    assert f"failed {woci.HTTP_ATTEMPTS} times" in message and "HTTP 503" in message
    assert info.value.exit_code == 1


def test_unreachable_endpoint_gives_up_with_connection_refused():
    """Nothing listening: retried, then 'connection refused' with the URL."""
    port = free_port()
    sleeps = Sleeps()
    url = f"http://127.0.0.1:{port}/token"
    with pytest.raises(woci.HttpError) as info:
        woci.post_form(url, {}, "token endpoint", sleep=sleeps, jitter=lambda: 0.0)
    assert url in str(info.value) and "connection refused" in str(info.value)
    assert len(sleeps) == woci.HTTP_ATTEMPTS - 1


def test_html_answer_is_an_http_error():
    """An HTML page instead of JSON: HttpError saying so, not retried."""
    with LocalServer([Answer(200, b"<html>login</html>", {"Content-Type": "text/html"})]) as srv, \
         pytest.raises(woci.HttpError) as info:
        post(srv)
    assert "HTTP 200 with text/html instead of JSON" in str(info.value)
    assert f"{srv.url}/token" in str(info.value)
    assert len(srv.requests) == 1


def test_oauth_error_json_is_an_oauth_error():
    """400 with error/error_description: OAuthError carrying both, not retried."""
    with LocalServer([json_answer(400, {"error": "invalid_scope",
                                        "error_description": "scope x unknown"})]) as server, \
         pytest.raises(woci.OAuthError) as info:
        post(server)
    assert info.value.error == "invalid_scope" and info.value.status == 400
    assert "refused the request: invalid_scope: scope x unknown" in str(info.value)
    assert len(server.requests) == 1


def echoing(status):
    """A server that quotes, in its error_description, the body and the Authorization header
    it received (some do, in debug modes and in error pages behind gateways)."""
    def respond(request):
        quoted = f"got {request.body.decode()} with {request.headers.get('authorization')}"
        return json_answer(status, {"error": "invalid_request", "error_description": quoted})
    return respond


SECRET_FIELDS = {"refresh_token": "rt+secret/value=1", "code_verifier": "verifier-secret-2",
                 "subject_token": "access-token-secret-3", "code": "code-secret-4",
                 "device_code": "device-code-secret-5", "token": "revoked-secret-6"}


@pytest.mark.parametrize("status", [400, 200])
def test_secrets_a_server_echoes_are_not_repeated_in_the_error(status):
    """The form's tokens and the Basic password, as sent or URL-encoded, and the Basic header
    itself never reach the message, whatever the server quotes back."""
    form = {"grant_type": "refresh_token", "client_id": "idp-client", **SECRET_FIELDS}
    with LocalServer(echoing(status)) as server, pytest.raises(woci.OAuthError) as info:
        post(server, form, basic=("idp-client", "client-secret+7"))
    message = str(info.value)
    assert "grant_type=refresh_token" in message   # what is not secret is still quoted
    basic = base64.b64encode(b"idp-client:client-secret+7").decode()
    for secret in [*SECRET_FIELDS.values(), "client-secret+7", basic]:
        assert secret not in message and urllib.parse.quote_plus(secret) not in message


def test_only_the_servers_words_are_redacted_not_the_url_or_woci_s_own():
    """A secret that is also a word ("secret", "request") is taken out of what the server
    said, not out of the URL or woci's own words around it."""
    form = {"grant_type": "refresh_token", "refresh_token": "secret", "code": "request"}
    answer = json_answer(400, {"error": "invalid_grant",
                               "error_description": "secret is wrong, request refused"})
    with LocalServer([answer]) as server, pytest.raises(woci.OAuthError) as info:
        post(server, form, path="/secret/token")
    assert str(info.value) == (f"the token endpoint at {server.url}/secret/token refused the "
                               "request: invalid_grant: *** is wrong, *** refused")


def test_the_secrets_searched_for_are_each_named_once():
    assert woci._sent_secrets({"refresh_token": "rt-plain", "code": "a b"}, None) == [
        "rt-plain", "a b", "a+b", "a%20b"]


def test_a_client_secret_http_basic_cannot_carry_is_a_configuration_error():
    """requests encodes Basic credentials as Latin-1: a secret with a character outside it
    raised UnicodeEncodeError (a traceback, naming the character and its place in the
    secret). It is one line naming the problem, exit 2, nothing sent, no part of it shown."""
    with LocalServer([OK]) as server, pytest.raises(woci.ConfigError) as info:
        post(server, basic=("idp-client", "p\u00e4ss-\u20ac-xyzzy"))
    message = str(info.value)
    assert "Latin-1" in message and "token endpoint" in message
    assert "\u20ac" not in message and "xyzzy" not in message and "position" not in message
    assert info.value.exit_code == 2 and info.value.__cause__ is None
    assert server.requests == []


def test_error_object_with_status_200_is_still_an_error():
    """A 200 whose JSON holds `error` is an OAuthError."""
    with LocalServer([json_answer(200, {"error": "access_denied"})]) as server, \
         pytest.raises(woci.OAuthError, match="access_denied"):
        post(server)


def test_clock_skew_is_mentioned_when_the_server_date_is_10_minutes_off():
    """Server clock 10 min ahead: the error says this machine is about 600 s behind."""
    with LocalServer([json_answer(400, {"error": "invalid_grant"})], date_offset=600) as server, \
         pytest.raises(woci.OAuthError) as info:
        post(server)
    message = str(info.value)
    assert "this machine's clock is" in message and "behind the server's" in message
    assert any(f"{n} s behind" in message for n in range(595, 606))


def test_clock_skew_is_mentioned_after_failed_retries():
    """Giving up after 503s from a server 10 min behind says this clock is ahead."""
    with LocalServer([Answer(503, b"down")], date_offset=-600) as server, \
         pytest.raises(woci.HttpError, match="ahead of the server's"):
        post(server)


def test_no_clock_note_when_clocks_agree():
    """A server with the same time gets no clock remark."""
    with LocalServer([json_answer(400, {"error": "invalid_grant"})]) as server, \
         pytest.raises(woci.OAuthError) as info:
        post(server)
    assert "clock" not in str(info.value)


# --- grants --------------------------------------------------------------------------------------


def test_refresh_grant_sends_the_refresh_token_and_returns_the_rotated_one():
    """grant_type=refresh_token, the token, client_id; the answer's tokens come back."""
    with LocalServer([OK]) as server:
        tokens = woci.refresh_grant(make_settings(token_url=server.url + "/token"), "rt-1")
    assert tokens == ("at-1", "rt-2")
    assert server.requests[0].form == {"grant_type": "refresh_token", "refresh_token": "rt-1",
                                       "client_id": "idp-client"}


def test_refresh_grant_invalid_grant_is_grant_refused():
    """invalid_grant means only a new sign-in helps: GrantRefused."""
    with LocalServer([json_answer(400, {"error": "invalid_grant"})]) as server, \
         pytest.raises(woci.GrantRefused) as info:
        woci.refresh_grant(make_settings(token_url=server.url + "/token"), "rt-1")
    assert "refused the stored refresh token" in str(info.value)
    assert "rt-1" not in str(info.value)


def test_refresh_grant_other_errors_are_not_grant_refused():
    """invalid_client is an AuthError saying 'refresh failed', not a reason to sign in."""
    with LocalServer([json_answer(401, {"error": "invalid_client"})]) as server, \
         pytest.raises(woci.AuthError) as info:
        woci.refresh_grant(make_settings(token_url=server.url + "/token"), "rt-1")
    assert not isinstance(info.value, woci.GrantRefused)
    assert "refresh failed" in str(info.value) and "invalid_client" in str(info.value)


def test_answer_without_access_token_is_an_auth_error():
    """A 200 without access_token cannot be exchanged: AuthError naming the endpoint."""
    with LocalServer([json_answer(200, {"refresh_token": "rt"})]) as server, \
         pytest.raises(woci.AuthError, match="without an access_token"):
        woci.refresh_grant(make_settings(token_url=server.url + "/token"), "rt-1")


def test_answer_without_refresh_token_keeps_none():
    """No refresh_token in the answer: None, so the stored one is kept."""
    with LocalServer([json_answer(200, {"access_token": "at"})]) as server:
        assert woci.refresh_grant(make_settings(token_url=server.url + "/token"), "r") == (
            "at", None)


def test_redeem_code_sends_code_verifier_and_redirect_uri():
    """The code grant carries code, redirect_uri, client_id and the PKCE verifier."""
    with LocalServer([OK]) as server:
        settings = make_settings(token_url=server.url + "/token", redirect_port=8765)
        woci.redeem_code(settings, "the-code", "the-verifier")
    assert server.requests[0].form == {
        "grant_type": "authorization_code", "code": "the-code",
        "redirect_uri": "http://127.0.0.1:8765/callback", "client_id": "idp-client",
        "code_verifier": "the-verifier"}


def test_redeem_code_refused_is_a_sign_in_failure():
    """A refused code is an AuthError starting 'sign-in failed'."""
    with LocalServer([json_answer(400, {"error": "invalid_grant"})]) as server, \
         pytest.raises(woci.AuthError, match="^sign-in failed"):
        woci.redeem_code(make_settings(token_url=server.url + "/token"), "c", "v")


# --- the callback server -------------------------------------------------------------------------


def get(url):
    """GET a URL; (status, body) even for error statuses."""
    try:
        with NO_PROXY.open(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def callback():
    """A callback server on a free port expecting state 'st8'; closed afterwards."""
    port = free_port()
    server = woci.open_callback_server(port, "/callback", "st8")
    server.base = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        server.server_close()


def visit_and_wait(server, *paths):
    """Visit the paths in a thread (as the browser) while waiting for the result here."""
    pages = []

    def browser():
        for path in paths:
            pages.append(get(server.base + path))

    thread = threading.Thread(target=browser, daemon=True)
    thread.start()
    result = woci.wait_for_callback(server, 10)
    thread.join(timeout=10)
    return result, pages


def test_callback_success_page(callback):
    """The right state and a code: the code, and a 200 'Signed in' page."""
    result, pages = visit_and_wait(callback, "/callback?code=c-1&state=st8")
    assert result == ("c-1", None)
    assert pages[0][0] == 200 and "Signed in" in pages[0][1]
    assert callback.server_address[0] == "127.0.0.1"


def test_callback_error_from_the_provider(callback):
    """error=access_denied with a description: both shown to the user, escaped in the page."""
    result, pages = visit_and_wait(
        callback, "/callback?error=access_denied&error_description=<b>User+said+no</b>&state=st8")
    assert result.code is None
    assert result.error == "the provider refused the sign-in: access_denied: <b>User said no</b>"
    status, body = pages[0]
    assert status == 400 and "&lt;b&gt;User said no&lt;/b&gt;" in body and "<b>" not in body


def test_callback_wrong_or_missing_state_is_ignored(callback):
    """Another state or none (any web page can send one): a 400 page, and the wait goes on to
    the real answer; the forged code is never the result."""
    result, pages = visit_and_wait(callback, "/callback?code=forged&state=forged",
                                   "/callback?code=forged", "/callback?code=c-1&state=st8")
    assert result == ("c-1", None)
    assert [status for status, _ in pages] == [400, 400, 200]
    assert "did not come from woci" in pages[0][1]


def test_a_flood_of_forged_callbacks_draws_one_warning(callback, caplog):
    """Any local process can send the callback requests without the state: the user hears of
    it once, not once a request (a flood would scroll the sign-in URL out of sight)."""
    forged = [f"/callback?code=forged&state=forged-{n}" for n in range(20)]
    with caplog.at_level(logging.WARNING, logger="woci"):
        result, pages = visit_and_wait(callback, *forged, "/callback?code=c-1&state=st8")
    assert result == ("c-1", None) and [status for status, _ in pages] == [400] * 20 + [200]
    assert len([r for r in caplog.records if "did not come from" in r.getMessage()]) == 1


def test_callback_missing_code(callback):
    """The right state but no code: 'no authorization code'."""
    result, _ = visit_and_wait(callback, "/callback?state=st8")
    assert result == (None, "the sign-in answer carried no authorization code")


def test_stray_requests_do_not_end_the_wait(callback):
    """/favicon.ico and other paths get a 404 and the wait goes on to the real callback."""
    result, pages = visit_and_wait(callback, "/favicon.ico", "/other?code=x&state=st8",
                                   "/callback?code=c-2&state=st8")
    assert result == ("c-2", None)
    assert [status for status, _ in pages] == [404, 404, 200]


def test_callback_wait_times_out_with_a_clear_message(callback):
    """Nobody comes back: AuthError 'timed out' naming login_timeout, within the deadline."""
    start = time.monotonic()
    with pytest.raises(woci.AuthError) as info:
        woci.wait_for_callback(callback, 0.3)
    assert time.monotonic() - start < 2
    assert "sign-in timed out" in str(info.value) and "login_timeout" in str(info.value)


def test_idle_connection_does_not_block_the_callback(callback):
    """A browser's unused preconnect socket must not stall the wait: the real callback that
    follows it is still answered, within the login deadline."""
    idle = socket.create_connection(callback.server_address)
    outcome = {}

    def waiter():
        try:
            outcome["result"] = woci.wait_for_callback(callback, 4)
        except woci.WociError as exc:
            outcome["result"] = exc

    def browser():
        try:
            outcome["page"] = get(callback.base + "/callback?code=c-3&state=st8")
        except OSError as exc:
            outcome["page"] = exc

    threads = [threading.Thread(target=waiter, daemon=True),
               threading.Thread(target=browser, daemon=True)]
    try:
        for thread in threads:
            thread.start()
        threads[0].join(timeout=5)
        stalled = threads[0].is_alive()
    finally:
        idle.close()
        for thread in threads:
            thread.join(timeout=6)
    assert not stalled, "wait_for_callback stayed blocked on an idle connection past its deadline"
    assert outcome["result"] == ("c-3", None)
    assert outcome["page"][0] == 200


def reset_after_sending(address, request: bytes) -> None:
    """A client that sends a request and resets the connection before the answer."""
    client = socket.create_connection(address)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sendall(request)
    client.close()


def test_clients_that_reset_their_connection_print_no_traceback(callback, capsys):
    """Any local process may connect and go away mid-answer: no traceback reaches the user's
    terminal, and the real answer is still taken."""
    result = {}
    waiter = threading.Thread(target=lambda: result.update(
        got=woci.wait_for_callback(callback, 10)), daemon=True)
    waiter.start()
    for _ in range(5):
        reset_after_sending(callback.server_address,
                            b"GET /callback?code=forged&state=forged HTTP/1.1\r\n\r\n")
        reset_after_sending(callback.server_address, b"GET /favicon.ico HTTP/1.1\r\n\r\n")
    time.sleep(0.3)   # the handler threads of the resets have written what they write
    status, _ = get(callback.base + "/callback?code=c-4&state=st8")
    waiter.join(timeout=10)
    assert status == 200 and result["got"] == ("c-4", None)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err


def test_callback_port_in_use_is_an_auth_error():
    """Port taken: AuthError naming the port and redirect_port."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(woci.AuthError) as info:
            woci.open_callback_server(port, "/callback", "s")
    assert f"port {port} on 127.0.0.1 is in use" in str(info.value)
    assert "redirect_port" in str(info.value)


# --- browser_sign_in -----------------------------------------------------------------------------


class Browser:
    """An open_browser that records the authorize URL and answers the callback itself."""

    def __init__(self, answer=lambda query: {"code": "the-code", "state": query["state"]}):
        self.answer = answer
        self.urls = []
        self.pages = []
        self.done = threading.Event()

    def __call__(self, url):
        self.urls.append(url)
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        params = self.answer(query)
        if params is not None:
            self.pages.append(get(woci.add_query(query["redirect_uri"], params)))
        self.done.set()
        return True

    @property
    def query(self):
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.urls[0]).query))


def test_browser_sign_in_sends_a_pkce_authorize_request(capsys):
    """The authorize URL has every parameter; the verifier returned matches the challenge."""
    port = free_port()
    settings = make_settings(authz_base_url="https://idp.example/authorize?tenant=t1",
                             redirect_port=port, scope="openid offline_access email")
    browser = Browser()
    code, verifier, redirect_uri = woci.browser_sign_in(settings, browser)
    assert code == "the-code"
    assert redirect_uri == f"http://127.0.0.1:{port}/callback"
    query = browser.query
    assert browser.urls[0].startswith("https://idp.example/authorize?")
    assert query["tenant"] == "t1"
    assert query["response_type"] == "code"
    assert query["client_id"] == "idp-client"
    assert query["redirect_uri"] == f"http://127.0.0.1:{port}/callback"
    assert query["scope"] == "openid offline_access email"
    assert len(query["state"]) >= 32
    assert query["code_challenge_method"] == "S256"
    assert query["code_challenge"] == s256(verifier)
    assert "prompt" not in query
    assert browser.done.wait(5) and browser.pages[0][0] == 200
    out, err = capsys.readouterr()
    assert out == ""
    assert browser.urls[0] in err


def test_browser_sign_in_sends_prompt_when_set():
    """prompt = consent in the settings: prompt=consent on the authorize URL."""
    browser = Browser()
    woci.browser_sign_in(make_settings(redirect_port=free_port(), prompt="consent"), browser)
    assert browser.query["prompt"] == "consent"


def test_browser_sign_in_states_differ_between_sign_ins():
    """Each sign-in has its own random state and verifier."""
    first, second = Browser(), Browser()
    v1 = woci.browser_sign_in(make_settings(redirect_port=free_port()), first).verifier
    v2 = woci.browser_sign_in(make_settings(redirect_port=free_port()), second).verifier
    assert first.query["state"] != second.query["state"] and v1 != v2


def test_browser_sign_in_refused_by_the_user():
    """The provider redirects with access_denied: AuthError with the provider's words."""
    browser = Browser(lambda q: {"error": "access_denied", "error_description": "no thanks",
                                 "state": q["state"]})
    with pytest.raises(woci.AuthError, match="access_denied: no thanks"):
        woci.browser_sign_in(make_settings(redirect_port=free_port()), browser)


def test_browser_sign_in_times_out_and_frees_the_port():
    """A browser that never comes back: 'timed out', and the port can be used again."""
    port = free_port()
    with pytest.raises(woci.AuthError, match="timed out"):
        woci.browser_sign_in(make_settings(redirect_port=port, login_timeout=0.3),
                             Browser(lambda q: None))
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))



# --- revocation and the doctor's probe -------------------------------------------------------------


def test_revocation_sends_rfc_7009_fields_and_accepts_an_empty_answer():
    """token, token_type_hint=refresh_token, client_id; Basic with a secret; 200 with an
    empty body is success."""
    with LocalServer([Answer(200, b"")]) as server:
        settings = make_settings(auth_client_secret="idp-secret")
        woci.revoke_refresh_token(settings, server.url + "/revoke", "rt-gone")
    (request,) = server.requests
    assert request.path == "/revoke"
    assert request.form == {"token": "rt-gone", "token_type_hint": "refresh_token",
                            "client_id": "idp-client"}
    assert request.basic == ("idp-client", "idp-secret")


def test_revocation_refused_is_an_oauth_error():
    with LocalServer([json_answer(400, {"error": "unsupported_token_type"})]) as server:
        with pytest.raises(woci.OAuthError, match="unsupported_token_type"):
            woci.revoke_refresh_token(make_settings(), server.url + "/revoke", "rt")


def test_revocation_endpoint_is_the_ini_setting():
    assert woci.revocation_endpoint(make_settings()) is None
    assert woci.revocation_endpoint(make_settings(revocation_url="http://x/r")) == "http://x/r"


def test_probe_sends_no_credentials_and_reads_the_oauth_error_and_date():
    """An empty form, no Authorization header, one request; the error and clock skew read."""
    with LocalServer([json_answer(400, {"error": "invalid_request"})], date_offset=-600) as srv:
        probe = woci.probe_endpoint(srv.url + "/token")
    (request,) = srv.requests
    assert request.method == "POST" and request.body == b""
    assert "authorization" not in request.headers
    assert (probe.status, probe.oauth_error, probe.problem) == (400, "invalid_request", None)
    assert 590 < probe.skew < 610


def test_probe_of_a_closed_port_says_connection_refused_at_once():
    started = time.monotonic()
    probe = woci.probe_endpoint(f"http://127.0.0.1:{free_port()}/token")
    assert probe.status is None and probe.problem == "connection refused"
    assert time.monotonic() - started < 5


def test_probe_of_an_html_page_has_no_oauth_error():
    with LocalServer([Answer(404, "<html></html>", {"Content-Type": "text/html"})]) as srv:
        probe = woci.probe_endpoint(srv.url + "/nowhere")
    assert (probe.status, probe.content_type, probe.oauth_error) == (404, "text/html", None)


# --- hostile answers -----------------------------------------------------------------------------

DEEP_JSON = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("status, body", [(200, DEEP_JSON), (400, '{"error": ' + DEEP_JSON + "}")])
def test_json_nested_too_deeply_is_an_http_error(status, body):
    """An answer the JSON parser gives up on (RecursionError) is not JSON: HttpError naming
    the endpoint, no traceback."""
    answer = Answer(status, body, {"Content-Type": "application/json"})
    with LocalServer([answer]) as server, pytest.raises(woci.HttpError, match="instead of JSON"):
        post(server)


def test_a_doctor_probe_answered_with_json_nested_too_deeply_is_an_answer():
    with LocalServer([Answer(400, DEEP_JSON, {"Content-Type": "application/json"})]) as server:
        probe = woci.probe_endpoint(server.url + "/token")
    assert probe.status == 400 and probe.oauth_error is None


def test_an_error_text_from_the_server_is_shown_on_one_line_without_control_characters():
    """error and error_description are the server's text: a newline or an escape sequence in
    them must not make woci's one error line several, or reach the terminal."""
    answer = json_answer(400, {"error": "bad\nthing", "error_description": "one\r\ntwo\x1b[31m"})
    with LocalServer([answer]) as server, pytest.raises(woci.OAuthError) as info:
        post(server)
    message = str(info.value)
    assert "bad thing: one two?[31m" in message
    assert message.isprintable() and info.value.error == "bad\nthing"


def test_an_error_text_from_the_server_is_cut_short():
    with LocalServer([json_answer(400, {"error": "x" * 100_000})]) as server, \
            pytest.raises(woci.OAuthError) as info:
        post(server)
    assert len(str(info.value)) < 600 and str(info.value).endswith("...")


def test_a_callback_error_is_shown_on_one_line_without_control_characters():
    result = woci.evaluate_callback({"state": ["s"], "error": ["denied\n"],
                                     "error_description": ["a\x1b]0;owned\x07 b"]}, "s")
    assert result.error == "the provider refused the sign-in: denied: a?]0;owned? b"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_an_http_error_naming_where_it_points_even_with_json(status):
    """woci follows no redirect (a form with a refresh token must not be resent elsewhere);
    a 3xx with a JSON body is no answer either: one line naming the Location."""
    answer = json_answer(status, {"access_token": "at-from-a-redirect"},
                         Location="https://elsewhere.example/token")
    with LocalServer([answer]) as server, pytest.raises(woci.HttpError) as info:
        post(server)
    assert f"HTTP {status}" in str(info.value)
    assert "https://elsewhere.example/token" in str(info.value)
    assert len(server.requests) == 1


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"


@pytest.mark.parametrize("script", [
    [HEAD] + [b" "] * 200,                                    # the body a byte at a time
    [b"HTTP/1.1 200 OK\r\n"] + [b"X-Slow: yes\r\n"] * 200,    # the headers a line at a time
], ids=["body", "headers"])
def test_an_answer_that_trickles_in_is_cut_off_at_a_deadline(monkeypatch, script):
    """The read timeout bounds each wait for a byte, not the answer: a server (or proxy)
    sending a byte now and then would hold woci for ever. The whole answer has a deadline,
    retried like a timeout, then HttpError."""
    monkeypatch.setattr(woci, "HTTP_ANSWER_MAX_SECONDS", 0.5)
    monkeypatch.setattr(woci, "HTTP_ATTEMPTS", 2)
    with SlowServer(script, pause=0.1) as server:
        started = time.monotonic()
        with pytest.raises(woci.HttpError) as info:
            woci.post_form(server.url + "/token", {"a": "1"}, "token endpoint",
                           sleep=Sleeps(), jitter=lambda: 0.0)
        took = time.monotonic() - started
    assert took < 5, took
    assert "failed 2 times" in str(info.value) and "no complete answer within" in str(info.value)
    assert server.connections == 2


@pytest.mark.skipif(not hasattr(urllib3.response.HTTPResponse, "read1"),
                    reason="urllib3 before 2.3 has no read1: a read waits for a whole piece "
                           "(the limit _fetch's docstring names)")
def test_a_trickled_answer_cut_off_leaves_no_thread_reading_it(monkeypatch):
    """The worker that reads an answer past its deadline stops too, and closes the
    connection: in --auto-refresh, threads left reading would pile up, a socket each."""
    monkeypatch.setattr(woci, "HTTP_ANSWER_MAX_SECONDS", 0.5)
    monkeypatch.setattr(woci, "HTTP_ATTEMPTS", 1)
    with SlowServer([HEAD] + [b" "] * 200, pause=0.1) as server:
        with pytest.raises(woci.HttpError, match="no complete answer within"):
            woci.post_form(server.url + "/token", {"a": "1"}, "token endpoint",
                           sleep=Sleeps(), jitter=lambda: 0.0)
        waited_until = time.monotonic() + 3
        while time.monotonic() < waited_until and (
                server.cut_off < 1 or any(thread.name == "woci-http"
                                          for thread in threading.enumerate())):
            time.sleep(0.05)
        assert [thread.name for thread in threading.enumerate()
                if thread.name == "woci-http"] == []
        assert server.cut_off == 1


def test_an_answer_larger_than_the_limit_is_an_http_error(monkeypatch):
    monkeypatch.setattr(woci, "HTTP_ANSWER_MAX_BYTES", 1000)
    body = {"access_token": "a" * 2000}
    with LocalServer([json_answer(200, body)]) as server, \
            pytest.raises(woci.HttpError, match="more than 1000 bytes"):
        post(server)
    assert len(server.requests) == 1


def test_a_doctor_probe_of_a_server_that_trickles_is_cut_off(monkeypatch):
    monkeypatch.setattr(woci, "HTTP_ANSWER_MAX_SECONDS", 0.5)
    with SlowServer([HEAD] + [b" "] * 200, pause=0.1) as server:
        started = time.monotonic()
        probe = woci.probe_endpoint(server.url + "/token")
    assert time.monotonic() - started < 3
    assert probe.status is None and "no complete answer within" in probe.problem


def test_a_request_the_callback_cannot_handle_prints_no_traceback(callback, capfd):
    """A request target urlsplit cannot parse (any local program can send one) made
    socketserver print a traceback on woci's stderr in the middle of the sign-in; the wait
    goes on and the browser's answer still ends it."""
    def stray_then_browser():
        with socket.create_connection(callback.server_address, timeout=5) as stray:
            stray.sendall(b"GET http://[x/callback HTTP/1.1\r\nHost: x\r\n\r\n")
            stray.recv(100)
        get(callback.base + "/callback?state=st8&code=c0de")

    thread = threading.Thread(target=stray_then_browser, daemon=True)
    thread.start()
    result = woci.wait_for_callback(callback, 10)
    thread.join(timeout=10)
    assert result.code == "c0de"
    assert "Traceback" not in capfd.readouterr().err


def test_a_request_target_urlsplit_cannot_parse_is_answered_400(callback):
    def stray():
        with socket.create_connection(callback.server_address, timeout=5) as conn:
            conn.sendall(b"GET http://[x/callback HTTP/1.1\r\nHost: x\r\n\r\n")
            return conn.recv(100)

    serving = threading.Thread(target=callback.serve_forever, kwargs={"poll_interval": 0.05},
                               daemon=True)
    serving.start()
    try:
        assert stray().startswith(b"HTTP/1.0 400 ")
    finally:
        callback.shutdown()


@pytest.mark.parametrize("fault, level", [(RuntimeError("bug at /callback?code=c"), logging.WARNING),
                                          (ConnectionResetError("reset"), logging.DEBUG),
                                          (BrokenPipeError("gone"), logging.DEBUG)],
                         ids=["bug", "reset", "broken-pipe"])
def test_a_fault_in_the_callback_handler_is_a_warning_a_client_gone_is_debug(
        callback, caplog, capfd, monkeypatch, fault, level):
    """A client that resets or goes away is no news; a bug in woci's handler would leave the
    sign-in waiting silently until login_timeout: one WARNING line naming the fault's type,
    not its message (which may quote the request and its code), no traceback."""
    def evaluate(*args):
        raise fault
    def browser():
        with pytest.raises(OSError):   # the handler's fault leaves it no answer
            get(callback.base + "/callback?state=st8&code=c")

    monkeypatch.setattr(woci, "evaluate_callback", evaluate)
    thread = threading.Thread(target=browser, daemon=True)
    with caplog.at_level(logging.DEBUG, logger="woci"):
        thread.start()
        with pytest.raises(woci.AuthError, match="timed out"):
            woci.wait_for_callback(callback, 1)
        thread.join(timeout=10)
    (record,) = [r for r in caplog.records if "sign-in callback" in r.getMessage()]
    assert record.levelno == level
    if level == logging.WARNING:
        assert "RuntimeError" in record.getMessage() and "code=c" not in record.getMessage()
    else:
        assert str(fault) in record.getMessage()
    assert "\n" not in record.getMessage() and "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("refresh", ["rt-2\n[x]", "rt 2", "rt-\u00e9", "rt-\x1b"],
                         ids=["newline", "space", "non-ascii", "escape"])
def test_a_refresh_token_is_passed_on_as_issued(refresh):
    """Whether it can be stored is the store's question (the plain file cannot hold these,
    an encrypted file or the keyring can), not the token endpoint's."""
    with LocalServer([json_answer(200, {"access_token": "at-1", "refresh_token": refresh})]) \
            as server:
        tokens = woci.refresh_grant(make_settings(token_url=server.url + "/token"), "rt-1")
    assert tokens == ("at-1", refresh)


def test_a_doctor_probe_keeps_the_servers_words_to_one_plain_line():
    """--doctor prints the probe's error and content type on one line each."""
    answer = Answer(400, json.dumps({"error": "invalid_client\n\x1b[2Jowned"}),
                    {"Content-Type": "application/json\x1b[31m"})
    with LocalServer([answer]) as server:
        probe = woci.probe_endpoint(server.url + "/token")
    assert probe.oauth_error == "invalid_client ?[2Jowned"
    assert probe.content_type == "application/json?[31m"


@pytest.mark.parametrize("cut", range(285, 300, 3))
def test_a_secret_the_server_quotes_where_its_text_is_cut_short_leaves_no_part_behind(cut):
    """The server's text is cut at 300 characters: a secret quoted across that place must be
    taken out before the cut, or its first characters would be shown."""
    secret = "rt-0123456789abcdefghij"

    def respond(request):
        return json_answer(400, {"error": "invalid_grant",
                                 "error_description": "x" * cut + " " + secret + " more"})

    with LocalServer(respond) as server, pytest.raises(woci.OAuthError) as info:
        post(server, {"grant_type": "refresh_token", "refresh_token": secret})
    assert secret[:6] not in str(info.value)
