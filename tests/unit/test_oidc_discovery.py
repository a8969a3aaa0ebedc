"""Section 5: the JSON GET, OpenID discovery (the document, its copy in the session folder,
a failing fetch) and the endpoints it gives the settings, against local HTTP servers."""

import json
import logging
import os
import stat
import time

import pytest

import oci_upst_session_manager as woci
from tests.unit.fakes import Answer, LocalServer, json_answer, make_settings

DAY = 24 * 3600


class Sleeps(list):
    def __call__(self, seconds):
        self.append(seconds)


def no_wait_fetch(url, what, **kwargs):
    """get_json without real backoff pauses."""
    return woci.get_json(url, what, sleep=Sleeps(), jitter=lambda: 0.0, **kwargs)


def document_for(server, issuer=None, **extra):
    document = {"issuer": issuer or server.url,
                "authorization_endpoint": server.url + "/authorize",
                "token_endpoint": server.url + "/token",
                "device_authorization_endpoint": server.url + "/device",
                "revocation_endpoint": server.url + "/revoke",
                "jwks_uri": server.url + "/jwks"}
    document.update(extra)
    return document


def issuer_settings(server, **overrides):
    values = dict(issuer=server.url, authz_base_url=None, token_url=None,
                  token_exchange_url=None)
    values.update(overrides)
    return make_settings(**values)


def discovery_requests(server):
    return [r for r in server.requests if r.path == woci.DISCOVERY_PATH]


# --- get_json ----------------------------------------------------------------------------------


def test_get_json_asks_for_json_and_retries_server_errors():
    """A GET with Accept: application/json; a 503 is retried like a POST's."""
    sleeps = Sleeps()
    with LocalServer([Answer(503, b"down"), json_answer(200, {"a": 1})]) as server:
        assert woci.get_json(server.url + "/doc", "document", sleep=sleeps,
                             jitter=lambda: 0.0) == {"a": 1}
    first, second = server.requests
    assert first.method == second.method == "GET" and first.body == b""
    assert first.headers["accept"] == "application/json"
    assert len(sleeps) == 1


def test_get_json_html_is_an_http_error_naming_the_url():
    with LocalServer([Answer(404, b"<html>no</html>", {"Content-Type": "text/html"})]) as server, \
         pytest.raises(woci.HttpError) as info:
        woci.get_json(server.url + "/doc", "discovery document")
    assert f"the discovery document at {server.url}/doc answered HTTP 404 with text/html" in \
        str(info.value)


# --- the document ------------------------------------------------------------------------------


@pytest.mark.parametrize("issuer, url", [
    ("https://idp.example", "https://idp.example/.well-known/openid-configuration"),
    ("https://idp.example/", "https://idp.example/.well-known/openid-configuration"),
    ("https://idp.example/realms/r", "https://idp.example/realms/r/.well-known/openid-configuration"),
])
def test_discovery_url_drops_a_trailing_slash(issuer, url):
    assert woci.discovery_url(issuer) == url


def test_document_for_another_issuer_is_refused():
    """Section 4.3: the issuer in the document must be exactly the configured one."""
    with pytest.raises(woci.DiscoveryError) as info:
        woci.discovery_endpoints({"issuer": "https://idp.example/"}, "https://idp.example",
                                 "https://idp.example/.well-known/openid-configuration")
    assert "is for issuer 'https://idp.example/', not the configured 'https://idp.example'" in \
        str(info.value)
    assert info.value.exit_code == 1


@pytest.mark.parametrize("document, fragment", [
    ([], "is not a JSON object"),
    ({"token_endpoint": "https://i/token"}, "names no issuer"),
    ({"issuer": "https://i", "token_endpoint": "/oauth2/v1/token"}, "unusable token_endpoint"),
    ({"issuer": "https://i", "authorization_endpoint": 7}, "unusable authorization_endpoint"),
])
def test_unusable_documents_are_discovery_errors(document, fragment):
    with pytest.raises(woci.DiscoveryError, match=fragment):
        woci.discovery_endpoints(document, "https://i", "https://i/.well-known/x")


