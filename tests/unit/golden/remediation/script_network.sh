#!/bin/sh
# harden remediation: family debian, target vm, phase network (generated).
# Each rule runs in a subshell with `set -e`, announced by "@@harden-rule <id>" on stdout; a failing
# rule prints "@@harden-failed <id> <status>" on stderr and stops the script.
# HARDEN_ROOT=<dir> applies the file-level effects to a root folder instead of this system.
set -u
umask 022
LC_ALL=C
export LC_ALL
R="${HARDEN_ROOT:-}"

harden_say() { printf 'harden: %s\n' "$*"; }
# harden_clock: harden_now = centiseconds since boot, read from /proc/uptime without a fork
# (0 when unreadable); the script prints each rule's elapsed time as "@@harden-time <id> <cs>"
harden_clock() {
	harden_now=0
	read -r harden_up _ </proc/uptime 2>/dev/null || return 0
	case $harden_up in
	*[0-9].[0-9][0-9]) harden_now=$((${harden_up%.*} * 100 + 1${harden_up#*.} - 100)) ;;
	esac
}
# harden_after RULE ACTION: rule number RULE was remediated and needs action number ACTION (a
# reload) before its check can pass; the script runs each such action once, after all rules
harden_after() {
	: > "$harden_tmp/r$1"
	: > "$harden_tmp/a$2"
	harden_say 'check after all rules (it needs a reload first)'
}
# fail the current rule (exits the rule's subshell)
harden_fail() { printf 'harden: %s\n' "$*" >&2; exit 1; }

# harden_commit FILE NEW: replace FILE by NEW when they differ, keeping FILE's owner and mode
# (and set harden_changed=1 when it did)
harden_commit() {
	if cmp -s "$2" "$1"; then
		rm -f "$2"
	else
		harden_replace "$1" "$2"
	fi
}

# harden_replace FILE NEW: FILE becomes NEW (which differs), keeping FILE's owner and mode
harden_replace() {
	if [ -L "$1" ]; then
		cat "$2" > "$1"
		rm -f "$2"
	else
		chown --reference="$1" "$2"
		chmod --reference="$1" "$2"
		mv -f "$2" "$1"
		harden_say "updated ${1#"$R"}"
	fi
	harden_changed=1
}

# harden_ensure_file FILE: create an empty FILE (and its folder) when missing
harden_ensure_file() {
	if [ ! -e "$1" ]; then
		mkdir -p "$(dirname "$1")"
		: > "$1"
		harden_say "created ${1#"$R"}"
	fi
}

# harden_ensure_line FILE LINE: append LINE unless FILE has it already
harden_ensure_line() {
	harden_ensure_file "$1"
	if ! grep -qxF -e "$2" "$1"; then
		if [ -s "$1" ] && [ -n "$(tail -c 1 "$1")" ]; then printf '\n' >> "$1"; fi
		printf '%s\n' "$2" >> "$1"
		harden_say "added to ${1#"$R"}: $2"
	fi
}

# harden_set_key FILE KEY LINE first|last NOCASE(0|1): LINE becomes the only active setting of
# KEY: it replaces the first active KEY line (else the first commented-out one) and the other
# active KEY lines go; without any, LINE is put first (first) or appended (last).
harden_set_key() {
	hk_status=0
	HK_KEY=$2 HK_LINE=$3 HK_WHERE=$4 HK_NOCASE=$5 HK_OUT="$1.harden-new" awk '
	function keyof(s,    n) {
		sub(/^[ \t]+/, "", s)
		commented = 0
		if (substr(s, 1, 1) == "#") { commented = 1; sub(/^#[ \t]*/, "", s) }
		n = match(s, /[ \t=]/)
		if (n) s = substr(s, 1, n - 1)
		return ENVIRON["HK_NOCASE"] == "1" ? tolower(s) : s
	}
	function out(s) { o[++no] = s }
	BEGIN { want = ENVIRON["HK_KEY"]; if (ENVIRON["HK_NOCASE"] == "1") want = tolower(want) }
	{
		line[NR] = $0
		if (keyof($0) == want) {
			if (!commented) { active[NR] = 1; if (!first_active) first_active = NR }
			else if (!first_comment) first_comment = NR
		}
	}
	END {
		at = first_active ? first_active : first_comment
		if (!at && ENVIRON["HK_WHERE"] == "first") out(ENVIRON["HK_LINE"])
		for (i = 1; i <= NR; i++) {
			if (i == at) out(ENVIRON["HK_LINE"])
			else if (!(i in active)) out(line[i])
		}
		if (!at && ENVIRON["HK_WHERE"] != "first") out(ENVIRON["HK_LINE"])
		# the same lines: exit 0 and write nothing (no cmp, no rm: forks are slow under TCG)
		same = no == NR
		for (i = 1; same && i <= no; i++) if (o[i] != line[i]) same = 0
		if (same) exit 0
		for (i = 1; i <= no; i++) print o[i] > ENVIRON["HK_OUT"]
		close(ENVIRON["HK_OUT"])
		exit 10
	}' "$1" || hk_status=$?
	case $hk_status in
	0) ;;
	10) harden_replace "$1" "$1.harden-new" ;;
	*) harden_fail "could not edit ${1#"$R"} (awk exit $hk_status)" ;;
	esac
}

# harden_get_key FILE KEY first|last NOCASE(0|1): print the effective value of KEY in FILE
harden_get_key() {
	HK_KEY=$2 HK_WHERE=$3 HK_NOCASE=$4 awk '
	BEGIN { want = ENVIRON["HK_KEY"]; if (ENVIRON["HK_NOCASE"] == "1") want = tolower(want) }
	!done {
		s = $0
		sub(/^[ \t]+/, "", s)
		if (substr(s, 1, 1) == "#") next
		n = match(s, /[ \t=]/)
		if (!n) next
		k = substr(s, 1, n - 1)
		if (ENVIRON["HK_NOCASE"] == "1") k = tolower(k)
		if (k != want) next
		v = substr(s, n)
		sub(/^[ \t]*=?[ \t]*/, "", v)
		sub(/[ \t]+$/, "", v)
		value = v
		found = 1
		if (ENVIRON["HK_WHERE"] == "first") done = 1
	}
	END { if (found) print value }' "$1"
}

# harden_ensure_include FILE LINE: LINE (an sshd-style "Include DIR/*.conf") comes before any
# other active setting of FILE; when it does not, it is put first (and later copies go)
harden_ensure_include() {
	HK_LINE=$2 awk '
	function norm(s) { gsub(/[ \t]+/, " ", s); sub(/^ /, "", s); sub(/ $/, "", s); return tolower(s) }
	BEGIN { want = norm(ENVIRON["HK_LINE"]) }
	{
		line[NR] = $0
		s = norm($0)
		if (s == "" || substr(s, 1, 1) == "#") next
		if (s == want) { copy[NR] = 1; if (!decided) ok = 1 }
		if (ok || substr(s, 1, 8) != "include ") decided = 1
	}
	END {
		if (!ok) print ENVIRON["HK_LINE"]
		for (i = 1; i <= NR; i++) if (ok || !(i in copy)) print line[i]
	}' "$1" > "$1.harden-new"
	harden_commit "$1" "$1.harden-new"
}

# harden_uid NAME / harden_gid NAME: the numeric id from the target's own passwd/group files
harden_uid() {
	harden_id=$(HK_NAME=$1 awk -F: '$1 == ENVIRON["HK_NAME"] { print $3; exit }' "$R"/etc/passwd)
	[ -n "$harden_id" ] || harden_fail "no user $1 in /etc/passwd"
	printf '%s\n' "$harden_id"
}
harden_gid() {
	harden_id=$(HK_NAME=$1 awk -F: '$1 == ENVIRON["HK_NAME"] { print $3; exit }' "$R"/etc/group)
	[ -n "$harden_id" ] || harden_fail "no group $1 in /etc/group"
	printf '%s\n' "$harden_id"
}

# harden_pam_has STACK TYPE MODULE [ARG...]: an active TYPE line of /etc/pam.d/STACK calls MODULE
# with every ARG (as verifiers/pam.py requires for a setting to be in force)
harden_pam_has() {
	[ -f "$R/etc/pam.d/$1" ] || return 1
	HK_TYPE=$2 HK_MOD=$3 HK_FILE="$R/etc/pam.d/$1"
	shift 3
	HK_TYPE=$HK_TYPE HK_MOD=$HK_MOD HK_ARGS="$*" awk '
	BEGIN { n = split(ENVIRON["HK_ARGS"], want, " ") }
	{
		t = $1
		sub(/^-/, "", t)
		if (t != ENVIRON["HK_TYPE"]) next
		at = 0
		for (i = 2; i <= NF && !at; i++) { m = $i; sub(/.*\//, "", m); if (m == ENVIRON["HK_MOD"]) at = i }
		if (!at) next
		ok = 1
		for (j = 1; j <= n; j++) {
			hit = 0
			for (i = at + 1; i <= NF; i++) if ($i == want[j]) hit = 1
			if (!hit) ok = 0
		}
		if (ok) { found = 1; exit }
	}
	END { exit !found }' "$HK_FILE"
}

# true on a running systemd (a VM), false in a container build or a root folder
harden_systemd_live() {
	[ -z "$R" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

DEBIAN_FRONTEND=noninteractive
export DEBIAN_FRONTEND
# harden_pkg_installed NAME: the package is installed (reads "$R"/var/lib/dpkg in a root folder).
# One dpkg-query lists the installed packages into $harden_tmp/pkgs (a query per rule costs
# a quarter second under TCG). The list is made again when dpkg's status file is newer than it
# (test -nt compares nanoseconds in dash and bash) or when a package rule emptied it
# (harden_pkgs_changed).
harden_pkg_installed() {
	if [ ! -s "$harden_tmp/pkgs" ] || [ "$R/var/lib/dpkg/status" -nt "$harden_tmp/pkgs" ]; then
		dpkg-query --admindir="$R/var/lib/dpkg" -W -f='${Status} ${Package} ${binary:Package} ${Architecture}\n' \
			2>/dev/null | awk '$3 == "installed" { print $4; print $5; print $4 ":" $6 }' \
			> "$harden_tmp/pkgs"
	fi
	grep -qxF -e "$1" "$harden_tmp/pkgs"
}
harden_pkgs_changed() { : > "$harden_tmp/pkgs"; }
# scratch space of this run: the installed-package list, the deferred actions' flags
harden_tmp=$(mktemp -d)
trap 'rm -rf "$harden_tmp"' EXIT

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

printf '%s\n' '@@harden-done'
