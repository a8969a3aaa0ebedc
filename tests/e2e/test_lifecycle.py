"""A user's life with woci against the real provider, the OCI emulator and the real OCI CLI."""

import os
import stat
import time

from cryptography.hazmat.primitives import serialization

from tests.bed.emulator import MAX_UPST_LIFETIME, TOKEN_PATH
from tests.bed.idp import token_fingerprint
from tests.e2e.conftest import REGION, assert_namespace_printed

EXCHANGE = ("POST", TOKEN_PATH, 200)
OCI_CALL = ("GET", "/n", 200)   # `oci os ns get` itself


def token_requests(idp, mark, grant_type):
    return [e for e in idp.events_since(mark)
            if e.get("event") == "token_request" and e.get("grant_type") == grant_type]


def named(events, name):
    return [e for e in events if e["event"] == name]


def one_oci_call(user, idp, emulator):
    """Run `woci ... os ns get`; return what the provider and the emulator received meanwhile."""
    mark, seen = idp.mark(), len(emulator.requests)
    assert_namespace_printed(user.oci_ns_get())
    idp.sync()
    received = [(r["method"], r["path"], r["status"]) for r in emulator.requests[seen:]]
    return idp.events_since(mark), received


def expire_the_upst(user, emulator):
    """Time passes: the stored UPST (for the same session key) expires now."""
    public_pem = (user.session_dir / "oci_api_key_public.pem").read_bytes()
    upst = emulator.mint_upst(serialization.load_pem_public_key(public_pem), subject=user.idp.user,
                              issued_at=time.time() - MAX_UPST_LIFETIME, lifetime=MAX_UPST_LIFETIME)
    (user.session_dir / "token").write_text(upst)


def stored_refresh_token(user):
    return user.refresh_token_text().strip()


def test_lifecycle_no_session_sign_in_valid_refresh_and_refresh_again(user, idp, emulator):
    """kubelogin's lifecycle test: no session -> browser sign-in -> valid -> refresh -> refresh
    again with the rotated token, asserting at each step what the provider and OCI received."""
    # No session: one browser sign-in, Authorization Code with a PKCE (S256) verifier.
    events, received = one_oci_call(user, idp, emulator)
    assert len(user.browser_opens()) == 1
    [signed_in] = named(events, "authorization.success")
    assert signed_in["code_challenge_method"] == "S256"
    [code_grant] = named(events, "token_request")
    assert code_grant["grant_type"] == "authorization_code" and code_grant["status"] == 200
    assert code_grant["code_verifier_sent"] is True
    first_rt = stored_refresh_token(user)
    assert code_grant["issued_refresh_token_fp"] == token_fingerprint(first_rt)
    assert received == [EXCHANGE, OCI_CALL]

    # Valid: no request at all reaches the provider, and none of woci's reaches OCI.
    events, received = one_oci_call(user, idp, emulator)
    assert named(events, "http_request") == []
    assert received == [OCI_CALL]
    assert len(user.browser_opens()) == 1

    # Expired: one refresh grant with the refresh token stored at sign-in; rotation stored.
    expire_the_upst(user, emulator)
    events, received = one_oci_call(user, idp, emulator)
    [refresh] = named(events, "token_request")
    assert refresh["grant_type"] == "refresh_token" and refresh["status"] == 200
    assert refresh["client_id"] == idp.public_client_id
    assert refresh["refresh_token_fp"] == token_fingerprint(first_rt)
    second_rt = stored_refresh_token(user)
    assert second_rt != first_rt
    assert refresh["issued_refresh_token_fp"] == token_fingerprint(second_rt)
    assert named(events, "grant.error") == []
    assert received == [EXCHANGE, OCI_CALL]
    assert len(user.browser_opens()) == 1

    # Expired again: the rotated token goes to the provider, the first one is never reused.
    expire_the_upst(user, emulator)
    events, received = one_oci_call(user, idp, emulator)
    [refresh] = named(events, "token_request")
    assert refresh["grant_type"] == "refresh_token" and refresh["status"] == 200
    assert refresh["refresh_token_fp"] == token_fingerprint(second_rt)
    third_rt = stored_refresh_token(user)
    assert third_rt not in (first_rt, second_rt)
    assert refresh["issued_refresh_token_fp"] == token_fingerprint(third_rt)
    assert named(events, "grant.error") == []
    assert received == [EXCHANGE, OCI_CALL]
    assert len(user.browser_opens()) == 1


def test_first_run_signs_in_and_oci_call_is_verified(user, idp, emulator):
    """No session: one browser sign-in, one exchange, then oci's signed call is accepted."""
    mark = idp.mark()
    denied_before = emulator.count("ns_denied")

    result = user.oci_ns_get()

    assert_namespace_printed(result)
    assert len(user.browser_opens()) == 1
    assert user.browser_opens()[0]["callback_status"] == 200
    assert len(token_requests(idp, mark, "authorization_code")) == 1
    assert emulator.count("ns_denied") == denied_before
    assert "Signed in" in user.browser_opens()[0]["callback_body"]


