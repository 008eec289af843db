#!/usr/bin/env bash
# Score a VM template (qcow2) with OpenSCAP and the SSG Debian 12 content, offline, as root.
#
#   scripts/vm-oscap.sh TEMPLATE.qcow2 OUTDIR [PROFILE...]   (default: the four ANSSI-BP28 levels)
#
# The disk is converted to a private sparse raw file; each ext4 file system of its partition table
# is loop-mounted read-only (ro,noload) at the mount point the template's own /etc/fstab names; a
# whole-disk file system is the root. (`debugfs rdump` would avoid the mounts but drops setuid and
# sticky bits, which several rules judge.)
# `oscap-chroot` then evaluates that tree. Two things a tree cannot show are supplied:
#   - ROOT/proc/mounts is written from the template's fstab, so OpenSCAP's partition probe sees
#     the file systems (and options) the template mounts at boot (harden checks the options in
#     force on the booted clone);
#   - APT_CONFIG points dpkginfo at the tree's dpkg status (else every package rule is wrong).
# Per profile: OUTDIR/<profile>.arf.xml and a line "<profile> <score> <pass> <fail> ..." on stdout,
# where score = pass / (pass + fail) over the rules OpenSCAP can judge on files: kernel_config_*
# (kernel build options) and sysctl_* (the probe reads the scanning host's running kernel) are
# left out, as issue 11 asks. OUTDIR/<profile>.failed lists the failing rules left in the score.
set -euo pipefail
DS=${HARDEN_SSG_DS:-/usr/share/harden/ssg/ssg-debian12-ds.xml}
[ "$#" -ge 2 ] || { echo "usage: $0 TEMPLATE.qcow2 OUTDIR [PROFILE...]" >&2; exit 2; }
TEMPLATE=$1
OUTDIR=$2
shift 2
PROFILES=("$@")
[ "${#PROFILES[@]}" -gt 0 ] || PROFILES=(anssi_bp28_minimal anssi_bp28_intermediary anssi_bp28_enhanced anssi_bp28_high)
[ "$(id -u)" = 0 ] || { echo "error: $0 must run as root (loop mounts)" >&2; exit 4; }
for tool in oscap-chroot qemu-img sfdisk python3; do
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
off() { awk -v n="$1" '$1 == n { print "offset=" $2 ",sizelimit=" $3 }' "$WORK/parts"; }
# read-only loop mounts of a private copy (debugfs rdump would drop setuid and sticky bits)
mountfs() { mount -t ext4 -o "ro,noload,nodev,nosuid,noexec,loop,$1" "$WORK/disk.raw" "$2"; }
cleanup() { umount -R "$ROOT" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
mountfs "$(off 1)" "$ROOT"
: >"$WORK/mounts"
# the template's fstab: /dev/vdaN (partition N) at a mount point, parents before children
if [ -f "$ROOT/etc/fstab" ]; then
  awk '$1 !~ /^#/ && NF >= 4 { print }' "$ROOT/etc/fstab" | sort -k2,2 >"$WORK/fstab"
  while read -r dev mp fstype opts _rest; do
    case "$dev" in
      /dev/vda[0-9]*)
        n=${dev#/dev/vda}
        [ "$mp" = / ] || mountfs "$(off "$n")" "$ROOT$mp"
        printf '%s %s %s %s 0 0\n' "$dev" "$mp" "$fstype" "$opts" >>"$WORK/mounts" ;;
      tmpfs) printf 'tmpfs %s tmpfs %s 0 0\n' "$mp" "$opts" >>"$WORK/mounts" ;;
      /dev/vda) printf '/dev/vda / %s %s 0 0\n' "$fstype" "$opts" >>"$WORK/mounts" ;;
    esac
  done <"$WORK/fstab"
fi
# ROOT/proc: a small tmpfs with the mounts the template makes at boot, and apt's cache
mount -t tmpfs -o size=64m,mode=0755 harden-oscap-proc "$ROOT/proc"
cp "$WORK/mounts" "$ROOT/proc/mounts"
mkdir -p "$ROOT/proc/.harden-apt-cache"

# dpkginfo (libapt) prepends the probe root to these paths; naming the architectures keeps apt
# from running the template's own dpkg, and the empty parts keep the host's apt.conf.d out
# (the same configuration as builder/openscap.py of the scan work)
cat >"$WORK/apt.conf" <<EOF
Dir::State::status "/var/lib/dpkg/status";
Dir::Etc::SourceList "";
Dir::Etc::SourceParts "";
Dir::Etc::Parts "";
Dir::Etc::Main "";
Dir::Etc::Preferences "";
Dir::Etc::PreferencesParts "";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
Dir::Cache "/proc/.harden-apt-cache";
EOF
for profile in "${PROFILES[@]}"; do
  APT_CONFIG="$WORK/apt.conf" oscap-chroot "$ROOT" xccdf eval \
    --profile "xccdf_org.ssgproject.content_profile_$profile" \
    --results-arf "$OUTDIR/$profile.arf.xml" "$DS" >"$OUTDIR/$profile.log" 2>&1 || true
  if grep -q 'dpkginfo_init has failed' "$OUTDIR/$profile.log"; then
    echo "error: dpkginfo could not read the template's package database" >&2; exit 4
  fi
  python3 - "$OUTDIR/$profile.arf.xml" "$profile" "$OUTDIR/$profile.failed" <<'PY'
import re, sys, xml.etree.ElementTree as ET
arf, profile, failed_out = sys.argv[1:]
ns = "{http://checklists.nist.gov/xccdf/1.2}"
counts = {}
failed = []
excluded = 0
for rr in ET.parse(arf).getroot().iter(ns + "rule-result"):
    rid = rr.get("idref").replace("xccdf_org.ssgproject.content_rule_", "")
    res = rr.find(ns + "result").text
    if res == "notselected":
        continue
    if re.match(r"^(kernel_config_|sysctl_)", rid):
        excluded += 1
        continue
    counts[res] = counts.get(res, 0) + 1
    if res == "fail":
        failed.append(rid)
p, f = counts.get("pass", 0), counts.get("fail", 0)
score = 100.0 * p / (p + f) if p + f else 0.0
with open(failed_out, "w") as fh:
    fh.write("\n".join(sorted(failed)) + "\n")
rest = " ".join(f"{k}={v}" for k, v in sorted(counts.items()) if k not in ("pass", "fail"))
print(f"{profile} {score:.1f} pass={p} fail={f} {rest} excluded(kernel_config_,sysctl_)={excluded}")
PY
done
