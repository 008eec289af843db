"""A Target over SSH (paramiko) with pinned host keys: a VM harden booted, or an ``ssh://`` host.

Host keys are never accepted blindly: the client uses ``RejectPolicy`` and knows only the keys it
was given (OpenSSH public key lines, e.g. read from a VM's serial console) and/or a known_hosts
file. An unknown or mismatching key is a :class:`HostKeyRejected` (a ``TargetError``, exit 4)
naming the host and the SHA256 fingerprint the server offered.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import select
import shlex
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paramiko

from harden.errors import TargetError, UsageError
from harden.target import MAX_TARGET_OUTPUT, CommandResult, TargetKind, output_refused

_BUF = 65536
# Preferred first: paramiko negotiates the type of the first pinned key.
_KEY_TYPE_ORDER = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)


class HostKeyRejected(TargetError):
    """The server's host key is unknown or does not match the pinned one."""


def known_hosts_name(host: str, port: int) -> str:
    """The name OpenSSH and paramiko file a host key under (``[host]:port`` off port 22)."""
    return host if port == 22 else f"[{host}]:{port}"


def parse_public_key(line: str) -> paramiko.PKey:
    """One OpenSSH public key line (``TYPE BASE64 [comment]``) as a paramiko key."""
    fields = line.split()
    if len(fields) < 2:
        raise TargetError(
            f"not an OpenSSH public key line: {line[:60]!r}",
            hint="expected 'TYPE BASE64 [comment]', e.g. 'ssh-ed25519 AAAAC3Nza...'",
        )
    key_type, blob = fields[0], fields[1]
    try:
        data = base64.b64decode(blob, validate=True)
        return paramiko.PKey.from_type_string(key_type, data)
    except (binascii.Error, ValueError, paramiko.SSHException) as e:
        raise TargetError(
            f"cannot read the {key_type} public key {blob[:24]}...: {e}",
            hint="pin the exact line from the host's /etc/ssh/ssh_host_*_key.pub",
        ) from e


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint."""
    return str(key.fingerprint)


def parse_ssh_url(url: str) -> tuple[str, str, int]:
    """``ssh://USER@HOST[:PORT]`` -> (user, host, port); port defaults to 22, user to root."""
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname:
        raise UsageError(
            f"not an ssh URL: {url!r}",
            hint="write it as ssh://USER@HOST:PORT, e.g. ssh://root@10.0.0.5",
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.password:
        raise UsageError(
            f"unexpected parts in ssh URL {url!r}", hint="only ssh://USER@HOST:PORT is understood"
        )
    try:
        port = parts.port or 22
    except ValueError as e:
        raise UsageError(f"bad port in ssh URL {url!r}", hint="the port is 1-65535") from e
    user = parts.username or "root"
    return user, parts.hostname, port


class _RecordingRejectPolicy(paramiko.RejectPolicy):
    """Reject unknown keys, remembering what the server offered (or accept it when asked to)."""

    def __init__(self, accept_new: bool) -> None:
        self.accept_new = accept_new
        self.offered: paramiko.PKey | None = None

    # RejectPolicy's stub returns Never; accept_new (OpenSSH's accept-new) is the one way to return.
    def missing_host_key(  # type: ignore[override]
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        self.offered = key
        if self.accept_new:
            client.get_host_keys().add(hostname, key.get_name(), key)
            return
        super().missing_host_key(client, hostname, key)


@contextlib.contextmanager
def quiet_paramiko() -> Iterator[None]:
    """Silence paramiko's per-attempt tracebacks (banner errors) while polling a booting host."""
    logger = logging.getLogger("paramiko")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


class SshTarget:
    """Run shell as root on a host over SSH; implements :class:`harden.target.Target`.

    A user other than root runs everything through ``sudo -n`` (password-less sudo, such as the
    base template's build account has in build mode); files are then written through that shell.
    """

    kind = TargetKind.VM
    max_output = MAX_TARGET_OUTPUT  # bytes one run() reads before it refuses

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        *,
        key_path: Path | None,
        known_hosts: Path | None = None,
        pinned_host_keys: Sequence[str] = (),
        accept_new: bool = False,
        connect_timeout: float = 10,
        sudo: bool | None = None,
    ) -> None:
        self.host = host
        self.sudo = (user != "root") if sudo is None else sudo
        self.port = port
        self.user = user
        self.key_path = key_path
        self.known_hosts = known_hosts
        self.pinned_host_keys = tuple(pinned_host_keys)
        self.accept_new = accept_new
        self.connect_timeout = connect_timeout
        self._client: paramiko.SSHClient | None = None
        self.host_key: paramiko.PKey | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_path: Path | None = None,
        known_hosts: Path | None = None,
        pinned_host_keys: Sequence[str] = (),
        accept_new: bool = False,
    ) -> SshTarget:
        """An ``ssh://`` target; host keys from ``known_hosts`` (default ~/.ssh/known_hosts)."""
        user, host, port = parse_ssh_url(url)
        if known_hosts is None:
            default = Path.home() / ".ssh" / "known_hosts"
            known_hosts = default if default.exists() else None
        return cls(
            host,
            port,
            user,
            key_path=key_path,
            known_hosts=known_hosts,
            pinned_host_keys=pinned_host_keys,
            accept_new=accept_new,
        )

    # -- Target ----------------------------------------------------------------------------------
    def describe(self) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}"

    def image_config(self) -> dict[str, Any] | None:
        return None

    def run(self, script: str, *, timeout: float = 600.0) -> CommandResult:
        """Run ``script`` with ``sh -s`` (script on stdin); never raises for a non-zero exit."""
        transport = self._transport()
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as e:
            self._drop()
            raise TargetError(
                f"{self.describe()}: cannot open an SSH session: {e}",
                hint="is the host still up? a reboot or poweroff closes the connection",
            ) from e
        try:
            return self._run_on(chan, script, timeout)
        finally:
            chan.close()

    def _run_on(self, chan: paramiko.Channel, script: str, timeout: float) -> CommandResult:
        deadline = time.monotonic() + timeout
        out: list[bytes] = []
        err: list[bytes] = []
        size = 0
        try:
            chan.exec_command("sudo -n sh -s" if self.sudo else "sh -s")
            chan.sendall(script.encode("utf-8"))
            chan.shutdown_write()
            fd = chan.fileno()
            while True:
                if size > self.max_output:
                    raise TargetError(
                        output_refused(self.describe(), self.max_output),
                        hint="is the target what you meant to verify?",
                    )
                if chan.recv_ready():
                    out.append(chan.recv(_BUF))
                    size += len(out[-1])
                    continue
                if chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(_BUF))
                    size += len(err[-1])
                    continue
                if chan.exit_status_ready() and (chan.eof_received or chan.closed):
                    break
                if chan.closed or not chan.get_transport() or not self._alive():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TargetError(
                        f"{self.describe()}: command did not finish within {timeout:g} s",
                        hint="raise the timeout or check the target for a hung process",
                    )
                select.select([fd], [], [], min(left, 0.25))
        except (paramiko.SSHException, OSError, EOFError) as e:
            self._drop()
            raise TargetError(
                f"{self.describe()}: the SSH connection dropped: {e}", hint="is the host still up?"
            ) from e
        if chan.exit_status == -1:  # closed without an exit-status message
            transport = chan.get_transport()
            if transport is not None and transport.is_alive():
                transport.join(1.0)  # a dropped connection ends the transport thread quickly
            if not self._alive():
                self._drop()
                raise TargetError(
                    f"{self.describe()}: the SSH connection dropped before the command finished",
                    hint="is the host still up? a reboot or poweroff closes the connection",
                )
            return CommandResult(255, b"".join(out), b"".join(err))  # killed by a signal
        return CommandResult(chan.recv_exit_status(), b"".join(out), b"".join(err))

    def put_file(self, data: bytes, remote_path: str, mode: int) -> None:
        """Write ``data`` to ``remote_path`` atomically (temp file, chmod, rename) over SFTP."""
        tmp = f"{remote_path}.harden-tmp"
        if self.sudo:
            self._put_file_sudo(data, remote_path, tmp, mode)
            return
        hint = "does the folder exist, and does the host run an SFTP subsystem?"
        with self._sftp(f"cannot write {remote_path}", hint) as sftp:
            with sftp.open(tmp, "wb") as f:
                f.write(data)
            sftp.chmod(tmp, mode)
            sftp.posix_rename(tmp, remote_path)

    @contextlib.contextmanager
    def _sftp(self, what: str, hint: str) -> Iterator[paramiko.SFTPClient]:
        """An SFTP session as the login user; a failure of the session or of a file operation
        in it is a TargetError saying ``what`` failed."""
        transport = self._transport()
        try:
            sftp = paramiko.SFTPClient.from_transport(transport)
            if sftp is None:
                raise TargetError(f"{self.describe()}: cannot open an SFTP session")
            with sftp:
                yield sftp
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise TargetError(f"{self.describe()}: {what}: {e}", hint=hint) from e

    def upload(self, files: Mapping[str, bytes], directory: str) -> str:
        """Write ``files`` (name -> bytes) into the new directory ``directory`` (relative to the
        login user's home) over SFTP as the login user; returns the directory's absolute path.
        Large files go here rather than through :meth:`put_file`'s ``sudo`` shell (base64)."""
        hint = "does the host run an SFTP subsystem, with space in the user's home?"
        with self._sftp(f"cannot upload to {directory}", hint) as sftp:
            sftp.mkdir(directory, 0o700)
            where = sftp.normalize(directory)
            for name, data in files.items():
                if "/" in name or name in ("", ".", ".."):
                    raise TargetError(f"{self.describe()}: not a plain file name: {name!r}")
                with sftp.open(f"{where}/{name}", "wb") as f:
                    f.set_pipelined(True)
                    f.write(data)
            return where

    def _put_file_sudo(self, data: bytes, remote_path: str, tmp: str, mode: int) -> None:
        """The same through ``sudo -n sh`` (SFTP would write as the unprivileged user)."""
        encoded = base64.b64encode(data).decode("ascii")
        lines = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
        script = (
            f"set -e\numask 077\nbase64 -d > {shlex.quote(tmp)} <<'HARDEN_EOF'\n{lines}\n"
            f"HARDEN_EOF\nchmod {mode:o} {shlex.quote(tmp)}\n"
            f"mv -f {shlex.quote(tmp)} {shlex.quote(remote_path)}\n"
        )
        result = self.run(script, timeout=120)
        if not result.ok:
            err = result.stderr.decode("utf-8", "replace").strip()[-500:]
            raise TargetError(
                f"{self.describe()}: cannot write {remote_path} through sudo: {err}",
                hint="does the user have password-less sudo (sudo -n)?",
            )

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> SshTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connection ------------------------------------------------------------------------------
    def _alive(self) -> bool:
        client = self._client
        transport = client.get_transport() if client else None
        return bool(transport and transport.is_active())

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _transport(self) -> paramiko.Transport:
        if not self._alive():
            self._drop()
            self.connect()
        assert self._client is not None
        transport = self._client.get_transport()
        assert transport is not None
        return transport

    def connect(self) -> None:
        """Open the connection now (``run`` does this on first use)."""
        name = known_hosts_name(self.host, self.port)
        client = paramiko.SSHClient()
        if self.known_hosts is not None:
            try:
                client.load_system_host_keys(str(self.known_hosts))
            except OSError as e:
                raise TargetError(
                    f"cannot read known_hosts file {self.known_hosts}: {e}",
                    hint="pass an existing known_hosts file or pin the host key explicitly",
                ) from e
        pins = sorted(
            (parse_public_key(line) for line in self.pinned_host_keys),
            key=lambda k: (
                _KEY_TYPE_ORDER.index(k.get_name()) if k.get_name() in _KEY_TYPE_ORDER else 99
            ),
        )
        for key in pins:
            client.get_host_keys().add(name, key.get_name(), key)
        policy = _RecordingRejectPolicy(self.accept_new)
        client.set_missing_host_key_policy(policy)
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as e:
            client.close()
            raise TargetError(
                f"cannot reach {self.describe()}: {e}",
                hint="is the host up and is sshd listening on that port?",
            ) from e
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.user,
                key_filename=str(self.key_path) if self.key_path else None,
                look_for_keys=self.key_path is None,
                allow_agent=self.key_path is None,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                sock=sock,
            )
        except paramiko.BadHostKeyException as e:
            client.close()
            sock.close()
            raise HostKeyRejected(
                f"host key of {name} does not match the pinned key: it offered "
                f"{e.key.get_name()} {fingerprint(e.key)}, pinned {e.expected_key.get_name()} "
                f"{fingerprint(e.expected_key)}",
                hint="if the host was really rebuilt, remove the old entry "
                f"(ssh-keygen -R '{name}') and pin the new key after checking its fingerprint "
                "out of band; otherwise someone may be intercepting the connection",
            ) from e
        except paramiko.SSHException as e:
            client.close()
            sock.close()
            if policy.offered is not None and not policy.accept_new:
                key = policy.offered
                raise HostKeyRejected(
                    f"host key of {name} is not known: it offered {key.get_name()} "
                    f"{fingerprint(key)}",
                    hint="check the fingerprint out of band, then pin it (the key line from the "
                    "host's /etc/ssh/ssh_host_*_key.pub or its serial console) or add it to "
                    "known_hosts",
                ) from e
            if isinstance(e, paramiko.AuthenticationException):
                raise TargetError(
                    f"SSH authentication failed for {self.describe()}",
                    hint=f"is the public key of {self.key_path or 'your SSH key'} in the user's "
                    "authorized_keys?",
                ) from e
            raise TargetError(
                f"SSH to {self.describe()} failed: {e}", hint="is sshd running on the host?"
            ) from e
        except (OSError, EOFError) as e:
            client.close()
            sock.close()
            raise TargetError(
                f"SSH to {self.describe()} failed: {e}", hint="is sshd running on the host?"
            ) from e
        transport = client.get_transport()
        assert transport is not None
        self.host_key = transport.get_remote_server_key()
        if policy.accept_new and policy.offered is not None and self.known_hosts is not None:
            _append_known_host(self.known_hosts, name, policy.offered)
        self._client = client


