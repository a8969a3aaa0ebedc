"""Section 6: the session key pair and the UPST exchange against a local fake OCI."""

import base64
import json
import logging
import stat

import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import oci_upst_session_manager as woci
from tests.unit.fakes import Answer, FakeIdentity, json_answer, unsigned_jwt


@pytest.fixture(scope="module")
def key():
    return woci.new_private_key()


@pytest.fixture(scope="module")
def other_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def oci():
    with FakeIdentity(tenant="ocid1.tenancy.oc1..xyz") as fake:
        yield fake


def test_request_upst_sends_basic_auth_and_exactly_the_exchange_form(oci, key):
    """HTTP Basic client_id:client_secret and the five form fields, with the access token."""
    upst = woci.request_upst(oci.settings(), "the-access-token", key)
    assert upst == oci.upsts[0]
    (request,) = oci.requests
    assert request.path == "/exchange"
    assert request.basic == ("oci-client", "oci-secret")
    form = request.form
    assert set(form) == {"grant_type", "requested_token_type", "subject_token",
                         "subject_token_type", "public_key"}
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert form["requested_token_type"] == "urn:oci:token-type:oci-upst"
    assert form["subject_token"] == "the-access-token"
    assert form["subject_token_type"] == "jwt"


def test_public_key_is_base64_der_spki_of_the_session_key(oci, key):
    """public_key is plain base64 (no PEM armour) of DER SubjectPublicKeyInfo of our key."""
    woci.request_upst(oci.settings(), "at", key)
    sent = oci.requests[0].form["public_key"]
    assert "-----" not in sent and "\n" not in sent
    loaded = serialization.load_der_public_key(base64.b64decode(sent, validate=True))
    assert loaded.public_numbers() == key.public_key().public_numbers()


def test_upst_signed_with_hs256_is_accepted(key):
    """woci does not care how OCI signs: an HS256 UPST bound to our key is fine."""
    with FakeIdentity(algorithm="HS256") as fake:
        upst = woci.request_upst(fake.settings(), "at", key)
    assert woci.jwt_claims_unverified(upst)["tenant"] == fake.tenant


def test_answer_without_token_is_an_exchange_error(oci, key):
    """200 without `token`: ExchangeError naming the endpoint."""
    oci.exchange_answer = json_answer(200, {"access_token": "not what we asked"})
    with pytest.raises(woci.ExchangeError) as info:
        woci.request_upst(oci.settings(), "at", key)
    assert "answered without a token" in str(info.value)
    assert oci.url + "/exchange" in str(info.value)


def test_upst_bound_to_another_key_is_refused(oci, key, other_key):
    """A UPST whose jwk is not our key: ExchangeError, 'another key'."""
    der = other_key.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    oci.exchange_answer = json_answer(200, {"token": oci.mint_upst(der)})
    with pytest.raises(woci.ExchangeError, match="bound to another key"):
        woci.request_upst(oci.settings(), "at", key)


def test_upst_jwk_as_an_object_is_accepted(oci, key):
    """The jwk claim may be a JSON object as well as a string."""
    der = woci.public_key_der(key)
    upst = oci.mint_upst(der)
    claims = woci.jwt_claims_unverified(upst)
    claims["jwk"] = json.loads(claims["jwk"])
    oci.exchange_answer = json_answer(200, {"token": unsigned_jwt(claims)})
    assert woci.request_upst(oci.settings(), "at", key) == unsigned_jwt(claims)


def test_unreadable_jwk_is_an_exchange_error(oci, key):
    """A jwk claim that is no RSA key: ExchangeError, not a traceback."""
    oci.exchange_answer = json_answer(200, {"token": unsigned_jwt({"exp": int(time.time()) + 3600,
                                                                   "jwk": {"kty": "oops"}})})
    with pytest.raises(woci.ExchangeError, match="jwk claim is unreadable"):
        woci.request_upst(oci.settings(), "at", key)


@pytest.mark.parametrize("claims", [{"tenant": "t"}, {"exp": 1.9e9}, {"exp": "1900000000"}])
def test_upst_without_integer_exp_is_refused(oci, key, claims):
    """No exp, a float or a string exp: oci could not use it, so ExchangeError."""
    oci.exchange_answer = json_answer(200, {"token": unsigned_jwt(claims)})
    with pytest.raises(woci.ExchangeError, match="unusable token"):
        woci.request_upst(oci.settings(), "at", key)


def test_token_that_is_not_a_jwt_is_refused(oci, key):
    """`token` that is not a JWT: ExchangeError."""
    oci.exchange_answer = json_answer(200, {"token": "opaque"})
    with pytest.raises(woci.ExchangeError, match="unusable token"):
        woci.request_upst(oci.settings(), "at", key)


