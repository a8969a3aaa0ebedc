"""Section 3: splitting argv between woci and oci, and settings from flags, INI and defaults."""

import logging
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import oci_upst_session_manager as woci

split = woci.split_command_line

REQUIRED_INI = """\
[COMMON]
authz_base_url = https://idp.example/authorize
token_url = https://idp.example/token
auth_client_id = idp-client
client_id = oci-client
client_secret = oci-secret
"""


def settings_from(argv, ini_text=REQUIRED_INI, environ=None, path=Path("/cfg/woci_manager.ini")):
    environ = {"HOME": "/home/u"} if environ is None else environ
    ini = woci.parse_manager_ini(ini_text, str(path)) if ini_text is not None else None
    return woci.build_settings(split(argv), environ, ini, path if ini else None)


# --- split_command_line ------------------------------------------------------------------------


def test_woci_options_before_the_command_are_consumed():
    """Both `--opt value` and `--opt=value` are woci's; the rest goes to oci in order."""
    cmd = split(["--scope", "openid", "--redirect-port=9000", "--auto-refresh", "os", "ns", "get"])
    assert cmd.woci == {"scope": "openid", "redirect_port": "9000", "auto_refresh": True}
    assert cmd.oci_args == ["os", "ns", "get"]
    assert cmd.mode is woci.Mode.RUN


def test_value_of_an_option_may_look_like_an_option():
    """The word after a valued option is its value even when it starts with '-'."""
    cmd = split(["--scope", "--weird", "os"])
    assert cmd.woci["scope"] == "--weird"
    assert cmd.oci_args == ["os"]


def test_status_after_the_command_goes_to_oci():
    """`woci compute instance list --status RUNNING` gives --status to oci."""
    cmd = split(["compute", "instance", "list", "--status", "RUNNING"])
    assert cmd.oci_args == ["compute", "instance", "list", "--status", "RUNNING"]
    assert cmd.woci == {}


def test_woci_named_options_after_the_command_belong_to_oci():
    """--scope, --client-id, --client-secret after the oci command are oci's, untouched."""
    argv = ["iam", "something", "--scope", "x", "--client-id", "y", "--client-secret=z"]
    cmd = split(argv)
    assert cmd.woci == {}
    assert cmd.oci_args == argv


def test_double_dash_ends_woci_options():
    """After `--`, even woci's option names go to oci, and `--` itself is not passed."""
    cmd = split(["--auto-refresh", "--", "--scope", "s", "os"])
    assert cmd.woci == {"auto_refresh": True}
    assert cmd.oci_args == ["--scope", "s", "os"]


@pytest.mark.parametrize("argv", [
    ["os", "ns", "get", "--manager-config", "/m.ini"],
    ["os", "ns", "get", "--manager-config=/m.ini"],
    ["--manager-config", "/m.ini", "os", "ns", "get"],
    ["--", "os", "--manager-config", "/m.ini", "ns", "get"],
])
def test_manager_config_is_taken_anywhere_and_not_passed_on(argv):
    """--manager-config anywhere (even after `--`) is woci's and never reaches oci."""
    cmd = split(argv)
    assert cmd.woci == {"manager_config": "/m.ini"}
    assert cmd.oci_args == ["os", "ns", "get"]


def test_oci_options_are_read_anywhere_and_still_passed_on():
    """--profile/--config-file/--region/--auth are read in both forms and kept in place."""
    argv = ["--profile", "dev", "os", "ns", "get", "--region=eu-frankfurt-1",
            "--config-file", "/c", "--auth=security_token"]
    cmd = split(argv)
    assert cmd.oci_options == {"profile": "dev", "region": "eu-frankfurt-1",
                               "config_file": "/c", "auth": "security_token"}
    assert cmd.oci_args == argv


