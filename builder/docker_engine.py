"""Docker Engine adapter (docker SDK): the only module that imports ``docker``.

Targets for verification (an image, a running container) and the primitives the container build
uses. Every docker exception is translated here into a harden error with a hint.

Every container harden runs is contained the same way, by :meth:`Containment.options`: network
``none``, every capability dropped except the few its :class:`Step` needs, ``no-new-privileges``,
memory (no swap), pids and CPU limits, a read-only root when the step only reads, and a per-step
timeout after which the container is killed. Only these throwaway containers carry
:data:`TEMPORARY_LABEL`; images harden commits never do (:meth:`Engine.commit_clean`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.models.images import Image
from docker.utils.socket import STDERR, frames_iter

from harden.errors import EnvironmentProblem, InputError, RegistryError, TargetError
from harden.target import MAX_TARGET_OUTPUT, CommandResult, TargetKind, output_refused

START_HINT = "start it with: sudo scripts/services.sh (or: dockerd --bridge=none --iptables=false --ip-masq=false)"
# the label of the containers (and intermediate images) harden removes itself; never on a
# golden image, so a clean-up by this label can never touch a production container
TEMPORARY_LABEL = "dev.harden.temporary"


class Step(StrEnum):
    """What a contained container does; decides its capabilities and whether its root is writable."""

    INSPECT = "inspect"  # fact collection, `command` checks: reads only (read-only root)
    REMEDIATE = "remediate"  # the remediation scripts: edit files as root
    INSTALL = "install"  # dpkg installs .deb files harden fetched and verified on the host


# The capabilities each step keeps (all others are dropped), measured on debian:12 and debian:13
# with the debian-container remediation and the debian-vm packages (auditd, audispd-plugins,
# apparmor, libpam-pwquality, openssh-server): the same files, modes and owners as with Docker's
# default set, and nothing less works.
CAPABILITIES: Mapping[Step, tuple[str, ...]] = {
    # DAC_READ_SEARCH: read and search every file and folder, so a file hidden under a folder owned
    # by another user with mode 0700 is still seen (suid, world-writable, shadow); it grants no
    # write access.
    Step.INSPECT: ("DAC_READ_SEARCH",),
    Step.REMEDIATE: (
        "CHOWN",  # useradd, `chown --reference` (root:shadow files keep their group)
        "DAC_READ_SEARCH",  # the suid / world-writable fixes walk folders of other users
        "FOWNER",  # chmod of files the image gives to other users (suid, world-writable fixes)
    ),
    Step.INSTALL: (
        "CHOWN",  # dpkg sets the owner of every unpacked file
        "FOWNER",  # maintainer scripts chmod files owned by the system users they create
        "FSETID",  # dpkg-statoverride / chmod g+s keep setgid bits (ssh-agent is 2755 root:_ssh)
    ),
}
_SIZE_RE = re.compile(r"^([0-9]+)([kmg]?)b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str, what: str) -> int:
    """'512m' -> bytes (k, m, g suffixes, binary units)."""
    m = _SIZE_RE.match(text.strip())
    if not m or int(m.group(1)) <= 0:
        raise InputError(f"{what}={text!r} is not a size", hint="write e.g. 512m or 2g")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _positive(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InputError(f"{what}={text!r} is not a positive number")
    return value


CONTAINMENT_ENV: Mapping[str, str] = {
    "memory": "HARDEN_CONTAINER_MEMORY",
    "pids": "HARDEN_CONTAINER_PIDS",
    "cpus": "HARDEN_CONTAINER_CPUS",
    "step_timeout": "HARDEN_STEP_TIMEOUT",
    "check_timeout": "HARDEN_CHECK_TIMEOUT",
}


@dataclass(frozen=True)
class Containment:
    """The limits of every container harden runs; the one place that builds its run options.

    Defaults fit a remediation with package installs on a 2-core machine; each is configurable
    with an environment variable (``from_env``)."""

    memory: int = 1 << 30  # bytes of RAM, swap disabled (memswap = memory)
    pids: int = 512  # processes and threads: a fork bomb stops here
    cpus: float = 1.0  # CPU time, in cores
    tmpfs: int = 64 << 20  # bytes of /tmp on a read-only root (counted in the memory limit)
    step_timeout: float = 1800.0  # seconds for one remediation step (package installs included)
    check_timeout: float = 300.0  # seconds for one fact collection with its `command` checks
    capabilities: Mapping[Step, tuple[str, ...]] = field(default_factory=lambda: CAPABILITIES)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Containment:
        """Defaults, overridden by ``HARDEN_CONTAINER_MEMORY`` (e.g. 512m), ``_PIDS``, ``_CPUS``,
        ``HARDEN_STEP_TIMEOUT`` and ``HARDEN_CHECK_TIMEOUT`` (seconds)."""
        over: dict[str, Any] = {}
        for name, var in CONTAINMENT_ENV.items():
            text = env.get(var, "").strip()
            if not text:
                continue
            if name == "memory":
                over[name] = parse_size(text, var)
                if over[name] < 16 << 20:
                    raise InputError(f"{var}={text!r} is below 16m, too little for any step")
            elif name == "pids":
                over[name] = int(_positive(text, var))
            else:
                over[name] = _positive(text, var)
        return cls(**over)

    def timeout(self, step: Step) -> float:
        return self.check_timeout if step is Step.INSPECT else self.step_timeout

    def options(self, step: Step) -> dict[str, Any]:
        """Keyword arguments for ``containers.create``: the whole containment of one step."""
        opts: dict[str, Any] = {
            "network_mode": "none",
            "cap_drop": ["ALL"],
            "cap_add": list(self.capabilities[step]),
            "security_opt": ["no-new-privileges"],
            "mem_limit": self.memory,
            "memswap_limit": self.memory,
            "pids_limit": self.pids,
            "nano_cpus": int(self.cpus * 1e9),
            "read_only": step is Step.INSPECT,
        }
        if step is Step.INSPECT:
            opts["tmpfs"] = {"/tmp": f"rw,nosuid,nodev,size={self.tmpfs}"}  # noqa: S108
        return opts


class StepTimeout(TargetError):
    """A contained step ran longer than its timeout; its container was killed."""


class ResourceExhausted(TargetError):
    """A contained step was killed by its memory limit."""


class Engine:
    """A connection to the Docker Engine."""

    def __init__(self, client: docker.DockerClient, containment: Containment | None = None) -> None:
        self.client = client
        self.containment = containment or Containment()

    @classmethod
    def connect(cls, containment: Containment | None = None) -> Engine:
        """Connect with ``containment`` (default: :meth:`Containment.from_env` of os.environ)."""
        import os

        if containment is None:
            containment = Containment.from_env(os.environ)
        try:
            client = docker.from_env(timeout=300)
            client.ping()
        except docker.errors.DockerException as e:
            raise EnvironmentProblem(
                f"the Docker Engine is not running or not reachable ({_short(e)})", hint=START_HINT
            ) from e
        return cls(client, containment)

    # ------------------------------------------------------------ images

    def image(self, ref: str) -> Image:
        try:
            return self.client.images.get(ref)
        except docker.errors.ImageNotFound as e:
            raise TargetError(
                f"image {ref} not found in the local engine",
                hint="pull it first, or build the base images with scripts/services.sh",
            ) from e
        except docker.errors.APIError as e:
            raise TargetError(f"cannot inspect image {ref}: {_short(e)}") from e

    def pull(self, ref: str) -> Image | None:
        """Pull ``ref`` from its registry; None when the registry does not have it or is down."""
        repo, tag = split_tag(ref)
        try:
            return self.client.images.pull(repo, tag=tag)
        except docker.errors.APIError:
            return None

    def save_image(self, ref: str) -> Iterator[bytes]:
        """The image as a ``docker save`` tar stream (read by harden, nothing runs)."""
        try:
            yield from self.image(ref).save(chunk_size=1 << 20, named=False)
        except docker.errors.DockerException as e:
            raise TargetError(f"cannot export image {ref} from the engine: {_short(e)}") from e

    def find_images(self, labels: dict[str, str]) -> list[Image]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        try:
            return list(self.client.images.list(filters=filters))
        except docker.errors.APIError as e:
            raise TargetError(f"cannot list images: {_short(e)}") from e

    def push(self, ref: str) -> str:
        """Push a tagged image; returns the manifest digest. Raises RegistryError on any failure."""
        repo, tag = split_tag(ref)
        digest = None
        try:
            for line in self.client.images.push(repo, tag=tag, stream=True, decode=True):
                if "error" in line or "errorDetail" in line:
                    detail = line.get("errorDetail", {}).get("message") or line.get("error")
                    raise RegistryError(
                        f"push of {ref} failed: {detail}",
                        hint="is the registry running? scripts/services.sh starts the local one",
                    )
                aux = line.get("aux") or {}
                if "Digest" in aux:
                    digest = aux["Digest"]
        except docker.errors.APIError as e:
            raise RegistryError(f"push of {ref} failed: {_short(e)}") from e
        except (docker.errors.DockerException, OSError) as e:
            raise RegistryError(f"push of {ref} failed: {_short(e)}") from e
        if not digest:
            raise RegistryError(f"push of {ref} reported no digest")
        return str(digest)

    def tag(self, image: Image, ref: str) -> None:
        repo, tag = split_tag(ref)
        image.tag(repo, tag=tag)

    def remove_image(self, ref: str) -> None:
        with contextlib.suppress(docker.errors.DockerException):
            self.client.images.remove(ref, noprune=False)

    # ------------------------------------------------------------ containers

    def create(
        self,
        image: str,
        command: list[str],
        *,
        step: Step = Step.INSPECT,
        user: str = "root",
        environment: Mapping[str, str] | None = None,
    ) -> Container:
        """A contained, not yet started container labelled temporary (see :class:`Containment`)."""
        try:
            return self.client.containers.create(
                image,
                command=command,
                entrypoint=[],
                user=user,
                labels={TEMPORARY_LABEL: "true"},
                environment=dict(environment or {}),
                detach=True,
                **self.containment.options(step),
            )
        except docker.errors.ImageNotFound as e:
            raise TargetError(f"image {image} not found") from e
        except docker.errors.APIError as e:
            raise TargetError(f"cannot create a container from {image}: {_short(e)}") from e

    def run_to_end(self, container: Container, timeout: float) -> CommandResult:
        """Start, wait at most ``timeout`` seconds (then kill: StepTimeout), collect the output.

        A non-zero exit after the memory limit killed a process is ResourceExhausted."""
        try:
            container.start()
        except docker.errors.DockerException as e:
            raise TargetError(f"container {container.short_id} failed: {_short(e)}") from e
        try:
            status = container.wait(timeout=timeout)
        except (docker.errors.DockerException, OSError) as e:  # OSError: the read timed out
            with contextlib.suppress(docker.errors.DockerException):
                container.kill()
            raise StepTimeout(
                f"container {container.short_id} did not finish in {timeout:.0f}s and was killed",
                hint="a step that is meant to take longer: raise HARDEN_STEP_TIMEOUT "
                "(remediation) or HARDEN_CHECK_TIMEOUT (fact collection and command checks)",
            ) from e
        code = int(status.get("StatusCode", -1))
        try:
            out = container.logs(stdout=True, stderr=False)
            err = container.logs(stdout=False, stderr=True)
            if code != 0:
                container.reload()
        except docker.errors.DockerException as e:
            raise TargetError(f"container {container.short_id} failed: {_short(e)}") from e
        if code != 0 and (container.attrs.get("State") or {}).get("OOMKilled"):
            raise ResourceExhausted(
                f"container {container.short_id} exceeded its memory limit "
                f"({self.containment.memory >> 20} MiB) and was killed (exit {code})",
                hint="a step that needs more: raise HARDEN_CONTAINER_MEMORY (e.g. 2g)",
            )
        return CommandResult(code, out, err)

    @staticmethod
    def remove(container: Container) -> None:
        with contextlib.suppress(docker.errors.DockerException):
            container.remove(force=True)

    @contextlib.contextmanager
    def throwaway(
        self,
        image: str,
        command: list[str],
        *,
        step: Step = Step.INSPECT,
        environment: Mapping[str, str] | None = None,
    ) -> Iterator[Container]:
        """A contained container that is removed whatever happens (errors, Ctrl-C, SIGTERM)."""
        c = self.create(image, command, step=step, environment=environment)
        try:
            yield c
        finally:
            self.remove(c)

    def put_files(self, container: Container, path: str, tar_bytes: bytes) -> None:
        """Copy a tar archive into a created (not started) container at ``path``."""
        try:
            ok = container.put_archive(path, tar_bytes)
        except docker.errors.DockerException as e:
            raise TargetError(f"cannot copy files into {container.short_id}: {_short(e)}") from e
        if not ok:
            raise TargetError(f"cannot copy files into {container.short_id} at {path}")

    def read_file(self, image: str, path: str, limit: int) -> bytes | None:
        """The bytes of the regular file ``path`` in ``image`` (symlinks followed inside the
        image), read from a created container that never starts; None when it does not exist.
        More than ``limit`` bytes is an error."""
        with self.throwaway(image, ["/nonexistent"], step=Step.INSPECT) as c:
            for _ in range(8):
                try:
                    stream, stat = c.get_archive(path)
                except docker.errors.NotFound:
                    return None
                except docker.errors.DockerException as e:
                    raise TargetError(f"cannot read {path} from {image}: {_short(e)}") from e
                if int(stat.get("size", 0)) > limit:
                    raise TargetError(f"{path} in {image} is larger than {limit} bytes")
                buf = io.BytesIO()
                for chunk in stream:
                    buf.write(chunk)
                    if buf.tell() > limit + 1024 * 1024:
                        raise TargetError(f"{path} in {image} is larger than {limit} bytes")
                buf.seek(0)
                with tarfile.open(fileobj=buf) as tar:
                    member = tar.next()
                    if member is None:
                        return None
                    if member.issym():
                        target = member.linkname
                        if not target.startswith("/"):
                            target = path.rsplit("/", 1)[0] + "/" + target
                        path = target
                        continue
                    if not member.isfile():
                        return None
                    data = tar.extractfile(member)
                    return data.read(limit + 1)[:limit] if data is not None else None
            raise TargetError(f"{path} in {image}: too many symbolic links")

    def commit(self, container: Container, changes: list[str]) -> Image:
        """An intermediate image (it keeps the container's temporary label: removed by the build)."""
        try:
            return container.commit(changes=changes)
        except docker.errors.APIError as e:
            raise TargetError(f"docker commit failed: {_short(e)}") from e

    def commit_clean(
        self, container: Container, changes: list[str], labels: Mapping[str, str]
    ) -> Future[str]:
        """Commit ``container`` as an image whose labels are exactly ``labels``; its image id.

        ``docker commit`` merges the container's own labels (the temporary one) into the image and
        cannot remove a label, and ``Hostname``/``Image`` of the container leak into the config.
        So the committed config is rewritten: the same layers, history and run settings, only
        ``labels``, loaded back (``docker load`` reuses the layers it has; nothing is copied).
        The rewrite runs in a thread, so the caller removes the container meanwhile."""
        committed = self.commit(container, changes)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="harden-commit")
        try:
            return pool.submit(self._rewrite_labels, str(committed.id), labels)
        finally:
            pool.shutdown(wait=False)

    def _rewrite_labels(self, committed: str, labels: Mapping[str, str]) -> str:
        try:
            attrs = self.client.api.inspect_image(committed)
            history = self.client.api.history(committed)
            config = clean_image_config(attrs, history, labels)
            raw = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
            image_id = "sha256:" + hashlib.sha256(raw).hexdigest()
            loaded = self.client.api.load_image(
                _load_archive(raw, len(config["rootfs"]["diff_ids"])), quiet=True
            )
            said = json.dumps(list(loaded) if not isinstance(loaded, dict) else [loaded])
            if image_id not in said:  # the engine says "Loaded image ID: ..." or an error
                raise TargetError(f"docker load of the golden config failed: {said[-300:]}")
        except docker.errors.DockerException as e:
            raise TargetError(f"cannot write the image config: {_short(e)}") from e
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                self.client.api.remove_image(committed, noprune=True)
        return image_id

    def container(self, name: str) -> Container:
        try:
            c = self.client.containers.get(name)
        except docker.errors.NotFound as e:
            raise TargetError(f"no running container named {name}") from e
        except docker.errors.APIError as e:
            raise TargetError(f"cannot inspect container {name}: {_short(e)}") from e
        if c.status != "running":
            raise TargetError(f"container {name} is {c.status}, not running")
        return c


