"""The raw registry client and the model layer against a fake registry mounted as a requests
transport adapter (the SDK seam): auth, retries, digest checks, referrers, copies."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

import pytest
import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from harden.errors import ExitCode, HardenError, RegistryError
from harden.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    Credentials,
    Descriptor,
    DigestMismatch,
    RegistryAuthError,
    RegistryClient,
    RegistryNotFound,
    copy_image,
    list_referrers,
    list_referrers_of_each,
    push_referrer,
    referrers_tag,
)
from harden.oci import client as client_module
from harden.oci.client import _Session
from harden.oci.model import (
    CREATED_ANNOTATION,
    EMPTY_DIGEST,
    add_to_referrers_index,
    canonical_json,
    compute_digest,
)

Reply = tuple[int, dict[str, str], bytes]
Handler = Callable[[requests.PreparedRequest], Reply]


def _response(request: requests.PreparedRequest, reply: Reply) -> requests.Response:
    status, headers, body = reply
    response = requests.Response()
    response.status_code = status
    response.headers = CaseInsensitiveDict({"Content-Length": str(len(body)), **headers})
    response.raw = io.BytesIO(b"" if request.method == "HEAD" else body)
    response.url = request.url or ""
    response.request = request
    response.reason = ""
    return response


def _url(request: requests.PreparedRequest) -> SplitResult:
    return urlsplit(str(request.url))


def _body(request: requests.PreparedRequest) -> bytes:
    body = request.body
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return b"".join(body)  # a generator body (streamed upload)


class ScriptedAdapter(BaseAdapter):
    """Answers each (method, path) with the next scripted reply; records every request."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[tuple[str, str], list[Reply | Handler | Exception]] = {}
        self.requests: list[requests.PreparedRequest] = []

    def add(self, method: str, path: str, *replies: Reply | Handler | Exception) -> None:
        self.routes.setdefault((method, path), []).extend(replies)

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        self.requests.append(request)
        path = _url(request).path
        queue = self.routes.get((request.method or "", path))
        if not queue:
            return _response(request, (599, {}, b"unscripted " + path.encode()))
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        reply = item(request) if callable(item) else item
        return _response(request, reply)

    def close(self) -> None:
        pass