def test_oci_option_before_woci_option_does_not_end_woci_options():
    """`--profile p --auto-refresh os` : --auto-refresh is still woci's."""
    cmd = split(["--profile", "p", "--auto-refresh", "os"])
    assert cmd.woci == {"auto_refresh": True}
    assert cmd.oci_args == ["--profile", "p", "os"]


def test_exec_takes_the_rest_as_the_command():
    """`--exec -- CMD ARGS` runs CMD with its own options, which woci does not read."""
    cmd = split(["--auto-refresh", "--exec", "--", "./job.sh", "--scope", "x", "--profile", "q"])
    assert cmd.mode is woci.Mode.EXEC
    assert cmd.exec_argv == ("./job.sh", "--scope", "x", "--profile", "q")
    assert cmd.woci == {"auto_refresh": True}
    assert split(["--exec", "make", "all"]).exec_argv == ("make", "all")


@pytest.mark.parametrize("argv, fragment", [
    (["--exec"], "--exec needs a command"),
    (["--exec", "--"], "--exec needs a command"),
    (["--scope"], "--scope needs a value"),
    (["os", "--profile"], "--profile needs a value"),
    (["--manager-config"], "--manager-config needs a value"),
    (["--auto-refresh=yes"], "--auto-refresh takes no value"),
    (["--daemon=1"], "--daemon takes no value"),
    (["--daemon", "--stop-daemon"], "--stop-daemon cannot be combined with --daemon"),
    # --exec is a mode too: it must not silently drop the one chosen before it
    (["--status", "--exec", "--", "sh"], "--exec cannot be combined with --status"),
    (["--daemon", "--exec", "sh"], "--exec cannot be combined with --daemon"),
])
def test_bad_command_lines_are_usage_errors(argv, fragment):
    """Missing values, values on flags and two modes are one-line usage errors (exit 2)."""
    with pytest.raises(woci.ConfigError) as info:
        split(argv)
    assert fragment in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("argv, mode", [
    (["--help"], "help"), (["-h"], "help"), (["--version"], "version"),
    (["--daemon"], "daemon"), (["--daemon-status"], "daemon_status"),
    (["--stop-daemon"], "stop_daemon"), (["--status"], "status"), (["--logout"], "logout"),
    (["--doctor"], "doctor")])
def test_mode_flags(argv, mode):
    """Each mode flag selects its mode."""
    assert split(argv).mode is woci.Mode[mode.upper()]


@given(st.lists(st.sampled_from(["os", "ns", "get", "--status", "RUNNING", "--scope", "x",
                                 "--client-id", "--debug", "-o", "json"]), min_size=1))
def test_arguments_from_an_oci_command_on_reach_oci_unchanged(rest):
    """Whatever follows the oci command word (with no woci-anywhere options) reaches oci as is."""
    cmd = split(["--auto-refresh", "compute"] + rest)
    assert cmd.oci_args == ["compute"] + rest
    assert cmd.woci == {"auto_refresh": True}


# --- oci_action ----------------------------------------------------------------------------------


@pytest.mark.parametrize("oci_args, action", [
    ([], "none"),
    (["session", "authenticate"], "authenticate"),
    (["--profile", "p", "session", "authenticate", "--region", "r"], "authenticate"),
    (["--profile=p", "session", "refresh"], "refresh"),
    (["session", "validate"], "run"),
    (["os", "ns", "get"], "run"),
    (["--output", "json", "session", "refresh"], "refresh"),
    (["--endpoint=http://127.0.0.1:1", "--debug", "session", "authenticate"], "authenticate"),
    (["session", "--profile", "p", "refresh"], "refresh"),
    (["--query", "session", "os", "ns", "get"], "run"),
    (["--debug"], "run"),
])
def test_oci_action_reads_session_subcommands(oci_args, action):
    """session authenticate/refresh are woci's; other commands run oci; nothing means none."""
    assert woci.oci_action(oci_args) is woci.OciAction[action.upper()]


