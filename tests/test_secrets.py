"""Credentials and tokens never reach logs, stdout/stderr, the manifest or the output files.

A real service-account flow: a freshly generated RSA key in a key file whose token_uri points at a local
OAuth token endpoint, so google-auth signs a JWT, gets an access token and the real `ee` client sends it to
the fake Earth Engine server. Tokens also sit in the environment (HF_TOKEN, GCS/EE access-token variables).
Then the run's logs (every logger, DEBUG), stdout/stderr and every file under --output are searched for them.
"""
from __future__ import annotations

import http.server
import json
import logging
import os
import threading

import pytest

ACCESS_TOKEN = "ya29.SECRET-access-token-7f3c9a1e"
HF_TOKEN = "hf_SECRETtokenDoNotLog0123456789abcdef"
ENV_TOKENS = {
    "HF_TOKEN": HF_TOKEN,
    "HUGGING_FACE_HUB_TOKEN": HF_TOKEN,
    "GOOGLE_OAUTH_ACCESS_TOKEN": "ya29.SECRET-gcs-env-token-41d2",
    "CLOUDSDK_AUTH_ACCESS_TOKEN": "ya29.SECRET-gcloud-env-token-88aa",
    "EARTHENGINE_TOKEN": "SECRET-earthengine-env-token-5be0",
}


class _TokenServer:
    """A local OAuth2 token endpoint: answers every JWT-bearer grant with ACCESS_TOKEN and counts grants."""

    def __init__(self):
        server = self
        self.grants = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                assert "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer" in body
                server.grants += 1
                payload = json.dumps({"access_token": ACCESS_TOKEN, "expires_in": 3600,
                                      "token_type": "Bearer"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/token" % self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def service_account_key(tmp_path):
    """(key file path, secret strings of the key) for a new RSA key and a local token endpoint."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    token_server = _TokenServer()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": "test-project", "private_key_id": "SECRETkeyid0a1b2c3d4e5f",
            "private_key": pem, "client_email": "embedder@test-project.iam.gserviceaccount.com",
            "client_id": "1234567890", "token_uri": token_server.url}
    path = tmp_path / "SECRET-dir" / "sa-key-SECRET.json"
    path.parent.mkdir()
    path.write_text(json.dumps(info))
    body = [line for line in pem.splitlines() if line and "PRIVATE KEY" not in line]
    secrets = {"key file path": str(path), "key file name": path.name, "private_key_id": info["private_key_id"],
               "private key line": body[5], "access token": ACCESS_TOKEN}
    yield path, secrets, token_server
    token_server.stop()


def _assert_absent(secrets, where, text):
    for name, secret in secrets.items():
        assert secret not in text, f"{name} leaked into {where}"


def _files_text(root):
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                yield path, handle.read().decode("latin-1")


def test_no_secret_in_logs_manifest_or_outputs(fake_ee, recipe_checkpoint_b64, service_account_key, tmp_path,
                                               model_cache, monkeypatch, caplog, capfd):
    import earth_engine
    from pipeline.run import launch

    key_path, secrets, token_server = service_account_key
    for name, value in ENV_TOKENS.items():
        monkeypatch.setenv(name, value)
    secrets.update({f"env {name}": value for name, value in ENV_TOKENS.items()})
    earth_engine.client.reset_for_tests()  # the fake_ee fixture initialised ee anonymously
    output = tmp_path / "out"
    argv = ["--bbox=8.0,47.0,8.003,47.002", "--start", "2024-06-01", "--end", "2024-07-01", "--output", str(output),
            "--tile-px", "32", "--img-size", "64", "--checkpoint", str(recipe_checkpoint_b64),
            "--ee-endpoint", fake_ee.server.url, "--ee-project", "test-project", "--ee-credentials", str(key_path),
            "--ee-request-px", str(32 * 32)]  # one request per tile: the 400 below dead-letters exactly one
    # One tile fails with a 400, so a dead letter (with the EE error message) is written too.
    fake_ee.server.add_rule(lambda call: call.index == 0, __import__("tests.fakes.ee_server",
                                                                     fromlist=["Fault"]).Fault.HTTP_400)

    caplog.set_level(logging.DEBUG)
    try:
        assert launch(argv) == 0
        assert launch([*argv, "--dry-run"]) == 0
    finally:
        earth_engine.client.reset_for_tests()

    # The secrets were really in play: the key was used to get the token and EE got requests.
    assert token_server.grants >= 1 and fake_ee.server.calls
    assert (output / "manifest.json").is_file() and list(output.glob("embeddings-*.parquet"))
    assert list((output / "failed").glob("*.jsonl")), "expected a dead-letter file to search as well"
    out, err = capfd.readouterr()
    assert "tiles embedded" in out and "dry run" in out
    _assert_absent(secrets, "the logs", caplog.text + "\n".join(
        str(r.args) for r in caplog.records))
    _assert_absent(secrets, "stdout/stderr", out + err)
    files = dict(_files_text(output))
    assert any(path.endswith("manifest.json") for path in files)
    for path, text in files.items():
        _assert_absent(secrets, path, text)
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["configuration"]["options"]["ee_credentials"] == "service-account-file"
