"""Section 10: main() as users and kubectl see it: exit codes, stdout kept for oci, one-line
errors, and the fast path run as a real process."""

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import oci_upst_session_manager as woci
from tests.unit.fakes import make_settings, unsigned_jwt

MODULE = Path(woci.__file__).resolve()
REQUIRED_INI = """\
[COMMON]
authz_base_url = http://127.0.0.1:9/authorize
token_url = http://127.0.0.1:9/token
auth_client_id = idp-client
client_id = oci-client
client_secret = oci-secret
"""
FAKE_OCI = "#!/bin/sh\necho \"fake oci ran\" >&2\nfor arg in \"$@\"; do echo \"$arg\"; done\n"


def one_line_error(err):
    assert err.count("\n") == 1 and err.startswith("woci: error: "), err
    assert "Traceback" not in err
    return err


def test_help_goes_to_stdout_and_exits_0(tmp_path, capsys):
    """--help: usage and every woci option on stdout, a pointer to `oci --help`, exit 0."""
    assert woci.main(["--help"], {"HOME": str(tmp_path)}) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: woci [woci options] [oci arguments...]")
    for flag in ("--manager-config", "--token-url", "--auto-refresh", "--exec", "--daemon"):
        assert flag in out
    assert "oci --help" in out
    assert err == ""


def test_help_lists_the_sign_in_flows(tmp_path, capsys):
    """--help names the three login flows, the issuer and the browser command."""
    assert woci.main(["--help"], {"HOME": str(tmp_path)}) == 0
    out = capsys.readouterr().out
    assert "--login-flow browser|device|manual" in out
    for word in ("browser:", "device:", "manual:", "--issuer", "--browser-command",
                 "--login-flow device"):
        assert word in out


def test_version_goes_to_stdout_and_exits_0(tmp_path, capsys):
    """--version prints `woci <version>` on stdout."""
    assert woci.main(["--version"], {"HOME": str(tmp_path)}) == 0
    assert capsys.readouterr() == (f"woci {woci.__version__}\n", "")


def test_missing_settings_exit_2_and_write_nothing_to_stdout(tmp_path, capsys):
    """No manager INI: exit 2, one line naming every missing key, stdout empty."""
    assert woci.main(["os", "ns", "get"], {"HOME": str(tmp_path)}) == 2
    out, err = capsys.readouterr()
    assert out == ""
    one_line_error(err)
    for key in woci.REQUIRED_KEYS:
        assert key in err


@pytest.mark.parametrize("argv, environ, fragment, code", [
    (["--redirect-port", "abc", "os"], {}, "must be a port number 1-65535, not 'abc'", 2),
    (["--scope"], {}, "--scope needs a value", 2),
    (["--exec"], {}, "--exec needs a command", 2),
    (["--daemon", "--stop-daemon"], {}, "cannot be combined", 2),
    (["os"], {"WOCI_MANAGER_CONFIG": "/nonexistent/woci.ini"}, "does not exist", 2),
    (["--profile", "a/b", "os"], {}, "cannot be a folder name", 2),
])
def test_bad_input_is_one_line_without_traceback(tmp_path, capsys, argv, environ, fragment, code):
    """Usage and configuration errors: the exit code, one line on stderr, nothing on stdout."""
    assert woci.main(argv, {"HOME": str(tmp_path), **environ}) == code
    out, err = capsys.readouterr()
    assert out == ""
    assert fragment in one_line_error(err)


def make_home(tmp_path, token_exp=None, config=None):
    """A HOME with the manager INI and, optionally, a session token and wired profile p."""
    home = tmp_path / "home"
    session = home / ".oci" / "sessions" / "p"
    session.mkdir(parents=True)
    ini = home / ".oci" / "woci_manager.ini"
    ini.write_text(REQUIRED_INI)
    ini.chmod(0o600)
    if token_exp is not None:
        (session / "token").write_text(unsigned_jwt({"exp": token_exp}))
        (session / "token").chmod(0o600)
    if config is None:
        config = (f"[p]\nkey_file={session / 'oci_api_key.pem'}\n"
                  f"security_token_file={session / 'token'}\n")
    (home / ".oci" / "config").write_text(config)
    return home


