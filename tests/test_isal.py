"""gzip chunks deflated by ISA-L (`buffer.gzip_engine: isal`, the `isal` cargo feature, which
tests/run builds): single gzip members that `gzip -t` accepts at every level. Its crash
recovery runs with every encoder's in tests/test_crash.py."""

from __future__ import annotations

import gzip
import subprocess
import zlib

import pytest

from rinlib import T0, assert_same_records, line

pytestmark = pytest.mark.timeout(240)


def isal(**buffer):
    return {"buffer": {"gzip_engine": "isal", "seal_age": "1s", **buffer}}


def gzip_tool_accepts(path) -> None:
    p = subprocess.run(["gzip", "-t", str(path)], capture_output=True, text=True)
    assert p.returncode == 0, f"gzip -t {path}: {p.stderr}"


def single_member(data: bytes, key: str) -> None:
    d = zlib.decompressobj(16 + 15)
    d.decompress(data)
    assert d.eof and d.unused_data == b"", f"{key}: not exactly one gzip member"


@pytest.mark.parametrize("level", [1, 2, 3])
def test_objects_are_single_gzip_members(rin, level):
    r = rin(isal(compression_level=level))
    expected = []
    with r.connect() as c:
        for i in range(20):
            recs = [{"i": i, "j": j, "pad": "x" * (j * 31), "msg": "日本語 \"q\" \\"} for j in range(50)]
            c.send(["app.i", [[T0, x] for x in recs], {"chunk": f"c{i}"}])
            c.expect_ack(f"c{i}")
            expected += [line(x) for x in recs]
    r.terminate()
    objects = r.objects()
    assert objects and all(k.endswith(".json.gz") for k in objects), list(objects)
    for key, data in objects.items():
        single_member(data, key)
        gzip.decompress(data)
        gzip_tool_accepts(r.store_dir / key)
    assert_same_records(r.records(), expected)
