"""Docker Engine adapter (docker SDK): the only module that imports ``docker``.

Targets for verification (an image, a running container) and the primitives the container build
uses. Every docker exception is translated here into a harden error with a hint.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.models.images import Image

from harden.errors import EnvironmentProblem, RegistryError, TargetError
from harden.target import CommandResult, TargetKind

START_HINT = "start it with: sudo scripts/services.sh (or: dockerd --bridge=none --iptables=false --ip-masq=false)"


class Engine:
    """A connection to the Docker Engine."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    @classmethod
    def connect(cls) -> Engine:
        try:
            client = docker.from_env(timeout=300)
            client.ping()
        except docker.errors.DockerException as e:
            raise EnvironmentProblem(
                f"the Docker Engine is not running or not reachable ({_short(e)})", hint=START_HINT
            ) from e
        return cls(client)

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
        self, image: str, command: list[str], *, network: str = "none", user: str = "root"
    ) -> Container:
        if network not in ("none", "host"):
            raise ValueError("containers get network none or host, never a bridge")
        try:
            return self.client.containers.create(
                image,
                command=command,
                entrypoint=[],
                user=user,
                network_mode=network,
                labels={"dev.harden.temporary": "true"},
                detach=True,
            )
        except docker.errors.ImageNotFound as e:
            raise TargetError(f"image {image} not found") from e
        except docker.errors.APIError as e:
            raise TargetError(f"cannot create a container from {image}: {_short(e)}") from e

    def run_to_end(self, container: Container, timeout: float) -> CommandResult:
        try:
            container.start()
            status = container.wait(timeout=timeout)
            out = container.logs(stdout=True, stderr=False)
            err = container.logs(stdout=False, stderr=True)
        except docker.errors.DockerException as e:
            raise TargetError(f"container {container.short_id} failed: {_short(e)}") from e
        except OSError as e:  # read timeout from requests
            raise TargetError(
                f"container {container.short_id} did not finish in {timeout:.0f}s"
            ) from e
        return CommandResult(int(status.get("StatusCode", -1)), out, err)

    @staticmethod
    def remove(container: Container) -> None:
        with contextlib.suppress(docker.errors.DockerException):
            container.remove(force=True)

    @contextlib.contextmanager
    def throwaway(
        self, image: str, command: list[str], *, network: str = "none"
    ) -> Iterator[Container]:
        """A container that is removed whatever happens (errors, Ctrl-C)."""
        c = self.create(image, command, network=network)
        try:
            yield c
        finally:
            self.remove(c)

    def commit(self, container: Container, changes: list[str]) -> Image:
        try:
            return container.commit(changes=changes)
        except docker.errors.APIError as e:
            raise TargetError(f"docker commit failed: {_short(e)}") from e

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
        with self.engine.throwaway(self.image_id, ["/bin/sh", "-c", script]) as c:
            return self.engine.run_to_end(c, timeout)

    def image_config(self) -> dict[str, Any] | None:
        cfg: dict[str, Any] = dict(self._image.attrs.get("Config") or {})
        return cfg


@dataclass
class RunningContainerTarget:
    """A running container (``docker://NAME``): each run() is one exec over the engine's API."""

    engine: Engine
    name: str
    kind: TargetKind = TargetKind.CONTAINER

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
        try:
            exec_id = api.exec_create(self._container.id, ["/bin/sh", "-c", script], user="root")
            out, err = api.exec_start(exec_id, demux=True)
            code = api.exec_inspect(exec_id).get("ExitCode")
        except docker.errors.DockerException as e:
            raise TargetError(f"exec in container {self.name} failed: {_short(e)}") from e
        return CommandResult(-1 if code is None else int(code), out or b"", err or b"")

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
    container = engine.create(ref, ["/nonexistent-never-started"], network="none")
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


# ---------------------------------------------------------------- one file of an image, not run


def read_image_files(
    engine: Engine, ref: str, paths: list[str], *, limit: int = 64 * 1024 * 1024
) -> dict[str, bytes | None]:
    """The regular files at ``paths`` in image ``ref`` (None where there is none), read from a
    container that is created (network none, labelled temporary) and never started.

    The one place the package inventory reads a built image; exec-free image reading replaces it.
    """
    import io
    import tarfile

    container = engine.create(ref, ["/nonexistent-never-started"], network="none")
    out: dict[str, bytes | None] = {}
    try:
        for path in paths:
            try:
                stream, stat = container.get_archive(path)
            except docker.errors.NotFound:
                out[path] = None
                continue
            except docker.errors.DockerException as e:
                raise TargetError(f"cannot read {path} of {ref}: {_short(e)}") from e
            if int(stat.get("size", 0)) > limit:
                raise TargetError(f"{path} of {ref} is more than {limit} bytes; refused")
            buf = io.BytesIO()
            for chunk in stream:
                buf.write(chunk)
                if buf.tell() > limit + 1024 * 1024:
                    raise TargetError(f"{path} of {ref} is more than {limit} bytes; refused")
            buf.seek(0)
            with tarfile.open(fileobj=buf) as tf:
                member = next((m for m in tf if m.isfile()), None)
                f = tf.extractfile(member) if member is not None else None
                out[path] = f.read(limit + 1) if f is not None else None
    finally:
        engine.remove(container)
    return out


def put_files(
    engine: Engine, container: Container, directory: str, files: dict[str, bytes]
) -> None:
    """Copy ``files`` (name -> bytes) into ``directory`` of a created, not yet started container."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for d in sorted({n.rpartition("/")[0] for n in files} - {""}):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
    try:
        container.put_archive(directory, buf.getvalue())
    except docker.errors.DockerException as e:
        raise TargetError(f"cannot copy files into {container.short_id}: {_short(e)}") from e
