"""Section 7: ensure_session() against one local fake playing the provider's token
endpoint, OCI's token exchange and (through open_browser) the user at the browser."""

import base64
from pathlib import Path
import configparser
import hashlib
import json
import logging
import os
import stat
import time
import urllib.parse

import pytest
from cryptography.hazmat.primitives import serialization

import oci_upst_session_manager as woci
from tests.unit.fakes import FakeIdentity, free_port, json_answer, s256, unsigned_jwt


@pytest.fixture
def fake():
    with FakeIdentity(tenant="ocid1.tenancy.oc1..tenant42") as identity:
        yield identity


class Browsers:
    """Counts browser openings and forwards to the fake user (or does nothing)."""

    def __init__(self, fake=None):
        self.fake, self.urls = fake, []

    def __call__(self, url):
        self.urls.append(url)
        return self.fake.browse(url) if self.fake else True


def make_session(fake, home, can_sign_in=True, environ=None, browser=None, **overrides):
    environ = {"HOME": str(home), **(environ or {})}
    values = {"oci_config_file": home / ".oci" / "config", "redirect_port": free_port(),
                  "login_timeout": 5}
    values.update(overrides)
    settings = fake.settings(**values)
    passphrase = woci.PassphraseSource(settings, environ, ask=lambda _: pytest.fail("asked"),
                                       stdin_is_tty=lambda: False)
    session = woci.Session.open(settings, environ, passphrase, background=not can_sign_in,
                                open_browser=browser if browser is not None else Browsers(fake))
    woci.ensure_private_folder(session.paths.folder)   # as woci makes it: 0700
    return session


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def config_of(session):
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(session.settings.oci_config_file)
    return parser


def write_config(session, text):
    path = session.settings.oci_config_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def seed_expired_session(session, fake, refresh_token="rt-0", with_key=True):
    """An expired UPST, a session key and a refresh token the provider accepts."""
    Path(session.paths.token).write_text(unsigned_jwt({"exp": int(time.time()) - 10}))
    if with_key:
        woci.atomic_write(session.paths.key, woci.private_key_pem(woci.new_private_key()))
    Path(session.paths.refresh_token).write_text(refresh_token)
    fake.valid_refresh_tokens.add(refresh_token)


def wired_config(session):
    return (f"[{session.settings.profile}]\nkey_file={session.paths.key}\n"
            f"security_token_file={session.paths.token}\n")


def test_fresh_session_makes_no_request_and_takes_no_lock(fake, tmp_path):
    """A UPST valid for an hour and a wired profile: nothing is sent, nothing is written."""
    m = make_session(fake, tmp_path)
    token = unsigned_jwt({"exp": int(time.time()) + 3600})
    Path(m.paths.token).write_text(token)
    config = write_config(m, wired_config(m))
    before = config.read_bytes()
    state = woci.ensure_session(m)
    assert state.token == token
    assert fake.requests == []
    assert config.read_bytes() == before
    assert not Path(m.paths.lock).exists()


def test_expired_session_is_refreshed_with_one_grant_and_one_exchange(fake, tmp_path):
    """Exactly one refresh grant and one exchange; rotated token saved; files and profile right."""
    m = make_session(fake, tmp_path)
    seed_expired_session(m, fake)
    key_before = Path(m.paths.key).read_bytes()
    config = write_config(m, "# mine\n[other]\nregion = eu-1\n")
    state = woci.ensure_session(m)

    assert len(fake.grants("refresh_token")) == 1
    assert fake.grants("refresh_token")[0].form["refresh_token"] == "rt-0"
    assert len(fake.exchanges) == 1 and len(fake.requests) == 2
    assert fake.exchanges[0].form["subject_token"] == fake.access_tokens[0]
    upst = fake.upsts[0]
    assert state.token == upst
    assert Path(m.paths.token).read_bytes() == upst.encode()  # no trailing newline
    rotated = Path(m.paths.refresh_token).read_text()
    assert rotated != "rt-0" and rotated in fake.valid_refresh_tokens
    assert Path(m.paths.key).read_bytes() == key_before       # the existing key is reused
    for path in (m.paths.token, m.paths.key, m.paths.public_key, m.paths.refresh_token):
        assert mode_of(path) == 0o600, path
    assert mode_of(m.paths.folder) == 0o700

    text = config.read_text()
    assert text.startswith("# mine\n[other]\nregion = eu-1\n")
    profile = config_of(m)["p"]
    assert profile["key_file"] == str(m.paths.key) and os.path.isabs(profile["key_file"])
    assert profile["security_token_file"] == str(m.paths.token)
    assert os.path.isabs(profile["security_token_file"])
    assert profile["tenancy"] == "ocid1.tenancy.oc1..tenant42"
    key = serialization.load_pem_private_key(key_before, None)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.md5(der).hexdigest()
    assert profile["fingerprint"] == ":".join(digest[i:i + 2] for i in range(0, 32, 2))
    assert "region" not in profile


