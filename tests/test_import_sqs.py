"""`rin-ship import` and SQS delivery semantics against moto: duplicate deliveries (a multipart
upload notifies twice), a real dead-letter queue (RedrivePolicy), and one message carrying
several records of which some fail. Already covered in test_import_pg.py and not repeated here:
the same notification delivered twice (test_same_notification_twice), a redelivery after SIGKILL
(test_sigkill_between_commit_and_delete), one record failing on a missing table
(test_one_failing_record_in_a_message), bad bodies left on the queue (test_bad_input_outcomes)."""

from __future__ import annotations

import gzip
import json
import time

import pytest

from loadlib import (Importer, drain_bodies, make_queue, notify, pg_server,  # noqa: F401
                     pgdb, queue_depth, rin_config, send_body, sqs_client)

pytestmark = pytest.mark.timeout(180)

TABLE_DDL = "CREATE TABLE {t} (time timestamptz, i bigint, path text, status int)"


def ndjson(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def total(runs: list[dict], field: str) -> int:
    return sum(s[field] for s in runs)


def test_multipart_upload_notifies_twice_loads_once(moto_server, bucket, pgdb, tmp_path):
    """moto sends `ObjectCreated:Put` and `ObjectCreated:CompleteMultipartUpload` (same key,
    same ETag) for one CompleteMultipartUpload: the rows must appear once."""
    q, url = make_queue(moto_server)
    notify(moto_server, bucket, url)
    pgdb.sql(TABLE_DDL.format(t="logs"))
    imp = Importer(tmp_path, rin_config(moto_server, pgdb, q, bucket,
                                        [{"redshift": {"table": "logs"},
                                          "s3": {"key_prefix": "incoming/"}}]))
    # Two parts, each its own gzip member (as fluent-bit's multipart objects are); S3 wants
    # every part but the last to be at least 5 MiB, so the first member is stored uncompressed.
    pad = "x" * 1000
    part1_recs = [{"i": i, "path": pad, "status": 200} for i in range(5400)]
    part2_recs = [{"i": 5400 + i, "path": "/p2", "status": 201} for i in range(100)]
    part1 = gzip.compress(ndjson(part1_recs), compresslevel=0, mtime=0)
    part2 = gzip.compress(ndjson(part2_recs), mtime=0)
    assert len(part1) > 5 * 1024 * 1024
    key = "incoming/mp x.json.gz"
    s3 = moto_server.client()
    up = s3.create_multipart_upload(Bucket=bucket, Key=key)
    parts = []
    for n, body in enumerate([part1, part2], start=1):
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=n,
                           Body=body)
        parts.append({"ETag": r["ETag"], "PartNumber": n})
    done = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"],
                                        MultipartUpload={"Parts": parts})
    etag = done["ETag"].strip('"')
    assert etag.endswith("-2"), etag

    s = imp.batch()
    # s3:TestEvent + the two notifications of the one upload.
    assert s["messages"] == 3 and s["test_events"] == 1, s
    assert s["loaded_objects"] == 1 and s["duplicates"] == 1, s
    assert s["loaded_rows"] == len(part1_recs) + len(part2_recs), s
    assert s["deleted"] == 3 and s["kept"] == 0 and s["failed_loads"] == 0, s
    n = len(part1_recs) + len(part2_recs)
    assert pgdb.sql("SELECT count(*), count(DISTINCT i), min(i), max(i) FROM logs") == [
        [str(n), str(n), "0", str(n - 1)]]
    assert pgdb.sql("SELECT object_key, etag, row_count FROM rin_ship_ledger") == [
        [key, etag, str(n)]]
    assert queue_depth(moto_server, url) == 0
    # Nothing left to do on a second run.
    s = imp.batch()
    assert s["messages"] == 0 and pgdb.count("logs") == n, s


def make_redrive_queue(moto, max_receive_count: int) -> tuple[str, str, str]:
    """A queue whose RedrivePolicy moves a message to a fresh dead-letter queue after
    `max_receive_count` receives. Returns (name, url, dlq_url)."""
    sqs = sqs_client(moto)
    _, dlq_url = make_queue(moto)
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    name, url = make_queue(moto)
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)})})
    return name, url, dlq_url