@pytest.mark.parametrize("name", ["authorization_endpoint", "token_endpoint",
                                  "device_authorization_endpoint", "revocation_endpoint"])
def test_an_https_issuer_cannot_send_woci_to_a_plain_http_endpoint(name):
    """A document read over https that names an http:// endpoint would have woci send a
    refresh token or client secret (or the user's password, in the browser) in clear text."""
    with pytest.raises(woci.DiscoveryError) as info:
        woci.discovery_endpoints({"issuer": "https://i", name: "http://i/x"}, "https://i",
                                 "https://i/.well-known/x")
    assert name in str(info.value) and "not https" in str(info.value)


def test_an_http_issuer_may_name_http_endpoints():
    """An issuer configured as http:// (a local test provider) keeps its http:// endpoints."""
    endpoints = woci.discovery_endpoints({"issuer": "http://127.0.0.1:9",
                                          "token_endpoint": "http://127.0.0.1:9/t"},
                                         "http://127.0.0.1:9", "u")
    assert endpoints == {"token_endpoint": "http://127.0.0.1:9/t"}


def test_a_copy_naming_plain_http_endpoints_for_an_https_issuer_is_not_used(tmp_path):
    """The copy follows the document's rule: one that breaks it is fetched again."""
    path = tmp_path / "discovery.json"
    path.write_text(json.dumps({"issuer": "https://i", "fetched_at": time.time(),
                                "endpoints": {"token_endpoint": "http://i/t"}}))
    assert woci.read_discovery_cache(str(path), "https://i", time.time()) is None


@pytest.mark.parametrize("name, value", [
    ("authorization_endpoint", "https://[idp.example/authorize"),
    ("token_endpoint", "https://idp.example:99999/token"),
])
def test_a_document_naming_an_endpoint_urlsplit_cannot_parse_is_refused_and_not_kept(
        tmp_path, name, value):
    """Accepted, such an endpoint failed only at the sign-in, as an exit-2 error naming
    authz_base_url, a setting the user never set: it is the document's fault, named so."""
    path = tmp_path / woci.DISCOVERY_FILE
    with LocalServer([Answer()]) as server:
        server.respond = [json_answer(200, document_for(server, **{name: value}))]
        with pytest.raises(woci.DiscoveryError) as info:
            woci.discover(issuer_settings(server), str(path))
    message = str(info.value)
    assert f"unusable {name}" in message and "authz_base_url" not in message
    assert info.value.exit_code == 1
    assert not path.exists()


def test_a_copy_naming_an_endpoint_urlsplit_cannot_parse_is_not_used(tmp_path):
    path = tmp_path / "discovery.json"
    path.write_text(json.dumps({"issuer": "https://i", "fetched_at": time.time(),
                                "endpoints": {"authorization_endpoint": "https://[i/a"}}))
    assert woci.read_discovery_cache(str(path), "https://i", time.time()) is None


def test_endpoints_the_document_lacks_are_simply_absent():
    endpoints = woci.discovery_endpoints({"issuer": "https://i", "token_endpoint": "https://i/t"},
                                         "https://i", "u")
    assert endpoints == {"token_endpoint": "https://i/t"}


# --- the copy in the session folder ------------------------------------------------------------


def test_fetched_document_is_kept_privately_and_used_for_a_day(tmp_path):
    """The first call fetches and keeps the endpoints (0600); within a day no request."""
    path = tmp_path / "s" / woci.DISCOVERY_FILE
    with LocalServer([Answer()]) as server:
        server.respond = [json_answer(200, document_for(server))]
        settings = issuer_settings(server)
        first = woci.discover(settings, path)
        second = woci.discover(settings, path, now=lambda: time.time() + DAY - 60)
    assert first == second
    assert first["token_endpoint"] == server.url + "/token"
    assert "jwks_uri" not in first
    assert len(discovery_requests(server)) == 1
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    kept = json.loads(path.read_text())
    assert kept["issuer"] == server.url and kept["endpoints"] == first


