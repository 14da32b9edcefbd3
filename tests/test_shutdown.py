"""SIGTERM drain and buffer-quota backpressure."""

from __future__ import annotations

import base64
import os
import socket
import time

import pytest

from fluent import sender

from rinlib import T0, assert_same_records, enc, line

pytestmark = pytest.mark.timeout(180)


def test_sigterm_seals_unsealed_local(rin):
    r = rin({"buffer": {"seal_age": "60s"}})
    exp = []
    with r.connect() as c:
        for i in range(100):
            c.send(["term.a", T0, {"i": i}])  # no ack requested
            exp.append(line({"i": i}))
        c.send(["term.b", [[T0, {"acked": 1}]], {"chunk": "tb"}])
        c.expect_ack("tb")
        exp.append(line({"acked": 1}))
    time.sleep(0.3)
    assert r.objects() == {}, "seal_age 60s: nothing should be shipped before SIGTERM"
    t = time.monotonic()
    r.terminate()
    assert time.monotonic() - t < 10, "SIGTERM drain of a tiny local buffer took > 10s"
    assert_same_records(r.records(), exp)


def test_sigterm_right_after_fire_and_forget_client_closed(rin):
    """Clients without acks (Python fluent-logger has none) write and close; a SIGTERM right
    after must not drop bytes the server already received: drain open connections first."""
    r = rin({"buffer": {"seal_age": "60s"}})
    with r.connect() as c:
        c.send(b"".join(enc(["ff.raw", T0, {"i": i}]) for i in range(2000)))
    s = sender.FluentSender("ff", host="127.0.0.1", port=r.port)
    for i in range(500):
        assert s.emit_with_time("logger", T0, {"j": i})
    s.close()
    r.terminate()
    exp = [line({"i": i}) for i in range(2000)] + [line({"j": i}) for i in range(500)]
    assert_same_records(r.records(), exp, "records received before SIGTERM")


def test_sigterm_with_open_client_connection(rin):
    """Data from a client that is still connected when SIGTERM arrives is sealed too."""
    r = rin({"buffer": {"seal_age": "60s"}})
    c = r.connect()
    c.send(["term.open", T0, {"x": 1}, {"chunk": "o1"}])
    c.expect_ack("o1")
    r.terminate(timeout=30)
    c.close()
    assert_same_records(r.records(), [line({"x": 1})])


def test_sigterm_uploads_to_s3(rin, moto_server, bucket):
    r = rin({"stores": {"s3store": moto_server.store_config(bucket)},
             "targets": [{"name": "t", "match": ["**"], "store": "s3store"}],
             "buffer": {"seal_age": "60s"}})
    exp = []
    with r.connect() as c:
        for i in range(50):
            c.send(["term.s3", T0, {"i": i}, {"chunk": f"s{i}"}])
            c.expect_ack(f"s{i}")
            exp.append(line({"i": i}))
    assert moto_server.objects(bucket) == {}
    r.terminate()
    assert_same_records(moto_server.records(bucket), exp)
    keys = list(moto_server.objects(bucket))
    assert all(k.startswith("logs/term.s3/dt=2024-05-01/hour=12/test-node-") for k in keys), keys


def test_quota_backpressure(rin, moto_private):
    """Store unreachable + tiny quota: acks stop once the buffer is full; when the store comes
    back, uploads free space and the pending frame is acked, then everything is shipped once."""
    moto = moto_private  # not started yet: connection refused
    bucket = "quota"
    r = rin({
        "stores": {"s3store": moto.store_config(bucket)},
        "targets": [{"name": "t", "match": ["**"], "store": "s3store"}],
        "buffer": {"seal_age": "200ms", "seal_bytes": "1KiB", "quota": "16KiB"},
        "ship": {"shutdown_timeout": "3s", "max_backoff": "1s"},
    })
    exp = []
    stalled_at = None
    with r.connect() as c:
        for i in range(200):
            # ~2.7 KB of incompressible data per frame
            recs = [{"i": i, "rnd": base64.b64encode(os.urandom(2000)).decode()}]
            cid = f"q{i}"
            c.send(["quota.t", [[T0, x] for x in recs], {"chunk": cid}])
            exp += [line(x) for x in recs]
            try:
                c.expect_ack(cid, timeout=3)
            except AssertionError as e:
                if "no ack" not in str(e):
                    raise
                stalled_at = i
                break
        assert stalled_at is not None, (
            "200 frames (~540 KB) acked with a 16 KiB quota and the store down: no backpressure")
        assert stalled_at >= 2, f"stalled already at frame {stalled_at}"
        r.assert_alive()
        # still no ack a bit later (stalled, not slow)
        c.expect_silence(2)
        moto.start()
        moto.client().create_bucket(Bucket=bucket)
        c.expect_ack(f"q{stalled_at}", timeout=40)
        # acks flow again
        for i in range(stalled_at + 1, stalled_at + 21):
            recs = [{"i": i, "rnd": base64.b64encode(os.urandom(2000)).decode()}]
            c.send(["quota.t", [[T0, x] for x in recs], {"chunk": f"q{i}"}])
            c.expect_ack(f"q{i}", timeout=20)
            exp += [line(x) for x in recs]
    r.terminate()
    assert_same_records(moto.records(bucket), exp)


def test_quota_metrics_and_health_while_stalled(rin, moto_private):
    """While stalled on quota, other connections are not acked either, but the process serves
    /metrics and exits 0 on SIGTERM leaving the data on disk."""
    moto = moto_private
    r = rin({
        "stores": {"s3store": moto.store_config("nobucket")},
        "targets": [{"name": "t", "match": ["**"], "store": "s3store"}],
        "buffer": {"seal_age": "200ms", "seal_bytes": "1KiB", "quota": "8KiB"},
        "ship": {"shutdown_timeout": "2s", "max_backoff": "1s"},
    })
    with r.connect() as c:
        acked = 0
        for i in range(100):
            c.send(["qm.t", T0, {"i": i, "rnd": base64.b64encode(os.urandom(2000)).decode()},
                    {"chunk": f"m{i}"}])
            try:
                c.expect_ack(f"m{i}", timeout=3)
                acked += 1
            except AssertionError:
                break
        assert acked < 100, "no backpressure"
        with r.connect() as c2:
            c2.send(["qm.t", T0, {"other": 1}, {"chunk": "other"}])
            c2.expect_silence(2)
        text = r.metrics()
        assert "rin_" in text, text
        r.terminate(timeout=40)
    left = sum(p.stat().st_size for p in r.buffer_dir.rglob("*") if p.is_file())
    assert left > 0, "buffer empty although nothing could be uploaded"
