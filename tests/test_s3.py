"""S3 store against a local moto server."""

from __future__ import annotations

import re
import time

import pytest

from rinlib import T0, assert_same_records, line

pytestmark = pytest.mark.timeout(180)


def s3_cfg(moto, bucket, prefix="", **buffer):
    return {
        "stores": {"s3store": moto.store_config(bucket, prefix)},
        "targets": [{"name": "s3t", "match": ["**"], "store": "s3store",
                     "key": "logs/{tag}/dt=%Y-%m-%d/{node}-{seq}.json.gz"}],
        "buffer": {"seal_age": "1s", **buffer},
        "ship": {"shutdown_timeout": "3s", "max_backoff": "1s"},
    }


def send(r, tag, start, n, per_frame=10):
    exp = []
    with r.connect() as c:
        for f in range(start, start + n, per_frame):
            recs = [{"i": i, "t": tag} for i in range(f, min(f + per_frame, start + n))]
            cid = f"{tag}-{f}"
            c.send([tag, [[T0, x] for x in recs], {"chunk": cid}])
            c.expect_ack(cid)
            exp += [line(x) for x in recs]
    return exp


def test_objects_in_bucket(rin, moto_server, bucket):
    r = rin(s3_cfg(moto_server, bucket, prefix="rin/"))
    exp = send(r, "s3.a", 0, 200) + send(r, "s3.b", 0, 50)
    got = moto_server.wait_records(bucket, len(exp), timeout=30)  # shipped on seal_age
    assert_same_records(got, exp)
    r.terminate()
    objs = moto_server.objects(bucket)
    for k in objs:
        assert re.fullmatch(r"rin/logs/s3\.[ab]/dt=2024-05-01/test-node-\d+\.json\.gz", k), (
            f"unexpected key {k!r}")
    assert {k.split("/")[2] for k in objs} == {"s3.a", "s3.b"}
    assert_same_records(moto_server.records(bucket), exp)
    assert r.objects() == {}, "nothing should go to the local store"


def test_store_down_then_up(rin, moto_private):
    moto = moto_private  # not started: the endpoint refuses connections
    bucket = "downup"
    r = rin(s3_cfg(moto, bucket))
    exp = send(r, "down.t", 0, 100)
    time.sleep(2.5)  # sealed (seal_age 1s), uploads failing
    r.assert_alive()
    t = time.monotonic()
    r.terminate(timeout=60)  # exit 0 although the store is unreachable (shutdown_timeout 3s)
    assert time.monotonic() - t < 30, "shutdown took far longer than ship.shutdown_timeout"
    left = [p for p in r.buffer_dir.rglob("*") if p.is_file()]
    assert left, f"no chunk left in {r.buffer_dir} after a failed upload"
    moto.start()
    moto.client().create_bucket(Bucket=bucket)
    r.start()
    got = moto.wait_records(bucket, len(exp), timeout=30)
    assert_same_records(got, exp)
    exp += send(r, "down.t", 100, 20)
    r.terminate()
    assert_same_records(moto.records(bucket), exp, "after store came back")


def test_store_goes_down_while_running(rin, moto_private):
    moto = moto_private
    moto.start()
    bucket = "flaky"
    moto.client().create_bucket(Bucket=bucket)
    r = rin(s3_cfg(moto, bucket))
    exp = send(r, "flaky.t", 0, 50)
    moto.wait_records(bucket, 50, timeout=30)
    before = moto.objects(bucket)
    moto.stop()  # all state lost
    exp2 = send(r, "flaky.t", 50, 50)
    time.sleep(2.5)
    moto.start()
    c = moto.client()
    c.create_bucket(Bucket=bucket)
    for k, v in before.items():  # restore what moto forgot
        c.put_object(Bucket=bucket, Key=k, Body=v)
    got = moto.wait_records(bucket, 100, timeout=40)  # retried with backoff <= 1s
    r.terminate()
    assert_same_records(moto.records(bucket), exp + exp2)
    assert len(got) == 100


def test_reupload_same_key_single_object(rin, moto_server, bucket):
    """SIGKILL while uploads are in flight: after restart, chunks already uploaded may be
    uploaded again, but under the same deterministic key -> one object, no duplicate records."""
    r = rin(s3_cfg(moto_server, bucket, seal_bytes="4KiB"))
    exp = []
    for rnd in range(3):
        exp += send(r, "reup.t", rnd * 300, 300, per_frame=5)
        # wait for the first uploads of this round, then kill in the middle of the rest
        deadline = time.monotonic() + 30
        n0 = len(moto_server.objects(bucket))
        while len(moto_server.objects(bucket)) <= n0 and time.monotonic() < deadline:
            time.sleep(0.05)
        r.kill()
        r.start()
    r.terminate()
    c = moto_server.client()
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert len(keys) == len(set(keys))
    got = moto_server.records(bucket)
    assert_same_records(got, exp, "records after kills during upload")


def test_same_key_put_twice_is_one_object(moto_server, bucket):
    """Sanity check of the premise the re-upload test relies on (S3 semantics in moto)."""
    c = moto_server.client()
    c.put_object(Bucket=bucket, Key="k/x.json.gz", Body=b"1")
    c.put_object(Bucket=bucket, Key="k/x.json.gz", Body=b"1")
    assert c.list_objects_v2(Bucket=bucket)["KeyCount"] == 1
