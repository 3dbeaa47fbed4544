#!/usr/bin/env bash
# usage: stop-seaweedfs.sh DIR [--rm]  — SIGTERM the weed started by start-seaweedfs.sh, wait, clean /tmp sockets
set -euo pipefail
DIR=$(realpath -m "${1:?usage: stop-seaweedfs.sh DIR [--rm]}")
# a zombie (a dead process some containers' init never reaps) is not running
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
if [ -f "$DIR/weed.pid" ]; then
  PID=$(cat "$DIR/weed.pid")
  if alive "$PID"; then
    kill -TERM "$PID"
    for _ in $(seq 1 150); do alive "$PID" || break; sleep 0.1; done
    if alive "$PID"; then kill -KILL "$PID" || true; fi
  fi
  rm -f "$DIR/weed.pid"
fi
if [ -f "$DIR/port" ]; then
  P=$(cat "$DIR/port")
  for svc in s3:$P master:$((P+1)) volume:$((P+2)) filer:$((P+3)) admin:$((P+4)); do
    rm -f "/tmp/seaweedfs-${svc%%:*}-grpc-$(( ${svc##*:} + 10000 )).sock"
  done
fi
if [ "${2:-}" = "--rm" ]; then rm -rf "$DIR"; fi
