"""`make bench`: what woci costs, measured on this machine. Prints numbers; asserts nothing.

Parts (each can be skipped with --skip PART):

fast     The fast path: a valid session, then exec of a stub `oci`. Three run modes (the
         console script of a normal, non-editable `pip install .` into a throwaway venv; the
         script by path; `python -m` with the file's folder on PYTHONPATH), each interleaved
         with `python -c pass` of the same interpreter, in the same rounds. Peak RSS from
         GNU time (`/usr/bin/time -f %M`) in a few extra rounds. `python -X importtime` of it.
         Two floors in the same rounds, with their ratio to `python -c pass` (no target):
         `python -c 'import json'` (json pulls in re, enum, functools, collections), and a
         15-line reference script that does only what a valid-session run must (profile's
         token file, exp via base64 + json, exec oci).
renewal  The test bed (tests/bed: the real OpenID provider and the OCI emulator, in-process as
         the e2e fixtures start them), one scripted-browser sign-in, then the token file forced
         stale and `woci --profile P` timed while it renews. Counting TCP proxies in front of
         the provider and the emulator count the connections woci opens.
parallel 20 woci at once on an expired session: wall time, refresh grants the provider logged,
         non-zero exits.
oke      `woci ... ce cluster generate-token` with the real oci: first call (oci runs) and
         repeated calls with the same arguments (answered from the OKE credential cache once
         woci has one), and the same through kubectl's exec plugin.
daemon   `woci --daemon` with 6 s UPSTs (a renewal every ~4 s), then with 1 h UPSTs (idle):
         RSS, CPU per renewal, CPU per idle second; extrapolated to an idle hour.

Everything runs on 127.0.0.1, in one temporary folder, and is stopped at the end; every wait
is bounded. `--json` prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODULE_FILE = "oci_upst_session_manager.py"
MODULE = "oci_upst_session_manager"
# What `pip install .` of the project needs from the worktree (pyproject's readme included).
PACKAGE_FILES = ("pyproject.toml", MODULE_FILE, "README.md", "LICENSE")
BED = REPO / "tests" / "bed"
PROFILE = "bench"
OCI_CLIENT_ID, OCI_CLIENT_SECRET = "bench-oci-client", "bench-oci-secret"
REGION = "us-ashburn-1"
CLUSTER_ID = "ocid1.cluster.oc1.iad.woci-bench"
MIB = 1024 * 1024

# Bounds on every wait.
INSTALL_TIMEOUT = 300
FAST_RUN_TIMEOUT = 30
BED_RUN_TIMEOUT = 120
PARALLEL_TIMEOUT = 180
OKE_RUN_TIMEOUT = 60
DAEMON_STOP_TIMEOUT = 30
EVENT_TIMEOUT = 10

# What the numbers should be; printed beside them, never asserted.
TARGETS = {
    "fast_path_ratio_console": ("<=", 2.0, "x"),
    "fast_path_ratio_script": ("<=", 4.0, "x"),
    "fast_path_peak_mib": ("<=", 16.0, " MiB"),
    "parallel_refresh_grants": ("==", 1, ""),
    "parallel_failures": ("==", 0, ""),
    "daemon_rss_mib": ("<", 30.0, " MiB"),
    "daemon_cpu_s_per_idle_hour": ("<", 1.0, " s"),
}

# Real UPSTs live 60 min; woci's default refresh_safety_window is 600 s (the daemon then
# renews 10 min before expiry, never earlier than two thirds into the token's life).
REAL_UPST_LIFETIME = 3600
# Read from the installed module when it has them (Install.constants), else these.
WOCI_CONSTANTS = {"DEFAULT_REFRESH_SAFETY_WINDOW": 600,
                  "BACKGROUND_MAX_SLEEP_SECONDS": 60}   # the daemon wakes at least this often
DAEMON_SHORT_LIFETIME = 6

PARTS = ("fast", "renewal", "parallel", "oke", "daemon")
KEYS_BY_PART = {
    "fast": ("fast_path_ratio_console", "fast_path_ratio_script", "fast_path_ratio_module",
             "fast_path_ms_console", "fast_path_ms_script", "fast_path_ms_module",
             "python_pass_ms", "fast_path_peak_mib", "python_pass_peak_mib",
             "python_import_json_ratio", "reference_fast_path_ratio",
             "fast_path_heavy_imports", "fast_path_top_imports"),
    "renewal": ("signin_ms", "renewal_ms", "renewal_peak_mib", "renewal_connections",
                "renewal_connections_provider", "renewal_connections_exchange"),
    "parallel": ("parallel_runs", "parallel_wall_s", "parallel_refresh_grants",
                 "parallel_exchanges", "parallel_failures"),
    "oke": ("oke_first_ms", "oke_repeat_ms", "oke_cached_ratio", "oke_repeat_identical",
            "kubectl_first_ms", "kubectl_repeat_ms", "kubectl_cached_ratio"),
    "daemon": ("daemon_rss_mib", "daemon_hwm_mib", "daemon_renewals", "daemon_cpu_s_per_renewal",
               "daemon_idle_cpu_s_per_hour", "daemon_renewals_per_real_hour",
               "daemon_cpu_s_per_idle_hour", "daemon_idle_seconds", "daemon_idle_wakeups"),
}


_T0 = time.monotonic()


def progress(text: str) -> None:
    print(f"bench [{time.monotonic() - _T0:5.1f} s]: {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Running and timing children
# --------------------------------------------------------------------------------------------

class Run:
    """One finished child: wall seconds, exit code, peak RSS (KiB, when measured), CPU seconds."""

    def __init__(self, seconds: float, code: int, maxrss_kib: Optional[int], cpu: float,
                 timed_out: bool):
        self.seconds, self.code, self.maxrss_kib = seconds, code, maxrss_kib
        self.cpu, self.timed_out = cpu, timed_out


# ru_maxrss of a child started by vfork/fork counts the parent's RSS too (the kernel records
# the old address space's high-water mark at exec), so peak RSS is taken from GNU time, a tiny
# C parent: `time -f %M` is the child's own peak, within about 1 MiB (time's own).
# Without GNU time (Debian package `time`; make bench installs it) peak RSS is not reported.
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


class Child:
    """A child started with posix_spawn (least overhead in the parent), reaped with wait4, and
    killable through a pidfd (never a reused pid). With rss_file, it runs under GNU time, which
    writes the child's peak RSS (KiB) there."""

    def __init__(self, argv: Sequence[str], env: Dict[str, str], stdout: str = os.devnull,
                 stderr: str = os.devnull, rss_file: Optional[str] = None):
        out_flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, stdout, out_flags, 0o600),
                   (os.POSIX_SPAWN_OPEN, 2, stderr, out_flags, 0o600)]
        self.rss_file = rss_file if GNU_TIME else None
        if self.rss_file:
            argv = [GNU_TIME, "-f", "%M", "-o", self.rss_file, *argv]
        self.start = time.perf_counter()
        self.pid = os.posix_spawn(argv[0], list(argv), env, file_actions=actions)
        try:
            self.pidfd: Optional[int] = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self.pidfd = None
        self.timed_out = False

    def kill(self) -> None:
        self.timed_out = True
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass

    def wait(self, deadline: float) -> Run:
        """Reap the child; kill it once time.monotonic() passes deadline."""
        alarm = _Alarm(deadline, self.kill)
        try:
            _, status, usage = os.wait4(self.pid, 0)
        finally:
            alarm.cancel()
        seconds = time.perf_counter() - self.start
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        code = os.waitstatus_to_exitcode(status)
        maxrss = None
        if self.rss_file:
            try:
                maxrss = int(Path(self.rss_file).read_text().split()[-1])
            except (OSError, ValueError, IndexError):
                maxrss = None
        return Run(seconds, code, maxrss, usage.ru_utime + usage.ru_stime, self.timed_out)


