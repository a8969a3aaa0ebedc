"""The auto-refresh thread and the daemon, with UPSTs that live a few seconds."""

import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.bed.faultproxy import FaultProxy
from tests.e2e.conftest import RUN_TIMEOUT, WOCI, assert_namespace_printed
from tests.polling import wait_until

# Bounds for waiting on the daemon; the UPST lifetimes below are a few seconds.
DAEMON_WAIT = 30


def read_until(fd: int, wanted: bytes, timeout: float) -> bytes:
    """Read a terminal's output until wanted shows up, or fail after timeout seconds."""
    seen, deadline = b"", time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no {wanted!r} on the terminal within {timeout} s: {seen!r}")
        seen += os.read(fd, 1024)
    return seen


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def catches_signal(pid: int, signum: int) -> bool:
    """Whether the process has a handler installed for signum (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def daemon_user(user):
    """A user whose daemon, if a test started one, is stopped afterwards whatever happened."""
    yield user
    pid_file = user.session_dir / "woci_refresh.pid"
    if pid_file.exists():
        text = pid_file.read_text().strip()
        if text.isdigit():
            try:
                os.kill(int(text), signal.SIGKILL)
            except ProcessLookupError:
                pass


def start_daemon(user):
    result = user.run("--profile", user.profile, "--daemon")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().isdigit(), result.stdout
    return int(result.stdout.strip())


def test_auto_refresh_exec_keeps_a_job_longer_than_three_lifetimes_working(user, emulator):
    """--auto-refresh --exec: every oci call of a job spanning 3 UPST lifetimes succeeds."""
    emulator.set_upst_lifetime(6)
    before_ok = emulator.count("ns_ok")
    script = (f"for i in 1 2 3 4 5 6; do oci os ns get --endpoint {emulator.url} --no-retry "
              ">/dev/null || exit 9; sleep 3; done; echo job-done")

    result = user.run("--profile", user.profile, "--auto-refresh", "--exec", "--",
                      "sh", "-c", script, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "job-done"
    assert emulator.count("ns_ok") - before_ok == 6
    assert len(user.browser_opens()) == 1


def test_exec_sets_the_oci_environment_and_returns_the_command_code(user):
    """--exec: the command sees OCI_CLI_PROFILE/CONFIG_FILE/AUTH and its exit code is woci's."""
    result = user.run("--profile", user.profile, "--exec", "--", "sh", "-c",
                      'echo "$OCI_CLI_PROFILE $OCI_CLI_AUTH $OCI_CLI_CONFIG_FILE"; exit 7')

    assert result.returncode == 7, result.stderr
    profile, auth, config = result.stdout.split()
    assert (profile, auth, config) == (user.profile, "security_token", str(user.config_file))


def test_exec_forwards_sigterm_to_the_command(user):
    """SIGTERM to woci reaches the command, and woci exits with the command's code."""
    assert_namespace_printed(user.oci_ns_get())
    marker = user.home / "got-term"
    running = user.home / "command-running"
    # The signal is sent once the command says it runs (its trap set) and woci has its
    # forwarding handler in place.
    script = (f"trap 'touch {marker}; exit 42' TERM; touch {running}; "
              "while true; do sleep 0.1; done")
    proc = subprocess.Popen([str(WOCI), "--profile", user.profile, "--auto-refresh", "--exec", "--",
                             "sh", "-c", script],
                            env=user.env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def command_running():
            if proc.poll() is not None:
                raise AssertionError(f"woci exited ({proc.returncode}) before its command ran: "
                                     f"{proc.stderr.read().decode()}")
            return running.exists() and catches_signal(proc.pid, signal.SIGTERM)

        wait_until(command_running, RUN_TIMEOUT,
                   "the --exec command to run and woci to catch SIGTERM")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert code == 42
    assert marker.exists()


def test_daemon_renews_repeatedly_without_browser_or_cpu_spin(daemon_user, emulator):
    """The daemon renews a 4 s UPST several times, opens no browser and sleeps between."""
    user = daemon_user
    emulator.set_upst_lifetime(4)
    pid = start_daemon(user)
    exchanges = emulator.count("exchange_ok")
    cpu_start = cpu_seconds(pid)

    wait_until(lambda: emulator.count("exchange_ok") - exchanges >= 3, DAEMON_WAIT,
               "three renewals by the daemon")

    assert cpu_seconds(pid) - cpu_start < 2.0, "the daemon should sleep between renewals"
    assert len(user.browser_opens()) == 1
    # Renewals run in child processes: the long-lived daemon never maps OpenSSL or
    # cryptography's library (requests and cryptography would keep ~20 MiB resident).
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "libcrypto" not in maps and "_rust.abi3" not in maps and "_ssl" not in maps
    status = user.run("--profile", user.profile, "--daemon-status")
    assert status.returncode == 0
    assert f"pid {pid}" in status.stdout and "last renewal" in status.stdout
    stop = user.run("--profile", user.profile, "--stop-daemon")
    assert stop.returncode == 0, stop.stderr
    wait_until(lambda: not pid_alive(pid), 10, "the daemon to exit")
    assert not (user.session_dir / "woci_refresh.pid").exists()
    assert "daemon stopped" in (user.session_dir / "woci_daemon.log").read_text()


def test_daemon_status_is_true_right_after_start_and_second_daemon_is_refused(daemon_user):
    """--daemon returns once the pid file is locked; a second --daemon exits 1 naming the pid."""
    user = daemon_user
    pid = start_daemon(user)

    status = user.run("--profile", user.profile, "--daemon-status")
    second = user.run("--profile", user.profile, "--daemon")

    assert status.returncode == 0 and f"pid {pid}" in status.stdout
    assert second.returncode == 1
    assert f"already runs for profile {user.profile} (pid {pid})" in second.stderr
    assert second.stdout == ""
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid), 10, "the daemon to exit on SIGTERM")
    assert not (user.session_dir / "woci_refresh.pid").exists()
    assert user.run("--profile", user.profile, "--daemon-status").returncode == 1
    assert user.run("--profile", user.profile, "--stop-daemon").returncode == 1


