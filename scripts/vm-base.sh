#!/usr/bin/env bash
# Build (idempotently, as root) harden's base VM template from Debian packages only.
#
#   scripts/vm-base.sh [--out DIR]
#
# DIR (default ${HARDEN_CACHE:-/var/cache/harden}/vm) holds one folder per template, named by the
# sha256 of the inputs (this script's text, the suite, the package list, the public build key):
#   DIR/<key>/base.qcow2      whole-disk ext4 (root=/dev/vda), no SSH host keys, empty machine-id
#   DIR/<key>/vmlinuz, initrd.img   for direct kernel boot
#   DIR/<key>/id_ed25519(.pub)      the harden-managed build key (root's authorized_keys), 0600
#   DIR/<key>/manifest.json         paths, sha256 of base.qcow2, created (RFC 3339, UTC)
#   DIR/current -> <key>
# A second run with the same inputs is instant. The path of manifest.json goes to stdout, progress
# to stderr. The build key itself lives in DIR/build-key/ and is made once.
#
# Each boot prints the guest's SSH host keys to the serial console between
#   -----BEGIN SSH HOST KEY KEYS----- / -----END SSH HOST KEY KEYS-----
# (generated with `ssh-keygen -A` when missing); harden pins the key it reads from that local file.
set -euo pipefail

SUITE=bookworm
MIRROR=$("$(dirname "$0")/apt-mirror.sh")
# libpam-pwquality, auditd, audispd-plugins, apparmor and systemd-timesyncd are required by
# baselines/debian-vm.yaml; a VM has no network at build time, so they must be in the base.
PACKAGES=systemd-sysv,udev,dbus,openssh-server,linux-image-cloud-amd64,iproute2,procps,kmod,libpam-pwquality,auditd,audispd-plugins,apparmor,systemd-timesyncd
APPEND="root=/dev/vda rw console=ttyS0"
DISK_SIZE=2G
OUT=${HARDEN_CACHE:-/var/cache/harden}/vm

while [ "$#" -gt 0 ]; do
  case "$1" in
    --out) [ "$#" -ge 2 ] || { echo "usage: $0 [--out DIR]" >&2; exit 2; }; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#--out=}; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--out DIR]" >&2; exit 2 ;;
  esac
done

log() { printf '[vm-base] %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$1" >&2; [ -n "${2:-}" ] && printf 'hint: %s\n' "$2" >&2; exit 4; }

[ "$(id -u)" = 0 ] || die "scripts/vm-base.sh must run as root" "run it with sudo"
for tool in mmdebstrap qemu-img mkfs.ext4 ssh-keygen sha256sum python3 flock; do
  command -v "$tool" >/dev/null 2>&1 \
    || die "$tool is not installed" "apt-get install -y mmdebstrap qemu-utils e2fsprogs openssh-client"
done

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd -P)
exec 9>"$OUT/.lock"
flock 9 # one build at a time; a waiting second run then finds the cache

# ---- the build key (harden-managed, made once) ----------------------------------------------------
KEYDIR="$OUT/build-key"
if [ ! -s "$KEYDIR/id_ed25519" ] || [ ! -s "$KEYDIR/id_ed25519.pub" ]; then
  log "making the build key $KEYDIR/id_ed25519"
  mkdir -p "$KEYDIR"
  chmod 0700 "$KEYDIR"
  rm -f "$KEYDIR/id_ed25519" "$KEYDIR/id_ed25519.pub"
  ssh-keygen -q -t ed25519 -N '' -C harden-build-key -f "$KEYDIR/id_ed25519"
fi
chmod 0600 "$KEYDIR/id_ed25519" "$KEYDIR/id_ed25519.pub"
PUBKEY=$(cat "$KEYDIR/id_ed25519.pub")

# ---- cache key --------------------------------------------------------------------------------
KEY=$( { cat "$0"; printf '\n%s\n%s\n%s\n' "$SUITE" "$PACKAGES" "$PUBKEY"; } | sha256sum | cut -c1-64)
DEST="$OUT/$KEY"
link_current() {
  ln -sfn "$KEY" "$OUT/.current.tmp"
  mv -T "$OUT/.current.tmp" "$OUT/current"
}
if [ -s "$DEST/manifest.json" ] && [ -s "$DEST/base.qcow2" ] && [ -s "$DEST/vmlinuz" ]; then
  link_current
  log "cached: $DEST"
  printf '%s\n' "$DEST/manifest.json"
  exit 0
fi

