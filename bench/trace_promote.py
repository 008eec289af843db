"""Which HTTP requests one `harden promote` makes, in what order, on which thread, how long each
took (``python3 -m bench.trace_promote [RUNS]``, from the repository root, registry on
127.0.0.1:5000). Not a benchmark (`make bench` does not run it): a tool to see the critical
path. Builds (or reuses) the same golden image as bench_promote, promotes it RUNS times to fresh
repositories and prints the timeline of the last run; digests are shortened to 8 hex digits.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.bench_promote import REGISTRY, _golden
from harden.attest import revlist
from harden.attest.keys import load_public_key, load_signer
from harden.audit import AuditLog
from harden.clock import SystemClock
from harden.oci import RegistryClient, parse_reference
from harden.oci import client as raw
from harden.promote import promote

Event = tuple[float, float, str, str, str, int]


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    events: list[Event] = []
    start = [0.0]
    send = raw.RegistryClient._send

    def traced(self: raw.RegistryClient, method: str, url: str, what: str, **kw: Any) -> Any:
        t0 = time.perf_counter()
        response = send(self, method, url, what, **kw)
        name = threading.current_thread().name
        events.append((t0 - start[0], time.perf_counter() - start[0], name, method, url, 0))
        events[-1] = (*events[-1][:5], response.status_code)
        return response

    raw.RegistryClient._send = traced  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(prefix="harden-trace-promote-") as tmp:
        home = Path(tmp)
        os.environ["HARDEN_HOME"] = str(home)
        src, pub = _golden(home)
        location = f"{REGISTRY}/bench/revocations-{uuid.uuid4().hex[:8]}:current"
        os.environ[revlist.LOCATION_ENV] = location
        clock = SystemClock()
        signer = load_signer(f"file:{home / 'bench.key'}", b"bench")
        revlist.init(RegistryClient(REGISTRY), parse_reference(location), signer, clock.now())
        audit = AuditLog(home / "audit.db", clock)
        trusted = [load_public_key(pub)]
        for n in range(runs):
            events.clear()
            dst = parse_reference(f"{REGISTRY}/bench/trace/{uuid.uuid4().hex[:8]}:latest")
            client = RegistryClient(REGISTRY)
            cpu = time.process_time()
            start[0] = time.perf_counter()
            result = promote(
                client,
                parse_reference(src),
                client,
                dst,
                trusted,
                clock,
                audit,
                max_age=dt.timedelta(days=30),
            )
            wall = time.perf_counter() - start[0]
            assert result.allowed and result.copied, result.decision.reasons
            print(
                f"run {n}: {wall * 1000:.1f} ms, cpu {(time.process_time() - cpu) * 1000:.1f} ms,"
                f" {len(events)} requests"
            )
    print("  start     end   took thread             request")
    for began, ended, name, method, url, status in sorted(events):
        path = url.split("/v2/", 1)[-1]
        path = re.sub(r"sha256([:-]|%3A)([0-9a-f]{8})[0-9a-f]{56}", r"\2", path)
        path = re.sub(r"_state=[^&]*", "_state=..", path)
        print(
            f"{began * 1000:7.1f} {ended * 1000:7.1f} {(ended - began) * 1000:6.1f} "
            f"{name[:18]:18} {method:6} {status} {path[:90]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