def split_tag(ref: str) -> tuple[str, str | None]:
    """'host:5000/a/b:tag' -> ('host:5000/a/b', 'tag'); digests stay in the repo part."""
    if "@" in ref:
        return ref, None
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
        return repo, tag
    return ref, "latest"


def names_registry(ref: str) -> bool:
    """Whether ``ref`` names its registry host (``host.tld/...``, ``host:port/...``,
    ``localhost/...``). Only such references are pulled: harden never falls back to an implied
    public registry (``debian:12`` and ``library/debian`` are local images)."""
    first = ref.split("/", 1)[0]
    return "/" in ref and ("." in first or ":" in first or first == "localhost")


def repo_digest(image: Image, repo: str) -> str | None:
    """The manifest digest of ``image`` in ``repo`` (from RepoDigests)."""
    name = split_tag(repo)[0]
    for rd in image.attrs.get("RepoDigests") or []:
        r, _, d = rd.partition("@")
        if r == name:
            return str(d)
    return None


def _short(e: Exception) -> str:
    text = str(getattr(e, "explanation", None) or e)
    return text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__


# ---------------------------------------------------------------- verification targets


@dataclass
class ImageTarget:
    """An image: each run() is one throwaway container with network none, as root."""

    engine: Engine
    ref: str
    kind: TargetKind = TargetKind.CONTAINER

    def __post_init__(self) -> None:
        self._image = self.engine.image(self.ref)

    @property
    def image_id(self) -> str:
        return str(self._image.id)

    @property
    def attrs(self) -> dict[str, Any]:
        """The engine's inspect data of the image (RepoDigests, Config, ...)."""
        attrs: dict[str, Any] = self._image.attrs
        return attrs

    def describe(self) -> str:
        return self.ref

    def run(self, script: str, *, timeout: float = 600.0) -> CommandResult:
        """``script`` in a contained, read-only container (the check timeout of the engine's
        containment when it is shorter than ``timeout``)."""
        with self.engine.throwaway(self.image_id, ["/bin/sh", "-c", script]) as c:
            return self.engine.run_to_end(
                c, min(timeout, self.engine.containment.timeout(Step.INSPECT))
            )

    def image_config(self) -> dict[str, Any] | None:
        cfg: dict[str, Any] = dict(self._image.attrs.get("Config") or {})
        return cfg