def test_new_key_is_made_when_there_is_none(fake, tmp_path):
    """No key yet: a new one is written, and it is the one the UPST is bound to."""
    m = make_session(fake, tmp_path)
    seed_expired_session(m, fake, with_key=False)
    woci.ensure_session(m)
    key = serialization.load_pem_private_key(Path(m.paths.key).read_bytes(), None)
    assert woci.pem_body_der(Path(m.paths.public_key).read_bytes()) == woci.public_key_der(key)
    assert base64.b64decode(fake.exchanges[0].form["public_key"]) == woci.public_key_der(key)


@pytest.mark.parametrize("profile_text, ini_region, cli_region, expected", [
    ("user=u\nregion=eu-old\n", "us-ini", None, "us-ini"),
    ("user=u\nregion=eu-old\n", "us-ini", "ap-cli", "us-ini"),
    ("user=u\nregion=eu-old\n", None, "ap-cli", "eu-old"),
    ("user=u\n", None, "ap-cli", "ap-cli"),
    ("user=u\n", None, None, None),
], ids=["ini-always", "ini-beats-cli", "cli-not-over-existing", "cli-fills-missing", "none"])
def test_region_rules(fake, tmp_path, profile_text, ini_region, cli_region, expected):
    """INI region is always written; --region only when the profile has no region yet."""
    m = make_session(fake, tmp_path, region=ini_region, cli_region=cli_region)
    seed_expired_session(m, fake)
    write_config(m, "[p]\n" + profile_text)
    woci.ensure_session(m)
    profile = config_of(m)["p"]
    assert profile.get("region") == expected
    assert profile["user"] == "u"


def test_refused_refresh_token_without_sign_in_leaves_it_alone(fake, tmp_path):
    """invalid_grant and nobody to sign in: SignInNeeded saying what to run; the file unchanged."""
    browsers = Browsers()
    m = make_session(fake, tmp_path, can_sign_in=False, browser=browsers)
    seed_expired_session(m, fake)
    fake.valid_refresh_tokens.clear()
    before = Path(m.paths.refresh_token).read_bytes()
    with pytest.raises(woci.SignInNeeded) as info:
        woci.ensure_session(m)
    assert "woci --profile p session authenticate" in str(info.value)
    assert info.value.exit_code == 1
    assert Path(m.paths.refresh_token).read_bytes() == before
    assert fake.exchanges == [] and browsers.urls == []


