"""The real OCI SDK, kubectl and a real browser accept what woci does and writes."""

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.bed.kube_api import KubeApiServer, write_kubeconfig
from tests.e2e.conftest import REGION, REPO, WOCI, assert_namespace_printed

CLUSTER_ID = "ocid1.cluster.oc1.iad.woci-test"
KUBECTL = shutil.which("kubectl")


def generate_token_args(user):
    return ["--profile", user.profile, "ce", "cluster", "generate-token",
            "--cluster-id", CLUSTER_ID, "--region", REGION]


def test_oci_python_sdk_uses_the_profile_woci_wrote(user, emulator):
    """oci.config.from_file + SecurityTokenSigner on woci's profile: GetNamespace succeeds."""
    import oci

    assert user.run("--profile", user.profile).returncode == 0
    config = oci.config.from_file(str(user.config_file), user.profile)
    token = Path(config["security_token_file"]).read_text()
    key = oci.signer.load_private_key_from_file(config["key_file"])
    signer = oci.auth.signers.SecurityTokenSigner(token, key)
    client = oci.object_storage.ObjectStorageClient(config, signer=signer,
                                                    service_endpoint=emulator.url)

    assert client.get_namespace().data == "wociemulated"


def test_oci_session_validate_accepts_the_session(user, emulator):
    """`oci session validate` through woci says the session is valid."""
    assert user.run("--profile", user.profile).returncode == 0

    result = user.run("--profile", user.profile, "session", "validate", "--local")

    assert result.returncode == 0, result.stderr
    assert "valid" in (result.stdout + result.stderr).lower()


def test_woci_stdout_on_the_kubectl_path_is_only_oci_output(user):
    """First run prints the sign-in on stderr; stdout is exactly oci's ExecCredential JSON."""
    result = user.run(*generate_token_args(user))

    assert result.returncode == 0, result.stderr
    credential = json.loads(result.stdout)
    assert credential["kind"] == "ExecCredential"
    assert "sign in" in result.stderr
    url = base64.b64decode(credential["status"]["token"] + "==").decode()
    assert f"/cluster_request/{CLUSTER_ID}" in url


@pytest.fixture
def kube_api(tmp_path, emulator):
    (tmp_path / "kube").mkdir()
    with KubeApiServer(tmp_path / "kube", emulator.public_key, CLUSTER_ID, REGION) as server:
        yield server


def test_kubectl_exec_plugin_through_woci(user, tmp_path, kube_api):
    """kubectl runs woci as its exec plugin and the API server verifies the signed token."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed (make test installs it where missing)")
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, kube_api.url, str(WOCI), generate_token_args(user))

    result = subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), "get", "pods",
                             "--request-timeout", "20s"], env=user.env(),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert "No resources found" in result.stdout + result.stderr
    assert len(kube_api.ok_checks()) >= 1
    assert [c for c in kube_api.checks if not c["ok"]] == []
    assert len(user.browser_opens()) == 1


def test_real_browser_signs_in_through_the_provider_pages(user, tmp_path):
    """Headless Chromium types the password at the provider and lands on woci's page."""
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian chromium is not installed (make test installs it)")
    user.browser = "chromium"
    screenshot = tmp_path / "woci-signed-in.png"

    result = user.oci_ns_get(env=user.env(WOCI_TEST_SCREENSHOT=str(screenshot)))

    assert_namespace_printed(result)
    opened = user.browser_opens()
    assert len(opened) == 1 and opened[0]["callback_status"] == 200, opened
    assert screenshot.stat().st_size > 1000
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(screenshot, artifacts / screenshot.name)
