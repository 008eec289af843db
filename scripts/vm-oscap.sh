#!/usr/bin/env bash
# Score a VM template (qcow2) with OpenSCAP and the SSG Debian 12 content, offline, as root.
#
#   scripts/vm-oscap.sh TEMPLATE.qcow2 OUTDIR [PROFILE...]   (default: the four ANSSI-BP28 levels)
#
# The disk is converted to a private sparse raw file; each ext4 file system of its partition table
# is mounted read-only (from a loop device of the copy, journal replayed) at the mount point the
# template's own /etc/fstab names; a whole-disk file system is the root. (`debugfs rdump` would
# avoid the mounts but drops setuid and sticky bits, which several rules judge.)
# `oscap-chroot` then evaluates that tree, run by harden's OpenSCAP adapter (builder/openscap.py).
# Two things a tree cannot show are supplied:
#   - ROOT/proc/mounts is written from the template's fstab, so OpenSCAP's partition probe sees
#     the file systems (and options) the template mounts at boot (harden checks the options in
#     force on the booted clone);
#   - APT_CONFIG points dpkginfo at the tree's dpkg status (else every package rule is wrong),
#     with libapt's cache on a tmpfs at ROOT/proc.
# Per profile: OUTDIR/<profile>.arf.xml, .json, .log and a line
# "<profile> <pass/(pass+fail)> pass= fail= <other results> score=<harden's score>" on stdout.
# Both scores leave out kernel_config_* (kernel build options) and sysctl_* (the probe reads the
# scanning host's running kernel), as issue 11 asks; harden's score (`harden build --scan`) also
# counts error and unknown against. OUTDIR/<profile>.failed lists the file-judged rules that
# fail, error or are unknown.
set -euo pipefail
DS=${HARDEN_SSG_DS:-/usr/share/harden/ssg/ssg-debian12-ds.xml}
[ "$#" -ge 2 ] || { echo "usage: $0 TEMPLATE.qcow2 OUTDIR [PROFILE...]" >&2; exit 2; }
TEMPLATE=$1
OUTDIR=$2
shift 2
PROFILES=("$@")
[ "${#PROFILES[@]}" -gt 0 ] || PROFILES=(anssi_bp28_minimal anssi_bp28_intermediary anssi_bp28_enhanced anssi_bp28_high)
[ "$(id -u)" = 0 ] || { echo "error: $0 must run as root (loop mounts)" >&2; exit 4; }
for tool in oscap-chroot qemu-img sfdisk losetup dumpe2fs python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; echo "hint: scripts/openscap.sh; apt-get install fdisk" >&2; exit 4; }
done
[ -s "$DS" ] || { echo "error: no SSG content at $DS" >&2; echo "hint: sudo scripts/openscap.sh" >&2; exit 4; }
mkdir -p "$OUTDIR"
WORK=$(mktemp -d /var/tmp/harden-vm-oscap.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/root"
mkdir -p "$ROOT"

qemu-img convert -O raw "$TEMPLATE" "$WORK/disk.raw"
# partition number -> byte offset and size (no table: one whole-disk file system)
if sfdisk -J "$WORK/disk.raw" >"$WORK/table.json" 2>/dev/null; then
  python3 - "$WORK/table.json" >"$WORK/parts" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["partitiontable"]
for p in t["partitions"]:
    n = p["node"].rsplit("raw", 1)[1]
    sector = t.get("sectorsize", 512)
    print(n, p["start"] * sector, p["size"] * sector)
PY
else
  echo "1 0 $(stat -c %s "$WORK/disk.raw")" >"$WORK/parts"
fi
# read-only mounts of a private copy (debugfs rdump would drop setuid and sticky bits). The loop
# devices are writable and the mounts do replay the ext4 journal: a template powered off
# uncleanly (the build kills a VM that does not power off in time) has committed changes only
# in its journal, and `noload` would show the file systems without them (a stale or torn
# /var/lib/dpkg/status among them). The copy is private, the template is never written.
LOOPS=()
mountfs() {
  local dev
  dev=$(awk -v n="$1" -v f="$WORK/disk.raw" '$1 == n { print "-o", $2, "--sizelimit", $3, f }' "$WORK/parts" \
    | xargs losetup -f --show)
  LOOPS+=("$dev")
  if dumpe2fs -h "$dev" 2>/dev/null | grep -q '^Filesystem features:.*needs_recovery'; then
    echo "warning: partition $1 was not unmounted cleanly: its journal is replayed in the private copy" >&2
  fi
  mount -t ext4 -o ro,nodev,nosuid,noexec "$dev" "$2"
}
cleanup() {
  umount -R "$ROOT" 2>/dev/null || true
  for dev in "${LOOPS[@]}"; do losetup -d "$dev" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
mountfs 1 "$ROOT"
: >"$WORK/mounts"
# the template's fstab: /dev/vdaN (partition N) at a mount point, parents before children
if [ -f "$ROOT/etc/fstab" ]; then
  awk '$1 !~ /^#/ && NF >= 4 { print }' "$ROOT/etc/fstab" | LC_ALL=C sort -k2,2 >"$WORK/fstab"
  while read -r dev mp fstype opts _rest; do
    case "$dev" in
      /dev/vda[0-9]*)
        n=${dev#/dev/vda}
        case "$n" in *[!0-9]*) continue ;; esac
        if [ "$mp" != / ]; then
          # the template's fstab is input: a mount point stays inside the tree (no .., no symlink)
          case "$mp" in *..* | *[!A-Za-z0-9_/.-]*) echo "error: fstab mount point $mp" >&2; exit 3 ;; esac
          [ "$(realpath -e "$ROOT$mp")" = "$ROOT$mp" ] || { echo "error: fstab mount point $mp is not a directory of the tree" >&2; exit 3; }
          mountfs "$n" "$ROOT$mp"
        fi
        printf '%s %s %s %s 0 0\n' "$dev" "$mp" "$fstype" "$opts" >>"$WORK/mounts" ;;
      tmpfs) printf 'tmpfs %s tmpfs %s 0 0\n' "$mp" "$opts" >>"$WORK/mounts" ;;
      /dev/vda) printf '/dev/vda / %s %s 0 0\n' "$fstype" "$opts" >>"$WORK/mounts" ;;
    esac
  done <"$WORK/fstab"
fi
# ROOT/proc: a small tmpfs with the mounts the template makes at boot, and libapt's cache
mount -t tmpfs -o size=64m,mode=0755 harden-oscap-proc "$ROOT/proc"
cp "$WORK/mounts" "$ROOT/proc/mounts"

# the scan itself is harden's OpenSCAP adapter (builder/openscap.py, as `harden build --scan`):
# the same apt.conf for the dpkginfo probe (paths relative to the probe root, named
# architectures so the template's dpkg never runs, no host apt.conf.d), the same refusal of a
# failed dpkginfo probe (exit 4, apt's own error lines in the hint), the same bounds and score
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HARDEN_SSG_DIR="$(dirname "$DS")" \
  python3 -m harden.builder.openscap "$ROOT" "$OUTDIR" "${PROFILES[@]}"
