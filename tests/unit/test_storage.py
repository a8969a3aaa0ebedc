"""Section 4: atomic writes, the profile lock, the session token, the refresh token store and
the OCI config editor."""

import base64
from pathlib import Path
import configparser
import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import oci_upst_session_manager as woci
from tests.unit.fakes import make_settings, unsigned_jwt


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# --- atomic_write and folders --------------------------------------------------------------------


def test_atomic_write_is_private_by_default_and_leaves_no_temporary_files(tmp_path):
    """The file holds exactly the data, mode 0600, and the folder holds nothing else."""
    target = tmp_path / "token"
    woci.atomic_write(target, b"abc")
    woci.atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert mode_of(target) == 0o600
    assert os.listdir(tmp_path) == ["token"]


def test_atomic_write_sets_the_requested_mode(tmp_path):
    """A mode other than 0600 is applied (the OCI config keeps its own)."""
    target = tmp_path / "config"
    woci.atomic_write(target, b"x", 0o644)
    assert mode_of(target) == 0o644


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch, failing):
    """A full disk at fsync or rename: StorageError naming the file, old content, no temp file."""
    target = tmp_path / "token"
    target.write_bytes(b"old")

    def boom(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(woci.os, failing, boom)  # no seam for a failing disk
    with pytest.raises(woci.StorageError) as info:
        woci.atomic_write(target, b"new")
    monkeypatch.undo()
    assert str(target) in str(info.value) and "No space left" in str(info.value)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["token"]


def test_atomic_write_into_a_missing_folder_is_a_storage_error(tmp_path):
    """No folder: StorageError (exit 1) naming the file."""
    with pytest.raises(woci.StorageError) as info:
        woci.atomic_write(tmp_path / "missing" / "token", b"x")
    assert "missing/token" in str(info.value) and info.value.exit_code == 1


def test_private_folder_is_created_0700_and_an_existing_one_left_alone(tmp_path):
    """A new session folder is 0700; an existing 0755 folder is the user's and stays 0755."""
    new = tmp_path / "a" / "sessions" / "p"
    woci.ensure_private_folder(new)
    assert mode_of(new) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    woci.ensure_private_folder(loose)
    assert mode_of(loose) == 0o755


# --- the profile lock ----------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    mode = fcntl.LOCK_EX | (fcntl.LOCK_NB if sys.argv[2] == "try" else 0)
    try:
        fcntl.flock(fd, mode)
    except OSError:
        print("busy", flush=True)
        sys.exit(0)
    print("locked", flush=True)
    sys.stdin.read()
""")


def lock_holder(path):
    """A separate process that holds the lock until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "wait"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def try_lock_elsewhere(path):
    out = subprocess.run([sys.executable, "-c", HOLDER, str(path), "try"], input="",
                         capture_output=True, text=True, timeout=20, check=False)
    return out.stdout.strip()


class FakeClock:
    def __init__(self):
        self.t = 0.0
        self.sleeps = []

    def __call__(self):
        return self.t

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.t += seconds


def test_profile_lock_excludes_another_process(tmp_path):
    """While woci holds the lock another process cannot take it; after release it can."""
    path = tmp_path / "sessions" / "p" / "woci.lock"
    with woci.ProfileLock(path, 5, "p"):
        assert try_lock_elsewhere(path) == "busy"
        assert mode_of(path) == 0o600
        assert mode_of(path.parent) == 0o700
    assert try_lock_elsewhere(path) == "locked"


def test_profile_lock_waits_a_bounded_time_for_another_process(tmp_path):
    """Held elsewhere: woci polls, then gives up with a message naming profile, wait and file."""
    path = tmp_path / "woci.lock"
    holder = lock_holder(path)
    clock = FakeClock()
    try:
        with pytest.raises(woci.WociError) as info, \
             woci.ProfileLock(path, 330, "dev", clock=clock, sleep=clock.sleep):
            pass  # pragma: no cover - must not get here
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    message = str(info.value)
    assert "another woci has been renewing profile dev for over 5 min" in message
    assert str(path) in message
    assert info.value.exit_code == 1
    assert clock.t >= 330 and set(clock.sleeps) == {woci.LOCK_POLL_SECONDS}


def test_profile_lock_is_taken_once_the_other_process_lets_go(tmp_path):
    """The wait ends as soon as the holder exits."""
    path = tmp_path / "woci.lock"
    holder = lock_holder(path)
    released = []

    def sleep(seconds):
        if not released:
            holder.stdin.close()
            holder.wait(timeout=10)
            released.append(True)

    with woci.ProfileLock(path, 30, "p", sleep=sleep) as lock:
        assert lock.fd is not None
    assert released


def test_profile_lock_refuses_a_symlink(tmp_path):
    """The lock file is opened with O_NOFOLLOW: a planted symlink is a StorageError."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "woci.lock").symlink_to(victim)
    with pytest.raises(woci.StorageError, match="cannot open lock file"), \
         woci.ProfileLock(tmp_path / "woci.lock", 1, "p"):
        pass  # pragma: no cover
    assert victim.read_text() == "keep"


# --- the session token ---------------------------------------------------------------------------


def session_paths(tmp_path):
    paths = woci.SessionPaths.for_profile("p", {"HOME": str(tmp_path)})
    Path(paths.folder).mkdir(parents=True)
    return paths


def test_session_paths_live_under_home_from_environ(tmp_path):
    """~/.oci/sessions/<profile>/ with the spec's file names, HOME taken from environ."""
    paths = woci.SessionPaths.for_profile("dev", {"HOME": str(tmp_path)})
    assert paths.folder == str(tmp_path / ".oci" / "sessions" / "dev")
    assert (Path(paths.token).name, Path(paths.key).name, Path(paths.public_key).name,
            Path(paths.refresh_token).name) == ("token", "oci_api_key.pem", "oci_api_key_public.pem",
                                          "refresh_token")


def test_missing_session_token_is_no_problem(tmp_path):
    """No token file: no token, no expiry, nothing to warn about."""
    assert woci.read_session_token(session_paths(tmp_path)) == (None, None, None)


def test_valid_session_token_is_read(tmp_path):
    """A JWT with an integer exp gives the token and its expiry."""
    paths = session_paths(tmp_path)
    token = unsigned_jwt({"exp": 2_000_000_000})
    Path(paths.token).write_text(token)
    assert woci.read_session_token(paths) == (token, 2_000_000_000, None)


def test_session_token_with_a_trailing_newline_is_unusable(tmp_path):
    """oci rejects a token file ending in a newline, so woci must renew it, not trust it."""
    paths = session_paths(tmp_path)
    Path(paths.token).write_text(unsigned_jwt({"exp": 2_000_000_000}) + "\n")
    state = woci.read_session_token(paths)
    assert state.token is None and "white space" in state.problem


@pytest.mark.parametrize("content, reason", [
    (b"", "three dot-separated parts"),
    (b"\x89PNG\xff\xfe\x00", "not text"),
    (b"hello world", "three dot-separated parts"),
    (unsigned_jwt({"sub": "x"}).encode(), "no integer 'exp'"),
])
def test_unusable_session_token_is_reported_not_raised(tmp_path, content, reason):
    """Empty, binary, not-a-JWT or exp-less files: a problem naming the file and why."""
    paths = session_paths(tmp_path)
    Path(paths.token).write_bytes(content)
    state = woci.read_session_token(paths)
    assert state.token is None and state.expires_at is None
    assert str(paths.token) in state.problem and "unusable" in state.problem
    assert reason in state.problem


def test_session_token_that_is_a_folder_is_reported(tmp_path):
    """A folder where the token should be is a problem, not a crash."""
    paths = session_paths(tmp_path)
    Path(paths.token).mkdir()
    assert "is a folder" in woci.read_session_token(paths).problem


def test_session_is_fresh_only_beyond_the_margin():
    """Valid for more than min_validity seconds: fresh; exactly at it or less: not."""
    state = woci.TokenState("t", 1000, None)
    assert woci.session_is_fresh(state, 900, 60)
    assert not woci.session_is_fresh(state, 940, 60)
    assert not woci.session_is_fresh(woci.TokenState(None, None, None), 0, 60)


# --- passphrases ---------------------------------------------------------------------------------


class Asker:
    def __init__(self, *answers):
        self.answers = list(answers)
        self.prompts = []

    def __call__(self, prompt):
        self.prompts.append(prompt)
        return self.answers.pop(0)


def source(environ=None, ask=None, tty=True, **overrides):
    return woci.PassphraseSource(make_settings(**overrides), environ or {},
                                 ask=ask or Asker(), stdin_is_tty=lambda: tty)


def test_prompt_without_a_terminal_is_an_error():
    """The prompt needs a terminal: without one, exit 2 naming the alternative."""
    ask = Asker("never")
    with pytest.raises(woci.RefreshTokenError) as info:
        source(ask=ask, tty=False, refresh_token_passphrase_prompt=True).get()
    assert "terminal" in str(info.value) and "refresh_token_passphrase_env" in str(info.value)
    assert info.value.exit_code == 2
    assert ask.prompts == []


def test_passphrase_env_variable_missing_is_an_error():
    """The configured variable is unset: exit 2 naming it."""
    with pytest.raises(woci.RefreshTokenError) as info:
        source({}, refresh_token_passphrase_env="WOCI_PW").get()
    assert "WOCI_PW" in str(info.value) and info.value.exit_code == 2


def test_passphrase_from_the_environment():
    """The variable's value is the passphrase, without any prompt."""
    ask = Asker()
    assert source({"WOCI_PW": "s3cret"}, ask, refresh_token_passphrase_env="WOCI_PW").get() == \
        "s3cret"
    assert ask.prompts == []


def test_prompt_wins_over_the_environment_and_is_asked_once():
    """Both configured: the typed passphrase is used, and asked only once per process."""
    ask = Asker("typed")
    src = source({"WOCI_PW": "from-env"}, ask, refresh_token_passphrase_env="WOCI_PW",
                 refresh_token_passphrase_prompt=True)
    assert src.get() == "typed"
    assert src.get() == "typed"
    assert len(ask.prompts) == 1 and "profile p" in ask.prompts[0]


def test_new_passphrase_must_be_confirmed():
    """Creating: a mismatching repetition is refused and nothing is kept."""
    with pytest.raises(woci.RefreshTokenError, match="differ"):
        source(ask=Asker("one", "two"), refresh_token_passphrase_prompt=True).get(creating=True)
    ask = Asker("same", "same")
    assert source(ask=ask, refresh_token_passphrase_prompt=True).get(creating=True) == "same"
    assert len(ask.prompts) == 2


def test_empty_typed_passphrase_is_refused():
    """An empty passphrase protects nothing."""
    with pytest.raises(woci.RefreshTokenError, match="empty passphrase"):
        source(ask=Asker(""), encrypt_refresh_token=True).get()


# --- the refresh token store ---------------------------------------------------------------------


def store(tmp_path, environ=None, **overrides):
    path = tmp_path / "refresh_token"
    return woci.RefreshTokenStore(path, source(environ, **overrides))


def test_plain_refresh_token_round_trip(tmp_path):
    """Without a passphrase the file is the token itself, mode 0600."""
    s = store(tmp_path)
    assert s.load() is None
    s.save("rt-abc.123")
    assert s.path.read_bytes() == b"rt-abc.123"
    assert mode_of(s.path) == 0o600
    assert s.load() == "rt-abc.123"
    assert not s.holds_encrypted()


def test_encrypted_refresh_token_round_trip(tmp_path):
    """With a passphrase: JSON with version, KDF, iterations, salt, nonce; no plain token."""
    s = store(tmp_path, {"PW": "correct horse"}, refresh_token_passphrase_env="PW")
    s.save("rt-secret-value")
    raw = s.path.read_bytes()
    assert b"rt-secret-value" not in raw
    doc = json.loads(raw)
    assert doc["version"] == 1 and doc["kdf"] == "pbkdf2-hmac-sha256"
    assert doc["iterations"] >= 200_000
    assert len(base64.b64decode(doc["salt"])) == 16
    assert len(base64.b64decode(doc["nonce"])) == 12
    assert mode_of(s.path) == 0o600
    assert s.holds_encrypted()
    fresh = store(tmp_path, {"PW": "correct horse"}, refresh_token_passphrase_env="PW")
    assert fresh.load() == "rt-secret-value"


def write_encrypted(tmp_path, token="rt-1", passphrase="pw", iterations=200_000):
    path = tmp_path / "refresh_token"
    path.write_bytes(woci.encrypt_refresh_token(token, passphrase, iterations))
    return path


def test_wrong_passphrase_is_an_error_and_changes_nothing(tmp_path):
    """Wrong passphrase: exit 2, 'wrong passphrase', the file byte-for-byte the same."""
    path = write_encrypted(tmp_path)
    before = path.read_bytes()
    with pytest.raises(woci.RefreshTokenError) as info:
        store(tmp_path, {"PW": "nope"}, refresh_token_passphrase_env="PW").load()
    assert "wrong passphrase" in str(info.value) and info.value.exit_code == 2
    assert path.read_bytes() == before


def test_tampered_ciphertext_is_detected(tmp_path):
    """A flipped ciphertext byte: 'wrong passphrase, or the file was altered'."""
    path = write_encrypted(tmp_path)
    doc = json.loads(path.read_bytes())
    data = bytearray(base64.b64decode(doc["ciphertext"]))
    data[0] ^= 1
    doc["ciphertext"] = base64.b64encode(bytes(data)).decode()
    path.write_text(json.dumps(doc))
    with pytest.raises(woci.RefreshTokenError, match="or the file was altered"):
        store(tmp_path, {"PW": "pw"}, refresh_token_passphrase_env="PW").load()


@pytest.mark.parametrize("damage", [
    lambda raw: raw[: len(raw) // 2],
    lambda raw: raw.replace(b'"pbkdf2-hmac-sha256"', b'"scrypt"'),
    lambda raw: raw.replace(b'"iterations": 200000', b'"iterations": 1000'),
    lambda raw: raw.replace(b'"salt"', b'"pepper"'),
], ids=["truncated", "unknown-kdf", "too-few-iterations", "no-salt"])
def test_damaged_encrypted_file_says_damaged(tmp_path, damage):
    """Truncated JSON, unknown KDF, implausible iterations, missing fields: 'damaged', exit 2."""
    path = write_encrypted(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    before = path.read_bytes()
    with pytest.raises(woci.RefreshTokenError) as info:
        store(tmp_path, {"PW": "pw"}, refresh_token_passphrase_env="PW").load()
    assert "is damaged" in str(info.value) and "session authenticate" in str(info.value)
    assert info.value.exit_code == 2
    assert path.read_bytes() == before


def test_iteration_count_is_read_from_the_file(tmp_path):
    """A file written with 250000 iterations opens: the count comes from the file."""
    path = write_encrypted(tmp_path, "rt-250k", "pw", iterations=250_000)
    assert json.loads(path.read_bytes())["iterations"] == 250_000
    assert store(tmp_path, {"PW": "pw"}, refresh_token_passphrase_env="PW").load() == "rt-250k"


def test_encrypted_file_without_a_passphrase_configured_is_an_error(tmp_path):
    """Encrypted on disk, no passphrase source: exit 2 saying how to configure one."""
    path = write_encrypted(tmp_path)
    before = path.read_bytes()
    with pytest.raises(woci.RefreshTokenError) as info:
        store(tmp_path).load()
    assert "is encrypted and no passphrase is configured" in str(info.value)
    assert info.value.exit_code == 2
    assert path.read_bytes() == before


@pytest.mark.parametrize("content", [b"", b"  \n", b"\xff\xfe\x00bin", b"two words"])
def test_damaged_plain_refresh_token_is_an_error(tmp_path, content):
    """Empty, blank, binary or spaced plain files: 'damaged', exit 2."""
    (tmp_path / "refresh_token").write_bytes(content)
    with pytest.raises(woci.RefreshTokenError, match="is damaged"):
        store(tmp_path).load()


def test_unreadable_refresh_token_is_exit_2(tmp_path, monkeypatch):
    """SPEC 9: a refresh token that cannot be read is exit 2, like an undecryptable one, not
    the runtime failure (exit 1) of a file that cannot be written."""
    (tmp_path / "refresh_token").mkdir()
    with pytest.raises(woci.RefreshTokenError, match="is a folder") as info:
        store(tmp_path).load()
    assert info.value.exit_code == 2
    (tmp_path / "refresh_token").rmdir()
    (tmp_path / "refresh_token").write_bytes(b"rt-1")

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(woci.os, "open", refuse)   # read_file_if_present opens with os.open
    with pytest.raises(woci.RefreshTokenError, match="Permission denied") as info:
        store(tmp_path).load()
    assert info.value.exit_code == 2


def test_saving_over_an_encrypted_file_does_not_ask_for_confirmation(tmp_path):
    """A rotated token re-encrypted with the known passphrase: one prompt, no repetition."""
    write_encrypted(tmp_path, "rt-old", "pw", iterations=200_000)
    ask = Asker("pw")
    s = store(tmp_path, ask=ask, refresh_token_passphrase_prompt=True)
    assert s.load() == "rt-old"
    s.save("rt-new")
    assert len(ask.prompts) == 1
    assert s.load() == "rt-new"


# --- the OCI config ------------------------------------------------------------------------------

VALUES = {"key_file": "/h/.oci/sessions/p/oci_api_key.pem",
          "security_token_file": "/h/.oci/sessions/p/token",
          "fingerprint": "aa:bb", "tenancy": "ocid1.tenancy.oc1..t", "region": "us-ashburn-1"}


def parse(text):
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


def test_upsert_creates_the_profile_in_an_absent_file():
    """No file: a new [p] section with every value, one per line."""
    text = woci.upsert_profile(None, "p", VALUES)
    assert text == "[p]\n" + "".join(f"{k}={v}\n" for k, v in VALUES.items())


def test_upsert_appends_a_new_profile_and_keeps_everything_else():
    """Other profiles, comments and order stay byte-for-byte; the new one comes last."""
    old = "# my config\n[DEFAULT]\nuser=ocid1.user\n; note\n\n[other]\nregion = eu-1\n"
    new = woci.upsert_profile(old, "p", VALUES)
    assert new.startswith(old + "\n[p]\n")
    assert dict(parse(new)["p"]) == {**dict(parse(old)["DEFAULT"]), **VALUES}


def test_upsert_replaces_keys_in_place_and_adds_missing_ones():
    """Existing keys keep their position (case-insensitive), new ones follow the last key."""
    old = ("[a]\nkey_file=/a\n\n[p]\n# session profile\nKey_File = /old/key\n"
           "user=ocid1.user.keep\nregion = eu-1\n\n[z]\nx=1\n")
    new = woci.upsert_profile(old, "p", VALUES)
    assert new == (
        "[a]\nkey_file=/a\n\n[p]\n# session profile\n"
        f"key_file={VALUES['key_file']}\nuser=ocid1.user.keep\nregion=us-ashburn-1\n"
        f"security_token_file={VALUES['security_token_file']}\nfingerprint=aa:bb\n"
        f"tenancy={VALUES['tenancy']}\n\n[z]\nx=1\n")


def test_upsert_leaves_commented_out_keys_alone():
    """`# key_file=...` is a comment, not the key."""
    old = "[p]\n#key_file=/commented\n"
    new = woci.upsert_profile(old, "p", {"key_file": "/k"})
    assert new == "[p]\n#key_file=/commented\nkey_file=/k\n"


def test_upsert_keeps_crlf_line_endings():
    """A CRLF file stays CRLF, new lines included, and other sections are untouched."""
    old = "[a]\r\nx=1\r\n\r\n[p]\r\nregion=eu\r\n"
    new = woci.upsert_profile(old, "p", {"region": "us", "tenancy": "t"})
    assert new == "[a]\r\nx=1\r\n\r\n[p]\r\nregion=us\r\ntenancy=t\r\n"
    assert "\n" not in new.replace("\r\n", "")


def test_upsert_handles_a_file_without_trailing_newline():
    """The last line gets its newline before new keys or a new section follow."""
    assert woci.upsert_profile("[p]\nuser=u", "p", {"tenancy": "t"}) == "[p]\nuser=u\ntenancy=t\n"
    assert woci.upsert_profile("[a]\nx=1", "p", {"k": "v"}) == "[a]\nx=1\n\n[p]\nk=v\n"


def test_upsert_replaces_a_value_with_continuation_lines():
    """The continuation lines of a replaced value go; those of other keys stay."""
    old = "[p]\nkey_file=/old\n  still old\n\tand more\nnote=first\n  second\n"
    new = woci.upsert_profile(old, "p", {"key_file": "/new"})
    assert new == "[p]\nkey_file=/new\nnote=first\n  second\n"
    assert parse(new)["p"]["note"] == "first\nsecond"


def test_upsert_profile_default():
    """The OCI config's [DEFAULT] is edited like any profile."""
    old = "[DEFAULT]\nregion=eu\n\n[q]\nx=1\n"
    new = woci.upsert_profile(old, "DEFAULT", {"tenancy": "t"})
    assert new == "[DEFAULT]\nregion=eu\ntenancy=t\n\n[q]\nx=1\n"


def test_upsert_key_with_colon_delimiter_and_equals_in_value():
    """`key: value=with=equals` is the key `key` (configparser takes the first delimiter)."""
    old = "[p]\nsecurity_token_file: /odd=path/token\n"
    new = woci.upsert_profile(old, "p", {"security_token_file": "/new/token"})
    assert new == "[p]\nsecurity_token_file=/new/token\n"
    assert parse(new)["p"]["security_token_file"] == "/new/token"


section_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEF_-0123456789", min_size=1,
                        max_size=8).filter(lambda s: s not in ("p", "DEFAULT"))
keys = st.one_of(st.sampled_from(list(VALUES) + ["user", "pass_phrase"]),
                 st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10))
values = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126,
                                        blacklist_characters="%[]"), min_size=1, max_size=15)