class _Alarm:
    """SIGALRM at the deadline runs on_timeout (wait4 is then retried and reaps the child)."""

    def __init__(self, deadline: float, on_timeout: Callable[[], None]):
        self.previous = signal.signal(signal.SIGALRM, lambda *_: on_timeout())
        signal.setitimer(signal.ITIMER_REAL, max(0.001, deadline - time.monotonic()))

    def cancel(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)


def run_once(argv: Sequence[str], env: Dict[str, str], timeout: float, **kwargs) -> Run:
    return Child(argv, env, **kwargs).wait(time.monotonic() + timeout)


def clean_env(home: Path, path: Sequence[Path], **extra: str) -> Dict[str, str]:
    """A user's environment: no PYTHON* (PYTHONDONTWRITEBYTECODE is set on these machines, and
    would make every run compile instead of using cached bytecode), no OCI_CLI_*/WOCI_*."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "OCI_CLI_", "WOCI_", "VIRTUAL_ENV"))
           and k not in ("CI", "BROWSER", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env["HOME"] = str(home)
    env["PATH"] = os.pathsep.join([*(str(p) for p in path), "/usr/local/bin", "/usr/bin", "/bin"])
    env.update(extra)
    return env


def stats_ms(samples: Sequence[float]) -> Dict[str, float]:
    return {"median": statistics.median(samples) * 1000, "min": min(samples) * 1000,
            "max": max(samples) * 1000, "n": len(samples)}


# --------------------------------------------------------------------------------------------
# A throwaway install of woci, as a user has it
# --------------------------------------------------------------------------------------------

class Install:
    """The worktree's package copied to tmp/src and installed with `pip install .` (a normal,
    non-editable install: an editable one adds an import hook to every start) into tmp/venv."""

    def __init__(self, tmp: Path):
        self.src = tmp / "src"
        self.venv = tmp / "venv"
        self.python = self.venv / "bin" / "python"
        self.woci = self.venv / "bin" / "woci"
        self.stub_bin = tmp / "stub-bin"

    def build(self) -> None:
        self.src.mkdir()
        for name in PACKAGE_FILES:
            if (REPO / name).exists():
                shutil.copy2(REPO / name, self.src / name)
        base = getattr(sys, "_base_executable", None) or sys.executable
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        subprocess.run([base, "-m", "venv", str(self.venv)], check=True, env=env,
                       stdin=subprocess.DEVNULL, timeout=INSTALL_TIMEOUT)
        subprocess.run([str(self.python), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", str(self.src)],
                       check=True, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr,
                       timeout=INSTALL_TIMEOUT, cwd=str(self.src))
        # A measurement device, not a product: a stand-in `oci` that exits at once (a link to
        # `true`), so the fast path's time is woci's own plus one exec of a tiny binary.
        self.stub_bin.mkdir()
        (self.stub_bin / "oci").symlink_to(shutil.which("true") or "/bin/true")

    def constants(self) -> Dict[str, float]:
        code = ("import json, oci_upst_session_manager as m; print(json.dumps({k: getattr(m, k, v)"
                f" for k, v in {WOCI_CONSTANTS!r}.items()}}))")
        try:
            answer = subprocess.run([str(self.python), "-c", code], capture_output=True,
                                    text=True, timeout=30, check=True, cwd=str(self.venv))
            return {**WOCI_CONSTANTS, **json.loads(answer.stdout)}
        except (subprocess.SubprocessError, ValueError):
            return dict(WOCI_CONSTANTS)

    def version(self) -> str:
        return subprocess.run([str(self.python), "-c", "import sys; print(sys.version.split()[0],"
                               " sys.implementation.name, sys._base_executable)"],
                              capture_output=True, text=True, timeout=30).stdout.strip()


# --------------------------------------------------------------------------------------------
# Part 1: the fast path
# --------------------------------------------------------------------------------------------

def b64url(data: bytes) -> str:
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fast_path_home(root: Path) -> Path:
    """A HOME with a valid session (a UPST-sized token, unsigned: the fast path reads only its
    exp) and a profile already wired to it, as woci leaves them."""
    home = root / "fast-home"
    oci = home / ".oci"
    session = oci / "sessions" / PROFILE
    session.mkdir(parents=True, mode=0o700)
    now = int(time.time())
    claims = {"sub": "ocid1.user.oc1.." + "a" * 60, "tenant": "ocid1.tenancy.oc1..bench",
              "iss": "authService.oracle.com", "aud": "oci", "ptype": "user", "iat": now,
              "exp": now + 3600, "sess_exp": now + 86400, "jti": "0" * 36,
              "jwk": json.dumps({"kid": "bench", "n": "x" * 342, "e": "AQAB", "kty": "RSA",
                                 "alg": "RS256", "use": "sig"})}
    header = b64url(json.dumps({"alg": "RS256", "kid": "bench"}).encode())
    token = f"{header}.{b64url(json.dumps(claims).encode())}.{b64url(os.urandom(256))}"
    (session / "token").write_text(token)
    (session / "oci_api_key.pem").write_text("unused by the fast path\n")
    for path in (session / "token", session / "oci_api_key.pem"):
        path.chmod(0o600)
    (oci / "config").write_text(
        "[DEFAULT]\nregion=us-ashburn-1\n\n"
        f"[{PROFILE}]\nfingerprint=00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff\n"
        f"key_file={session / 'oci_api_key.pem'}\ntenancy=ocid1.tenancy.oc1..bench\n"
        f"region={REGION}\nsecurity_token_file={session / 'token'}\n")
    (oci / "woci_manager.ini").write_text(
        "[COMMON]\nauthz_base_url=http://127.0.0.1:9/authorize\ntoken_url=http://127.0.0.1:9/token\n"
        "token_exchange_url=http://127.0.0.1:9/oauth2/v1/token\nauth_client_id=c\n"
        "client_id=c\nclient_secret=s\n")
    (oci / "woci_manager.ini").chmod(0o600)
    return home


# A measurement device, not a product: the least a valid-session run must do and nothing more
# (find the profile's security_token_file in ~/.oci/config with a plain line split, decode the
# token's exp with base64 + json, check it is more than 60 s ahead, exec oci), so the table
# shows, beside woci, the floor of any fast path written in Python. It is run by path like the
# script mode, but at 15 lines its compile cost (no cached bytecode for a script) is negligible.
REFERENCE_FAST_PATH = """\
import base64, json, os, sys, time
profile, args = sys.argv[2], sys.argv[3:]
section = token_file = None
with open(os.path.expanduser("~/.oci/config")) as config:
    for line in map(str.strip, config):
        if line.startswith("["):
            section = line[1:-1]
        elif section == profile and line.split("=", 1)[0].strip() == "security_token_file":
            token_file = line.split("=", 1)[1].strip()
