"""Writes the forward-frame corpus used by the Rust fuzz properties (src/intake/forward/fuzz.rs).

Frames are built the way real clients build them: the fluent-logger packer (Message mode), fluentd's
out_forward (PackedForward as str32, `compressed: text|gzip`, chunk ids ending in "\\n"), fluent-bit
(Forward mode with `[time, {meta}]` entries and group markers, gzip with options
{size, compressed, fluent_signal}), Node @fluent-org/logger-like PackedForward as bin, and odd
encodings (ext8 EventTime, floats, non-UTF-8 strings). Run: .venv/bin/python tests/corpus/make_corpus.py
"""

import gzip
import struct
from pathlib import Path

import msgpack
from fluent import sender

OUT = Path(__file__).parent
T = 1700000000


def evt(sec, ns, ext8=False):
    body = struct.pack(">II", sec, ns)
    return (b"\xc7\x08\x00" if ext8 else b"\xd7\x00") + body


def str32(b):
    return b"\xdb" + struct.pack(">I", len(b)) + b


def arr(n):
    return bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)


REC = {"host": "web-1", "path": "/api/v1/items?id=42", "status": 200, "latency": 0.0123,
       "ua": "Mozilla/5.0 (X11; Linux x86_64)", "tags": ["a", "b"], "nested": {"k": [1, None, True]}}

frames = {}

# fluent-logger (Python): Message mode, EventTime when nanosecond_precision=True
s = sender.FluentSender("app", nanosecond_precision=True)
frames["fluent_logger_message_eventtime"] = s._make_packet("web", sender.EventTime(T + 0.5), REC)
s = sender.FluentSender("app")
frames["fluent_logger_message_int"] = s._make_packet("web", T, REC)

# fluentd out_forward: PackedForward as str32, compressed text, chunk id ending in "\n"
entries = b"".join(msgpack.packb([T + i, dict(REC, i=i)]) for i in range(20))
opt = msgpack.packb({"chunk": "p8n9gmxTQVC8/nh2wlKKeQ==\n", "size": 20, "compressed": "text"})
frames["fluentd_packed_str32_text"] = arr(3) + msgpack.packb("app.fluentd") + str32(entries) + opt
gz = gzip.compress(entries[: len(entries) // 2]) + gzip.compress(entries[len(entries) // 2:])
opt = msgpack.packb({"chunk": "Z2lwLWNodW5r\n", "size": 20, "compressed": "gzip"})
frames["fluentd_compressed_two_members"] = arr(3) + msgpack.packb("app.fluentd") + str32(gz) + opt

# fluent-bit: Forward mode with [[time, meta], record] entries and group markers
fb = [[[-1, {}], {}]] + [[[msgpack.ExtType(0, struct.pack(">II", T + i, i)), {"k8s": {"pod": "p"}}],
                          dict(REC, i=i)] for i in range(5)] + [[[-2, {}], {}]]
frames["fluent_bit_forward_meta"] = msgpack.packb(["kube.var.log", fb, {"size": 7, "fluent_signal": 0}])
packed = b"".join(msgpack.packb(e) for e in fb)
frames["fluent_bit_gzip"] = msgpack.packb(
    ["kube.var.log", gzip.compress(packed), {"size": 7, "compressed": "gzip", "fluent_signal": 0}])
frames["fluent_bit_metrics_signal"] = msgpack.packb(["fb.metrics", b"\x82\xa4meta\x80\xa7metrics\x90",
                                                     {"fluent_signal": 1}])

# Node-style PackedForward as bin with ack
frames["node_packed_bin_ack"] = msgpack.packb(
    ["node.packed", b"".join(msgpack.packb([msgpack.ExtType(0, struct.pack(">II", T, i)), {"i": i}])
                             for i in range(10)), {"chunk": "bm9kZQ==", "size": 10}], use_bin_type=True)

# odd encodings: ext8 EventTime, float time, non-UTF-8 strings, bin values, big ints
odd = (arr(2) + evt(T, 5, ext8=True) + msgpack.packb({"s": "ok"}) +
       arr(2) + msgpack.packb(T + 0.25) + b"\x82\xa1s\xa3a\xffb\xa1b\xc4\x03\x00\x01\x02" +
       arr(2) + msgpack.packb(T) + msgpack.packb({"big": 2 ** 64 - 1, "neg": -2 ** 63, "f": float("inf")}))
frames["odd_encodings_packed"] = arr(2) + msgpack.packb("odd") + str32(odd)
frames["heartbeat_nil"] = b"\xc0"

for name, data in frames.items():
    (OUT / f"{name}.msgpack").write_bytes(data)
print(f"wrote {len(frames)} frames to {OUT}")