separators = st.sampled_from(["=", " = ", ": ", " : "])
extras = st.sampled_from(["", "# a comment\n", "; another\n", "\n", "\n\n"])


@st.composite
def config_texts(draw):
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    sections = draw(st.lists(section_names, unique=True, max_size=4))
    with_profile = draw(st.booleans())
    position = draw(st.integers(0, len(sections)))
    order = list(sections)
    if with_profile:
        order.insert(position, "p")
    chunks = {}
    expected = {}
    for name in order:
        lines = [f"[{name}]\n"]
        expected[name] = {}
        for key in draw(st.lists(keys, unique=True, max_size=4)):
            value = draw(values)
            lines.append(draw(extras))
            lines.append(f"{key}{draw(separators)}{value}\n")
            expected[name][key] = value
        lines.append(draw(extras))
        chunks[name] = "".join(lines).replace("\n", newline)
    return order, chunks, expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_texts(), st.dictionaries(st.sampled_from(list(VALUES)), values, min_size=1))
@example((["p"], {"p": "[p]\nfingerprint: a=b\n"}, {"p": {"fingerprint": "a=b"}}),
         {"fingerprint": "0"})
def test_upsert_leaves_other_sections_byte_for_byte(config, new_values):
    """For random configs, every other section's text is unchanged and [p] reads back right."""
    order, chunks, expected = config
    old = "".join(chunks[name] for name in order)
    new = woci.upsert_profile(old or None, "p", new_values)
    parsed = parse(new)
    for name in order:
        if name != "p":
            assert chunks[name] in new
            assert dict(parsed[name]) == expected[name]
    assert {k: parsed["p"][k] for k in new_values} == new_values
    for key, value in expected.get("p", {}).items():
        if key not in new_values:
            assert parsed["p"][key] == value
    if "p" in chunks:
        before, after = old.split(chunks["p"])
        assert new.startswith(before) and new.endswith(after)