class FakeRegistry(BaseAdapter):
    """A small in-memory distribution registry: manifests, blobs, uploads, mounts, and
    optionally the referrers API and If-Match on manifest PUTs."""

    def __init__(self, *, referrers_api: bool = False, etags: bool = False) -> None:
        super().__init__()
        self.referrers_api = referrers_api
        self.etags = etags
        self.blobs: dict[str, dict[str, bytes]] = {}
        self.manifests: dict[str, dict[str, tuple[bytes, str]]] = {}
        self.tags: dict[str, dict[str, str]] = {}
        self.uploads: dict[str, tuple[str, bytearray]] = {}
        self.log: list[str] = []
        self.before_put: Callable[[str, str], None] | None = None

    def close(self) -> None:
        pass

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        return _response(request, self._handle(request))

    def _handle(self, request: requests.PreparedRequest) -> Reply:
        method = request.method or ""
        url = _url(request)
        query = parse_qs(url.query)
        self.log.append(f"{method} {url.path}{'?' + url.query if url.query else ''}")
        if url.path == "/v2/":
            return 200, {}, b"{}"
        listing = re.match(r"^/v2/(.+)/tags/list$", url.path)
        if listing:
            repo = listing.group(1)
            if repo not in self.tags:
                return 404, {}, b'{"errors":[{"code":"NAME_UNKNOWN","message":"unknown"}]}'
            return 200, {}, json.dumps({"name": repo, "tags": sorted(self.tags[repo])}).encode()
        m = re.match(r"^/v2/(.+)/(manifests|blobs|referrers)/(.+)$", url.path)
        if m and m.group(2) == "blobs" and m.group(3).startswith("uploads/"):
            return self._upload(method, m.group(1), m.group(3)[len("uploads/") :], query, request)
        if not m:
            return 404, {}, b""
        repo, kind, ref = m.groups()
        if kind == "blobs":
            data = self.blobs.get(repo, {}).get(ref)
            if data is None:
                return 404, {}, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}'
            return 200, {"Docker-Content-Digest": ref}, data
        if kind == "referrers":
            if not self.referrers_api:
                return 404, {"Content-Type": "text/plain"}, b"404 page not found"
            entries = []
            for digest, (data, media_type) in self.manifests.get(repo, {}).items():
                doc = json.loads(data)
                if doc.get("subject", {}).get("digest") == ref:
                    entries.append(
                        {
                            "mediaType": media_type,
                            "digest": digest,
                            "size": len(data),
                            "artifactType": doc.get("artifactType"),
                            "annotations": doc.get("annotations", {}),
                        }
                    )
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
            return 200, {"Content-Type": OCI_INDEX}, body.encode()
        digest = ref if ref.startswith("sha256:") else self.tags.get(repo, {}).get(ref, "")
        if method in ("GET", "HEAD"):
            stored = self.manifests.get(repo, {}).get(digest or "")
            if stored is None:
                return 404, {}, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}'
            headers = {"Content-Type": stored[1], "Docker-Content-Digest": digest or ""}
            if self.etags:
                headers["ETag"] = f'"{digest}"'
            return 200, headers, stored[0]
        if method == "PUT":
            if self.before_put:
                self.before_put(repo, ref)
                digest = ref if ref.startswith("sha256:") else self.tags.get(repo, {}).get(ref, "")
            data = _body(request)
            new_digest = "sha256:" + hashlib.sha256(data).hexdigest()
            if_match = request.headers.get("If-Match")
            if self.etags and if_match is not None and if_match != f'"{digest}"':
                return 412, {}, b""
            self.manifests.setdefault(repo, {})[new_digest] = (
                data,
                request.headers["Content-Type"],
            )
            if not ref.startswith("sha256:"):
                self.tags.setdefault(repo, {})[ref] = new_digest
            headers = {"Docker-Content-Digest": new_digest}
            subject = json.loads(data).get("subject")
            if self.referrers_api and subject:
                headers["OCI-Subject"] = subject["digest"]
            return 201, headers, b""
        return 405, {}, b""

    def _upload(
        self,
        method: str,
        repo: str,
        upload_id: str,
        query: dict[str, list[str]],
        request: requests.PreparedRequest,
    ) -> Reply:
        if method == "POST":
            if "mount" in query:
                digest, source = query["mount"][0], query["from"][0]
                if digest in self.blobs.get(source, {}):
                    self.blobs.setdefault(repo, {})[digest] = self.blobs[source][digest]
                    return 201, {"Location": f"/v2/{repo}/blobs/{digest}"}, b""
            uid = f"u{len(self.uploads)}"
            self.uploads[uid] = (repo, bytearray())
            return 202, {"Location": f"/v2/{repo}/blobs/uploads/{uid}?_state=x"}, b""
        uid = upload_id
        if uid not in self.uploads:
            return 404, {}, b""
        if method == "PATCH":
            self.uploads[uid][1].extend(_body(request))
            return 202, {"Location": f"/v2/{repo}/blobs/uploads/{uid}?_state=y"}, b""
        if method == "PUT":
            buf = self.uploads.pop(uid)[1] + _body(request)
            digest = query["digest"][0]
            if "sha256:" + hashlib.sha256(buf).hexdigest() != digest:
                return 400, {}, b'{"errors":[{"code":"DIGEST_INVALID","message":"bad"}]}'
            self.blobs.setdefault(repo, {})[digest] = bytes(buf)
            return 201, {"Docker-Content-Digest": digest}, b""
        if method == "DELETE":
            self.uploads.pop(uid, None)
            return 204, {}, b""
        return 405, {}, b""


def client_for(adapter: BaseAdapter, **kwargs: Any) -> tuple[RegistryClient, list[float]]:
    session = _Session()  # the client's own: its fast preparation is what runs in production
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    sleeps: list[float] = []
    client = RegistryClient("reg.test:5000", session=session, sleep=sleeps.append, **kwargs)
    return client, sleeps


def manifest_bytes(config: bytes, *layers: bytes) -> bytes:
    def desc(media_type: str, data: bytes) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": compute_digest(data), "size": len(data)}

    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", config),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", x) for x in layers],
        }
    )