def test_stale_pid_file_of_a_dead_daemon_is_reported_and_cleaned(user):
    """A pid file nobody holds (even naming a live pid) is not a running daemon."""
    user.session_dir.mkdir(parents=True, mode=0o700)
    (user.session_dir / "woci_refresh.pid").write_text(f"{os.getpid()}\n")

    status = user.run("--profile", user.profile, "--daemon-status")

    assert status.returncode == 1
    assert "stale pid file" in status.stderr
    assert not (user.session_dir / "woci_refresh.pid").exists()


def test_daemon_survives_a_provider_outage_and_recovers(daemon_user, idp, emulator):
    """The provider is unreachable for several renewal periods; the daemon keeps trying."""
    user = daemon_user
    with FaultProxy(idp.issuer) as proxy:
        user.write_manager_ini(token_url=proxy.url + idp.token_url[len(idp.issuer):])
        emulator.set_upst_lifetime(4)
        pid = start_daemon(user)
        proxy.set_down(True)
        # Each renewal attempt is several dropped requests (woci's own retries): wait for two.
        wait_until(lambda: proxy.count(status="dropped") >= 2 * 4, 60,
                   "failed renewals during the outage")
        assert pid_alive(pid)
        exchanges = emulator.count("exchange_ok")
        proxy.set_down(False)
        wait_until(lambda: emulator.count("exchange_ok") > exchanges, 90,
                   "a renewal after the outage")
        assert pid_alive(pid)
        log = (user.session_dir / "woci_daemon.log").read_text()
        assert "renewal failed" in log
        user.run("--profile", user.profile, "--stop-daemon")


def test_daemon_exits_with_a_clear_line_when_the_refresh_token_is_revoked(daemon_user, idp,
                                                                           emulator):
    """Refused refresh token: the daemon logs what to run, removes its pid file and exits."""
    user = daemon_user
    emulator.set_upst_lifetime(4)
    pid = start_daemon(user)
    idp.revoke(user.refresh_token_text(), client_id=idp.public_client_id)

    wait_until(lambda: not pid_alive(pid), DAEMON_WAIT, "the daemon to give up")

    log = (user.session_dir / "woci_daemon.log").read_text()
    assert "session authenticate" in log
    assert not (user.session_dir / "woci_refresh.pid").exists()
    assert len(user.browser_opens()) == 1


def test_daemon_keeps_a_prompted_passphrase_only_in_memory(daemon_user, emulator):
    """Passphrase typed at a terminal: the daemon renews an encrypted refresh token with it,
    while the passphrase is in no file, no argv and no environment of the daemon."""
    import fcntl
    import termios

    user = daemon_user
    user.write_manager_ini(refresh_token_passphrase_prompt="true")
    passphrase = "typed-at-the-terminal-42"
    emulator.set_upst_lifetime(4)
    master, slave = os.openpty()

    def make_the_pty_our_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([str(WOCI), "--profile", user.profile, "--daemon"], env=user.env(),
                            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=make_the_pty_our_terminal)
    os.close(slave)
    try:
        # Asked twice (a new passphrase is confirmed), before the browser opens. Each answer
        # is typed only once its prompt shows: getpass discards what was typed before.
        for prompt in (b"Passphrase for", b"Repeat the passphrase"):
            read_until(master, prompt, 30)
            os.write(master, (passphrase + "\n").encode())
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    pid = int(out.decode().strip())
    exchanges = emulator.count("exchange_ok")

    wait_until(lambda: emulator.count("exchange_ok") - exchanges >= 2, DAEMON_WAIT,
               "two renewals with the encrypted refresh token")

    assert '"ciphertext"' in user.refresh_token_text()
    assert passphrase.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert passphrase.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    for path in user.oci_dir.rglob("*"):
        if path.is_file():
            assert passphrase.encode() not in path.read_bytes(), path
    user.run("--profile", user.profile, "--stop-daemon")