def test_read_oci_config_refuses_invalid_ini(tmp_path):
    """Text oci could not read: exit 2 naming the file; woci changes nothing in it."""
    path = tmp_path / "config"
    path.write_text("key_file=/no/section\n")
    with pytest.raises(woci.ConfigError) as info:
        woci.read_oci_config(path)
    assert str(path) in str(info.value) and "not valid INI" in str(info.value)
    assert info.value.exit_code == 2
    path.write_bytes(b"[p]\nx=\xff\n")
    with pytest.raises(woci.ConfigError, match="not valid INI"):
        woci.read_oci_config(path)


def test_read_oci_config_absent_file(tmp_path):
    """No file: no text and an empty parse."""
    text, parser = woci.read_oci_config(tmp_path / "config")
    assert text is None and parser.sections() == []


def test_write_oci_config_keeps_the_file_mode(tmp_path):
    """An existing 0644 config stays 0644; a new one is 0600 in a 0700 folder."""
    path = tmp_path / "config"
    path.write_text("[a]\n")
    path.chmod(0o644)
    woci.write_oci_config(path, "[a]\n", "[a]\nx=1\n")
    assert path.read_text() == "[a]\nx=1\n" and mode_of(path) == 0o644
    new = tmp_path / "new" / "config"
    woci.write_oci_config(new, None, "[p]\n")
    assert mode_of(new) == 0o600 and mode_of(new.parent) == 0o700


