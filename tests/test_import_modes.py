"""`rin-ship import` insert modes, load errors and quarantine, against moto (S3 + SQS) and a real
PostgreSQL 15.

Every batch here is built by hand: the objects are put, their notifications drained, and their
records sent again as ONE message, so the objects load together, in that order, in one
transaction (the way a batch of up to 10 messages does)."""

from __future__ import annotations

import gzip
import json
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from loadlib import (PG_BIN, Importer, drain_bodies, make_queue, ndjson_gz, notify,  # noqa: F401
                     pg_server, pgdb, queue_depth, rin_config, send_body, wait_for)
from rinlib import free_port

pytestmark = pytest.mark.timeout(180)

KV_DDL = "CREATE TABLE {t} (id bigint, v text, seq int, note text DEFAULT 'dflt')"
LOGS_DDL = "CREATE TABLE {t} (time timestamptz, i bigint, path text, status int)"


def setup(moto, pgdb, bucket, tmp_path, target: dict, ddl=KV_DDL, table="kv", **ext):
    q, url = make_queue(moto)
    notify(moto, bucket, url)
    pgdb.sql(ddl.format(t=table))
    t = {"redshift": {"table": table}, "s3": {"key_prefix": "in/"}}
    t.update(target)
    imp = Importer(tmp_path, rin_config(moto, pgdb, q, bucket, [t], **ext))
    drain_bodies(moto, url)  # the s3:TestEvent
    return url, imp


def put_raw(moto, bucket, key, body: bytes):
    moto.client().put_object(Bucket=bucket, Key=key, Body=body)


def batch_message(moto, bucket, url, objects: list[tuple[str, object]]) -> str:
    """Puts the objects (records, or raw bytes), then sends their records as one message, in
    order. Returns the message body (to send it again)."""
    for key, body in objects:
        put_raw(moto, bucket, key, body if isinstance(body, bytes) else ndjson_gz(body))
    bodies = drain_bodies(moto, url)
    recs = [json.loads(b)["Records"][0] for b in bodies]
    by_key = {urllib.parse.unquote_plus(r["s3"]["object"]["key"]): r for r in recs}
    body = json.dumps({"Records": [by_key[k] for k, _ in objects]})
    send_body(moto, url, body)
    return body


def rows(pgdb, sql="SELECT id, v FROM kv ORDER BY id NULLS LAST, v"):
    return [tuple(r) for r in pgdb.sql(sql)]


# ---------------------------------------------------------------------------------------------
# insert modes
# ---------------------------------------------------------------------------------------------


def test_overwrite_existing_latest_wins(moto_server, bucket, pgdb, tmp_path):
    url, imp = setup(moto_server, pgdb, bucket, tmp_path,
                     {"insert_mode": "OVERWRITE_EXISTING", "key_columns": ["id"]})
    pgdb.sql("INSERT INTO kv (id, v) VALUES (2, 'pre'), (9, 'pre')")
    first = batch_message(moto_server, bucket, url, [
        # The same key twice in one object: the later line wins.
        ("in/a.json.gz", [{"id": 1, "v": "a1"}, {"id": 2, "v": "a2"}, {"id": 1, "v": "a1-later"},
                          {"v": "no key a"}]),
        # ... and in a later object of the same batch: the later object wins.
        ("in/b.json.gz", [{"id": 2, "v": "b2"}, {"id": 3, "v": "b3"}]),
    ])
    s = imp.batch()
    assert s["loaded_objects"] == 2 and s["failed_loads"] == 0 and s["deleted"] == 1, s
    assert rows(pgdb) == [("1", "a1-later"), ("2", "b2"), ("3", "b3"), ("9", "pre"),
                          ("", "no key a")]
    # Rows written per object in the ledger: a: ids 1 + the keyless row, b: ids 2, 3.
    assert pgdb.sql("SELECT object_key, row_count, batch_rows FROM rin_ship_ledger "
                    "ORDER BY object_key") == [["in/a.json.gz", "2", "4"],
                                               ["in/b.json.gz", "2", "4"]]
    assert s["loaded_rows"] == 4, s
    # An overlapping later batch replaces what it names, keeps the rest; a row without its key
    # never matches (it is appended).
    batch_message(moto_server, bucket, url, [
        ("in/c.json.gz", [{"id": 1, "v": "c1"}, {"id": 4, "v": "c4"}, {"v": "no key c"}]),
    ])
    s = imp.batch()
    assert s["loaded_objects"] == 1, s
    after = [("1", "c1"), ("2", "b2"), ("3", "b3"), ("4", "c4"), ("9", "pre"),
             ("", "no key a"), ("", "no key c")]
    assert rows(pgdb) == after
    # The first batch delivered again: the ledger skips it, nothing changes.
    send_body(moto_server, url, first)
    s = imp.batch()
    assert s["duplicates"] == 2 and s["loaded_objects"] == 0, s
    assert rows(pgdb) == after
    # Missing keys get the column default, as in APPEND.
    assert pgdb.sql("SELECT DISTINCT note FROM kv WHERE v <> 'pre'") == [["dflt"]]
    assert queue_depth(moto_server, url) == 0