def test_the_command_to_sign_in_names_a_config_file_and_manager_ini_found_elsewhere(fake,
                                                                                   tmp_path):
    """SPEC 8a: the one line says what to run. A plain `woci --profile p session authenticate`
    in a terminal would read ~/.oci/config and the INIs discovered for it: an OCI config or a
    manager INI found elsewhere (flag or environment) must be named in that command."""
    elsewhere = tmp_path / "my dir"
    m = make_session(fake, tmp_path, interactive=False,
                     oci_config_file=str(elsewhere / "config"),
                     manager_config_file=str(tmp_path / "team.ini"))
    with pytest.raises(woci.SignInNeeded) as info:
        woci.ensure_session(m)
    assert (f"`woci --profile p session authenticate --config-file '{elsewhere}/config' "
            f"--manager-config {tmp_path}/team.ini`") in str(info.value)
    beside = make_session(fake, tmp_path, interactive=False,
                          oci_config_file=str(elsewhere / "config"),
                          manager_config_file=str(elsewhere / woci.MANAGER_INI_NAME))
    with pytest.raises(woci.SignInNeeded) as info:
        woci.ensure_session(beside)   # found beside that config: --config-file is enough
    assert (f"`woci --profile p session authenticate --config-file '{elsewhere}/config'`"
            in str(info.value))


def test_non_interactive_settings_never_open_a_browser(fake, tmp_path):
    """interactive = false with no refresh token: SignInNeeded, no browser."""
    browsers = Browsers(fake)
    m = make_session(fake, tmp_path, interactive=False, browser=browsers)
    with pytest.raises(woci.SignInNeeded):
        woci.ensure_session(m)
    assert browsers.urls == [] and fake.requests == []


def test_refresh_token_rotated_meanwhile_is_retried(fake, tmp_path):
    """Refused, but another process stored a new one meanwhile: retry with it, no sign-in."""
    m = make_session(fake, tmp_path, can_sign_in=False)
    seed_expired_session(m, fake, refresh_token="rt-old")
    fake.valid_refresh_tokens = {"rt-new"}

    def other_process_rotates(token):
        if token == "rt-old":
            woci.atomic_write(m.paths.refresh_token, b"rt-new")

    fake.on_refresh = other_process_rotates
    woci.ensure_session(m)
    assert [r.form["refresh_token"] for r in fake.grants("refresh_token")] == ["rt-old", "rt-new"]
    assert len(fake.exchanges) == 1
    assert Path(m.paths.refresh_token).read_text() in fake.valid_refresh_tokens


def test_exchange_failure_after_refresh_keeps_the_rotated_token(fake, tmp_path):
    """Exchange refused after a good refresh: the rotated refresh token is already saved; the
    old UPST, key and config are untouched."""
    m = make_session(fake, tmp_path)
    seed_expired_session(m, fake)
    config = write_config(m, "[p]\nuser=u\n")
    old = {p: Path(p).read_bytes() for p in (m.paths.token, m.paths.key, config)}
    fake.exchange_answer = json_answer(400, {"error": "invalid_request",
                                             "error_description": "subject token rejected"})
    with pytest.raises(woci.ExchangeError, match="subject token rejected"):
        woci.ensure_session(m)
    rotated = Path(m.paths.refresh_token).read_text()
    assert rotated != "rt-0" and rotated in fake.valid_refresh_tokens
    for path, content in old.items():
        assert Path(path).read_bytes() == content, path
    assert not Path(m.paths.public_key).exists()


def test_corrupted_token_file_is_warned_about_and_renewed(fake, tmp_path, caplog):
    """Garbage in the token file: a warning naming it, then a silent renewal."""
    m = make_session(fake, tmp_path)
    seed_expired_session(m, fake)
    Path(m.paths.token).write_bytes(b"\x00\xffgarbage")
    with caplog.at_level(logging.WARNING, logger="woci"):
        state = woci.ensure_session(m)
    assert str(m.paths.token) in caplog.text and "unusable" in caplog.text
    assert state.token == fake.upsts[0]
    assert Path(m.paths.token).read_text() == fake.upsts[0]


def test_browser_sign_in_when_no_refresh_token(fake, tmp_path):
    """No refresh token: one browser sign-in with PKCE, then the exchange; tokens saved."""
    browsers = Browsers(fake)
    m = make_session(fake, tmp_path, browser=browsers)
    state = woci.ensure_session(m)
    assert len(browsers.urls) == 1
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(browsers.urls[0]).query))
    (code_grant,) = fake.grants("authorization_code")
    assert s256(code_grant.form["code_verifier"]) == query["code_challenge"]
    assert code_grant.form["redirect_uri"] == query["redirect_uri"] == m.settings.redirect_uri
    assert fake.grants("refresh_token") == [] and len(fake.exchanges) == 1
    assert state.token == fake.upsts[0]
    assert Path(m.paths.refresh_token).read_text() in fake.valid_refresh_tokens
    assert config_of(m)["p"]["security_token_file"] == str(m.paths.token)