@dataclass
class RunningContainerTarget:
    """A running container (``docker://NAME``): each run() is one exec over the engine's API."""

    engine: Engine
    name: str
    kind: TargetKind = TargetKind.CONTAINER
    max_output: int = MAX_TARGET_OUTPUT  # bytes one run() reads before it refuses

    def __post_init__(self) -> None:
        self._container = self.engine.container(self.name)

    @property
    def attrs(self) -> dict[str, Any]:
        """The engine's inspect data of the container (Image, Config, State, ...)."""
        attrs: dict[str, Any] = self._container.attrs
        return attrs

    def describe(self) -> str:
        return f"docker://{self.name}"

    def run(self, script: str, *, timeout: float = 600.0) -> CommandResult:
        # the API directly (no docker CLI process per command: ~10 ms instead of ~100 ms)
        api = self.engine.client.api
        out: list[bytes] = []
        err: list[bytes] = []
        size = 0
        try:
            exec_id = api.exec_create(self._container.id, ["/bin/sh", "-c", script], user="root")
            # the raw socket, read frame by frame: stream=True leaves the response open
            sock = api.exec_start(exec_id, socket=True)
            try:
                for stream_id, data in frames_iter(sock, tty=False):
                    (err if stream_id == STDERR else out).append(data)
                    size += len(data)
                    if size > self.max_output:  # the API cannot kill the exec's process
                        raise TargetError(
                            output_refused(self.describe(), self.max_output),
                            hint="is the container what you meant to verify?",
                        )
            finally:
                sock.close()
            code = api.exec_inspect(exec_id).get("ExitCode")
        except docker.errors.DockerException as e:
            raise TargetError(f"exec in container {self.name} failed: {_short(e)}") from e
        return CommandResult(-1 if code is None else int(code), b"".join(out), b"".join(err))

    def image_config(self) -> dict[str, Any] | None:
        cfg: dict[str, Any] = dict(self._container.attrs.get("Config") or {})
        return cfg