def seed_image(fake: FakeRegistry, repo: str, tag: str = "v1") -> tuple[str, bytes]:
    config, layer = b'{"os":"linux"}', b"layer-bytes" * 100
    for blob in (config, layer):
        fake.blobs.setdefault(repo, {})[compute_digest(blob)] = blob
    data = manifest_bytes(config, layer)
    digest = compute_digest(data)
    fake.manifests.setdefault(repo, {})[digest] = (data, OCI_MANIFEST)
    fake.tags.setdefault(repo, {})[tag] = digest
    return digest, data


# ---- transport: scheme, auth, retries ----------------------------------------------------------
def test_loopback_defaults_to_http_and_others_to_https() -> None:
    assert RegistryClient("127.0.0.1:5000").base_url == "http://127.0.0.1:5000"
    assert RegistryClient("localhost:5000").base_url == "http://localhost:5000"
    assert RegistryClient("127.0.0.1:5443", ca_bundle="/ca.pem").base_url.startswith("https:")
    assert RegistryClient("registry.example.com").base_url == "https://registry.example.com"
    assert RegistryClient("127.0.0.1:5000", insecure_http=False).base_url.startswith("https:")


def test_basic_auth_is_sent_after_a_basic_challenge() -> None:
    adapter = ScriptedAdapter()
    adapter.add(
        "GET",
        "/v2/",
        (401, {"WWW-Authenticate": 'Basic realm="registry"'}, b""),
        (200, {}, b"{}"),
    )
    client, _ = client_for(adapter, credentials=Credentials("alice", "s3cret"))
    client.ping()
    assert "Authorization" not in adapter.requests[0].headers
    expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert adapter.requests[1].headers["Authorization"] == expected


def test_requests_are_prepared_as_requests_prepares_them() -> None:
    # the client's session skips requests' general preparation for plain requests: what
    # reaches the transport must be what the general path would have sent
    adapter = ScriptedAdapter()
    digest = compute_digest(b"{}")
    adapter.add("PUT", "/v2/a/b/manifests/v1", (201, {"Docker-Content-Digest": digest}, b""))
    adapter.add("POST", "/v2/a/b/blobs/uploads/", (202, {}, b""))
    client, _ = client_for(adapter)
    client.put_manifest("a/b", "v1", b"{}", OCI_MANIFEST)
    put = adapter.requests[0]
    assert (put.method, put.body) == ("PUT", b"{}")
    assert put.headers["Content-Length"] == "2"
    assert put.headers["Content-Type"] == OCI_MANIFEST
    assert "Transfer-Encoding" not in put.headers
    general = requests.Request(
        "PUT", str(put.url), headers={"Content-Type": OCI_MANIFEST}, data=b"{}"
    )
    expected = requests.Session().prepare_request(general)
    assert put.url == expected.url
    assert {k.lower(): v for k, v in put.headers.items()} == {
        k.lower(): v for k, v in expected.headers.items()
    }
    session = client._session
    response = session.request(
        "POST",
        client.base_url + "/v2/a/b/blobs/uploads/",
        headers={},
        data=None,
        stream=False,
        timeout=(1.0, 1.0),
        verify=True,
        allow_redirects=False,
        auth=client_module._NO_NETRC,
    )
    assert response.status_code == 202
    assert adapter.requests[-1].headers["Content-Length"] == "0"  # a POST without a body


@pytest.mark.parametrize(
    "token",
    ["T1\r\nX-Injected: 1", "T1\nHost: evil.test", " T1", "T1\x00"],
)
def test_a_token_with_control_characters_is_refused_not_sent(token: str) -> None:
    # a hostile token service answers a token meant to smuggle a header into the next request
    adapter = ScriptedAdapter()
    challenge = 'Bearer realm="https://auth.test/token",service="reg.test"'
    adapter.add("GET", "/v2/", (401, {"WWW-Authenticate": challenge}, b""))
    adapter.add("GET", "/token", (200, {}, json.dumps({"token": token}).encode()))
    client, _ = client_for(adapter)
    with pytest.raises(RegistryError) as raised:
        client.ping()
    assert raised.value.exit_code == ExitCode.ENVIRONMENT
    sent = [r for r in adapter.requests if _url(r).path == "/v2/"]
    assert len(sent) == 1  # the token never went out
    assert not any("X-Injected" in r.headers or "evil" in str(r.headers) for r in sent)