def test_refused_refresh_token_falls_back_to_the_browser(fake, tmp_path):
    """invalid_grant with someone at the keyboard: the browser opens once."""
    browsers = Browsers(fake)
    m = make_session(fake, tmp_path, browser=browsers)
    seed_expired_session(m, fake)
    fake.valid_refresh_tokens.clear()
    woci.ensure_session(m)
    assert len(browsers.urls) == 1
    assert Path(m.paths.refresh_token).read_text() in fake.valid_refresh_tokens


def test_force_sign_in_opens_the_browser_even_when_fresh(fake, tmp_path):
    """`session authenticate`: a browser sign-in even with a valid session and refresh token."""
    browsers = Browsers(fake)
    m = make_session(fake, tmp_path, browser=browsers)
    seed_expired_session(m, fake)
    Path(m.paths.token).write_text(unsigned_jwt({"exp": int(time.time()) + 3600}))
    woci.ensure_session(m, renewal=woci.Renewal.SIGN_IN)
    assert len(browsers.urls) == 1 and fake.grants("refresh_token") == []


def test_force_refresh_refreshes_even_when_fresh(fake, tmp_path):
    """`session refresh`: a refresh grant and exchange even with a valid session."""
    m = make_session(fake, tmp_path)
    seed_expired_session(m, fake)
    Path(m.paths.token).write_text(unsigned_jwt({"exp": int(time.time()) + 3600}))
    write_config(m, wired_config(m))
    woci.ensure_session(m, renewal=woci.Renewal.REFRESH)
    assert len(fake.grants("refresh_token")) == 1 and len(fake.exchanges) == 1


def test_fresh_session_with_unwired_profile_is_wired_without_network(fake, tmp_path):
    """Another process made the session but the profile lacks it: written, nothing sent."""
    m = make_session(fake, tmp_path)
    key = woci.new_private_key()
    Path(m.paths.key).write_bytes(woci.private_key_pem(key))
    Path(m.paths.public_key).write_bytes(woci.public_key_pem(key))
    Path(m.paths.token).write_text(fake.mint_upst(woci.public_key_der(key)))
    write_config(m, "[p]\nuser=u\n")
    woci.ensure_session(m)
    assert fake.requests == []
    profile = config_of(m)["p"]
    assert profile["security_token_file"] == str(m.paths.token)
    assert profile["fingerprint"] == woci.md5_fingerprint(woci.public_key_der(key))
    assert profile["tenancy"] == fake.tenant


def test_invalid_oci_config_stops_before_any_request(fake, tmp_path):
    """An OCI config woci could not update: exit 2 before refreshing; nothing changed."""
    m = make_session(fake, tmp_path)
    seed_expired_session(m, fake)
    config = write_config(m, "not ini at all\n")
    with pytest.raises(woci.ConfigError):
        woci.ensure_session(m)
    assert fake.requests == []
    assert config.read_text() == "not ini at all\n"
    assert Path(m.paths.refresh_token).read_text() == "rt-0"


def test_key_file_configured_in_the_session_folder_is_used(fake, tmp_path):
    """The profile's own key_file inside the session folder is the key sent and kept."""
    m = make_session(fake, tmp_path)
    seed_expired_session(m, fake, with_key=False)
    own = Path(m.paths.folder) / "my_key.pem"
    key = woci.new_private_key()
    own.write_bytes(woci.private_key_pem(key))
    write_config(m, f"[p]\nkey_file={own}\n")
    woci.ensure_session(m)
    assert base64.b64decode(fake.exchanges[0].form["public_key"]) == woci.public_key_der(key)
    assert config_of(m)["p"]["key_file"] == str(own)
    assert not Path(m.paths.key).exists()


