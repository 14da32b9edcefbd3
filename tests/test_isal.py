"""gzip chunks deflated by ISA-L (`buffer.gzip_engine: isal`, the `isal` cargo feature, which
tests/run builds): single gzip members that `gzip -t` accepts, and crash recovery as strong as
zlib-rs's."""

from __future__ import annotations

import gzip
import random
import subprocess
import zlib

import pytest

from rinlib import T0, assert_same_records, line
from test_crash import Client

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


def test_sigkill_mid_flight_keeps_every_acked_record_once(rin):
    """tests/test_crash.py's kill rounds with ISA-L chunks: a chunk cut back to its last
    durable point still closes into a member holding exactly the committed lines."""
    seed = random.randrange(1 << 30)
    print("seed", seed)
    cl = Client(seed)
    rng = random.Random(seed + 1)
    r = rin(isal(seal_bytes="48KiB"))
    cl.kill_rounds(r, rng, 3, acks=(5, 60), pause=lambda: rng.random() * 0.3)
    r.terminate()
    assert r.objects()
    for key in r.objects():
        gzip_tool_accepts(r.store_dir / key)
    got = r.records()
    seqs = [g.get("seq") for g in got]
    assert len(seqs) == len(set(seqs)), f"records stored twice (seed {seed})"
    assert_same_records(got, [line(x) for x in cl.all_records()],
                        f"records after 3 SIGKILLs (seed {seed})")


def test_open_isal_chunk_survives_sigkill(rin):
    r = rin(isal(seal_age="60s"))
    expected = []
    with r.connect() as c:
        for i in range(30):
            recs = [{"i": i, "j": j} for j in range(5)]
            c.send(["open.i", [[T0, x] for x in recs], {"chunk": f"o{i}"}])
            c.expect_ack(f"o{i}")
            expected += [line(x) for x in recs]
    r.kill()
    r.start()
    r.terminate()
    assert_same_records(r.records(), expected)
    for key in r.objects():
        gzip_tool_accepts(r.store_dir / key)