def test_invalid_oci_config_is_exit_2_and_unchanged(tmp_path, capsys):
    """An OCI config that is not INI: exit 2 naming it, the file untouched, nothing on stdout."""
    home = make_home(tmp_path, token_exp=int(time.time()) + 3600, config="garbage\n")
    code = woci.main(["--profile", "p", "os", "ns", "get"], {"HOME": str(home)})
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "not valid INI" in one_line_error(err)
    assert (home / ".oci" / "config").read_text() == "garbage\n"


def test_session_authenticate_in_ci_says_what_to_run(tmp_path, capsys):
    """`session authenticate` with CI=true: exit 1 at once, one line naming the command."""
    home = make_home(tmp_path)
    code = woci.main(["--profile", "p", "session", "authenticate"],
                     {"HOME": str(home), "CI": "true"})
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert "woci --profile p session authenticate" in one_line_error(err)


def test_daemon_status_without_a_daemon(tmp_path, capsys):
    """--daemon-status with none running: exit 1 and the report on stdout."""
    assert woci.main(["--daemon-status", "--profile", "p"], {"HOME": str(tmp_path)}) == 1
    assert capsys.readouterr().out == "no woci daemon runs for profile p\n"


# --- as a real process ---------------------------------------------------------------------------


def run_woci(args, env, cwd):
    return subprocess.run([sys.executable, str(MODULE)] + args, env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


def fake_oci_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    oci = bin_dir / "oci"
    oci.write_text(FAKE_OCI)
    oci.chmod(0o755)
    return f"{bin_dir}:/usr/bin:/bin"


def test_import_does_not_load_network_or_crypto_libraries(tmp_path):
    """Importing woci loads neither requests, cryptography nor jwt (the fast path's budget)."""
    code = ("import oci_upst_session_manager, sys; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('requests','cryptography','jwt')))")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(MODULE.parent),
           "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "[]\n"


def test_fast_path_runs_oci_with_profile_and_auth_and_nothing_else_on_stdout(tmp_path):
    """Valid session: stdout is exactly oci's; oci got --auth security_token and the user's
    own --profile p (not a second one), then the command (SPEC section 6 order)."""
    home = make_home(tmp_path, token_exp=int(time.time()) + 3600)
    env = {"HOME": str(home), "PATH": fake_oci_path(tmp_path)}
    config_before = (home / ".oci" / "config").read_bytes()
    result = run_woci(["--profile", "p", "os", "ns", "get"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "--auth\nsecurity_token\n--profile\np\nos\nns\nget\n"
    assert result.stderr == "fake oci ran\n"
    assert (home / ".oci" / "config").read_bytes() == config_before


def test_fast_path_with_profile_from_the_environment_adds_both_options(tmp_path):
    """OCI_CLI_PROFILE=p: oci gets `--profile p --auth security_token os ns get` exactly."""
    home = make_home(tmp_path, token_exp=int(time.time()) + 3600)
    env = {"HOME": str(home), "PATH": fake_oci_path(tmp_path), "OCI_CLI_PROFILE": "p"}
    result = run_woci(["os", "ns", "get"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "--profile\np\n--auth\nsecurity_token\nos\nns\nget\n"


def test_fast_path_passes_oci_exit_code_through(tmp_path):
    """oci's own exit code is woci's."""
    home = make_home(tmp_path, token_exp=int(time.time()) + 3600)
    path = fake_oci_path(tmp_path)
    (tmp_path / "bin" / "oci").write_text("#!/bin/sh\nexit 3\n")
    result = run_woci(["--profile", "p", "os", "ns", "get"],
                      {"HOME": str(home), "PATH": path}, tmp_path)
    assert (result.returncode, result.stdout) == (3, "")


def test_oci_missing_is_exit_127_with_one_line(tmp_path):
    """No oci on PATH: exit 127, one line on stderr, nothing on stdout."""
    home = make_home(tmp_path, token_exp=int(time.time()) + 3600)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_woci(["--profile", "p", "os", "ns", "get"],
                      {"HOME": str(home), "PATH": str(empty)}, tmp_path)
    assert result.returncode == 127
    assert result.stdout == ""
    assert "oci not found on PATH" in one_line_error(result.stderr)


def test_profile_alone_checks_the_session_and_runs_nothing(tmp_path):
    """`woci --profile p` with a valid session: exit 0 and oci is not run (README example)."""
    home = make_home(tmp_path, token_exp=int(time.time()) + 3600)
    result = run_woci(["--profile", "p"], {"HOME": str(home), "PATH": fake_oci_path(tmp_path)},
                      tmp_path)
    assert result.returncode == 0
    assert "fake oci ran" not in result.stderr
    assert result.stdout == ""


def test_no_arguments_checks_the_session_and_runs_nothing(tmp_path):
    """`woci` with OCI_CLI_PROFILE set and a valid session: exit 0, oci not run, no output."""
    home = make_home(tmp_path, token_exp=int(time.time()) + 3600)
    result = run_woci([], {"HOME": str(home), "PATH": fake_oci_path(tmp_path),
                           "OCI_CLI_PROFILE": "p"}, tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


# --- the session tools as main() runs them ---------------------------------------------------------


def test_status_needs_no_manager_config_and_loads_no_heavy_library(tmp_path):
    """--status --json with no INI at all (keyring storage marker present): the JSON on
    stdout, exit 0, and neither requests, cryptography, jwt nor keyring imported."""
    home = tmp_path / "home"
    session = home / ".oci" / "sessions" / "p"
    session.mkdir(parents=True)
    (session / "token").write_text(unsigned_jwt({"exp": int(time.time()) + 600, "sub": "me"}))
    (session / "refresh_token.keyring").write_text('{"service": "woci", "username": "x"}')
    code = ("import json, sys, oci_upst_session_manager as w; rc = w.main(['--profile', 'p', "
            "'--status', '--json']); print(sorted(m for m in sys.modules if m.split('.')[0] "
            "in ('requests', 'cryptography', 'jwt', 'keyring')), file=sys.stderr); "
            "sys.exit(rc)")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(MODULE.parent), "HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "[]\n"
    document = json.loads(out.stdout)
    assert document["session"]["subject"] == "me"
    assert document["refresh_token"] == {"stored": True, "storage": "keyring",
                                         "expires_at": None}


def test_json_alone_is_a_usage_error(tmp_path, capsys):
    assert woci.main(["--json"], {"HOME": str(tmp_path)}) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--json works only with --status" in one_line_error(err)


def test_help_lists_the_session_tools_in_their_group(tmp_path, capsys):
    assert woci.main(["--help"], {"HOME": str(tmp_path)}) == 0
    out = capsys.readouterr().out
    group = out.split("Session tools:")[1].split("examples:")[0]
    for flag in ("--status", "--json", "--logout", "--doctor"):
        assert flag in group
    assert "woci --profile dev --doctor" in out


def test_logout_with_nothing_stored_needs_no_settings(tmp_path, capsys):
    assert woci.main(["--profile", "p", "--logout"], {"HOME": str(tmp_path)}) == 0
    assert capsys.readouterr() == ("nothing to do: no session is stored for profile p\n", "")


@pytest.mark.parametrize("how", ["flag", "env"])
@pytest.mark.parametrize("content", [None, "[COMMON]\nscope = a\n[COMMON]\nscope = b\n"])
def test_logout_with_an_explicit_manager_ini_it_cannot_use_is_exit_2_and_changes_nothing(
        tmp_path, capsys, how, content):
    """SPEC 3: an explicit manager INI that cannot be read or parsed is exit 2, for --logout
    too: going on without it would delete the session it names the revocation endpoint for."""
    home = make_home(tmp_path, token_exp=int(time.time()) + 3600)
    ini = tmp_path / "explicit.ini"
    if content is not None:
        ini.write_text(content)
    environ = {"HOME": str(home)}
    argv = ["--profile", "p", "--logout"]
    if how == "flag":
        argv += ["--manager-config", str(ini)]
    else:
        environ["WOCI_MANAGER_CONFIG"] = str(ini)
    config_before = (home / ".oci" / "config").read_text()
    assert woci.main(argv, environ) == 2
    out, err = capsys.readouterr()
    assert out == "" and str(ini) in one_line_error(err)
    assert (home / ".oci" / "sessions" / "p" / "token").exists()
    assert (home / ".oci" / "config").read_text() == config_before


def test_doctor_without_configuration_fails_naming_every_required_key(tmp_path, capsys):
    code = woci.main(["--profile", "p", "--doctor"], {"HOME": str(tmp_path), "PATH": "/none"})
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in out + err
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    for key in woci.REQUIRED_KEYS:
        assert any(line.startswith(f"FAIL {key}: not set") for line in fails), key


@pytest.mark.parametrize("argv", [["--status", "--json"], ["--status"], ["--version"],
                                  ["--help"]])
def test_a_reader_gone_from_stdout_is_no_traceback(tmp_path, argv):
    """`woci --status --json | jq -e ...` where the reader exits first (or kubectl that
    stopped reading): writing to the closed pipe raised BrokenPipeError, a traceback on
    stderr. Nobody is left to read the answer: woci ends quietly, exit 1."""
    read_end, write_end = os.pipe()
    os.close(read_end)   # the reader is gone before woci writes
    script = f"import sys; sys.path.insert(0, {str(MODULE.parent)!r}); " \
             "import oci_upst_session_manager as w; sys.exit(w.main())"
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    try:
        result = subprocess.run([sys.executable, "-c", script, *argv], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert "BrokenPipeError" not in result.stderr
    assert result.returncode == 1


class GoneReader(io.StringIO):
    """A stdout whose reader has gone: every write is EPIPE."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_daemon_started_for_a_reader_gone_is_exit_0(tmp_path, monkeypatch):
    """`woci --daemon | true`: the pid is lost, but the daemon runs, so exit 0 (SPEC)."""
    monkeypatch.setattr(woci, "ensure_in_child", lambda session: None)
    monkeypatch.setattr(woci, "start_daemon", lambda renewer, paths: 4242)
    monkeypatch.setattr(sys, "stdout", GoneReader())
    settings = make_settings(oci_config_file=str(tmp_path / ".oci" / "config"))
    cmd = woci.split_command_line(["--daemon"])
    assert woci.run_daemon_mode(cmd, settings, {"HOME": str(tmp_path)}) == woci.EXIT_OK


def test_a_broken_pipe_that_is_not_stdouts_is_not_hidden(monkeypatch):
    """Only woci's own stdout writes mean 'nobody reads': one from anywhere else (a socket,
    a child's pipe) is a fault, not a quiet exit 1."""
    def run(cmd, environ):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(woci, "run", run)
    with pytest.raises(BrokenPipeError):
        woci.main(["--doctor"], {"HOME": "/nonexistent"})


@pytest.mark.parametrize("argv", [["--help", "--exec", "--", "ls"], ["--status", "--help"],
                                  ["--status", "--daemon", "--help"], ["--json", "-h"],
                                  ["--profile", "p", "--doctor", "--help"],
                                  ["--scope", "--help", "--help"]])
def test_help_wins_over_every_other_woci_option(tmp_path, capsys, argv):
    """Users type --help anywhere among woci's options: no usage error in its place."""
    assert woci.main(argv, {"HOME": str(tmp_path)}) == 0
    assert capsys.readouterr().out.startswith("usage: woci")


@pytest.mark.parametrize("argv", [["--exec", "--", "ls", "--help"], ["os", "ns", "get", "--help"],
                                  ["--", "--help"], ["--scope", "--help"]])
def test_a_help_that_belongs_to_the_command_or_a_value_is_not_woci_s(argv):
    assert woci.split_command_line(argv).mode is not woci.Mode.HELP


def test_help_states_the_cap_on_the_two_second_settings(tmp_path, capsys):
    """Above SETTING_SECONDS_MAX is exit 2: the help says so where the option is."""
    assert woci.main(["--help"], {"HOME": str(tmp_path)}) == 0
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--login-timeout", "--refresh-safety-window"):
        entry = out[out.index(f"{flag} "):]
        assert f"at most {woci.SETTING_SECONDS_MAX}" in entry[:entry.index("Default")], flag


@pytest.mark.parametrize("kind", ["folder", "missing"])
def test_doctor_names_a_bad_manager_config_once(tmp_path, capsys, kind):
    path = tmp_path / ("folder" if kind == "folder" else "missing.ini")
    if kind == "folder":
        path.mkdir()
    woci.main(["--manager-config", str(path), "--doctor"], {"HOME": str(tmp_path)})
    line = next(line for line in capsys.readouterr().out.splitlines()
                if line.startswith("FAIL manager config"))
    assert line.count("manager config") == 1 and line.count(str(path)) == 1, line
