"""Power loss: `serve` runs under load with its file I/O and socket sends recorded
(tests/powerloss/shim.c); for each of many cut points over the trace the data folder is rebuilt
as a power cut there would leave it (tests/powerloss/trace.py), `serve` recovers on it (without
the recorder), ships and loads everything, and every event acked before the cut must be in the
objects and the embedded warehouse exactly once. And: EIO on fsync.

RIN_SHIP_POWERLOSS_CUTS (default 100) sets how many cut points are tried."""

from __future__ import annotations

import collections
import http.client
import itertools
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest

from rinlib import T0, ConnClosed, Fwd, entries_bytes, gzip_member, metric_lines, str32

sys.path.insert(0, str(Path(__file__).parent / "powerloss"))
import powercut as pltrace  # noqa: E402

pytestmark = pytest.mark.timeout(900)

SHIM_SRC = Path(__file__).parent / "powerloss" / "shim.c"


@pytest.fixture(scope="module")
def shim(tmp_path_factory) -> Path:
    cc = shutil.which("cc")
    assert cc, "no C compiler for the power-loss recorder: apt-get install -y gcc libc6-dev"
    out = tmp_path_factory.mktemp("shim") / "shim.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(SHIM_SRC), "-ldl"],
                   check=True)
    return out


def config() -> dict:
    return {
        "embedded_load": True,
        "buffer": {"seal_age": "1s", "seal_bytes": "24KiB", "shards": 2},
        "ship": {"shutdown_timeout": "30s", "max_backoff": "200ms"},
    }


