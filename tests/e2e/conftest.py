"""The test bed for end-to-end tests: a real OpenID provider, the OCI emulator, and a user.

woci always runs as a separate process (the installed console script), in a throw-away HOME,
with stdin closed and a clean environment, exactly as a user or kubectl would run it.
"""

import configparser
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from tests.bed.emulator import OciEmulator
from tests.bed.idp import TestIdP, free_port
# The bed fixtures (idp, emulator) are in tests/conftest.py, shared with tests/bed_checks.
from tests.conftest import OCI_CLIENT_ID, OCI_CLIENT_SECRET

REPO = Path(__file__).resolve().parents[2]
BED = REPO / "tests" / "bed"
VENV_BIN = Path(sys.executable).parent
WOCI = VENV_BIN / "woci"
REGION = "us-ashburn-1"
# Generous bound for one woci run: a sign-in, a refresh, an exchange and one oci call.
RUN_TIMEOUT = 90


@dataclass
class WociUser:
    """A user's machine: HOME with ~/.oci, a manager INI, and a browser that signs in."""

    home: Path
    idp: TestIdP
    emulator: OciEmulator
    profile: str = "dev"
    browser: str = "scripted"
    extra_env: Dict[str, str] = field(default_factory=dict)

    @property
    def oci_dir(self) -> Path:
        return self.home / ".oci"

    @property
    def config_file(self) -> Path:
        return self.oci_dir / "config"

    @property
    def manager_ini(self) -> Path:
        return self.oci_dir / "woci_manager.ini"

    @property
    def session_dir(self) -> Path:
        return self.oci_dir / "sessions" / self.profile

    @property
    def browser_log(self) -> Path:
        return self.home / "browser.jsonl"

    def write_manager_ini(self, **overrides: Optional[str]) -> None:
        values = {
            "authz_base_url": self.idp.authorize_url,
            "token_url": self.idp.token_url,
            "token_exchange_url": self.emulator.token_exchange_url,
            "auth_client_id": self.idp.public_client_id,
            "client_id": OCI_CLIENT_ID,
            "client_secret": OCI_CLIENT_SECRET,
            "redirect_port": str(free_port()),
            "region": REGION,
            "login_timeout": "30",
        }
        values.update(overrides)
        parser = configparser.ConfigParser(interpolation=None)
        parser["COMMON"] = {k: v for k, v in values.items() if v is not None}
        self.oci_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.manager_ini, "w") as handle:
            parser.write(handle)
        self.manager_ini.chmod(0o600)

    def env(self, **extra: str) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OCI_CLI_", "WOCI_"))
               and k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "CI", "BROWSER")}
        browser_script = BED / ("chromium_user.py" if self.browser == "chromium"
                                else "browser_user.py")
        env.update({
            "HOME": str(self.home),
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
            "BROWSER": f"{sys.executable} {browser_script} %s",
            "WOCI_TEST_BROWSER_LOG": str(self.browser_log),
            "WOCI_TEST_USER": self.idp.user,
            "WOCI_TEST_PASSWORD": self.idp.password,
        })
        env.update(self.extra_env)
        env.update(extra)
        return env

    def run(self, *args: str, env: Optional[Dict[str, str]] = None,
            timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
        """woci with these arguments, stdin closed (as kubectl and CI run it)."""
        return subprocess.run([str(WOCI), *args], env=env or self.env(),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, cwd=self.home)

    def oci_ns_get(self, *woci_args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run(*woci_args, "--profile", self.profile, "os", "ns", "get",
                        "--endpoint", self.emulator.url, "--no-retry", **kwargs)

    def browser_opens(self) -> List[dict]:
        if not self.browser_log.exists():
            return []
        return [json.loads(line) for line in self.browser_log.read_text().splitlines() if line]

    def refresh_token_text(self) -> str:
        return (self.session_dir / "refresh_token").read_text()

    def token_text(self) -> str:
        return (self.session_dir / "token").read_text()

    def oci_profile(self) -> Dict[str, str]:
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(self.config_file)
        return dict(parser[self.profile])


@pytest.fixture
def user(tmp_path, idp, emulator) -> WociUser:
    """A fresh user machine with a manager INI pointing at the test bed."""
    home = tmp_path / "home"
    home.mkdir()
    person = WociUser(home, idp, emulator)
    person.write_manager_ini()
    return person


def assert_namespace_printed(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"woci failed ({result.returncode}): {result.stderr}"
    assert json.loads(result.stdout) == {"data": "wociemulated"}, result.stdout