def test_poison_message_lands_in_dead_letter_queue(moto_server, bucket, pgdb, tmp_path):
    q, url, dlq = make_redrive_queue(moto_server, max_receive_count=2)
    notify(moto_server, bucket, url)
    pgdb.sql(TABLE_DDL.format(t="logs"))
    # rin_ship.visibility_timeout_seconds may not go below 3 (config validation).
    imp = Importer(tmp_path, rin_config(
        moto_server, pgdb, q, bucket,
        [{"redshift": {"table": "logs"}, "s3": {"key_prefix": "incoming/"}}],
        visibility_timeout_seconds=3, wait_time_seconds=1, max_receive_count_warn=2))
    poison = '{"Records": [ this is not JSON'
    send_body(moto_server, url, poison)
    moto_server.client().put_object(Bucket=bucket, Key="incoming/good.json.gz",
                                    Body=gzip.compress(ndjson([{"i": 1}, {"i": 2}]), mtime=0))
    sqs = sqs_client(moto_server)

    def dlq_depth() -> int:
        a = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=[
            "ApproximateNumberOfMessages"])["Attributes"]
        return int(a["ApproximateNumberOfMessages"])

    runs = []
    deadline = time.monotonic() + 60
    while dlq_depth() == 0:
        assert time.monotonic() < deadline, (
            f"the poison message never reached the dead-letter queue: {runs}\n"
            + imp.stderr()[-4000:])
        runs.append(imp.batch())
        time.sleep(1)
    assert dlq_depth() == 1
    assert total(runs, "loaded_objects") == 1 and total(runs, "loaded_rows") == 2, runs
    assert pgdb.count("logs") == 2
    assert pgdb.sql("SELECT count(*) FROM rin_ship_ledger") == [["1"]]
    # maxReceiveCount=2: the importer saw it twice, then SQS moved it on the third receive.
    assert total(runs, "unparseable") == 2 and total(runs, "kept") == 2, runs
    assert total(runs, "duplicates") == 0, runs
    assert queue_depth(moto_server, url) == 0
    got = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                              MessageSystemAttributeNames=["ApproximateReceiveCount"])
    msgs = got.get("Messages", [])
    assert [m["Body"] for m in msgs] == [poison]
    err = imp.stderr()
    assert "left for the dead-letter queue" in err and "malformed_json" in err, err[-4000:]
    assert "receive_count=1" in err and "receive_count=2" in err, err[-4000:]
    # The first failure is a warning; at max_receive_count_warn (2) it is reported as poison.
    assert "it will be delivered again" in err, err[-4000:]
    assert "poison message: failed 2 times" in err, err[-4000:]
    assert "poison message: failed 1 times" not in err, err[-4000:]


@pytest.mark.parametrize("quarantine", [True, False], ids=["quarantine", "no-quarantine"])
def test_message_with_bad_object_and_bad_identifier(moto_server, bucket, pgdb, tmp_path,
                                                    quarantine):
    """One message, five records: two good objects, an object that is neither gzip nor JSON,
    a key whose `$1` is not an identifier, and a good object in another table. The good ones
    load once; the bad identifier keeps the message; the bad object is quarantined (default)
    or, with `rin_ship.quarantine: false`, fails and keeps the message too; its redelivery
    loads nothing twice."""
    q, url = make_queue(moto_server)
    # Only t/: quarantine records written into this bucket must not come back as messages.
    notify(moto_server, bucket, url, prefix="t/")
    pgdb.sql(TABLE_DDL.format(t="logs"))
    pgdb.sql(TABLE_DDL.format(t="other"))
    targets = [{"redshift": {"table": "$1"}, "s3": {"key_regexp": "^t/([^/]+)/"}}]
    imp = Importer(tmp_path, rin_config(moto_server, pgdb, q, bucket, targets,
                                        quarantine=quarantine))
    drain_bodies(moto_server, url)  # the s3:TestEvent
    s3 = moto_server.client()
    objects = [
        ("t/logs/1.json.gz", gzip.compress(ndjson([{"i": 1}, {"i": 2}]), mtime=0)),
        ("t/logs/garbage.json.gz", b"this is neither gzip nor JSON\n"),
        ("t/bad-name/1.json.gz", gzip.compress(ndjson([{"i": 99}]), mtime=0)),
        ("t/logs/2.json.gz", gzip.compress(ndjson([{"i": 3}]), mtime=0)),
        ("t/other/1.json.gz", gzip.compress(ndjson([{"i": 4}, {"i": 5}, {"i": 6}]), mtime=0)),
    ]
    for key, body in objects:
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    bodies = drain_bodies(moto_server, url)
    assert len(bodies) == len(objects)
    recs = [r for b in bodies for r in json.loads(b)["Records"]]
    send_body(moto_server, url, json.dumps({"Records": recs}))
    bad_object = {"quarantined": 1, "failed_loads": 0} if quarantine else {
        "quarantined": 0, "failed_loads": 1}

    def check(s, loaded, duplicates):
        assert s["messages"] == 1, s
        assert s["loaded_objects"] == loaded and s["duplicates"] == duplicates, s
        assert s["invalid_identifier"] == 1 and s["kept"] == 1 and s["deleted"] == 0, s
        assert {k: s.get(k, 0) for k in bad_object} == bad_object, s
        assert pgdb.count("logs") == 3 and pgdb.count("other") == 3
        assert pgdb.sql("SELECT count(DISTINCT i) FROM logs") == [["3"]]
        assert queue_depth(moto_server, url) == 1

    s = imp.batch()
    check(s, loaded=3, duplicates=0)
    assert s["loaded_rows"] == 6, s
    err = imp.stderr()
    assert "not a valid identifier" in err and "bad-name" in err, err[-4000:]
    # rin-ship reads the lines itself: the line and what is wrong with it, as the server would say it.
    assert "garbage.json.gz line 1: invalid JSON" in err and "22P02" in err, err[-4000:]

    time.sleep(3.5)  # the visibility timeout (3 s) runs out: the message comes back
    s = imp.batch()
    check(s, loaded=0, duplicates=3)
    assert sorted(r[0] for r in pgdb.sql("SELECT object_key FROM rin_ship_ledger")) == [
        "t/logs/1.json.gz", "t/logs/2.json.gz", "t/other/1.json.gz"]
    # The quarantine record's key is deterministic: the redelivery rewrote the same one.
    assert len(moto_server.objects(bucket, "rin-ship/quarantine/")) == (1 if quarantine else 0)
