#!/usr/bin/env bash
# Install OpenSCAP (Debian openscap-scanner/openscap-utils) and the SCAP Security Guide content for
# Debian 12/13 (ssg-debian from Debian's trixie suite: bookworm's package ships Debian 10/11 only),
# idempotently, as root. The trixie package is fetched with a private apt state (the host's apt
# configuration is untouched) from the mirror the host's apt sources already name.
# Content lands in $HARDEN_SSG_DIR (default /usr/share/harden/ssg): ssg-debian12-ds.xml, ...
set -euo pipefail
SSG_DIR=${HARDEN_SSG_DIR:-/usr/share/harden/ssg}
log() { printf '[openscap] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { echo "error: scripts/openscap.sh must run as root" >&2; exit 4; }

if ! command -v oscap-chroot >/dev/null 2>&1; then
  log "installing openscap-scanner openscap-utils"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    openscap-scanner openscap-utils >/dev/null
fi

if [ ! -s "$SSG_DIR/ssg-debian12-ds.xml" ]; then
  mirror=$("$(dirname "$0")/apt-mirror.sh")
  work=$(mktemp -d /tmp/harden-ssg.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  chmod 755 "$work"
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/etc/preferences.d" "$work/etc/sources.list.d"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$work/etc/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$work/etc/sources.list" -o "Dir::Etc::SourceParts=$work/etc/sources.list.d"
            -o "Dir::Etc::Preferences=$work/etc/preferences" -o "Dir::Etc::PreferencesParts=$work/etc/preferences.d"
            -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "Dir::State::status=/dev/null"
            -o "APT::Architecture=amd64" -o "Debug::NoLocking=1")
  log "fetching ssg-debian from trixie ($mirror)"
  apt-get "${apt_opts[@]}" update -q >/dev/null
  (cd "$work" && apt-get "${apt_opts[@]}" download ssg-debian >/dev/null)
  dpkg-deb -x "$work"/ssg-debian_*.deb "$work/x"
  mkdir -p "$SSG_DIR"
  cp "$work"/x/usr/share/xml/scap/ssg/content/ssg-debian1[23]-ds.xml "$SSG_DIR/"
  dpkg-deb -f "$work"/ssg-debian_*.deb Version >"$SSG_DIR/VERSION"
fi
log "ready: $(oscap --version | head -n 1), SSG $(cat "$SSG_DIR/VERSION") in $SSG_DIR"