def test_overwrite_existing_order_column(moto_server, bucket, pgdb, tmp_path):
    url, imp = setup(moto_server, pgdb, bucket, tmp_path,
                     {"insert_mode": "OVERWRITE_EXISTING", "key_columns": ["id"],
                      "order_column": "seq"})
    batch_message(moto_server, bucket, url, [
        ("in/a.json.gz", [{"id": 1, "seq": 5, "v": "a1@5"}, {"id": 2, "seq": 1, "v": "a2@1"},
                          {"id": 3, "seq": 2, "v": "a3@2"}]),
        # Later object, but older by seq for id 1; NULL seq loses to any seq.
        ("in/b.json.gz", [{"id": 1, "seq": 3, "v": "b1@3"}, {"id": 2, "seq": 2, "v": "b2@2"},
                          {"id": 3, "v": "b3@null"}]),
    ])
    s = imp.batch()
    assert s["loaded_objects"] == 2, s
    assert rows(pgdb) == [("1", "a1@5"), ("2", "b2@2"), ("3", "a3@2")]
    # Across batches, arrival decides: a later batch overwrites whatever its seq.
    batch_message(moto_server, bucket, url, [("in/c.json.gz", [{"id": 1, "seq": 0, "v": "c1@0"}])])
    imp.batch()
    assert rows(pgdb) == [("1", "c1@0"), ("2", "b2@2"), ("3", "a3@2")]


def test_keep_existing_first_wins(moto_server, bucket, pgdb, tmp_path):
    url, imp = setup(moto_server, pgdb, bucket, tmp_path,
                     {"insert_mode": "KEEP_EXISTING", "key_columns": ["id", "seq"]})
    pgdb.sql("INSERT INTO kv (id, seq, v) VALUES (9, 0, 'pre')")
    first = batch_message(moto_server, bucket, url, [
        ("in/a.json.gz", [{"id": 1, "seq": 0, "v": "a1"}, {"id": 1, "seq": 0, "v": "a1-later"},
                          {"id": 1, "seq": 1, "v": "a1-seq1"}, {"id": 9, "seq": 0, "v": "a9"}]),
        ("in/b.json.gz", [{"id": 1, "seq": 0, "v": "b1"}, {"id": 2, "seq": 0, "v": "b2"}]),
    ])
    s = imp.batch()
    assert s["loaded_objects"] == 2, s
    sql = "SELECT id, seq, v FROM kv ORDER BY id, seq"
    want = [("1", "0", "a1"), ("1", "1", "a1-seq1"), ("2", "0", "b2"), ("9", "0", "pre")]
    assert rows(pgdb, sql) == want
    assert pgdb.sql("SELECT object_key, row_count FROM rin_ship_ledger ORDER BY 1") == [
        ["in/a.json.gz", "2"], ["in/b.json.gz", "1"]]
    batch_message(moto_server, bucket, url, [
        ("in/c.json.gz", [{"id": 2, "seq": 0, "v": "c2"}, {"id": 5, "seq": 0, "v": "c5"}]),
    ])
    s = imp.batch()
    want.insert(3, ("5", "0", "c5"))
    assert rows(pgdb, sql) == want
    assert s["loaded_rows"] == 1, s
    send_body(moto_server, url, first)
    s = imp.batch()
    assert s["duplicates"] == 2, s
    assert rows(pgdb, sql) == want
    assert queue_depth(moto_server, url) == 0