def test_write_oci_config_follows_a_symlink(tmp_path):
    """A symlinked config (dotfiles repo) stays a symlink; its target gets the new text."""
    real = tmp_path / "dotfiles" / "oci_config"
    real.parent.mkdir()
    real.write_text("[a]\n")
    link = tmp_path / "config"
    link.symlink_to(real)
    woci.write_oci_config(link, "[a]\n", "[a]\nx=1\n")
    assert link.is_symlink()
    assert real.read_text() == "[a]\nx=1\n"


def test_write_oci_config_does_not_write_when_unchanged(tmp_path):
    """Same text: the file is not rewritten (same inode, same mtime)."""
    path = tmp_path / "config"
    path.write_text("[a]\n")
    before = os.stat(path)
    woci.write_oci_config(path, "[a]\n", "[a]\n")
    after = os.stat(path)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_upsert_finds_a_section_header_followed_by_a_comment():
    """`[dev]   # my dev` is section dev for configparser: it is updated, not duplicated."""
    text = "[dev]   # my dev\nuser=u\n"

    out = woci.upsert_profile(text, "dev", {"region": "r"})

    assert out == "[dev]   # my dev\nuser=u\nregion=r\n"


# --- removing the session's keys from a profile (--logout) ----------------------------------------


def test_remove_profile_keys_takes_only_the_session_keys_of_that_profile():
    """key_file, security_token_file, fingerprint (and a continuation line) leave [p]; the
    other profile's keys of the same name, comments, tenancy and region stay byte for byte."""
    text = ("# mine\n[other]\nkey_file=/k.pem\n\n[p]\n; note\nkey_file = /s/key.pem\n"
            "security_token_file: /s/token\nfingerprint=aa\n  :bb\ntenancy=t\nregion=r\n"
            "[after]\nfingerprint=cc\n")
    new, removed = woci.remove_profile_keys(text, "p", woci.SESSION_PROFILE_KEYS)
    assert new == ("# mine\n[other]\nkey_file=/k.pem\n\n[p]\n; note\ntenancy=t\nregion=r\n"
                   "[after]\nfingerprint=cc\n")
    assert removed == ["security_token_file", "key_file", "fingerprint"]
    assert woci.remove_profile_keys(new, "p", woci.SESSION_PROFILE_KEYS) == (new, [])
    assert woci.remove_profile_keys(text, "absent", woci.SESSION_PROFILE_KEYS) == (text, [])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_texts())