def _append_known_host(path: Path, name: str, key: paramiko.PKey) -> None:
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(line)


def wait_ready(
    make: Callable[[], SshTarget],
    timeout: float,
    interval: float = 0.5,
    *,
    check: Callable[[], None] | None = None,
) -> SshTarget:
    """Poll until a fresh target runs ``true``; readiness is a successful command, not an open port.

    ``check`` is called between attempts and may raise (e.g. the VM died). A rejected host key is
    final and raised at once. Polls no faster than every ``interval`` (>= 0.5 s) seconds.
    """
    interval = max(interval, 0.5)
    deadline = time.monotonic() + timeout
    last: TargetError | None = None
    name = "the target"
    with quiet_paramiko():
        while True:
            started = time.monotonic()
            target = make()
            name = target.describe()
            try:
                if target.run("true", timeout=max(1.0, deadline - started)).ok:
                    return target
            except HostKeyRejected:
                target.close()
                raise
            except TargetError as e:
                last = e
            target.close()
            if check is not None:
                check()
            now = time.monotonic()
            if now >= deadline:
                break
            time.sleep(min(max(0.0, interval - (now - started)), deadline - now))
    raise TargetError(
        f"{name} did not accept SSH commands within {timeout:g} s"
        + (f": {last.message}" if last else ""),
        hint="is sshd running and is the key authorised?",
    )
