"""`rin-ship import` under faults of its sources, through the real binary against moto and a
real PostgreSQL: an S3 body cut mid-response (a proxy in front of moto cuts the GET of chosen
keys), messages a killed consumer still holds invisible (`--batch` against `--batch --drain`),
and the server's notices kept out of the default log. Issue 15."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest

from loadlib import (PG_BIN, Importer, drain_bodies, make_queue, notify,  # noqa: F401
                     pg_server, pgdb, queue_depth, rin_config, sqs_client)

pytestmark = pytest.mark.timeout(180)

TABLE_DDL = "CREATE TABLE {t} (time timestamptz, i bigint, path text, status int)"
TARGETS = [{"redshift": {"table": "logs"}, "s3": {"key_prefix": "incoming/"}}]


def ndjson_gz(records) -> bytes:
    return gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode(), mtime=0)


class CuttingProxy:
    """An HTTP relay in front of moto's S3. The next `cut[key]` GETs of a key get their status,
    their headers (the whole Content-Length) and half the body, then the connection is closed:
    a cut S3 body. Counts the GETs of each key."""

    def __init__(self, upstream_port: int):
        self.cut: dict[str, int] = {}
        self.gets: dict[str, int] = {}
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def relay(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "content-length")}
                up = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                up.request(self.command, self.path, body=body, headers=headers)
                r = up.getresponse()
                data = r.read()
                up.close()
                key = unquote(urlsplit(self.path).path).split("/", 2)[-1]
                cut = False
                if self.command == "GET" and r.status == 200:
                    with proxy.lock:
                        proxy.gets[key] = proxy.gets.get(key, 0) + 1
                        cut = proxy.cut.get(key, 0) > 0
                        if cut:
                            proxy.cut[key] -= 1
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("connection", "content-length", "transfer-encoding",
                                         "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if cut:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = relay  # noqa: N815

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def s3_proxy(moto_server):
    p = CuttingProxy(moto_server.port)
    yield p
    p.close()


@pytest.mark.parametrize("recovers", [True, False], ids=["read-recovers", "read-stays-cut"])
def test_cut_body_fails_only_its_object(moto_server, s3_proxy, bucket, pgdb, tmp_path, recovers):
    """Four objects in one message batch and one group; the body of one is cut mid-response.
    The other three load at once (without waiting, and without reading any of them again
    later), and their messages are deleted. The cut
    object is retried alone: once readable it loads in the same run; still cut after its
    retries, it stays out of the ledger and its message alone stays, to load once on
    redelivery."""
    q, url = make_queue(moto_server)
    notify(moto_server, bucket, url)
    pgdb.sql(TABLE_DDL.format(t="logs"))
    cfg = rin_config(moto_server, pgdb, q, bucket, TARGETS)
    cfg["rin_ship"]["s3_endpoint"] = s3_proxy.endpoint
    imp = Importer(tmp_path, cfg)
    drain_bodies(moto_server, url)  # the s3:TestEvent
    s3 = moto_server.client()
    keys = [f"incoming/{n}.json.gz" for n in ("a", "b", "cut", "d")]
    for k, key in enumerate(keys):
        recs = [{"i": k * 1000 + j, "path": "/x" * 200, "status": 200} for j in range(300)]
        s3.put_object(Bucket=bucket, Key=key, Body=ndjson_gz(recs))
    assert queue_depth(moto_server, url) == 4
    cut = "incoming/cut.json.gz"
    # Recovering: only the first read is cut.
    s3_proxy.cut[cut] = 1 if recovers else 1000

    started = time.monotonic()
    s = imp.batch()
    took = time.monotonic() - started
    err = imp.stderr()
    assert s["messages"] == 4, s
    others = [k for k in keys if k != cut]
    # The group's transaction rolled back at the cut: the objects read before it are read
    # once more, in the load of the rest, and never again (before, the whole group was read
    # three times, then all four messages went back to the queue).
    reads = {"incoming/a.json.gz": 2, "incoming/b.json.gz": 2, "incoming/d.json.gz": 1}
    assert {k: s3_proxy.gets.get(k) for k in others} == reads, s3_proxy.gets
    ledger = lambda: sorted(r[0] for r in pgdb.sql("SELECT object_key FROM rin_ship_ledger"))  # noqa: E731
    if recovers:
        assert s["loaded_objects"] == 4 and s["kept"] == 0 and s["deleted"] == 4, s
        assert s["failed_loads"] == 0 and s["retried"] >= 1, s
        assert "cannot read the object: retrying it alone" in err, err[-4000:]
        assert ledger() == sorted(keys)
        assert queue_depth(moto_server, url) == 0
    else:
        # 1 read and 3 retries (1 s, 2 s, 4 s), then its message is left.
        assert s3_proxy.gets[cut] == 4, s3_proxy.gets
        assert took > 6, took
        assert s["loaded_objects"] == 3 and s["failed_loads"] == 1, s
        assert s["kept"] == 1 and s["deleted"] == 3 and s["retried"] == 3, s
        assert "its message is left for redelivery" in err, err[-4000:]
        assert ledger() == sorted(others)
        assert pgdb.count("logs") == 900
        assert queue_depth(moto_server, url) == 1
        # Readable again: the redelivery loads it, once.
        s3_proxy.cut.clear()
        time.sleep(3.5)  # the visibility timeout (3 s) runs out
        s = imp.batch()
        assert s["messages"] == 1 and s["loaded_objects"] == 1 and s["duplicates"] == 0, s
        assert s["deleted"] == 1 and s["kept"] == 0 and s["failed_loads"] == 0, s
        assert ledger() == sorted(keys)
        assert queue_depth(moto_server, url) == 0
        assert {k: s3_proxy.gets.get(k) for k in others} == reads, s3_proxy.gets
    assert pgdb.sql("SELECT count(*), count(DISTINCT i) FROM logs") == [["1200", "1200"]]


def test_drain_waits_for_messages_in_flight(moto_server, bucket, pgdb, tmp_path):
    """A consumer received two messages and died without deleting them (visibility 4 s). Plain
    `--batch` finds nothing visible and exits without them; `--batch --drain` waits until
    their visibility ends, loads them, and exits once nothing is visible or in flight."""
    q, url = make_queue(moto_server, visibility=4)
    notify(moto_server, bucket, url)
    pgdb.sql(TABLE_DDL.format(t="logs"))
    imp = Importer(tmp_path, rin_config(moto_server, pgdb, q, bucket, TARGETS,
                                        visibility_timeout_seconds=4))
    drain_bodies(moto_server, url)  # the s3:TestEvent
    s3 = moto_server.client()
    for n in range(2):
        s3.put_object(Bucket=bucket, Key=f"incoming/{n}.json.gz",
                      Body=ndjson_gz([{"i": n * 10 + j} for j in range(3)]))
    # The "killed" consumer: received, never deleted.
    held = sqs_client(moto_server).receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                                   WaitTimeSeconds=1)["Messages"]
    assert len(held) == 2
    received_at = time.monotonic()

    s = imp.batch()
    assert s["messages"] == 0 and s["loaded_objects"] == 0, s
    assert pgdb.count("logs") == 0 and queue_depth(moto_server, url) == 2
    assert time.monotonic() - received_at < 4, "too slow: the visibility ended already"

    s = imp.batch("--drain", "--max-execution-time", "60s")
    assert time.monotonic() - received_at >= 4
    assert s["messages"] == 2 and s["loaded_objects"] == 2 and s["deleted"] == 2, s
    assert pgdb.count("logs") == 6 and queue_depth(moto_server, url) == 0
    err = imp.stderr()
    assert "--drain: messages are still in flight" in err, err[-4000:]
    assert "queue is drained" in err, err[-4000:]


def test_drain_is_bounded_by_max_execution_time(moto_server, bucket, pgdb, tmp_path):
    """A message held for longer than --max-execution-time: the drain gives up at the limit
    and exits 0, the message still on the queue. `--drain` without `--batch` is refused."""
    q, url = make_queue(moto_server, visibility=60)
    pgdb.sql(TABLE_DDL.format(t="logs"))
    imp = Importer(tmp_path, rin_config(moto_server, pgdb, q, bucket, TARGETS))
    sqs = sqs_client(moto_server)
    sqs.send_message(QueueUrl=url, MessageBody='{"Records": []}')
    assert len(sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"]) == 1
    started = time.monotonic()
    s = imp.batch("--drain", "--max-execution-time", "3s")
    assert 3 <= time.monotonic() - started < 20
    assert s["messages"] == 0, s
    assert queue_depth(moto_server, url) == 1
    assert "max execution time reached" in imp.stderr()
    p = imp.run("--drain", check=False)
    assert p.returncode != 0 and "--batch" in p.stderr, p.stderr


def test_server_notices_stay_out_of_the_default_log(moto_server, bucket, pgdb, tmp_path):
    """Two tables in one batch: the second load of the session creates the temporary stage
    `IF NOT EXISTS` again, and PostgreSQL sends a NOTICE. At the default level (info) no notice
    is logged; at debug it is."""
    q, url = make_queue(moto_server)
    notify(moto_server, bucket, url)
    pgdb.sql(TABLE_DDL.format(t="logs"))
    pgdb.sql(TABLE_DDL.format(t="other"))
    targets = [{"redshift": {"table": "$1"}, "s3": {"key_regexp": "^incoming/([^/]+)/"}}]
    imp = Importer(tmp_path, rin_config(moto_server, pgdb, q, bucket, targets))
    s3 = moto_server.client()

    def put_both(n):
        for t in ("logs", "other"):
            s3.put_object(Bucket=bucket, Key=f"incoming/{t}/{n}.json.gz",
                          Body=ndjson_gz([{"i": n}]))

    put_both(1)
    s = imp.batch()
    assert s["loaded_objects"] == 2, s
    err = imp.stderr()
    assert "committed" in err, err[-4000:]
    assert "NOTICE" not in err and "already exists, skipping" not in err, err[-4000:]
    imp.env["RIN_SHIP_LOG"] = "debug"
    put_both(2)
    p = imp.run("--batch")
    assert "already exists, skipping" in p.stderr, p.stderr[-4000:]
    assert pgdb.count("logs") == 2 and pgdb.count("other") == 2


# ---------------------------------------------------------------------------------------------
# the warehouse failing under a load
# ---------------------------------------------------------------------------------------------


def put_objects(moto, bucket, n, rows=50):
    s3 = moto.client()
    for k in range(n):
        s3.put_object(Bucket=bucket, Key=f"incoming/{k}.json.gz",
                      Body=ndjson_gz([{"i": k * 1000 + j} for j in range(rows)]))


def exactly_once(pgdb, moto, url, objects, rows=50):
    assert pgdb.sql("SELECT count(*), count(DISTINCT i) FROM logs") == [
        [str(objects * rows), str(objects * rows)]]
    assert pgdb.sql("SELECT count(*), count(DISTINCT object_key) FROM rin_ship_ledger") == [
        [str(objects), str(objects)]]
    assert queue_depth(moto, url) == 0


def finish(imp, timeout=90) -> dict:
    out, _ = imp.proc.communicate(timeout=timeout)
    imp._err.close()
    assert imp.proc.returncode == 0, imp.stderr()[-6000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, out
    return json.loads(lines[-1])


@pytest.mark.parametrize("how", ["terminate", "restart"])
def test_warehouse_lost_between_copy_and_commit(moto_server, bucket, pgdb, tmp_path, how):
    """The rows are copied and the ledger rows written, then before the COMMIT the connection is
    terminated (pg_terminate_backend) or PostgreSQL restarts. No message is deleted before its
    commit, nothing is loaded twice, and the importer carries on by itself (`--batch --drain`
    keeps at it until the queue is empty)."""
    q, url = make_queue(moto_server)
    notify(moto_server, bucket, url)
    pgdb.sql(TABLE_DDL.format(t="logs"))
    imp = Importer(tmp_path, rin_config(moto_server, pgdb, q, bucket, TARGETS),
                   env={"RIN_SHIP_FAILPOINT": "pause_before_commit=3"})
    drain_bodies(moto_server, url)  # the s3:TestEvent
    put_objects(moto_server, bucket, 3)
    imp.start("--batch", "--drain", "--max-execution-time", "120s")
    wait_for_log = time.monotonic() + 30
    while "failpoint pause_before_commit" not in imp.stderr():
        assert time.monotonic() < wait_for_log, imp.stderr()[-4000:]
        time.sleep(0.1)
    assert pgdb.count("logs") == 0
    assert queue_depth(moto_server, url) == 3
    if how == "terminate":
        killed = pgdb.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                          f"WHERE application_name = 'rin-ship' AND datname = '{pgdb.name}'")
        assert int(killed[0][0]) >= 1, killed
    else:
        srv = pgdb.server
        srv._run([str(PG_BIN / "pg_ctl"), "-D", str(srv.dir / "data"), "-l",
                  str(srv.dir / "log"), "-m", "fast", "-w", "restart"])
    # Nothing committed, nothing deleted, while the importer is at it again.
    assert pgdb.count("logs") == 0
    s = finish(imp)
    exactly_once(pgdb, moto_server, url, 3)
    assert s["loaded_objects"] == 3 and s["duplicates"] == 0, s
    assert s["retried"] + s["kept"] >= 1, s
    err = imp.stderr()
    assert "load failed: COMMIT" in err, err[-4000:]
    # What the server said, not tokio-postgres's bare "db error".
    assert "warehouse connection closed: terminating connection" in err, err[-4000:]


def test_ledger_locked_by_another_connection(moto_server, bucket, pgdb, tmp_path):
    """Another connection holds the ledger table locked for 8 s and the importer's statements
    time out after 1 s (statement_timeout, SQLSTATE 57014): transient, retried, then left for
    redelivery; once the lock goes the objects load, once each, by themselves."""
    q, url = make_queue(moto_server)
    notify(moto_server, bucket, url)
    pgdb.sql(TABLE_DDL.format(t="logs"))
    imp = Importer(tmp_path, rin_config(moto_server, pgdb, q, bucket, TARGETS))
    drain_bodies(moto_server, url)  # the s3:TestEvent
    put_objects(moto_server, bucket, 1)
    s = imp.batch()  # creates the ledger
    assert s["loaded_objects"] == 1, s
    pgdb.sql(f"ALTER DATABASE {pgdb.name} SET statement_timeout = '1s'")
    locker = subprocess.Popen(
        [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(pgdb.port), "-U", "postgres",
         "-d", pgdb.name, "-v", "ON_ERROR_STOP=1", "-c",
         "SET statement_timeout = 0; BEGIN; LOCK TABLE rin_ship_ledger IN ACCESS EXCLUSIVE MODE;"
         " SELECT pg_sleep(8); COMMIT;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while pgdb.sql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                       "WHERE c.relname = 'rin_ship_ledger' AND l.mode = 'AccessExclusiveLock' "
                       "AND l.granted") != [["1"]]:
            assert time.monotonic() < deadline, "the lock was never taken"
            time.sleep(0.1)
        s3 = moto_server.client()
        for k in range(1, 4):
            s3.put_object(Bucket=bucket, Key=f"incoming/{k}.json.gz",
                          Body=ndjson_gz([{"i": k * 1000 + j} for j in range(50)]))
        s = imp.batch("--drain", "--max-execution-time", "60s", timeout=90)
    finally:
        locker.wait(30)
    exactly_once(pgdb, moto_server, url, 4)
    assert s["loaded_objects"] == 3 and s["duplicates"] == 0, s
    assert s["retried"] >= 1, s
    err = imp.stderr()
    assert "57014" in err or "statement timeout" in err, err[-4000:]
