#!/usr/bin/env bash
# Build (idempotently, as root) harden's base VM template from Debian packages only.
#
#   scripts/vm-base.sh [--out DIR]
#
# DIR (default ${HARDEN_CACHE:-/var/cache/harden}/vm) holds one folder per template, named by the
# sha256 of the inputs (this script's text, the suite, the package list, the public build key):
#   DIR/<key>/base.qcow2      GPT disk, one ext4 file system per partition (root=/dev/vda1; /boot,
#                             /usr, /var, /var/log, /var/log/audit, /var/tmp, /tmp, /home, /opt,
#                             /srv on vda2..vda11, see LAYOUT), no SSH host keys, empty machine-id
#   DIR/<key>/vmlinuz, initrd.img   for direct kernel boot
#   DIR/<key>/id_ed25519(.pub)      the harden-managed build key, 0600: authorized for the build
#                                   account harden-build (root has no key; PermitRootLogin no)
#   DIR/<key>/manifest.json         paths, sha256 of base.qcow2, created (RFC 3339, UTC)
#   DIR/current -> <key>
# A second run with the same inputs is instant. The path of manifest.json goes to stdout, progress
# to stderr. The build key itself lives in DIR/build-key/ and is made once.
#
# Each boot prints the guest's SSH host keys to the serial console between
#   -----BEGIN SSH HOST KEY KEYS----- / -----END SSH HOST KEY KEYS-----
# (generated with `ssh-keygen -A` when missing); harden pins the key it reads from that local file.
#
# Build access: the account harden-build is expired (no login) and has no sudo rights on disk.
# Only a boot whose kernel command line carries harden.build_access=1 (harden's own direct kernel
# boot) revives it with password-less sudo, and every shutdown takes that back (ExecStop), so a
# sealed template holds neither. Whoever sets a VM's kernel command line owns the VM anyway.
set -euo pipefail

SUITE=bookworm
MIRROR=$("$(dirname "$0")/apt-mirror.sh")
# the base carries the security and stable updates published when it is made (so a template
# build installs only the ones published since; harden's updates step reads the same suites)
SECURITY_MIRROR=$("$(dirname "$0")/apt-mirror.sh" security)
# libpam-pwquality, auditd, audispd-plugins, apparmor and systemd-timesyncd are required by
# baselines/debian-vm.yaml; a VM has no network at build time, so they must be in the base.
# sudo, aide, rsyslog(-gnutls), chrony, logrotate and libpam-apparmor: ANSSI-BP28 asks for them.
PACKAGES=systemd-sysv,udev,dbus,openssh-server,linux-image-cloud-amd64,iproute2,procps,kmod,libpam-pwquality,auditd,audispd-plugins,apparmor,libpam-apparmor,chrony,sudo,aide,aide-common,rsyslog,rsyslog-gnutls,logrotate
APPEND="root=/dev/vda1 rw console=ttyS0 harden.build_access=1"
BUILD_USER=harden-build
# partition, mount point, size (MiB), options: the separate file systems ANSSI-BP28 asks for. The
# device names are fixed: a LABEL or UUID would be ambiguous when a clone sees its template as vdb.
# The initramfs mounts /usr with klibc's mount, which knows no "relatime": keep its options plain.
LAYOUT="1 / 640 rw,relatime,errors=remount-ro
2 /boot 128 rw,relatime,nodev,nosuid,noexec
3 /usr 1536 rw,nodev
4 /var 512 rw,relatime,nodev,nosuid,noexec
5 /var/log 256 rw,relatime,nodev,nosuid,noexec
6 /var/log/audit 256 rw,relatime,nodev,nosuid,noexec
7 /var/tmp 256 rw,relatime,nodev,nosuid,noexec
8 /tmp 256 rw,relatime,nodev,nosuid,noexec
9 /home 128 rw,relatime,nodev,nosuid,noexec
10 /opt 64 rw,relatime,nodev,nosuid
11 /srv 64 rw,relatime,nodev,nosuid"
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
for tool in mmdebstrap qemu-img mkfs.ext4 debugfs sfdisk ssh-keygen sha256sum python3 flock; do
  command -v "$tool" >/dev/null 2>&1 \
    || die "$tool is not installed" "apt-get install -y mmdebstrap qemu-utils e2fsprogs fdisk openssh-client"
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
KEY=$( { cat "$0"; printf '\n%s\n%s\n%s\n%s\n' "$SUITE" "$PACKAGES" "$PUBKEY" "$LAYOUT"; } | sha256sum | cut -c1-64)
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
{
  printf '# harden base template: one file system per partition (scripts/vm-base.sh LAYOUT)\n'
  printf '%s\n' "$LAYOUT" | while read -r n mp _size opts; do
    pass=0; [ "$mp" = / ] && pass=1  # no fsck unit per partition: boot time under TCG
    printf '/dev/vda%s\t%s\text4\t%s\t0\t%s\n' "$n" "$mp" "$opts" "$pass"
  done
  printf 'tmpfs\t/dev/shm\ttmpfs\trw,nodev,nosuid,noexec\t0\t0\n'
} >"$WORK/fstab"

