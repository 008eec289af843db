"""harden's OCI client against real registries: the local one (127.0.0.1:5000, distribution 2.8,
no referrers API) and a second one started here with htpasswd auth and TLS."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import requests

from harden.errors import ExitCode, RegistryError
from harden.oci import (
    OCI_MANIFEST,
    Descriptor,
    DigestMismatch,
    Manifest,
    RegistryAuthError,
    RegistryClient,
    copy_image,
    list_referrers,
    parse_reference,
    push_referrer,
    referrers_tag,
    resolve,
)
from harden.oci.model import CREATED_ANNOTATION

if TYPE_CHECKING:
    from conftest import TlsRegistry

pytestmark = pytest.mark.integration

Push = Callable[[RegistryClient, str, str], Manifest]
ARTIFACT = "application/vnd.harden.test+json"


def attach(client: RegistryClient, repo: str, subject: Manifest, n: int = 0) -> Descriptor:
    return push_referrer(
        client,
        repo,
        subject.descriptor(),
        artifact_type=ARTIFACT,
        blob=json.dumps({"attestation": n}).encode(),
        blob_media_type="application/vnd.dsse.envelope.v1+json",
        annotations={CREATED_ANNOTATION: f"2026-03-01T12:00:0{n}Z", "dev.harden.n": str(n)},
    )


def test_ping_both_registries_and_auth_tls_failures(tls_registry: TlsRegistry) -> None:
    RegistryClient("127.0.0.1:5000").ping()
    tls_registry.client().ping()
    with pytest.raises(RegistryAuthError) as info:
        tls_registry.client(with_credentials=False).ping()
    assert f"docker login {tls_registry.host}" in (info.value.hint or "")
    with pytest.raises(RegistryError) as info2:
        RegistryClient(tls_registry.host, insecure_http=False, max_retries=0).ping()
    assert "CA" in (info2.value.hint or "")  # the default trust store does not know our CA


def test_connection_refused_has_a_hint() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RegistryError) as info:
        RegistryClient(f"127.0.0.1:{port}", max_retries=0).ping()
    assert "scripts/services.sh" in (info.value.hint or "")


def test_push_and_pull_back_byte_identical(
    local_registry: RegistryClient, unique_repo: Callable[[str], str], push_synthetic_image: Push
) -> None:
    repo = unique_repo("img")
    pushed = push_synthetic_image(local_registry, repo, "v1")
    ref = parse_reference(f"127.0.0.1:5000/{repo}:v1")
    pulled = resolve(local_registry, ref)
    assert pulled.data == pushed.data
    assert pulled.digest == pushed.digest
    assert resolve(local_registry, ref.with_digest(pushed.digest)).data == pushed.data
    head = local_registry.head_manifest(repo, "v1")
    assert head == Descriptor(OCI_MANIFEST, pushed.digest, len(pushed.data))
    layer = pulled.layers[0]
    blob = local_registry.get_blob(repo, layer.digest, max_bytes=1 << 20)
    assert b"".join(local_registry.open_blob(repo, layer.digest)) == blob
    assert len(blob) == layer.size
    assert local_registry.list_tags(repo) == ["v1"]
    assert local_registry.head_manifest(repo, "nope") is None


def test_referrer_via_tag_schema_fallback(
    local_registry: RegistryClient, unique_repo: Callable[[str], str], push_synthetic_image: Push
) -> None:
    repo = unique_repo("att")
    image = push_synthetic_image(local_registry, repo, "v1")
    assert list_referrers(local_registry, repo, image.digest) == []
    referrer = attach(local_registry, repo, image)
    assert local_registry.referrers_api(repo, image.digest) is None  # distribution 2.8
    assert referrers_tag(image.digest) in local_registry.list_tags(repo)
    assert list_referrers(local_registry, repo, image.digest) == [referrer]
    assert list_referrers(local_registry, repo, image.digest, ARTIFACT) == [referrer]
    assert list_referrers(local_registry, repo, image.digest, "other/type") == []
    stored = local_registry.get_manifest(repo, referrer.digest)
    assert stored.subject == Descriptor(OCI_MANIFEST, image.digest, len(image.data))
    assert stored.artifact_type == ARTIFACT
    assert stored.annotations[CREATED_ANNOTATION] == "2026-03-01T12:00:00Z"


def test_concurrent_push_referrer_keeps_both(
    local_registry: RegistryClient, unique_repo: Callable[[str], str], push_synthetic_image: Push
) -> None:
    repo = unique_repo("race")
    image = push_synthetic_image(local_registry, repo, "v1")
    barrier = threading.Barrier(2)
    results: dict[int, Descriptor] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        client = RegistryClient("127.0.0.1:5000")
        try:
            barrier.wait(timeout=10)
            results[n] = attach(client, repo, image, n)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    found = {d.digest for d in list_referrers(local_registry, repo, image.digest)}
    assert found == {results[1].digest, results[2].digest}


def _recording_session(log: list[str]) -> requests.Session:
    session = requests.Session()

    def record(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        request = response.request
        log.append(f"{request.method} {urlsplit(str(request.url)).path}")

    session.hooks["response"].append(record)
    return session


def test_copy_within_one_registry_mounts_blobs(
    local_registry: RegistryClient, unique_repo: Callable[[str], str], push_synthetic_image: Push
) -> None:
    src_repo, dst_repo = unique_repo("staging/img"), unique_repo("prod/img")
    image = push_synthetic_image(local_registry, src_repo, "candidate")
    referrer = attach(local_registry, src_repo, image)
    messages: list[str] = []
    log: list[str] = []
    dst = RegistryClient("127.0.0.1:5000", session=_recording_session(log))
    result = copy_image(
        local_registry, src_repo, image.digest, dst, dst_repo, tag="1.0", progress=messages.append
    )
    assert result.digest == image.digest
    # config + layer of the image, empty config + envelope of the referrer
    assert sum("mounted" in m for m in messages) == 4
    assert not any(entry.startswith("PATCH") for entry in log)
    assert dst.get_manifest(dst_repo, "1.0").data == image.data
    assert list_referrers(dst, dst_repo, image.digest) == [referrer]
    writes = [e for e in log if e.startswith("PUT")]
    assert writes[-1] == f"PUT /v2/{dst_repo}/manifests/1.0"


def test_copy_across_registries_with_auth_and_tls(
    local_registry: RegistryClient,
    tls_registry: TlsRegistry,
    unique_repo: Callable[[str], str],
    push_synthetic_image: Push,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src_repo, dst_repo = unique_repo("staging/img"), unique_repo("prod/img")
    image = push_synthetic_image(local_registry, src_repo, "candidate")
    referrers = {attach(local_registry, src_repo, image, n).digest for n in (1, 2)}
    monkeypatch.setenv("DOCKER_CONFIG", str(tls_registry.docker_config_dir))
    ref = parse_reference(f"{tls_registry.host}/{dst_repo}:1.0")
    dst = RegistryClient.for_reference(ref, ca_bundle=tls_registry.ca_bundle)
    log: list[str] = []
    dst._session = _recording_session(log)  # observe the order of writes
    messages: list[str] = []
    result = copy_image(
        local_registry, src_repo, image.digest, dst, dst_repo, tag="1.0", progress=messages.append
    )
    assert result.digest == image.digest
    assert any("copied" in m and "blob" in m for m in messages)
    assert not any("mounted" in m for m in messages)
    assert resolve(dst, ref).data == image.data  # identical bytes, identical digest
    assert {d.digest for d in list_referrers(dst, dst_repo, image.digest)} == referrers
    writes = [e for e in log if e.startswith("PUT")]
    assert writes[-1] == f"PUT /v2/{dst_repo}/manifests/1.0"  # the tag last
    # running it again finds everything in place and uploads nothing
    log.clear()
    copy_image(local_registry, src_repo, image.digest, dst, dst_repo, tag="1.0")
    assert not any(e.startswith(("POST", "PATCH")) for e in log)


def test_tampered_referrer_is_rejected_on_read(
    tls_registry: TlsRegistry, unique_repo: Callable[[str], str], push_synthetic_image: Push
) -> None:
    client = tls_registry.client()
    repo = unique_repo("tamper")
    image = push_synthetic_image(client, repo, "v1")
    referrer = attach(client, repo, image)
    path = tls_registry.blob_path(referrer.digest)
    original = path.read_bytes()
    tampered = original.replace(b"2026-03-01T12:00:00Z", b"2099-03-01T12:00:00Z")
    assert tampered != original and len(tampered) == len(original)
    path.write_bytes(tampered)
    # a reader that did not write it (the writer's client keeps what it wrote by digest: those
    # bytes match the digest, so it never needs to ask again)
    reader = tls_registry.client()
    [listed] = list_referrers(reader, repo, image.digest)
    with pytest.raises(DigestMismatch) as info:
        reader.get_manifest(repo, listed.digest)
    assert info.value.exit_code == ExitCode.INVALID_INPUT
    assert client.get_manifest(repo, listed.digest).data == original  # the writer's own bytes


def test_skopeo_reads_an_image_we_pushed(
    local_registry: RegistryClient, unique_repo: Callable[[str], str], push_synthetic_image: Push
) -> None:
    repo = unique_repo("skopeo")
    image = push_synthetic_image(local_registry, repo, "v1")
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://127.0.0.1:5000/{repo}:v1"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    info = json.loads(out)
    assert info["Digest"] == image.digest
    assert info["Architecture"] == "amd64"
    assert info["Layers"] == [image.layers[0].digest]
