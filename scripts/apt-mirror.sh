#!/usr/bin/env bash
# Print the Debian archive URI the host's apt sources name (deb822 *.sources or one-line
# sources.list), so no mirror host name is written into harden. HARDEN_DEBIAN_MIRROR overrides.
# Usage: scripts/apt-mirror.sh [main|security]   (default main: the URI that serves <codename>)
set -euo pipefail
want=${1:-main}
if [ -n "${HARDEN_DEBIAN_MIRROR:-}" ] && [ "$want" = main ]; then
  echo "$HARDEN_DEBIAN_MIRROR"; exit 0
fi
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
suite=$codename
[ "$want" = security ] && suite="$codename-security"
found=$(
  {
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      # one stanza per paragraph: print "URI SUITE" pairs of Types: deb stanzas
      awk 'BEGIN{RS=""; FS="\n"}
        { types=""; uris=""; suites="";
          for (i = 1; i <= NF; i++) {
            if ($i ~ /^[[:space:]]*#/) continue
            if ($i ~ /^Types:/)  { sub(/^Types:[[:space:]]*/, "", $i);  types=$i }
            if ($i ~ /^URIs:/)   { sub(/^URIs:[[:space:]]*/, "", $i);   uris=$i }
            if ($i ~ /^Suites:/) { sub(/^Suites:[[:space:]]*/, "", $i); suites=$i }
          }
          if (types !~ /(^| )deb( |$)/) next
          n = split(uris, u, " "); m = split(suites, s, " ")
          for (a = 1; a <= n; a++) for (b = 1; b <= m; b++) print u[a], s[b] }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -f "$f" ] || continue
      sed -n -E 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+([^[:space:]]+).*/\2 \3/p' "$f"
    done
  } | awk -v s="$suite" '$2 == s { print $1; exit }'
)
if [ -z "$found" ]; then
  echo "error: no apt source for suite $suite in /etc/apt (set HARDEN_DEBIAN_MIRROR)" >&2
  exit 4
fi
echo "${found%/}"