with open(token_file) as f:
    payload = f.read().strip().split(".")[1]
claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
if claims["exp"] - time.time() <= 60:
    sys.exit("reference fast path: session not valid")
os.execvp("oci", ["oci", "--profile", profile, "--auth", "security_token", *args])
"""


def rss_runs(runs: int) -> int:
    return max(2, runs // 5) if GNU_TIME else 0


def fast_path(install: Install, tmp: Path, runs: int, seed: int) -> dict:
    home = fast_path_home(tmp)
    env = clean_env(home, [install.stub_bin])
    env_pp = {**env, "PYTHONPATH": str(install.src)}
    py = str(install.python)
    args = ["--profile", PROFILE, "os", "ns", "get"]
    reference = tmp / "reference_fast_path.py"
    reference.write_text(REFERENCE_FAST_PATH)
    variants = {
        "pass": ([py, "-c", "pass"], env),
        "console": ([str(install.woci), *args], env),
        "script": ([py, str(install.src / MODULE_FILE), *args], env),
        "pass_pp": ([py, "-c", "pass"], env_pp),
        "module": ([py, "-m", MODULE, *args], env_pp),
        "import": ([py, "-c", f"import {MODULE}"], env_pp),
        "stub": ([str(install.stub_bin / "oci"), *args], env),
        "json": ([py, "-c", "import json"], env),
        "reference": ([py, str(reference), *args], env),
    }
    # Warm-up: the first runs write tmp/src/__pycache__ (bytecode writing is on, as for users)
    # and warm the page cache; they are not counted.
    for name, (argv, variant_env) in variants.items():
        for _ in range(2):
            run = run_once(argv, variant_env, FAST_RUN_TIMEOUT, stderr=str(tmp / "fast.err"))
            if run.code != 0:
                raise RuntimeError(f"{name} exited {run.code}: "
                                   f"{(tmp / 'fast.err').read_text()[-2000:]}")
    samples: Dict[str, List[Run]] = {name: [] for name in variants}
    peaks: Dict[str, List[int]] = {name: [] for name in variants}
    order = list(variants)
    rng = random.Random(seed)
    rss_file = str(tmp / "rss.txt")
    for round_ in range(runs + rss_runs(runs)):
        rng.shuffle(order)      # interleaved: every round runs every variant once
        timing = round_ < runs  # then a few rounds under GNU time, for peak RSS only
        for name in order:
            argv, variant_env = variants[name]
            run = run_once(argv, variant_env, FAST_RUN_TIMEOUT,
                           rss_file=None if timing else rss_file)
            if run.code != 0 or run.timed_out:
                raise RuntimeError(f"{name} exited {run.code} during the measured runs")
            if timing:
                samples[name].append(run)
            elif run.maxrss_kib is not None:
                peaks[name].append(run.maxrss_kib)
    result = {name: {**stats_ms([r.seconds for r in runs_]),
                     "peak_mib": max(peaks[name]) / 1024 if peaks[name] else None}
              for name, runs_ in samples.items()}
    imports = import_profile(install, env)
    med = {name: value["median"] for name, value in result.items()}
    return {
        "table": result,
        "fast_path_ratio_console": med["console"] / med["pass"],
        "fast_path_ratio_script": med["script"] / med["pass"],
        "fast_path_ratio_module": med["module"] / med["pass_pp"],
        "python_import_json_ratio": med["json"] / med["pass"],
        "reference_fast_path_ratio": med["reference"] / med["pass"],
        "fast_path_ms_console": med["console"],
        "fast_path_ms_script": med["script"],
        "fast_path_ms_module": med["module"],
        "python_pass_ms": med["pass"],
        "fast_path_peak_mib": result["console"]["peak_mib"],
        "python_pass_peak_mib": result["pass"]["peak_mib"],
        **imports,
    }


def parse_importtime(text: str) -> List[tuple]:
    """`-X importtime` lines, in order: (nesting level, module, self us, cumulative us)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        field = parts[2][1:]
        rows.append(((len(field) - len(field.lstrip(" "))) // 2, field.strip(),
                     int(parts[0]), int(parts[1])))
    return rows


def direct_imports(rows: List[tuple]) -> Dict[str, int]:
    """Cumulative us of what the woci module imports itself (level 1 under it), and of
    anything else the entry point imports at top level before it (the console wrapper's)."""
    out: Dict[str, int] = {}
    for index, (level, name, _, _) in enumerate(rows):
        if level == 0 and name == MODULE:
            back = index - 1
            while back >= 0 and rows[back][0] >= 1:
                if rows[back][0] == 1:
                    out[rows[back][1]] = rows[back][3]
                back -= 1
            while back >= 0 and rows[back][0] == 0 and rows[back][1] not in ("site", "encodings"):
                out[rows[back][1] + " (entry script)"] = rows[back][3]
                back -= 1
                while back >= 0 and rows[back][0] >= 1:
                    back -= 1
            out[MODULE + " (own body)"] = rows[index][2]
            break
    return out


