"""Run a short command in a container and read its output without docker-py's race.

``client.containers.run(..., remove=True)`` follows the logs of a container it has already
started; on a loaded engine a command that exits at once can end before the follow attaches,
and ``run`` then returns ``b""`` with exit status 0 (docker/docker-py#2117). It failed CI once
(``dpkg-query`` read as ``''``). Waiting first and reading the finished container's logs has no
such window.
"""

from __future__ import annotations

from typing import Any

import docker


def output(client: docker.DockerClient, image: str, command: list[str], **kwargs: Any) -> str:
    """stdout of ``command`` in a new container of ``image``; raise if it exits non-zero."""
    kwargs.setdefault("network_mode", "none")
    c = client.containers.create(image, command, **kwargs)
    try:
        c.start()
        status = c.wait(timeout=300)["StatusCode"]
        out: str = c.logs(stdout=True, stderr=False).decode()
        if status != 0:
            err = c.logs(stdout=False, stderr=True).decode()
            raise AssertionError(f"{command} in {image} exited {status}: {err.strip()}")
        return out
    finally:
        c.remove(force=True)
