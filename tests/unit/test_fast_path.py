"""Section 5: the fast path (a valid session answered from two small files) and the OKE
credential cache, on real files in a throw-away HOME."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import oci_upst_session_manager as woci
from tests.unit.fakes import unsigned_jwt

NOW = int(time.time())   # the fast path also refuses an exp absurdly far ahead


MANAGER_INI = """[COMMON]
authz_base_url = http://127.0.0.1:9/authorize
token_url = http://127.0.0.1:9/token
auth_client_id = idp-client
client_id = oci-client
client_secret = oci-secret
"""


@pytest.fixture
def home(tmp_path):
    """A machine with a valid session for profile dev, wired in ~/.oci/config."""
    session = tmp_path / ".oci" / "sessions" / "dev"
    session.mkdir(parents=True)
    (tmp_path / ".oci" / "woci_manager.ini").write_text(MANAGER_INI)
    (tmp_path / ".oci" / "woci_manager.ini").chmod(0o600)   # it holds a secret
    (session / "token").write_text(unsigned_jwt({"exp": NOW + 3000}))
    (tmp_path / ".oci" / "config").write_text(
        f"[DEFAULT]\nregion = us-ashburn-1\n\n[dev]\nkey_file = {session}/oci_api_key.pem\n"
        f"security_token_file = {session}/token\n")
    return tmp_path


def answer(home, *argv, now=NOW, **environ):
    return woci.fast_path(list(argv), {"HOME": str(home), "PATH": "/usr/bin", **environ}, now)


def test_valid_wired_session_execs_oci_with_the_profile(home):
    """The answer is oci's argv, as the full way would build it, and nothing else to do."""
    result = answer(home, "--profile", "dev", "os", "ns", "get")
    assert result.oci_argv == ["oci", "--auth", "security_token", "--profile", "dev",
                               "os", "ns", "get"]
    assert result.output is None and result.env["HOME"] == str(home)


def test_no_oci_command_is_nothing_to_do(home):
    assert answer(home, "--profile", "dev") == (None, None, None)


@pytest.mark.parametrize("argv, why", [
    (["--profile", "dev", "session", "authenticate"], "a session command"),
    (["--profile", "dev", "session", "refresh"], "a session command"),
    (["--auto-refresh", "--profile", "dev", "os", "ns", "get"], "--auto-refresh"),
    (["--daemon", "--profile", "dev"], "a mode"),
    (["--client-secret", "s", "--profile", "dev", "os", "ns", "get"], "a secret flag"),
    (["--profile", "dev", "--scope"], "bad arguments"),
    (["--profile", "../x", "os", "ns", "get"], "a profile that is no folder name"),
    (["--profile", "other", "os", "ns", "get"], "no session"),
])
def test_what_the_fast_path_leaves_to_the_full_way(home, argv, why):
    assert answer(home, *argv) is None, why


def test_a_session_about_to_expire_goes_the_full_way(home):
    assert answer(home, "--profile", "dev", "os", "ns", "get", now=NOW + 2950) is None


@pytest.mark.parametrize("config", [
    "[dev]\nsecurity_token_file = /elsewhere/token\nkey_file = /k\n",
    "[dev]\nkey_file = /k\n",
    "[prod]\nkey_file = /k\nsecurity_token_file = {token}\n",
    # the [dev] hidden in a comment line is no section to configparser, nor here
    "[DEFAULT]\n# note\x85[dev]\nkey_file = /k\n",
    # oci would read a path with a newline in it
    "[dev]\nkey_file = /k\nsecurity_token_file = {token}\n  more\n",
    # oci refuses a duplicate section
    "[dev]\nkey_file = /k\nsecurity_token_file = {token}\n[dev]\nregion = r\n",
])
def test_an_unwired_profile_goes_the_full_way(home, config):
    token = home / ".oci" / "sessions" / "dev" / "token"
    (home / ".oci" / "config").write_text(config.format(token=token))
    assert answer(home, "--profile", "dev", "os", "ns", "get") is None


def test_default_section_is_every_profiles_base_as_in_oci(home):
    token = home / ".oci" / "sessions" / "dev" / "token"
    (home / ".oci" / "config").write_text(
        f"[DEFAULT]\nkey_file = /k\nsecurity_token_file = {token}\n[dev]\nregion = r\n")
    assert answer(home, "--profile", "dev", "os", "ns", "get").oci_argv is not None


