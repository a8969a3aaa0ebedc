"""`make bench`: what woci adds to an oci call when the session is valid (the fast path).

Prints medians; asserts nothing, since timings on a shared machine vary. Compares:
- importing woci (must not pull in requests, cryptography or jwt),
- `woci` deciding the session is valid and exec-ing a stand-in `oci` that exits at once,
- the same stand-in `oci` run directly.
"""

import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNS = 15


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fake_home(root: Path) -> Path:
    """A HOME with a valid-looking session and a wired profile (no signature needed)."""
    home = root / "home"
    session = home / ".oci" / "sessions" / "bench"
    session.mkdir(parents=True, mode=0o700)
    claims = {"exp": int(time.time()) + 3600, "iat": int(time.time()), "tenant": "t"}
    token = f"{b64url(b'{}')}.{b64url(json.dumps(claims).encode())}.sig"
    (session / "token").write_text(token)
    (session / "oci_api_key.pem").write_text("unused by the fast path")
    (home / ".oci" / "config").write_text(
        f"[bench]\nkey_file={session / 'oci_api_key.pem'}\n"
        f"security_token_file={session / 'token'}\n")
    (home / ".oci" / "woci_manager.ini").write_text(
        "[COMMON]\nauthz_base_url=http://127.0.0.1:9/a\ntoken_url=http://127.0.0.1:9/t\n"
        "auth_client_id=c\nclient_id=c\nclient_secret=s\n")
    (home / ".oci" / "woci_manager.ini").chmod(0o600)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "oci").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "oci").chmod(0o755)
    return home


def median_seconds(command, env) -> float:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = fake_home(root)
        env = {**os.environ, "HOME": str(home),
               "PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("OCI_CLI_PROFILE", None)
        # Installed packages have their bytecode compiled; measure that, not a compile per run.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        heavy = subprocess.run(
            [sys.executable, "-c", "import oci_upst_session_manager, sys; print(sorted("
             "m for m in sys.modules if m.split('.')[0] in ('requests','cryptography','jwt')))"],
            env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=True)
        python = median_seconds([sys.executable, "-c", "pass"], env)
        imported = median_seconds([sys.executable, "-c", "import oci_upst_session_manager"],
                                  {**env, "PYTHONPATH": str(REPO)})
        fast = median_seconds([str(Path(sys.executable).parent / "woci"),
                               "--profile", "bench", "os", "ns", "get"], env)
        direct = median_seconds([str(root / "bin" / "oci")], env)
    print(f"heavy modules imported on the fast path: {heavy.stdout.strip()}")
    print(f"python start-up:             {python * 1000:7.1f} ms (median of {RUNS})")
    print(f"python + import woci:        {imported * 1000:7.1f} ms")
    print(f"woci fast path + stand-in oci:{fast * 1000:6.1f} ms")
    print(f"stand-in oci alone:          {direct * 1000:7.1f} ms")
    print(f"woci's cost per oci call:    {(fast - direct) * 1000:7.1f} ms "
          "(the real oci itself takes about 450-650 ms to start)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