def test_a_day_old_copy_is_fetched_again(tmp_path):
    path = tmp_path / woci.DISCOVERY_FILE
    with LocalServer([Answer()]) as server:
        server.respond = [json_answer(200, document_for(server))]
        woci.write_discovery_cache(path, server.url, {"token_endpoint": "https://old/t"},
                                   time.time() - DAY - 1)
        endpoints = woci.discover(issuer_settings(server), path)
    assert endpoints["token_endpoint"] == server.url + "/token"
    assert len(discovery_requests(server)) == 1
    assert json.loads(path.read_text())["endpoints"] == endpoints


@pytest.mark.parametrize("answer", [Answer(drop=True), Answer(503, b"down"),
                                    Answer(200, b"<html/>", {"Content-Type": "text/html"})])
def test_failing_fetch_uses_a_copy_up_to_a_week_old_with_a_warning(tmp_path, caplog, answer):
    """Dropped, 503 (after retries) or HTML: a six-day-old copy is used, with a warning."""
    path = tmp_path / woci.DISCOVERY_FILE
    with LocalServer([answer]) as server:
        woci.write_discovery_cache(path, server.url, {"token_endpoint": "https://kept/t"},
                                   time.time() - 6 * DAY)
        endpoints = woci.discover(issuer_settings(server), path, fetch=no_wait_fetch)
    assert endpoints == {"token_endpoint": "https://kept/t"}
    assert "using the copy of the discovery document from 144 h 0 min ago" in caplog.text


def test_failing_fetch_with_a_copy_over_a_week_old_is_an_error(tmp_path):
    path = tmp_path / woci.DISCOVERY_FILE
    with LocalServer([Answer(drop=True)]) as server:
        woci.write_discovery_cache(path, server.url, {"token_endpoint": "https://kept/t"},
                                   time.time() - 8 * DAY)
        with pytest.raises(woci.DiscoveryError) as info:
            woci.discover(issuer_settings(server), path, fetch=no_wait_fetch)
    message = str(info.value)
    assert woci.discovery_url(server.url) in message and "too old to use" in message
    assert info.value.exit_code == 1


def test_failing_fetch_without_a_copy_is_an_error(tmp_path):
    with LocalServer([Answer(503, b"down")]) as server, \
         pytest.raises(woci.DiscoveryError, match="failed 4 times, last with HTTP 503"):
        woci.discover(issuer_settings(server), tmp_path / woci.DISCOVERY_FILE,
                      fetch=no_wait_fetch)


def test_a_wrong_issuer_is_not_hidden_by_an_old_copy(tmp_path):
    """The fetch works but names another issuer: an error, whatever copy there is."""
    path = tmp_path / woci.DISCOVERY_FILE
    with LocalServer([Answer()]) as server:
        server.respond = [json_answer(200, document_for(server, issuer="https://else"))]
        woci.write_discovery_cache(path, server.url, {"token_endpoint": "https://kept/t"},
                                   time.time() - 2 * DAY)
        with pytest.raises(woci.DiscoveryError, match="is for issuer 'https://else'"):
            woci.discover(issuer_settings(server), path)
    assert json.loads(path.read_text())["endpoints"] == {"token_endpoint": "https://kept/t"}


@pytest.mark.parametrize("content", [
    b"not json", b"[]", b'{"issuer": "OTHER", "fetched_at": 1, "endpoints": {}}',
    b'{"issuer": "ISSUER", "fetched_at": "yesterday", "endpoints": {}}',
    b'{"issuer": "ISSUER", "fetched_at": NaN, "endpoints": {}}',
    b'{"issuer": "ISSUER", "fetched_at": 1e300, "endpoints": {}}',
    b'{"issuer": "ISSUER", "fetched_at": 1, "endpoints": {"token_endpoint": "file:///x"}}',
])
def test_an_unusable_copy_is_ignored(tmp_path, content):
    """A damaged copy, another issuer's, or one dated in the future: fetched afresh."""
    path = tmp_path / woci.DISCOVERY_FILE
    with LocalServer([Answer()]) as server:
        server.respond = [json_answer(200, document_for(server))]
        path.write_bytes(content.replace(b"ISSUER", server.url.encode()))
        endpoints = woci.discover(issuer_settings(server), path)
    assert endpoints["token_endpoint"] == server.url + "/token"
    assert len(discovery_requests(server)) == 1


