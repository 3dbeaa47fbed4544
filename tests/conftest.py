"""Store fixtures shared by the test suite.

Every test that writes a store gets it from the ``store`` fixture, which runs
``repo.fsck`` when the test ends and fails the test unless it finds nothing
(S3QL's habit: a loud invariant after every test, not only in fsck tests).
"""
from __future__ import annotations

import os

import pytest

from artfs import repo
from artfs.storage.store import Store


def assert_fsck_clean(store: Store) -> None:
    problems = repo.fsck(store)
    assert problems == [], "fsck found problems:\n" + "\n".join(problems)


@pytest.fixture
def fsck_clean():
    """``fsck_clean(store)``: assert fsck finds nothing (for stores made outside ``store``)."""
    return assert_fsck_clean


@pytest.fixture
def store_path(tmp_path):
    """Where the test's store lives (created by the ``store`` fixture)."""
    return str(tmp_path / "store")


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
