"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/), from what the tests
send and read: the real-client forward frames of tests/corpus/ (tests/corpus/make_corpus.py),
JSON forward frames, HTTP bodies in every style and encoding the HTTP intake takes, the S3 /
SNS / EventBridge events of tests/rin/, the Rin configs of tests/rin/ and examples/, key
templates, and chunk files with journals as the buffer writes them (whole, torn, unsealed).
Each input is laid out as its target in src/fuzzing.rs reads it. Seeds stay small (the
committed corpora are a few hundred KB at most).

Run: .venv/bin/python fuzz/make_seeds.py   (needs msgpack, zstandard, cramjam: tests/run installs them)
"""

import base64
import gzip
import json
import struct
import zlib
from pathlib import Path

import cramjam
import msgpack
import zstandard

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "corpus"
T = 1700000000
REC = {"host": "web-1", "path": "/api/v1/items?id=42", "status": 200, "latency": 0.0123,
       "tags": ["a", "b"], "nested": {"k": [1, None, True]}}

corpora = {}


def seed(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    corpora.setdefault(target, {})[name] = data


# ------------------------------------------------------------------ forward_frame
for f in sorted((ROOT / "tests" / "corpus").glob("*.msgpack")):
    seed("forward_frame", f.stem, f.read_bytes())
seed("forward_frame", "json_message", json.dumps(["app.json", T, REC]))
seed("forward_frame", "json_forward_ack",
     json.dumps(["app.json", [[T, REC], [T + 1, {"msg": "two"}]], {"chunk": "Y2h1bmsx"}]))
seed("forward_frame", "json_message_escapes", '["a.b", 1700000000.5, {"s": "\\u00e9\\"\\\\", "n": -1e300}]')

# ------------------------------------------------------------------ http_body
# Byte 0: encoding = b % 5 (identity, gzip, deflate, zstd, snappy), style = b // 5 % 3
# (json, msgpack, form), bit 7 adds `?time=`; byte 1: time key ("", time, ts, date) by b % 4.
def how(encoding, style, time_param=False):
    return encoding + 5 * style + (0x80 if time_param else 0)


def encode(encoding, body):
    if encoding == 1:
        return gzip.compress(body, mtime=0)
    if encoding == 2:
        return zlib.compress(body)
    if encoding == 3:
        return zstandard.ZstdCompressor().compress(body)
    if encoding == 4:
        return bytes(cramjam.snappy.compress(body))
    return body


json_bodies = {
    "object": json.dumps(dict(REC, time="2024-05-01T12:34:56.789Z")),
    "array": json.dumps([REC, {"msg": "two", "time": 1714566896.5}]),
    "ndjson": "\n".join(json.dumps(dict(REC, n=i)) for i in range(3)) + "\n",
    "spans_lines": '{"a": [1,\n 2], "b": {"c":\n "d"}}',
}
msgpack_bodies = {
    "map": msgpack.packb(dict(REC, time=T)),
    "array_of_maps": msgpack.packb([REC, {"msg": "two"}]),
    "fluent_bit_events": msgpack.packb([msgpack.ExtType(0, struct.pack(">II", T, 5)), REC])
    + msgpack.packb([[msgpack.ExtType(0, struct.pack(">II", T, 6)), {"m": 1}], {"msg": "meta"}])
    + msgpack.packb([[-1, {}], {}]),
}
for name, body in json_bodies.items():
    for enc in range(5):
        seed("http_body", f"json_{name}_enc{enc}", bytes([how(enc, 0), 1]) + encode(enc, body.encode()))
for name, body in msgpack_bodies.items():
    for enc in (0, 1, 3):
        seed("http_body", f"msgpack_{name}_enc{enc}", bytes([how(enc, 1), 2]) + encode(enc, body))
form_json = b"json=" + json.dumps(REC).replace(" ", "+").replace('"', "%22").encode()
seed("http_body", "form_json", bytes([how(0, 2), 0]) + form_json)
seed("http_body", "form_msgpack_time", bytes([how(0, 2, True), 0]) + b"msgpack=" + bytes(
    "".join(f"%{b:02X}" for b in msgpack.packb(REC)), "ascii"))
seed("http_body", "form_plain_json", bytes([how(0, 2), 1]) + json.dumps([REC]).encode())

# ------------------------------------------------------------------ object_event
for f in ("event.json", "notification.json", "testevent.json", "testeventsns.json"):
    seed("object_event", f.split(".")[0], (ROOT / "tests" / "rin" / f).read_bytes())
s3 = {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                   "s3": {"bucket": {"name": "logs"},
                          "object": {"key": "app/2024/05/01/a+b%2Bc%3D.json.gz", "size": 123,
                                     "eTag": "\"abc\"", "versionId": "v1"}}}]}
seed("object_event", "s3_records", json.dumps(s3))
seed("object_event", "sns_envelope", json.dumps({"Type": "Notification", "Message": json.dumps(s3)}))
seed("object_event", "lambda_sns", json.dumps({"Records": [{"Sns": {"Message": json.dumps(s3)}}]}))
seed("object_event", "eventbridge", json.dumps({
    "source": "aws.s3", "detail-type": "Object Created",
    "detail": {"bucket": {"name": "logs"},
               "object": {"key": "a b/c.json.gz", "size": 5, "etag": "e", "version-id": "v"}}}))

# ------------------------------------------------------------------ rin_config
for f in sorted((ROOT / "tests" / "rin").iterdir()):
    if f.suffix in (".yml", ".yaml") or ".yml." in f.name:
        seed("rin_config", f.name.replace(".", "_"), f.read_bytes())
for f in (ROOT / "examples" / "aws" / "rin.yaml", ROOT / "examples" / "rin-ship-s3.yaml"):
    seed("rin_config", "example_" + f.stem, f.read_bytes())

# ------------------------------------------------------------------ key_template
# A template, then after a NUL the key_regexp captures, one a line.
seed("key_template", "env", '{{ env "SET" }}/{{ env "UNSET" "dflt" }}/{{must_env "SET"}}\0')
seed("key_template", "must_env_missing", 'password: {{ must_env "NOPE" }}\0')
seed("key_template", "placeholders", "schema_$1.table_$2_$10$0\0logs/a/b\na\nb\nc\nd\ne\nf\ng\nh\ni\nj")
seed("key_template", "dollar_capture", "$1$2\0k\n$2\nx")
seed("key_template", "unclosed", "a {{ env \"X\" \0")

# ------------------------------------------------------------------ chunk_recovery
# Byte 0: bit 0 zstd, bit 1 no journal, bit 2 raw journal bytes (else records split on
# `\n`, framed with their CRC by the target); bytes 1-2: data length (LE); data; journal.
GZIP_HEADER = bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 255])


def record(**r):
    return json.dumps(r, separators=(",", ":")).encode()


def framed(payload):
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def gzip_chunk(batches):
    """A chunk as the writer leaves it: header, then each batch sync-flushed; commits."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = bytearray(GZIP_HEADER)
    crc, size, events, commits = 0, 0, 0, []
    for lines, ids in batches:
        data += deflate.compress(lines) + deflate.flush(zlib.Z_SYNC_FLUSH)
        crc, size = zlib.crc32(lines, crc), size + len(lines)
        events += lines.count(b"\n")
        commits.append(record(kind="commit", offset=len(data), bytes=size, events=events, crc=crc,
                              first_secs=T, first_nanos=0, ids=ids))
    return bytes(data), commits