def test_session_files_and_profile_are_what_oci_needs(user):
    """The session folder is private, the token has no newline, the profile is absolute."""
    assert_namespace_printed(user.oci_ns_get())

    folder = user.session_dir
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("token", "oci_api_key.pem", "oci_api_key_public.pem", "refresh_token"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    assert not user.token_text().endswith("\n")
    profile = user.oci_profile()
    assert profile["key_file"] == str(folder / "oci_api_key.pem")
    assert profile["security_token_file"] == str(folder / "token")
    assert profile["region"] == REGION
    assert profile["tenancy"].startswith("ocid1.tenancy.")
    assert len(profile["fingerprint"].split(":")) == 16


def test_second_run_does_not_talk_to_the_provider(user, idp, emulator):
    """A valid session: woci goes straight to oci, no provider and no exchange request."""
    assert_namespace_printed(user.oci_ns_get())
    mark = idp.mark()
    exchanges = emulator.count("exchange_ok")

    assert_namespace_printed(user.oci_ns_get())

    assert [e for e in idp.events_since(mark) if e.get("event") == "token_request"] == []
    assert emulator.count("exchange_ok") == exchanges
    assert len(user.browser_opens()) == 1


def test_expiring_session_is_renewed_silently_with_one_refresh(user, idp, emulator):
    """A UPST with under a minute left: one refresh grant, no browser, rotated token stored."""
    emulator.set_upst_lifetime(30)
    assert_namespace_printed(user.oci_ns_get())
    first_refresh_token = user.refresh_token_text()
    first_upst = user.token_text()
    mark = idp.mark()

    assert_namespace_printed(user.oci_ns_get())

    assert len(token_requests(idp, mark, "refresh_token")) == 1
    assert len(user.browser_opens()) == 1
    assert user.refresh_token_text() != first_refresh_token
    assert user.token_text() != first_upst


def test_revoked_refresh_token_sends_the_user_back_to_the_browser(user, idp, emulator):
    """The provider ended the grant: the next renewal signs in again in the browser."""
    emulator.set_upst_lifetime(30)
    assert_namespace_printed(user.oci_ns_get())
    idp.revoke(user.refresh_token_text(), client_id=idp.public_client_id)

    result = user.oci_ns_get()

    assert_namespace_printed(result)
    assert len(user.browser_opens()) == 2
    assert "refused the stored refresh token" in result.stderr


def test_session_authenticate_signs_in_again_and_runs_no_oci(user, idp):
    """`woci session authenticate` opens the browser even with a valid session."""
    assert_namespace_printed(user.oci_ns_get())
    before = user.token_text()

    result = user.run("--profile", user.profile, "session", "authenticate")

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert len(user.browser_opens()) == 2
    assert user.token_text() != before


def test_session_refresh_renews_without_a_browser(user, idp):
    """`woci session refresh` makes one refresh grant now and runs no oci."""
    assert_namespace_printed(user.oci_ns_get())
    before = user.token_text()
    mark = idp.mark()

    result = user.run("--profile", user.profile, "session", "refresh")

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert len(token_requests(idp, mark, "refresh_token")) == 1
    assert len(user.browser_opens()) == 1
    assert user.token_text() != before


def test_bare_woci_makes_the_session_valid_and_exits_zero(user):
    """No oci arguments: sign in, write the session, print nothing on stdout."""
    result = user.run("--profile", user.profile)

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert (user.session_dir / "token").exists()


def test_encrypted_refresh_token_with_passphrase_from_env(user, idp, emulator):
    """With a passphrase variable the refresh token is stored encrypted and still refreshes."""
    user.write_manager_ini(refresh_token_passphrase_env="WOCI_TEST_PASSPHRASE")
    env = user.env(WOCI_TEST_PASSPHRASE="correct horse battery staple")
    emulator.set_upst_lifetime(30)
    assert_namespace_printed(user.oci_ns_get(env=env))
    stored = user.refresh_token_text()
    assert '"ciphertext"' in stored and "iterations" in stored
    mark = idp.mark()

    assert_namespace_printed(user.oci_ns_get(env=env))
    assert len(token_requests(idp, mark, "refresh_token")) == 1

    wrong = user.oci_ns_get(env=user.env(WOCI_TEST_PASSPHRASE="not it"))
    assert wrong.returncode == 2
    assert "wrong passphrase" in wrong.stderr
    assert user.refresh_token_text() != stored  # rotated by the good run, untouched by the bad


def test_confidential_client_signs_in_with_basic_auth(user, idp):
    """A confidential provider client: its secret goes with HTTP Basic, sign-in works."""
    user.write_manager_ini(auth_client_id=idp.confidential_client_id,
                           auth_client_secret=idp.confidential_client_secret)
    user.manager_ini.chmod(0o600)

    assert_namespace_printed(user.oci_ns_get())


def test_oci_arguments_reach_oci_unchanged(user):
    """An oci option named like a woci option (--scope) after the command goes to oci."""
    assert_namespace_printed(user.oci_ns_get())

    result = user.run("--profile", user.profile, "os", "ns", "get", "--scope", "x",
                      "--endpoint", user.emulator.url, "--no-retry")

    assert result.returncode == 2  # oci's own usage error: it got --scope
    # click 8.2+ (oci-cli on Python 3.11+) quotes the option; 8.1 (on 3.9 and 3.10) does not.
    output = result.stdout + result.stderr
    assert "No such option '--scope'" in output or "No such option: --scope" in output
    assert "woci: error" not in result.stderr


def test_files_written_by_woci_are_private(user):
    """Nothing woci writes is readable by others, the config file included."""
    assert_namespace_printed(user.oci_ns_get())
    for root, dirs, files in os.walk(user.oci_dir):
        for name in files:
            path = os.path.join(root, name)
            assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, path
