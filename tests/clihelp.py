"""Run the ``artfs`` command line in a subprocess against one store, and check its output.

    cli = Cli(tmp_path / "store", home=tmp_path)
    cli.ok("init")
    assert cli.ok("put", "mnist", src) == "mnist:v0\\n"
    msg = cli.fail("ls", "nope")            # one line "artfs: ...", exit 2, no stdout
    cli.fsck_ok()                            # every store-writing test ends with this
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

# variables a developer's shell may carry that would change what the CLI does
_CLEAN = ("ARTFS_STORE", "ARTFS_PROGRESS", "ARTFS_DEBUG", "ARTFS_GROUP", "XDG_DATA_HOME")


@dataclass
class Result:
    code: int
    outb: bytes
    errb: bytes

    @property
    def out(self) -> str:
        return self.outb.decode("utf-8", "surrogateescape")

    @property
    def err(self) -> str:
        return self.errb.decode("utf-8", "surrogateescape")

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}--- stderr\n{self.err}"


def cli_env(home: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _CLEAN}
    env["HOME"] = str(home)  # so the default store can never be the developer's
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Cli:
    def __init__(self, store, home, cwd=None):
        self.store = str(store)
        self.home = str(home)
        self.cwd = str(cwd or home)

    def run(self, *args, store: bool = True, env: dict | None = None, input: bytes | None = None,
            timeout: float = 60) -> Result:
        cmd = [sys.executable, "-m", "artfs.cli"]
        if store:
            cmd += ["--store", self.store]
        cmd += [str(a) for a in args]
        p = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, cwd=self.cwd,
                           env=cli_env(self.home, **(env or {})))
        return Result(p.returncode, p.stdout, p.stderr)

    def ok(self, *args, **kw) -> str:
        """Run; expect exit 0 and an empty stderr; return stdout."""
        r = self.run(*args, **kw)
        assert r.code == 0 and r.err == "", str(r)
        return r.out

    def fail(self, *args, code: int = 2, stdout: bool = False, **kw) -> str:
        """Run; expect exit ``code`` and exactly one line ``artfs: ...`` on stderr; return that message."""
        r = self.run(*args, **kw)
        assert r.code == code, str(r)
        assert r.err.startswith("artfs: ") and r.err.endswith("\n") and r.err.count("\n") == 1, str(r)
        assert "Traceback" not in r.err, str(r)
        if not stdout:
            assert r.out == "", str(r)
        return r.err[len("artfs: "):-1]

    def has_store(self) -> bool:
        return os.path.exists(os.path.join(self.store, "artfs-store"))

    def fsck_ok(self) -> str:
        out = self.ok("fsck")
        assert out.startswith("ok: ") and out.count("\n") == 1, out
        return out
