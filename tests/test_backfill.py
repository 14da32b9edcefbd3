"""`rin-ship backfill` against moto S3 and a real PostgreSQL: objects already in the bucket are
loaded through the same ledger as `rin-ship import`, so what live loading took is a duplicate."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time

import pytest

from loadlib import (Importer, make_queue, ndjson_gz, notify, pg_server,  # noqa: F401
                     pgdb, queue_depth, rin_config, summary)
from rinlib import rin_ship_bin

pytestmark = pytest.mark.timeout(180)

TABLE_DDL = "CREATE TABLE {t} (time timestamptz, i bigint, path text, status int)"


def backfill(imp: Importer, *args, check=True, timeout=120) -> subprocess.CompletedProcess:
    imp.n += 1
    p = subprocess.run([str(rin_ship_bin()), "backfill", "--config", str(imp.config_path), *args],
                       env=imp.env, capture_output=True, text=True, timeout=timeout, cwd=imp.dir)
    (imp.dir / f"stderr.{imp.n}.log").write_text(p.stderr)
    if check:
        assert p.returncode == 0, f"backfill exited {p.returncode}:\n{p.stderr[-6000:]}"
    return p


def put(moto, bucket, key, records):
    moto.client().put_object(Bucket=bucket, Key=key, Body=ndjson_gz(records))


def setup(moto, pgdb, bucket, tmp_path, queue="unused-queue"):
    pgdb.sql(TABLE_DDL.format(t="logs"))
    targets = [{"redshift": {"table": "logs"}, "s3": {"key_prefix": "incoming/"}}]
    return Importer(tmp_path, rin_config(moto, pgdb, queue, bucket, targets))


def test_backfill_after_live_loading(moto_server, bucket, pgdb, tmp_path):
    q, url = make_queue(moto_server)
    notify(moto_server, bucket, url)
    imp = setup(moto_server, pgdb, bucket, tmp_path, queue=q)
    for o in range(3):
        put(moto_server, bucket, f"incoming/live/{o}.json.gz",
            [{"i": o * 100 + k, "path": "/live"} for k in range(5)])
    s = imp.batch()
    assert s["loaded_objects"] == 3 and pgdb.count("logs") == 15, s
    # Notifications off: these objects reach the warehouse only through the backfill.
    moto_server.client().put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={})
    for o in range(4):
        put(moto_server, bucket, f"incoming/old/{o} x.json.gz",
            [{"i": 1000 + o * 100 + k, "path": "/old"} for k in range(3)])
    moto_server.client().put_object(Bucket=bucket, Key="incoming/folder/", Body=b"")
    put(moto_server, bucket, "elsewhere/z.json.gz", [{"i": -1}])  # outside the prefix

    p = backfill(imp, "--prefix", f"s3://{bucket}/incoming/", "--batch-objects", "2")
    s = summary(p)
    assert s["listed"] == 8 and s["folders"] == 1 and s["selected"] == 7, s
    assert s["loaded"] == 4 and s["duplicates"] == 3 and s["failed"] == 0, s
    assert s["rows"] == 12 and s["processed"] == 7, s
    assert s["bytes"] > 0 and not s["interrupted"], s
    assert pgdb.count("logs") == 27
    assert pgdb.sql("SELECT count(DISTINCT i) FROM logs") == [["27"]]
    assert pgdb.sql("SELECT path, count(*) FROM logs GROUP BY path ORDER BY path") == [
        ["/live", "15"], ["/old", "12"]]
    assert pgdb.count("rin_ship_ledger") == 7
    # Not a terminal: no progress bar drawn, summary alone on stdout.
    assert p.stdout.strip().count("\n") == 0, p.stdout

    # Again, whole bucket: every object is a duplicate (or has no target), nothing loads twice.
    s = summary(backfill(imp, "--prefix", f"s3://{bucket}"))
    assert s["loaded"] == 0 and s["duplicates"] == 7 and s["no_target"] == 1, s
    assert s["rows"] == 0 and s["failed"] == 0, s
    assert pgdb.count("logs") == 27
    # The live importer has nothing left either.
    assert imp.batch()["loaded_objects"] == 0
    assert queue_depth(moto_server, url) == 0


def test_since_until_and_dry_run(moto_server, bucket, pgdb, tmp_path):
    imp = setup(moto_server, pgdb, bucket, tmp_path)
    c = moto_server.client()
    for o in range(2):
        put(moto_server, bucket, f"incoming/a/{o}.json.gz", [{"i": o}, {"i": 10 + o}])
    time.sleep(2.2)
    for o in range(3):
        put(moto_server, bucket, f"incoming/b/{o}.json.gz", [{"i": 100 + o}])
    listing = {o["Key"]: o["LastModified"] for o in
               c.list_objects_v2(Bucket=bucket, Prefix="incoming/")["Contents"]}
    last_a = max(v for k, v in listing.items() if k.startswith("incoming/a/"))
    first_b = min(v for k, v in listing.items() if k.startswith("incoming/b/"))
    assert first_b - last_a >= dt.timedelta(seconds=1), listing
    cut = (last_a.replace(microsecond=0) + dt.timedelta(seconds=1)).astimezone(dt.timezone.utc)
    cut_s = cut.isoformat().replace("+00:00", "Z")
    prefix = f"s3://{bucket}/incoming/"

    # Dry run: lists what would load, with the target; loads nothing, touches no database.
    p = backfill(imp, "--prefix", prefix, "--until", cut_s, "--dry-run")
    s = summary(p)
    assert s["dry_run"] and s["would_load"] == 2 and s["selected"] == 2, s
    assert s["outside_window"] == 3, s
    out = p.stdout
    assert f"s3://{bucket}/incoming/a/0.json.gz (" in out and '=> target 0 "public"."logs"' in out, out
    assert "incoming/b/" not in out, out
    assert pgdb.count("logs") == 0
    assert pgdb.sql("SELECT to_regclass('public.rin_ship_ledger') IS NULL") == [["t"]]

    s = summary(backfill(imp, "--prefix", prefix, "--until", cut_s))
    assert s["loaded"] == 2 and s["rows"] == 4 and s["outside_window"] == 3, s
    assert pgdb.sql("SELECT min(i), max(i), count(*) FROM logs") == [["0", "11", "4"]]

    # --since takes the other side (an offset other than Z is fine).
    since = cut.astimezone(dt.timezone(dt.timedelta(hours=9))).isoformat()
    s = summary(backfill(imp, "--prefix", prefix, "--since", since))
    assert s["loaded"] == 3 and s["rows"] == 3 and s["duplicates"] == 0, s
    assert pgdb.count("logs") == 7

    # Dates: a window with nothing in it; an unbounded run finds only duplicates.
    s = summary(backfill(imp, "--prefix", prefix, "--since", "2001-01-01", "--until",
                         "2001-01-02"))
    assert s["selected"] == 0 and s["outside_window"] == 5 and s["loaded"] == 0, s
    s = summary(backfill(imp, "--prefix", prefix))
    assert s["duplicates"] == 5 and s["loaded"] == 0, s
    assert pgdb.count("logs") == 7

    p = backfill(imp, "--prefix", prefix, "--since", "2024-05-02", "--until", "2024-05-01",
                 check=False)
    assert p.returncode != 0 and "is not before" in p.stderr
    p = backfill(imp, "--prefix", prefix, "--since", "last tuesday", check=False)
    assert p.returncode != 0 and "RFC 3339" in p.stderr
    p = backfill(imp, "--prefix", f"{bucket}/incoming/", check=False)
    assert p.returncode != 0 and "s3://bucket/prefix" in p.stderr


def test_failed_object_exits_nonzero(moto_server, bucket, pgdb, tmp_path):
    pgdb.sql(TABLE_DDL.format(t="logs"))
    targets = [{"redshift": {"table": "$1"}, "s3": {"key_regexp": "^t/([a-z_]+)/"}}]
    imp = Importer(tmp_path, rin_config(moto_server, pgdb, "unused", bucket, targets))
    put(moto_server, bucket, "t/logs/1.json.gz", [{"i": 1}, {"i": 2}])
    put(moto_server, bucket, "t/missing_table/1.json.gz", [{"i": 3}])
    put(moto_server, bucket, "t/logs/2.json.gz", [{"i": 4}])
    # A data error (not gzip) goes to quarantine: not a failure.
    moto_server.client().put_object(Bucket=bucket, Key="t/logs/3.json.gz", Body=b"not gzip")
    p = backfill(imp, "--prefix", f"s3://{bucket}/t/", check=False)
    assert p.returncode != 0, p.stderr
    s = summary(p)
    assert s["loaded"] == 2 and s["failed"] == 1 and s["rows"] == 3, s
    assert s["quarantined"] == 1, s
    assert "t/missing_table/1.json.gz" in p.stderr and "could not be loaded" in p.stderr
    assert pgdb.count("logs") == 3
    # Fixed, then the same backfill again: only the object that failed loads.
    pgdb.sql(TABLE_DDL.format(t="missing_table"))
    s = summary(backfill(imp, "--prefix", f"s3://{bucket}/t/"))
    assert s["loaded"] == 1 and s["duplicates"] == 2 and s["failed"] == 0, s
    assert pgdb.count("logs") == 3 and pgdb.count("missing_table") == 1


def test_versioned_bucket_keys_by_version(moto_server, bucket, pgdb, tmp_path):
    """On a versioned bucket the current version of each key is loaded, under its version id
    (as a live event's ledger row would be); older versions are not loaded."""
    c = moto_server.client()
    c.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    imp = setup(moto_server, pgdb, bucket, tmp_path)
    put(moto_server, bucket, "incoming/v.json.gz", [{"i": 1}])
    put(moto_server, bucket, "incoming/v.json.gz", [{"i": 2}, {"i": 3}])  # the current one
    put(moto_server, bucket, "incoming/w.json.gz", [{"i": 4}])
    current = c.head_object(Bucket=bucket, Key="incoming/v.json.gz")["VersionId"]
    s = summary(backfill(imp, "--prefix", f"s3://{bucket}/incoming/"))
    assert s["listed"] == 2 and s["loaded"] == 2 and s["rows"] == 3, s
    assert pgdb.sql("SELECT string_agg(i::text, ',' ORDER BY i) FROM logs") == [["2,3,4"]]
    assert [current] in pgdb.sql(
        "SELECT version_id FROM rin_ship_ledger WHERE object_key = 'incoming/v.json.gz'")
    s = summary(backfill(imp, "--prefix", f"s3://{bucket}/incoming/"))
    assert s["duplicates"] == 2 and s["loaded"] == 0, s
