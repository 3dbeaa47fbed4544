"""Faults of the scale-out store's servers: PostgreSQL or SeaweedFS killed (SIGKILL) and
restarted in the middle of put, commit, upsert and finish; S3 answering errors through a
fault-injecting proxy.  Every operation either succeeds (its retries outlived the outage) or
fails with one clear line -- never half-done -- and fsck is clean afterwards.

This module runs its own pair of servers (it kills them), separate from the session's.
"""
from __future__ import annotations

import http.client
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

import servers as srv_mod
from artfs import repo
from artfs.storage.store import Store
from mounts import ARTFS

# A worker that runs one operation and stops at one point of it until told to go on (a line on
# stdin): "s3" right before its first object upload, "pg" right before the metadata transaction
# that makes it visible ("none": no stop).
WORKER = r"""
import json, os, sys
import artfs
from artfs import repo
from artfs.errors import ArtfsError
from artfs.repo import collab, staging
from artfs.storage.store import Store

path, op, where, src = sys.argv[1:5]
s = Store.open(path)

def pause():
    print("PAUSED", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit("not told to go on")

armed = []
def arm():
    if where == "none":
        return
    if where == "s3":
        real = s.objects._put
        def put(*a, **k):
            if not armed:
                armed.append(1)
                pause()
            real(*a, **k)
        s.objects._put = put
    else:
        name = {"put": "create_version", "commit": "create_version", "finish": "create_version",
                "upsert": "upsert_rows"}[op]
        real = getattr(s.meta, name)
        def call(*a, **k):
            if not armed:
                armed.append(1)
                pause()
            return real(*a, **k)
        setattr(s.meta, name, call)

try:
    if op == "put":
        arm()
        v, _ = repo.put_dir(s, "ds", src)
        out = v.ref
    elif op == "commit":
        from artfs.storage.format import FILE
        d = repo.open_draft(s, "cm")
        with repo.lock_draft(s, d):
            for n in sorted(os.listdir(src)):
                if d.lookup((n.encode(),)) is not None:
                    continue  # a run that failed before left it in the draft: it goes in now
                name, sf = d.new_scratch()
                with open(os.path.join(src, n), "rb") as f:
                    data = f.read()
                sf.pwrite(data, 0)
                sf.close()
                d.commit(d.plan_create((n.encode(),), FILE, 0o644, os.getuid(), os.getgid(), scratch=name,
                                       size=len(data)))
            arm()
            r = repo.commit_draft(s, d, "committed")
            repo.finish_commit(d, r)
        out = f"cm:v{r.num}"
    elif op == "upsert":
        d = repo.open_draft(s, "up", key=f"api:fault-{os.getpid()}")
        with repo.lock_draft(s, d):
            for n in sorted(os.listdir(src)):
                staging.add_file(s, d, (n.encode(),), os.path.join(src, n))
            arm()
            p = staging.upsert(s, d, "D", "w1", "fault writer")
        out = f"upserted {p['files']}"
    elif op == "finish":
        arm()
        num, _ = collab.finish(s, "up", "D")
        out = f"up:v{num}"
    print(json.dumps({"ok": out}), flush=True)
except ArtfsError as exc:
    print(json.dumps({"error": str(exc)}), flush=True)
    sys.exit(2)
"""


@pytest.fixture(scope="module")
def own():
    """Servers of this module only (it kills them)."""
    srv_mod.scaleout_or_skip()  # installed and startable here? (else the loud skip, or a failure)
    s = srv_mod.Servers()
    try:
        s.start()
    except srv_mod.Unavailable as exc:
        s.stop()
        pytest.fail(f"could not start this module's servers: {exc}")
    yield s
    s.stop()


@pytest.fixture
def store(own, tmp_path, monkeypatch):
    srv_mod.become_machine(monkeypatch, str(tmp_path / "m"))
    path = str(tmp_path / "s.artfs")
    own.new_store(path).meta.close()
    yield path
    own.drop_store(path)


def _src(tmp_path, n=6, big=False) -> str:
    d = tmp_path / "src"
    d.mkdir(exist_ok=True)
    for i in range(n):
        (d / f"f{i}").write_bytes(f"file {i}\n".encode() * (i + 1))
    if big:
        (d / "big").write_bytes(os.urandom(12 << 20))
    return str(d)