def test_truncate_replaces_the_table(moto_server, bucket, pgdb, tmp_path):
    url, imp = setup(moto_server, pgdb, bucket, tmp_path, {"insert_mode": "TRUNCATE"})
    pgdb.sql("INSERT INTO kv (id, v) VALUES (100, 'old'), (101, 'old')")
    first = batch_message(moto_server, bucket, url, [
        ("in/a.json.gz", [{"id": 1, "v": "a"}, {"id": 2, "v": "a"}]),
        ("in/b.json.gz", [{"id": 3, "v": "b"}]),
    ])
    s = imp.batch()
    assert s["loaded_objects"] == 2 and s["loaded_rows"] == 3, s
    assert rows(pgdb) == [("1", "a"), ("2", "a"), ("3", "b")]
    batch_message(moto_server, bucket, url, [("in/c.json.gz", [{"id": 7, "v": "c"}])])
    imp.batch()
    assert rows(pgdb) == [("7", "c")]
    # Redelivered: already loaded, so the table is not emptied again.
    send_body(moto_server, url, first)
    s = imp.batch()
    assert s["duplicates"] == 2 and s["loaded_objects"] == 0, s
    assert rows(pgdb) == [("7", "c")]
    assert queue_depth(moto_server, url) == 0


def test_insert_mode_default_and_bad_config(moto_server, bucket, pgdb, tmp_path):
    # Top-level default (Rin-style merge), overridden per target.
    q, url = make_queue(moto_server)
    cfg = rin_config(moto_server, pgdb, q, bucket, [
        {"redshift": {"table": "kv"}, "s3": {"key_prefix": "in/"}},
        {"redshift": {"table": "kv2"}, "s3": {"key_prefix": "in2/"}, "insert_mode": "APPEND"},
    ])
    cfg["insert_mode"] = "OVERWRITE_EXISTING"
    imp = Importer(tmp_path, cfg)
    p = imp.run("--dry-run", f"s3://{bucket}/in/x.json.gz", check=False)
    assert p.returncode != 0 and "targets[0]: insert_mode OVERWRITE_EXISTING needs key_columns" \
        in p.stderr, p.stderr
    cfg["key_columns"] = ["id"]
    imp = Importer(tmp_path, cfg, name="imp2")
    p = imp.run("--dry-run", f"s3://{bucket}/in/x.json.gz")
    assert "(OVERWRITE_EXISTING by id)" in p.stdout, p.stdout
    assert "kv2" in p.stdout and p.stdout.count("OVERWRITE_EXISTING") == 1, p.stdout


# ---------------------------------------------------------------------------------------------
# load errors and quarantine
# ---------------------------------------------------------------------------------------------


def quarantine_records(moto, bucket) -> list[dict]:
    c = moto.client()
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix="rin-ship/quarantine/")
            .get("Contents", [])]
    return [json.loads(c.get_object(Bucket=bucket, Key=k)["Body"].read()) | {"_key": k}
            for k in keys]


