#!/usr/bin/env bash
# usage: stop-postgres.sh DIR [--rm]   — fast shutdown of the cluster started by start-postgres.sh
set -euo pipefail
DIR=$(realpath -m "${1:?usage: stop-postgres.sh DIR [--rm]}")
PGBIN=$(for d in /usr/lib/postgresql/*/bin; do [ -x "$d/pg_ctl" ] && echo "$d" && break; done)
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); else AS=(); fi
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
if [ -f "$DIR/data/postmaster.pid" ]; then
  PID=$(head -1 "$DIR/data/postmaster.pid" 2>/dev/null || true)
  if [ -n "$PID" ] && alive "$PID"; then
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null
  else
    rm -f "$DIR/data/postmaster.pid"  # crashed: nothing to stop (a zombie is not running)
  fi
fi
if [ "${2:-}" = "--rm" ]; then rm -rf "$DIR"; fi
