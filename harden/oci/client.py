"""The raw OCI distribution client: HTTP, auth, retries, bounded and verified reads.

This layer speaks the protocol (distribution-spec v1.1 endpoints) and nothing more; the model
layer (:mod:`harden.oci.model`) builds referrers, tag-schema indexes and copies on top of it.

Every HTTP or connection failure becomes a typed error in exactly one function,
:func:`_raise_for`. Every manifest and blob read is checked against its digest; a mismatch is
bad content, not a broken environment, so :class:`DigestMismatch` exits with
``ExitCode.INVALID_INPUT`` (3) while the other registry errors exit with 4.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import functools
import heapq
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests
import urllib3.connection
import urllib3.connectionpool
from requests.adapters import HTTPAdapter

from harden.errors import HardenError, InputError, RegistryError
from harden.oci.auth import Credentials, load_docker_credentials
from harden.oci.types import (
    ALL_MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    DigestMismatch,
    Manifest,
    Reference,
    check_hasher,
    compute_digest,
    is_digest,
    new_hasher,
    verify_digest,
)
from harden.paths import setup_hint

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 << 20
_MANIFEST_CACHE = 256  # manifests kept by digest per client
_MAX_ERROR_BODY = 64 << 10
_MAX_TOKEN_BODY = 1 << 20
_READ_CHUNK = 1 << 20
UPLOAD_CHUNK = 8 << 20
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_RETRY_AFTER_CAP = 30.0
_BACKOFF_BASE = 0.5
_BACKOFF_CAP = 8.0
_DIGEST_RE = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
# what _Session.request sends without requests' general preparation: an absolute http(s) URL of
# RFC 3986 characters with well-formed escapes and no fragment, header values of visible ASCII
# with inner spaces (a value with a line break takes the general path, which refuses it)
_PLAIN_URL = re.compile(r"https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~!$&'()*+,;=:@/?%-]*)?\Z")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_TOKEN_RE = re.compile(r"[\x21-\x7e]{1,65536}\Z")  # RFC 6750 b64token and JWTs are visible ASCII
_PLAIN_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?\Z")

#: the overall deadline of one registry operation (a manifest read, a referrers listing with
#: every page, a blob streamed or uploaded), in seconds; the environment variable overrides it
DEADLINE_ENV = "HARDEN_REGISTRY_DEADLINE"
DEFAULT_DEADLINE = 600.0
#: seconds without a single byte from the registry before a read is given up
READ_TIMEOUT_ENV = "HARDEN_REGISTRY_READ_TIMEOUT"
DEFAULT_READ_TIMEOUT = 30.0
_CONNECT_TIMEOUT = 10.0
MAX_REDIRECTS = 5
MAX_REFERRER_PAGES = 32
MAX_REFERRERS = 1000
#: parallel reads of referrer manifests and envelopes (small: a registry is shared)
FETCH_WORKERS = 4

_T = TypeVar("_T")


# ---- bounded time: one deadline per operation, enforced on the socket ------------------------
@dataclass
class _Operation:
    """One registry operation: its deadline, and the connection it is reading from now.

    A watchdog timer shuts the connection's socket down when the deadline passes, so a server
    that trickles one byte at a time (each byte resets the per-read timeout) is still cut off."""

    deadline: float
    what: str = ""
    expired: bool = False
    done: bool = False  # finished: the watchdog leaves it alone
    connection: Any = None

    def expire(self) -> None:
        self.expired = True
        sock = getattr(self.connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


class _Watchdog:
    """One daemon thread that expires every operation whose deadline passes.

    A timer thread per operation cost more than the request it guarded (a thread start and a
    hand-over of the interpreter lock per manifest read: `status` over 500 images does 1,500
    operations). Finished operations are marked ``done`` and dropped lazily; expiry and
    finishing take the same lock, so a finished operation's connection is never cut."""

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _Operation]] = []
        self._seq = 0
        self._done = 0  # finished operations still in the heap
        self._thread: threading.Thread | None = None

    def watch(self, op: _Operation) -> None:
        with self._cond:
            if self._done > 256 and self._done * 2 > len(self._heap):
                self._heap = [e for e in self._heap if not e[2].done]
                heapq.heapify(self._heap)
                self._done = 0
            self._seq += 1
            heapq.heappush(self._heap, (op.deadline, self._seq, op))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="harden-registry-deadline", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is op:  # a new earliest deadline: wake the thread
                self._cond.notify()

    def finish(self, op: _Operation) -> None:
        with self._cond:
            if not op.done:
                op.done = True
                self._done += 1
            op.connection = None

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                    self._done -= 1
                if not self._heap:
                    self._cond.wait()
                    continue
                left = self._heap[0][0] - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                _, _, op = heapq.heappop(self._heap)
                op.done = True
                op.expire()


_WATCHDOG = _Watchdog()


_CURRENT = threading.local()  # .op: the _Operation this thread is running, if any


def _current_op() -> _Operation | None:
    return getattr(_CURRENT, "op", None)


def _in_pool(fn: Callable[[Any], _T], item: Any) -> _T:
    """Run ``fn(item)`` on a client's fetch pool, marked so nested map_concurrently runs inline."""
    _CURRENT.in_pool = True
    try:
        return fn(item)
    finally:
        _CURRENT.in_pool = False


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        op = _current_op()
        if op is not None:
            op.connection = self
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        op = _current_op()
        if op is not None:
            op.connection = self
        super().request(*args, **kwargs)


class _WatchedHTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter whose connections tell the running operation which socket to cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise InputError(
            f"{name}={raw!r} is not a positive number of seconds",
            hint=f"e.g. {name}={int(default)}",
        )
    return value