def test_remove_profile_keys_undoes_upsert_elsewhere_byte_for_byte(config):
    """For random configs: every other section unchanged, [p] loses just those keys."""
    order, chunks, expected = config
    old = "".join(chunks[name] for name in order)
    new, _ = woci.remove_profile_keys(old, "p", woci.SESSION_PROFILE_KEYS)
    parsed = parse(new)
    for name in order:
        if name != "p":
            assert chunks[name] in new
            assert dict(parsed[name]) == expected[name]
    if "p" in expected:
        assert dict(parsed["p"]) == {k: v for k, v in expected["p"].items()
                                     if k not in woci.SESSION_PROFILE_KEYS}


def test_forget_session_leaves_a_profile_that_is_not_woci(tmp_path):
    """A profile whose key_file is the user's own API key is not touched."""
    paths = woci.SessionPaths(tmp_path / ".oci" / "sessions" / "p")
    config = tmp_path / ".oci" / "config"
    config.parent.mkdir()
    config.write_text("[p]\nkey_file=/home/me/api.pem\nfingerprint=aa\n")
    assert woci.forget_session_in_profile(config, "p", paths, {"HOME": str(tmp_path)}) == []
    assert config.read_text() == "[p]\nkey_file=/home/me/api.pem\nfingerprint=aa\n"
    assert not Path(paths.root).exists()   # no lock folder made for nothing

    config.write_text(f"[p]\nkey_file={paths.key}\nsecurity_token_file={paths.token}\n"
                      "fingerprint=aa\nregion=r\n")
    removed = woci.forget_session_in_profile(config, "p", paths, {"HOME": str(tmp_path)})
    assert removed == ["security_token_file", "key_file", "fingerprint"]
    assert config.read_text() == "[p]\nregion=r\n"


# --- keyring storage, against keyrings.alt's real file backend -------------------------------------


@pytest.fixture
def file_keyring(tmp_path):
    """A real keyring backend (keyrings.alt, plain file) whose file lies in tmp_path."""
    from keyrings.alt.file import PlaintextKeyring

    backend = PlaintextKeyring()
    backend.file_path = str(tmp_path / "keyring.cfg")
    return backend


def keyring_stores(tmp_path, backend, environ=None, **overrides):
    paths = woci.SessionPaths(tmp_path / "sessions" / "p")
    Path(paths.folder).mkdir(parents=True)
    item = woci.KeyringItem.for_profile(tmp_path / "config", "p")
    opener = (lambda: (backend, "PlaintextKeyring")) if backend else \
        (lambda: (None, "no usable keyring backend (keyring.backends.fail.Keyring)"))
    file_store = woci.RefreshTokenStore(paths.refresh_token, source(environ, **overrides),
                                        paths.keyring_marker, item, opener)
    return paths, file_store, woci.KeyringRefreshTokenStore(item, file_store,
                                                            paths.keyring_marker, opener)