def test_manager_ini_auto_refresh_and_passphrase_variable_are_honoured(home):
    """auto_refresh = true in the INI: the full way (oci as a child); the passphrase variable
    and WOCI_*_SECRET never reach oci's environment."""
    ini = home / ".oci" / "woci_manager.ini"
    ini.write_text(MANAGER_INI + "refresh_token_passphrase_env = MY_PASS\n[dev]\nauto_refresh = no\n")
    env = answer(home, "--profile", "dev", "os", "ns", "get", MY_PASS="p", WOCI_CLIENT_SECRET="s",
                 WOCI_AUTH_CLIENT_SECRET="a", KEEP="k").env
    assert "MY_PASS" not in env and "WOCI_CLIENT_SECRET" not in env
    assert "WOCI_AUTH_CLIENT_SECRET" not in env and env["KEEP"] == "k"

    ini.write_text(MANAGER_INI + "[dev]\nauto_refresh = true\n")
    assert answer(home, "--profile", "dev", "os", "ns", "get") is None


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_secret_in_an_ini_others_can_read_goes_the_full_way_which_warns(home, mode):
    """The full way says `chmod 600` at every run until it is done; the fast path must not
    keep that quiet."""
    ini = home / ".oci" / "woci_manager.ini"
    ini.chmod(mode)
    assert answer(home, "--profile", "dev", "os", "ns", "get") is None
    ini.write_text(MANAGER_INI.replace("client_secret = oci-secret\n", ""))
    assert answer(home, "--profile", "dev", "os", "ns", "get",
                  WOCI_CLIENT_SECRET="s").oci_argv is not None   # no secret in it: fine
    ini.write_text(MANAGER_INI + "[prod]\nauth_client_secret = s2\n")   # another profile's
    assert answer(home, "--profile", "dev", "os", "ns", "get") is None


def test_an_explicit_manager_ini_that_is_missing_goes_the_full_way(home):
    assert answer(home, "--manager-config", str(home / "nope.ini"), "--profile", "dev",
                  "os", "ns", "get") is None


@pytest.mark.parametrize("unreadable", [b"\xff\xfe[COMMON]\n", None])
def test_an_unreadable_manager_ini_beside_the_config_goes_the_full_way_which_warns(
        home, unreadable):
    """SPEC 3: a discovered manager INI that cannot be read draws a warning. The fast path
    must not skip it silently for the next candidate, ~/.oci/woci_manager.ini."""
    folder = home / "elsewhere"
    folder.mkdir()
    shutil.copy(home / ".oci" / "config", folder / "config")
    beside = folder / woci.MANAGER_INI_NAME
    if unreadable is None:
        beside.mkdir()   # a folder in its place: open() fails
    else:
        beside.write_bytes(unreadable)   # not UTF-8
    assert answer(home, "--config-file", str(folder / "config"), "--profile", "dev",
                  "os", "ns", "get") is None
    beside.rename(folder / "moved-away")   # nothing there: the next candidate, quietly
    assert answer(home, "--config-file", str(folder / "config"), "--profile", "dev",
                  "os", "ns", "get").oci_argv is not None


@pytest.mark.parametrize("ini_extra, why", [
    ("[dev]\nauto_refresh = maybe\n", "a value build_settings refuses"),
    ("[dev]\nredirect_port = banana\n", "a value build_settings refuses"),
    ("[dev]\nno_such_key = 1\n", "an unknown key (the full way warns)"),
    ("this is not ini\n", "a line that is no INI"),
    ("[dev]\nrefresh_token_passphrase_env =\n    MY_PASS\n", "a value on a continuation line"),
    ("[COMMON]\nscope = again\n", "a section given twice"),
])
def test_a_manager_ini_the_full_way_would_refuse_or_read_otherwise_goes_the_full_way(
        home, ini_extra, why):
    (home / ".oci" / "woci_manager.ini").write_text(MANAGER_INI + ini_extra)
    assert answer(home, "--profile", "dev", "os", "ns", "get") is None, why


def test_missing_settings_go_the_full_way_which_says_so(home):
    (home / ".oci" / "woci_manager.ini").write_text("[COMMON]\nclient_id = c\n")
    assert answer(home, "--profile", "dev", "os", "ns", "get") is None


def test_ini_sections_reads_one_line_values_like_configparser():
    text = "[a]\nk = v\nx: y = z\n; comment = no\n  # indented comment\n[b]\nk = other\n" \
           "  continued in b\n[c]\nk2=w\r\n"
    assert woci.ini_sections(text, ("a", "c")) == {"a": {"k": "v", "x": "y = z"},
                                                    "c": {"k2": "w"}}


@pytest.mark.parametrize("text", [
    "[a]\nk = v\n  continued\n",       # configparser joins it into the value
    "[a]\nk = v\n[a]\nj = w\n",          # a duplicate section: configparser refuses
    "[a]\nk = v\nk = w\n",              # a duplicate key: configparser refuses
    "k = v\n[a]\n",                     # a key before any section
    "[a]\njust words\n",                # no separator
])
def test_ini_sections_gives_up_where_configparser_would_read_otherwise(text):
    assert woci.ini_sections(text, ("a",)) is None