def _timeout_error(what: str, registry: str, deadline: float) -> RegistryError:
    return RegistryTimeout(
        f"{what}: {registry} did not finish within {deadline:g} s",
        hint=f"check the registry's load and network, or raise {DEADLINE_ENV} "
        f"(seconds, now {deadline:g})",
    )


def _operation(method: Callable[..., _T]) -> Callable[..., _T]:
    """Run a client method as one operation with one deadline (nested calls share it)."""

    @functools.wraps(method)
    def wrapper(self: RegistryClient, *args: Any, **kwargs: Any) -> _T:
        if _current_op() is not None:
            return method(self, *args, **kwargs)
        op = self._start_operation(method.__name__)
        _CURRENT.op = op
        try:
            return method(self, *args, **kwargs)
        except (HardenError, requests.RequestException, OSError) as e:
            if op.expired:
                raise _timeout_error(op.what, self.registry, self.deadline) from e
            if isinstance(e, HardenError):
                raise
            _raise_for(op.what, self.registry, exc=e)
        finally:
            _CURRENT.op = None
            self._end_operation(op)

    return wrapper


# ---- errors ----------------------------------------------------------------------------------
class RegistryAuthError(RegistryError):
    """401/403: missing, wrong or insufficient credentials."""


class RegistryTimeout(RegistryError):
    """The registry did not finish an operation within its deadline (exit 4)."""


class RegistryProtocolError(InputError):
    """The registry's answer breaks the protocol in a way no healthy registry does (a
    pagination loop, too many pages or entries, a blob longer than its descriptor): exit 3."""


class RegistryNotFound(RegistryError):
    """404: the repository, manifest or blob does not exist."""


class PreconditionFailed(RegistryError):
    """412: a conditional write (If-Match) lost a race; re-read and retry."""


@dataclass(frozen=True)
class PutResult:
    digest: str
    subject_header: str | None
    etag: str | None


# ---- the single HTTP-error mapping -----------------------------------------------------------
def _error_detail(response: requests.Response) -> str:
    try:
        body = _read_bounded(response, _MAX_ERROR_BODY, "error body", strict=False)
        errors = json.loads(body).get("errors") or []
        parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors]
        return "; ".join(p for p in parts if p)
    except Exception:  # an unreadable error body must not hide the status code
        return ""


def _raise_for(
    what: str,
    registry: str,
    *,
    response: requests.Response | None = None,
    exc: Exception | None = None,
) -> NoReturn:
    """Map one failed HTTP exchange to a typed error. The only place that does this."""
    if exc is not None:
        if isinstance(exc, requests.exceptions.SSLError):
            raise RegistryError(
                f"{what}: TLS verification with {registry} failed",
                hint="pass the registry's CA certificate (ca_bundle or HARDEN_REGISTRY_CA)",
            ) from exc
        if isinstance(exc, requests.exceptions.Timeout):
            raise RegistryTimeout(
                f"{what}: {registry} sent nothing for too long",
                hint=f"check the registry's load and network, or raise {READ_TIMEOUT_ENV} "
                "(seconds without a byte)",
            ) from exc
        if isinstance(exc, requests.exceptions.TooManyRedirects):
            raise RegistryError(
                f"{what}: {registry} redirected more than {MAX_REDIRECTS} times",
                hint="the registry (or a proxy in front of it) redirects in a loop",
            ) from exc
        if isinstance(
            exc, requests.exceptions.ChunkedEncodingError | requests.exceptions.ContentDecodingError
        ):
            raise RegistryError(
                f"{what}: {registry} broke off the answer (body cut short or malformed)",
                hint="retry; if it persists, look at the registry and any proxy in between",
            ) from exc
        if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
            raise RegistryError(
                f"{what}: {registry} pointed harden at an invalid URL",
                hint="the registry's Location or Link headers are broken",
            ) from exc
        if not isinstance(exc, requests.ConnectionError | OSError):
            raise RegistryError(
                f"{what}: the exchange with {registry} failed ({type(exc).__name__})",
                hint="retry; if it persists, look at the registry and the network",
            ) from exc
        raise RegistryError(
            f"{what}: cannot connect to {registry}",
            hint=setup_hint(
                "is the registry running? scripts/services.sh starts the local one",
                f"is the registry running, and is {registry} the right host:port?",
            ),
        ) from exc
    assert response is not None
    status = response.status_code
    detail = _error_detail(response)
    suffix = f" ({detail})" if detail else ""
    message = f"{what}: {registry} answered {status}{suffix}"
    if status == 401:
        raise RegistryAuthError(
            message, hint=f"run `docker login {registry}` or set credentials for it"
        )
    if status == 403:
        raise RegistryAuthError(
            message, hint=f"the credentials for {registry} lack permission for this repository"
        )
    if status == 404:
        raise RegistryNotFound(message, hint="check the repository name, tag and digest")
    if status == 412:
        raise PreconditionFailed(message, hint="a concurrent writer changed it; retry")
    if status == 429:
        raise RegistryError(message, hint="the registry rate-limits harden; try again later")
    if status >= 500:
        raise RegistryError(message, hint=f"{registry} is failing; look at its log")
    raise RegistryError(message, hint="the registry refused the request; see the detail")