def test_keyring_item_is_one_per_config_file_and_profile(tmp_path):
    a = woci.KeyringItem.for_profile(tmp_path / "config", "p")
    assert a.service == "woci"
    assert a.username == f"{os.path.realpath(tmp_path / 'config')} [p]"
    assert a != woci.KeyringItem.for_profile(tmp_path / "config", "q")
    assert a != woci.KeyringItem.for_profile(tmp_path / "other", "p")


def test_keyring_round_trip_leaves_only_a_marker_on_disk(tmp_path, file_keyring):
    """The token goes to the keyring; the session folder holds only the item's name."""
    paths, _, store = keyring_stores(tmp_path, file_keyring)
    assert store.load() is None and not store.stored()
    store.save("rt-in-keyring")
    assert file_keyring.get_password(store.item.service, store.item.username) == "rt-in-keyring"
    assert not Path(paths.refresh_token).exists()
    assert "rt-in-keyring" not in Path(paths.keyring_marker).read_text()
    assert mode_of(paths.keyring_marker) == 0o600
    assert store.stored() and store.load() == "rt-in-keyring"
    assert not store.holds_encrypted() and not store.passphrase.configured
    assert woci.stored_refresh_token(paths) == ("keyring", None, False)


def test_which_store_can_hold_a_token_with_white_space(tmp_path, file_keyring):
    """Only the plain file is the token alone; the keyring and encrypted JSON hold any text,
    and forget() empties each."""
    paths, file_store, store = keyring_stores(tmp_path, file_keyring)
    assert store.can_hold("rt 2") and not file_store.can_hold("rt 2")
    store.save("rt 2")
    assert store.load() == "rt 2"
    store.forget()
    assert store.load() is None and not store.stored()
    encrypted = woci.RefreshTokenStore(paths.refresh_token, source({"PW": "pw"},
                                       refresh_token_passphrase_env="PW"))
    assert encrypted.can_hold("rt \u00e9\n2")
    _, file_store, away = keyring_stores(tmp_path / "away", None)
    assert not away.can_hold("rt 2") and away.can_hold("rt-2")


def test_file_to_keyring_and_back_keeps_the_token(tmp_path, file_keyring):
    """settle() moves the token each way; it is never in both places afterwards."""
    paths, file_store, store = keyring_stores(tmp_path, file_keyring)
    file_store.save("rt-moving")
    store.settle()
    assert not Path(paths.refresh_token).exists() and store.load() == "rt-moving"
    file_store.settle()
    assert Path(paths.refresh_token).read_text() == "rt-moving"
    assert not Path(paths.keyring_marker).exists()
    assert file_keyring.get_password(store.item.service, store.item.username) is None


def test_a_file_written_while_the_keyring_was_away_wins(tmp_path, file_keyring):
    """Both hold a token: the file is the newer (every keyring save removes it)."""
    paths, file_store, store = keyring_stores(tmp_path, file_keyring)
    store.save("rt-old")
    file_store.save("rt-new")
    assert store.load() == "rt-new"
    file_store.settle()
    assert Path(paths.refresh_token).read_text() == "rt-new" and not Path(paths.keyring_marker).exists()


def test_moving_an_encrypted_file_into_the_keyring_needs_its_passphrase(tmp_path, file_keyring):
    """An encrypted file is opened with the configured passphrase, then stored in the keyring."""
    environ = {"PW": "correct horse"}
    paths, file_store, store = keyring_stores(tmp_path, file_keyring, environ,
                                              refresh_token_passphrase_env="PW")
    file_store.save("rt-encrypted")
    assert store.passphrase.configured is False   # the keyring has no passphrase
    store.settle()
    assert store.load() == "rt-encrypted" and not Path(paths.refresh_token).exists()


def test_no_usable_keyring_is_one_warning_and_the_file(tmp_path, caplog):
    """No backend: one warning however often the store is used, and the file does the work."""
    paths, _, store = keyring_stores(tmp_path, None)
    store.settle()
    store.save("rt-in-file")
    assert store.load() == "rt-in-file"
    assert Path(paths.refresh_token).read_text() == "rt-in-file"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "keeping the refresh token in" in warnings[0]
    assert store.path == paths.refresh_token


def test_a_keyring_that_fails_to_write_keeps_the_token_in_the_file(tmp_path, file_keyring,
                                                                   caplog):
    """A rotated token must survive a keyring that refuses it."""
    paths, _, store = keyring_stores(tmp_path, file_keyring)
    (tmp_path / "a-file").write_text("")
    file_keyring.file_path = str(tmp_path / "a-file" / "keyring.cfg")   # cannot be written
    store.save("rt-rotated")
    assert Path(paths.refresh_token).read_text() == "rt-rotated"
    assert any("keeping the refresh token in" in r.getMessage() for r in caplog.records)


def test_a_keyring_failure_that_quotes_the_token_does_not_show_it(tmp_path, file_keyring,
                                                                 caplog):
    """A backend that runs a tool with the secret in its command line fails with an error
    quoting that command (subprocess.CalledProcessError does): the warning must not repeat
    the refresh token."""
    import subprocess

    def refuse(service, username, password):
        raise subprocess.CalledProcessError(1, ["secret-tool", "store", password])

    paths, _, store = keyring_stores(tmp_path, file_keyring)
    file_keyring.set_password = refuse
    store.save("rt-quoted-by-the-backend")
    assert Path(paths.refresh_token).read_text() == "rt-quoted-by-the-backend"
    assert "CalledProcessError" in caplog.text
    assert "rt-quoted-by-the-backend" not in caplog.text


def test_open_keyring_refuses_the_fail_and_null_backends(monkeypatch):
    """keyring's placeholders are no keyring: the null one would drop the token silently."""
    import keyring
    from keyring.backends import fail, null

    for placeholder in (fail.Keyring(), null.Keyring()):
        monkeypatch.setattr(keyring, "get_keyring", lambda p=placeholder: p)
        backend, why = woci.open_keyring()
        assert backend is None and why.startswith("no usable keyring backend")


