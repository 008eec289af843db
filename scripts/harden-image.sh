#!/bin/sh
# Build the harden container image from this checkout: the wheel, a wheelhouse of its
# dependencies (from this machine's pip configuration), then `docker build` (network host only
# so apt reaches the mirror the base image's sources name).
#   scripts/harden-image.sh [TAG] [extra docker build args...]
set -eu
cd "$(dirname "$0")/.."
tag=${1:-harden:dev}
[ $# -gt 0 ] && shift
rm -rf dist/wheelhouse
python3 -m build --wheel --outdir dist/wheelhouse . >/dev/null
python3 -m pip wheel --quiet --wheel-dir dist/wheelhouse dist/wheelhouse/harden_golden-*.whl
exec docker build --network host -t "$tag" "$@" .