@pytest.mark.parametrize("oci_args", [["--profile", "dev"], ["--profile=dev"],
                                      ["--region", "r", "--profile", "dev"]])
def test_only_oci_options_is_no_command(oci_args):
    """`woci --profile dev` is documented as "make sure the session is valid, run nothing"."""
    assert woci.oci_action(oci_args) is woci.OciAction.NONE


# --- build_settings ------------------------------------------------------------------------------


def test_precedence_flag_over_profile_over_common_over_default():
    """scope from the flag, redirect_port from [p], login_timeout from [COMMON], rest default."""
    ini = REQUIRED_INI + """\
scope = common-scope
redirect_port = 7000
login_timeout = 42

[p]
scope = profile-scope
redirect_port = 7001
"""
    s = settings_from(["--profile", "p", "--scope", "flag-scope", "os"], ini)
    assert s.scope == "flag-scope"
    assert s.redirect_port == 7001
    assert s.login_timeout == 42.0
    assert s.refresh_safety_window == woci.DEFAULT_REFRESH_SAFETY_WINDOW
    assert s.redirect_path == "/callback"
    assert s.profile == "p"
    assert s.token_exchange_url == "https://idp.example/token"
    assert s.auth_client_secret is None


def test_defaults_when_only_required_values_are_set():
    """Defaults from the spec: scope, port 8181, 300 s login, interactive, WARNING."""
    s = settings_from([], environ={"HOME": "/home/u"})
    assert (s.scope, s.redirect_port, s.login_timeout, s.interactive, s.log_level) == (
        "openid offline_access", 8181, 300, True, "WARNING")
    assert s.profile == "DEFAULT"
    assert s.redirect_uri == "http://127.0.0.1:8181/callback"
    assert s.oci_config_file == "/home/u/.oci/config"


def test_manager_ini_default_section_is_ordinary():
    """[DEFAULT] gives nothing to profile p, and is the section of profile DEFAULT."""
    ini = REQUIRED_INI + "\n[DEFAULT]\nscope = default-only\nredirect_port = 9999\n"
    assert settings_from(["--profile", "p"], ini).scope == "openid offline_access"
    s = settings_from([], ini)
    assert s.profile == "DEFAULT"
    assert (s.scope, s.redirect_port) == ("default-only", 9999)


def test_profile_from_environment_and_flag_wins():
    """OCI_CLI_PROFILE picks the profile; --profile beats it."""
    env = {"HOME": "/h", "OCI_CLI_PROFILE": "envp"}
    assert settings_from([], environ=env).profile == "envp"
    assert settings_from(["--profile=flagp"], environ=env).profile == "flagp"


@pytest.mark.parametrize("profile", ["a/b", "..", "."])
def test_profile_that_cannot_be_a_folder_is_refused(profile):
    """A profile name is a folder under sessions/: slashes and dots are refused."""
    with pytest.raises(woci.ConfigError, match="cannot be a folder name"):
        settings_from(["--profile", profile])


@pytest.mark.parametrize("environ, argv, ini_extra, interactive", [
    ({"CI": "true"}, [], "", False),
    ({"CI": "1"}, [], "", False),
    ({"CI": "false"}, [], "", True),
    ({}, ["--non-interactive"], "", False),
    ({}, [], "interactive = no\n", False),
    ({"CI": "true"}, [], "interactive = true\n", False),
])
def test_interactive_is_false_when_any_source_says_so(environ, argv, ini_extra, interactive):
    """CI=true, --non-interactive or interactive = false each make woci non-interactive."""
    s = settings_from(argv, REQUIRED_INI + ini_extra, environ={"HOME": "/h", **environ})
    assert s.interactive is interactive


