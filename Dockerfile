# The harden image: harden (the harden-golden wheel) on Debian 12, running as a non-root user.
# Build it with scripts/harden-image.sh, which first builds the wheel and a wheelhouse of its
# dependencies (the build installs offline from them) and passes --network host only for apt.
# It is itself hardened, verified and signed by harden: images/harden.yaml.
ARG BASE=debian:12
FROM ${BASE}

ARG WITH_OPENSCAP=0
# skopeo copies images between registries; qemu-utils reads and converts qcow2 templates;
# OpenSCAP (the --scan second opinion) only when asked for: it is large.
RUN set -eu; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    pkgs="python3 python3-venv ca-certificates skopeo qemu-utils"; \
    if [ "$WITH_OPENSCAP" = 1 ]; then pkgs="$pkgs openscap-scanner ssg-debian"; fi; \
    apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*

COPY dist/wheelhouse/ /tmp/wheelhouse/
RUN set -eu; \
    python3 -m venv /opt/harden; \
    /opt/harden/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse harden-golden; \
    rm -rf /tmp/wheelhouse; \
    useradd --system --uid 10001 --user-group --create-home --home-dir /home/harden \
        --shell /usr/sbin/nologin harden; \
    install -d -o 10001 -g 10001 -m 0700 /var/lib/harden

ENV PATH=/opt/harden/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HARDEN_HOME=/var/lib/harden \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/harden
LABEL org.opencontainers.image.title=harden \
      org.opencontainers.image.description="Hardened, verified, signed golden images" \
      org.opencontainers.image.licenses=Apache-2.0
ENTRYPOINT ["harden"]
CMD ["--help"]