def test_quarantine_bad_object_does_not_block_good_ones(moto_server, bucket, pgdb, tmp_path):
    port = free_port()
    url, imp = setup(moto_server, pgdb, bucket, tmp_path, {}, ddl=LOGS_DDL, table="logs",
                     metrics_bind=f"127.0.0.1:{port}")
    bad_rows = [{"i": 1}, {"i": 2}, {"i": "not a number"}, {"i": 4}]
    batch_message(moto_server, bucket, url, [
        ("in/good1.json.gz", [{"i": 10}, {"i": 11}]),
        ("in/bad-type.json.gz", bad_rows),
        ("in/bad-json.json.gz", gzip.compress(b'{"i": 20}\n{"i": oops}\n', mtime=0)),
        ("in/bad-gzip.json.gz", b"\x1f\x8b\x08\x00 this is not gzip"),
        ("in/good2.json.gz", [{"i": 30}]),
    ])
    p = imp.start()
    try:
        wait_for(lambda: len(quarantine_records(moto_server, bucket)) == 3, 60, "3 quarantined")
        wait_for(lambda: queue_depth(moto_server, url) == 0, 30, "the message deleted")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        metrics = metrics.decode()
    finally:
        p.terminate()
    out, _ = p.communicate(timeout=30)
    s = json.loads(out.strip().splitlines()[-1])
    assert s["loaded_objects"] == 2 and s["quarantined"] == 3, s
    # Deleted: the batch's message, and the notifications of the quarantine records
    # themselves (this bucket notifies for every key; no target matches them).
    assert s["failed_loads"] == 0 and s["kept"] == 0, s
    assert s["deleted"] == 1 + s["no_target"] and s["no_target"] <= 3, s
    assert pgdb.count("logs") == 3
    assert pgdb.sql("SELECT i FROM logs ORDER BY i") == [["10"], ["11"], ["30"]]
    # The ledger lists loaded objects only.
    assert [r[0] for r in pgdb.sql("SELECT object_key FROM rin_ship_ledger ORDER BY 1")] == [
        "in/good1.json.gz", "in/good2.json.gz"]
    recs = {r["key"]: r for r in quarantine_records(moto_server, bucket)}
    assert set(recs) == {"in/bad-type.json.gz", "in/bad-json.json.gz", "in/bad-gzip.json.gz"}
    r = recs["in/bad-type.json.gz"]
    assert r["entries"] == [{"url": f"s3://{bucket}/in/bad-type.json.gz", "mandatory": True}]
    assert r["table"] == '"public"."logs"' and r["etag"] and r["quarantined_at"]
    assert r["error"]["kind"] == "data" and r["error"]["sqlstate"] == "22P02", r
    [d] = r["error"]["details"]
    assert d["url"] == f"s3://{bucket}/in/bad-type.json.gz" and d["line"] == 3, d
    assert d["column"] == "i" and "not a number" in d["reason"], d
    r = recs["in/bad-json.json.gz"]
    assert r["error"]["sqlstate"] == "22P02", r
    assert r["error"]["details"][0]["line"] == 2, r
    assert "json" in r["error"]["details"][0]["reason"].lower(), r
    r = recs["in/bad-gzip.json.gz"]
    assert "gzip" in r["error"]["message"], r
    err = imp.stderr()
    assert "object quarantined" in err and "bad-type.json.gz" in err
    assert 'rin_import_quarantined_total 3' in metrics, metrics
    assert 'rin_import_load_errors_total{kind="data"}' in metrics, metrics
    # Delivered again: rewritten in place (deterministic key), nothing loaded twice.
    time.sleep(1)
    before = {r["_key"] for r in quarantine_records(moto_server, bucket)}
    for key in ("in/bad-type.json.gz", "in/good1.json.gz"):
        moto_server.client().copy_object(Bucket=bucket, Key=key,
                                         CopySource={"Bucket": bucket, "Key": key},
                                         MetadataDirective="REPLACE")  # same bytes, same ETag
    s = imp.batch()
    assert s["quarantined"] == 1 and s["duplicates"] == 1 and s["kept"] == 0, s
    assert {r["_key"] for r in quarantine_records(moto_server, bucket)} == before
    assert pgdb.count("logs") == 3


def test_quarantine_in_a_keyed_batch(moto_server, bucket, pgdb, tmp_path):
    url, imp = setup(moto_server, pgdb, bucket, tmp_path,
                     {"insert_mode": "OVERWRITE_EXISTING", "key_columns": ["id"]},
                     quarantine_prefix=f"s3://{bucket}/qq")
    batch_message(moto_server, bucket, url, [
        ("in/a.json.gz", [{"id": 1, "v": "a1"}, {"id": 2, "v": "a2"}]),
        ("in/bad.json.gz", [{"id": 1, "v": "bad1"}, {"id": "x", "v": "bad"}]),
        ("in/c.json.gz", [{"id": 2, "v": "c2"}]),
    ])
    s = imp.batch()
    assert s["loaded_objects"] == 2 and s["quarantined"] == 1 and s["kept"] == 0, s
    assert s["deleted"] == 1 + s["no_target"], s  # (+ the quarantine record's notification)
    # The good objects still load together, in order: c's id 2 wins.
    assert rows(pgdb) == [("1", "a1"), ("2", "c2")]
    c = moto_server.client()
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix="qq/")["Contents"]]
    assert len(keys) == 1
    r = json.loads(c.get_object(Bucket=bucket, Key=keys[0])["Body"].read())
    assert r["key"] == "in/bad.json.gz" and r["error"]["details"][0]["line"] == 2, r
    assert r["error"]["details"][0]["column"] == "id", r


