# ---- t.install (package_present)
printf '%s %s\n' '@@harden-rule' t.install
harden_clock
harden_t0=$harden_now
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
if [ "$#" -gt 0 ] && [ -n "${HARDEN_DEBS:-}" ]; then
	# a container build: harden fetched and verified the files on the host; no network here
	harden_say "installing $* from files harden fetched (network none)"
	harden_list="$HARDEN_DEBS/rules/"t.install
	[ -s "$harden_list" ] || harden_fail "harden fetched no file for $*"
	set --
	while IFS= read -r harden_f; do set -- "$@" "$HARDEN_DEBS/$harden_f"; done < "$harden_list"
	# the files are local: apt needs no _apt sandbox (it would need CAP_SETUID to switch to it)
	# (and nothing is downloaded, so there is nothing to clean)
	harden_pkgs_changed
	apt-get -q -o APT::Sandbox::User=root install -y --no-install-recommends "$@"
elif [ "$#" -gt 0 ]; then
	harden_say "installing $*"
	harden_pkgs_changed
	apt-get -q update
	apt-get -q install -y --no-install-recommends "$@"
	apt-get clean
	rm -rf /var/lib/apt/lists/*
fi
)
harden_status=$?
harden_clock
printf '%s %s %s\n' '@@harden-time' t.install "$((harden_now - harden_t0))"
if [ "$harden_status" -ne 0 ]; then
	printf '%s %s %s\n' '@@harden-failed' t.install "$harden_status" >&2
	exit "$harden_status"
fi
