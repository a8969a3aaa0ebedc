"""`pip install .` into a fresh virtual environment gives working console scripts."""

import subprocess
import sys

import pytest

from tests.e2e.conftest import REPO


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # A copy of the tree, so the build leaves nothing (build/, *.egg-info) in the checkout.
    source = tmp_path_factory.mktemp("src")
    subprocess.run(["cp", "-r", str(REPO / "pyproject.toml"), str(REPO / "README.md"),
                    str(REPO / "oci_upst_session_manager.py"), str(source)], check=True)
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                             "--disable-pip-version-check", str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return venv


@pytest.mark.parametrize("script", ["woci", "oci-upst-session-manager"])
def test_console_scripts_answer_help_and_version(fresh_venv, script):
    """Both console scripts print help and version on stdout and exit 0."""
    for flag, expected in (("--help", "usage: woci"), ("--version", "woci ")):
        result = subprocess.run([str(fresh_venv / "bin" / script), flag], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout


def test_unconfigured_run_names_every_missing_setting(fresh_venv, tmp_path):
    """No configuration at all: exit 2, one line naming each required key, nothing on stdout."""
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([str(fresh_venv / "bin" / "woci"), "os", "ns", "get"], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)

    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    for key in ("authz_base_url", "token_url", "auth_client_id", "client_id", "client_secret"):
        assert key in lines[0]


def test_keyring_storage_without_the_keyring_extra_warns_once_and_uses_the_file(fresh_venv,
                                                                                user):
    """Installed without woci[keyring], refresh_token_storage = keyring: one warning naming
    the extra, the sign-in works, and the refresh token is in the file."""
    user.write_manager_ini(refresh_token_storage="keyring")
    result = subprocess.run([str(fresh_venv / "bin" / "woci"), "--profile", user.profile],
                            env=user.env(), stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=90, cwd=user.home)

    assert result.returncode == 0, result.stderr
    keyring_lines = [line for line in result.stderr.splitlines() if "keyring" in line]
    assert len(keyring_lines) == 1, result.stderr
    assert "the keyring package is not installed (pip install 'woci[keyring]')" in \
        keyring_lines[0]
    assert (user.session_dir / "refresh_token").exists()
    assert not (user.session_dir / "refresh_token.keyring").exists()
