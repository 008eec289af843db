#!/usr/bin/env bash
# Install and start everything harden's tests and demo need, idempotently, as root on Debian 12.
# Takes a few seconds when everything is already up.
#   - Docker Engine (Debian docker.io) without bridge/iptables: containers use network none|host
#   - OCI registry (Debian docker-registry, distribution 2.8) on 127.0.0.1:5000
#   - base images debian:12 and debian:13 built with debootstrap (no public registry here),
#     cached as tarballs under /var/cache/harden, imported and pushed to the local registry
#   - PostgreSQL (Debian postgresql) on 127.0.0.1:5432 only, role and database `harden` for the
#     shared-state tests (HARDEN_DB); the URL is printed at the end
# Usage: scripts/services.sh [--no-images] [--vm]   (--vm also builds the cached base VM template)
set -euo pipefail

STATE=${HARDEN_SERVICES_STATE:-/var/lib/harden-services}
CACHE=${HARDEN_CACHE:-/var/cache/harden}
REGISTRY=127.0.0.1:5000
MIRROR=$("$(dirname "$0")/apt-mirror.sh")
WANT_IMAGES=1
WANT_VM=0
for arg in "$@"; do
  case "$arg" in
    --no-images) WANT_IMAGES=0 ;;
    --vm) WANT_VM=1 ;;
    *) echo "usage: $0 [--no-images] [--vm]" >&2; exit 2 ;;
  esac
done

log() { printf '[services] %s\n' "$*" >&2; }
need_root() { [ "$(id -u)" = 0 ] || { echo "error: scripts/services.sh must run as root" >&2; exit 4; }; }
need_root
mkdir -p "$STATE" "$CACHE"

# ---- packages --------------------------------------------------------------------------------
PKGS=(docker.io docker-registry debootstrap skopeo apache2-utils openssl curl chromium
      qemu-system-x86 qemu-utils mmdebstrap zstd openssh-client gnupg apt-utils
      debian-archive-keyring postgresql fdisk)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- the unprivileged user qemu runs as (harden never runs a VM as root) --------------------
QEMU_USER=${HARDEN_QEMU_USER:-harden-qemu}
if ! getent passwd "$QEMU_USER" >/dev/null; then
  log "creating system user $QEMU_USER (harden runs qemu as it)"
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$QEMU_USER"
fi
if getent group kvm >/dev/null && ! id -nG "$QEMU_USER" | tr ' ' '\n' | grep -qx kvm; then
  usermod -a -G kvm "$QEMU_USER"
fi

# ---- Docker Engine ---------------------------------------------------------------------------
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  local i=0
  until "$@" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -ge $((limit * 4)) ]; then log "$what did not come up in ${limit}s"; return 1; fi
    sleep 0.25
  done
}
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (--bridge=none --iptables=false --ip-masq=false)"
  mkdir -p "$STATE/docker"
  nohup dockerd --bridge=none --iptables=false --ip-masq=false --ip6tables=false \
    >"$STATE/docker/dockerd.log" 2>&1 &
  echo $! >"$STATE/docker/dockerd.pid"
  wait_for 60 dockerd docker info || { tail -n 20 "$STATE/docker/dockerd.log" >&2; exit 4; }
fi

# ---- registry --------------------------------------------------------------------------------
REGBIN=$(command -v docker-registry || echo /usr/bin/docker-registry)
if ! curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1; then
  log "starting registry on $REGISTRY"
  mkdir -p "$STATE/registry/data"
  cat >"$STATE/registry/config.yml" <<CFG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE/registry/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
CFG
  nohup "$REGBIN" serve "$STATE/registry/config.yml" >"$STATE/registry/registry.log" 2>&1 &
  echo $! >"$STATE/registry/registry.pid"
  wait_for 30 registry curl -fsS "http://$REGISTRY/v2/" || { tail -n 20 "$STATE/registry/registry.log" >&2; exit 4; }
fi

# ---- PostgreSQL (HARDEN_DB: the shared state of many CI runners) ----------------------------
# One cluster, loopback only, password auth; the tests make a database of their own per run
# (the role may create databases) and drop it at the end.
PG_URL=${HARDEN_TEST_DB:-postgresql://harden:harden-test@127.0.0.1:5432/harden}
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
if ! pg_up; then
  PG_VERSION=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
  if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$PG_VERSION main"; then
    log "creating PostgreSQL $PG_VERSION cluster main"
    pg_createcluster "$PG_VERSION" main >/dev/null
  fi
  # loopback only (Debian's postgresql.conf includes conf.d/)
  printf "listen_addresses = '127.0.0.1'\nport = 5432\n" \
    >"/etc/postgresql/$PG_VERSION/main/conf.d/harden.conf"
  log "starting PostgreSQL $PG_VERSION on 127.0.0.1:5432"
  pg_ctlcluster "$PG_VERSION" main start
  wait_for 30 postgresql pg_up || { tail -n 20 "/var/log/postgresql/postgresql-$PG_VERSION-main.log" >&2; exit 4; }
fi
pg_sql() { (cd / && runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qAtX "$@"); }
if [ "$(pg_sql -c "SELECT 1 FROM pg_roles WHERE rolname = 'harden'")" != 1 ]; then
  log "creating PostgreSQL role and database harden (tests: $PG_URL)"
  pg_sql -c "CREATE ROLE harden LOGIN CREATEDB PASSWORD 'harden-test'"
fi
if [ "$(pg_sql -c "SELECT 1 FROM pg_database WHERE datname = 'harden'")" != 1 ]; then
  pg_sql -c "CREATE DATABASE harden OWNER harden"
fi

# ---- base images -----------------------------------------------------------------------------
base_image() { # base_image VERSION CODENAME
  local version=$1 codename=$2 tarball="$CACHE/debian-$2-minbase.tar"
  local ref="$REGISTRY/library/debian:$version"
  if ! docker image inspect "debian:$version" >/dev/null 2>&1; then
    if [ ! -s "$tarball" ]; then
      log "debootstrap --variant=minbase $codename (about 30 s, cached in $tarball)"
      local root; root=$(mktemp -d "$CACHE/rootfs-$codename.XXXXXX")
      debootstrap --variant=minbase "$codename" "$root" "$MIRROR" >"$CACHE/debootstrap-$codename.log" 2>&1 \
        || { tail -n 20 "$CACHE/debootstrap-$codename.log" >&2; rm -rf "$root"; exit 4; }
      rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages
      tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
      mv "$tarball.tmp" "$tarball"
      rm -rf "$root"
    fi
    log "docker import debian:$version"
    docker import --change 'CMD ["/bin/bash"]' "$tarball" "debian:$version" >/dev/null
    docker tag "debian:$version" "debian:$codename"
  fi
  if ! curl -fsS -o /dev/null -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
      "http://$REGISTRY/v2/library/debian/manifests/$version" 2>/dev/null; then
    log "pushing $ref"
    docker tag "debian:$version" "$ref"
    docker push -q "$ref" >/dev/null
  fi
}
if [ "$WANT_IMAGES" = 1 ]; then
  base_image 12 bookworm
  base_image 13 trixie
fi
log "OpenSCAP and the SSG Debian 12/13 content (scripts/openscap.sh)"
"$(dirname "$0")/openscap.sh"
if [ "$WANT_VM" = 1 ]; then
  log "base VM template (scripts/vm-base.sh, cached under $CACHE/vm)"
  "$(dirname "$0")/vm-base.sh" >&2
fi
log "ready: docker engine, registry $REGISTRY$([ "$WANT_IMAGES" = 1 ] && echo ', debian:12, debian:13'), PostgreSQL $PG_URL"