def test_quarantine_off_keeps_the_message(moto_server, bucket, pgdb, tmp_path):
    url, imp = setup(moto_server, pgdb, bucket, tmp_path, {}, ddl=LOGS_DDL, table="logs",
                     quarantine=False)
    batch_message(moto_server, bucket, url, [
        ("in/good.json.gz", [{"i": 1}]),
        ("in/bad.json.gz", [{"i": "x"}]),
    ])
    s = imp.batch()
    assert s["loaded_objects"] == 1 and s["quarantined"] == 0, s
    assert s["failed_loads"] == 1 and s["kept"] == 1, s
    assert quarantine_records(moto_server, bucket) == []
    assert queue_depth(moto_server, url) == 1


# ---------------------------------------------------------------------------------------------
# transient errors: a lock held on the table makes the load hit lock_timeout (55P03)
# ---------------------------------------------------------------------------------------------


def hold_lock(pgdb, table: str, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen(
        [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(pgdb.port), "-U", "postgres",
         "-d", pgdb.name, "-v", "ON_ERROR_STOP=1", "-c",
         f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({seconds}); "
         "COMMIT;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: pgdb.sql(
        f"SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass "
        "AND mode = 'AccessExclusiveLock' AND granted") == [["1"]], 10, "the lock")
    return p


def test_transient_error_is_retried(moto_server, bucket, pgdb, tmp_path):
    url, imp = setup(moto_server, pgdb, bucket, tmp_path, {}, ddl=LOGS_DDL, table="logs")
    pgdb.sql(f"ALTER DATABASE {pgdb.name} SET lock_timeout = '300ms'")
    batch_message(moto_server, bucket, url, [("in/a.json.gz", [{"i": 1}, {"i": 2}])])
    locker = hold_lock(pgdb, "logs", 1.5)
    s = imp.batch()
    locker.wait(10)
    assert s["retried"] >= 1 and s["loaded_objects"] == 1, s
    assert s["failed_loads"] == 0 and s["quarantined"] == 0 and s["deleted"] == 1, s
    assert pgdb.count("logs") == 2
    err = imp.stderr()
    assert "kind=\"transient\"" in err or "kind=transient" in err, err[-3000:]
    assert "55P03" in err


def test_transient_error_gives_up_and_keeps_the_message(moto_server, bucket, pgdb, tmp_path):
    url, imp = setup(moto_server, pgdb, bucket, tmp_path, {}, ddl=LOGS_DDL, table="logs")
    pgdb.sql(f"ALTER DATABASE {pgdb.name} SET lock_timeout = '200ms'")
    batch_message(moto_server, bucket, url, [("in/a.json.gz", [{"i": 1}])])
    locker = hold_lock(pgdb, "logs", 60)
    try:
        s = imp.batch()
    finally:
        # (psql's backend would sleep on after psql is gone: end it on the server.)
        pgdb.sql("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE relation = "
                 "'logs'::regclass AND mode = 'AccessExclusiveLock'")
        locker.wait(10)
    assert s["retried"] == 2 and s["failed_loads"] == 1 and s["kept"] == 1, s
    assert s["quarantined"] == 0, s
    assert queue_depth(moto_server, url) == 1
    assert quarantine_records(moto_server, bucket) == []
    time.sleep(3.5)  # the visibility timeout runs out; the lock is gone
    s = imp.batch()
    assert s["loaded_objects"] == 1 and s["deleted"] == 1, s
    assert pgdb.count("logs") == 1
