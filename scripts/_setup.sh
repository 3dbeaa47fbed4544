# shellcheck shell=bash
# Shared install logic.  Sourced (never run) by scripts/test, scripts/demo and
# scripts/bench; safe to source any number of times, from any directory.
#
# What it does, each step only when needed (so a second run takes well under
# a second and prints nothing but one line):
#   1. Debian packages: fuse3 libfuse3-dev pkg-config rsync sqlite3 attr acl git b3sum curl,
#      postgresql (server binaries for the scale-out tests; no main cluster is created)
#      (plus python3/python3-venv/python3-dev/gcc if the machine lacks a
#      Python >= 3.11 with venv, or a C compiler for pyfuse3's build).
#      `apt-get update` + `apt-get install -y` only for what `dpkg-query`
#      says is missing; as root, or through `sudo -n`.
#   2. .venv in the repo root, made with the system python3 (>= 3.11).
#   3. `pip install -c constraints.txt -e '.[test]'` (editable_mode=compat: a
#      path entry, not setuptools' import finder, which costs every `artfs`
#      command ~20 ms of start-up) when pyproject.toml or
#      constraints.txt changed since the last
#      install (stamp: .venv/.artfs-install-stamp), or the venv lacks it.
# Non-interactive throughout (CI=true, no stdin).
#
# After sourcing: ARTFS_ROOT (repo root), ARTFS_VENV (its .venv),
# ARTFS_PY (.venv/bin/python), ARTFS_BIN (.venv/bin/artfs).

ARTFS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARTFS_VENV="$ARTFS_ROOT/.venv"
ARTFS_PY="$ARTFS_VENV/bin/python"
ARTFS_BIN="$ARTFS_VENV/bin/artfs"
export ARTFS_ROOT ARTFS_VENV ARTFS_PY ARTFS_BIN

_artfs_say() { printf 'setup: %s\n' "$*" >&2; }

# as root, or through passwordless sudo; never prompts
_artfs_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        _artfs_say "need root (or passwordless sudo) to run: $*"
        return 1
    fi
}

_artfs_pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]
}

# a python3 >= 3.11 on PATH, with venv and ensurepip (for `python -m venv`)
_artfs_find_python() {
    local c
    for c in python3 python3.13 python3.12 python3.11; do
        if command -v "$c" >/dev/null 2>&1 &&
            "$c" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

_artfs_apt() {
    local missing=() p
    for p in fuse3 libfuse3-dev pkg-config rsync sqlite3 attr acl git b3sum curl; do
        _artfs_pkg_installed "$p" || missing+=("$p")
    done
    # the scale-out back end's tests start a throwaway PostgreSQL (scripts/servers/); only the
    # server binaries are wanted, not a system cluster running on port 5432
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        missing+=(postgresql)
        if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
            _artfs_root mkdir -p /etc/postgresql-common &&
                echo "create_main_cluster = false" | _artfs_root tee /etc/postgresql-common/createcluster.conf >/dev/null
        fi
    fi
    # what building the venv needs, when the machine lacks it
    if ! _artfs_find_python >/dev/null; then
        for p in python3 python3-venv python3-dev; do
            _artfs_pkg_installed "$p" || missing+=("$p")
        done
    fi
    if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
        _artfs_pkg_installed gcc || missing+=(gcc)
    fi
    [ "${#missing[@]}" -eq 0 ] && return 0
    _artfs_say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    _artfs_root apt-get update -q </dev/null &&
        _artfs_root apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
}

_artfs_stamp() {
    # what the install depends on: the project file, where the repo is, which python
    {
        sha256sum "$ARTFS_ROOT/pyproject.toml" "$ARTFS_ROOT/constraints.txt" | cut -d' ' -f1
        echo "$ARTFS_ROOT"
        echo "editable_mode=compat"
        "$ARTFS_PY" -c 'import sys; print(sys.version)'
    } 2>/dev/null
}

_artfs_venv() {
    local py
    if ! "$ARTFS_PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
        py="$(_artfs_find_python)" || { _artfs_say "no python3 >= 3.11 with venv found"; return 1; }
        _artfs_say "creating $ARTFS_VENV with $py ($("$py" -V 2>&1))"
        "$py" -m venv --clear "$ARTFS_VENV" </dev/null || return 1
    fi
    local want have
    want="$(_artfs_stamp)"
    have="$(cat "$ARTFS_VENV/.artfs-install-stamp" 2>/dev/null || true)"
    # installed, editable from *this* tree, and pyproject unchanged since?
    if [ "$want" = "$have" ] && [ -x "$ARTFS_BIN" ] &&
        "$ARTFS_PY" -I - "$ARTFS_ROOT" >/dev/null 2>&1 <<'PY'
import importlib.util, os, sys
s = importlib.util.find_spec("artfs")  # finds the package without importing it
want = os.path.realpath(os.path.join(sys.argv[1], "artfs", "__init__.py"))
sys.exit(not (s and s.origin and os.path.realpath(s.origin) == want))
PY
    then
        return 0
    fi
    _artfs_say "pip install -e '.[test]' into $ARTFS_VENV"
    local log="$ARTFS_VENV/pip-install.log"
    # pip's output goes to a log (its warnings, e.g. about extra indexes, are noise here)
    if ! (cd "$ARTFS_ROOT" && PIP_DISABLE_PIP_VERSION_CHECK=1 "$ARTFS_PY" -m pip install --no-input -c constraints.txt \
            --config-settings editable_mode=compat -e '.[test]' </dev/null) >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        _artfs_say "pip install failed; full output in $log"
        return 1
    fi
    printf '%s\n' "$want" >"$ARTFS_VENV/.artfs-install-stamp"
}

_artfs_setup() {
    local lock="${TMPDIR:-/tmp}/artfs-setup.$(id -u).lock"
    (
        # one installer at a time (scripts/demo and scripts/test started together)
        if command -v flock >/dev/null 2>&1; then
            exec 9>"$lock" && flock 9
        fi
        _artfs_apt || { _artfs_say "installing Debian packages failed"; exit 1; }
        _artfs_venv || { _artfs_say "setting up $ARTFS_VENV failed"; exit 1; }
        # artfs's bytecode, written now: with PYTHONDONTWRITEBYTECODE set (as on some CI
        # machines) every CLI call and mount daemon would otherwise compile it again (~50 ms)
        "$ARTFS_PY" -m compileall -q "$ARTFS_ROOT/artfs" >/dev/null 2>&1 || true
    )
}

if _artfs_setup; then
    _artfs_say "ok ($("$ARTFS_PY" -V 2>&1) in ${ARTFS_VENV#"$PWD"/})"
else
    _artfs_say "FAILED"
    # shellcheck disable=SC2317
    return 1 2>/dev/null || exit 1
fi
