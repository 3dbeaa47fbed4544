#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster on loopback for tests / CI.
#   usage: start-postgres.sh DIR [PORT]        (default PORT 55432)
#   stop:  stop-postgres.sh DIR
# Creates DIR/data (initdb, trust auth, superuser "artfs", database "artfs"), listens on
# 127.0.0.1:PORT only, unix socket in DIR/sock (not /var/run). Runs the server as the
# unprivileged "postgres" user (postgres refuses to run as root); when not root, runs as
# the current user. Touches nothing under /etc or /var/lib/postgresql (no pg_createcluster).
# Prints the DSN on stdout; writes it to DIR/dsn. fsync=off: a commit survives the server being killed
# (it is in the kernel's page cache), not a power loss -- test use only.
set -euo pipefail
DIR=$(realpath -m "${1:?usage: start-postgres.sh DIR [PORT]}")
PORT=${2:-55432}

find_bin() {
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && { echo "$d"; return; }; done
  command -v initdb >/dev/null && dirname "$(command -v initdb)" && return
  return 1
}
if ! PGBIN=$(find_bin); then
  # fresh machine without the server package: Debian 12 ships PostgreSQL 15
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15 >/dev/null
  PGBIN=$(find_bin)
fi

if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin postgres
  AS=(runuser -u postgres --)
  OWNER=postgres
else
  AS=(); OWNER=$(id -un)
fi

mkdir -p "$DIR/sock"
chown "$OWNER" "$DIR" "$DIR/sock"
cd "$DIR"   # the server user may not be able to enter the caller's cwd (e.g. /root)
# Every parent of DIR must be searchable by the server user. pytest's tmp_path lives under
# /tmp/pytest-of-root (mode 0700), which the postgres user cannot enter: use a dir from
# tempfile.mkdtemp(dir="/tmp") (its 0700 is fine once chowned here) or similar.
if ! "${AS[@]}" test -w "$DIR"; then
  echo "start-postgres.sh: user $OWNER cannot reach $DIR (a parent directory is not searchable)" >&2; exit 1
fi
# A server that crashed (SIGKILL) leaves its lock files; PostgreSQL refuses to start while the pid
# in them exists, and a crashed postmaster whose parent does not reap it (some containers' init)
# stays a zombie forever.  A dead or zombie owner: the lock files are stale.
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
if [ -f "$DIR/data/postmaster.pid" ]; then
  OLD=$(head -1 "$DIR/data/postmaster.pid" 2>/dev/null || true)
  if [ -n "$OLD" ] && ! alive "$OLD"; then
    rm -f "$DIR/data/postmaster.pid" "$DIR/sock/.s.PGSQL.$PORT.lock" "$DIR/sock/.s.PGSQL.$PORT"
  fi
fi
if [ ! -s "$DIR/data/PG_VERSION" ]; then
  "${AS[@]}" "$PGBIN/initdb" -D "$DIR/data" -U artfs --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync >"$DIR/initdb.log" 2>&1 \
    || { cat "$DIR/initdb.log" >&2; exit 1; }
fi
"${AS[@]}" "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w -t 60 start -o \
  "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR/sock -c fsync=off -c synchronous_commit=on -c full_page_writes=off -c max_connections=${PG_MAX_CONNECTIONS:-300} -c shared_buffers=128MB" >/dev/null
"$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -t 30
"$PGBIN/psql" -q -h 127.0.0.1 -p "$PORT" -U artfs -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='artfs'" | grep -q 1 \
  || "$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" -U artfs artfs
echo "postgresql://artfs@127.0.0.1:$PORT/artfs" | tee "$DIR/dsn"
