"""The OKE credential cache: kubectl's exec plugin answered from the session folder, oci run
once per credential. A probe named `oci` first on PATH counts oci's runs and then hands
over to the real oci-cli (it observes, it stands in for nothing)."""

import json
import os
import shutil
import stat
import subprocess
import time

import pytest

from tests.bed.kube_api import KubeApiServer, write_kubeconfig
from tests.e2e.conftest import REGION, WOCI, VENV_BIN

CLUSTER_ID = "ocid1.cluster.oc1.iad.woci-cache-test"
KUBECTL = shutil.which("kubectl")


@pytest.fixture
def oci_runs(tmp_path):
    """A PATH entry whose `oci` logs each run, and a function counting them."""
    real_oci = VENV_BIN / "oci"
    probe_bin = tmp_path / "probe-bin"
    probe_bin.mkdir()
    log = tmp_path / "oci-runs.log"
    probe = probe_bin / "oci"
    probe.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{real_oci}" "$@"\n')
    probe.chmod(0o755)

    def count():
        return len(log.read_text().splitlines()) if log.exists() else 0

    count.path = str(probe_bin)
    return count


def token_args(user, cluster_id=CLUSTER_ID, *woci_options):
    return [*woci_options, "--profile", user.profile, "ce", "cluster", "generate-token",
            "--cluster-id", cluster_id, "--region", REGION]


def probe_env(user, oci_runs):
    env = user.env()
    env["PATH"] = f"{oci_runs.path}{os.pathsep}{env['PATH']}"
    return env


def generate(user, env, *args):
    result = subprocess.run([str(WOCI), *args], env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=90, cwd=user.home)
    assert result.returncode == 0, result.stderr.decode()
    return result


def cache_entries(user):
    folder = user.session_dir / "exec-credentials"
    return sorted(folder.glob("*.json")) if folder.exists() else []


def test_second_call_is_answered_from_the_cache_byte_for_byte(user, oci_runs):
    """Same arguments twice: oci runs once, both answers are the same bytes, the entry is a
    private file in a private folder."""
    env = probe_env(user, oci_runs)
    first = generate(user, env, *token_args(user))
    second = generate(user, env, *token_args(user))

    assert oci_runs() == 1
    assert second.stdout == first.stdout
    assert json.loads(first.stdout)["kind"] == "ExecCredential"
    assert second.stderr == b""
    [entry] = cache_entries(user)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(entry.parent.stat().st_mode) == 0o700


def test_other_arguments_and_no_cache_run_oci(user, oci_runs):
    """Another cluster is another entry; --no-cache runs oci and refreshes the entry."""
    env = probe_env(user, oci_runs)
    generate(user, env, *token_args(user))
    generate(user, env, *token_args(user, "ocid1.cluster.oc1.iad.another"))
    assert oci_runs() == 2 and len(cache_entries(user)) == 2

    before = generate(user, env, *token_args(user)).stdout
    time.sleep(1.1)   # oci's presigned URL carries the second it was made: a new one differs
    refreshed = generate(user, env, *token_args(user, CLUSTER_ID, "--no-cache")).stdout
    after = generate(user, env, *token_args(user)).stdout

    assert oci_runs() == 3
    assert refreshed != before and after == refreshed


def test_session_authenticate_clears_the_cache(user, oci_runs):
    """A new sign-in forgets the old sign-in's credentials: the next call runs oci."""
    env = probe_env(user, oci_runs)
    generate(user, env, *token_args(user))
    assert cache_entries(user)

    assert user.run("--profile", user.profile, "session", "authenticate").returncode == 0
    assert cache_entries(user) == []
    generate(user, env, *token_args(user))
    assert oci_runs() == 2


@pytest.mark.parametrize("damage", ["garbage", "expiring", "other-key"])
def test_unusable_entries_are_ignored(user, oci_runs, damage):
    """Garbage, a credential with 30 s or less left, or an entry for other arguments: oci
    runs, the answer is fresh, the entry is replaced."""
    env = probe_env(user, oci_runs)
    generate(user, env, *token_args(user))
    [entry] = cache_entries(user)
    document = json.loads(entry.read_text())
    original_key = list(document["key"])
    if damage == "garbage":
        entry.write_bytes(b"\x00{not json")
    elif damage == "expiring":
        document["expires_at"] = time.time() + 20
        entry.write_text(json.dumps(document))
    else:
        document["key"][original_key.index(REGION)] = "eu-frankfurt-1"   # as a crc collision
        entry.write_text(json.dumps(document))

    result = generate(user, env, *token_args(user))

    assert oci_runs() == 2
    assert json.loads(result.stdout)["kind"] == "ExecCredential"
    replaced = json.loads(entry.read_text())
    assert replaced["key"] == original_key
    assert replaced["expires_at"] > time.time() + 60


@pytest.fixture
def kube_api(tmp_path, emulator):
    (tmp_path / "kube").mkdir()
    with KubeApiServer(tmp_path / "kube", emulator.public_key, CLUSTER_ID, REGION) as server:
        yield server


def test_kubectl_runs_oci_once_for_several_calls(user, tmp_path, kube_api, oci_runs):
    """Real kubectl against the bed's API server, three commands: every request carries a
    token the server verifies, and oci ran once."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed (make test installs it where missing)")
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, kube_api.url, str(WOCI), token_args(user))
    env = probe_env(user, oci_runs)

    for _ in range(3):
        result = subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), "get", "pods",
                                 "--request-timeout", "20s"], env=env,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        assert "No resources found" in result.stdout + result.stderr

    assert oci_runs() == 1
    assert len(kube_api.ok_checks()) >= 3
    assert [c for c in kube_api.checks if not c["ok"]] == []


def test_a_sign_in_during_a_run_clears_the_cache(user, oci_runs):
    """The refresh token is gone, so an ordinary run signs in again (perhaps as someone
    else): the credentials cached for the earlier sign-in are forgotten."""
    env = probe_env(user, oci_runs)
    generate(user, env, *token_args(user))
    assert cache_entries(user)
    (user.session_dir / "refresh_token").unlink()
    (user.session_dir / "token").unlink()

    assert user.run("--profile", user.profile).returncode == 0
    assert len(user.browser_opens()) == 2
    assert cache_entries(user) == []