def test_missing_required_settings_are_listed_in_one_message():
    """All five required keys, with their flags and where to set them, in one line, exit 2."""
    with pytest.raises(woci.ConfigError) as info:
        settings_from(["--profile", "p", "--client-id", "c"], ini_text=None)
    message = str(info.value)
    assert info.value.exit_code == 2
    assert "\n" not in message
    for key in ("authz_base_url", "token_url", "auth_client_id", "client_secret"):
        assert key in message
    assert "client_id (--client-id)" not in message
    assert "[p]" in message and "[COMMON]" in message and "woci_manager.ini" in message


@pytest.mark.parametrize("argv, ini_extra, fragment", [
    (["--token-url", "ftp://x/token"], "", "token_url in --token-url must be an http(s) URL"),
    ([], "[DEFAULT]\nauthz_base_url = idp.example/authorize\n", "must be an http(s) URL"),
    (["--redirect-port", "0"], "", "port number 1-65535"),
    (["--redirect-port", "65536"], "", "port number 1-65535"),
    ([], "redirect_port = eighty\n", "port number 1-65535"),
    (["--login-timeout", "soon"], "", "positive number of seconds"),
    (["--refresh-safety-window", "-5"], "", "positive number of seconds"),
    (["--login-timeout", "nan"], "", "positive number of seconds"),
    (["--log-level", "chatty"], "", "one of DEBUG, INFO, WARNING, ERROR"),
    ([], "encrypt_refresh_token = perhaps\n", "is not a boolean"),
    ([], "redirect_path = callback\n", "must start with '/'"),
])
def test_bad_values_are_configuration_errors(argv, ini_extra, fragment):
    """Bad URLs, ports, numbers, levels, booleans and paths: ConfigError (exit 2)."""
    with pytest.raises(woci.ConfigError) as info:
        settings_from(argv, REQUIRED_INI + ini_extra)
    assert fragment in str(info.value)
    assert info.value.exit_code == 2


def test_region_from_ini_and_from_the_command_line_are_kept_apart():
    """INI region is `region`; --region is `cli_region` (written only to a profile without)."""
    s = settings_from(["--region", "eu-1", "os"], REQUIRED_INI + "region = us-1\n")
    assert (s.region, s.cli_region) == ("us-1", "eu-1")


def test_ini_booleans_and_levels():
    """encrypt_refresh_token = yes is true; log_level is case-insensitive."""
    s = settings_from([], REQUIRED_INI + "encrypt_refresh_token = yes\nlog_level = debug\n")
    assert s.encrypt_refresh_token is True and s.encryption_wanted is True
    assert s.log_level == "DEBUG"


def test_unknown_ini_keys_are_warned_about(caplog):
    """A typo in the INI is named in a warning, not silently ignored."""
    with caplog.at_level(logging.WARNING, logger="woci"):
        settings_from([], REQUIRED_INI + "tokn_url = x\n")
    assert "tokn_url" in caplog.text


# --- where the files are -------------------------------------------------------------------------


def test_oci_config_file_resolution(tmp_path):
    """--config-file > OCI_CLI_CONFIG_FILE > ~/.oci/config, with ~ from environ's HOME."""
    env = {"HOME": str(tmp_path)}
    assert woci.resolve_oci_config_file(split([]), env) == str(tmp_path / ".oci" / "config")
    env2 = {**env, "OCI_CLI_CONFIG_FILE": "~/other"}
    assert woci.resolve_oci_config_file(split([]), env2) == str(tmp_path / "other")
    assert woci.resolve_oci_config_file(split(["--config-file", "/x/c"]), env2) == "/x/c"
    # relative: from the working folder, so the daemon (which works from /) finds it too
    assert woci.resolve_oci_config_file(split(["--config-file", "rel/c"]), env2) == \
        os.path.join(os.getcwd(), "rel", "c")