def test_a_copy_that_cannot_be_written_is_a_warning(tmp_path, caplog):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    try:
        with LocalServer([Answer()]) as server:
            server.respond = [json_answer(200, document_for(server))]
            endpoints = woci.discover(issuer_settings(server), folder / woci.DISCOVERY_FILE)
    finally:
        folder.chmod(0o700)
    if os.geteuid() != 0:   # root writes anyway
        assert "cannot keep a copy of the discovery document" in caplog.text
    assert endpoints["token_endpoint"] == server.url + "/token"


# --- resolve_endpoints -------------------------------------------------------------------------


def test_plain_http_to_another_machine_draws_a_warning_naming_each_endpoint(tmp_path, caplog):
    """http:// to another host would carry the refresh token, the client secrets and the
    access token (and the user's password, in the browser) in clear text: each such endpoint
    is named in a warning. This machine (127.0.0.1, ::1, localhost) and https draw none."""
    settings = make_settings(authz_base_url="http://idp.example/authorize",
                             token_url="http://10.0.0.7:8080/token",
                             token_exchange_url="https://idp.example/exchange",
                             device_authorization_url="http://localhost:9/device")
    with caplog.at_level(logging.WARNING, logger="woci"):
        woci.resolve_endpoints(settings, tmp_path / woci.DISCOVERY_FILE)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2 and all("clear text" in line for line in lines)
    assert "http://idp.example/authorize" in lines[0] and "authz_base_url" in lines[0]
    assert "http://10.0.0.7:8080/token" in lines[1] and "token_url" in lines[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="woci"):
        woci.resolve_endpoints(make_settings(token_url="http://idp.example/token",
                                             token_exchange_url=None),
                               tmp_path / woci.DISCOVERY_FILE)
    assert len(caplog.records) == 1   # the exchange at the same URL: no second line
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="woci"):
        woci.resolve_endpoints(make_settings(token_url="http://[::1]:9/token"),
                               tmp_path / woci.DISCOVERY_FILE)
    assert caplog.records == []


def test_a_plain_http_revocation_endpoint_on_another_machine_draws_a_warning(tmp_path, caplog):
    """revocation_url carries the refresh token and the client secret too."""
    settings = make_settings(revocation_url="http://idp.example/revoke")
    with caplog.at_level(logging.WARNING, logger="woci"):
        woci.resolve_endpoints(settings, tmp_path / woci.DISCOVERY_FILE)
    (line,) = [record.getMessage() for record in caplog.records]
    assert line.startswith("revocation_url http://idp.example/revoke is plain http")


def test_an_endpoint_urlsplit_cannot_parse_draws_no_warning_and_no_traceback(tmp_path):
    """revocation_url is checked at every renewal now: a broken one must not crash it."""
    settings = make_settings(revocation_url="http://[idp.example/revoke")
    assert woci.resolve_endpoints(settings, tmp_path / woci.DISCOVERY_FILE).revocation_url


def test_a_plain_http_issuer_on_another_machine_draws_a_warning(tmp_path, caplog):
    """Its discovery document says where every secret goes: read over plain http from
    another machine, anyone on the way can point the endpoints elsewhere (even at https
    ones, which draw no warning of their own)."""
    copy = tmp_path / woci.DISCOVERY_FILE
    copy.write_text(json.dumps({"issuer": "http://idp.example", "fetched_at": time.time(),
                                "endpoints": {"authorization_endpoint": "https://a.example/a",
                                              "token_endpoint": "https://a.example/t"}}))
    settings = make_settings(issuer="http://idp.example", authz_base_url=None, token_url=None,
                             token_exchange_url=None)
    with caplog.at_level(logging.WARNING, logger="woci"):
        assert woci.resolve_endpoints(settings, copy).token_url == "https://a.example/t"
    (line,) = [record.getMessage() for record in caplog.records]
    assert "issuer http://idp.example" in line and "discovery document" in line
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="woci"):   # discovery not needed: no word
        woci.resolve_endpoints(settings._replace(authz_base_url="https://a.example/a",
                                                 token_url="https://a.example/t"), copy)
    assert caplog.records == []