# The customize hook runs on the host with the root file system as $1.
cat >"$WORK/customize.sh" <<'HOOK'
#!/bin/sh
set -eu
R=$1
AUTH=$2
BUSER=$3
FSTAB=$4
echo harden-base >"$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tharden-base\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
  >"$R/etc/hosts"
install -m 0644 "$FSTAB" "$R/etc/fstab"
# /var is noexec: dpkg runs maintainer scripts from /var/lib/dpkg/info, so apt lifts it meanwhile
cat >"$R/etc/apt/apt.conf.d/50harden-var-exec" <<'EOF'
// /var is mounted noexec (ANSSI-BP28); dpkg runs maintainer scripts from /var/lib/dpkg/info
DPkg::Pre-Invoke { "if mountpoint -q /var; then mount -o remount,exec /var; fi"; };
DPkg::Post-Invoke { "if mountpoint -q /var; then mount -o remount,noexec /var; fi"; };
EOF

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
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF

# The build account: key login only, expired on disk; harden-build-access revives it (below).
chroot "$R" useradd --create-home --shell /bin/bash --comment 'harden build account' "$BUSER"
# ANSSI-BP28 R38: only members of sudogrp may start sudo (the baseline sets /usr/bin/sudo to
# root:sudogrp 4110); the build account is a member from the start, so a build session keeps sudo
chroot "$R" groupadd --system sudogrp
chroot "$R" usermod -aG sudogrp "$BUSER"
chroot "$R" chage -E 0 "$BUSER"
uid=$(chroot "$R" id -u "$BUSER")
gid=$(chroot "$R" id -g "$BUSER")
install -d -m 0700 -o "$uid" -g "$gid" "$R/home/$BUSER/.ssh"
install -m 0600 -o "$uid" -g "$gid" "$AUTH" "$R/home/$BUSER/.ssh/authorized_keys"
rm -rf "$R/root/.ssh"
cat >"$R/usr/local/sbin/harden-build-access" <<EOF
#!/bin/sh
# start: revive $BUSER with password-less sudo (only on a boot with harden.build_access=1);
# stop: expire it and drop the sudo rule again, so the disk never keeps them.
set -eu
case "\${1:-}" in
  start)
    chage -E -1 $BUSER
    # the build drives sudo without a terminal and runs shells: lift those Defaults for it only
    printf '%s\\n' 'Defaults:$BUSER !requiretty, !use_pty, !noexec' \\
      '$BUSER ALL=(ALL) NOPASSWD: ALL' >/etc/sudoers.d/.90-harden-build.tmp
    chmod 0440 /etc/sudoers.d/.90-harden-build.tmp
    mv /etc/sudoers.d/.90-harden-build.tmp /etc/sudoers.d/90-harden-build ;;
  stop)
    rm -f /etc/sudoers.d/90-harden-build
    chage -E 0 $BUSER ;;
  *) echo "usage: \$0 start|stop" >&2; exit 2 ;;
esac
EOF
chmod 0755 "$R/usr/local/sbin/harden-build-access"
cat >"$R/etc/systemd/system/harden-build-access.service" <<'EOF'
[Unit]
Description=harden build access (only with harden.build_access=1 on the kernel command line)
ConditionKernelCommandLine=harden.build_access=1
After=local-fs.target
Before=ssh.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/harden-build-access start
ExecStop=/usr/local/sbin/harden-build-access stop

[Install]
WantedBy=multi-user.target
EOF
chroot "$R" systemctl enable harden-build-access.service >/dev/null 2>&1

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

# The AIDE database of the base (built here, natively: under TCG it takes minutes).
if [ -x "$R/usr/sbin/aideinit" ]; then
  chroot "$R" aideinit -y -f >/dev/null 2>&1 || echo "warning: aideinit failed" >&2
fi

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
  --customize-hook="\"$WORK/customize.sh\" \"\$1\" \"$WORK/authorized_keys\" $BUILD_USER \"$WORK/fstab\"" \
  "$SUITE" "$ROOTFS" "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
  "deb $SECURITY_MIRROR $SUITE-security main" >"$WORK/mmdebstrap.log" 2>&1 \
  || { tail -n 30 "$WORK/mmdebstrap.log" >&2; die "mmdebstrap failed" "is the Debian mirror $MIRROR reachable?"; }