@pytest.mark.parametrize(
    "location",
    ["/up/1 with space", "/up/%zz", "/up/\u00e9t\u00e9", "/up/1#frag"],
)
def test_an_odd_upload_location_takes_the_general_path(location: str) -> None:
    # what the fast preparation does not send as it is goes through requests' own checks
    adapter = ScriptedAdapter()
    adapter.add("POST", "/v2/a/b/blobs/uploads/", (202, {"Location": location}, b""))
    client, _ = client_for(adapter)
    try:
        client.upload_blob("a/b", b"data", compute_digest(b"data"))
    except HardenError as e:
        assert e.exit_code in (ExitCode.ENVIRONMENT, ExitCode.INVALID_INPUT), e
    puts = [r for r in adapter.requests if r.method == "PUT"]
    for put in puts:  # what was sent is a valid request target, never the raw bytes
        assert " " not in str(put.url) and "\u00e9" not in str(put.url)


def test_bearer_token_is_fetched_per_scope_and_cached() -> None:
    adapter = ScriptedAdapter()
    challenge = (
        'Bearer realm="https://auth.test/token",service="reg.test",scope="repository:a/b:pull"'
    )
    digest = compute_digest(b"blob")
    path = f"/v2/a/b/blobs/{digest}"

    def blob(request: requests.PreparedRequest) -> Reply:
        if request.headers.get("Authorization") == "Bearer T1":
            return 200, {}, b"blob"
        return 401, {"WWW-Authenticate": challenge}, b""

    adapter.add("GET", path, blob)
    adapter.add("GET", "/token", (200, {}, b'{"token": "T1"}'))
    client, _ = client_for(adapter, credentials=Credentials("alice", "pw"))
    assert client.get_blob("a/b", digest, 100) == b"blob"
    assert client.get_blob("a/b", digest, 100) == b"blob"
    token_requests = [r for r in adapter.requests if _url(r).path == "/token"]
    assert len(token_requests) == 1  # cached for the second read
    query = parse_qs(_url(token_requests[0]).query)
    assert query == {"service": ["reg.test"], "scope": ["repository:a/b:pull"]}
    assert token_requests[0].headers["Authorization"].startswith("Basic ")
    blob_requests = [r for r in adapter.requests if _url(r).path == path]
    assert [r.headers.get("Authorization") for r in blob_requests] == [
        None,
        "Bearer T1",
        "Bearer T1",
    ]


def test_401_without_credentials_says_docker_login_and_hides_nothing_secret() -> None:
    adapter = ScriptedAdapter()
    adapter.add("GET", "/v2/", (401, {"WWW-Authenticate": 'Basic realm="r"'}, b""))
    client, _ = client_for(adapter)
    with pytest.raises(RegistryAuthError) as info:
        client.ping()
    assert "docker login reg.test:5000" in (info.value.hint or "")
    assert info.value.exit_code == ExitCode.ENVIRONMENT


def test_wrong_password_is_an_auth_error_without_the_password() -> None:
    adapter = ScriptedAdapter()
    adapter.add("GET", "/v2/", (401, {"WWW-Authenticate": 'Basic realm="r"'}, b""))
    client, _ = client_for(adapter, credentials=Credentials("alice", "hunter2-secret"))
    with pytest.raises(RegistryAuthError) as info:
        client.ping()
    assert "hunter2-secret" not in info.value.diagnostics()
    assert "hunter2-secret" not in repr(Credentials("alice", "hunter2-secret"))
    assert len(adapter.requests) == 2  # one retry with credentials, no loop


def test_retries_429_and_503_with_backoff_and_retry_after() -> None:
    adapter = ScriptedAdapter()
    adapter.add(
        "GET",
        "/v2/",
        (429, {"Retry-After": "3"}, b""),
        (503, {}, b""),
        (429, {"Retry-After": "999"}, b""),
        (200, {}, b"{}"),
    )
    client, sleeps = client_for(adapter)
    client.ping()
    assert sleeps == [3.0, 1.0, 30.0]  # Retry-After, backoff 0.5*2**1, Retry-After capped


