#!/usr/bin/env bash
# The main job end to end on the embedded defaults (make demo):
# services -> the base fails the baseline -> build a hardened Debian 12 image -> it passes.
set -euo pipefail
cd "$(dirname "$0")/.."
export HARDEN_HOME=${HARDEN_HOME:-$PWD/.demo/home}
mkdir -p "$HARDEN_HOME"
say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

say "baselines shipped with harden"
harden baseline list

say "verify the base image debian:12 as images/debian12.yaml asks: ANSSI-BP-028 high + the team's testinfra suite (expected: NOT compliant)"
set +e
harden verify 127.0.0.1:5000/library/debian:12 --definition images/debian12.yaml --format json \
  -o "$HARDEN_HOME/base-report.json"
rc=$?
set -e
if [ "$rc" -ne 1 ]; then echo "demo: expected the base to be non-compliant (exit 1), got $rc" >&2; exit 1; fi
python3 - "$HARDEN_HOME/base-report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
failed = [x["rule_id"] for x in r["results"] if x["status"] == "failed"]
print(f"base: compliant={r['compliant']} failed={len(failed)}: {', '.join(failed)}", file=sys.stderr)
tests = [x for x in r["results"] if x["kind"] == "testinfra"]
for t in tests:
    print(f"  test {t['rule_id']}: {t['status']}", file=sys.stderr)
PY

say "build, verify and push the hardened image (images/debian12.yaml)"
export HARDEN_KEY_PASSWORD=${HARDEN_KEY_PASSWORD:-demo}
KEY="$HARDEN_HOME/demo-signing"
if [ ! -f "$KEY.key" ]; then harden keygen --out "$KEY"; fi
harden build images/debian12.yaml --force --key "file:$KEY.key" --scan

say "verify the pushed golden image from its layers, nothing in it runs (expected: compliant, suites pass)"
harden verify 127.0.0.1:5000/staging/debian12-hardened:latest --definition images/debian12.yaml >/dev/null

say "the hardened image still works"
docker run --rm --network none 127.0.0.1:5000/staging/debian12-hardened:latest \
  sh -c 'echo "running as $(id -un), umask $(umask)"; ls /bin/bash >/dev/null && echo "shell ok"'

say "its signed attestations (provenance, test-result, compliance) verify with the public key"
harden attestation verify 127.0.0.1:5000/staging/debian12-hardened:latest --key "$KEY.pub"

say "promote staging -> prod through the gate (expected: allowed, same digest)"
harden promote 127.0.0.1:5000/staging/debian12-hardened:latest \
  127.0.0.1:5000/prod/debian12-hardened:latest --key "$KEY.pub"

say "attest the NON-compliant base image, then try to promote it (expected: DENIED, exit 1)"
harden attest 127.0.0.1:5000/library/debian:12 --key "file:$KEY.key" >/dev/null
set +e
harden promote 127.0.0.1:5000/library/debian:12 127.0.0.1:5000/prod/debian:12 --key "$KEY.pub"
rc=$?
set -e
if [ "$rc" -ne 1 ]; then echo "demo: expected the gate to deny the base (exit 1), got $rc" >&2; exit 1; fi

say "a tampered copy: the golden image with its compliance attestation edited after signing (expected: DENIED)"
python3 scripts/demo_tamper.py 127.0.0.1:5000/staging/debian12-hardened:latest \
  127.0.0.1:5000/demo/tampered:latest
set +e
harden promote 127.0.0.1:5000/demo/tampered:latest 127.0.0.1:5000/prod/tampered:latest --key "$KEY.pub"
rc=$?
set -e
if [ "$rc" -ne 1 ]; then echo "demo: expected the gate to deny the tampered copy (exit 1), got $rc" >&2; exit 1; fi

say "freshness of every golden image (images/)"
harden status images --key "$KEY.pub" || true

say "the auditor's evidence bundle for ISO 27017 CLD.9.5.2"
harden evidence images --key "$KEY.pub" -o "$HARDEN_HOME/evidence" >/dev/null
echo "evidence bundle: $HARDEN_HOME/evidence/index.html" >&2
harden audit verify

say "demo finished: base NOT compliant and refused; tampered copy refused; golden image compliant, signed, promoted"
