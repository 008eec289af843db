"""Shared fixtures for the integration tests (real engine, registries, sshd, qemu).

Keep this file tidy: one section per service, fixtures session-scoped unless a test needs its
own instance, every process started here killed by its PID at the end.

CI rule (sigstore-python does the same): with ``CI=true`` a skipped integration test fails the
run, so a missing service can never turn the suite silently green.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from needs import unavailable
from vm_fixtures import sshd_server, vm_running, vm_template  # noqa: F401  (shared fixtures)

from harden.errors import RegistryError
from harden.oci import Credentials, Manifest, RegistryClient
from harden.oci.model import OCI_MANIFEST, canonical_json, compute_digest

LOCAL_REGISTRY = "127.0.0.1:5000"


# ---- CI: a skipped integration test is a failure ----------------------------------------------
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"integration test skipped with CI=true (skips fail in CI): {reason}"


# ---- the local registry (scripts/services.sh) -------------------------------------------------
@pytest.fixture(scope="session")
def local_registry() -> RegistryClient:
    """A client for the registry at 127.0.0.1:5000 (no auth, plain http)."""
    client = RegistryClient(LOCAL_REGISTRY, max_retries=1)
    try:
        client.ping()
    except RegistryError as e:
        unavailable(f"no registry at {LOCAL_REGISTRY} ({e.message}); run scripts/services.sh")
    return client


@pytest.fixture
def unique_repo() -> Callable[[str], str]:
    """Repository names no other test run uses: ``harden-test/<random>/<name>``."""
    run = uuid.uuid4().hex[:10]
    return lambda name: f"harden-test/{run}/{name}"


# ---- a second registry: htpasswd auth + TLS with a CA made here -------------------------------
@dataclass(frozen=True)
class TlsRegistry:
    host: str  # 127.0.0.1:PORT
    ca_bundle: str
    username: str
    password: str
    data_dir: Path
    docker_config_dir: Path  # holds config.json with auths for host
    pid: int

    def client(self, *, with_credentials: bool = True, **kwargs: Any) -> RegistryClient:
        creds = Credentials(self.username, self.password) if with_credentials else None
        kwargs.setdefault("ca_bundle", self.ca_bundle)
        return RegistryClient(self.host, credentials=creds, max_retries=1, **kwargs)

    def blob_path(self, digest: str) -> Path:
        """Where distribution's filesystem driver keeps a blob (and a manifest's bytes)."""
        algorithm, _, hexpart = digest.partition(":")
        return (
            self.data_dir / "docker/registry/v2/blobs" / algorithm / hexpart[:2] / hexpart / "data"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def pem_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "harden test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "server.pem",
        directory / "key.pem",
    )
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    pem_key(server_key, key_path)
    return ca_path, cert_path, key_path


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRegistry]:
    """Debian's docker-registry on a free loopback port with htpasswd auth and TLS."""
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not Path(binary).exists() or not shutil.which("htpasswd"):
        unavailable("docker-registry or htpasswd missing; run scripts/services.sh")
    root = tmp_path_factory.mktemp("tls-registry")
    ca, cert, key = _make_ca_and_server_cert(root)
    username, password = "harden", secrets.token_urlsafe(16)
    htpasswd = subprocess.run(
        ["htpasswd", "-Bbn", username, password], capture_output=True, check=True
    ).stdout
    (root / "htpasswd").write_bytes(htpasswd)
    port = _free_port()
    host = f"127.0.0.1:{port}"
    data = root / "data"
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(data)}, "delete": {"enabled": True}},
        "http": {
            "addr": host,
            "secret": secrets.token_hex(16),
            "tls": {"certificate": str(cert), "key": str(key)},
        },
        "auth": {"htpasswd": {"realm": "harden-test", "path": str(root / "htpasswd")}},
    }
    (root / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    docker_config = root / "docker"
    docker_config.mkdir()
    auth = f"{username}:{password}".encode()
    (docker_config / "config.json").write_text(
        json.dumps({"auths": {host: {"auth": base64.b64encode(auth).decode()}}})
    )
    log = (root / "registry.log").open("wb")
    proc = subprocess.Popen(
        [binary, "serve", str(root / "config.yml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    registry = TlsRegistry(host, str(ca), username, password, data, docker_config, proc.pid)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                registry.client().ping()
                break
            except RegistryError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (root / "registry.log").read_text(errors="replace")[-2000:]
                    pytest.fail(f"TLS registry did not start on {host}:\n{tail}")
                time.sleep(0.1)
        yield registry
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


# ---- a tiny synthetic image ---------------------------------------------------------------------
def synthetic_image_parts(nonce: str) -> tuple[bytes, bytes, bytes]:
    """(config, gzipped layer, manifest) of a one-file linux/amd64 image, unique per nonce."""
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        content = f"hello from harden {nonce}\n".encode()
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime, info.mode = len(content), 0, 0o644
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = tar_buf.getvalue()
    layer = gzip.compress(tar_bytes, mtime=0)
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [compute_digest(tar_bytes)]},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": compute_digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": compute_digest(layer),
                    "size": len(layer),
                }
            ],
            "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
        }
    )
    return config, layer, manifest


@pytest.fixture
def push_synthetic_image() -> Callable[[RegistryClient, str, str], Manifest]:
    """push(client, repo, tag) -> Manifest: a fresh tiny image pushed with harden's client."""

    def push(client: RegistryClient, repo: str, tag: str) -> Manifest:
        config, layer, manifest = synthetic_image_parts(uuid.uuid4().hex)
        for blob in (config, layer):
            client.upload_blob(repo, blob, compute_digest(blob))
        client.put_manifest(repo, tag, manifest, OCI_MANIFEST)
        return Manifest(manifest, OCI_MANIFEST, compute_digest(manifest))

    return push