def test_stored_refresh_token_reads_only_files(tmp_path):
    """file / encrypted-file / keyring / none, and a JWT refresh token's exp."""
    paths = woci.SessionPaths(tmp_path / "p")
    Path(paths.folder).mkdir()
    assert woci.stored_refresh_token(paths) == (None, None, False)
    Path(paths.refresh_token).write_text("opaque")
    assert woci.stored_refresh_token(paths) == ("file", None, False)
    Path(paths.refresh_token).write_text(unsigned_jwt({"exp": 1234}))
    assert woci.stored_refresh_token(paths) == ("file", 1234, False)
    Path(paths.refresh_token).write_bytes(woci.encrypt_refresh_token("t", "pw", 200_000))
    assert woci.stored_refresh_token(paths) == ("encrypted-file", None, False)
    for damaged in (b"", b"\xff\xfe", b"two words"):
        Path(paths.refresh_token).write_bytes(damaged)
        assert woci.stored_refresh_token(paths) == ("file", None, True)   # load() refuses it


# --- hostile files -------------------------------------------------------------------------------

DEEP_JSON = "[" * 100_000 + "]" * 100_000


def test_encrypted_refresh_token_nested_too_deeply_is_damaged(tmp_path):
    """JSON the parser gives up on (RecursionError): 'damaged', exit 2, like a truncated file."""
    path = tmp_path / "refresh_token"
    path.write_text('{"format": ' + DEEP_JSON + "}")
    with pytest.raises(woci.RefreshTokenError, match="is damaged") as info:
        store(tmp_path, {"PW": "pw"}, refresh_token_passphrase_env="PW").load()
    assert info.value.exit_code == 2


def test_session_token_nested_too_deeply_is_reported_not_raised(tmp_path):
    paths = woci.SessionPaths(str(tmp_path))
    payload = base64.urlsafe_b64encode(('{"exp": 1, "a": ' + DEEP_JSON + "}").encode())
    (tmp_path / "token").write_text("e30." + payload.decode().rstrip("=") + ".sig")
    state = woci.read_session_token(paths)
    assert state.token is None and "unusable" in state.problem


def test_keyring_marker_nested_too_deeply_names_no_item(tmp_path):
    (tmp_path / "refresh_token.keyring").write_text('{"service": ' + DEEP_JSON + "}")
    assert woci.KeyringItem.read_marker(str(tmp_path / "refresh_token.keyring")) is None


def test_remove_if_present_of_a_folder_is_a_storage_error(tmp_path):
    """A folder where woci expects its file (a pid file, a keyring marker): one line naming
    it, not an IsADirectoryError traceback."""
    (tmp_path / "woci_refresh.pid").mkdir()
    with pytest.raises(woci.StorageError, match="cannot remove .*woci_refresh.pid: Is a directory"):
        woci.remove_if_present(str(tmp_path / "woci_refresh.pid"))
    assert woci.remove_if_present(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_reading_what_is_no_regular_file_is_a_storage_error_at_once(tmp_path, kind):
    """A FIFO would hold the open up forever and /dev/zero never ends: neither is a file
    woci or oci wrote."""
    path = tmp_path / "token"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    with pytest.raises(woci.StorageError, match="not a regular file"):
        woci.read_file_if_present(str(path))


def test_reading_a_file_beyond_the_limit_is_a_storage_error(tmp_path, monkeypatch):
    monkeypatch.setattr(woci, "FILE_MAX_BYTES", 10)
    (tmp_path / "big").write_bytes(b"x" * 11)
    (tmp_path / "fits").write_bytes(b"x" * 10)
    with pytest.raises(woci.StorageError, match="larger than"):
        woci.read_file_if_present(str(tmp_path / "big"))
    assert woci.read_file_if_present(str(tmp_path / "fits")) == b"x" * 10


def test_a_session_token_that_is_a_fifo_is_reported_not_waited_for(tmp_path):
    os.mkfifo(tmp_path / "token")
    state = woci.read_session_token(woci.SessionPaths(str(tmp_path)))
    assert state.token is None and "not a regular file" in state.problem


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_an_unreadable_refresh_token_is_exit_2(tmp_path, kind):
    """SPEC 9: an unreadable refresh token is a configuration error (2), not a runtime one."""
    path = tmp_path / "refresh_token"
    path.mkdir() if kind == "folder" else os.mkfifo(path)
    with pytest.raises(woci.RefreshTokenError) as info:
        store(tmp_path).load()
    assert info.value.exit_code == 2 and str(path) in str(info.value)


def test_discovered_manager_ini_that_is_a_fifo_is_not_waited_for(tmp_path):
    os.mkfifo(tmp_path / "woci_manager.ini")
    assert woci.load_manager_ini([str(tmp_path / "woci_manager.ini")], explicit=False) == \
        (None, None)


def test_named_manager_ini_may_be_a_fifo_or_a_device(tmp_path):
    """`--manager-config <(vault ...)` and WOCI_MANAGER_CONFIG=/dev/null: the user named it,
    so it is read blocking, up to the same cap."""
    fifo = tmp_path / "from-vault"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "w") as writer:
            writer.write("[COMMON]\nscope = openid\n")

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    path, ini = woci.load_manager_ini([str(fifo)], explicit=True)
    feeder.join(5)
    assert path == str(fifo) and ini.get("COMMON", "scope") == "openid"
    path, ini = woci.load_manager_ini(["/dev/null"], explicit=True)
    assert path == "/dev/null" and ini.sections() == []


def test_named_file_that_streams_without_end_is_cut_at_the_cap(monkeypatch):
    monkeypatch.setattr(woci, "FILE_MAX_BYTES", 10)
    with pytest.raises(woci.StorageError, match="larger than"):
        woci.read_file_if_present("/dev/zero", named=True)


def test_named_manager_ini_that_is_a_folder_names_it_once(tmp_path):
    with pytest.raises(woci.ConfigError) as info:
        woci.load_manager_ini([str(tmp_path)], explicit=True)
    assert str(info.value).count(str(tmp_path)) == 1 and "folder" in str(info.value)


def test_manager_ini_line_endings_are_read_as_configparser_reads_a_file(tmp_path):
    path = tmp_path / "woci_manager.ini"
    path.write_bytes(b"[COMMON]\r\nscope = a\r\n[p]\rscope = b\r")
    _, parser = woci.load_manager_ini([str(path)], explicit=True)
    assert parser.get("COMMON", "scope") == "a" and parser.get("p", "scope") == "b"