def test_retries_are_bounded_and_then_the_error_is_typed() -> None:
    adapter = ScriptedAdapter()
    adapter.add("GET", "/v2/", (503, {}, b'{"errors":[{"code":"UNAVAILABLE","message":"busy"}]}'))
    client, sleeps = client_for(adapter, max_retries=2)
    with pytest.raises(RegistryError, match="503") as info:
        client.ping()
    assert "UNAVAILABLE: busy" in info.value.message
    assert sleeps == [0.5, 1.0]
    assert len(adapter.requests) == 3


def test_connection_refused_is_retried_then_hints_at_services_script() -> None:
    adapter = ScriptedAdapter()
    adapter.add("GET", "/v2/", requests.ConnectionError("refused"))
    client, sleeps = client_for(adapter, max_retries=1)
    with pytest.raises(RegistryError) as info:
        client.ping()
    assert "scripts/services.sh" in (info.value.hint or "")
    assert sleeps == [0.5]


def test_404_is_not_found_and_not_retried() -> None:
    adapter = ScriptedAdapter()
    adapter.add("GET", "/v2/a/manifests/v1", (404, {}, b""))
    client, sleeps = client_for(adapter)
    with pytest.raises(RegistryNotFound):
        client.get_manifest("a", "v1")
    assert sleeps == []


# ---- digests and bounds ------------------------------------------------------------------------
def test_manifest_by_digest_is_verified() -> None:
    good = manifest_bytes(b"{}")
    digest = compute_digest(good)
    tampered = good.replace(b'"size":2', b'"size":3')
    adapter = ScriptedAdapter()
    adapter.add("GET", f"/v2/a/manifests/{digest}", (200, {"Content-Type": OCI_MANIFEST}, tampered))
    client, _ = client_for(adapter)
    with pytest.raises(DigestMismatch) as info:
        client.get_manifest("a", digest)
    assert info.value.exit_code == ExitCode.INVALID_INPUT


def test_manifest_by_tag_is_checked_against_the_digest_header() -> None:
    data = manifest_bytes(b"{}")
    adapter = ScriptedAdapter()
    headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": compute_digest(b"other")}
    adapter.add("GET", "/v2/a/manifests/v1", (200, headers, data))
    client, _ = client_for(adapter)
    with pytest.raises(DigestMismatch):
        client.get_manifest("a", "v1")


def test_blob_digest_mismatch_and_size_bound() -> None:
    digest = compute_digest(b"expected")
    adapter = ScriptedAdapter()
    adapter.add("GET", f"/v2/a/blobs/{digest}", (200, {}, b"tampered"))
    client, _ = client_for(adapter)
    with pytest.raises(DigestMismatch):
        client.get_blob("a", digest, 100)
    with pytest.raises(DigestMismatch):
        b"".join(client.open_blob("a", digest))
    with pytest.raises(Exception, match="limit"):
        client.get_blob("a", digest, 4)


def test_put_manifest_by_digest_refuses_bytes_that_do_not_match() -> None:
    client, _ = client_for(FakeRegistry())
    with pytest.raises(DigestMismatch):
        client.put_manifest("a", compute_digest(b"x"), b"y", OCI_MANIFEST)


def test_streamed_upload_is_chunked_and_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("harden.oci.client.UPLOAD_CHUNK", 10)
    fake = FakeRegistry()
    client, _ = client_for(fake)
    data = bytes(range(256)) * 2
    client.upload_blob("a", (data[i : i + 7] for i in range(0, len(data), 7)), compute_digest(data))
    assert fake.blobs["a"][compute_digest(data)] == data
    assert sum(entry.startswith("PATCH") for entry in fake.log) == len(data) // 10
    wrong = compute_digest(b"something else")
    with pytest.raises(DigestMismatch):
        client.upload_blob("a", iter([data]), wrong)
    assert wrong not in fake.blobs["a"]
    assert fake.log[-1].startswith("DELETE")  # the upload was cancelled, never committed


# ---- referrers ---------------------------------------------------------------------------------
ANNOTATIONS = {CREATED_ANNOTATION: "2026-03-01T12:00:00Z", "dev.harden.kind": "verify"}