def _read_bounded(
    response: requests.Response, max_bytes: int, what: str, *, strict: bool = True
) -> bytes:
    """Read at most ``max_bytes`` of a (streamed) response; more is an error (or cut)."""
    length = response.headers.get("Content-Length")
    if strict and length and length.isdigit() and int(length) > max_bytes:
        response.close()
        raise InputError(f"{what} is {length} bytes, more than the limit of {max_bytes}")
    buf = bytearray()
    try:
        for chunk in response.iter_content(65536):
            buf += chunk
            if len(buf) > max_bytes:
                response.close()
                if not strict:
                    return bytes(buf[:max_bytes])
                raise InputError(f"{what} is larger than the limit of {max_bytes} bytes")
    except requests.RequestException as e:
        response.close()
        _raise_for(f"read {what}", urlsplit(str(response.url)).netloc, exc=e)
    op = _current_op()
    if op is not None and op.expired:  # the watchdog cut the socket: what we have is partial
        raise RegistryTimeout(f"read {what}: the deadline passed while reading")
    return bytes(buf)


def _is_loopback(registry: str) -> bool:
    host = registry
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


def _media_type(data: bytes, content_type: str | None, what: str) -> str:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{what} is not JSON") from e
    if not isinstance(doc, dict):
        raise InputError(f"{what} is not a JSON object")
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if content_type:
        ct = content_type.split(";")[0].strip()
        if ct and ct not in ("application/json", "application/octet-stream"):
            return ct
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


MAX_TAG_PAGES = 1000


def _check_page(url: str, seen: set[str], what: str, max_pages: int) -> None:
    """Refuse a pagination loop (a Link rel=next seen before) and more than ``max_pages``."""
    key = urlsplit(url)._replace(scheme="", netloc="").geturl()
    if key in seen:
        raise RegistryProtocolError(
            f"{what}: the registry's pagination loops (Link rel=next back to a page it gave)",
            hint="do not trust this registry's answers",
        )
    if len(seen) >= max_pages:
        raise RegistryProtocolError(
            f"{what}: more than {max_pages} pages",
            hint="harden reads at most that many pages; clean up the repository",
        )
    seen.add(key)


def check_referrer_count(count: int, what: str) -> None:
    """More than MAX_REFERRERS referrers of one manifest is refused, not read one by one."""
    if count > MAX_REFERRERS:
        raise RegistryProtocolError(
            f"{what} has more than {MAX_REFERRERS} referrers",
            hint="harden reads at most that many; delete stale referrers or attestations",
        )


def _next_link(response: requests.Response) -> str | None:
    link = response.headers.get("Link")
    if not link:
        return None
    m = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', link)
    return m.group(1) if m else None


class _NoNetrc(requests.auth.AuthBase):
    """An explicit "no auth" for requests, so that it does not look in ~/.netrc on every
    request: credentials come from harden (the docker config) only, and a netrc entry for the
    registry would replace harden's Authorization header. The lookup also cost a quarter of the
    CPU time of a request (several file system calls each time)."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


_NO_NETRC = _NoNetrc()


class _Session(requests.Session):
    """A session that reads the proxy and CA-bundle variables once per scheme and host, not on
    every request (requests scans the whole environment each time: a tenth of the CPU of a
    cached manifest read). A client lives for one command, so the environment is the same."""

    def __init__(self) -> None:
        super().__init__()
        self._settings: dict[tuple[str, str, Any, Any], dict[str, Any]] = {}
        self._settings_lock = threading.Lock()

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        if proxies or cert is not None or not isinstance(url, str):
            return dict(super().merge_environment_settings(url, proxies, stream, verify, cert))
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, stream, verify)
        with self._settings_lock:
            found = self._settings.get(key)
        if found is None:
            found = dict(super().merge_environment_settings(url, {}, stream, verify, None))
            with self._settings_lock:
                self._settings[key] = found
        return {**found, "proxies": dict(found["proxies"])}

    def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        data: bytes | Iterable[bytes] | None,
        stream: bool,
        timeout: tuple[float, float],
        verify: bool | str,
        allow_redirects: bool,
        auth: Any,
    ) -> requests.Response:
        """``requests.Session.request`` without the general preparation, for the requests this
        client makes: an absolute URL already percent-encoded, printable header values, no
        body or a bytes body, no cookies. Preparing a request the general way (merging four
        settings, parsing and re-quoting the URL, the hooks, the cookie jar) cost a quarter of
        the CPU time of a request. Anything else (a registry's odd Location, a header value
        that needs checking, a streamed body) takes the general path, which also raises
        requests' own errors for what is invalid."""
        if (
            auth is not _NO_NETRC
            or self.cookies
            or not (data is None or isinstance(data, bytes))
            or not _PLAIN_URL.match(url)
            or _BAD_ESCAPE.search(url)
            or not all(_PLAIN_VALUE.match(v) for v in headers.values())
        ):
            return super().request(
                method,
                url,
                headers=headers,
                data=data,
                stream=stream,
                timeout=timeout,
                verify=verify,
                allow_redirects=allow_redirects,
                auth=auth,
            )
        prepared = requests.PreparedRequest()
        prepared.method = method.upper()
        prepared.url = url
        merged: Any = requests.structures.CaseInsensitiveDict(self.headers)
        merged.update(headers)
        if data is not None:
            merged["Content-Length"] = str(len(data))
        elif prepared.method not in ("GET", "HEAD"):
            merged["Content-Length"] = "0"
        prepared.headers = merged
        prepared.body = data
        # a redirect extracts the response's cookies into it
        prepared._cookies = requests.cookies.RequestsCookieJar()  # type: ignore[attr-defined]
        prepared.hooks = {"response": list(self.hooks["response"])}
        settings = self.merge_environment_settings(url, {}, stream, verify, None)
        return self.send(prepared, timeout=timeout, allow_redirects=allow_redirects, **settings)


