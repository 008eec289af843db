"""harden's real client and CLI against a hostile registry (tests/integration/hostile_registry.py).

Each attack must end in a typed error (exit 3 for a registry answer no healthy registry gives,
4 for one that breaks the exchange), in bounded time (the subprocess timeout is the bound; the
operation deadline is set to 3 s), in bounded memory, and with one ``error:`` line, no traceback.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hostile_registry import HostileRegistry

from harden.errors import ExitCode
from harden.oci import RegistryClient, copy_image
from harden.oci.client import RegistryProtocolError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = "3"
MAX_RSS_MB = 150

# attack -> the exit code it must end with
ATTACKS = {
    "link-loop": ExitCode.INVALID_INPUT,
    "endless-pages": ExitCode.INVALID_INPUT,
    "many-referrers": ExitCode.INVALID_INPUT,
    "trickle": ExitCode.ENVIRONMENT,
    "redirect-loop": ExitCode.ENVIRONMENT,
    "cut-short": ExitCode.ENVIRONMENT,
    "token-redirect": ExitCode.ENVIRONMENT,
}


@pytest.fixture
def hostile() -> Iterator[HostileRegistry]:
    server = HostileRegistry()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile-keys")
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "from harden.cli import main; main()",
            "keygen",
            "--out",
            str(d / "k"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HARDEN_HOME": str(d / "home"), "HARDEN_KEY_PASSWORD": "pw"},
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return d / "k.pub"


# The peak RSS is measured by a small probe process that starts harden and reads its own
# RUSAGE_CHILDREN: a child forked straight from pytest starts with pytest's resident pages counted
# in its ru_maxrss (hundreds of MB late in a full run), which would measure pytest, not harden.
PROBE = (
    "import os, resource, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execv(sys.argv[2], sys.argv[2:])\n"
    "_, status = os.waitpid(pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_measured(args: list[str], home: Path) -> tuple[int, str, str, float]:
    """``harden ARGS`` as a child process: exit code, stdout, stderr and its peak RSS in MB."""
    env = {
        **os.environ,
        "HARDEN_HOME": str(home),
        "HARDEN_REGISTRY_DEADLINE": DEADLINE,
        "HARDEN_REGISTRY_READ_TIMEOUT": DEADLINE,
    }
    out, err, rss = home / "stdout", home / "stderr", home / "maxrss-kb"
    home.mkdir(parents=True, exist_ok=True)
    with out.open("w") as o, err.open("w") as e:
        code = subprocess.run(
            [
                sys.executable,
                "-c",
                PROBE,
                str(rss),
                sys.executable,
                "-c",
                "from harden.cli import main; main()",
                *args,
            ],
            stdout=o,
            stderr=e,
            env=env,
            cwd=ROOT,
            check=False,
        ).returncode
    return code, out.read_text(), err.read_text(), int(rss.read_text()) / 1024


def _definition(d: Path, ref: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "evil.yaml").write_text(
        f"name: evil\nbase: {ref}\ntarget: container\nbaseline:\n  id: debian-container\n"
        f"destination: {ref}\nmax_age: 30d\n"
    )
    return d


@pytest.mark.parametrize("command", ["promote", "attestation-verify", "status"])
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_ends_in_a_typed_error_without_traceback(
    hostile: HostileRegistry, keys: Path, tmp_path: Path, attack: str, command: str
) -> None:
    hostile.mode = attack
    dst = f"{hostile.host}/evil/prod-{uuid.uuid4().hex[:6]}:v1"
    args = {
        "promote": ["promote", hostile.ref, dst, "--key", str(keys)],
        "attestation-verify": ["attestation", "verify", hostile.ref, "--key", str(keys)],
        "status": [
            "status",
            str(_definition(tmp_path / "images", hostile.ref)),
            "--key",
            str(keys),
        ],
    }[command]
    if command == "status" and ATTACKS[attack] == ExitCode.INVALID_INPUT:
        # status reports every image; bad registry content makes that image's state unknown
        expected = {ExitCode.INVALID_INPUT, ExitCode.ENVIRONMENT}
    else:
        expected = {ATTACKS[attack]}
    code, out, err, rss = run_measured(args, tmp_path / "home")
    assert code in expected, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert "error:" in err or (command == "status" and "unknown" in out), err
    assert rss < MAX_RSS_MB, f"{rss:.0f} MB"


def test_trickling_server_is_cut_at_the_deadline_and_hint_names_the_option(
    hostile: HostileRegistry, keys: Path, tmp_path: Path
) -> None:
    hostile.mode = "trickle"
    code, _, err, _ = run_measured(
        ["attestation", "verify", hostile.ref, "--key", str(keys)], tmp_path / "home"
    )
    assert code == ExitCode.ENVIRONMENT
    assert "did not finish within 3 s" in err
    assert "HARDEN_REGISTRY_DEADLINE" in err  # the option the hint names exists (read above)


def test_pagination_loop_is_detected_not_followed(hostile: HostileRegistry, tmp_path: Path) -> None:
    hostile.mode = "link-loop"
    client = RegistryClient(hostile.host, deadline=30)
    with pytest.raises(RegistryProtocolError, match="pagination loops"):
        client.referrers_api("evil/app", hostile.digest)
    # page 1 (no query), ?page=2, ?page=1: the next link back to ?page=2 is refused unread
    assert sum(1 for _, p in hostile.requests if "/referrers/" in p) == 3


def test_endless_pages_and_many_referrers_are_capped(hostile: HostileRegistry) -> None:
    from harden.oci.client import MAX_REFERRER_PAGES

    client = RegistryClient(hostile.host, deadline=30)
    hostile.mode = "endless-pages"
    with pytest.raises(RegistryProtocolError, match="more than"):
        client.referrers_api("evil/app", hostile.digest)
    assert sum(1 for _, p in hostile.requests if "/referrers/" in p) == MAX_REFERRER_PAGES
    hostile.mode = "many-referrers"
    hostile.requests.clear()
    with pytest.raises(RegistryProtocolError, match="more than 1000 referrers"):
        client.referrers_api("evil/app", hostile.digest)
    assert not any("/manifests/sha256" in p for _, p in hostile.requests)  # none fetched


def test_oversized_blob_is_cut_at_its_size_and_the_destination_upload_cancelled(
    hostile: HostileRegistry, local_registry: RegistryClient
) -> None:
    hostile.mode = "oversized-blob"
    locations: list[str] = []
    deletes: list[str] = []

    def hook(response: requests.Response, *args: object, **kwargs: object) -> None:
        if response.request.method in ("POST", "PATCH") and "Location" in response.headers:
            locations.append(response.headers["Location"])
        if response.request.method == "DELETE":
            deletes.append(str(response.request.url))

    session = requests.Session()
    session.hooks["response"].append(hook)
    dst = RegistryClient(local_registry.registry, session=session, max_retries=1)
    src = RegistryClient(hostile.host, deadline=60)
    repo = f"harden-test/hostile-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RegistryProtocolError, match="more than the descriptor's"):
        copy_image(src, "evil/app", hostile.digest, dst, repo, tag="v1", with_referrers=False)
    # cut off within the first read chunks, far from the 400 MiB the server would send
    assert hostile.sent_blob_bytes < 64 << 20
    # the upload was cancelled at its current URL (after the PATCHes, not the first Location)
    assert deletes, "the destination upload was not cancelled"
    current = locations[-1]
    assert deletes[-1].split("?")[0].endswith(current.split("?")[0].split("/v2/", 1)[1])
    status = requests.get(
        f"http://{local_registry.registry}/v2/{current.split('/v2/', 1)[1]}", timeout=10
    )
    assert status.status_code == 404
    assert dst.head_manifest(repo, "v1") is None


def test_rusage_module_is_available() -> None:
    # run_measured relies on wait4's rusage (Linux): make a missing one fail loudly here
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss >= 0
