"""`make demo`: woci's whole job, end to end, on this machine only.

A real OpenID provider and the OCI emulator start on 127.0.0.1; a throw-away HOME gets a
manager INI; woci signs in (a scripted user, or you in a browser), runs `oci os ns get`
against the emulator, and after the session token expires renews it without a browser.
"""

import argparse
import configparser
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bed.emulator import OciEmulator  # noqa: E402
from tests.bed.idp import TestIdP, free_port  # noqa: E402

VENV_BIN = Path(sys.executable).parent
OCI_CLIENT_ID, OCI_CLIENT_SECRET = "demo-oci-client", "demo-oci-secret"
# Sandbox session tokens live 70 s (real ones up to 60 min); woci renews a token with under
# 60 s left, so this one needs renewing after about 10 s.
UPST_LIFETIME = 70
WAIT_FOR_RENEWAL = 12
PROFILE = "demo"


def use_colour(stream=sys.stdout, environ=os.environ) -> bool:
    """Bold headings only on a terminal, never with NO_COLOR set (https://no-color.org) or on
    TERM=dumb: piped into a log they would come out as escape codes."""
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def say(text: str) -> None:
    if use_colour():
        print(f"\n\033[1m==> {text}\033[0m", flush=True)
    else:
        print(f"\n==> {text}", flush=True)


def write_manager_ini(home: Path, idp: TestIdP, emu: OciEmulator, login_timeout: int) -> Path:
    parser = configparser.ConfigParser(interpolation=None)
    parser[PROFILE] = {
        "authz_base_url": idp.authorize_url, "token_url": idp.token_url,
        "token_exchange_url": emu.token_exchange_url, "auth_client_id": idp.public_client_id,
        "client_id": OCI_CLIENT_ID, "client_secret": OCI_CLIENT_SECRET,
        "redirect_port": str(free_port()), "region": "us-ashburn-1",
        "login_timeout": str(login_timeout),
    }
    path = home / ".oci" / "woci_manager.ini"
    path.parent.mkdir(mode=0o700, parents=True)
    with open(path, "w") as handle:
        parser.write(handle)
    path.chmod(0o600)
    return path


def environment(home: Path, browser_mode: str, log: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OCI_CLI_") and k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                                                         "CI")}
    env.update({"HOME": str(home), "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
                "WOCI_TEST_BROWSER_LOG": str(log)})
    if browser_mode == "scripted":
        env["BROWSER"] = f"{sys.executable} {REPO / 'tests' / 'bed' / 'browser_user.py'} %s"
    return env


def woci(env: dict, *args: str) -> int:
    command = ["woci", "--profile", PROFILE, *args]
    print(f"$ {' '.join(command)}", flush=True)
    return subprocess.run(command, env=env, stdin=subprocess.DEVNULL if env.get("BROWSER")
                          else None, timeout=600).returncode


def refresh_grants(idp: TestIdP, mark: int) -> int:
    return sum(1 for e in idp.events_since(mark)
               if e.get("event") == "token_request" and e.get("grant_type") == "refresh_token")


def run(browser_mode: str) -> int:
    work = Path(tempfile.mkdtemp(prefix="woci-demo-"))
    try:
        say("Starting a real OpenID provider (panva's oidc-provider) and the OCI emulator "
            "on 127.0.0.1")
        with TestIdP(work / "idp") as idp, OciEmulator(
                jwks_uri=idp.jwks_uri, issuer=idp.issuer,
                clients={OCI_CLIENT_ID: OCI_CLIENT_SECRET},
                upst_lifetime=UPST_LIFETIME) as emu:
            print(f"provider: {idp.issuer}\nOCI emulator: {emu.url}")
            home = work / "home"
            home.mkdir()
            ini = write_manager_ini(home, idp, emu, 600 if browser_mode == "real" else 60)
            print(f"throw-away HOME: {home}\nmanager INI: {ini}")
            env = environment(home, browser_mode, work / "browser.jsonl")

            say("First run: no session yet, so woci signs in with Authorization Code + PKCE")
            if browser_mode == "real":
                print(f"Open the URL woci prints and sign in as {idp.user!r} with password "
                      f"{idp.password!r}, then allow access.")
            else:
                print(f"A scripted user plays the browser: it types {idp.user!r}'s password at "
                      "the provider's login page and allows access.")
            code = woci(env, "os", "ns", "get", "--endpoint", emu.url, "--no-retry")
            if code != 0:
                print(f"woci exited {code}", file=sys.stderr)
                return code
            files = sorted(p.name for p in (home / ".oci" / "sessions" / PROFILE).iterdir())
            print(f"session files: {', '.join(files)}")
            print("the OCI CLI signed its request with the session key; the emulator verified "
                  "the signature and the UPST.")

            say("Second run: the session is still valid, so woci goes straight to oci")
            mark = idp.mark()
            woci(env, "os", "ns", "get", "--endpoint", emu.url, "--no-retry")
            requests = [e for e in idp.events_since(mark) if e.get("event") == "token_request"]
            print(f"token requests at the provider: {len(requests)}")

            say(f"Waiting {WAIT_FOR_RENEWAL} s: sandbox session tokens live {UPST_LIFETIME} s "
                "(real ones up to 60 min), and woci renews one with under 60 s left")
            time.sleep(WAIT_FOR_RENEWAL)

            say("Third run: the token is about to expire; woci refreshes silently, no browser")
            mark = idp.mark()
            code = woci(env, "os", "ns", "get", "--endpoint", emu.url, "--no-retry")
            print(f"refresh grants at the provider: {refresh_grants(idp, mark)}")
            if browser_mode == "scripted":
                print(f"browser sign-ins so far: {count_lines(work / 'browser.jsonl')}")
            if code != 0:
                return code
            say("Done: one sign-in, an oci call, and a silent refresh.")
            return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--browser", choices=("scripted", "real"), default="scripted",
                        help="scripted: a script plays the user; real: sign in yourself")
    args = parser.parse_args()
    return run(args.browser)


if __name__ == "__main__":
    sys.exit(main())