def test_manager_config_candidates(tmp_path):
    """Flag > WOCI_MANAGER_CONFIG (explicit) > beside the OCI config > ~/.oci (discovered)."""
    env = {"HOME": str(tmp_path)}
    cfg = "/etc/oci/config"
    assert woci.manager_config_candidates(split([]), env, cfg) == (
        ["/etc/oci/woci_manager.ini", str(tmp_path / ".oci" / "woci_manager.ini")], False)
    env2 = {**env, "WOCI_MANAGER_CONFIG": "~/m.ini"}
    assert woci.manager_config_candidates(split([]), env2, cfg) == ([str(tmp_path / "m.ini")], True)
    assert woci.manager_config_candidates(split(["--manager-config", "/f.ini"]), env2, cfg) == (
        ["/f.ini"], True)


def test_explicit_manager_config_that_does_not_exist_is_an_error(tmp_path):
    """An explicit path that is missing: exit 2 naming it."""
    missing = tmp_path / "nope.ini"
    with pytest.raises(woci.ConfigError) as info:
        woci.load_manager_ini([missing], explicit=True)
    assert str(missing) in str(info.value) and "does not exist" in str(info.value)
    assert info.value.exit_code == 2


def test_explicit_manager_config_that_cannot_be_read_is_an_error(tmp_path):
    """An explicit path that is a folder: exit 2, naming the manager config."""
    with pytest.raises(woci.ConfigError, match="manager config: .* is a folder"):
        woci.load_manager_ini([tmp_path], explicit=True)


def test_discovered_manager_config_that_cannot_be_read_is_skipped_with_a_warning(tmp_path, caplog):
    """An unreadable (folder) and an undecodable candidate are warned about; the next is used."""
    unreadable = tmp_path / "a" / "woci_manager.ini"
    unreadable.mkdir(parents=True)
    binary = tmp_path / "b.ini"
    binary.write_bytes(b"\xff\xfe[COMMON]\n")
    good = tmp_path / "c.ini"
    good.write_text("[COMMON]\nscope = s\n")
    with caplog.at_level(logging.WARNING, logger="woci"):
        path, ini = woci.load_manager_ini([unreadable, binary, good], explicit=False)
    assert path == good and ini.get("COMMON", "scope") == "s"
    assert str(unreadable) in caplog.text and str(binary) in caplog.text
    assert "going on without it" in caplog.text


def test_no_manager_config_found_is_fine(tmp_path):
    """Nothing discovered: no INI, no error."""
    assert woci.load_manager_ini([tmp_path / "x.ini"], explicit=False) == (None, None)


def test_duplicate_section_in_manager_config_is_an_error(tmp_path):
    """A duplicate section: exit 2 naming the file and the section."""
    path = tmp_path / "woci_manager.ini"
    path.write_text("[p]\nscope = a\n[p]\nscope = b\n")
    with pytest.raises(woci.ConfigError) as info:
        woci.load_manager_ini([path], explicit=False)
    assert str(path) in str(info.value) and "'p'" in str(info.value)
    assert "not valid INI" in str(info.value)
    assert info.value.exit_code == 2


def test_world_readable_ini_with_a_secret_is_warned_about(tmp_path, caplog):
    """A 0644 INI holding client_secret gets a 'chmod 600' warning; 0600 or no secret: none."""
    path = tmp_path / "woci_manager.ini"
    path.write_text(REQUIRED_INI)
    ini = woci.parse_manager_ini(REQUIRED_INI, str(path))
    with caplog.at_level(logging.WARNING, logger="woci"):
        path.chmod(0o644)
        woci.warn_if_secrets_exposed(path, ini)
        assert f"chmod 600 {path}" in caplog.text
        caplog.clear()
        path.chmod(0o600)
        woci.warn_if_secrets_exposed(path, ini)
        path.chmod(0o644)
        woci.warn_if_secrets_exposed(path, woci.parse_manager_ini("[p]\nscope = s\n", "x"))
    assert caplog.text == ""


def test_non_ascii_digits_are_not_a_port():
    """`--redirect-port ²` is one clear configuration error, not a traceback."""
    with pytest.raises(woci.ConfigError, match="port number"):
        woci._convert("redirect_port", "port", "²", "--redirect-port")