def _worker(path, op, where, src, retry: float):
    env = dict(os.environ, ARTFS_META_RETRY=str(retry), ARTFS_S3_RETRY=str(retry))
    return subprocess.Popen([sys.executable, "-c", WORKER, path, op, where, src], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _prepare(path, op, src):
    """What the operation builds on: a pending version for finish."""
    if op == "finish":
        p = _worker(path, "upsert", "none", src, 30)
        out, err = p.communicate("go\n", timeout=300)
        assert p.returncode == 0, err


def _state(path):
    s = Store.open(path)
    try:
        return {"versions": [(v["artifact"], v["num"]) for v in s.meta.all_versions()],
                "pending": [(p["artifact"], p["distributed_id"], p["finished"], p["files"]) for p in s.meta.pendings()],
                "problems": repo.fsck(s)}
    finally:
        s.meta.close()


def _kill(own, which):
    if which == "pg":
        own.stop_pg("kill")
    else:
        own.stop_s3("kill")


def _start(own, which):
    if which == "pg":
        own.start_pg()
    else:
        own.start_s3()


OPS = ["put", "commit", "upsert", "finish"]


@pytest.mark.parametrize("which", ["pg", "s3"])
@pytest.mark.parametrize("op", OPS)
def test_server_killed_and_restarted_mid_operation(own, store, tmp_path, op, which):
    """The server comes back while the operation waits: its retries carry it through."""
    src = _src(tmp_path, big=which == "s3" and op == "put")
    _prepare(store, op, src)
    before = _state(store)
    p = _worker(store, op, which, src, retry=120)
    try:
        assert p.stdout.readline().strip() == "PAUSED", p.stderr.read()
        _kill(own, which)
        _start(own, which)
        out, err = p.communicate("go\n", timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    res = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"crash": err}
    assert "ok" in res, f"{op}: {res} {err[-2000:]}"
    after = _state(store)
    assert after["problems"] == []
    assert len(after["versions"]) == len(before["versions"]) + (op != "upsert")


# (each operation meets each server restarted above; here each meets one of them down for good)
@pytest.mark.parametrize("which,op", [("pg", "put"), ("s3", "commit"), ("s3", "upsert"), ("pg", "finish")])
def test_server_down_too_long_fails_clearly_and_leaves_nothing_half_done(own, store, tmp_path, op, which):
    src = _src(tmp_path)
    _prepare(store, op, src)
    before = _state(store)
    p = _worker(store, op, which, src, retry=2)
    try:
        assert p.stdout.readline().strip() == "PAUSED", p.stderr.read()
        _kill(own, which)
        try:
            out, err = p.communicate("go\n", timeout=300)
        finally:
            _start(own, which)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 2, f"{op}: expected a clear failure, got {p.returncode}: {out} {err[-3000:]}"
    msg = json.loads(out.strip().splitlines()[-1])["error"]
    assert "\n" not in msg
    assert ("metadata store" in msg) if which == "pg" else ("object store" in msg), msg
    after = _state(store)
    assert after["problems"] == [] and after["versions"] == before["versions"]
    assert after["pending"] == before["pending"]
    # and once the server is back, the same operation goes through
    again = _worker(store, op, "none", src, retry=30)
    out, err = again.communicate("go\n", timeout=300)
    assert again.returncode == 0, f"{op} after recovery: {out} {err[-2000:]}"
    assert _state(store)["problems"] == []


# -- S3 errors through a fault-injecting proxy ------------------------------------------------------

class FaultProxy:
    """An HTTP proxy in front of the S3 endpoint: ``mode`` "pass", "flaky" (every other request
    answers 503 SlowDown) or "down" (every request answers 500)."""

    def __init__(self, upstream: str):
        self.host, self.port = upstream.removeprefix("http://").split(":")
        self.mode = "pass"
        self.requests = 0
        self.faults = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                with proxy.lock:
                    proxy.requests += 1
                    fail = proxy.mode == "down" or (proxy.mode == "flaky" and proxy.requests % 2 == 0)
                    if fail:
                        proxy.faults += 1
                if fail:
                    code = 500 if proxy.mode == "down" else 503
                    msg = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>"
                           + (b"InternalError" if code == 500 else b"SlowDown") + b"</Code></Error>")
                    self.send_response(code)
                    self.send_header("Content-Length", str(len(msg)))
                    self.send_header("Content-Type", "application/xml")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(msg)
                    return
                c = http.client.HTTPConnection(proxy.host, int(proxy.port), timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                c.request(self.command, self.path, body=body, headers=headers)
                r = c.getresponse()
                data = r.read()
                self.send_response(r.status, r.reason)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                c.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_s3_errors_are_retried_with_backoff_then_reported(own, tmp_path, monkeypatch):
    srv_mod.become_machine(monkeypatch, str(tmp_path / "m"))
    proxy = FaultProxy(own.endpoint)
    path = str(tmp_path / "p.artfs")
    try:
        from artfs.storage.scaleout import init_scaleout

        dsn, url, _ = own.new_store_args()
        init_scaleout(path, dsn, url, endpoint=proxy.url).meta.close()
        src = _src(tmp_path, n=20)
        proxy.mode = "flaky"
        env = dict(os.environ, ARTFS_S3_RETRY="30")
        p = subprocess.run(ARTFS + ["--store", path, "put", "ds", src], capture_output=True, text=True, env=env,
                           timeout=300)
        assert p.returncode == 0, p.stderr
        assert proxy.faults >= 10  # half the requests failed and were retried
        p = subprocess.run(ARTFS + ["--store", path, "cat", "ds", "f3"], capture_output=True, text=True, env=env,
                           timeout=300)
        assert p.returncode == 0 and p.stdout == "file 3\n" * 4, p.stderr
        proxy.mode = "down"
        (tmp_path / "src" / "new").write_bytes(b"never stored")
        faults = proxy.faults
        p = subprocess.run(ARTFS + ["--store", path, "put", "ds", src], capture_output=True, text=True,
                           env=dict(env, ARTFS_S3_RETRY="3"), timeout=300)
        assert p.returncode == 2, p.stderr  # not corruption: the store is unreachable
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "object store" in lines[0] and "500" in lines[0], p.stderr
        assert proxy.faults - faults > 1  # retried before giving up
        proxy.mode = "pass"
        s = Store.open(path)
        assert [v["num"] for v in s.meta.versions("ds")] == [0] and repo.fsck(s) == []
        s.meta.close()
    finally:
        proxy.close()
        own.drop_store(path)
