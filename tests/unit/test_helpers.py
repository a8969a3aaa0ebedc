"""Section 2: pure helpers (base64url, JWT claims, booleans, PEM, PKCE, clock skew, backoff)."""

import base64
import email.utils
import hashlib
import string
import time
import urllib.parse

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

import oci_upst_session_manager as woci
from tests.unit.fakes import b64url_json, unsigned_jwt


@given(st.binary(max_size=200))
def test_b64url_round_trips_without_padding(data):
    """Any bytes survive encode/decode, and the text has no '=' padding, '+' or '/'."""
    text = woci.b64url_encode(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert woci.b64url_decode(text) == data


def test_jwt_claims_are_read_without_verification():
    """The payload of a three-part token comes back as a dict."""
    assert woci.jwt_claims_unverified(unsigned_jwt({"exp": 5, "tenant": "t"})) == {
        "exp": 5, "tenant": "t"}


@pytest.mark.parametrize("token, fragment", [
    ("a.b", "three dot-separated parts"),
    ("a.b.c.d", "three dot-separated parts"),
    (".e30.sig", "three dot-separated parts"),
    ("e30.!!!.sig", "not base64url JSON"),
    ("e30." + base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("=") + ".s",
     "not base64url JSON"),
    ("e30." + b64url_json([1, 2]) + ".sig", "not a JSON object"),
])
def test_jwt_claims_refuse_what_is_not_a_jwt(token, fragment):
    """Malformed tokens raise ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=fragment):
        woci.jwt_claims_unverified(token)


@pytest.mark.parametrize("exp", [None, 1.5, "123", True])
def test_jwt_expiry_insists_on_an_integer_exp(exp):
    """No exp, a float, a string or a bool exp is not a usable session token."""
    claims = {} if exp is None else {"exp": exp}
    with pytest.raises(ValueError, match="integer 'exp'"):
        woci.jwt_expiry(unsigned_jwt(claims))


def test_jwt_expiry_returns_the_integer_exp():
    """An integer exp is returned as is."""
    assert woci.jwt_expiry(unsigned_jwt({"exp": 1_900_000_000})) == 1_900_000_000


@pytest.mark.parametrize("text, value", [
    ("true", True), ("Yes", True), (" on ", True), ("1", True),
    ("false", False), ("NO", False), ("off", False), ("0", False)])
def test_parse_bool_follows_configparser(text, value):
    """true/false, yes/no, on/off, 1/0 in any case and with spaces."""
    assert woci.parse_bool(text) is value


def test_parse_bool_refuses_other_words():
    """An unknown word names itself and the accepted forms."""
    with pytest.raises(ValueError, match=r"'maybe' is not a boolean \(use true/false"):
        woci.parse_bool("maybe")


@pytest.mark.parametrize("value, expected", [
    (None, False), ("", False), ("false", False), ("0", False), ("no", False),
    ("true", True), ("1", True), ("Jenkins", True)])
def test_env_flag_is_true_treats_any_non_false_value_as_set(value, expected):
    """CI=true/1/Jenkins count as set; unset, empty and false-like values do not."""
    assert woci.env_flag_is_true(value) is expected


def test_pem_body_der_and_md5_fingerprint_match_oci_setup():
    """The DER inside a public-key PEM and its MD5 fingerprint as 16 colon-separated pairs."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    assert woci.pem_body_der(pem) == der
    fingerprint = woci.md5_fingerprint(der)
    assert fingerprint.replace(":", "") == hashlib.md5(der).hexdigest()
    assert len(fingerprint.split(":")) == 16
    assert all(len(pair) == 2 for pair in fingerprint.split(":"))


def test_pkce_pair_is_rfc7636_s256():
    """Verifier of 43-128 unreserved characters; challenge = base64url(SHA-256(verifier))."""
    verifier, challenge = woci.pkce_pair()
    assert 43 <= len(verifier) <= 128
    assert set(verifier) <= set(string.ascii_letters + string.digits + "-._~")
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    assert challenge == expected.rstrip(b"=").decode()
    assert woci.pkce_pair()[0] != verifier


def test_add_query_keeps_the_existing_query_and_encodes_values():
    """Parameters are appended after the URL's own, with spaces and '&' encoded."""
    url = woci.add_query("https://idp.example/authorize?tenant=a%20b",
                         {"scope": "openid offline_access", "state": "x&y"})
    parts = urllib.parse.urlsplit(url)
    assert parts.path == "/authorize"
    assert urllib.parse.parse_qsl(parts.query) == [
        ("tenant", "a b"), ("scope", "openid offline_access"), ("state", "x&y")]


@pytest.mark.parametrize("text", ["https://idp.example/authorize", "HTTP://127.0.0.1:8181/cb",
                                  "http://h", "https://[::1]:8443/token?x=1"])
def test_http_urls_are_accepted(text):
    assert woci.is_http_url(text)


@pytest.mark.parametrize("text", ["", "ftp://x/token", "idp.example/authorize", "http://",
                                  "http:///path", "https://?q=1", "https://#f", "http:/x",
                                  "file:///etc/passwd", "javascript://x"])
def test_what_is_not_an_http_url_with_a_host_is_refused(text):
    assert not woci.is_http_url(text)


def test_clock_skew_is_measured_from_the_date_header():
    """A server Date 600 s ahead means this clock is 600 s behind; no or bad Date: None."""
    now = 1_700_000_000.0
    ahead = email.utils.formatdate(now + 600, usegmt=True)
    assert woci.clock_skew_seconds(ahead, now) == pytest.approx(-600)
    assert woci.clock_skew_seconds(None, now) is None
    assert woci.clock_skew_seconds("not a date", now) is None


def test_clock_skew_note_only_beyond_the_tolerance():
    """Within 60 s nothing is said; beyond it the note says which way the clock is off."""
    assert woci.clock_skew_note(None, "the server") == ""
    assert woci.clock_skew_note(59, "the server") == ""
    assert "600 s behind the server's" in woci.clock_skew_note(-600, "the server")
    assert "600 s ahead of OCI's" in woci.clock_skew_note(600, "OCI")
    assert "fix the clock" in woci.clock_skew_note(600, "OCI")


def test_retry_delay_grows_exponentially_and_is_capped():
    """0.5 s, 1 s, 2 s ... at jitter 0.5, never above the cap."""
    def half():
        return 0.5
    assert [woci.retry_delay(n, None, half) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert woci.retry_delay(20, None, half) == woci.BACKOFF_MAX_SECONDS
    assert woci.retry_delay(0, None, lambda: 0.0) == 0.25


def test_retry_after_wins_when_longer_and_is_capped():
    """Retry-After: 7 gives 7 s; a huge one is capped at 30 s; a short one loses to backoff."""
    def zero():
        return 0.0
    assert woci.retry_delay(0, "7", zero) == 7.0
    assert woci.retry_delay(0, "3600", zero) == woci.RETRY_AFTER_MAX_SECONDS
    assert woci.retry_delay(3, "0", zero) == 2.0


def test_retry_after_as_http_date():
    """A Retry-After date 5 s ahead asks for about 5 s."""
    when = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.5 <= woci.retry_delay(0, when, lambda: 0.0) <= 5.5


@pytest.mark.parametrize("seconds, text", [
    (0, "0 s"), (119, "119 s"), (120, "2 min"), (330, "5 min"), (7200, "2 h 0 min"),
    (9000, "2 h 30 min")])
def test_format_duration(seconds, text):
    """Seconds below 2 min, minutes below 2 h, then hours and minutes."""
    assert woci.format_duration(seconds) == text


# --- for the session tools -----------------------------------------------------------------------


def test_iso_utc_is_total():
    """ISO-8601 UTC for an epoch; None for what is no date (a huge exp, a string, a bool)."""
    assert woci.iso_utc(0) == "1970-01-01T00:00:00Z"
    assert woci.iso_utc(1767225600.9) == "2026-01-01T00:00:00Z"
    for nonsense in (10 ** 19, -10 ** 19, float("nan"), "1", None, True):
        assert woci.iso_utc(nonsense) is None


def test_jwt_expiry_or_none():
    """A JWT's integer exp; None for an opaque token or a JWT without one."""
    assert woci.jwt_expiry_or_none(unsigned_jwt({"exp": 5})) == 5
    assert woci.jwt_expiry_or_none(unsigned_jwt({"exp": "5"})) is None
    assert woci.jwt_expiry_or_none("opaque-refresh-token") is None


def test_mask_secret_shows_at_most_two_characters_and_the_length():
    assert woci.mask_secret("oci-secret-for-tests") == "oc*** (20 characters)"
    assert woci.mask_secret("short") == "*** (5 characters)"
    assert "secret" not in woci.mask_secret("oci-secret-for-tests")


# --- hostile input -----------------------------------------------------------------------------

DEEP_JSON = "[" * 100_000 + "]" * 100_000   # json.loads gives up with RecursionError


def test_parse_json_makes_nesting_too_deep_a_value_error():
    """Too deep for the parser is damage like any other: a ValueError, not a RecursionError
    that no caller expects."""
    with pytest.raises(ValueError, match="nested too deeply"):
        woci.parse_json(DEEP_JSON)
    assert woci.parse_json(b'{"a": [1]}') == {"a": [1]}


def test_jwt_claims_nested_too_deeply_are_not_a_jwt():
    """A token file (or a server's token) whose payload nests without end is no JWT."""
    payload = base64.urlsafe_b64encode(('{"exp": 1, "a": ' + DEEP_JSON + "}").encode())
    with pytest.raises(ValueError, match="not base64url JSON"):
        woci.jwt_claims_unverified("e30." + payload.decode().rstrip("=") + ".sig")


@pytest.mark.parametrize("exp", [10 ** 400, -(10 ** 400)], ids=["huge", "huge-negative"])
def test_jwt_expiry_refuses_an_exp_no_float_can_hold(exp):
    """An integer exp beyond a float's range is no time: every use of it (exp - now) would
    raise OverflowError."""
    with pytest.raises(ValueError, match="'exp'"):
        woci.jwt_expiry(unsigned_jwt({"exp": exp}))


@pytest.mark.parametrize("value, epoch", [
    (1_900_000_000, 1_900_000_000.0), (1.5, 1.5), (10 ** 400, None), (-(10 ** 400), None),
    (float("nan"), None), (float("inf"), None), (True, None), ("1", None), (None, None)],
    ids=["int", "float", "huge", "huge-negative", "nan", "inf", "bool", "text", "none"])
def test_epoch_or_none_takes_only_numbers_a_clock_can_compare(value, epoch):
    assert woci.epoch_or_none(value) == epoch
