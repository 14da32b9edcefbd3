"""Hand-built forward-protocol frames: every mode, every time shape, odd encodings, acks."""

from __future__ import annotations

import base64
import json
import math
import os
import threading

import msgpack
import pytest

from rinlib import (T0, Raw, assert_same_records, bin_hdr, enc, entries_bytes, ext8_time,
                    fixext8_time, gzip_member, line, raw_str, str32, str_hdr)

pytestmark = pytest.mark.timeout(90)

R1 = {"a": 1, "msg": "one"}
R2 = {"b": "two", "n": None}
R3 = {"c": [1, 2, 3]}
R4 = {"d": {"x": True}}


def run(rin, frames, expected, config=None, per_conn=False):
    """Send frames (bytes or encodable objects) on one connection, then SIGTERM and compare."""
    r = rin(config)
    with r.connect() as c:
        for f in frames:
            c.send(f)
        c.sync()
    r.terminate()
    got = r.records()
    assert_same_records(got, expected)
    return r, got


# ---------------------------------------------------------------------------------------------
# modes and time shapes
# ---------------------------------------------------------------------------------------------

CASES = {
    "message_int": ([["t.m", T0, R1]], [line(R1)]),
    "message_float": ([["t.m", T0 + 0.25, R1]], [line(R1, T0, 250_000_000)]),
    "message_fixext8": ([["t.m", fixext8_time(T0, 5_000_000), R1]], [line(R1, T0, 5_000_000)]),
    "message_ext8": ([["t.m", ext8_time(T0 + 1, 999_999_000), R1]],
                     [line(R1, T0 + 1, 999_999_000)]),
    "message_unknown_options": ([["t.m", T0, R1, {"size": 1, "fluent_signal": 0, "foo": "bar",
                                                  "nested": {"x": [1]}}]], [line(R1)]),
    "message_empty_record": ([["t.m", T0, {}]], [line({})]),
    "forward_all_time_shapes": (
        [["t.f", [[T0, R1], [T0 + 0.5, R2], [fixext8_time(T0, 1000), R3],
                  [ext8_time(T0, 2000), R4]], {"size": 4}]],
        [line(R1), line(R2, T0, 500_000_000), line(R3, T0, 1000), line(R4, T0, 2000)]),
    "forward_time_with_metadata": (
        [["t.f", [[[fixext8_time(T0, 7000), {"otlp": {"severity": 9}}], R1],
                  [[T0 + 2, {}], R2]]]],
        [line(R1, T0, 7000), line(R2, T0 + 2)]),
    "forward_negative_group_markers": (
        [["t.f", [[[-1, {"schema": 1}], {"resource": {"a": 1}}],
                  [[fixext8_time(T0, 0), {}], R1],
                  [[T0, {}], R2],
                  [[-2, {}], {}],
                  [-1, {}],
                  [[ext8_time(T0, 3000), {"m": 1}], R3]]]],
        [line(R1), line(R2), line(R3, T0, 3000)]),
    "forward_empty_entries": ([["t.f", []], ["t.f", T0, R1]], [line(R1)]),
    "packed_forward_bin": (
        [["t.p", entries_bytes([(T0, R1), (fixext8_time(T0, 1000), R2)]), {"size": 2}]],
        [line(R1), line(R2, T0, 1000)]),
    "packed_forward_str32_text": (  # fluentd's out_forward: str32 + compressed: text
        [["t.p", str32(entries_bytes([(fixext8_time(T0, 0), R1), (T0 + 1, R2)])),
          {"size": 2, "compressed": "text"}]],
        [line(R1), line(R2, T0 + 1)]),
    "packed_forward_short_str": (
        [["t.p", Raw(str_hdr(len(entries_bytes([(T0, {"z": 1})]))) + entries_bytes([(T0, {"z": 1})]))]],
        [line({"z": 1})]),
    "packed_forward_with_metadata_entries": (
        [["t.p", entries_bytes([([fixext8_time(T0, 0), {"k": "v"}], R1),
                                ([-1, {}], {}), ([T0, {}], R2)])]],
        [line(R1), line(R2)]),
    "compressed_gzip_one_member_bin": (
        [["t.c", gzip_member(entries_bytes([(T0, R1), (T0, R2)])),
          {"size": 2, "compressed": "gzip"}]],
        [line(R1), line(R2)]),
    "compressed_gzip_three_members_str32": (
        [["t.c", str32(gzip_member(entries_bytes([(T0, R1)]))
                       + gzip_member(entries_bytes([(fixext8_time(T0, 1000), R2), (T0, R3)]))
                       + gzip_member(entries_bytes([(T0 + 3, R4)]))),
          {"size": 4, "compressed": "gzip", "fluent_signal": 0}]],
        [line(R1), line(R2, T0, 1000), line(R3), line(R4, T0 + 3)]),
    "heartbeats_between_frames": (
        [Raw(b"\xc0"), ["t.h", T0, R1], Raw(b"\xc0\xc0"), ["t.h", [[T0, R2]]], Raw(b"\xc0")],
        [line(R1), line(R2)]),
    "several_modes_one_connection": (
        [["a.1", T0, R1], ["a.2", [[T0, R2]]], ["a.3", entries_bytes([(T0, R3)])],
         ["a.4", gzip_member(entries_bytes([(T0, R4)])), {"compressed": "gzip"}]],
        [line(R1), line(R2), line(R3), line(R4)]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_modes_and_times(rin, case):
    frames, expected = CASES[case]
    run(rin, frames, expected)


def test_frames_split_across_tcp_writes(rin):
    """One frame delivered a byte at a time, and many frames in one write."""
    r = rin()
    f1 = enc(["t.s", T0, R1])
    many = b"".join(enc(["t.s", T0, {"i": i}]) for i in range(200))
    with r.connect() as c:
        for b in f1:
            c.sock.sendall(bytes([b]))
        c.sock.sendall(many)
        c.sync()
    r.terminate()
    assert_same_records(r.records(), [line(R1)] + [line({"i": i}) for i in range(200)])


# ---------------------------------------------------------------------------------------------
# value encodings
# ---------------------------------------------------------------------------------------------


def test_value_encodings(rin):
    rec = {
        "utf8": "héllo ✓ 😀",
        "escapes": "quote\" backslash\\ nl\n tab\t ctl\x01\x1f del\x7f",
        "bad_utf8": raw_str(b"ab\xffcd\xc3"),
        "nested": {"m": {"a": [1, {"b": None, "c": True, "d": False}], "e": {}}, "arr": [[], [[]]]},
        "f_tenth": 0.1,
        "f_big": 1e300,
        "f_negzero": -0.0,
        "f_one": 1.0,
        "f_small": 5e-324,
        "f32": Raw(b"\xca" + __import__("struct").pack(">f", 0.5)),
        "u64max": 2**64 - 1,
        "i64min": -(2**63),
        "u32": 2**32,
        "neg": -1,
        "bin_utf8": b"hello bytes",
        "bin_nul": b"a\x00b",
        "empty_bin": b"",
        "nil": None,
    }
    expected = {
        **rec,
        "bad_utf8": "ab\ufffdcd\ufffd",
        "f32": 0.5,
        "bin_utf8": "hello bytes",
        "bin_nul": "a\u0000b",
        "empty_bin": "",
    }
    r, got = run(rin, [["t.v", T0, rec]], [line(expected)])
    one = got[0]
    assert math.copysign(1.0, one["f_negzero"]) == -1.0, "-0.0 lost its sign"
    assert isinstance(one["f_one"], float), "1.0 written as an integer"
    assert one["u64max"] == 18446744073709551615 and one["i64min"] == -9223372036854775808


def test_non_utf8_tag_and_key(rin):
    """A non-UTF-8 map key gets U+FFFD too."""
    rec_bytes = Raw(b"\x81" + str_hdr(3) + b"k\xfek" + b"\x01")
    run(rin, [["t.k", T0, rec_bytes]], [line({"k\ufffdk": 1})])


def test_record_time_key_dropped_ours_wins(rin):
    rec = {"a": 1, "time": "client time", "z": 2}
    run(rin, [["t.t", T0, rec]], [line({"a": 1, "z": 2})])


@pytest.mark.parametrize("fmt,nanos,value", [
    ("epoch_millis", 123_456_789, T0 * 1000 + 123),
    ("epoch_seconds", 500_000_000, T0 + 0.5),
    ("epoch_seconds", 0, T0),
])
def test_time_format_epoch(rin, fmt, nanos, value):
    cfg = {"targets": [{"name": "default", "match": ["**"], "store": "local", "time_format": fmt}]}
    r = rin(cfg)
    with r.connect() as c:
        c.send(["t.e", fixext8_time(T0, nanos), R1])
        c.sync()
    r.terminate()
    got = r.records()
    assert len(got) == 1, got
    assert list(got[0]) == ["time", "a", "msg"], got
    t = got[0]["time"]
    assert isinstance(t, (int, float)) and not isinstance(t, bool), f"{fmt}: time is not a number: {t!r}"
    assert t == value, f"{fmt}: time {t!r} != {value!r}"


@pytest.mark.parametrize("precision,frac", [(0, ""), (3, ".123"), (6, ".123456"), (9, ".123456789")])
def test_time_precision(rin, precision, frac):
    cfg = {"targets": [{"name": "default", "match": ["**"], "store": "local",
                        "time_precision": precision}]}
    r = rin(cfg)
    with r.connect() as c:
        c.send(["t.e", fixext8_time(T0, 123_456_789), R1])
        c.sync()
    r.terminate()
    got = r.records()
    assert got == [{"time": f"2024-05-01T12:34:56{frac}Z", **R1}]


def test_tag_key_and_custom_time_key(rin):
    cfg = {"targets": [{"name": "default", "match": ["**"], "store": "local",
                        "tag_key": "tag", "time_key": "@ts"}]}
    rec = {"tag": "client's tag", "@ts": "x", "m": 1}
    r = rin(cfg)
    with r.connect() as c:
        c.send(["my.tag", T0, rec])
        c.sync()
    r.terminate()
    got = r.records()
    assert got == [{"@ts": "2024-05-01T12:34:56.000000Z", "tag": "my.tag", "m": 1}], got
    assert list(got[0]) == ["@ts", "tag", "m"], "key order must be time, tag, record keys"


def test_no_time_key(rin):
    cfg = {"targets": [{"name": "default", "match": ["**"], "store": "local", "time_key": ""}]}
    r = rin(cfg)
    with r.connect() as c:
        c.send(["t", T0, {"time": "kept?", "a": 1}])
        c.sync()
    r.terminate()
    assert r.records() == [{"time": "kept?", "a": 1}], (
        "with time_key '' no time field is written and the record's own 'time' key is kept")


# ---------------------------------------------------------------------------------------------
# acks and dedupe
# ---------------------------------------------------------------------------------------------


def chunk_id(fluentd_style: bool = True) -> str:
    s = base64.b64encode(os.urandom(16)).decode()
    return s + "\n" if fluentd_style else s


def test_ack_every_mode_exact_bytes(rin):
    r = rin()
    frames = []
    expected = []
    ids = [chunk_id(True), chunk_id(False), chunk_id(True), chunk_id(False), "x", "a b\n\n"]
    frames.append(["k.m", T0, {"m": 0}, {"chunk": ids[0]}])
    frames.append(["k.f", [[T0, {"m": 1}]], {"chunk": ids[1], "size": 1}])
    frames.append(["k.p", str32(entries_bytes([(T0, {"m": 2})])),
                   {"chunk": ids[2], "size": 1, "compressed": "text"}])
    frames.append(["k.c", gzip_member(entries_bytes([(T0, {"m": 3})])),
                   {"chunk": ids[3], "compressed": "gzip", "fluent_signal": 0, "size": 1}])
    frames.append(["k.m", T0, {"m": 4}, {"chunk": ids[4]}])
    frames.append(["k.m", T0, {"m": 5}, {"chunk": ids[5], "unknown": 1}])
    expected = [line({"m": i}) for i in range(6)]
    with r.connect() as c:
        for f, cid in zip(frames, ids):
            c.send(f)
            c.expect_ack(cid)
    # acked = durable: no SIGTERM flush needed
    r.kill()
    r.start()
    r.terminate()
    assert_same_records(r.records(), expected)


def test_ack_value_is_str_even_for_bin_chunk(rin):
    """Clients compare bytes: a chunk sent as bin is echoed with the same bytes (as str)."""
    r = rin()
    cid = b"YmluIGNodW5r\n"
    with r.connect() as c:
        c.send(["k.b", T0, {"a": 1}, {"chunk": cid}])
        got = c.read_obj(10)
    assert got == {"ack": cid.decode()}, f"ack for bin chunk: {got!r}"
    r.terminate()


def test_ack_raw_bytes_on_wire(rin):
    """The ack is exactly a 1-entry msgpack map {"ack": str} (no trailing bytes)."""
    r = rin()
    cid = "p8n9gmxTQVC8/nh2wlKKeQ==\n"
    want = enc({"ack": cid})
    with r.connect() as c:
        c.send(["k.w", T0, {"a": 1}, {"chunk": cid}])
        c.sock.settimeout(10)
        buf = b""
        while len(buf) < len(want):
            b = c.sock.recv(100)
            assert b, f"closed after {buf!r}"
            buf += b
        assert buf == want, f"ack bytes {buf!r} != {want!r}"
        c.expect_silence(0.5)
    r.terminate()


def test_no_chunk_no_reply(rin):
    r = rin()
    with r.connect() as c:
        c.send(["n.a", T0, R1])
        c.send(["n.a", [[T0, R2]], {"size": 1}])
        c.expect_silence(1.5)
    r.terminate()
    assert_same_records(r.records(), [line(R1), line(R2)])


def test_pipelined_acks(rin):
    """Many chunked frames written back to back; every one acked."""
    r = rin()
    ids = [chunk_id() for _ in range(100)]
    data = b"".join(enc(["p.l", [[T0, {"i": i}], [T0, {"i": i, "second": True}]],
                         {"chunk": cid, "size": 2}]) for i, cid in enumerate(ids))
    with r.connect() as c:
        c.send(data)
        acks = [c.read_obj(20) for _ in ids]
    assert sorted(a["ack"] for a in acks) == sorted(ids)
    assert [a["ack"] for a in acks] == ids, "acks on one connection should come in frame order"
    r.terminate()
    exp = [line({"i": i}) for i in range(100)] + [line({"i": i, "second": True}) for i in range(100)]
    assert_same_records(r.records(), exp)


@pytest.mark.parametrize("new_conn", [False, True], ids=["same_conn", "new_conn"])
def test_dedupe_resend_same_chunk(rin, new_conn):
    r = rin()
    cid = chunk_id()
    frame = ["d.d", [[T0, {"i": 1}], [T0, {"i": 2}]], {"chunk": cid, "size": 2}]
    c = r.connect()
    c.send(frame)
    c.expect_ack(cid)
    if new_conn:
        c.close()
        c = r.connect()
    c.send(frame)
    c.expect_ack(cid)
    # a different chunk id with identical content is a new chunk (stored again)
    cid2 = chunk_id()
    c.send(["d.d", [[T0, {"i": 3}]], {"chunk": cid2}])
    c.expect_ack(cid2)
    c.close()
    r.terminate()
    assert_same_records(r.records(), [line({"i": 1}), line({"i": 2}), line({"i": 3})],
                        "resent chunk must be stored once")


def test_dedupe_survives_restart(rin):
    r = rin()
    cid = chunk_id()
    frame = ["d.r", T0, {"i": 1}, {"chunk": cid}]
    with r.connect() as c:
        c.send(frame)
        c.expect_ack(cid)
    r.terminate()
    r.start()
    with r.connect() as c:
        c.send(frame)
        c.expect_ack(cid)
    r.terminate()
    assert_same_records(r.records(), [line({"i": 1})],
                        "a chunk id resent after a restart (within dedupe_window) is stored once")


def test_many_concurrent_connections(rin):
    r = rin()
    nconn, nframes = 24, 40
    errors = []

    def worker(ci):
        try:
            with r.connect(timeout=30) as c:
                for j in range(nframes):
                    cid = f"c{ci}-f{j}\n"
                    if j % 2:
                        c.send([f"cc.{ci % 4}", [[T0, {"c": ci, "f": j, "e": 0}],
                                                 [T0, {"c": ci, "f": j, "e": 1}]], {"chunk": cid}])
                    else:
                        c.send([f"cc.{ci % 4}", entries_bytes([(T0, {"c": ci, "f": j, "e": 0}),
                                                               (T0, {"c": ci, "f": j, "e": 1})]),
                                {"chunk": cid}])
                    c.expect_ack(cid, timeout=30)
        except BaseException as e:  # noqa: BLE001
            errors.append(f"conn {ci}: {e!r}")

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(nconn)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors[:5]
    r.terminate()
    exp = [line({"c": ci, "f": j, "e": e}) for ci in range(nconn) for j in range(nframes)
           for e in (0, 1)]
    assert_same_records(r.records(), exp)


def test_large_volume_multiple_objects(rin):
    """~3 MB in 30 PackedForward frames with a small seal_bytes: several objects, nothing lost,
    plus one single 1.5 MB frame."""
    r = rin({"buffer": {"seal_bytes": "256KiB"}})
    entries = [(T0 + i % 60, {"i": i, "pad": "p" * 300}) for i in range(9000)]
    big = [(T0, {"big": i, "pad": "q" * 300}) for i in range(4500)]
    with r.connect() as c:
        for k in range(30):
            part = entries[k * 300:(k + 1) * 300]
            cid = chunk_id()
            c.send(["big.many", str32(entries_bytes(part)), {"chunk": cid, "size": len(part)}])
            c.expect_ack(cid, timeout=30)
        cid = chunk_id()
        c.send(["big.one", entries_bytes(big), {"chunk": cid, "size": len(big)}])
        c.expect_ack(cid, timeout=60)
    r.terminate()
    by_key = r.records_by_key()
    assert len(by_key) > 3, f"seal_bytes 256KiB should give several objects, got {list(by_key)}"
    assert_same_records(r.records(), [line(rec, t) for t, rec in entries + big])


# ------------------------------------------------------------------------------ JSON framing


def _json_conn(r, payload: bytes, want: int = 0, timeout: float = 10.0) -> bytes:
    import socket
    s = socket.create_connection(("127.0.0.1", r.port), timeout=timeout)
    s.sendall(payload)
    got = b""
    while len(got) < want:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    s.close()
    return got


def test_json_frames_every_mode_with_json_acks(rin):
    """fluentd's in_forward reads a connection starting with `[` or `{` as JSON frames and
    answers acks in JSON; the frames are split across writes and separated by whitespace."""
    r = rin({"targets": [{"name": "default", "match": ["**"], "store": "local",
                          "tag_key": "tag"}]})
    frames = [
        ["j.msg", T0, {"a": 1}, {"chunk": "c1"}],                       # Message
        ["j.fwd", [[T0, {"b": 2}], [T0 + 1.5, {"b": 3}]], {"chunk": "c2"}],  # Forward, float time
        ["j.plain", T0, {"c": "x]}\"[{"}],                               # no ack asked
    ]
    payload = b"\n".join(json.dumps(f).encode() for f in frames) + b"\n"
    acks = _json_conn(r, payload, want=len(b'{"ack":"c1"}{"ack":"c2"}'))
    assert acks == b'{"ack":"c1"}{"ack":"c2"}', acks
    r.terminate()
    assert_same_records(r.records(), [
        line({"a": 1}, T0, tag="j.msg", tag_key="tag"),
        line({"b": 2}, T0, tag="j.fwd", tag_key="tag"),
        line({"b": 3}, T0 + 1, 500_000_000, tag="j.fwd", tag_key="tag"),
        line({"c": "x]}\"[{"}, T0, tag="j.plain", tag_key="tag"),
    ])


def test_malformed_json_frame_closes_only_its_connection(rin):
    r = rin()
    good = json.dumps(["j.ok", T0, {"ok": 1}, {"chunk": "g"}]).encode()
    assert _json_conn(r, good, want=len(b'{"ack":"g"}')) == b'{"ack":"g"}'
    bad = b'["j.bad", 1714566896, {"x": tru}, {"chunk": "b"}]'
    assert _json_conn(r, bad, want=1) == b""  # closed, no ack
    assert 'rin_forward_frames_rejected_total{reason="malformed"} 1' in r.metrics()
    r.terminate()
    assert [x.get("ok") for x in r.records()] == [1]
