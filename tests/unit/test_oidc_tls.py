"""Section 5, TLS: woci's HTTPS calls trust the CA bundle the OCI CLI would trust."""

import http.server
import json
import ssl
import threading

import pytest

import oci_upst_session_manager as woci
from tests.bed.kube_api import write_self_signed_cert


@pytest.fixture
def https_server(tmp_path):
    """An HTTPS token endpoint on 127.0.0.1 with a self-signed certificate."""
    cert_file, key_file = write_self_signed_cert(str(tmp_path))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps({"access_token": "a"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/token", cert_file
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_custom_ca_bundle_is_trusted(https_server):
    """With the server's certificate as ca_bundle (OCI_CLI_CERT_BUNDLE), the call succeeds."""
    url, cert_file = https_server

    answer = woci.post_form(url, {"grant_type": "x"}, "token endpoint", ca_bundle=cert_file)

    assert answer == {"access_token": "a"}


def test_untrusted_certificate_is_one_clear_tls_error(https_server, monkeypatch):
    """Without that bundle the certificate is refused at once, naming TLS and the URL."""
    url, _ = https_server
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)

    with pytest.raises(woci.HttpError, match=r"TLS failure talking to the token endpoint"):
        woci.post_form(url, {"grant_type": "x"}, "token endpoint", sleep=lambda s: None)


def test_oci_cli_cert_bundle_reaches_the_settings():
    """env OCI_CLI_CERT_BUNDLE becomes the bundle for woci's own calls."""
    cmd = woci.split_command_line(["--authz-base-url", "http://127.0.0.1/a", "--token-url",
                                   "http://127.0.0.1/t", "--auth-client-id", "c",
                                   "--client-id", "c", "--client-secret", "s"])
    env = {"HOME": "/nonexistent", "OCI_CLI_CERT_BUNDLE": "/etc/corp-ca.pem"}

    assert woci.build_settings(cmd, env, None, None).ca_bundle == "/etc/corp-ca.pem"
