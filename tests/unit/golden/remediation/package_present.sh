# ---- t.install (package_present)
printf '%s %s\n' '@@harden-rule' t.install
(
set -e
if [ -n "$R" ]; then
	harden_say "skipped in a root folder: apt-get install"
	exit 0
fi
set --
for p in libpam-pwquality auditd; do
	if ! harden_pkg_installed "$p"; then set -- "$@" "$p"; fi
done
if [ "$#" -gt 0 ]; then
	harden_say "installing $*"
	apt-get -q update
	apt-get -q install -y --no-install-recommends "$@"
	apt-get clean
	rm -rf /var/lib/apt/lists/*
fi
)
harden_status=$?
if [ "$harden_status" -ne 0 ]; then
	printf '%s %s %s\n' '@@harden-failed' t.install "$harden_status" >&2
	exit "$harden_status"
fi