@pytest.mark.parametrize("api", [True, False])
def test_push_and_list_referrers_use_api_or_tag_schema(api: bool) -> None:
    fake = FakeRegistry(referrers_api=api)
    digest, data = seed_image(fake, "a")
    client, _ = client_for(fake)
    subject = Descriptor(OCI_MANIFEST, digest, len(data))
    pushed = push_referrer(
        client,
        "a",
        subject,
        artifact_type="application/vnd.harden.test",
        blob=b'{"payload":1}',
        blob_media_type="application/vnd.dsse.envelope.v1+json",
        annotations=ANNOTATIONS,
    )
    assert fake.blobs["a"][EMPTY_DIGEST] == b"{}"
    tag = referrers_tag(digest)
    assert (tag in fake.tags.get("a", {})) is not api  # the index only without the API
    found = list_referrers(client, "a", digest)
    assert found == [pushed]
    assert found[0].annotations[CREATED_ANNOTATION] == "2026-03-01T12:00:00Z"
    assert list_referrers(client, "a", digest, "application/other") == []
    api_calls = [e for e in fake.log if "/referrers/" in e]
    assert api_calls  # the API is always asked first
    tag_reads = [e for e in fake.log if e.startswith("GET") and e.endswith(f"/manifests/{tag}")]
    if api:  # read once, alongside the first API call (not known yet), never again
        assert len(tag_reads) == 1
    else:
        assert tag_reads


def test_list_referrers_is_empty_when_there_are_none() -> None:
    fake = FakeRegistry()
    digest, _ = seed_image(fake, "a")
    client, _ = client_for(fake)
    assert list_referrers(client, "a", digest) == []


def test_tag_index_write_is_retried_on_if_match_conflict() -> None:
    fake = FakeRegistry(etags=True)
    digest, data = seed_image(fake, "a")
    client, sleeps = client_for(fake)
    subject = Descriptor(OCI_MANIFEST, digest, len(data))
    first = push_referrer(
        client,
        "a",
        subject,
        artifact_type="t/one",
        blob=b"1",
        blob_media_type="x/y",
        annotations=ANNOTATIONS,
    )
    tag = referrers_tag(digest)
    raced = {"done": False}

    def concurrent_writer(repo: str, ref: str) -> None:
        # another writer lands between our read and our write of the index, once
        if ref == tag and not raced["done"]:
            raced["done"] = True
            other = canonical_json(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_INDEX,
                    "manifests": [
                        first.to_json(),
                        {"mediaType": OCI_MANIFEST, "digest": compute_digest(b"o"), "size": 1},
                    ],
                }
            )
            new = compute_digest(other)
            fake.manifests[repo][new] = (other, OCI_INDEX)
            fake.tags[repo][tag] = new

    fake.before_put = concurrent_writer
    second = push_referrer(
        client,
        "a",
        subject,
        artifact_type="t/two",
        blob=b"2",
        blob_media_type="x/y",
        annotations=ANNOTATIONS,
    )
    index = json.loads(fake.manifests["a"][fake.tags["a"][tag]][0])
    digests = [m["digest"] for m in index["manifests"]]
    assert digests == [first.digest, compute_digest(b"o"), second.digest]
    puts = [e for e in fake.log if e == f"PUT /v2/a/manifests/{tag}"]
    assert len(puts) == 3  # first push, the lost (412) write, the retried write
    assert raced["done"]
    assert sleeps  # backed off before retrying


def test_tag_index_gives_up_after_bounded_attempts() -> None:
    fake = FakeRegistry()
    digest, _ = seed_image(fake, "a")
    client, _ = client_for(fake)
    tag = referrers_tag(digest)

    # every write of the index is lost: the re-read never finds our entry
    original = fake._handle

    def lossy(request: requests.PreparedRequest) -> Reply:
        reply = original(request)
        if request.method == "PUT" and _url(request).path.endswith(tag):
            fake.tags["a"].pop(tag, None)
        return reply

    fake._handle = lossy  # type: ignore[method-assign]
    with pytest.raises(RegistryError, match="after 3 attempts"):
        add_to_referrers_index(
            client, "a", digest, [Descriptor(OCI_MANIFEST, compute_digest(b"r"), 1)], attempts=3
        )
    assert sum(e == f"PUT /v2/a/manifests/{tag}" for e in fake.log) == 3