def test_discovered_endpoints_fill_the_settings_and_explicit_ones_win(tmp_path):
    with LocalServer([Answer()]) as server:
        server.respond = [json_answer(200, document_for(server))]
        settings = issuer_settings(server, token_url="https://mine/token")
        resolved = woci.resolve_endpoints(settings, tmp_path / woci.DISCOVERY_FILE)
    assert resolved.authz_base_url == server.url + "/authorize"
    assert resolved.token_url == "https://mine/token"
    assert resolved.token_exchange_url == "https://mine/token"
    assert resolved.device_authorization_url == server.url + "/device"


def test_exchange_url_defaults_to_the_discovered_token_endpoint(tmp_path):
    with LocalServer([Answer()]) as server:
        server.respond = [json_answer(200, document_for(server))]
        resolved = woci.resolve_endpoints(issuer_settings(server), tmp_path / "d.json")
    assert resolved.token_exchange_url == resolved.token_url == server.url + "/token"


def test_no_discovery_when_every_needed_endpoint_is_explicit(tmp_path):
    """issuer set, but the flow's endpoints are all given: no request, settings unchanged."""
    with LocalServer([Answer(500)]) as server:
        settings = issuer_settings(server, authz_base_url="https://mine/authorize",
                                   token_url="https://mine/token",
                                   token_exchange_url="https://oci/exchange")
        assert woci.resolve_endpoints(settings, tmp_path / "d.json") == settings
    assert server.requests == []


def test_a_renewal_nobody_can_sign_in_for_needs_only_the_token_endpoint(tmp_path):
    with LocalServer([Answer(500)]) as server:
        settings = issuer_settings(server, token_url="https://mine/token")
        resolved = woci.resolve_endpoints(settings, tmp_path / "d.json", signing_in=False)
    assert resolved.token_url == "https://mine/token" and resolved.authz_base_url is None
    assert server.requests == []


def test_settings_without_an_issuer_are_left_alone(tmp_path):
    settings = make_settings()
    assert woci.resolve_endpoints(settings, tmp_path / "d.json") == settings


def test_device_flow_without_a_device_endpoint_in_the_document_is_a_configuration_error(
        tmp_path):
    with LocalServer([Answer()]) as server:
        document = document_for(server)
        del document["device_authorization_endpoint"]
        server.respond = [json_answer(200, document)]
        settings = issuer_settings(server, login_flow="device")
        with pytest.raises(woci.ConfigError) as info:
            woci.resolve_endpoints(settings, tmp_path / "d.json")
    assert "names no device_authorization_endpoint" in str(info.value)
    assert "set device_authorization_url" in str(info.value)
    assert info.value.exit_code == 2


# --- hostile copies ----------------------------------------------------------------------------


def test_a_copy_nested_too_deeply_is_no_copy(tmp_path):
    path = tmp_path / "discovery.json"
    path.write_text('{"issuer": "https://idp.example", "x": ' + "[" * 100_000 + "]" * 100_000
                    + "}")
    assert woci.read_discovery_cache(str(path), "https://idp.example", time.time()) is None


@pytest.mark.parametrize("fetched_at", [10 ** 400, -(10 ** 400)], ids=["huge", "huge-negative"])
def test_a_copy_dated_beyond_a_floats_range_is_no_copy(tmp_path, fetched_at):
    """now - fetched_at would raise OverflowError."""
    path = tmp_path / "discovery.json"
    path.write_text(json.dumps({"issuer": "https://idp.example", "fetched_at": fetched_at,
                                "endpoints": {"token_endpoint": "https://idp.example/t"}}))
    assert woci.read_discovery_cache(str(path), "https://idp.example", time.time()) is None