def recorded_env(shim: Path, data_dir: Path, trace: Path, **extra) -> dict:
    env = {"LD_PRELOAD": str(shim), "RIN_SHIP_SHIM_DIR": str(data_dir),
           "RIN_SHIP_SHIM_TRACE": str(trace)}
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Load:
    """Forward (raw msgpack, pipelined, four frame modes) and HTTP clients. Each connection
    notes its local port, so its acks can be read from the recorder's trace."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.ids = itertools.count()
        self.frames: dict[str, list[str]] = {}     # forward chunk id -> event ids
        self.http: dict[int, list[list[str]]] = {}  # local port -> event ids of each request
        self.fwd_ports: set[int] = set()
        self.errors: list[str] = []

    def records(self, prefix: str, n: int) -> list[dict]:
        with self.lock:
            return [{"id": f"{prefix}{next(self.ids)}", "pad": "x" * self.rng.randint(0, 300)}
                    for _ in range(n)]

    def frame(self, w: int):
        recs = self.records(f"f{w}-", self.rng.randint(1, 30))
        cid = f"pl-{recs[0]['id']}"
        mode = self.rng.choice(["forward", "packed", "gzip", "message"])
        tag = f"pl.w{w % 2}"
        if mode == "message":
            recs = recs[:1]
            frame = [tag, T0, recs[0], {"chunk": cid}]
        elif mode == "forward":
            frame = [tag, [[T0, x] for x in recs], {"chunk": cid, "size": len(recs)}]
        elif mode == "packed":
            frame = [tag, str32(entries_bytes([(T0, x) for x in recs])),
                     {"chunk": cid, "size": len(recs), "compressed": "text"}]
        else:
            frame = [tag, gzip_member(entries_bytes([(T0, x) for x in recs])),
                     {"chunk": cid, "size": len(recs), "compressed": "gzip"}]
        self.frames[cid] = [r["id"] for r in recs]
        return cid, frame

    def forward(self, port: int, w: int, stop: threading.Event, window: int = 4):
        c = Fwd(port)
        self.fwd_ports.add(c.sock.getsockname()[1])
        inflight = set()
        try:
            while not stop.is_set() or inflight:
                while not stop.is_set() and len(inflight) < window:
                    cid, frame = self.frame(w)
                    inflight.add(cid)
                    c.send(frame)
                got = c.read_obj(20)
                inflight.discard(got.get("ack"))
        except (OSError, ConnClosed) as e:
            if not stop.is_set():
                self.errors.append(f"forward {w}: {e!r}")
        finally:
            c.close()

    def http_client(self, port: int, stop: threading.Event):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.connect()
        mine = self.http.setdefault(conn.sock.getsockname()[1], [])
        try:
            while not stop.is_set():
                recs = self.records("h-", self.rng.randint(1, 20))
                mine.append([r["id"] for r in recs])
                conn.request("POST", "/pl.http", body=json.dumps(recs),
                             headers={"Content-Type": "application/json"})
                conn.getresponse().read()
        except OSError as e:
            self.errors.append(f"http: {e!r}")
        finally:
            conn.close()

    def run(self, r, seconds: float):
        stop = threading.Event()
        ts = [threading.Thread(target=self.forward, args=(r.forward_port, w, stop), daemon=True)
              for w in range(3)]
        ts.append(threading.Thread(target=self.http_client, args=(r.http_port, stop), daemon=True))
        for t in ts:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in ts:
            t.join(30)
        assert not self.errors, self.errors

    def acked_by(self, ops: list[pltrace.Op]) -> list[tuple[int, str]]:
        """(index of the send that acked it, event id), for every event acked in the trace:
        forward acks name their chunk; HTTP answers come in request order on a connection."""
        out = []
        unpackers: dict[int, msgpack.Unpacker] = {}
        http_seen: dict[int, int] = collections.Counter()
        status = re.compile(rb"HTTP/1\.1 (\d\d\d) ")
        for op in ops:
            if op.op != pltrace.SEND:
                continue
            port = op.a
            if port in self.fwd_ports:
                u = unpackers.setdefault(port, msgpack.Unpacker(raw=False))
                u.feed(op.data)
                for obj in u:
                    out.extend((op.index, i) for i in self.frames[obj["ack"]])
            elif port in self.http:
                for m in status.finditer(op.data):
                    n = http_seen[port]
                    http_seen[port] += 1
                    if m.group(1).startswith(b"2"):
                        out.extend((op.index, i) for i in self.http[port][n])
        return out


def wait_running(r, timeout: float = 30.0):
    """Until serve logs that it runs: its SIGTERM handler is installed after the listeners
    open, and a SIGTERM before it kills serve without the shutdown that ships and loads."""
    deadline = time.monotonic() + timeout
    while "rin-ship is running" not in r.stderr_text():
        assert time.monotonic() < deadline, f"serve is not running:\n{r.stderr_tail()}"
        time.sleep(0.05)
    time.sleep(0.2)


def warehouse_ids(db: Path) -> list[str]:
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [t for (t,) in c.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'pl.%'")]
        return [i for t in tables for (i,) in c.execute(f'SELECT id FROM "{t}"')]
    finally:
        c.close()


def object_ids(r) -> list[str]:
    ids = []
    for key, recs in r.records_by_key().items():
        if key.rsplit("/", 1)[-1].startswith("."):
            continue  # an object being written (`.<name>.partial`)
        ids.extend(x["id"] for x in recs)
    return ids


def choose_cuts(ops, root: str, n: int, rng: random.Random) -> list[int]:
    """About `n` cut points spread over the paths (every path gets its share), in order."""
    by_cat = collections.defaultdict(list)
    for op in ops:
        by_cat[pltrace.category(op, root)].append(op.index)
    share = max(1, n // len(by_cat))
    cuts = set()
    for idxs in by_cat.values():
        cuts.update(rng.sample(idxs, min(share, len(idxs))))
    rest = [o.index for o in ops if o.index not in cuts]
    cuts.update(rng.sample(rest, max(0, min(len(rest), n - len(cuts)))))
    return sorted(cuts)


def test_power_cuts_lose_no_acked_event(rin, shim, tmp_path):
    n_cuts = int(os.environ.get("RIN_SHIP_POWERLOSS_CUTS", "100"))
    seed = int(os.environ.get("RIN_SHIP_POWERLOSS_SEED", "15"))
    rng = random.Random(seed)
    trace_path = tmp_path / "trace.bin"
    rec = rin(config(), name="recorded", start=False)
    rec.data_dir.mkdir(parents=True)
    rec.env.update(recorded_env(shim, rec.data_dir, trace_path))
    rec.start()
    load = Load(seed)
    load.run(rec, float(os.environ.get("RIN_SHIP_POWERLOSS_SECONDS", "4")))
    time.sleep(3)  # seals by age, shipping, the queue and the loader
    rec.kill()
    ops = pltrace.read_trace(trace_path)
    pltrace.annotate(ops)
    root = str(rec.data_dir)
    acked = load.acked_by(ops)
    assert acked, "no ack in the trace: the recorder saw no socket send"
    cuts = choose_cuts(ops, root, n_cuts, rng)
    replay = pltrace.Replay(ops, root)
    outcomes = collections.defaultdict(collections.Counter)
    failures = []
    for k in cuts:
        cat = pltrace.category(ops[k], root)
        names = rng.choice(["none", "all", "prefix"])
        torn = rng.random() < 0.3
        files, dirs = replay.state_at(k, names, torn, rng)
        r = rin(config(), name=f"cut{k}", start=False)
        pltrace.materialize(files, dirs, r.data_dir)
        want = [i for at, i in acked if at <= k]
        problem = None
        try:
            r.start()
            wait_running(r)
            r.terminate(timeout=120)
            in_objects = collections.Counter(object_ids(r))
            in_rows = collections.Counter(warehouse_ids(r.data_dir / "warehouse.db"))
            lost = [i for i in want if in_objects[i] == 0]
            unloaded = [i for i in want if in_rows[i] == 0]
            twice = [i for i, c in in_objects.items() if c > 1]
            twice_rows = [i for i, c in in_rows.items() if c > 1]
            if lost or unloaded or twice or twice_rows:
                problem = (f"{len(lost)} acked events not in the objects (e.g. {lost[:3]}), "
                           f"{len(unloaded)} not in the warehouse, {len(twice)} twice in the "
                           f"objects, {len(twice_rows)} twice in the warehouse")
        except AssertionError as e:
            problem = f"serve failed on the rebuilt folder: {str(e)[-1500:]}"
        outcomes[cat]["ok" if problem is None else "FAILED"] += 1
        if problem:
            failures.append(f"cut after op {k} ({cat}, op {ops[k].op} {ops[k].file or ops[k].path}"
                            f" names={names} torn={torn}; {len(want)} acked): {problem}")
            keep = tmp_path / f"failed-cut{k}"
            if not keep.exists():
                shutil.copytree(r.dir, keep, symlinks=True)
        r.cleanup()
        shutil.rmtree(r.dir, ignore_errors=True)
    summary = "\n".join(f"  {cat:9} {sum(c.values()):4} cuts: {dict(c)}"
                        for cat, c in sorted(outcomes.items()))
    print(f"\npower cuts: {len(cuts)} over {len(ops)} recorded operations, "
          f"{len(acked)} acked events\n{summary}")
    assert not failures, f"{len(failures)} of {len(cuts)} cuts failed:\n" + "\n".join(failures[:15])


# ---------------------------------------------------------------------------------------------
# EIO on fsync
# ---------------------------------------------------------------------------------------------


def send_until_acked(r, frames, refused: list):
    """Sends each frame on one forward connection and waits for its ack; a frame that gets
    none (the connection closes) is noted in `refused` and resent on a new connection."""
    c = Fwd(r.forward_port)
    try:
        for cid, frame in frames:
            for _attempt in range(5):
                c.send(frame)
                try:
                    got = c.read_obj(20)
                    assert got == {"ack": cid}, got
                    break
                except (OSError, ConnClosed):
                    refused.append(cid)
                    c.close()
                    c = Fwd(r.forward_port)
            else:
                raise AssertionError(f"{cid} never acked")
    finally:
        c.close()


def post_until_stored(r, bodies, refused: list):
    """POSTs each batch with its own Idempotency-Key until a 2xx; other answers go to
    `refused` as (key, status)."""
    conn = http.client.HTTPConnection("127.0.0.1", r.http_port, timeout=20)
    try:
        for key, recs in bodies:
            for _attempt in range(5):
                conn.request("POST", "/pl.http", body=json.dumps(recs),
                             headers={"Content-Type": "application/json",
                                      "Idempotency-Key": key})
                resp = conn.getresponse()
                resp.read()
                if 200 <= resp.status < 300:
                    break
                refused.append((key, resp.status, resp.getheader("Retry-After")))
            else:
                raise AssertionError(f"{key} never stored")
    finally:
        conn.close()


@pytest.mark.parametrize("client", ["forward", "http"])
@pytest.mark.parametrize("which", ["journal", "data"])
def test_eio_on_fsync_is_not_acked_and_not_stored_twice(rin, shim, tmp_path, client, which):
    """The Nth fsync of the first chunk's journal (or data file) fails with EIO: the batch it
    was for is not acked (forward: no ack, the connection closes; HTTP: 503), the error is
    logged and counted, the chunk is not committed to again, and after the client's resend
    every event is in the objects and the warehouse exactly once."""
    trace_path = tmp_path / "trace.bin"
    cfg = config()
    cfg["buffer"].update({"shards": 1, "seal_age": "30s"})
    r = rin(cfg, name="eio", start=False)
    r.data_dir.mkdir(parents=True)
    first = "buffer/default/0000000001" + (".journal" if which == "journal" else ".json.gz")
    # Journal fsyncs: the chunk's creation, then one per commit; data fsyncs: one per commit.
    # Either way the third batch's commit is the one that fails.
    r.env.update(recorded_env(shim, r.data_dir, trace_path, RIN_SHIP_SHIM_FAIL_MATCH=first,
                              RIN_SHIP_SHIM_FAIL_FSYNC=4 if which == "journal" else 3))
    r.start()
    load = Load(7)
    refused: list = []
    if client == "forward":
        frames = [load.frame(0) for _ in range(8)]
        send_until_acked(r, frames, refused)
        events = [i for cid, _ in frames for i in load.frames[cid]]
        assert len(refused) == 1, f"expected exactly the third frame refused, got {refused}"
        assert refused[0] == frames[2][0], refused
    else:
        bodies = [(f"key-{n}", load.records("h-", 10)) for n in range(8)]
        post_until_stored(r, bodies, refused)
        events = [x["id"] for _, recs in bodies for x in recs]
        assert [(k, s) for k, s, _ in refused] == [("key-2", 503)], refused
        assert refused[0][2], "a 503 for a failed fsync must say when to retry (Retry-After)"
    assert metric_lines(r.metrics(), "rin_buffer_commit_errors_total")[0][1] >= 1
    r.terminate(timeout=60)
    log = r.stderr_text()
    assert "commit failed" in log and "Input/output error" in log, log[-3000:]
    in_objects = collections.Counter(object_ids(r))
    in_rows = collections.Counter(warehouse_ids(r.data_dir / "warehouse.db"))
    assert sorted(in_objects) == sorted(events), "objects differ from the events sent"
    assert all(n == 1 for n in in_objects.values()), [i for i, n in in_objects.items() if n > 1]
    assert in_rows == in_objects, "the warehouse differs from the objects"
    # The chunk whose fsync failed got no commit record afterwards: it was not used again.
    ops = pltrace.read_trace(trace_path)
    pltrace.annotate(ops)
    failed_at = [o.index for o in ops if o.op == pltrace.FSYNC_FAILED]
    assert len(failed_at) == 1, failed_at
    journal = str(r.data_dir / "buffer/default/0000000001.journal")
    later = [o for o in ops[failed_at[0]:]
             if o.op == pltrace.WRITE and o.file == journal and b'"kind":"commit"' in o.data]
    assert not later, "the chunk was committed to after its fsync failed"