def test_provider_without_rotation_keeps_the_stored_token(fake, tmp_path):
    """No new refresh token in the answer: the stored one stays as it was."""
    m = make_session(fake, tmp_path)
    seed_expired_session(m, fake)
    fake.rotate = False
    woci.ensure_session(m)
    assert Path(m.paths.refresh_token).read_text() == "rt-0"


def test_a_refresh_token_others_can_read_is_made_private_when_used(fake, tmp_path, caplog):
    """A refresh token file left 0644 (restored from a backup, copied in from Windows) that
    a provider without rotation never replaces: the renewal that uses it makes it 0600."""
    m = make_session(fake, tmp_path)
    seed_expired_session(m, fake)
    Path(m.paths.refresh_token).chmod(0o644)
    fake.rotate = False
    with caplog.at_level(logging.WARNING, logger="woci"):
        woci.ensure_session(m)
    assert Path(m.paths.refresh_token).read_text() == "rt-0"
    assert mode_of(m.paths.refresh_token) == 0o600
    assert m.paths.refresh_token in caplog.text and "other users" in caplog.text


def test_encrypted_refresh_token_is_rotated_encrypted(fake, tmp_path):
    """With a passphrase: the rotated token is stored encrypted and opens with it."""
    m = make_session(fake, tmp_path, environ={"PW": "pass"}, refresh_token_passphrase_env="PW")
    seed_expired_session(m, fake)
    Path(m.paths.refresh_token).write_bytes(woci.encrypt_refresh_token("rt-0", "pass", 200_000))
    woci.ensure_session(m)
    raw = Path(m.paths.refresh_token).read_bytes()
    assert raw.startswith(b"{")
    rotated = woci.decrypt_refresh_token(raw, "pass", m.paths.refresh_token)
    assert rotated != "rt-0" and rotated in fake.valid_refresh_tokens


def test_sign_in_over_an_encrypted_token_checks_the_passphrase_before_the_browser(fake, tmp_path):
    """SPEC 7: a wrong passphrase is exit 2 and changes no file, for `session authenticate`
    too: it opens no browser and does not re-encrypt the token with what was given (asked
    once, unconfirmed, since it was meant to open the existing file)."""
    browsers = Browsers(fake)
    m = make_session(fake, tmp_path, environ={"PW": "typo"}, refresh_token_passphrase_env="PW",
                     browser=browsers)
    seed_expired_session(m, fake)
    Path(m.paths.refresh_token).write_bytes(woci.encrypt_refresh_token("rt-0", "pass", 200_000))
    before = Path(m.paths.refresh_token).read_bytes()
    with pytest.raises(woci.RefreshTokenError, match="wrong passphrase") as info:
        woci.ensure_session(m, renewal=woci.Renewal.SIGN_IN)
    assert info.value.exit_code == 2
    assert browsers.urls == [] and fake.requests == []
    assert Path(m.paths.refresh_token).read_bytes() == before


def test_sign_in_replaces_a_damaged_encrypted_token(fake, tmp_path):
    """`session authenticate` is what the "damaged" message advises: it still replaces a
    file that is no longer an encrypted token, with one that opens with the passphrase."""
    browsers = Browsers(fake)
    m = make_session(fake, tmp_path, environ={"PW": "pass"}, refresh_token_passphrase_env="PW",
                     browser=browsers)
    Path(m.paths.refresh_token).write_bytes(
        woci.encrypt_refresh_token("rt-0", "pass", 200_000)[:40])
    woci.ensure_session(m, renewal=woci.Renewal.SIGN_IN)
    assert len(browsers.urls) == 1
    raw = Path(m.paths.refresh_token).read_bytes()
    assert woci.decrypt_refresh_token(raw, "pass", m.paths.refresh_token) in fake.valid_refresh_tokens