# --- the OKE credential cache ------------------------------------------------------------------


def credential(expires):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
    return json.dumps({"kind": "ExecCredential", "apiVersion": "client.authentication.k8s.io/v1beta1",
                       "status": {"token": "t", "expirationTimestamp": stamp}}).encode() + b"\n  "


OKE_ARGS = ["--profile", "dev", "ce", "cluster", "generate-token", "--cluster-id", "c1"]


def store(home, output, args=OKE_ARGS, environ=None):
    environ = {"HOME": str(home), "PATH": "/usr/bin", **(environ or {})}
    paths = woci.SessionPaths.for_profile("dev", environ)
    key = woci.credential_cache_key(str(home / ".oci" / "config"), "dev", args, environ)
    woci.store_credential(paths, key, output)
    return Path(woci.credential_cache_path(paths, key))


def test_a_stored_credential_is_given_back_byte_for_byte_until_30_s_before_it_expires(home):
    now = time.time()
    output = credential(now + 240)
    entry = store(home, output)
    assert entry.stat().st_mode & 0o777 == 0o600

    assert answer(home, *OKE_ARGS, now=now).output == output
    assert answer(home, *OKE_ARGS, now=now + 205).output == output   # 34-35 s left
    assert answer(home, *OKE_ARGS, now=now + 215) is None             # 24-25 s left


def test_the_cache_is_keyed_by_every_argument_and_bypassed_with_no_cache(home):
    now = time.time()
    store(home, credential(now + 240))
    assert answer(home, *OKE_ARGS[:-1], "c2", now=now) is None
    assert answer(home, "--no-cache", *OKE_ARGS, now=now) is None


def test_oci_cli_variables_are_part_of_the_key_but_secrets_are_not_kept(home):
    """OCI_CLI_REGION makes oci sign for another region: another entry. A variable naming a
    passphrase is not written into the entry."""
    now = time.time()
    output = credential(now + 240)
    entry = store(home, output, environ={"OCI_CLI_REGION": "us-ashburn-1",
                                         "OCI_CLI_PASSPHRASE": "hunter2"})
    assert answer(home, *OKE_ARGS, now=now, OCI_CLI_REGION="us-ashburn-1").output == output
    assert answer(home, *OKE_ARGS, now=now, OCI_CLI_REGION="us-phoenix-1") is None
    assert answer(home, *OKE_ARGS, now=now) is None
    assert "hunter2" not in entry.read_text()


def test_an_expired_session_does_not_stop_a_valid_cached_credential(home):
    """The credential is signed already: it stays good for its own life."""
    now = time.time()
    output = credential(now + 240)
    store(home, output)
    assert answer(home, *OKE_ARGS, now=now + 100).output == output


@pytest.mark.parametrize("output", [b"not json", b'{"status": {}}',
                                    b'{"status": {"expirationTimestamp": "soon"}}', b"\xff"])
def test_an_answer_without_a_readable_expiry_is_not_kept(home, output):
    entry = store(home, output)
    assert not entry.exists()


def test_clear_credential_cache_forgets_everything_and_tolerates_nothing_there(home):
    entry = store(home, credential(time.time() + 240))
    paths = woci.SessionPaths.for_profile("dev", {"HOME": str(home)})
    woci.clear_credential_cache(paths)
    assert not entry.parent.exists()
    woci.clear_credential_cache(paths)


# --- what the fast path imports ----------------------------------------------------------------

# Loading any of these on a valid session is a regression: they cost kubectl's every call.
NOT_ON_THE_FAST_PATH = {
    "requests", "urllib3", "cryptography", "jwt", "logging", "configparser", "subprocess",
    "tempfile", "hashlib", "_hashlib", "dataclasses", "typing", "inspect", "ast", "http",
    "http.server", "urllib.request", "html", "getpass", "secrets", "random", "select",
    "datetime", "shutil", "argparse", "pathlib", "fnmatch", "urllib.parse", "ipaddress",
    "threading", "signal", "fcntl",
}


