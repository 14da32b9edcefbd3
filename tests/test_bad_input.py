"""Malformed and hostile input: the bad connection is closed, nothing else is affected."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from rinlib import (T0, Fwd, Raw, assert_same_records, enc, entries_bytes, gzip_member,
                    line, metric_lines)

pytestmark = pytest.mark.timeout(120)

LIMITS = {"forward": {"max_frame_bytes": "64KiB", "max_decompressed_bytes": "1MiB"}}

BAD_FRAMES = {
    "tag_not_str": enc([123, T0, {"a": 1}]),
    "tag_nil": enc([None, T0, {"a": 1}]),
    "record_not_map": enc(["t.bad", T0, [1, 2]]),
    "record_str": enc(["t.bad", T0, "just a string"]),
    "entries_not_arrays": enc(["t.bad", [1, 2, 3]]),
    "entry_wrong_len": enc(["t.bad", [[T0]]]),
    "entry_record_not_map": enc(["t.bad", [[T0, "x"]]]),
    "mode_is_map": enc(["t.bad", {"x": 1}]),
    "time_is_str": enc(["t.bad", "yesterday", {"a": 1}]),
    "ext_wrong_type": enc(["t.bad", Raw(b"\xd7\x05" + b"\0" * 8), {"a": 1}]),
    "top_level_int": enc(42),
    "top_level_map": enc({"tag": "x"}),
    "array_too_short": enc(["t.bad"]),
    "packed_garbage": enc(["t.bad", b"\xc1\xc1\xc1 not msgpack"]),
    "packed_truncated_entry": enc(["t.bad", entries_bytes([(T0, {"a": 1})])[:-2]]),
    "gzip_garbage": enc(["t.bad", b"\x1f\x8b\x08\x00garbage garbage", {"compressed": "gzip"}]),
    "unknown_compression": enc(["t.bad", entries_bytes([(T0, {"a": 1})]),
                                {"compressed": "lz4-nope"}]),
    "reserved_byte": b"\xc1",
}


def good_frames(conn_id: int, n: int):
    return [[f"good.{conn_id}", T0, {"conn": conn_id, "i": i}, {"chunk": f"g{conn_id}-{i}"}]
            for i in range(n)]


def send_good(r, conn_id, n=20):
    with r.connect() as c:
        for f in good_frames(conn_id, n):
            c.send(f)
            c.expect_ack(f[3]["chunk"])
    return [line({"conn": conn_id, "i": i}) for i in range(n)]


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_malformed_frame_closes_connection(rin, case):
    r = rin(LIMITS)
    other = r.connect()  # an innocent bystander connection opened before the bad one
    other.send(good_frames(1, 1)[0])
    other.expect_ack("g1-0")
    with r.connect() as bad:
        # a good acked frame first, then the bad one: the good one is stored
        bad.send(["before.bad", T0, {"ok": 1}, {"chunk": "before"}])
        bad.expect_ack("before")
        bad.send(BAD_FRAMES[case] + enc(["after.bad", T0, {"never": 1}, {"chunk": "after"}]))
        bad.expect_closed(timeout=10)
    r.assert_alive()
    # the bystander keeps working
    for f in good_frames(1, 5)[1:]:
        other.send(f)
        other.expect_ack(f[3]["chunk"])
    other.close()
    expected = [line({"conn": 1, "i": i}) for i in range(5)] + [line({"ok": 1})]
    expected += send_good(r, 2)
    r.terminate()
    got = r.records()
    assert not any("never" in g for g in got), "a frame after a malformed one was stored"
    assert not any(g.get("a") == 1 for g in got), "(part of) the malformed frame was stored"
    assert_same_records(got, expected)


def test_truncated_frame_then_close(rin):
    r = rin(LIMITS)
    full = enc(["trunc.t", [[T0, {"i": i}] for i in range(50)], {"chunk": "trunc"}])
    for cut in (1, 5, len(full) // 2, len(full) - 1):
        with r.connect() as c:
            c.send(full[:cut])
        # closed by the client mid-frame
    time.sleep(0.5)
    r.assert_alive()
    expected = send_good(r, 3)
    r.terminate()
    assert_same_records(r.records(), expected, "no part of a truncated frame may be stored")


@pytest.mark.parametrize("header", [
    b"\x93\xa4t.hu\xdb\xff\xff\xff\xf0",           # PackedForward str32 declaring ~4 GB
    b"\x93\xa4t.hu\xc6\xff\xff\xff\xf0",           # bin32 declaring ~4 GB
    b"\xdd\xff\xff\xff\xff",                       # array32 with 4 billion elements
    b"\x93\xa4t.hu\xdd\xff\xff\xff\xff",           # Forward entries: array32 of 4 billion
    b"\x94\xa4t.hu\xce\x66\x32\x34\xf0\xdf\xff\xff\xff\xff",  # record map32 of 4 billion pairs
], ids=["str32_4GB", "bin32_4GB", "array32_top", "array32_entries", "map32_record"])
def test_oversized_declared_length(rin, header):
    r = rin(LIMITS)
    results = {}

    def bystander():
        try:
            results["good"] = send_good(r, 7, 30)
        except BaseException as e:  # noqa: BLE001
            results["err"] = repr(e)

    with r.connect() as bad:
        bad.send(header + b"\x00" * 1000)
        t = threading.Thread(target=bystander)
        t.start()
        # keep feeding a bit: the server must give up without waiting for 4 GB
        try:
            for _ in range(20):
                bad.sock.sendall(b"\x00" * 4096)
                time.sleep(0.01)
        except OSError:
            pass
        bad.expect_closed(timeout=10)
        t.join(30)
    assert "err" not in results, f"bystander connection failed: {results.get('err')}"
    r.assert_alive()
    r.terminate()
    assert_same_records(r.records(), results["good"])


def test_frame_larger_than_max_frame_bytes(rin):
    r = rin(LIMITS)  # 64 KiB
    with r.connect() as c:
        ok = ["size.ok", T0, {"pad": "a" * 30000}, {"chunk": "small"}]
        c.send(ok)
        c.expect_ack("small")
        too_big = ["size.big", T0, {"pad": "b" * 100_000}, {"chunk": "big"}]
        try:
            c.send(too_big)
        except OSError:
            pass
        c.expect_closed(timeout=10)
    r.assert_alive()
    # many small records in one Forward frame that together exceed the limit
    with r.connect() as c:
        fr = enc(["size.sum", [[T0, {"i": i, "p": "c" * 100}] for i in range(1000)], {"chunk": "sum"}])
        assert len(fr) > 64 * 1024
        try:
            c.send(fr)
        except OSError:
            pass
        c.expect_closed(timeout=10)
    expected = [line({"pad": "a" * 30000})] + send_good(r, 4)
    r.terminate()
    assert_same_records(r.records(), expected)


def test_gzip_bomb(rin):
    r = rin(LIMITS)  # max_decompressed_bytes 1 MiB, max_frame_bytes 64 KiB
    payload = entries_bytes([(T0, {"bomb": "z" * (4 << 20)})])  # 4 MiB record
    bomb = gzip_member(payload)
    assert len(bomb) < 60 * 1024, len(bomb)
    many = entries_bytes([(T0, {"bomb2": i, "p": "y" * 1000}) for i in range(3000)])  # ~3 MB
    bomb2 = gzip_member(many[: len(many) // 2]) + gzip_member(many[len(many) // 2:])
    assert len(bomb2) < 60 * 1024, len(bomb2)
    for b in (bomb, bomb2):
        with r.connect() as c:
            c.send(["bomb.b", b, {"compressed": "gzip", "chunk": "bomb"}])
            c.expect_closed(timeout=15)
        r.assert_alive()
    # a compressed frame within limits still works
    okp = entries_bytes([(T0, {"fine": i}) for i in range(100)])
    with r.connect() as c:
        c.send(["bomb.ok", gzip_member(okp), {"compressed": "gzip", "chunk": "fine"}])
        c.expect_ack("fine")
    expected = [line({"fine": i}) for i in range(100)] + send_good(r, 5)
    r.terminate()
    got = r.records()
    assert not any("bomb" in g or "bomb2" in g for g in got), "data from a rejected bomb was stored"
    assert_same_records(got, expected)


def test_everything_bad_then_good_and_metrics(rin):
    r = rin(LIMITS)
    for name, data in BAD_FRAMES.items():
        with r.connect() as c:
            try:
                c.send(data)
            except OSError:
                pass
            c.expect_closed(timeout=10)
    with r.connect() as c:
        c.send(b"\xdb\xff\xff\xff\xf0")
        c.expect_closed(timeout=10)
    r.assert_alive()
    text = r.metrics()
    hits = metric_lines(text, "reject", "malformed", "invalid", "error", "bad")
    assert any(v > 0 for _, v in hits), (
        "no rin_* counter containing reject/malformed/invalid/error/bad with a value > 0;"
        f" metrics were:\n{text}")
    expected = send_good(r, 6, 50)
    r.assert_alive()
    r.terminate()
    assert_same_records(r.records(), expected)


def test_idle_connection_and_half_open(rin):
    """A connection that opens and never sends must not block shutdown or other clients."""
    r = rin({"forward": {"idle_timeout": "1s"}})
    idle = socket.create_connection(("127.0.0.1", r.port))
    idle_fwd = Fwd.__new__(Fwd)
    idle_fwd.sock = idle
    idle_fwd.expect_closed(timeout=10)  # idle_timeout closes it
    idle2 = socket.create_connection(("127.0.0.1", r.port))
    expected = send_good(r, 8)
    t = time.monotonic()
    r.terminate()  # must not wait for idle2
    idle2.close()
    assert time.monotonic() - t < 15
    assert_same_records(r.records(), expected)