# --- the session tools' options and settings -----------------------------------------------------


def test_status_json_is_a_flag_of_the_status_mode():
    """--status --json in either order; --json elsewhere is refused by the combination check."""
    for argv in (["--status", "--json"], ["--json", "--status"]):
        cmd = split(argv)
        assert cmd.mode is woci.Mode.STATUS and cmd.woci == {"json": True}
        woci.check_option_combinations(cmd)
    for argv in (["--json"], ["--json", "--doctor"], ["--json", "os", "ns", "get"]):
        with pytest.raises(woci.ConfigError, match="--json works only with --status") as info:
            woci.check_option_combinations(split(argv))
        assert info.value.exit_code == 2


def test_status_and_json_after_the_oci_command_belong_to_oci():
    """`compute instance list --status RUNNING --json`: oci's, not woci's."""
    cmd = split(["compute", "instance", "list", "--status", "RUNNING", "--json"])
    assert cmd.mode is woci.Mode.RUN and cmd.woci == {}
    assert cmd.oci_args == ["compute", "instance", "list", "--status", "RUNNING", "--json"]


def test_session_tools_are_one_help_group():
    """--status, --json, --logout, --doctor and --no-cache stand together under "Session tools"."""
    tools = [spec.flag for spec in woci.OPTIONS if spec.group == "Session tools"]
    assert tools == ["--status", "--json", "--logout", "--doctor", "--no-cache"]
    assert "json" not in woci.INI_KINDS


def test_refresh_token_storage_and_revocation_url_from_the_ini():
    """refresh_token_storage is file (default) or keyring, any case; revocation_url an URL."""
    assert settings_from([]).refresh_token_storage == "file"
    assert settings_from([]).revocation_url is None
    s = settings_from([], REQUIRED_INI + "refresh_token_storage = KeyRing\n"
                      "revocation_url = https://idp.example/revoke\n")
    assert s.refresh_token_storage == "keyring"
    assert s.revocation_url == "https://idp.example/revoke"
    with pytest.raises(woci.ConfigError, match="must be one of file, keyring, not 'vault'"):
        settings_from([], REQUIRED_INI + "refresh_token_storage = vault\n")
    with pytest.raises(woci.ConfigError, match="must be an http"):
        settings_from([], REQUIRED_INI + "revocation_url = idp.example/revoke\n")


def test_settings_without_required_keys_for_the_session_tools():
    """required=(): no error for what is missing, empty strings instead."""
    s = woci.build_settings(split(["--profile", "p"]), {"HOME": "/h"}, None, None, required=())
    assert (s.token_url, s.client_id, s.token_exchange_url) == ("", "", "")
    assert s.profile == "p"


def test_describe_settings_names_the_source_of_each_value():
    """flag > env > [profile] > [COMMON] > default, as build_settings decides."""
    ini = REQUIRED_INI + "scope = common\nlogin_timeout = 10\n\n[p]\nscope = mine\n" \
                         "redirect_port = \nrefresh_token_storage = bad\n"
    parsed = woci.parse_manager_ini(ini, "/cfg/w.ini")
    described = {item.key: item for item in woci.describe_settings(
        split(["--profile", "p", "--client-id", "flagged"]),
        {"HOME": "/h", "WOCI_CLIENT_SECRET": "from-env", "CI": "true"}, parsed,
        Path("/cfg/w.ini"))}
    assert described["scope"] == ("scope", "mine", "/cfg/w.ini [p]", None)
    assert described["login_timeout"].source == "/cfg/w.ini [COMMON]"
    assert described["client_id"] == ("client_id", "flagged", "--client-id", None)
    assert described["client_secret"] == ("client_secret", "from-env", "env WOCI_CLIENT_SECRET",
                                          None)
    assert described["interactive"][1:3] == ("false", "env CI")
    assert described["redirect_port"][1:3] == ("8181", "default")   # blank in [p]: ignored
    assert described["token_exchange_url"].source == "default: the token URL"
    assert described["prompt"] == ("prompt", None, "not set", None)
    assert "must be one of file, keyring" in described["refresh_token_storage"].problem
    assert list(described) == list(woci.INI_KINDS)
