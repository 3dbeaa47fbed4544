"""Store fixtures shared by the test suite.

Every test that writes a store gets it from the ``store`` fixture, which runs
``repo.fsck`` when the test ends and fails the test unless it finds nothing
(S3QL's habit: a loud invariant after every test, not only in fsck tests).
``store``/``store_path`` come in two back ends (``--backend local|scaleout|both``,
see the end of this file and tests/servers.py).

Tests of what an ordinary user may not do (read a chmod 000 file) take the
``unprivileged`` fixture: the current user when the suite does not run as
root, else the system user ``artfs-test`` (``test_user``), which
``scripts/test`` creates when it runs as root, as CI does.
"""
from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest
from hypothesis import settings

from artfs import repo
from artfs.storage.store import Store

# Hypothesis: CI (``HYPOTHESIS_PROFILE=ci``, set by .ci/run) draws the same examples on every
# run, so a red CI is reproducible and never a lucky draw; developers' runs ("dev") explore.
# Neither keeps an example database in the checkout.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("dev", database=None, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def assert_fsck_clean(store: Store) -> None:
    problems = repo.fsck(store)
    assert problems == [], "fsck found problems:\n" + "\n".join(problems)


@pytest.fixture
def fsck_clean():
    """``fsck_clean(store)``: assert fsck finds nothing (for stores made outside ``store``)."""
    return assert_fsck_clean


@pytest.fixture
def store(store_path):
    """A fresh store; fsck must be clean when the test ends."""
    s = Store.init(store_path)
    yield s
    s = Store.open(store_path)  # a fresh object: no tree cache hides a bad object
    try:
        assert_fsck_clean(s)
    finally:
        s.meta.close()


