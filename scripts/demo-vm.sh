#!/usr/bin/env bash
# The VM half of the mission (make demo-vm, about 3 minutes under TCG emulation):
# the base template fails debian-vm; harden builds, verifies and seals a hardened template;
# a throwaway clone of the sealed file verifies compliant.
set -euo pipefail
cd "$(dirname "$0")/.."
export HARDEN_HOME=${HARDEN_HOME:-$PWD/.demo/home}
TEMPLATES=${HARDEN_TEMPLATES:-/var/cache/harden/templates}
mkdir -p "$HARDEN_HOME"
export HARDEN_KEY_PASSWORD=${HARDEN_KEY_PASSWORD:-demo}
KEY="$HARDEN_HOME/demo-signing"
say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

say "verify the base VM template against debian-vm (expected: NOT compliant)"
set +e
harden verify /var/cache/harden/vm/current/base.qcow2 --format json -o "$HARDEN_HOME/vm-base-report.json"
rc=$?
set -e
if [ "$rc" -ne 1 ]; then echo "demo-vm: expected the base template to be non-compliant, got $rc" >&2; exit 1; fi

say "build the hardened template (boot, remediate over SSH, seal, verify a booted clone),"
say "sign it and push it as an OCI artifact to 127.0.0.1:5000/staging/debian12-vm"
if [ ! -f "$KEY.key" ]; then harden keygen --out "$KEY"; rm -f "$HARDEN_HOME/revocations-ref"; fi
# the signed revocation list the gate requires (harden revocations): one per demo key
if [ ! -f "$HARDEN_HOME/revocations-ref" ]; then
  echo "127.0.0.1:5000/demo/revocations-$(od -An -N4 -tx4 /dev/urandom | tr -d ' '):current" \
    >"$HARDEN_HOME/revocations-ref"
fi
export HARDEN_REVOCATIONS="$(cat "$HARDEN_HOME/revocations-ref")"
harden revocations refresh 127.0.0.1:5000 --key "file:$KEY.key" 2>/dev/null \
  || harden revocations init 127.0.0.1:5000 --key "file:$KEY.key"
harden build images/debian12-vm.yaml --force --key "file:$KEY.key"

say "verify the sealed template from scratch, with the definition's waivers (expected: compliant)"
harden verify "$TEMPLATES/debian12-vm.qcow2" --definition images/debian12-vm.yaml >/dev/null
say "its attestations verify; the gate promotes it like a container image"
harden attestation verify 127.0.0.1:5000/staging/debian12-vm:latest --key "$KEY.pub"
harden promote 127.0.0.1:5000/staging/debian12-vm:latest 127.0.0.1:5000/prod/debian12-vm:latest \
  --key "$KEY.pub"
say "demo-vm finished: base template NOT compliant; sealed template compliant, signed, promoted"