@pytest.mark.parametrize("profile, values", [
    ("dev", {"tenancy": "ocid1\n[DEFAULT]\nkey_file=/etc/passwd"}),
    ("dev", {"region": "r\r"}),
    ("dev\n[DEFAULT]", {"region": "r"}),
], ids=["value-newline", "value-carriage-return", "profile-newline"])
def test_upsert_refuses_a_line_break_that_would_rewrite_the_file(profile, values):
    """The last guard of the user's OCI config: a line break in a value or the profile name
    would make lines (a section, a key) woci never meant to write."""
    text = "[DEFAULT]\nregion = us-ashburn-1\n"
    with pytest.raises(woci.ConfigError, match="line break"):
        woci.upsert_profile(text, profile, values)


def test_a_keyring_marker_naming_another_programs_item_names_none(tmp_path):
    """A marker edited (or damaged) to name another service's item would have woci send that
    secret to the provider as a refresh token, and --logout delete it: only woci's own
    service is taken."""
    marker = tmp_path / "refresh_token.keyring"
    marker.write_text(json.dumps({"service": "github.com", "username": "me"}))
    assert woci.KeyringItem.read_marker(str(marker)) is None
    marker.write_text(json.dumps({"service": "woci", "username": "/x/config [p]"}))
    assert woci.KeyringItem.read_marker(str(marker)) == ("woci", "/x/config [p]")


def test_atomic_write_removes_what_a_write_killed_before_its_rename_left(tmp_path):
    """A woci killed between mkstemp and rename leaves a temporary copy (a token, a refresh
    token) behind for good; the next write of that file removes old ones, never another
    writer's fresh one or anything not named like woci's."""
    target = tmp_path / "token"
    stale, fresh = tmp_path / ".token.abcd1234.tmp", tmp_path / ".token.efgh5678.tmp"
    other = tmp_path / ".token.someone-else.tmp"
    for path in (stale, fresh, other):
        path.write_bytes(b"half a tok")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    woci.atomic_write(str(target), b"new")
    assert sorted(os.listdir(tmp_path)) == sorted([".token.efgh5678.tmp", ".token.someone-else.tmp",
                                                   "token"])


def test_atomic_write_keeps_an_old_temporary_file_a_writer_still_holds(tmp_path):
    """A woci stopped (Ctrl-Z) between mkstemp and rename, or an NFS clock 10 minutes behind,
    makes a live writer's file look stale: its flock says it is not."""
    import fcntl

    held = tmp_path / ".token.abcd1234.tmp"
    held.write_bytes(b"half a tok")
    old = time.time() - 3600
    os.utime(held, (old, old))
    with open(held, "rb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)
        woci.atomic_write(str(tmp_path / "token"), b"new")
        assert held.exists()
    woci.atomic_write(str(tmp_path / "token"), b"newer")
    assert not held.exists()


def test_atomic_write_holds_a_lock_on_its_temporary_file_until_the_rename(tmp_path, monkeypatch):
    import fcntl

    seen = []
    real_replace = os.replace

    def replace(src, dst):
        with open(src, "rb") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("unlocked")
            except BlockingIOError:
                seen.append("locked")
        real_replace(src, dst)

    monkeypatch.setattr(woci.os, "replace", replace)
    woci.atomic_write(str(tmp_path / "token"), b"new")
    assert seen == ["locked"] and (tmp_path / "token").read_bytes() == b"new"


def test_a_passphrase_that_is_not_utf8_in_the_environment_works(tmp_path):
    """Python hands a variable's bytes that are not UTF-8 over as surrogates ('\\xff' ->
    '\\udcff'); encoding them strictly raised UnicodeEncodeError, a traceback at the first
    save. The variable's own bytes are the passphrase."""
    environ = {"PW": b"pass\xffword".decode("utf-8", "surrogateescape")}
    s = store(tmp_path, environ, refresh_token_passphrase_env="PW")
    s.save("rt-1")
    assert store(tmp_path, dict(environ), refresh_token_passphrase_env="PW").load() == "rt-1"


def test_rewriting_the_oci_config_keeps_its_owner(tmp_path, monkeypatch):
    """The rename puts a new file in the config's place, owned by whoever runs woci: a
    `sudo woci` keeping HOME made the user's own ~/.oci/config root's, mode 0600, and the
    user could no longer read it. The new file is given the old one's owner (only root can;
    anyone else writes files that are theirs already)."""
    config = tmp_path / "config"
    config.write_text("[DEFAULT]\nregion = r\n")
    given = []
    real_fchown = os.fchown

    def fchown(fd, uid, gid):
        given.append((uid, gid))
        real_fchown(fd, uid, gid)

    monkeypatch.setattr(woci.os, "fchown", fchown)
    woci.write_oci_config(str(config), "[DEFAULT]\nregion = r\n", "[DEFAULT]\nregion = s\n")
    info = os.stat(config)
    assert given == []   # already the owner's: no call
    assert config.read_text() == "[DEFAULT]\nregion = s\n"
    if os.geteuid() == 0:   # root can show it for real
        os.chown(config, 12345, 12345)
        woci.write_oci_config(str(config), "[DEFAULT]\nregion = s\n", "[DEFAULT]\nregion = t\n")
        assert (os.stat(config).st_uid, os.stat(config).st_gid) == (12345, 12345)
        assert given == [(12345, 12345)]


@pytest.mark.parametrize("code", [errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL])
def test_a_filesystem_refusing_chown_does_not_fail_the_oci_config_write(tmp_path, monkeypatch,
                                                                         code):
    config = tmp_path / "config"
    config.write_text("[DEFAULT]\nregion = r\n")
    info = os.stat(config)
    real_fstat = os.fstat

    def fstat(fd):   # as if the config were someone else's, so the chown is tried
        result = real_fstat(fd)
        return os.stat_result((*result[:4], info.st_uid + 1, *result[5:]))

    def fchown(fd, uid, gid):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(woci.os, "fstat", fstat)
    monkeypatch.setattr(woci.os, "fchown", fchown)
    woci.write_oci_config(str(config), "[DEFAULT]\nregion = r\n", "[DEFAULT]\nregion = s\n")
    assert config.read_text() == "[DEFAULT]\nregion = s\n"
