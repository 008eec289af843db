"""Promotion benchmark: `harden promote` within one registry vs `skopeo copy --all` of the same
image, interleaved, fresh destination repositories each time (target, issue #15: harden within
1.5x of skopeo, with the gate's extra reads). Each promotion gets a new registry client, as the
CLI does: nothing read by an earlier run (manifests, the registry's lack of a referrers API) is
reused.

harden does more work than skopeo here (it reads and verifies every attestation and evaluates
the gate, then copies the image *and* its referrers); it wins back time by mounting blobs
within the registry instead of streaming them.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import tempfile
import uuid
from pathlib import Path

from bench.common import Result, interleaved
from harden.attest.keys import KeyType, keygen, load_public_key
from harden.audit import AuditLog
from harden.clock import SystemClock
from harden.oci import RegistryClient, parse_reference
from harden.promote import promote

REGISTRY = "127.0.0.1:5000"
DEFINITION = Path(__file__).resolve().parents[1] / "images" / "debian12.yaml"
REPEAT = 5  # the machine is shared: medians of 5, interleaved


def _golden(home: Path) -> tuple[str, Path]:
    """Build (or reuse) the debian12 golden image into a bench repo, signed with a fresh key."""
    import json
    import sys

    key, pub = keygen(KeyType.ECDSA_P256, home / "bench", b"bench")
    definition = home / "golden.yaml"
    # a fresh source repository per run: attestations of earlier runs would pile up on the
    # same digest (a reused build) and make every later run copy more referrers
    src = f"{REGISTRY}/bench/promote-src-{uuid.uuid4().hex[:8]}:latest"
    definition.write_text(
        json.dumps(
            {
                "name": "bench-promote",
                "base": f"{REGISTRY}/library/debian:12",
                "target": "container",
                "baseline": {"id": "debian-container"},
                "destination": src,
                "max_age": "30d",
            }
        )
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from harden.cli import main; main()",
            "build",
            str(definition),
            "--key",
            f"file:{key}",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "HARDEN_HOME": str(home), "HARDEN_KEY_PASSWORD": "bench"},
        timeout=1800,
    )
    return src, pub


def run() -> list[Result]:
    from harden.attest import revlist
    from harden.attest.keys import load_signer

    with tempfile.TemporaryDirectory(prefix="harden-bench-promote-") as tmp:
        home = Path(tmp)
        src, pub = _golden(home)
        trusted = [load_public_key(pub)]
        client = RegistryClient(REGISTRY)
        clock = SystemClock()
        # the gate requires a signed revocation list: one of this run's own
        location = f"{REGISTRY}/bench/revocations-{uuid.uuid4().hex[:8]}:current"
        os.environ[revlist.LOCATION_ENV] = location
        os.environ["HARDEN_HOME"] = str(home)
        signer = load_signer(f"file:{home / 'bench.key'}", b"bench")
        revlist.init(client, parse_reference(location), signer, clock.now())
        audit = AuditLog(home / "audit.db", clock)
        src_ref = parse_reference(src)
        run_id = uuid.uuid4().hex[:8]
        counter = iter(range(1000))

        def harden_promote() -> None:
            dst = parse_reference(f"{REGISTRY}/bench/{run_id}/harden-{next(counter)}:latest")
            fresh = RegistryClient(REGISTRY)
            result = promote(
                fresh,
                src_ref,
                fresh,
                dst,
                trusted,
                clock,
                audit,
                max_age=dt.timedelta(days=30),
            )
            assert result.allowed and result.copied, result.decision.reasons

        def skopeo_copy() -> None:
            dst = f"docker://{REGISTRY}/bench/{run_id}/skopeo-{next(counter)}:latest"
            subprocess.run(
                [
                    "skopeo",
                    "copy",
                    "--all",
                    "--src-tls-verify=false",
                    "--dest-tls-verify=false",
                    f"docker://{src}",
                    dst,
                ],
                check=True,
                capture_output=True,
                timeout=600,
            )

        h, s = interleaved(harden_promote, skopeo_copy, REPEAT)
    ratio = h / s
    return [
        Result(
            name="promote (gate + copy, one registry)",
            harden_s=h,
            baseline_name="skopeo copy --all",
            baseline_s=s,
            target="<= 1.5x",
            met=ratio <= 1.5,
            note="harden also verifies every attestation and copies the referrers",
        )
    ]