@pytest.fixture
def mktree():
    """``mktree(root, {"a/b.txt": b"...", "l": ("symlink", "target"), "d/": None})`` -> root."""

    def make(root, spec: dict, mtime_ns: int | None = None):
        root = str(root)
        os.makedirs(root, exist_ok=True)
        for rel, content in spec.items():
            p = os.path.join(root, rel)
            if rel.endswith("/"):
                os.makedirs(p, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(p), exist_ok=True)
            if isinstance(content, tuple) and content[0] == "symlink":
                os.symlink(content[1], p)
            else:
                with open(p, "wb") as f:
                    f.write(content if isinstance(content, bytes) else content.encode())
            if mtime_ns is not None:
                os.utime(p, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
        return root

    return make


# -- an unprivileged user ------------------------------------------------------------------------

TEST_USER = "artfs-test"


class User:
    """Someone to run commands as: ``uid``, ``gid``, a directory ``home`` it owns (outside
    root's private tmp_path, reachable by it) and ``run``/``popen`` that start a command as it."""

    def __init__(self, name: str, uid: int, gid: int, home: str, switch: bool):
        self.name, self.uid, self.gid, self.home, self.switch = name, uid, gid, home, switch

    def as_user(self) -> dict:
        """subprocess keyword arguments that start a process as this user (no supplementary groups)."""
        return dict(user=self.uid, group=self.gid, extra_groups=[]) if self.switch else {}

    def run(self, cmd, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, **self.as_user(), **kw)

    def popen(self, cmd, **kw) -> subprocess.Popen:
        return subprocess.Popen(cmd, **self.as_user(), **kw)

    def own(self, *paths: str) -> None:
        """Give files made by the test (as root) to this user, recursively, symlinks too."""
        if not self.switch:
            return
        for top in paths:
            os.chown(top, self.uid, self.gid, follow_symlinks=False)
            for dirpath, dirnames, filenames in os.walk(top):
                for name in dirnames + filenames:
                    os.chown(os.path.join(dirpath, name), self.uid, self.gid, follow_symlinks=False)


def _reachable_tmp() -> str:
    """A temporary directory whose every ancestor others may pass through (pytest's own
    base directory is private to root)."""
    d = os.path.realpath(tempfile.gettempdir())
    p = d
    while True:
        if not os.stat(p).st_mode & stat.S_IXOTH:
            return "/tmp"
        if p == "/":
            return d
        p = os.path.dirname(p)


_account: dict = {}


def _test_account() -> tuple[int, int]:
    """(uid, gid) of the test user, checked once per session; skips (saying why) when it cannot
    be used."""
    if "skip" in _account:
        pytest.skip(_account["skip"])
    if "ids" in _account:
        return _account["ids"]
    if os.geteuid() != 0:
        _account["skip"] = (f"switching to the test user {TEST_USER} needs root; this run is not root "
                            "(tests that take `unprivileged` run as the current user instead)")
        pytest.skip(_account["skip"])
    try:
        pw = pwd.getpwnam(TEST_USER)
    except KeyError:
        _account["skip"] = (f"SKIPPED AS ROOT: no user {TEST_USER!r}; scripts/test creates it when run as root "
                            f"(useradd --system --no-create-home --shell /usr/sbin/nologin {TEST_USER})")
        pytest.skip(_account["skip"])
    # the user must be able to run this interpreter and import artfs (a venv made from a python
    # under a private home directory, e.g. pyenv in /root, is out of its reach)
    try:
        probe = subprocess.run([sys.executable, "-c", "import artfs.cli"], user=pw.pw_uid, group=pw.pw_gid,
                               extra_groups=[], cwd="/", capture_output=True, text=True, timeout=60)
        why = None if probe.returncode == 0 else \
            (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"])[-1]
    except OSError as exc:
        why = str(exc)
    if why is not None:
        _account["skip"] = (f"SKIPPED AS ROOT: the test user {TEST_USER} cannot run {sys.executable} "
                            f"({os.path.realpath(sys.executable)}): {why}")
        pytest.skip(_account["skip"])
    _account["ids"] = (pw.pw_uid, pw.pw_gid)
    return _account["ids"]


@pytest.fixture
def test_user():
    """The unprivileged system user ``artfs-test`` (root only): a ``User`` with a fresh home
    directory of its own.  Skips, with the reason, when not root or the user is missing."""
    uid, gid = _test_account()
    home = tempfile.mkdtemp(prefix="artfs-test-user-", dir=_reachable_tmp())
    try:
        os.chown(home, uid, gid)
        os.chmod(home, 0o700)
        yield User(TEST_USER, uid, gid, home, switch=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def unprivileged(request, tmp_path):
    """A user without root's powers: the current one when not root, else ``test_user``."""
    if os.geteuid() != 0:
        home = tmp_path / "user-home"
        home.mkdir()
        yield User(pwd.getpwuid(os.getuid()).pw_name, os.getuid(), os.getgid(), str(home), switch=False)
    else:
        yield request.getfixturevalue("test_user")


# -- back ends: the same suite against the local store and the scale-out store ------------------------
# (``--backend local|scaleout|both``, default local; scripts/test runs both.  tests/servers.py
# starts PostgreSQL and SeaweedFS on first use and stops them at the end.)

import servers as _servers  # noqa: E402


def pytest_addoption(parser):
    _servers.add_backend_option(parser)


def pytest_generate_tests(metafunc):
    _servers.parametrize_backend(metafunc)


def pytest_collection_modifyitems(config, items):
    _servers.skip_scaleout_modules(config, items)


def pytest_terminal_summary(terminalreporter):
    _servers.report_skip(terminalreporter)


def pytest_sessionfinish(session):
    _servers.stop_servers()


@pytest.fixture
def backend(request):
    """The store back end of this test run: ``local`` or ``scaleout``."""
    return getattr(request, "param", "local")


@pytest.fixture
def store_path(tmp_path, backend, monkeypatch):
    """Where the test's store lives: a directory to create (local), or the description file of
    a fresh scale-out store (its own schema and bucket prefix; this test's XDG directories)."""
    if backend == "local":
        yield str(tmp_path / "store")
        return
    srv = _servers.scaleout_or_skip()
    _servers.become_machine(monkeypatch, str(tmp_path / "machine"))
    path = str(tmp_path / "store.artfs")
    srv.new_store(path).meta.close()
    yield path
    srv.drop_store(path)