kernel=$(ls "$ROOTFS"/boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
initrd=$(ls "$ROOTFS"/boot/initrd.img-* 2>/dev/null | sort -V | tail -n 1)
[ -n "$kernel" ] && [ -n "$initrd" ] || die "no kernel or initrd in $ROOTFS/boot"
install -m 0644 "$kernel" "$STAGE/vmlinuz"
install -m 0644 "$initrd" "$STAGE/initrd.img"

# One file system per partition, each made with mkfs.ext4 -d from its subtree straight into the
# partitioned disk file (-E offset): no loop device, no mount. Deepest mount points first, so
# each tree still holds the (empty) mount points of the file systems below it. The trees are
# split off first and measured: a partition whose tree (plus a third, inodes and the journal)
# does not fit its LAYOUT size is made larger, instead of mkfs failing half-way through a copy
# ("Could not allocate block ... while populating file system").
log "partitions and mkfs.ext4 -d per file system"
TREES="$WORK/trees"
mkdir -p "$TREES"
printf '%s\n' "$LAYOUT" | awk '{ print gsub("/", "/", $2), $0 }' | sort -rn | cut -d' ' -f2- \
  | while read -r n mp _size _opts; do
    [ "$mp" = / ] && continue
    [ -d "$ROOTFS$mp" ] || mkdir -p "$ROOTFS$mp"
    mode=$(stat -c %a "$ROOTFS$mp")
    mv "$ROOTFS$mp" "$TREES/$n"
    mkdir -m "$mode" "$ROOTFS$mp"
  done
mv "$ROOTFS" "$TREES/1"
SIZES="$WORK/sizes"
: >"$SIZES"
while read -r n mp size _opts; do
  used=$(du -s -B1M --apparent-size "$TREES/$n" | cut -f1)
  files=$(find "$TREES/$n" -xdev | wc -l)
  # a third more than the data, 16 KiB per entry (inode table and small files' blocks), and
  # 32 MiB for the journal
  need=$((used + used / 3 + files / 64 + 32))
  if [ "$need" -gt "$size" ]; then
    log "$mp holds ${used} MiB in $files entries: its partition grows from ${size} to ${need} MiB"
    size=$need
  fi
  printf '%s %s %s\n' "$n" "$mp" "$size" >>"$SIZES"
done <<EOF
$LAYOUT
EOF
total=1
table="label: gpt"
while read -r n mp size; do
  table="$table
start=$((total * 2048)), size=$((size * 2048)), name=harden-$n"
  total=$((total + size))
done <"$SIZES"
truncate -s "$(((total + 1) * 1024 * 1024))" "$WORK/disk.raw"
printf '%s\n' "$table" | sfdisk -q "$WORK/disk.raw"
start=1
while read -r n mp size; do
  mode=$(printf '04%04o' "0$(stat -c %a "$TREES/$n")")
  # 4 KiB blocks and one inode per 16 KiB whatever the size (for a small file system mke2fs
  # would pick 1 KiB blocks and fewer inodes than a tree of many small files needs)
  if ! mkfs.ext4 -q -F -b 4096 -i 16384 -L "harden-$n" \
    -E "offset=$((start * 1024 * 1024)),root_owner=0:0" \
    -d "$TREES/$n" "$WORK/disk.raw" "${size}M" 2>"$WORK/mkfs.log"; then
    cat "$WORK/mkfs.log" >&2
    die "mkfs.ext4 -d failed for $mp (partition $n, ${size} MiB, $(du -s -B1M "$TREES/$n" | cut -f1) MiB in the tree)" \
      "see the mkfs.ext4 message above; e2fsprogs >= 1.43 is needed for -d"
  fi
  # mke2fs -d leaves the root directory 0755: /tmp and /var/tmp need 1777
  debugfs -w -R "sif / mode $mode" "$WORK/disk.raw?offset=$((start * 1024 * 1024))" 2>/dev/null
  start=$((start + size))
done <"$SIZES"
rm -rf "$TREES"
qemu-img convert -O qcow2 "$WORK/disk.raw" "$STAGE/base.qcow2"
rm -f "$WORK/disk.raw"
chmod 0644 "$STAGE/base.qcow2"
install -m 0600 "$KEYDIR/id_ed25519" "$STAGE/id_ed25519"
install -m 0600 "$KEYDIR/id_ed25519.pub" "$STAGE/id_ed25519.pub"

SHA=$(sha256sum "$STAGE/base.qcow2" | cut -c1-64)
python3 - "$STAGE/manifest.json" "$DEST" "$KEY" "$SUITE" "$PACKAGES" "$APPEND" "$SHA" "$BUILD_USER" <<'PY'
import datetime, json, sys
out, dest, key, suite, packages, append, sha, user = sys.argv[1:]
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
    "ssh_user": user,
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