# --- sign-in settings: issuer, login_flow, browser_command, a list of ports --------------------

ISSUER_INI = """\
[COMMON]
issuer = https://idp.example/oauth2/default
auth_client_id = idp-client
client_id = oci-client
client_secret = oci-secret
"""


def test_issuer_alone_stands_for_the_provider_endpoints():
    """issuer, the client ids and the secret are enough: the endpoints wait for discovery."""
    s = settings_from([], ISSUER_INI)
    assert s.issuer == "https://idp.example/oauth2/default"
    assert (s.authz_base_url, s.token_url, s.token_exchange_url) == (None, None, None)


def test_explicit_endpoints_are_kept_beside_the_issuer():
    """An explicit token_url (and the exchange URL it defaults) stays as given."""
    s = settings_from(["--token-url", "https://other.example/token"], ISSUER_INI)
    assert s.token_url == s.token_exchange_url == "https://other.example/token"
    assert s.authz_base_url is None


def test_missing_endpoints_without_an_issuer_point_at_the_issuer():
    """No URLs and no issuer: exit 2 naming both URLs, and issuer as the shorter way."""
    ini = "\n".join(line for line in REQUIRED_INI.splitlines() if "_url" not in line)
    with pytest.raises(woci.ConfigError) as info:
        settings_from([], ini)
    message = str(info.value)
    assert "authz_base_url (--authz-base-url), token_url (--token-url)" in message
    assert "or issuer" in message and info.value.exit_code == 2


def test_issuer_must_be_a_url():
    with pytest.raises(woci.ConfigError, match="issuer in --issuer must be an http"):
        settings_from(["--issuer", "idp.example"], ISSUER_INI)


@pytest.mark.parametrize("argv, ini_extra, flow", [
    ([], "", "browser"),
    (["--login-flow", "device"], "", "device"),
    ([], "login_flow = Manual\n", "manual"),
    (["--login-flow=browser"], "login_flow = device\n", "browser"),
])
def test_login_flow_from_flag_ini_and_default(argv, ini_extra, flow):
    """One of browser, device, manual (any case); the flag wins over the INI."""
    assert settings_from(argv, ISSUER_INI + ini_extra).login_flow == flow


def test_unknown_login_flow_is_a_configuration_error():
    with pytest.raises(woci.ConfigError, match="must be one of browser, device, manual, not 'qr'"):
        settings_from(["--login-flow", "qr"], ISSUER_INI)


def test_device_flow_needs_a_device_endpoint_or_an_issuer():
    """login_flow = device with explicit URLs only: exit 2 naming device_authorization_url;
    with it (or with an issuer) it is fine."""
    with pytest.raises(woci.ConfigError, match="needs device_authorization_url") as info:
        settings_from(["--login-flow", "device"], REQUIRED_INI)
    assert info.value.exit_code == 2
    s = settings_from(["--login-flow", "device"],
                      REQUIRED_INI + "device_authorization_url = https://idp.example/device\n")
    assert s.device_authorization_url == "https://idp.example/device"
    assert settings_from(["--login-flow", "device"], ISSUER_INI).device_authorization_url is None


def test_browser_command_from_ini_and_flag():
    s = settings_from([], ISSUER_INI + "browser_command = wslview\n")
    assert s.browser_command == "wslview"
    s = settings_from(["--browser-command", "firefox -P work"], ISSUER_INI)
    assert s.browser_command == "firefox -P work"


