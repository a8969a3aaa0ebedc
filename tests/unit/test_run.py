"""Section 9: oci's argv, and what happens when oci is not installed."""

import pytest

import oci_upst_session_manager as woci


@pytest.mark.parametrize("args, expected", [
    (["os", "ns", "get"], ["oci", "--profile", "p", "--auth", "security_token", "os", "ns", "get"]),
    ([], ["oci", "--profile", "p", "--auth", "security_token"]),
    (["--profile", "x", "os"], ["oci", "--auth", "security_token", "--profile", "x", "os"]),
    (["os", "--profile=x"], ["oci", "--auth", "security_token", "os", "--profile=x"]),
    (["--auth", "api_key", "os"], ["oci", "--profile", "p", "--auth", "api_key", "os"]),
    (["os", "--auth=instance_principal"],
     ["oci", "--profile", "p", "os", "--auth=instance_principal"]),
    (["--profile=x", "--auth=y", "os"], ["oci", "--profile=x", "--auth=y", "os"]),
])
def test_build_oci_argv_adds_profile_and_auth_only_when_absent(args, expected):
    """--profile P and --auth security_token come first unless the user gave them (any form)."""
    assert woci.build_oci_argv(args, "p") == expected


def test_build_oci_argv_does_not_mistake_lookalike_options():
    """--profiles or --authority are not --profile/--auth: both are still added."""
    argv = woci.build_oci_argv(["x", "--profiles", "--authority=a"], "p")
    assert argv == ["oci", "--profile", "p", "--auth", "security_token", "x", "--profiles",
                    "--authority=a"]


def test_build_oci_argv_keeps_the_users_arguments_in_order():
    """The user's arguments follow unchanged, values with spaces included."""
    args = ["os", "object", "put", "--name", "a b", "--file", "-"]
    assert woci.build_oci_argv(args, "dev")[5:] == args


def test_exec_oci_missing_binary_is_exit_127(tmp_path):
    """No such program on PATH: WociError with exit code 127, saying how to install oci."""
    with pytest.raises(woci.WociError) as info:
        woci.exec_oci(["woci-test-no-such-program", "--version"], {"PATH": str(tmp_path)})
    assert info.value.exit_code == 127
    assert "not found on PATH" in str(info.value)
