"""Section 7: ensure_session() with discovery (read inside the lock, never on the fast path)
and the sign-in flows _sign_in chooses by login_flow, against the local fake provider."""

import re
from pathlib import Path
import socket
import time

import pytest

import oci_upst_session_manager as woci
from tests.unit.fakes import FakeIdentity, free_port, unsigned_jwt
from tests.unit.test_session import Browsers, make_session, seed_expired_session, wired_config, \
    write_config


@pytest.fixture
def fake():
    with FakeIdentity(tenant="ocid1.tenancy.oc1..tenant42") as identity:
        yield identity


def discoveries(fake):
    return [r for r in fake.requests if r.path == woci.DISCOVERY_PATH]


def session_with(fake, home, seams=None, **overrides):
    """make_session, then the Session's own seams (stdin_is_tty, read_line) replaced."""
    return make_session(fake, home, **overrides)._replace(**(seams or {}))


def issuer_session(fake, home, **overrides):
    """A session whose provider endpoints come from discovery only."""
    values = dict(issuer=fake.url, authz_base_url=None, token_url=None)
    values.update(overrides)
    return make_session(fake, home, **values)


def test_valid_session_never_reads_discovery(fake, tmp_path):
    m = issuer_session(fake, tmp_path)
    Path(m.paths.token).write_text(unsigned_jwt({"exp": int(time.time()) + 3600}))
    write_config(m, wired_config(m))
    woci.ensure_session(m)
    assert fake.requests == []
    assert not Path(m.paths.discovery).exists()


def test_renewal_reads_discovery_once_and_uses_its_endpoints(fake, tmp_path):
    """An expired session with issuer only: the document is fetched inside the lock, kept,
    and its token endpoint does the refresh; the next renewal uses the kept copy."""
    m = issuer_session(fake, tmp_path, token_exchange_url=None)
    seed_expired_session(m, fake)
    woci.ensure_session(m)
    assert len(discoveries(fake)) == 1
    assert len(fake.grants("refresh_token")) == 1
    # The exchange went to the discovered token endpoint (the default exchange URL).
    assert fake.grants(woci.TOKEN_EXCHANGE_GRANT)[0].path == "/token"
    assert Path(m.paths.discovery).exists()

    Path(m.paths.token).write_text(unsigned_jwt({"exp": int(time.time()) - 10}))
    woci.ensure_session(m)
    assert len(discoveries(fake)) == 1 and len(fake.grants("refresh_token")) == 2


def test_a_renewal_at_one_host_opens_one_connection(fake, tmp_path):
    """Discovery, the refresh grant and the exchange at one host (an OCI identity domain is
    provider and exchange) share one connection: one TCP and TLS handshake, not three."""
    m = issuer_session(fake, tmp_path, token_exchange_url=None)
    seed_expired_session(m, fake)
    woci.ensure_session(m)
    assert len(fake.requests) == 3   # discovery, refresh grant, exchange
    assert len(fake.server.connections) == 1


def test_a_sign_in_at_one_host_opens_one_connection(fake, tmp_path):
    """The browser sign-in's code grant and the exchange reuse the discovery's connection."""
    m = issuer_session(fake, tmp_path, token_exchange_url=None)
    woci.ensure_session(m, renewal=woci.Renewal.SIGN_IN)
    assert [r.form.get("grant_type") for r in fake.requests[1:]] == [
        "authorization_code", woci.TOKEN_EXCHANGE_GRANT]
    assert len(fake.server.connections) == 1


def test_a_wrong_issuer_stops_the_renewal_before_any_grant(fake, tmp_path):
    m = issuer_session(fake, tmp_path, issuer=fake.url + "/")   # the document says no "/"
    seed_expired_session(m, fake)
    before = Path(m.paths.refresh_token).read_text()
    with pytest.raises(woci.DiscoveryError, match="not the configured"):
        woci.ensure_session(m)
    assert fake.grants("refresh_token") == []
    assert Path(m.paths.refresh_token).read_text() == before


def test_device_flow_signs_in_without_a_browser(fake, tmp_path, monkeypatch, capsys):
    """login_flow = device: the code on stderr, polls until approved, refresh token saved,
    the exchange done; no browser opened."""
    monkeypatch.setattr(woci.time, "sleep", lambda seconds: None)   # the fake's interval
    browsers = Browsers(fake)
    m = issuer_session(fake, tmp_path, login_flow="device", browser=browsers)
    state = woci.ensure_session(m)
    assert browsers.urls == []
    assert fake.device_polls == 2
    assert state.token == fake.upsts[0]
    assert Path(m.paths.refresh_token).read_text() in fake.valid_refresh_tokens
    assert "enter the code: UC-1" in capsys.readouterr().err


def test_manual_flow_reads_the_pasted_address(fake, tmp_path, capsys):
    """login_flow = manual: the code grant carries the redirect_uri of the printed URL."""

    def paste(timeout):
        url = re.search(r"^    (\S+)$", capsys.readouterr().err, re.M).group(1)
        return fake.answer_for(url)

    m = session_with(fake, tmp_path, {"read_line": paste}, login_flow="manual")
    state = woci.ensure_session(m)
    (code_grant,) = fake.grants("authorization_code")
    assert code_grant.form["redirect_uri"] == m.settings.redirect_uri
    assert state.token == fake.upsts[0]


def test_browser_with_no_display_on_a_terminal_becomes_manual(fake, tmp_path, capsys,
                                                              monkeypatch):
    monkeypatch.setattr(woci.sys, "platform", "linux")
    browsers = Browsers(fake)

    def paste(timeout):
        url = re.search(r"^    (\S+)$", capsys.readouterr().err, re.M).group(1)
        return fake.answer_for(url)

    m = session_with(fake, tmp_path, {"stdin_is_tty": lambda: True, "read_line": paste},
                     browser=browsers)
    assert woci.login_flow_here(m) == "manual"
    assert "signing in with login_flow = manual" in capsys.readouterr().err
    woci.ensure_session(m)
    assert browsers.urls == []


@pytest.mark.parametrize("environ, tty", [({}, False), ({"BROWSER": "x %s"}, True),
                                          ({"DISPLAY": ":0"}, True)])
def test_browser_stays_browser_when_it_may_work_or_nobody_can_paste(fake, tmp_path, environ,
                                                                    tty, monkeypatch, capsys):
    monkeypatch.setattr(woci.sys, "platform", "linux")
    m = session_with(fake, tmp_path, {"stdin_is_tty": lambda: tty}, environ=environ)
    assert woci.login_flow_here(m) == "browser"
    assert capsys.readouterr().err == ""


def test_browser_sign_in_on_the_second_port_redeems_with_it(fake, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        first, second = busy.getsockname()[1], free_port()
        m = make_session(fake, tmp_path, redirect_port=first, redirect_ports=(first, second))
        woci.ensure_session(m)
    (code_grant,) = fake.grants("authorization_code")
    assert code_grant.form["redirect_uri"] == f"http://127.0.0.1:{second}/callback"