def import_profile(install: Install, env: Dict[str, str], runs: int = 5) -> dict:
    """What the fast path imports beyond Python's own start-up, and the time of it (median of
    a few `python -X importtime` runs of the console script; importtime itself adds a little)."""
    def profile(argv: List[str]) -> List[List[tuple]]:
        return [parse_importtime(subprocess.run(argv, env=env, capture_output=True, text=True,
                                                stdin=subprocess.DEVNULL,
                                                timeout=FAST_RUN_TIMEOUT).stderr)
                for _ in range(runs)]

    def median_by_name(dicts: List[Dict[str, int]]) -> Dict[str, float]:
        names = set.intersection(*(set(d) for d in dicts))
        return {name: statistics.median(d[name] for d in dicts) for name in names}

    py = str(install.python)
    base = profile([py, "-X", "importtime", "-c", "pass"])
    woci = profile([py, "-X", "importtime", str(install.woci), "--profile", PROFILE, "os", "ns",
                    "get"])
    startup = {row[1] for rows in base for row in rows}
    self_us = median_by_name([{row[1]: row[2] for row in rows if row[1] not in startup}
                              for rows in woci])
    direct = median_by_name([direct_imports(rows) for rows in woci])
    heavy = sorted({row[1].split(".")[0] for rows in woci for row in rows}
                   & {"requests", "cryptography", "jwt", "urllib3", "cffi", "idna", "certifi",
                      "charset_normalizer"})

    def top(values: Dict[str, float], n: int) -> List[list]:
        return [[name, round(us / 1000, 2)] for name, us in
                sorted(values.items(), key=lambda item: -item[1])[:n]]

    return {
        "fast_path_heavy_imports": heavy,
        "fast_path_import_count": len(self_us),
        "fast_path_import_ms": sum(self_us.values()) / 1000,
        "fast_path_top_imports": top(self_us, 12),
        "fast_path_direct_imports": top(direct, 16),
    }


# --------------------------------------------------------------------------------------------
# The test bed: provider, emulator, counting proxies
# --------------------------------------------------------------------------------------------

class CountingProxy:
    """A TCP forwarder on 127.0.0.1 that counts the connections it accepts (woci's, at the
    peer) and passes bytes through unchanged."""

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.accepted = 0
        self._lock = threading.Lock()
        self._sockets: List[socket.socket] = []
        self._threads: List[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._stopping = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, name="count-proxy", daemon=True)

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def count(self) -> int:
        with self._lock:
            return self.accepted

    def __enter__(self) -> "CountingProxy":
        self._acceptor.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()
        self._acceptor.join(timeout=5)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self.accepted += 1
                self._sockets += [client, server]
                for src, dst in ((client, server), (server, client)):
                    thread = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                    self._threads.append(thread)
                    thread.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Bed:
    """The provider and the emulator, a user HOME signed in once, helpers to age its session."""

    def __init__(self, tmp: Path, install: Install, idp, emulator, idp_proxy: CountingProxy,
                 emu_proxy: CountingProxy):
        self.tmp, self.install, self.idp, self.emu = tmp, install, idp, emulator
        self.idp_proxy, self.emu_proxy = idp_proxy, emu_proxy
        self.home = tmp / "bed-home"
        self.session = self.home / ".oci" / "sessions" / PROFILE
        self.browser_log = tmp / "browser.jsonl"

    def write_manager_ini(self) -> None:
        import configparser
        proxied = f"http://127.0.0.1:{self.idp_proxy.port}"
        token_path = self.idp.token_url[len(self.idp.issuer):]
        parser = configparser.ConfigParser(interpolation=None)
        parser["COMMON"] = {
            "authz_base_url": self.idp.authorize_url,
            "token_url": proxied + token_path,
            "token_exchange_url": f"http://127.0.0.1:{self.emu_proxy.port}/oauth2/v1/token",
            "auth_client_id": self.idp.public_client_id,
            "client_id": OCI_CLIENT_ID, "client_secret": OCI_CLIENT_SECRET,
            "redirect_port": str(free_port()), "region": REGION, "login_timeout": "30",
        }
        oci = self.home / ".oci"
        oci.mkdir(mode=0o700, parents=True)
        with open(oci / "woci_manager.ini", "w") as handle:
            parser.write(handle)
        (oci / "woci_manager.ini").chmod(0o600)

    def env(self, real_oci: bool = False) -> Dict[str, str]:
        path = [Path(sys.executable).parent] if real_oci else [self.install.stub_bin]
        return clean_env(self.home, path,
                         BROWSER=f"{sys.executable} {BED / 'browser_user.py'} %s",
                         WOCI_TEST_BROWSER_LOG=str(self.browser_log),
                         WOCI_TEST_USER=self.idp.user, WOCI_TEST_PASSWORD=self.idp.password)

    def woci(self, *args: str, timeout: float = BED_RUN_TIMEOUT, real_oci: bool = False,
             stdout: Optional[Path] = None, rss: bool = False) -> Run:
        err = self.tmp / "woci.err"
        run = run_once([str(self.install.woci), *args], self.env(real_oci), timeout,
                       stdout=str(stdout or os.devnull), stderr=str(err),
                       rss_file=str(self.tmp / "rss.txt") if rss else None)
        if run.code != 0:
            progress(f"woci {' '.join(args)} exited {run.code}: {err.read_text()[-1500:]}")
        return run

    def token(self) -> str:
        return (self.session / "token").read_text()

    def token_exp(self) -> int:
        import jwt
        return int(jwt.decode(self.token(), options={"verify_signature": False})["exp"])

    def make_stale(self) -> None:
        """Replace the session token by one just expired, signed like the emulator's own."""
        from cryptography.hazmat.primitives import serialization
        public = serialization.load_pem_public_key(
            (self.session / "oci_api_key_public.pem").read_bytes())
        stale = self.emu.mint_upst(public, subject=self.idp.user, lifetime=3600,
                                   issued_at=time.time() - 3600 - 5)
        temporary = self.session / "token.bench-tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(stale)
        os.replace(temporary, self.session / "token")

    def connections(self) -> tuple:
        return self.idp_proxy.count(), self.emu_proxy.count()


def refresh_grants(idp, mark: int) -> int:
    return len(idp.events_since(mark, "token_request", grant_type="refresh_token"))


def sign_in(bed: Bed) -> dict:
    bed.write_manager_ini()
    run = bed.woci("--profile", PROFILE)
    if run.code != 0:
        raise RuntimeError("the first sign-in failed (see above)")
    return {"signin_ms": run.seconds * 1000}