def test_tag_index_says_when_our_entries_are_in_before_the_recheck() -> None:
    fake = FakeRegistry()
    digest, _ = seed_image(fake, "a")
    client, sleeps = client_for(fake)
    tag = referrers_tag(digest)
    referrer = Descriptor(OCI_MANIFEST, compute_digest(b"r"), 1)
    seen: list[tuple[int, int]] = []  # (index writes, pauses) when told

    def written() -> None:
        puts = sum(e == f"PUT /v2/a/manifests/{tag}" for e in fake.log)
        seen.append((puts, len(sleeps)))

    add_to_referrers_index(client, "a", digest, [referrer], written=written)
    assert seen == [(1, 0)]  # once, right after the write, before the pause and the re-read
    assert len(sleeps) == 1 and fake.log[-1] == f"HEAD /v2/a/manifests/{tag}"  # the re-read
    # every entry there already: told at once, nothing written
    seen.clear()
    add_to_referrers_index(client, "a", digest, [referrer], written=written)
    assert seen == [(1, 1)]


def test_copy_never_tags_when_the_referrers_index_cannot_be_written() -> None:
    fake = FakeRegistry()
    digest, data = seed_image(fake, "staging/img")
    client, _ = client_for(fake)
    _push_attestation(client, "staging/img", digest, len(data))

    def fail_on_index(repo: str, ref: str) -> None:
        if repo == "prod/img" and ref == referrers_tag(digest):
            raise requests.ConnectionError("interrupted")

    fake.before_put = fail_on_index
    with pytest.raises(RegistryError):
        copy_image(client, "staging/img", digest, client, "prod/img", tag="1.0")
    assert "1.0" not in fake.tags.get("prod/img", {})


# ---- copy --------------------------------------------------------------------------------------
def _push_attestation(client: RegistryClient, repo: str, digest: str, size: int) -> Descriptor:
    return push_referrer(
        client,
        repo,
        Descriptor(OCI_MANIFEST, digest, size),
        artifact_type="application/vnd.harden.test",
        blob=b'{"att":true}',
        blob_media_type="application/vnd.dsse.envelope.v1+json",
        annotations=ANNOTATIONS,
    )


def test_copy_within_a_registry_mounts_and_tags_last() -> None:
    fake = FakeRegistry()
    digest, data = seed_image(fake, "staging/img")
    client, _ = client_for(fake)
    referrer = _push_attestation(client, "staging/img", digest, len(data))
    fake.log.clear()
    messages: list[str] = []
    result = copy_image(
        client, "staging/img", digest, client, "prod/img", tag="1.0", progress=messages.append
    )
    assert result.digest == digest
    assert fake.manifests["prod/img"][digest][0] == data
    assert fake.tags["prod/img"]["1.0"] == digest
    assert list_referrers(client, "prod/img", digest) == [referrer]
    assert any("mounted" in m for m in messages)
    assert not any(e.startswith("PATCH") for e in fake.log)
    writes = [e for e in fake.log if e.startswith("PUT")]
    assert writes[-1] == "PUT /v2/prod/img/manifests/1.0"


def test_copy_across_registries_streams_and_is_resumable() -> None:
    src_fake, dst_fake = FakeRegistry(), FakeRegistry(referrers_api=True)
    digest, data = seed_image(src_fake, "staging/img")
    src, _ = client_for(src_fake)
    session = _Session()
    session.mount("https://", dst_fake)
    dst = RegistryClient("other.test", session=session, sleep=lambda _s: None)
    referrer = _push_attestation(src, "staging/img", digest, len(data))

    def fail_on_tag(repo: str, ref: str) -> None:
        if ref == "1.0":
            raise requests.ConnectionError("interrupted")

    dst_fake.before_put = fail_on_tag
    with pytest.raises(RegistryError):
        copy_image(src, "staging/img", digest, dst, "prod/img", tag="1.0")
    assert "1.0" not in dst_fake.tags.get("prod/img", {})  # no tag on an interrupted copy
    dst_fake.before_put = None
    dst_fake.log.clear()
    copy_image(src, "staging/img", digest, dst, "prod/img", tag="1.0")
    assert dst_fake.tags["prod/img"]["1.0"] == digest
    assert dst_fake.manifests["prod/img"][digest][0] == data
    assert not any(e.startswith("POST") for e in dst_fake.log)  # nothing re-uploaded
    assert [d.digest for d in list_referrers(dst, "prod/img", digest)] == [referrer.digest]
    assert not any(e.startswith("POST") and "mount=" in e for e in src_fake.log)