def test_oauth_error_is_shown_without_the_secret(oci, key):
    """invalid_client with its description reaches the user; the client secret does not."""
    oci.exchange_answer = json_answer(401, {"error": "invalid_client",
                                            "error_description": "client authentication failed"})
    with pytest.raises(woci.ExchangeError) as info:
        woci.request_upst(oci.settings(), "the-access-token", key)
    message = str(info.value)
    assert "invalid_client: client authentication failed" in message
    assert "oci-secret" not in message and "the-access-token" not in message
    assert info.value.exit_code == 1


def test_exchange_answering_html_is_an_http_error(oci, key):
    """A proxy page instead of JSON: 'instead of JSON'."""
    oci.exchange_answer = Answer(200, b"<html></html>", {"Content-Type": "text/html"})
    with pytest.raises(woci.HttpError, match="instead of JSON"):
        woci.request_upst(oci.settings(), "at", key)


# --- keys ----------------------------------------------------------------------------------------


def test_new_key_is_rsa_2048_written_as_pkcs8_and_spki(key):
    """RSA 2048; private PEM is unencrypted PKCS#8; public PEM is SubjectPublicKeyInfo."""
    assert key.key_size == 2048
    private = woci.private_key_pem(key)
    assert private.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert serialization.load_pem_private_key(private, None).private_numbers() == \
        key.private_numbers()
    public = woci.public_key_pem(key)
    assert public.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert woci.pem_body_der(public) == woci.public_key_der(key)


def test_load_private_key_round_trip_and_missing(tmp_path, key):
    """A written key loads back; no file gives None."""
    path = tmp_path / "oci_api_key.pem"
    assert woci.load_private_key(path) is None
    path.write_bytes(woci.private_key_pem(key))
    assert woci.load_private_key(path).private_numbers() == key.private_numbers()


def test_a_session_key_others_can_read_is_made_private_with_a_warning(tmp_path, key, caplog):
    """A key file woci finds in the session folder with a loose mode (copied there, made by
    another tool under umask 022) is kept, as renewals keep the key, but made 0600: with it,
    anyone who gets the token signs as the user."""
    path = tmp_path / "oci_api_key.pem"
    path.write_bytes(woci.private_key_pem(key))
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="woci"):
        assert woci.load_private_key(str(path)).private_numbers() == key.private_numbers()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in caplog.text and "other users" in caplog.text


def test_a_private_session_key_draws_no_warning(tmp_path, key, caplog):
    path = tmp_path / "oci_api_key.pem"
    path.write_bytes(woci.private_key_pem(key))
    path.chmod(0o400)
    with caplog.at_level(logging.WARNING, logger="woci"):
        woci.load_private_key(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o400 and caplog.text == ""


def test_unusable_key_file_is_replaced_with_a_warning(tmp_path, caplog):
    """Garbage or a non-RSA key: None (a new key will be made) and a warning naming the file."""
    path = tmp_path / "oci_api_key.pem"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    with caplog.at_level(logging.WARNING, logger="woci"):
        assert woci.load_private_key(path) is None
        assert str(path) in caplog.text
        caplog.clear()
        ec_key = ec.generate_private_key(ec.SECP256R1())
        path.write_bytes(woci.private_key_pem(ec_key))
        assert woci.load_private_key(path) is None
        assert "not an RSA key" in caplog.text


@pytest.mark.parametrize("exp", [10 ** 400, -(10 ** 400)], ids=["huge", "huge-negative"])
def test_upst_with_an_exp_no_float_can_hold_is_refused(oci, key, exp):
    oci.exchange_answer = json_answer(200, {"token": unsigned_jwt({"exp": exp})})
    with pytest.raises(woci.ExchangeError, match="unusable token"):
        woci.request_upst(oci.settings(), "at", key)


@pytest.mark.parametrize("tenant", ["ocid1.tenancy\n[DEFAULT]\nkey_file=/etc/passwd", "t\r"])
def test_upst_whose_tenant_would_break_the_oci_config_is_refused(oci, key, tenant):
    """The tenant claim becomes the profile's tenancy line: a line break in it would let
    the exchange write sections and keys into the user's OCI config. Nothing is saved."""
    der = woci.public_key_der(key)
    oci.exchange_answer = json_answer(200, {"token": oci.mint_upst(der, tenant=tenant)})
    with pytest.raises(woci.ExchangeError, match="tenant"):
        woci.request_upst(oci.settings(), "at", key)