def renewal(bed: Bed, count: int) -> dict:
    times, peaks, provider, exchange = [], [], [], []
    for _ in range(count):
        bed.make_stale()
        before = bed.connections()
        run = bed.woci("--profile", PROFILE, rss=True)   # under GNU time: adds ~1 ms
        after = bed.connections()
        if run.code != 0 or bed.token_exp() < time.time() + 600:
            raise RuntimeError("a renewal failed")
        times.append(run.seconds)
        if run.maxrss_kib is not None:
            peaks.append(run.maxrss_kib / 1024)
        provider.append(after[0] - before[0])
        exchange.append(after[1] - before[1])
    return {"renewal": stats_ms(times), "renewal_ms": statistics.median(times) * 1000,
            "renewal_peak_mib": max(peaks) if peaks else None,
            "renewal_connections_provider": statistics.median(provider),
            "renewal_connections_exchange": statistics.median(exchange),
            "renewal_connections": statistics.median(p + e for p, e in zip(provider, exchange))}


def parallel(bed: Bed, count: int) -> dict:
    bed.make_stale()
    mark, exchanges = bed.idp.mark(), bed.emu.count("exchange_ok")
    env = bed.env()
    argv = [str(bed.install.woci), "--profile", PROFILE, "os", "ns", "get"]
    start = time.perf_counter()
    children = [Child(argv, env, stderr=str(bed.tmp / f"parallel-{i}.err"))
                for i in range(count)]
    deadline = time.monotonic() + PARALLEL_TIMEOUT
    results = [child.wait(deadline) for child in children]
    wall = time.perf_counter() - start
    failures = [i for i, r in enumerate(results) if r.code != 0 or r.timed_out]
    for i in failures[:3]:
        progress(f"parallel run {i} exited {results[i].code}: "
                 f"{(bed.tmp / f'parallel-{i}.err').read_text()[-800:]}")
    try:   # the provider logs asynchronously: wait (bounded) for the grant, then for stragglers
        bed.idp.wait_for("token_request", timeout=EVENT_TIMEOUT, since=mark,
                         grant_type="refresh_token")
    except TimeoutError:
        pass
    time.sleep(0.5)
    return {"parallel_runs": count, "parallel_wall_s": wall,
            "parallel_refresh_grants": refresh_grants(bed.idp, mark),
            "parallel_exchanges": bed.emu.count("exchange_ok") - exchanges,
            "parallel_failures": len(failures)}


# --------------------------------------------------------------------------------------------
# Part 4: kubectl, the OKE credential cache and oci
# --------------------------------------------------------------------------------------------

def oke(bed: Bed, count: int, repeats: int) -> dict:
    """First call of `woci ... ce cluster generate-token` for a cluster (oci runs) and repeated
    calls with the same arguments (from the OKE credential cache, once woci has one: until then
    oci runs every time and the ratio is ~1.0)."""
    if not (Path(sys.executable).parent / "oci").exists():
        progress("no oci in the project venv: oke part skipped")
        return {}
    cache = bed.session / "exec-credentials"   # SPEC section 13

    def generate(cluster: str, out: Path) -> Run:
        run = bed.woci("--profile", PROFILE, "ce", "cluster", "generate-token", "--cluster-id",
                       cluster, "--region", REGION, real_oci=True, stdout=out,
                       timeout=OKE_RUN_TIMEOUT)
        if run.code != 0:
            raise RuntimeError("generate-token failed")
        return run

    generate(f"{CLUSTER_ID}-warm-up", bed.tmp / "oke-first.json")   # page cache, not counted
    first, repeat, identical = [], [], []
    for k in range(count):
        cluster = f"{CLUSTER_ID}-{k}-{os.getpid()}"   # new arguments: nothing cached for them
        shutil.rmtree(cache, ignore_errors=True)
        first.append(generate(cluster, bed.tmp / "oke-first.json").seconds)
        reference = (bed.tmp / "oke-first.json").read_bytes()
        for _ in range(repeats):
            repeat.append(generate(cluster, bed.tmp / "oke-repeat.json").seconds)
            identical.append((bed.tmp / "oke-repeat.json").read_bytes() == reference)
    result = {"oke_first": stats_ms(first), "oke_repeat": stats_ms(repeat),
              "oke_first_ms": statistics.median(first) * 1000,
              "oke_repeat_ms": statistics.median(repeat) * 1000,
              "oke_cached_ratio": statistics.median(repeat) / statistics.median(first),
              "oke_repeat_identical": all(identical)}
    result.update(kubectl(bed, cache, count, repeats))
    return result


def kubectl(bed: Bed, cache: Path, count: int, repeats: int) -> dict:
    kubectl_bin = shutil.which("kubectl")
    if kubectl_bin is None:
        progress("kubectl not found: kubectl timing skipped")
        return {}
    from tests.bed.kube_api import KubeApiServer, write_kubeconfig
    (bed.tmp / "kube").mkdir(exist_ok=True)
    with KubeApiServer(bed.tmp / "kube", bed.emu.public_key, CLUSTER_ID, REGION) as api:
        kubeconfig = write_kubeconfig(
            bed.tmp / "kubeconfig", api.url, str(bed.install.woci),
            ["--profile", PROFILE, "ce", "cluster", "generate-token", "--cluster-id", CLUSTER_ID,
             "--region", REGION])
        argv = [kubectl_bin, "--kubeconfig", str(kubeconfig), "get", "--raw", "/version",
                "--request-timeout", "20s"]

        def call() -> float:
            run = run_once(argv, bed.env(real_oci=True), OKE_RUN_TIMEOUT,
                           stderr=str(bed.tmp / "kubectl.err"))
            if run.code != 0:
                raise RuntimeError(f"kubectl failed: {(bed.tmp / 'kubectl.err').read_text()[-800:]}")
            return run.seconds

        first, repeat = [], []
        for _ in range(count):
            shutil.rmtree(cache, ignore_errors=True)
            first.append(call())
            repeat += [call() for _ in range(repeats)]
    return {"kubectl_first": stats_ms(first), "kubectl_repeat": stats_ms(repeat),
            "kubectl_first_ms": statistics.median(first) * 1000,
            "kubectl_repeat_ms": statistics.median(repeat) * 1000,
            "kubectl_cached_ratio": statistics.median(repeat) / statistics.median(first)}


# --------------------------------------------------------------------------------------------
# Part 5: the daemon
# --------------------------------------------------------------------------------------------