@pytest.mark.parametrize("argv, ini_extra, first, ports", [
    ([], "", 8181, (8181,)),
    ([], "redirect_port = 7000\n", 7000, (7000,)),
    ([], "redirect_port = 7000, 7001 ,7000\n", 7000, (7000, 7001)),
    (["--redirect-port", "9000,9001"], "redirect_port = 7000\n", 9000, (9000, 9001)),
])
def test_redirect_port_may_be_a_list(argv, ini_extra, first, ports):
    """A comma-separated list of registered ports, each once, in order; redirect_port (and
    redirect_uri) name the first."""
    s = settings_from(argv, ISSUER_INI + ini_extra)
    assert (s.redirect_port, s.callback_ports) == (first, ports)
    assert s.redirect_uri == f"http://127.0.0.1:{first}/callback"


@pytest.mark.parametrize("text", ["7000,,7001", "7000,x", "7000,", "70000,7001", ","])
def test_bad_port_lists_are_configuration_errors(text):
    with pytest.raises(woci.ConfigError, match="port number 1-65535") as info:
        settings_from(["--redirect-port", text], ISSUER_INI)
    assert info.value.exit_code == 2


def test_issuer_and_login_flow_after_the_oci_command_belong_to_oci():
    """oci has an --issuer option of its own (oci-cli 3.95): after the command it is oci's."""
    cmd = split(["--issuer", "https://idp.example", "iam", "x", "--issuer", "y"])
    assert cmd.woci == {"issuer": "https://idp.example"}
    assert cmd.oci_args == ["iam", "x", "--issuer", "y"]


# --- absurd values -------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, ini_extra", [
    (["--login-timeout", "1e10"], ""),
    ([], "login_timeout = 1e300\n"),
    (["--refresh-safety-window", "1e300"], ""),
], ids=["login-timeout-flag", "login-timeout-ini", "safety-window"])
def test_seconds_beyond_a_day_are_configuration_errors(argv, ini_extra):
    """A wait of 1e10 s is beyond what threading and select accept (OverflowError at the
    sign-in); no sign-in waits, and no UPST lives, longer than a day."""
    with pytest.raises(woci.ConfigError, match="positive number of seconds, at most 86400"):
        settings_from(argv, REQUIRED_INI + ini_extra)
    assert settings_from(["--login-timeout", "86400"]).login_timeout == 86400


@pytest.mark.parametrize("argv, environ", [
    (["--profile", "dev\n[DEFAULT]"], {}),
    ([], {"OCI_CLI_PROFILE": "dev\rx"}),
    (["--profile", "dev\u2028x"], {}),
], ids=["newline", "carriage-return", "line-separator"])
def test_a_profile_name_with_a_line_break_is_a_configuration_error(argv, environ):
    """Written as a section header, it would split into two lines: an OCI config no
    configparser (no oci) can read any more, or keys written into another section."""
    with pytest.raises(woci.ConfigError, match="profile name"):
        settings_from(argv, environ={"HOME": "/home/u", **environ})


@pytest.mark.parametrize("argv, ini_extra", [
    ([], "region = us-ashburn-1\n  [evil]\n"),
    (["--region", "us-ashburn-1\n[evil]"], ""),
], ids=["ini-continuation", "flag"])
def test_a_region_with_a_line_break_is_a_configuration_error(argv, ini_extra):
    with pytest.raises(woci.ConfigError, match="region"):
        settings_from(argv, REQUIRED_INI + ini_extra)


@pytest.mark.parametrize("path", ["/callback?from=woci", "/call back", "/callback#x", "/cb\x7fx"])
def test_a_redirect_path_the_callback_could_never_match_is_a_configuration_error(path):
    """The callback compares the request's path with redirect_path: with a query, a
    fragment or white space in it no browser's request matches, and every sign-in would
    wait out login_timeout."""
    with pytest.raises(woci.ConfigError, match="redirect_path"):
        settings_from([], REQUIRED_INI + f"redirect_path = {path}\n")