def chunk_seed(name, flags, data, journal_records, raw=False):
    journal = b"".join(framed(r) for r in journal_records) if raw else b"\n".join(journal_records)
    seed("chunk_recovery", name, bytes([flags | (4 if raw else 0)]) + struct.pack("<H", len(data)) + data + journal)


lines = [(b'{"n":%d,"msg":"hello"}\n' % i) * 3 for i in range(4)]
data, commits = gzip_chunk([(l, [base64.b64encode(b"id%d" % i).decode()]) for i, l in enumerate(lines)])
opened = record(kind="open", seq=1, partition="app/2024/05/01")
chunk_seed("gzip_open_commits", 0, data, [opened] + commits)
chunk_seed("gzip_open_commits_raw", 0, data, [opened] + commits, raw=True)
chunk_seed("gzip_torn_tail", 0, data + b"\x12\x34garbage", [opened] + commits[:2])
sealed = data[:json.loads(commits[-1])["offset"]] + b"\x03\x00" + struct.pack(
    "<II", json.loads(commits[-1])["crc"], json.loads(commits[-1])["bytes"])
chunk_seed("gzip_sealed", 0, sealed, [opened] + commits + [record(kind="sealed", size=len(sealed))])
chunk_seed("gzip_journal_ahead", 0, data[: len(data) // 2], [opened] + commits)
chunk_seed("no_journal_header_only", 2, GZIP_HEADER, [])
chunk_seed("no_journal_data", 2, data, [])
z = zstandard.ZstdCompressor()
zdata = z.compress(b"".join(lines))
zopen = record(kind="open", seq=1, partition="p", codec="zstd")
chunk_seed("zstd_commit", 1, zdata, [zopen, record(kind="commit", offset=len(zdata), bytes=sum(map(len, lines)),
                                                   events=12, crc=0, first_secs=T, first_nanos=7)])

# ------------------------------------------------------------------ write
# Seeds are rewritten; findings (`finding-*`, inputs that once failed) are kept.
total = 0
for target, files in corpora.items():
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.iterdir():
        if not old.name.startswith("finding-"):
            old.unlink()
    for name, data in files.items():
        (d / name).write_bytes(data)
        total += len(data)
    print(f"{target}: {len(files)} seeds")
print(f"{total} bytes in {OUT.relative_to(ROOT)}")