class RegistryClient:
    """One registry (``host[:port]``), one HTTP session, tokens cached per scope."""

    def __init__(
        self,
        registry: str,
        *,
        credentials: Credentials | None = None,
        ca_bundle: str | None = None,
        insecure_http: bool | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        max_retries: int = 4,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``insecure_http=None`` means plain http for loopback (127.0.0.0/8, localhost, ::1)
        unless a ``ca_bundle`` is given, https otherwise.

        ``timeout`` is how long a read may wait for a single byte (default
        :data:`READ_TIMEOUT_ENV` or 30 s); ``deadline`` bounds a whole operation, however slowly
        the bytes trickle in (default :data:`DEADLINE_ENV` or 600 s)."""
        self.registry = registry
        if insecure_http is None:
            insecure_http = ca_bundle is None and _is_loopback(registry)
        self.base_url = f"{'http' if insecure_http else 'https'}://{registry}"
        self.timeout = (
            timeout if timeout is not None else _env_seconds(READ_TIMEOUT_ENV, DEFAULT_READ_TIMEOUT)
        )
        self.deadline = (
            deadline if deadline is not None else _env_seconds(DEADLINE_ENV, DEFAULT_DEADLINE)
        )
        self.max_retries = max_retries
        self.sleep = sleep
        self._credentials = credentials
        self._verify: bool | str = ca_bundle or os.environ.get("HARDEN_REGISTRY_CA") or True
        if session is None:
            session = _Session()
            # connections kept per host: the fetch pool, a promotion's preparation and callers
            adapter = _WatchedAdapter(pool_maxsize=4 * FETCH_WORKERS)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        session.max_redirects = MAX_REDIRECTS
        self._session = session
        self._lock = threading.Lock()
        self._no_referrers_api = False  # learned from a 404 without an error body
        self._has_referrers_api = False  # learned from an answer that was an image index
        self._manifests: dict[tuple[str, str], Manifest] = {}  # (repo, digest): immutable
        # reads by digest under way: a second reader of the same digest waits for the first
        self._reading: dict[tuple[str, str], threading.Event] = {}
        self._auth_kind: str | None = None  # "basic" or "bearer" once a challenge was seen
        self._tokens: dict[str, str] = {}
        self._pool: ThreadPoolExecutor | None = None  # map_concurrently's, started on first use
        self._pool_pid = 0

    def __repr__(self) -> str:
        return f"RegistryClient({self.base_url!r})"

    @classmethod
    def for_reference(cls, ref: Reference, ca_bundle: str | None = None) -> RegistryClient:
        """A client for ``ref.registry`` with credentials from the docker config."""
        return cls(
            ref.registry, credentials=load_docker_credentials(ref.registry), ca_bundle=ca_bundle
        )

    # ---- operations and their deadline ---------------------------------------------------
    def _start_operation(self, what: str) -> _Operation:
        op = _Operation(deadline=time.monotonic() + self.deadline, what=what)
        _WATCHDOG.watch(op)
        return op

    @staticmethod
    def _end_operation(op: _Operation) -> None:
        _WATCHDOG.finish(op)

    def map_concurrently(
        self, fn: Callable[[Any], _T], items: Sequence[Any], workers: int = FETCH_WORKERS
    ) -> list[_T]:
        """``[fn(x) for x in items]`` on a small bounded pool, results in order; the first
        exception (in item order) is raised after every call has finished.

        The pool is the client's own (at most ``FETCH_WORKERS`` threads, started once, shared
        by every caller of this client); a call made from one of its workers runs inline, so
        nested calls cannot wait on each other. ``workers`` below the pool's size gets a pool
        of its own."""
        if len(items) <= 1 or workers <= 1 or getattr(_CURRENT, "in_pool", False):
            return [fn(x) for x in items]
        if workers < FETCH_WORKERS:
            with ThreadPoolExecutor(max_workers=min(workers, len(items))) as own:
                futures = [own.submit(fn, x) for x in items]
            return [f.result() for f in futures]
        pool = self._fetch_pool()
        futures = [pool.submit(_in_pool, fn, x) for x in items]
        concurrent.futures.wait(futures)
        return [f.result() for f in futures]

    def submit(self, fn: Callable[[Any], _T], item: Any) -> concurrent.futures.Future[_T]:
        """``fn(item)`` started on the client's pool (a read to overlap with other work)."""
        if getattr(_CURRENT, "in_pool", False):  # never wait on the pool from inside it
            done: concurrent.futures.Future[_T] = concurrent.futures.Future()
            try:
                done.set_result(fn(item))
            except BaseException as e:  # handed to whoever asks for the result
                done.set_exception(e)
            return done
        return self._fetch_pool().submit(_in_pool, fn, item)

    def _fetch_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(
                    max_workers=FETCH_WORKERS, thread_name_prefix="registry-fetch"
                )
                self._pool_pid = os.getpid()
            return self._pool

    # ---- transport ---------------------------------------------------------------------------
    def _url(self, path_or_url: str) -> str:
        return urljoin(self.base_url + "/", path_or_url)

    def _send(
        self,
        method: str,
        url: str,
        what: str,
        *,
        headers: dict[str, str],
        data: bytes | Iterable[bytes] | None = None,
        stream: bool = False,
        redirects: bool | None = None,
    ) -> requests.Response:
        """One request with bounded retries on 429, 5xx and connection errors, within the
        running operation's deadline; redirects only for GET/HEAD, at most MAX_REDIRECTS."""
        resendable = data is None or isinstance(data, bytes)
        follow = method in ("GET", "HEAD") if redirects is None else redirects
        op = _current_op()
        attempt = 0
        while True:
            log.debug("%s %s", method, urlsplit(url).path)
            read_timeout = self.timeout
            if op is not None:
                left = op.remaining()
                if left <= 0 or op.expired:
                    raise _timeout_error(what, self.registry, self.deadline)
                read_timeout = min(read_timeout, left)
            try:
                response = self._session.request(
                    method,
                    url,
                    headers=headers,
                    data=data,
                    stream=stream,
                    timeout=(min(_CONNECT_TIMEOUT, read_timeout), read_timeout),
                    verify=self._verify,
                    allow_redirects=follow,
                    auth=_NO_NETRC,
                )
            except requests.exceptions.SSLError as e:
                _raise_for(what, self.registry, exc=e)
            except (requests.ConnectionError, requests.Timeout) as e:
                if op is not None and op.expired:
                    raise _timeout_error(what, self.registry, self.deadline) from e
                if attempt >= self.max_retries or not resendable:
                    _raise_for(what, self.registry, exc=e)
                delay = self._backoff(attempt)
            except requests.RequestException as e:  # redirect loop, invalid URL, ...
                _raise_for(what, self.registry, exc=e)
            else:
                if response.status_code not in _RETRY_STATUS or attempt >= self.max_retries:
                    return response
                if not resendable:
                    return response
                delay = self._retry_after(response) or self._backoff(attempt)
                response.close()
            attempt += 1
            if op is not None and delay >= op.remaining():
                raise _timeout_error(what, self.registry, self.deadline)
            log.debug("retrying %s in %.2fs (attempt %d)", what, delay, attempt)
            self.sleep(delay)

    @staticmethod
    def _backoff(attempt: int) -> float:
        return float(min(_BACKOFF_CAP, _BACKOFF_BASE * (2**attempt)))

    @staticmethod
    def _retry_after(response: requests.Response) -> float | None:
        value = response.headers.get("Retry-After", "").strip()
        if value.isdigit():
            return min(_RETRY_AFTER_CAP, float(value))
        return None  # HTTP-date form: fall back to our own backoff

    def _request(
        self,
        method: str,
        path_or_url: str,
        what: str,
        *,
        scopes: Sequence[str] = (),
        ok: Sequence[int] = (200,),
        allow: Sequence[int] = (),
        headers: dict[str, str] | None = None,
        data: bytes | Iterable[bytes] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """Authenticated request; statuses outside ``ok``/``allow`` raise via _raise_for."""
        url = self._url(path_or_url)
        authenticated = False
        while True:
            hdrs = dict(headers or {})
            auth = self._auth_header(scopes)
            if auth:
                hdrs["Authorization"] = auth
            response = self._send(method, url, what, headers=hdrs, data=data, stream=stream)
            if response.status_code == 401 and not authenticated:
                challenge = response.headers.get("WWW-Authenticate", "")
                if challenge and self._authenticate(challenge, scopes, what):
                    authenticated = True
                    if data is None or isinstance(data, bytes):
                        response.close()
                        continue
            if response.status_code in ok or response.status_code in allow:
                return response
            _raise_for(what, self.registry, response=response)

    # ---- auth --------------------------------------------------------------------------------
    @staticmethod
    def _scope_key(scopes: Iterable[str]) -> str:
        return " ".join(sorted(set(scopes)))

    def _basic(self) -> str:
        assert self._credentials is not None
        raw = f"{self._credentials.username}:{self._credentials.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _auth_header(self, scopes: Sequence[str]) -> str | None:
        with self._lock:
            if self._auth_kind == "basic" and self._credentials is not None:
                return self._basic()
            if self._auth_kind == "bearer":
                token = self._tokens.get(self._scope_key(scopes))
                return f"Bearer {token}" if token else None
        return None

    def _authenticate(self, challenge: str, scopes: Sequence[str], what: str) -> bool:
        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            if self._credentials is None:
                return False
            with self._lock:
                self._auth_kind = "basic"
            return True
        if scheme != "bearer" or "realm" not in params:
            return False
        wanted = list(scopes)
        if params.get("scope"):
            wanted += params["scope"].split(" ")
        token = self._fetch_token(params["realm"], params.get("service"), wanted, what)
        with self._lock:
            self._auth_kind = "bearer"
            self._tokens[self._scope_key(scopes)] = token
        return True

    def _fetch_token(self, realm: str, service: str | None, scopes: list[str], what: str) -> str:
        creds = self._credentials
        query: list[tuple[str, str]] = []
        if service:
            query.append(("service", service))
        query += [("scope", s) for s in sorted(set(scopes))]
        headers = {"Accept": "application/json"}
        if creds is not None and creds.identity_token:
            form = dict(query, grant_type="refresh_token", client_id="harden")
            form["refresh_token"] = creds.identity_token
            form["scope"] = " ".join(sorted(set(scopes)))
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            response = self._send(
                "POST",
                realm,
                f"{what} (token)",
                headers=headers,
                data=urlencode(form).encode(),
                redirects=False,
            )
        else:
            if creds is not None and (creds.username or creds.password):
                headers["Authorization"] = self._basic()
            url = realm + ("&" if "?" in realm else "?") + urlencode(query) if query else realm
            # credentials go to the realm the registry named and nowhere else: no redirects
            response = self._send(
                "GET", url, f"{what} (token)", headers=headers, stream=True, redirects=False
            )
        if response.status_code != 200:
            _raise_for(
                f"{what} (token from {urlsplit(realm).netloc})", self.registry, response=response
            )
        try:
            body = json.loads(_read_bounded(response, _MAX_TOKEN_BODY, "token response"))
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError) as e:
            raise RegistryError(f"{what}: the token service gave an unreadable answer") from e
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{what}: the token service gave no token")
        if not _TOKEN_RE.match(token):  # it goes into a header: nothing may break out of it
            raise RegistryError(
                f"{what}: the token service gave a token with characters a token cannot have"
            )
        return token

    # ---- endpoints ---------------------------------------------------------------------------
    @staticmethod
    def _pull(repo: str) -> list[str]:
        return [f"repository:{repo}:pull"]

    @staticmethod
    def _push(repo: str) -> list[str]:
        return [f"repository:{repo}:pull,push"]

    @_operation
    def ping(self) -> None:
        """GET /v2/: the registry speaks the API and accepts our credentials."""
        self._request("GET", "/v2/", f"ping {self.registry}").close()

    @_operation
    def get_manifest(
        self,
        repo: str,
        ref: str,
        accept: Sequence[str] = ALL_MANIFEST_TYPES,
        max_bytes: int = MAX_MANIFEST_BYTES,
    ) -> Manifest:
        """Manifest by tag or digest; the bytes are checked against the digest.

        A manifest read by digest is immutable content, verified once: it is kept (bounded) for
        the life of this client, so a promotion that read the attestations to decide does not
        fetch them again to copy them.
        """
        if not is_digest(ref):
            return self._fetch_manifest(repo, ref, accept, max_bytes)
        key = (repo, ref)
        while True:
            with self._lock:
                cached = self._manifests.get(key)
                if cached is not None and cached.media_type in accept:
                    return cached
                reading = self._reading.get(key)
                if reading is None:
                    self._reading[key] = reading = threading.Event()
                    break
            # another thread is reading these bytes now (the gate and the copy's preparation
            # ask for the same referrer manifests): wait for it, within this operation's time
            op = _current_op()
            reading.wait(max(0.0, op.remaining()) if op is not None else None)
            if op is not None and op.remaining() <= 0:
                raise _timeout_error(f"get manifest {repo}@{ref}", self.registry, self.deadline)
            # then from the cache, or (the other read failed) read it ourselves
        try:
            return self._fetch_manifest(repo, ref, accept, max_bytes)
        finally:
            with self._lock:
                self._reading.pop(key, None)
            reading.set()

    def _fetch_manifest(
        self, repo: str, ref: str, accept: Sequence[str], max_bytes: int
    ) -> Manifest:
        what = f"get manifest {repo}:{ref}" if not is_digest(ref) else f"get manifest {repo}@{ref}"
        response = self._request(
            "GET",
            f"/v2/{repo}/manifests/{ref}",
            what,
            scopes=self._pull(repo),
            headers={"Accept": ", ".join(accept)},
            stream=True,
        )
        data = _read_bounded(response, max_bytes, f"manifest {repo}:{ref}")
        if is_digest(ref):
            verify_digest(data, ref, what)
            digest = ref
        else:
            digest = compute_digest(data)
            header = response.headers.get("Docker-Content-Digest")
            if header and header.startswith("sha256:") and header != digest:
                raise DigestMismatch(
                    f"{what}: content has digest {digest}, the registry says {header}",
                    hint="do not trust this registry's answer",
                )
        media_type = _media_type(
            data, response.headers.get("Content-Type"), f"manifest {repo}:{ref}"
        )
        manifest = Manifest(data=data, media_type=media_type, digest=digest)
        self._remember(repo, manifest)
        return manifest

    def _remember(self, repo: str, manifest: Manifest) -> None:
        """Keep a manifest by digest (read and verified, or written: the digest is computed
        from the bytes either way), so re-reading it after a write costs no request."""
        with self._lock:
            if len(self._manifests) >= _MANIFEST_CACHE:
                self._manifests.pop(next(iter(self._manifests)))
            self._manifests[(repo, manifest.digest)] = manifest

    def head_manifest(self, repo: str, ref: str) -> Descriptor | None:
        """Descriptor of a manifest, or None when it does not exist."""
        found = self.head_manifest_with_etag(repo, ref)
        return found[0] if found else None

    @_operation
    def head_manifest_with_etag(self, repo: str, ref: str) -> tuple[Descriptor, str | None] | None:
        """Descriptor and ETag (for If-Match) of a manifest, or None when it does not exist."""
        what = f"head manifest {repo}:{ref}"
        response = self._request(
            "HEAD",
            f"/v2/{repo}/manifests/{ref}",
            what,
            scopes=self._pull(repo),
            headers={"Accept": ", ".join(ALL_MANIFEST_TYPES)},
            allow=(404,),
        )
        response.close()
        if response.status_code == 404:
            return None
        etag = response.headers.get("ETag")
        digest = response.headers.get("Docker-Content-Digest")
        length = response.headers.get("Content-Length", "")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if is_digest(ref):
            if digest and digest != ref:
                raise DigestMismatch(f"{what}: the registry says {digest}")
            digest = ref
        if not digest or not length.isdigit() or not media_type:
            return self.get_manifest(repo, ref).descriptor(), etag
        return Descriptor(media_type=media_type, digest=digest, size=int(length)), etag

    @_operation
    def put_manifest(
        self,
        repo: str,
        ref: str,
        data: bytes,
        media_type: str,
        if_match: str | None = None,
    ) -> PutResult:
        """PUT the exact bytes under a tag or digest (a digest must match the bytes)."""
        what = f"put manifest {repo}:{ref}" if not is_digest(ref) else f"put manifest {repo}@{ref}"
        if is_digest(ref):
            verify_digest(data, ref, what)
        digest = compute_digest(data)
        headers = {"Content-Type": media_type}
        if if_match:
            headers["If-Match"] = if_match
        response = self._request(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            what,
            scopes=self._push(repo),
            headers=headers,
            data=data,
            ok=(200, 201, 202),
        )
        response.close()
        header = response.headers.get("Docker-Content-Digest")
        if header and header.startswith("sha256:") and header != digest:
            raise RegistryError(
                f"{what}: the registry stored it as {header}, not {digest}",
                hint="the registry rewrote the manifest; it does not keep exact bytes",
            )
        self._remember(repo, Manifest(data=data, media_type=media_type, digest=digest))
        return PutResult(
            digest=digest,
            subject_header=response.headers.get("OCI-Subject"),
            etag=response.headers.get("ETag"),
        )

    @_operation
    def delete_manifest(self, repo: str, digest: str) -> None:
        self._request(
            "DELETE",
            f"/v2/{repo}/manifests/{digest}",
            f"delete manifest {repo}@{digest}",
            scopes=[f"repository:{repo}:delete", *self._push(repo)],
            ok=(200, 202),
        ).close()

    @_operation
    def blob_exists(self, repo: str, digest: str) -> bool:
        response = self._request(
            "HEAD",
            f"/v2/{repo}/blobs/{digest}",
            f"head blob {repo}@{digest}",
            scopes=self._pull(repo),
            allow=(404,),
        )
        response.close()
        return response.status_code == 200

    @_operation
    def get_blob(self, repo: str, digest: str, max_bytes: int) -> bytes:
        """A whole blob, at most ``max_bytes``, verified against its digest."""
        what = f"get blob {repo}@{digest}"
        new_hasher(digest)
        response = self._request(
            "GET", f"/v2/{repo}/blobs/{digest}", what, scopes=self._pull(repo), stream=True
        )
        data = _read_bounded(response, max_bytes, f"blob {repo}@{digest}")
        verify_digest(data, digest, what)
        return data

    def open_blob(self, repo: str, digest: str, size: int | None = None) -> Iterator[bytes]:
        """Stream a blob in chunks; raises DigestMismatch after the last chunk if it is wrong.

        ``size`` (the descriptor's) caps the stream: a registry that sends more is cut off at
        once (RegistryProtocolError), not after the extra gigabytes. The stream is one
        operation with its own deadline, however the consumer interleaves it with other calls.
        """
        what = f"get blob {repo}@{digest}"
        hasher = new_hasher(digest)
        op = self._start_operation(what)
        outer = _current_op()
        _CURRENT.op = op
        try:
            try:
                response = self._request(
                    "GET", f"/v2/{repo}/blobs/{digest}", what, scopes=self._pull(repo), stream=True
                )
            finally:
                _CURRENT.op = outer
            length = response.headers.get("Content-Length", "")
            if size is not None and length.isdigit() and int(length) > size:
                response.close()
                raise RegistryProtocolError(
                    f"{what}: the registry announces {length} bytes, the descriptor says {size}"
                )
            received = 0
            try:
                for chunk in response.iter_content(_READ_CHUNK):
                    received += len(chunk)
                    if size is not None and received > size:
                        raise RegistryProtocolError(
                            f"{what}: the registry sent more than the descriptor's {size} bytes",
                            hint="do not trust this registry's answer",
                        )
                    hasher.update(chunk)
                    yield chunk
            except requests.RequestException as e:
                if op.expired:
                    raise _timeout_error(what, self.registry, self.deadline) from e
                _raise_for(what, self.registry, exc=e)
            finally:
                response.close()
            if op.expired:
                raise _timeout_error(what, self.registry, self.deadline)
            if size is not None and received != size:
                raise RegistryProtocolError(
                    f"{what}: the registry sent {received} bytes, the descriptor says {size}"
                )
            check_hasher(hasher, digest, what)
        finally:
            self._end_operation(op)

    @_operation
    def upload_blob(self, repo: str, data: bytes | Iterable[bytes], digest: str) -> None:
        """POST an upload, then one monolithic PUT (bytes) or PATCH chunks + PUT (iterable).

        An iterable is consumed in chunks of at most UPLOAD_CHUNK bytes (bounded memory); the
        digest is checked before the closing PUT, so wrong content is never committed.
        """
        what = f"upload blob {repo}@{digest}"
        hasher = new_hasher(digest)
        if isinstance(data, bytes):
            verify_digest(data, digest, what)
        scopes = self._push(repo)
        response = self._request(
            "POST", f"/v2/{repo}/blobs/uploads/", what, scopes=scopes, ok=(202,), data=b""
        )
        response.close()
        upload = [self._location(response, what)]  # the current upload URL, kept up to date
        try:
            if isinstance(data, bytes):
                final = data
            else:
                final, hasher = self._patch_chunks(upload, data, hasher, scopes, what)
                check_hasher(hasher, digest, what)
            self._request(
                "PUT",
                _with_query(self._url(upload[0]), digest=digest),
                what,
                scopes=scopes,
                headers={"Content-Type": "application/octet-stream"},
                data=final,
                ok=(201, 204),
            ).close()
        except BaseException:
            # never leave a half-written upload behind on the destination
            self._cancel_upload(upload[0], scopes, what)
            raise

    def _patch_chunks(
        self, upload: list[str], data: Iterable[bytes], hasher: Any, scopes: list[str], what: str
    ) -> tuple[bytes, Any]:
        buf = bytearray()
        offset = 0
        for chunk in data:
            hasher.update(chunk)
            buf += chunk
            while len(buf) >= UPLOAD_CHUNK:
                part = bytes(buf[:UPLOAD_CHUNK])
                del buf[:UPLOAD_CHUNK]
                response = self._request(
                    "PATCH",
                    upload[0],
                    what,
                    scopes=scopes,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + len(part) - 1}",
                    },
                    data=part,
                    ok=(202,),
                )
                response.close()
                offset += len(part)
                upload[0] = self._location(response, what)
        return bytes(buf), hasher

    def _location(self, response: requests.Response, what: str) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{what}: the registry gave no upload location")
        return self._url(location)

    def _cancel_upload(self, location: str, scopes: list[str], what: str) -> None:
        """DELETE an unfinished upload, in an operation of its own (the failed one may be out
        of time); failing to cancel is logged, never raised over the original error."""
        outer = _current_op()
        op = self._start_operation(f"{what} (cancel)")
        _CURRENT.op = op
        try:
            self._request(
                "DELETE", location, f"{what} (cancel)", scopes=scopes, ok=(200, 202, 204, 404)
            ).close()
        except (HardenError, requests.RequestException, OSError):
            log.debug("could not cancel upload for %s", what)
        finally:
            _CURRENT.op = outer
            self._end_operation(op)

    @_operation
    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount: True when mounted (201), False when the registry refused."""
        what = f"mount blob {digest} from {from_repo} into {repo}"
        scopes = [*self._push(repo), *self._pull(from_repo)]
        response = self._request(
            "POST",
            f"/v2/{repo}/blobs/uploads/?{urlencode({'mount': digest, 'from': from_repo})}",
            what,
            scopes=scopes,
            ok=(201, 202),
            data=b"",
        )
        response.close()
        if response.status_code == 201:
            return True
        if response.headers.get("Location"):
            self._cancel_upload(self._url(response.headers["Location"]), scopes, what)
        return False

    @_operation
    def list_tags(self, repo: str) -> list[str]:
        """All tags of a repository (follows pagination); empty when the repository is unknown."""
        tags = self._list_tags(repo, MAX_TAG_PAGES)
        assert tags is not None
        return tags

    @_operation
    def list_few_tags(self, repo: str) -> list[str] | None:
        """The tags of a repository when one page holds them all (up to 1000); None when they
        do not fit, or the registry does not list them."""
        return self._list_tags(repo, 1)

    def _list_tags(self, repo: str, max_pages: int) -> list[str] | None:
        tags: list[str] = []
        url: str | None = f"/v2/{repo}/tags/list?n=1000"
        seen: set[str] = set()
        while url:
            _check_page(url, seen, f"tag list of {repo}", MAX_TAG_PAGES)
            response = self._request(
                "GET",
                url,
                f"list tags of {repo}",
                scopes=self._pull(repo),
                allow=(404,),
                stream=True,
            )
            if response.status_code == 404:
                response.close()
                # list_few_tags answers for a repository that exists: a 404 tells nothing
                return tags if max_pages > 1 else None
            body = json.loads(_read_bounded(response, MAX_MANIFEST_BYTES, f"tag list of {repo}"))
            tags += [t for t in body.get("tags") or [] if isinstance(t, str)]
            url = _next_link(response)
            if url and max_pages == 1:
                return None
        return tags

    @property
    def has_referrers_api(self) -> bool | None:
        """Whether this registry answers the referrers API, as learned by earlier calls of
        :meth:`referrers_api`; None until one of them told."""
        if self._no_referrers_api:
            return False
        return True if self._has_referrers_api else None

    @_operation
    def referrers_api(
        self, repo: str, digest: str, artifact_type: str | None = None
    ) -> Manifest | None:
        """The referrers index from GET /v2/<repo>/referrers/<digest>; None when unsupported."""
        if self._no_referrers_api:
            return None
        what = f"list referrers of {repo}@{digest}"
        first = f"/v2/{repo}/referrers/{digest}"
        if artifact_type:
            first += "?" + urlencode({"artifactType": artifact_type})
        url: str | None = first
        entries: list[Any] = []
        pages: list[bytes] = []
        seen: set[str] = set()
        while url:
            _check_page(url, seen, f"referrers of {repo}@{digest}", MAX_REFERRER_PAGES)
            response = self._request(
                "GET",
                url,
                what,
                scopes=self._pull(repo),
                headers={"Accept": OCI_INDEX},
                allow=(404,),
                stream=True,
            )
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            if response.status_code == 404 or content_type != OCI_INDEX:
                if response.status_code == 404 and content_type != "application/json":
                    # no route at all (e.g. distribution 2.8), not a registry error about this
                    # repository: remember it, so a copy does not ask again for every referrer
                    self._no_referrers_api = True
                response.close()
                return None
            data = _read_bounded(response, MAX_MANIFEST_BYTES, f"referrers of {digest}")
            try:
                page = json.loads(data).get("manifests") or []
            except (ValueError, AttributeError) as e:
                raise InputError(f"{what}: the referrers response is not an image index") from e
            if not isinstance(page, list):
                raise InputError(f"{what}: the referrers response is not an image index")
            entries += page
            check_referrer_count(len(entries), f"{repo}@{digest}")
            pages.append(data)
            url = _next_link(response)
        self._has_referrers_api = True
        if len(pages) == 1:
            data = pages[0]
        else:
            doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
            data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return Manifest(data=data, media_type=OCI_INDEX, digest=compute_digest(data))
