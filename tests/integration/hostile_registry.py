"""A hostile OCI registry on 127.0.0.1 (random port) for the tests of harden's bounded reads.

It serves one small image (``evil/app:v1``) honestly, except for the attack chosen in
:attr:`HostileRegistry.mode`:

- ``link-loop``       the referrers listing's ``Link: rel=next`` points back to an earlier page
- ``endless-pages``   every referrers page links to a new next page
- ``many-referrers``  one referrers index with 10,000 entries
- ``trickle``         the manifest body arrives one byte every ``trickle_every`` seconds
- ``redirect-loop``   GET of the manifest redirects to itself
- ``cut-short``       the manifest response promises more bytes than it sends, then closes
- ``token-redirect``  a bearer challenge whose token realm redirects to itself
- ``oversized-blob``  the layer blob streams far past its descriptor's size (chunked)

Every request is recorded as ``(method, path)``. The server runs in daemon threads and is shut
down by :meth:`HostileRegistry.close`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
REPO = "evil/app"
TAG = "v1"
OVERSIZE_LIMIT = 400 << 20  # the most the oversized blob would ever send


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class HostileRegistry:
    def __init__(self, mode: str = "honest", *, trickle_every: float = 5.0) -> None:
        self.mode = mode
        self.trickle_every = trickle_every
        self.requests: list[tuple[str, str]] = []
        self.sent_blob_bytes = 0
        self.stopping = threading.Event()
        self.config = _canonical({"architecture": "amd64", "os": "linux", "rootfs": {}})
        self.layer = b"layer-bytes-" * 1000
        self.manifest = _canonical(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": _digest(self.config),
                    "size": len(self.config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": _digest(self.layer),
                        "size": len(self.layer),
                    }
                ],
            }
        )
        self.digest = _digest(self.manifest)
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def do_HEAD(self) -> None:
                registry.handle(self, head=True)

            def do_GET(self) -> None:
                registry.handle(self, head=False)

            def do_POST(self) -> None:
                registry.handle(self, head=False)

            def do_PUT(self) -> None:
                registry.handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.host = f"127.0.0.1:{self.port}"
        self.ref = f"{self.host}/{REPO}:{TAG}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    # ---- answers ------------------------------------------------------------------------------
    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        head: bool = False,
    ) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def handle(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        url = urlsplit(h.path)
        path = url.path
        self.requests.append((h.command, h.path))
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            h.rfile.read(length)
        mode = self.mode
        if path == "/token":
            if mode == "token-redirect":
                self._send(h, 302, headers={"Location": f"http://{self.host}/token?again=1"})
            else:
                self._send(h, 200, _canonical({"token": "t"}))
            return
        if mode == "token-redirect" and "Authorization" not in h.headers:
            challenge = f'Bearer realm="http://{self.host}/token",service="hostile"'
            self._send(h, 401, headers={"WWW-Authenticate": challenge}, head=head)
            return
        if path == "/v2/":
            self._send(h, 200, b"{}", {"Content-Type": "application/json"}, head)
            return
        prefix = f"/v2/{REPO}/"
        if not path.startswith(prefix):
            self._send(h, 404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}', head=head)
            return
        rest = path[len(prefix) :]
        if rest.startswith("manifests/"):
            self._manifest(h, rest.removeprefix("manifests/"), head)
        elif rest.startswith("referrers/"):
            self._referrers(h, url.query)
        elif rest.startswith("blobs/"):
            self._blob(h, rest.removeprefix("blobs/"), head)
        else:
            self._send(h, 404, head=head)

    def _manifest(self, h: BaseHTTPRequestHandler, ref: str, head: bool) -> None:
        if ref not in (TAG, self.digest):
            self._send(h, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', head=head)
            return
        headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": self.digest}
        if self.mode == "redirect-loop" and not head:
            self._send(h, 302, headers={"Location": h.path})
            return
        if self.mode == "trickle" and not head:
            h.send_response(200)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(self.manifest)))
            h.end_headers()
            for byte in self.manifest:
                if self.stopping.wait(self.trickle_every):
                    return
                try:
                    h.wfile.write(bytes([byte]))
                    h.wfile.flush()
                except OSError:
                    return
            return
        if self.mode == "cut-short" and not head:
            h.send_response(200)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(self.manifest) + 1000))
            h.end_headers()
            h.wfile.write(self.manifest[:20])
            h.wfile.flush()
            h.close_connection = True
            return
        self._send(h, 200, self.manifest, headers, head)

    def _referrer_entry(self, i: int) -> dict[str, Any]:
        return {
            "mediaType": OCI_MANIFEST,
            "digest": _digest(f"referrer-{i}".encode()),
            "size": 500,
            "artifactType": "application/vnd.dev.harden.compliance.v1+dsse",
        }

    def _referrers(self, h: BaseHTTPRequestHandler, query: str) -> None:
        page = int(query.removeprefix("page=")) if query.startswith("page=") else 1
        entries: list[dict[str, Any]] = []
        headers = {"Content-Type": OCI_INDEX}
        base = f"/v2/{REPO}/referrers/{self.digest}"
        if self.mode == "link-loop":
            entries = [self._referrer_entry(page)]
            headers["Link"] = f'<{base}?page={1 if page == 2 else 2}>; rel="next"'
        elif self.mode == "endless-pages":
            entries = [self._referrer_entry(page)]
            headers["Link"] = f'<{base}?page={page + 1}>; rel="next"'
        elif self.mode == "many-referrers":
            entries = [self._referrer_entry(i) for i in range(10_000)]
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        self._send(h, 200, _canonical(doc), headers)

    def _blob(self, h: BaseHTTPRequestHandler, digest: str, head: bool) -> None:
        content = {_digest(self.config): self.config, _digest(self.layer): self.layer}.get(digest)
        if content is None:
            self._send(h, 404, head=head)
            return
        if self.mode == "oversized-blob" and content is self.layer and not head:
            h.send_response(200)
            h.send_header("Content-Type", "application/octet-stream")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            chunk = b"\0" * (1 << 20)
            try:
                h.wfile.write(b"%x\r\n%s\r\n" % (len(content), content))
                while self.sent_blob_bytes < OVERSIZE_LIMIT and not self.stopping.is_set():
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.sent_blob_bytes += len(chunk)
                h.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            h.close_connection = True
            return
        self._send(h, 200, content, {"Content-Type": "application/octet-stream"}, head)


def wait_until(predicate: Any, limit: float = 10.0) -> bool:
    """Poll ``predicate`` until true or ``limit`` seconds passed (a helper, not an assertion)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())