def dockerfile_label(key: str, value: str) -> str:
    """A ``LABEL`` change line with both parts JSON-quoted (no injection into the change)."""
    return f"LABEL {json.dumps(key)}={json.dumps(value)}"


# ---------------------------------------------------------------- file system export (scanners)


class _ChunkReader:
    """A read()-able view of the engine's export chunks (a tar stream)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                break
        if n < 0:
            data, self._buf = self._buf, b""
        else:
            data, self._buf = self._buf[:n], self._buf[n:]
        return data


@contextlib.contextmanager
def exported_filesystem(engine: Engine, ref: str) -> Iterator[_ChunkReader]:
    """The tar stream of image ``ref``'s file system: ``docker export`` of a container that is
    created (network none, labelled temporary) and never started, removed afterwards."""
    container = engine.create(ref, ["/nonexistent-never-started"])  # never started: no step runs
    try:
        try:
            yield _ChunkReader(iter(container.export(chunk_size=1024 * 1024)))
        except docker.errors.DockerException as e:
            raise TargetError(f"cannot export the file system of {ref}: {_short(e)}") from e
    finally:
        engine.remove(container)


@contextlib.contextmanager
def exported_container(engine: Engine, name: str) -> Iterator[_ChunkReader]:
    """The tar stream of a running container's file system as it is now."""
    container = engine.container(name)
    try:
        yield _ChunkReader(iter(container.export(chunk_size=1024 * 1024)))
    except docker.errors.DockerException as e:
        raise TargetError(f"cannot export the file system of {name}: {_short(e)}") from e


