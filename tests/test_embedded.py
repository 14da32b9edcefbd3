"""The embedded pipeline: `rin-ship serve` with no cloud loads its own objects into the
embedded warehouse (SQLite, <data_dir>/warehouse.db) through the local queue; the shipper's
own SQS notifications for S3 stores; `rin-ship query`."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from fluent import sender

from loadlib import Importer, make_queue, pg_server, pgdb, queue_depth, rin_config, sqs_client  # noqa: F401
from rinlib import T0, free_port, port_open, rin_ship_bin
from test_crash import Client

pytestmark = pytest.mark.timeout(240)

RFC3339_US = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def connect_ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def table_rows(db: Path, table: str, cols: str = "*", order: str = "rowid") -> list[tuple]:
    """Rows of `table`; [] while the database or the table does not exist yet."""
    if not db.exists():
        return []
    c = connect_ro(db)
    try:
        return c.execute(f'SELECT {cols} FROM "{table}" ORDER BY {order}').fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise
    finally:
        c.close()


def wait_rows(db: Path, table: str, n: int, timeout: float = 30.0, stderr=lambda: "") -> list:
    deadline = time.monotonic() + timeout
    rows = []
    while time.monotonic() < deadline:
        rows = table_rows(db, table)
        if len(rows) >= n:
            return rows
        time.sleep(0.2)
    raise AssertionError(f"only {len(rows)} of {n} rows in {table} after {timeout}s; "
                         f"stderr:\n{stderr()[-4000:]}")


def query(*args, cwd=None, check=True, binary=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RIN_SHIP_CONFIG"}
    p = subprocess.run([str(binary or rin_ship_bin()), "query", *args], capture_output=True,
                       text=True, cwd=cwd, env=env, timeout=30)
    if check:
        assert p.returncode == 0, f"query exited {p.returncode}: {p.stderr}"
    return p


class Bare:
    """`rin-ship serve` with no config file, in its own working folder (./rin-data); ports
    and seal_age come from the environment variables that adjust the embedded defaults."""

    def __init__(self, workdir: Path, seal_age="1s", binary: Path | None = None):
        self.dir = Path(workdir)
        self.binary = binary or rin_ship_bin()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.forward_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if k != "RIN_SHIP_CONFIG"}
        self.env.update({
            "RIN_SHIP_FORWARD_BIND": f"127.0.0.1:{self.forward_port}",
            "RIN_SHIP_HTTP_BIND": f"127.0.0.1:{self.http_port}",
            "RIN_SHIP_METRICS_BIND": f"127.0.0.1:{self.metrics_port}",
            "RIN_SHIP_SEAL_AGE": seal_age,
        })
        self.proc = None
        self.n = 0

    @property
    def db(self) -> Path:
        return self.dir / "rin-data" / "warehouse.db"

    def start(self):
        self.n += 1
        self._err = open(self.dir / f"stderr.{self.n}.log", "wb")
        self.proc = subprocess.Popen([str(self.binary), "serve"], cwd=self.dir, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=self._err, stderr=self._err)
        deadline = time.monotonic() + 30
        while not port_open(self.forward_port):
            assert self.proc.poll() is None, f"serve exited:\n{self.stderr()}"
            assert time.monotonic() < deadline, f"serve did not start:\n{self.stderr()}"
            time.sleep(0.05)
        return self

    def stderr(self) -> str:
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted(self.dir.glob("stderr.*.log")))

    def terminate(self, timeout=60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self._err.close()
        assert rc == 0, f"serve exited {rc} after SIGTERM:\n{self.stderr()[-4000:]}"
        return rc

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self._err.close()


@pytest.fixture
def bare(tmp_path):
    made = []

    def make(**kw) -> Bare:
        b = Bare(tmp_path / f"bare{len(made)}", **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.kill()


def emit(port: int, tag: str, records: list[dict]):
    log = sender.FluentSender(tag.split(".")[0], host="127.0.0.1", port=port,
                              nanosecond_precision=True)
    for r in records:
        assert log.emit(tag.split(".", 1)[1], r), log.last_error
    log.close()


def lean_bin() -> Path:
    """The build without the AWS SDKs (`--no-default-features`), which tests/run makes."""
    p = Path(os.environ.get("RIN_SHIP_LEAN_BIN",
                            Path(__file__).resolve().parent.parent / "target/lean/debug/rin-ship"))
    assert p.is_file(), (f"the lean build is missing at {p}; build it with "
                         "`cargo build --no-default-features --target-dir target/lean`")
    return p


# ---------------------------------------------------------------------------------------------
# (a) no config file: forward record -> table row
# ---------------------------------------------------------------------------------------------


def test_serve_without_config_loads_rows(bare):
    s = bare().start()
    recs = [{"i": i, "path": "/hello", "status": 200, "ok": i % 2 == 0, "f": i / 4,
             "nested": {"b": [i, None], "a": "x"}} for i in range(20)]
    emit(s.forward_port, "app.web", recs)
    rows = wait_rows(s.db, "app.web", 20, stderr=s.stderr)
    c = connect_ro(s.db)
    cols = [r[1] for r in c.execute("PRAGMA table_info(\"app.web\")")]
    assert cols == ["time", "i", "path", "status", "ok", "f", "nested"], cols
    got = c.execute('SELECT time, i, path, status, ok, f, nested FROM "app.web" ORDER BY i').fetchall()
    assert len(got) == 20, got
    for i, (t, gi, path, status, ok, f, nested) in enumerate(got):
        assert RFC3339_US.fullmatch(t), t
        assert (gi, path, status, ok, f) == (i, "/hello", 200, int(i % 2 == 0), i / 4)
        assert json.loads(nested) == {"b": [i, None], "a": "x"}
    # One ledger row per object, rows adding up; every object under ./rin-data/objects.
    led = c.execute("SELECT bucket, object_key, etag, target, row_count FROM rin_ship_ledger"
                    ).fetchall()
    c.close()
    assert sum(r[4] for r in led) == 20
    for bucket, key, etag, target, _ in led:
        assert bucket == "local" and target == '"app.web"'
        assert (s.dir / "rin-data" / "objects" / key).is_file(), key
        assert re.fullmatch(r"[0-9a-f]{64}", etag), etag
    # Records sent right before SIGTERM: sealed, shipped and loaded before exit.
    emit(s.forward_port, "app.web", [{"i": 100 + i} for i in range(5)])
    emit(s.forward_port, "app.db", [{"q": "select 1"}])
    time.sleep(0.2)
    s.terminate()
    assert len(table_rows(s.db, "app.web")) == 25
    assert table_rows(s.db, "app.db", "q") == [("select 1",)]
    assert "queue empty" in s.stderr()
    assert not list((s.dir / "rin-data" / "queue" / "ready").iterdir())
    assert not list((s.dir / "rin-data" / "queue" / "inflight").iterdir())

    # (d) rin-ship query, from the same working folder (./rin-data).
    p = query('SELECT i, path, status FROM "app.web" WHERE i < 3 ORDER BY i', cwd=s.dir)
    assert p.stdout == "i\tpath\tstatus\n0\t/hello\t200\n1\t/hello\t200\n2\t/hello\t200\n"
    p = query("--json", 'SELECT i, nested FROM "app.web" WHERE i = 1', cwd=s.dir)
    assert [json.loads(ln) for ln in p.stdout.splitlines()] == [
        {"i": 1, "nested": '{"b":[1,null],"a":"x"}'}]
    p = query("--data-dir", str(s.dir / "rin-data"), 'SELECT count(*) AS n FROM "app.web"')
    assert p.stdout == "n\n25\n"
    p = query('DELETE FROM "app.web"', cwd=s.dir, check=False)
    assert p.returncode != 0 and "readonly" in p.stderr, p.stderr
    p = query("SELECT * FROM nope", cwd=s.dir, check=False)
    assert p.returncode != 0 and "no such table" in p.stderr, p.stderr
    assert len(table_rows(s.db, "app.web")) == 25

    # A restart finds nothing to load twice.
    s.start()
    emit(s.forward_port, "app.web", [{"i": 200}])
    wait_rows(s.db, "app.web", 26, stderr=s.stderr)
    s.terminate()
    assert len(table_rows(s.db, "app.web")) == 26


def test_lean_build_runs_the_embedded_pipeline(bare):
    """Without the AWS SDKs (`--no-default-features`) serve still runs every stage on this
    machine: forward and HTTP in, objects in a folder, the local queue, the SQLite warehouse."""
    lean = lean_bin()
    s = bare(binary=lean).start()
    emit(s.forward_port, "app.web", [{"i": i} for i in range(10)])
    body = "\n".join(json.dumps({"i": 100 + i}) for i in range(3))
    req = urllib.request.Request(f"http://127.0.0.1:{s.http_port}/app.web", data=body.encode(),
                                 headers={"Content-Type": "application/x-ndjson"})
    assert urllib.request.urlopen(req, timeout=10).status == 200
    wait_rows(s.db, "app.web", 13, stderr=s.stderr)
    s.terminate()
    p = query("SELECT count(*) AS n, max(i) AS top FROM \"app.web\"", cwd=s.dir, binary=lean)
    assert p.stdout == "n\ttop\n13\t102\n", p.stdout
    # The importer needs the SDKs: this build has no such command, and says so.
    p = subprocess.run([str(lean), "import", "-c", "x.yaml"], capture_output=True, text=True)
    assert p.returncode == 2 and "import" in p.stderr, p.stderr


def test_config_file_with_embedded_load(rin):
    r = rin({"embedded_load": True, "buffer": {"seal_age": "1s"},
             "targets": [{"name": "web", "match": ["web.**"], "key": "w/{tag[1]}/{seq}.json.gz"},
                         {"name": "rest", "match": ["**"]}]})
    db = r.data_dir / "warehouse.db"
    with r.connect() as c:
        c.send(["web.a", [[T0, {"k": 1}], [T0, {"k": 2, "K": 3}]], {"chunk": "c1"}])
        c.expect_ack("c1")
        c.send(["other.x", [[T0, {"v": "a\tb"}]], {"chunk": "c2"}])
        c.expect_ack("c2")
    # A template without {tag}: the target's name is the table; default key: the tag.
    wait_rows(db, "web", 2, stderr=r.stderr_text)
    wait_rows(db, "other.x", 1, stderr=r.stderr_text)
    r.terminate()
    # Keys differing only in case share a column (SQLite names are case-insensitive).
    assert table_rows(db, "web", "time, k") == [("2024-05-01T12:34:56.000000Z", 1),
                                              ("2024-05-01T12:34:56.000000Z", 3)]
    p = query("--config", str(r.config_path), 'SELECT v FROM "other.x"')
    assert p.stdout == "v\na\\tb\n"


def test_embedded_load_refused_without_a_local_target(rin, tmp_path):
    r = rin({"embedded_load": True, "stores": {"s3": {"type": "s3", "bucket": "b"}},
             "targets": [{"name": "a", "match": ["**"], "store": "s3"}]}, start=False)
    r.write_config()
    p = subprocess.run([str(rin_ship_bin()), "check-config", "-c", str(r.config_path)],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "embedded_load" in p.stderr, p.stderr


# ---------------------------------------------------------------------------------------------
# (b) crashes: every acked record in the table exactly once
# ---------------------------------------------------------------------------------------------


def all_rows(db: Path) -> list[dict]:
    c = connect_ro(db)
    tables = [t for (t,) in c.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'crash.%'")]
    out = []
    for t in tables:
        cur = c.execute(f'SELECT * FROM "{t}"')
        names = [d[0] for d in cur.description]
        out += [dict(zip(names, row)) for row in cur]
    c.close()
    return out


@pytest.mark.timeout(300)
def test_sigkill_while_records_flow_and_loads_run(rin):
    seed = random.randrange(1 << 30)
    print("seed", seed)
    cl = Client(seed)
    rng = random.Random(seed + 1)
    r = rin({"embedded_load": True,
             "buffer": {"seal_age": "300ms", "seal_bytes": "8KiB", "shards": 2}})
    db = r.data_dir / "warehouse.db"
    kills = 4
    # Let loads run while records keep flowing, then kill at a random moment.
    cl.kill_rounds(r, rng, kills, acks=(20, 80), pause=lambda: 0.3 + rng.random() * 1.2)
    r.terminate()
    loads = r.stderr_text().count("committed table=")
    assert loads >= kills, f"too few loads ({loads}) for the kills to land during loading"
    rows = all_rows(db)
    expected = cl.all_records()
    seqs = [row["seq"] for row in rows]
    dups = sorted({s for s in seqs if seqs.count(s) > 1})[:10]
    assert not dups, f"rows loaded twice (seq): {dups} (seed {seed})"
    assert sorted(seqs) == sorted(x["seq"] for x in expected), (
        f"{len(rows)} rows, {len(expected)} acked records (seed {seed})")
    by_seq = {x["seq"]: x for x in expected}
    for row in rows:
        x = by_seq[row["seq"]]
        assert (row["w"], row["pad"], row["time"]) == (x["w"], x["pad"],
                                                     "2024-05-01T12:34:56.000000Z")
    c = connect_ro(db)
    led = c.execute("SELECT count(*), count(DISTINCT object_key), sum(row_count) "
                    "FROM rin_ship_ledger").fetchone()
    c.close()
    assert led[0] == led[1] and led[2] == len(rows), led


def test_sigkill_between_commit_and_delete(rin):
    """The load committed, the queue message is not deleted yet: after SIGKILL it is delivered
    again and the ledger skips it."""
    r = rin({"embedded_load": True, "buffer": {"seal_age": "1s"}},
            env={"RIN_SHIP_FAILPOINT": "pause_before_delete"})
    db = r.data_dir / "warehouse.db"
    with r.connect() as c:
        c.send(["crash.fp", [[T0, {"seq": i}] for i in range(30)], {"chunk": "fp"}])
        c.expect_ack("fp")
    deadline = time.monotonic() + 30
    while "failpoint pause_before_delete" not in r.stderr_text():
        assert time.monotonic() < deadline, r.stderr_tail()
        time.sleep(0.1)
    assert len(table_rows(db, "crash.fp")) == 30
    assert len(list((r.data_dir / "queue" / "inflight").iterdir())) == 1
    r.kill()
    r.env.pop("RIN_SHIP_FAILPOINT")
    r.start()
    r.terminate()
    assert sorted(x for (x,) in table_rows(db, "crash.fp", "seq")) == list(range(30))
    log = r.stderr_text()
    assert '"duplicates":1' in log, log[-3000:]
    assert not list((r.data_dir / "queue" / "inflight").iterdir())
    assert not list((r.data_dir / "queue" / "ready").iterdir())


# ---------------------------------------------------------------------------------------------
# (c) the shipper's own SQS notifications -> rin-ship import
# ---------------------------------------------------------------------------------------------


def test_sqs_notification_from_the_shipper(rin, moto_server, bucket, pgdb, tmp_path):
    q, url = make_queue(moto_server, visibility=3)  # no bucket notification configured
    store = moto_server.store_config(bucket, prefix="p/")
    store["notify"] = {"sqs_queue_url": url}  # endpoint: the URL's server; keys: the store's
    r = rin({"stores": {"s3": store}, "buffer": {"seal_bytes": "2KiB"},
             "targets": [{"name": "t", "match": ["**"], "store": "s3",
                          "key": "logs/{tag}/dt=%Y-%m-%d/{node} {seq}.json.gz"}]})
    n = 0
    with r.connect() as c:
        for f in range(8):
            recs = [{"i": n + k, "path": "/sqs", "status": 200, "pad": "x" * 100}
                    for k in range(10)]
            n += len(recs)
            c.send(["app.web", [[T0, x] for x in recs], {"chunk": f"c{f}"}])
            c.expect_ack(f"c{f}")
    moto_server.wait_records(bucket, n, timeout=30)
    r.terminate()
    objs = moto_server.objects(bucket)
    assert len(objs) >= 2, list(objs)
    assert queue_depth(moto_server, url) == len(objs)
    # Peek at every message (invisible for 1 s): S3's event shape, one per object.
    sqs = sqs_client(moto_server)
    seen = {}
    while len(seen) < len(objs):
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=2,
                                  WaitTimeSeconds=1).get("Messages", [])
        assert got, f"only {len(seen)} of {len(objs)} notifications"
        for m in got:
            rec = json.loads(m["Body"])["Records"][0]
            assert rec["eventSource"] == "aws:s3" and rec["eventName"] == "ObjectCreated:Put"
            assert rec["s3"]["bucket"]["name"] == bucket
            raw = rec["s3"]["object"]["key"]
            assert " " not in raw and "+" in raw, raw  # form-URL-encoded, as S3 does
            key = urllib.parse.unquote_plus(raw)
            head = moto_server.client().head_object(Bucket=bucket, Key=key)
            assert rec["s3"]["object"]["eTag"] == head["ETag"].strip('"')
            assert rec["s3"]["object"]["size"] == head["ContentLength"]
            seen[key] = rec
    assert set(seen) == set(objs)
    time.sleep(2.5)
    pgdb.sql("CREATE TABLE logs (time timestamptz, i bigint, path text, status int)")
    imp = Importer(tmp_path, rin_config(moto_server, pgdb, q, bucket, [
        {"redshift": {"table": "logs"}, "s3": {"key_prefix": "p/logs/"}}]))
    s = imp.batch()
    assert s["loaded_objects"] == len(objs) and s["loaded_rows"] == n, s
    assert s["unparseable"] == 0 and s["duplicates"] == 0, s
    assert pgdb.sql("SELECT count(*), count(DISTINCT i) FROM logs") == [[str(n), str(n)]]
    assert queue_depth(moto_server, url) == 0
    assert imp.batch()["messages"] == 0 and pgdb.count("logs") == n


def test_sqs_unreachable_keeps_the_chunk(rin, moto_server, bucket, tmp_path):
    """A notification that is not accepted keeps its chunk; it is uploaded and notified again
    at the next start."""
    store = moto_server.store_config(bucket)
    dead = free_port()
    store["notify"] = {"sqs_queue_url": f"http://127.0.0.1:{dead}/123456789012/q"}
    r = rin({"stores": {"s3": store}, "ship": {"shutdown_timeout": "2s", "max_backoff": "500ms"},
             "targets": [{"name": "t", "match": ["**"], "store": "s3"}]})
    with r.connect() as c:
        c.send(["n.t", [[T0, {"i": 1}]], {"chunk": "x"}])
        c.expect_ack("x")
    moto_server.wait_records(bucket, 1, timeout=30)  # uploaded...
    deadline = time.monotonic() + 30
    while "notification failed" not in r.stderr_text():  # ...but not notified
        assert time.monotonic() < deadline, r.stderr_tail()
        time.sleep(0.2)
    r.terminate()
    left = list(r.buffer_dir.rglob("*.json.gz"))
    assert left, ("the chunk was deleted although its notification failed: "
                  f"{list(r.buffer_dir.rglob('*'))}")
    # Now with a reachable queue: the same object is notified.
    q, url = make_queue(moto_server)
    r.config["stores"]["s3"]["notify"] = {"sqs_queue_url": url}
    r.start()
    deadline = time.monotonic() + 30
    while queue_depth(moto_server, url) < 1:
        assert time.monotonic() < deadline, r.stderr_tail()
        time.sleep(0.2)
    r.terminate()
    assert len(moto_server.objects(bucket)) == 1