def proc_cpu(pid: int) -> tuple:
    """(utime+stime seconds from /proc/PID/stat, on-CPU seconds from schedstat of every thread:
    nanosecond resolution, where stat counts 10 ms ticks). Both include the CPU of the
    children it has reaped (cutime+cstime, in ticks): the daemon renews in a child process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    children = (int(fields[13]) + int(fields[14])) / tick
    ticks = (int(fields[11]) + int(fields[12])) / tick + children
    ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return ticks, None
    return ticks, ns / 1e9 + children


def proc_status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def is_our_daemon(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"--daemon" in cmdline and state != "Z"


def daemon(bed: Bed, renew_seconds: float, idle_seconds: float) -> dict:
    constants = bed.install.constants()
    bed.make_stale()
    bed.emu.set_upst_lifetime(DAEMON_SHORT_LIFETIME)
    pid_out = bed.tmp / "daemon.pid"
    run = bed.woci("--profile", PROFILE, "--daemon", stdout=pid_out, timeout=BED_RUN_TIMEOUT)
    text = pid_out.read_text().strip()
    if run.code != 0 or not text.isdigit():
        raise RuntimeError("woci --daemon did not start")
    pid = int(text)
    try:
        pidfd: Optional[int] = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        return _measure_daemon(bed, pid, renew_seconds, idle_seconds,
                               float(constants["DEFAULT_REFRESH_SAFETY_WINDOW"]),
                               float(constants["BACKGROUND_MAX_SLEEP_SECONDS"]))
    finally:
        bed.woci("--profile", PROFILE, "--stop-daemon", timeout=DAEMON_STOP_TIMEOUT)
        deadline = time.monotonic() + DAEMON_STOP_TIMEOUT
        while is_our_daemon(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_our_daemon(pid):
            progress(f"the daemon (pid {pid}) did not stop; killing it")
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        if pidfd is not None:
            os.close(pidfd)
        bed.emu.set_upst_lifetime(3600)


def _measure_daemon(bed: Bed, pid: int, renew_seconds: float, idle_seconds: float,
                    safety_window: float, max_sleep: float) -> dict:
    token_file = bed.session / "token"
    rss = [proc_status_mib(pid, "VmRSS")]
    start = (time.monotonic(), *proc_cpu(pid))
    changes = []          # (time, stat cpu, schedstat cpu) just after each renewal
    last = token_file.stat().st_mtime_ns
    end = time.monotonic() + renew_seconds
    while time.monotonic() < end:
        time.sleep(0.1)
        if not is_our_daemon(pid):
            raise RuntimeError("the daemon exited during the run")
        mtime = token_file.stat().st_mtime_ns
        if mtime != last:
            last = mtime
            changes.append((time.monotonic(), *proc_cpu(pid)))
        rss.append(proc_status_mib(pid, "VmRSS"))
    # Idle: UPSTs of an hour again; once the daemon has one it sleeps (waking every 60 s).
    bed.emu.set_upst_lifetime(REAL_UPST_LIFETIME)
    deadline = time.monotonic() + 30
    while bed.token_exp() < time.time() + 1200 and time.monotonic() < deadline:
        time.sleep(0.1)
    if bed.token_exp() < time.time() + 1200:
        raise RuntimeError("the daemon did not renew with the long UPST")
    time.sleep(1.0)      # let it write its state file and go to sleep
    token_before = bed.token()
    t0, cpu0 = time.monotonic(), proc_cpu(pid)
    end = t0 + idle_seconds
    while time.monotonic() < end:
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        if not is_our_daemon(pid):
            raise RuntimeError("the daemon exited while idle")
        rss.append(proc_status_mib(pid, "VmRSS"))
    t1, cpu1 = time.monotonic(), proc_cpu(pid)
    if bed.token() != token_before:
        progress("the daemon renewed during the idle window: idle CPU includes a renewal")
    hwm = proc_status_mib(pid, "VmHWM")
    use_ns = all(c[2] is not None for c in [start, *changes]) and None not in (cpu0[1], cpu1[1])
    pick = 2 if use_ns else 1
    if len(changes) >= 2:     # renewal to renewal: each interval holds one renewal and a sleep
        per_renewal = (changes[-1][pick] - changes[0][pick]) / (len(changes) - 1)
    elif changes:             # one renewal: counted from the daemon's start (a little more)
        per_renewal = changes[0][pick] - start[pick]
    else:
        per_renewal = None
    idle_rate = ((cpu1[1] - cpu0[1]) if use_ns else (cpu1[0] - cpu0[0])) / (t1 - t0)
    lead = min(safety_window, REAL_UPST_LIFETIME / 3)
    renewals_per_hour = 3600 / (REAL_UPST_LIFETIME - lead)
    idle_per_hour = idle_rate * 3600
    total = idle_per_hour + renewals_per_hour * (per_renewal or 0.0)
    return {
        "daemon_rss_mib": max(rss), "daemon_hwm_mib": hwm,
        "daemon_renewals": len(changes), "daemon_cpu_s_per_renewal": per_renewal,
        "daemon_idle_cpu_s_per_hour": idle_per_hour,
        "daemon_renewals_per_real_hour": renewals_per_hour,
        "daemon_cpu_s_per_idle_hour": total if per_renewal is not None else None,
        "daemon_idle_seconds": t1 - t0,
        "daemon_idle_wakeups": int((t1 - t0) // max_sleep),
        "daemon_max_sleep_s": max_sleep, "daemon_renewal_lead_s": lead,
        "daemon_cpu_source": "schedstat (ns)" if use_ns else "/proc/PID/stat utime+stime (10 ms ticks)",
        "daemon_cpu_total_stat_s": cpu1[0],
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def machine() -> dict:
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in
                    Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": platform.machine(), "nproc": len(os.sched_getaffinity(0)),
            "memory_gib": round(mem / 1024 ** 3, 1), "cpu": cpu, "kernel": platform.release(),
            "loadavg_start": round(os.getloadavg()[0], 2)}


def meets(key: str, value) -> Optional[bool]:
    if key not in TARGETS or value is None:
        return None
    op, limit, _ = TARGETS[key]
    return {"<=": value <= limit, "<": value < limit, "==": value == limit}[op]


def target_text(key: str) -> str:
    if key not in TARGETS:
        return ""
    op, limit, unit = TARGETS[key]
    return f"{op} {limit:g}{unit}"


def mark(key: str, value) -> str:
    ok = meets(key, value)
    return "" if ok is None else ("yes" if ok else "NO")


def fmt_ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:8.1f} ms"


def fmt_mib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f} MiB"


def print_table(data: dict) -> None:
    m = data["meta"]
    out: List[str] = []
    line = out.append
    line(f"woci benchmark, {m['date']}: {m['machine']}, nproc {m['nproc']}, "
         f"{m['memory_gib']} GiB RAM, {m['cpu']}")
    line(f"python {m['python']}; oci file {MODULE_FILE} of {m['woci_version_file']}")
    line("measured runs: PYTHONDONTWRITEBYTECODE (and every other PYTHON* variable) unset, so "
         "cached bytecode is used as on a user's machine")
    line(f"load average (1 min) at start {m['loadavg_start']}, at end {m['loadavg_end']}; "
         f"the whole run took {m['bench_seconds']:.0f} s")
    line("")
    row = "{:<56} {:>11} {:>11} {:>11} {:>9} {:>8} {:>9} {:>4}"
    fast = data.get("fast_table")
    if fast:
        line(f"fast path: valid session, stub oci (a link to `true`: a measurement device), "
             f"{m['runs']} interleaved rounds, each mode beside `python -c pass`")
        line(row.format("", "median", "min", "max", "peak RSS", "ratio", "target", "ok"))
        labels = [
            ("pass", "python -c pass (throwaway venv)", None, None),
            ("console", "woci (console script, pip install .)", "fast_path_ratio_console",
             data["fast_path_ratio_console"]),
            ("script", "python oci_upst_session_manager.py", "fast_path_ratio_script",
             data["fast_path_ratio_script"]),
            ("pass_pp", "python -c pass (PYTHONPATH=src)", None, None),
            ("module", "python -m oci_upst_session_manager", "fast_path_ratio_module",
             data["fast_path_ratio_module"]),
            ("import", "python -c 'import oci_upst_session_manager'", None, None),
            ("stub", "stub oci alone", None, None),
            ("json", "python -c 'import json' (floor: json pulls in re, enum)", None,
             data["python_import_json_ratio"]),
            ("reference", "reference 15-line fast path (base64 + json + exec)", None,
             data["reference_fast_path_ratio"]),
        ]
        for name, label, key, ratio in labels:
            s = fast[name]
            line(row.format(label, fmt_ms(s["median"]), fmt_ms(s["min"]), fmt_ms(s["max"]),
                            fmt_mib(s["peak_mib"]), "" if ratio is None else f"{ratio:.2f}x",
                            target_text(key or ""), mark(key or "", ratio)))
        key = "fast_path_peak_mib"
        line(row.format("fast-path peak RSS (console, max of runs)", "", "", "",
                        fmt_mib(data[key]), "", target_text(key), mark(key, data[key])))
        line(f"  imports beyond python's own start-up: {data['fast_path_import_count']} modules, "
             f"{data['fast_path_import_ms']:.1f} ms self time (-X importtime, median of 5); "
             f"heavy packages imported: {', '.join(data['fast_path_heavy_imports']) or 'none'}")
        line("  by what woci imports (cumulative ms): " + ", ".join(
            f"{name} {ms:.1f}" for name, ms in data["fast_path_direct_imports"][:10]))
        line("  biggest single modules (self ms): " + ", ".join(
            f"{name} {ms:.1f}" for name, ms in data["fast_path_top_imports"][:8]))
        line("")
    if data.get("renewal"):
        r = data["renewal"]
        line("renewal against the test bed (token forced stale; `woci --profile P`, no oci)")
        line(row.format(f"one renewal (refresh grant + exchange), n={r['n']}",
                        fmt_ms(r["median"]), fmt_ms(r["min"]), fmt_ms(r["max"]),
                        fmt_mib(data["renewal_peak_mib"]), "", "", ""))
        line(f"  first sign-in (scripted browser user): {data['signin_ms']:.0f} ms")
        line(f"  connections woci opened per renewal, counted at the peers: "
             f"{data['renewal_connections']:g} (provider {data['renewal_connections_provider']:g},"
             f" exchange {data['renewal_connections_exchange']:g})")
        line("")
    if data.get("parallel_runs"):
        line(f"{data['parallel_runs']} parallel woci runs on an expired session (stub oci)")
        line(f"  wall time {data['parallel_wall_s']:.2f} s, exchanges "
             f"{data['parallel_exchanges']}")
        for key, label in (("parallel_refresh_grants", "refresh grants the provider saw"),
                           ("parallel_failures", "failures (non-zero exits)")):
            line(row.format(f"  {label}", str(data[key]), "", "", "", "", target_text(key),
                            mark(key, data[key])))
        line("")
    if data.get("oke_first"):
        line("OKE: `woci ... ce cluster generate-token` with the real oci; first call for a "
             "cluster vs repeated calls with the same arguments")
        line(row.format("", "median", "min", "max", "", "ratio", "", ""))
        for prefix, label in (("oke", "woci generate-token"),
                              ("kubectl", "kubectl --raw /version via woci")):
            if not data.get(prefix + "_first"):
                continue
            for which in ("first", "repeat"):
                s = data[f"{prefix}_{which}"]
                ratio = data[f"{prefix}_cached_ratio"] if which == "repeat" else None
                line(row.format(f"{label}, {which} (n={s['n']})", fmt_ms(s["median"]),
                                fmt_ms(s["min"]), fmt_ms(s["max"]), "",
                                "" if ratio is None else f"{ratio:.2f}", "", ""))
        line(f"  oke_cached_ratio = repeated / first call (the repeats are answered from the "
             f"OKE credential cache). Repeated output byte-identical to the first: "
             f"{'yes (served from a cache)' if data['oke_repeat_identical'] else 'no (oci ran again)'}")
        line("")
    if data.get("daemon_renewals") is not None:
        line(f"daemon: {DAEMON_SHORT_LIFETIME} s UPSTs for {m['daemon_renew_seconds']:.0f} s, "
             f"then {REAL_UPST_LIFETIME} s UPSTs idle for {data['daemon_idle_seconds']:.0f} s "
             f"(CPU from {data['daemon_cpu_source']})")
        key = "daemon_rss_mib"
        line(row.format("  RSS (VmRSS, max seen)", f"{data[key]:.1f} MiB", "", "", "", "",
                        target_text(key), mark(key, data[key])))
        per = data["daemon_cpu_s_per_renewal"]
        line(f"  renewals seen: {data['daemon_renewals']}; CPU per renewal "
             f"{'-' if per is None else f'{per * 1000:.1f} ms'}; VmHWM {data['daemon_hwm_mib']:.1f} MiB")
        line(f"  CPU while sleeping: {data['daemon_idle_cpu_s_per_hour']:.3f} s/hour "
             f"({data['daemon_idle_wakeups']} wake-up(s) of the every-{data['daemon_max_sleep_s']:g}-s kind in "
             f"the idle window{'' if data['daemon_idle_wakeups'] else ': too short to include one'})")
        key = "daemon_cpu_s_per_idle_hour"
        value = data[key]
        line(row.format("  CPU per idle hour (sleep + renewals)",
                        "-" if value is None else f"{value:.3f} s", "", "", "", "",
                        target_text(key), mark(key, value)))
        line(f"  = sleeping rate x 3600 + {data['daemon_renewals_per_real_hour']:.1f} renewals/hour "
             f"(60-min UPSTs, each renewed {data['daemon_renewal_lead_s'] / 60:g} min before "
             "expiry) x CPU per renewal")
        line("  (each renewal runs in a child process, whose CPU is counted here; the daemon "
             "itself never imports requests or cryptography)")
        line("")
    for name, message in data["errors"].items():
        line(f"FAILED part {name}: {message}")
    print("\n".join(out))


def file_version() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %cs", "--",
                               MODULE_FILE], capture_output=True, text=True, timeout=10).stdout
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                MODULE_FILE], capture_output=True, text=True, timeout=10).stdout
        return (head.strip() or "unknown") + (" + local changes" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--quick", action="store_true",
                        help="few repetitions and a short daemon run (under a minute in all)")
    parser.add_argument("--runs", type=int, help="fast-path rounds (default 20; quick 5)")
    parser.add_argument("--renewals", type=int, help="timed renewals (default 5; quick 2)")
    parser.add_argument("--parallel", type=int, default=20, help="parallel runs (default 20)")
    parser.add_argument("--oke-runs", type=int,
                        help="first calls, each followed by as many repeated ones (default 3; quick 1)")
    parser.add_argument("--daemon-renew-seconds", type=float,
                        help="daemon run with 6 s UPSTs (default 25; quick 10)")
    parser.add_argument("--daemon-idle-seconds", type=float,
                        help="daemon idle window (default 65, one 60-s wake-up; quick 5)")
    parser.add_argument("--skip", action="append", choices=PARTS, default=[],
                        help="leave a part out (repeatable)")
    parser.add_argument("--seed", type=int, default=1, help="order of the interleaved runs")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"runs": (20, 5), "renewals": (5, 2), "oke_runs": (3, 1),
                "daemon_renew_seconds": (25.0, 10.0), "daemon_idle_seconds": (65.0, 5.0)}
    for name, (full, short) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, short if quick else full)
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    data: dict = {key: None for name in PARTS for key in KEYS_BY_PART[name]}
    data["errors"] = {}
    tmp = Path(tempfile.mkdtemp(prefix="woci-bench-"))
    started = time.monotonic()
    here = os.getcwd()
    try:
        # Children start in an empty folder: `python -m` and `-c` put their cwd first on
        # sys.path, and the worktree's own copy of the module must not be the one imported.
        (tmp / "cwd").mkdir()
        os.chdir(tmp / "cwd")
        install = Install(tmp)
        progress(f"installing woci into a throwaway venv ({tmp / 'venv'})")
        install.build()
        data["meta"] = {**machine(), "python": install.version(),
                        "woci_version_file": file_version(), "runs": args.runs,
                        "daemon_renew_seconds": args.daemon_renew_seconds,
                        "pythondontwritebytecode": "unset for measured runs",
                        "skipped": sorted(set(args.skip)), "targets": {
                            k: target_text(k) for k in TARGETS}}
        if "fast" not in args.skip:
            progress(f"fast path: {args.runs} interleaved rounds")
            with part(data, "fast"):
                fast = fast_path(install, tmp, args.runs, args.seed)
                data["fast_table"] = fast.pop("table")
                data.update(fast)
        if set(PARTS[1:]) - set(args.skip):
            with part(data, "bed"):
                bed_parts(args, tmp, install, data)
    finally:
        os.chdir(here)
        shutil.rmtree(tmp, ignore_errors=True)
    data["meta"]["bench_seconds"] = round(time.monotonic() - started, 1)
    data["meta"]["loadavg_end"] = round(os.getloadavg()[0], 2)
    data["targets_met"] = {k: meets(k, data.get(k)) for k in TARGETS}
    if args.json:
        print(json.dumps(data, indent=1, sort_keys=True))
    else:
        print_table(data)
        progress(f"done in {data['meta']['bench_seconds']:.0f} s")
    return 1 if data["errors"] else 0


@contextlib.contextmanager
def part(data: dict, name: str):
    """A part that fails is reported (and the exit code is 1); the other parts still run."""
    try:
        yield
    except Exception as exc:   # noqa: BLE001 - any failure of a part is reported, not raised
        data["errors"][name] = f"{type(exc).__name__}: {exc}"
        progress(f"{name} part failed: {data['errors'][name]}")


def bed_parts(args: argparse.Namespace, tmp: Path, install: Install, out: dict) -> None:
    from tests.bed.emulator import OciEmulator
    from tests.bed.idp import TestIdP

    progress("starting the test provider and the OCI emulator on 127.0.0.1")
    with TestIdP(tmp / "idp") as idp, \
            OciEmulator(jwks_uri=idp.jwks_uri, issuer=idp.issuer,
                        clients={OCI_CLIENT_ID: OCI_CLIENT_SECRET}) as emu, \
            CountingProxy(idp.port) as idp_proxy, CountingProxy(emu.port) as emu_proxy:
        bed = Bed(tmp, install, idp, emu, idp_proxy, emu_proxy)
        progress("signing in once (scripted browser user)")
        out.update(sign_in(bed))
        steps = [
            ("renewal", f"{args.renewals} timed renewals",
             lambda: renewal(bed, args.renewals)),
            ("parallel", f"{args.parallel} runs at once on an expired session",
             lambda: parallel(bed, args.parallel)),
            ("oke", f"{args.oke_runs} first call(s), {args.oke_runs} repeat(s) each",
             lambda: oke(bed, args.oke_runs, args.oke_runs)),
            ("daemon", f"{args.daemon_renew_seconds:.0f} s renewing, "
                       f"{args.daemon_idle_seconds:.0f} s idle",
             lambda: daemon(bed, args.daemon_renew_seconds, args.daemon_idle_seconds)),
        ]
        for name, what, measure in steps:
            if name in args.skip:
                continue
            progress(f"{name}: {what}")
            with part(out, name):
                out.update(measure())


if __name__ == "__main__":
    sys.exit(main())
