"""Loads into different tables run side by side; loads into one table, one at a time (the
ledger lock is per target table on PostgreSQL), so racing importers still load each object
exactly once."""

from __future__ import annotations

import json
import time

import pytest

from loadlib import (Importer, make_queue, ndjson_gz, pg_server, pgdb, queue_depth,  # noqa: F401
                     rin_config, s3_event, send_body, wait_for)

pytestmark = pytest.mark.timeout(180)


def importer(moto, pgdb, bucket, tmp_path, name, q, env=None):
    targets = [{"redshift": {"table": "$1"}, "s3": {"key_regexp": r"^in/([a-z]+)/"}}]
    return Importer(tmp_path, rin_config(moto, pgdb, q, bucket, targets), name=name, env=env)


def put_and_announce(moto, bucket, url, key, records):
    moto.client().put_object(Bucket=bucket, Key=key, Body=ndjson_gz(records))
    send_body(moto, url, json.dumps({"Records": [s3_event(bucket, key)]}))


def test_a_load_into_one_table_does_not_hold_up_another(moto_server, bucket, pgdb, tmp_path):
    for t in ("a", "b"):
        pgdb.sql(f"CREATE TABLE {t} (i bigint)")
    (qa, url_a), (qa2, url_a2), (qb, url_b) = (make_queue(moto_server) for _ in range(3))
    # Importer 1 loads table a and stops before COMMIT, holding a's lock.
    slow = importer(moto_server, pgdb, bucket, tmp_path, "slow", qa,
                    env={"RIN_SHIP_FAILPOINT": "pause_before_commit"})
    put_and_announce(moto_server, bucket, url_a, "in/a/1.json.gz", [{"i": 1}])
    slow.start()
    wait_for(lambda: "failpoint pause_before_commit" in slow.stderr(), 30, "load of a in flight")
    racer = None
    try:
        # Meanwhile a load into table b commits at once.
        put_and_announce(moto_server, bucket, url_b, "in/b/1.json.gz", [{"i": 2}])
        s = importer(moto_server, pgdb, bucket, tmp_path, "fast", qb).batch(timeout=30)
        assert s["loaded_objects"] == 1 and pgdb.count("b") == 1, s
        # A second importer, told of the same object of a by another message, waits for the
        # first one's lock, however long.
        send_body(moto_server, url_a2, json.dumps({"Records": [s3_event(bucket, "in/a/1.json.gz")]}))
        racer = importer(moto_server, pgdb, bucket, tmp_path, "racer", qa2)
        racer.start("--batch")
        time.sleep(4)
        assert racer.proc.poll() is None, racer.stderr()[-3000:]
        assert pgdb.count("a") == 0
    finally:
        slow.proc.kill()
        slow.proc.wait()
    # The first one gone (its transaction rolled back), the racer loads the object, once...
    out, _ = racer.proc.communicate(timeout=60)
    assert '"loaded_objects":1' in out.replace(" ", ""), out
    assert pgdb.count("a") == 1
    # ...and the first one's message, delivered again, is a duplicate.
    wait_for(lambda: queue_depth(moto_server, url_a) >= 1, 30, "a's first message back")
    time.sleep(4)  # its visibility timeout (3 s) runs out
    s = importer(moto_server, pgdb, bucket, tmp_path, "after", qa).batch(timeout=60)
    assert s["duplicates"] == 1 and s["loaded_objects"] == 0, s
    assert pgdb.count("a") == 1
    assert pgdb.sql("SELECT count(*) FROM rin_ship_ledger") == [["2"]]