def test_sign_in_replaces_an_encrypted_token_whose_nonce_is_damaged(fake, tmp_path):
    """AES-GCM refuses a nonce of the wrong length with ValueError: that is a damaged file
    (the sign-in replaces it), not a wrong passphrase (which would block the sign-in)."""
    browsers = Browsers(fake)
    m = make_session(fake, tmp_path, environ={"PW": "pass"}, refresh_token_passphrase_env="PW",
                     browser=browsers)
    document = json.loads(woci.encrypt_refresh_token("rt-0", "pass", 200_000))
    document["nonce"] = ""
    Path(m.paths.refresh_token).write_text(json.dumps(document))
    with pytest.raises(woci.RefreshTokenError) as info:
        woci.ensure_session(m)
    assert not isinstance(info.value, woci.WrongPassphrase) and "damaged" in str(info.value)
    woci.ensure_session(m, renewal=woci.Renewal.SIGN_IN)
    assert len(browsers.urls) == 1
    raw = Path(m.paths.refresh_token).read_bytes()
    assert woci.decrypt_refresh_token(raw, "pass", m.paths.refresh_token) in fake.valid_refresh_tokens


def test_an_unreadable_refresh_token_file_is_one_exit_2_before_any_prompt(fake, tmp_path):
    """Asked first, the user would type a new passphrase twice only to learn the file
    cannot be read."""
    m = make_session(fake, tmp_path, refresh_token_passphrase_prompt=True)
    Path(m.paths.refresh_token).mkdir()
    for renewal in (woci.Renewal.SIGN_IN, None):
        with pytest.raises(woci.RefreshTokenError) as info:
            woci.ensure_session(m, **({"renewal": renewal} if renewal else {}))
        assert info.value.exit_code == 2 and "is a folder" in str(info.value)
    assert fake.requests == []


def issue_refresh_tokens_with_a_space(fake, monkeypatch):
    real = fake.new_refresh_token

    def with_a_space():
        token = real().replace("-", " ")
        fake.valid_refresh_tokens.add(token)
        return token

    monkeypatch.setattr(fake, "new_refresh_token", with_a_space)


def test_a_rotated_refresh_token_the_file_cannot_hold_removes_the_spent_one(fake, tmp_path,
                                                                            monkeypatch, caplog):
    """Kept, the old token would be presented again at the next run: reuse detection can
    revoke the whole family. It is removed, so the next renewal signs in."""
    m = make_session(fake, tmp_path)
    seed_expired_session(m, fake)
    issue_refresh_tokens_with_a_space(fake, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="woci"):
        woci.ensure_session(m)
    assert not Path(m.paths.refresh_token).exists()
    assert caplog.text.count("cannot hold") == 1 and "rt 1" not in caplog.text


def test_a_signed_in_refresh_token_the_file_cannot_hold_is_one_warning(fake, tmp_path,
                                                                       monkeypatch, caplog):
    """Not a second one blaming offline_access: the provider did issue a token."""
    m = make_session(fake, tmp_path)
    Path(m.paths.refresh_token).write_text("rt-old")   # another sign-in's: stale now
    issue_refresh_tokens_with_a_space(fake, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="woci"):
        woci.ensure_session(m, renewal=woci.Renewal.SIGN_IN)
    assert not Path(m.paths.refresh_token).exists()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot hold" in warnings[0].getMessage()
    assert "offline_access" not in caplog.text


def test_an_encrypted_store_keeps_a_refresh_token_the_plain_file_cannot(fake, tmp_path,
                                                                        monkeypatch):
    m = make_session(fake, tmp_path, environ={"PW": "pass"}, refresh_token_passphrase_env="PW")
    seed_expired_session(m, fake)
    Path(m.paths.refresh_token).write_bytes(woci.encrypt_refresh_token("rt-0", "pass", 200_000))
    issue_refresh_tokens_with_a_space(fake, monkeypatch)
    woci.ensure_session(m)
    raw = Path(m.paths.refresh_token).read_bytes()
    rotated = woci.decrypt_refresh_token(raw, "pass", m.paths.refresh_token)
    assert " " in rotated and rotated in fake.valid_refresh_tokens