def test_the_fast_path_loads_only_what_it_needs(home):
    """In a fresh interpreter, main() on a valid session: the modules it added to Python's
    own start-up are the few it needs, and none of the slow path's."""
    script = textwrap.dedent(f"""
        import sys
        before = set(sys.modules)
        import oci_upst_session_manager as woci
        code = woci.main(["--profile", "dev"], {{"HOME": {str(home)!r}}})
        print(code)
        print(" ".join(sorted(set(sys.modules) - before)))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    code, modules = result.stdout.splitlines()
    loaded = set(modules.split())
    assert code == "0"
    assert "oci_upst_session_manager" in loaded
    assert loaded & NOT_ON_THE_FAST_PATH == set(), sorted(loaded & NOT_ON_THE_FAST_PATH)
    assert {"json", "base64"} <= loaded | set(sys.builtin_module_names)


def test_modules_named_only_for_annotations_are_imported_where_they_are_used():
    """configparser, subprocess and threading appear at the top for annotations only: a
    function that uses one at run time imports it itself (else: NameError, on a path tests
    may miss)."""
    import ast

    tree = ast.parse(Path(woci.__file__).read_text())
    lazy = {"configparser", "subprocess", "threading", "signal", "fcntl"}
    unimported = []
    # Outermost functions and methods: a nested function sees its enclosing one's imports.
    outermost = [node for top in tree.body
                 for node in (top.body if isinstance(top, ast.ClassDef) else [top])
                 if isinstance(node, ast.FunctionDef)]
    for function in outermost:
        imported = {alias.name for node in ast.walk(function) if isinstance(node, ast.Import)
                    for alias in node.names}
        annotations = set()
        for node in ast.walk(function):
            for annotation in (getattr(node, "annotation", None), getattr(node, "returns", None)):
                if annotation is not None:
                    annotations |= {id(part) for part in ast.walk(annotation)}
        for node in ast.walk(function):
            if isinstance(node, ast.Name) and node.id in lazy and id(node) not in annotations \
                    and node.id not in imported:
                unimported.append(f"{function.name}: {node.id} (line {node.lineno})")
    assert unimported == []


def test_every_name_the_module_uses_is_bound():
    """The imports kept off the fast path live in the functions that use them: pyflakes'
    undefined-name check (ruff F821) finds one forgotten on a path no test reaches."""
    beside = Path(sys.executable).with_name("ruff")   # the test extra installs it
    ruff = str(beside) if beside.exists() else shutil.which("ruff") or "ruff"
    result = subprocess.run([ruff, "check", "--no-cache", "--select", "F821,F822,F823",
                             "--output-format", "concise", woci.__file__],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- hostile files -------------------------------------------------------------------------------


def test_a_cache_entry_nested_too_deeply_is_ignored(home):
    """A damaged entry is ignored (oci runs), whatever the damage: here JSON the parser
    gives up on with RecursionError."""
    entry = store(home, credential(time.time() + 240))
    entry.write_text('{"key": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert answer(home, *OKE_ARGS) is None


def test_oci_output_nested_too_deeply_is_not_kept(home):
    entry = store(home, ('{"status": ' + "[" * 100_000 + "]" * 100_000 + "}").encode())
    assert not entry.exists()


@pytest.mark.parametrize("exp", [10 ** 400, -(10 ** 400)], ids=["huge", "huge-negative"])
def test_a_token_with_an_exp_no_float_can_hold_goes_the_full_way(home, exp):
    """exp - now, now a float as main() passes it, would raise OverflowError."""
    (home / ".oci" / "sessions" / "dev" / "token").write_text(unsigned_jwt({"exp": exp}))
    assert answer(home, "--profile", "dev", "os", "ns", "get", now=time.time()) is None


def test_a_cache_entry_whose_expiry_no_float_can_hold_is_ignored(home):
    entry = store(home, credential(time.time() + 240))
    document = json.loads(entry.read_text())
    document["expires_at"] = 10 ** 400
    entry.write_text(json.dumps(document))
    assert answer(home, *OKE_ARGS, now=time.time()) is None


@pytest.mark.parametrize("name", ["config", "woci_manager.ini"])
def test_a_fifo_for_the_oci_config_or_the_manager_ini_goes_the_full_way_at_once(home, name):
    (home / ".oci" / name).unlink()
    os.mkfifo(home / ".oci" / name)
    assert answer(home, "--profile", "dev", "os", "ns", "get") is None


def test_a_file_where_the_cache_folder_should_be_is_removed_not_a_failed_sign_in(home):
    """clear_credential_cache runs in every sign-in: a stray file in the folder's place
    made it fail (rmtree of a file) after the refresh token was stored."""
    paths = woci.SessionPaths.for_profile("dev", {"HOME": str(home)})
    Path(paths.credential_cache).write_text("not a folder")
    assert woci.clear_credential_cache(paths) is True
    assert not os.path.lexists(paths.credential_cache)
    store(home, credential(time.time() + 240))   # and the cache works again
    assert answer(home, *OKE_ARGS, now=time.time()) is not None