def test_copy_of_an_index_copies_its_children_first() -> None:
    src_fake, dst_fake = FakeRegistry(), FakeRegistry()
    child, child_data = seed_image(src_fake, "s")
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": child,
                    "size": len(child_data),
                    "platform": {"architecture": "amd64", "os": "linux"},
                }
            ],
        }
    )
    src_fake.manifests["s"][compute_digest(index)] = (index, OCI_INDEX)
    src, _ = client_for(src_fake)
    session = _Session()
    session.mount("https://", dst_fake)
    dst = RegistryClient("other.test", session=session, sleep=lambda _s: None)
    result = copy_image(src, "s", compute_digest(index), dst, "d", tag="multi")
    assert result == Descriptor(OCI_INDEX, compute_digest(index), len(index))
    assert dst_fake.manifests["d"][child][0] == child_data
    assert dst_fake.manifests["d"][compute_digest(index)][0] == index
    manifest_puts = [e for e in dst_fake.log if e.startswith("PUT /v2/d/manifests/")]
    assert manifest_puts == [
        f"PUT /v2/d/manifests/{child}",
        f"PUT /v2/d/manifests/{compute_digest(index)}",
        "PUT /v2/d/manifests/multi",
    ]


def test_a_registry_without_the_referrers_route_is_asked_once_per_client() -> None:
    fake = FakeRegistry(referrers_api=False)
    digest, _ = seed_image(fake, "a")
    client, _ = client_for(fake)
    for _ in range(3):
        assert list_referrers(client, "a", digest) == []
    assert len([e for e in fake.log if "/referrers/" in e]) == 1
    # a registry with the API keeps being asked (its 404s carry an error body)
    api = FakeRegistry(referrers_api=True)
    digest, _ = seed_image(api, "a")
    client, _ = client_for(api)
    for _ in range(2):
        list_referrers(client, "a", digest)
    assert len([e for e in api.log if "/referrers/" in e]) == 2


def test_referrers_of_referrers_without_the_api_from_one_tag_list() -> None:
    fake = FakeRegistry(referrers_api=False)
    digest, data = seed_image(fake, "a")
    client, _ = client_for(fake)

    def attest(subject: Descriptor, n: int) -> Descriptor:
        return push_referrer(
            client,
            "a",
            subject,
            artifact_type="application/vnd.harden.test",
            blob=b'{"att":%d}' % n,
            blob_media_type="application/vnd.dsse.envelope.v1+json",
            annotations=ANNOTATIONS,
        )

    referrers = [attest(Descriptor(OCI_MANIFEST, digest, len(data)), n) for n in range(3)]
    signed = referrers[1]  # one of them has a referrer of its own
    nested = attest(signed, 9)
    assert list_referrers(client, "a", digest)  # the client learns there is no API
    fake.log.clear()
    found = list_referrers_of_each(client, "a", referrers)
    assert found == [[], [nested], []]
    assert fake.log == [
        "GET /v2/a/tags/list?n=1000",
        f"GET /v2/a/manifests/{referrers_tag(signed.digest)}",
    ]
    # tags that do not fit one page, or no tag list: each one is asked
    fake.log.clear()
    assert list_referrers_of_each(client, "a", []) == []
    del fake.tags["a"]  # now the registry lists no tags (404): each referrer is asked
    assert list_referrers_of_each(client, "a", referrers) == [[], [], []]
    assert len([e for e in fake.log if "/manifests/sha256-" in e]) == 3


def test_manifests_by_digest_are_read_once_per_client_tags_always() -> None:
    fake = FakeRegistry()
    digest, data = seed_image(fake, "a", "v1")
    client, _ = client_for(fake)
    assert client.get_manifest("a", digest).data == data
    assert client.get_manifest("a", digest).data == data
    client.get_manifest("a", "v1")
    client.get_manifest("a", "v1")
    gets = [e for e in fake.log if e.startswith("GET") and "/manifests/" in e]
    assert len([e for e in gets if e.endswith(digest)]) == 1
    assert len([e for e in gets if e.endswith("/manifests/v1")]) == 2