# ---- build ------------------------------------------------------------------------------------
WORK=$(mktemp -d "$OUT/.build-$KEY.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
ROOTFS="$WORK/rootfs"
STAGE="$WORK/stage"
mkdir -p "$STAGE"
cp "$KEYDIR/id_ed25519.pub" "$WORK/authorized_keys"

# The customize hook runs on the host with the root file system as $1.
cat >"$WORK/customize.sh" <<'HOOK'
#!/bin/sh
set -eu
R=$1
AUTH=$2
echo harden-base >"$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tharden-base\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
  >"$R/etc/hosts"
printf '/dev/vda / ext4 rw,relatime,errors=remount-ro 0 1\n' >"$R/etc/fstab"

mkdir -p "$R/etc/systemd/network"
cat >"$R/etc/systemd/network/20-wired.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
chroot "$R" systemctl enable systemd-networkd.service >/dev/null 2>&1
chroot "$R" systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1

mkdir -p "$R/etc/ssh/sshd_config.d"
cat >"$R/etc/ssh/sshd_config.d/10-harden.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF

install -d -m 0700 "$R/root/.ssh"
install -m 0600 "$AUTH" "$R/root/.ssh/authorized_keys"

# Host keys: made at boot when missing, printed to the serial console for pinning.
cat >"$R/usr/local/sbin/harden-ssh-hostkeys" <<'EOF'
#!/bin/sh
# Make missing SSH host keys, then print the public host keys between markers (like cloud-init).
ssh-keygen -A >/dev/null
{
  echo "-----BEGIN SSH HOST KEY KEYS-----"
  cat /etc/ssh/ssh_host_*_key.pub
  echo "-----END SSH HOST KEY KEYS-----"
} >/dev/console
EOF
chmod 0755 "$R/usr/local/sbin/harden-ssh-hostkeys"
cat >"$R/etc/systemd/system/harden-ssh-hostkeys.service" <<'EOF'
[Unit]
Description=Make missing SSH host keys and print them to the console
Before=ssh.service
After=local-fs.target

[Service]
Type=oneshot
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStart=/usr/local/sbin/harden-ssh-hostkeys
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target ssh.service
EOF
chroot "$R" systemctl enable harden-ssh-hostkeys.service >/dev/null 2>&1

# Template hygiene: no host keys, no machine-id, no caches.
rm -f "$R"/etc/ssh/ssh_host_*
: >"$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb
rm -rf "$R"/tmp/* "$R"/var/tmp/* "$R"/var/log/journal/*
HOOK
chmod 0755 "$WORK/customize.sh"

log "mmdebstrap $SUITE (about a minute)"
mmdebstrap --mode=root --variant=apt --include="$PACKAGES" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook="\"$WORK/customize.sh\" \"\$1\" \"$WORK/authorized_keys\"" \
  "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/mmdebstrap.log" 2>&1 \
  || { tail -n 30 "$WORK/mmdebstrap.log" >&2; die "mmdebstrap failed" "is the Debian mirror $MIRROR reachable?"; }

kernel=$(ls "$ROOTFS"/boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
initrd=$(ls "$ROOTFS"/boot/initrd.img-* 2>/dev/null | sort -V | tail -n 1)
[ -n "$kernel" ] && [ -n "$initrd" ] || die "no kernel or initrd in $ROOTFS/boot"
install -m 0644 "$kernel" "$STAGE/vmlinuz"
install -m 0644 "$initrd" "$STAGE/initrd.img"

log "mkfs.ext4 -d (whole-disk, $DISK_SIZE sparse)"
truncate -s "$DISK_SIZE" "$WORK/disk.raw"
mkfs.ext4 -q -F -L harden-root -E root_owner=0:0 -d "$ROOTFS" "$WORK/disk.raw"
rm -rf "$ROOTFS"
qemu-img convert -O qcow2 "$WORK/disk.raw" "$STAGE/base.qcow2"
rm -f "$WORK/disk.raw"
chmod 0644 "$STAGE/base.qcow2"
install -m 0600 "$KEYDIR/id_ed25519" "$STAGE/id_ed25519"
install -m 0600 "$KEYDIR/id_ed25519.pub" "$STAGE/id_ed25519.pub"

SHA=$(sha256sum "$STAGE/base.qcow2" | cut -c1-64)
python3 - "$STAGE/manifest.json" "$DEST" "$KEY" "$SUITE" "$PACKAGES" "$APPEND" "$SHA" <<'PY'
import datetime, json, sys
out, dest, key, suite, packages, append, sha = sys.argv[1:]
manifest = {
    "schema_version": 1,
    "key": key,
    "suite": suite,
    "packages": packages.split(","),
    "base": f"{dest}/base.qcow2",
    "base_sha256": sha,
    "kernel": f"{dest}/vmlinuz",
    "initrd": f"{dest}/initrd.img",
    "append": append,
    "build_key": f"{dest}/id_ed25519",
    "build_key_pub": f"{dest}/id_ed25519.pub",
    "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
}
with open(out, "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
    f.write("\n")
PY

rm -rf "$DEST"
mv -T "$STAGE" "$DEST"
link_current
log "built: $DEST ($(du -h "$DEST/base.qcow2" | cut -f1))"
printf '%s\n' "$DEST/manifest.json"
