# ---- t.purge (package_absent)
printf '%s %s\n' '@@harden-rule' t.purge
harden_clock
harden_t0=$harden_now
(
set -e
if [ -n "$R" ]; then
	harden_say "skipped in a root folder: apt-get purge"
	exit 0
fi
set --
for p in telnet rsh-client nis; do
	if harden_pkg_installed "$p"; then set -- "$@" "$p"; fi
done
if [ "$#" -gt 0 ]; then
	harden_say "purging $*"
	harden_pkgs_changed
	apt-get -q purge -y "$@"
fi
)
harden_status=$?
harden_clock
printf '%s %s %s\n' '@@harden-time' t.purge "$((harden_now - harden_t0))"
if [ "$harden_status" -ne 0 ]; then
	printf '%s %s %s\n' '@@harden-failed' t.purge "$harden_status" >&2
	exit "$harden_status"
fi