# the run settings an image config keeps (docker's Config); the container's own fields
# (Hostname, Image, Attach*, Tty, ...) are left out
_IMAGE_CONFIG_KEYS = (
    "User",
    "ExposedPorts",
    "Env",
    "Cmd",
    "Healthcheck",
    "ArgsEscaped",
    "Volumes",
    "WorkingDir",
    "Entrypoint",
    "OnBuild",
    "StopSignal",
    "Shell",
)


def clean_image_config(
    attrs: Mapping[str, Any], history: Sequence[Mapping[str, Any]], labels: Mapping[str, str]
) -> dict[str, Any]:
    """An OCI/Docker image config from the engine's inspect data and history (newest first),
    with exactly ``labels``. A history entry with no bytes counts as an empty layer (the engine
    checks there are never more non-empty entries than layers)."""
    import datetime as dt

    cfg = attrs.get("Config") or {}
    config: dict[str, Any] = {k: cfg[k] for k in _IMAGE_CONFIG_KEYS if cfg.get(k) not in (None, "")}
    config["Labels"] = dict(sorted(labels.items()))
    entries = []
    for h in reversed(history):
        created = dt.datetime.fromtimestamp(int(h.get("Created") or 0), dt.UTC)
        entry: dict[str, Any] = {"created": created.strftime("%Y-%m-%dT%H:%M:%SZ")}
        if h.get("CreatedBy"):
            entry["created_by"] = h["CreatedBy"]
        if h.get("Comment"):
            entry["comment"] = h["Comment"]
        if not h.get("Size"):
            entry["empty_layer"] = True
        entries.append(entry)
    out: dict[str, Any] = {
        "architecture": attrs.get("Architecture") or "amd64",
        "os": attrs.get("Os") or "linux",
        "created": attrs.get("Created"),
        "config": config,
        "rootfs": {
            "type": "layers",
            "diff_ids": list((attrs.get("RootFS") or {}).get("Layers") or []),
        },
        "history": entries,
    }
    if attrs.get("Variant"):
        out["variant"] = attrs["Variant"]
    if attrs.get("Author"):
        out["author"] = attrs["Author"]
    return out


def _load_archive(config: bytes, layers: int) -> bytes:
    """A ``docker load`` archive of one config whose layers the engine already has (it reads a
    layer file only for a layer it does not have, so none is included)."""
    name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = [
        {"Config": name, "RepoTags": None, "Layers": [f"{i}/layer.tar" for i in range(layers)]}
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for member, data in ((name, config), ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
