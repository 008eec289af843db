"""Demo helper: copy the golden image to demo/tampered and attach its compliance attestation with
the payload edited after signing (a FAILED result rewritten to look PASSED would look the same).

Usage: python scripts/demo_tamper.py SRC-REF DST-REF
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys

from harden.attest import store
from harden.oci import RegistryClient, parse_reference
from harden.oci.model import copy_image, resolve


def main(src_text: str, dst_text: str) -> None:
    src, dst = parse_reference(src_text), parse_reference(dst_text)
    client = RegistryClient.for_reference(src)
    manifest = resolve(client, src)
    # the image itself, byte for byte, without its attestations
    copy_image(client, src.repository, manifest.digest, client, dst.repository,
               tag=dst.tag, with_referrers=False)
    fetched = store.fetch_envelopes(client, src.repository, manifest.digest)
    for _label, raw in fetched.envelopes:
        env = json.loads(raw)
        statement = json.loads(base64.b64decode(env["payload"]))
        if "compliance" not in statement["predicateType"]:
            continue
        statement["predicate"]["validUntil"] = "2099-01-01T00:00:00Z"  # edited after signing
        env["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
        store.attach(client, dst.repository, manifest.descriptor(), json.dumps(env).encode(),
                     statement["predicateType"], dt.datetime.now(dt.UTC))
        print(f"attached a tampered compliance attestation to {dst_text}", file=sys.stderr)
        return
    raise SystemExit("no compliance attestation found on the source image")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
