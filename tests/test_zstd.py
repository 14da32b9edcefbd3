"""zstd objects end to end (`buffer.compression: zstd`): every object one zstd frame that the
`zstd` tool accepts (crash recovery: tests/test_crash.py, with every encoder), the embedded
warehouse, PostgreSQL and Redshift's COPY reading them."""

from __future__ import annotations

import json
import subprocess

import pytest
import zstandard

from loadlib import Importer, make_queue, ndjson_gz, notify, pg_server, pgdb, rin_config  # noqa: F401
from rinlib import T0, assert_same_records, line, rin_ship_bin, unzstd_single_frame
from test_embedded import table_rows, wait_rows

pytestmark = pytest.mark.timeout(240)

ZSTD = {"buffer": {"compression": "zstd", "seal_age": "1s"}}


def zstd_tool_accepts(path) -> None:
    p = subprocess.run(["zstd", "-t", "-q", str(path)], capture_output=True, text=True)
    assert p.returncode == 0, f"zstd -t {path}: {p.stderr}"


def test_objects_are_single_zstd_frames(rin):
    r = rin(ZSTD)
    expected = []
    with r.connect() as c:
        for i in range(20):
            recs = [{"i": i, "j": j, "pad": "x" * (j * 31)} for j in range(50)]
            c.send(["app.z", [[T0, x] for x in recs], {"chunk": f"c{i}"}])
            c.expect_ack(f"c{i}")
            expected += [line(x) for x in recs]
    r.terminate()
    objects = r.objects()
    assert objects and all(k.endswith(".json.zst") for k in objects), list(objects)
    for key, data in objects.items():
        unzstd_single_frame(data, key)
        zstd_tool_accepts(r.store_dir / key)
    assert_same_records(r.records(), expected)
    # The buffer's own files say zstd too (nothing left behind once shipped).
    assert not list(r.buffer_dir.rglob("*.json.gz"))






def test_embedded_warehouse_loads_zstd_objects(rin):
    r = rin({"embedded_load": True, **ZSTD})
    with r.connect() as c:
        c.send(["app.web", [[T0, {"i": i}] for i in range(10)], {"chunk": "e1"}])
        c.expect_ack("e1")
    db = r.data_dir / "warehouse.db"
    wait_rows(db, "app.web", 10, stderr=r.stderr_tail)
    r.terminate()
    assert sorted(x[0] for x in table_rows(db, "app.web", "i")) == list(range(10))


def test_a_gzip_key_with_zstd_compression_is_refused(rin):
    r = rin({**ZSTD, "targets": [{"name": "t", "match": ["**"],
                                  "key": "logs/{tag}/{seq}.json.gz"}]}, start=False)
    r.write_config()
    p = subprocess.run([str(rin_ship_bin()), "check-config", "-c", str(r.config_path)],
                       capture_output=True, text=True)
    assert p.returncode != 0, p.stdout
    assert "targets[0].key" in p.stderr and ".json.zst" in p.stderr, p.stderr


def test_postgres_loads_zstd_and_gzip_objects(moto_server, bucket, pgdb, tmp_path):
    q, url = make_queue(moto_server)
    notify(moto_server, bucket, url)
    pgdb.sql("CREATE TABLE logs (i bigint, k text)")
    imp = Importer(tmp_path, rin_config(moto_server, pgdb, q, bucket, [
        {"redshift": {"table": "logs"}, "s3": {"key_prefix": "in/"}}]))
    zrecs = [{"i": i, "k": "z"} for i in range(100)]
    text = "".join(json.dumps(x) + "\n" for x in zrecs).encode()
    c = moto_server.client()
    c.put_object(Bucket=bucket, Key="in/a.json.zst",
                 Body=zstandard.ZstdCompressor(level=3).compress(text))
    c.put_object(Bucket=bucket, Key="in/b.json.gz",
                 Body=ndjson_gz([{"i": 1000 + i, "k": "g"} for i in range(5)]))
    s = imp.batch()
    assert s["loaded_objects"] == 2 and s["loaded_rows"] == 105, s
    assert pgdb.sql("SELECT k, count(*) FROM logs GROUP BY k ORDER BY k") == [
        ["g", "5"], ["z", "100"]]


def test_redshift_copy_says_zstd(tmp_path):
    """`import --dry-run` of a zstd object on Redshift: the COPY reads ZSTD, whatever the
    target's sql_option said (with a warning when it named another compression)."""
    cfg = tmp_path / "rin.yaml"
    cfg.write_text(
        "queue_name: q\ncredentials: {aws_region: us-east-1, aws_iam_role: 'arn:aws:iam::1:role/r'}\n"
        "redshift: {host: h, port: 5439, dbname: d, user: u, password: p, schema: public}\n"
        "s3: {bucket: logs, region: us-east-1}\nsql_option: \"JSON 'auto' GZIP\"\n"
        "targets:\n  - redshift: {table: t}\n    s3: {key_prefix: in/}\n")
    p = subprocess.run([str(rin_ship_bin()), "import", "-c", str(cfg), "--dry-run",
                        "s3://logs/in/a.json.zst", "s3://logs/in/b.json.gz"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    copies = [ln for ln in p.stdout.splitlines() if "COPY" in ln]
    assert len(copies) == 2, p.stdout
    assert copies[0].endswith("JSON 'auto' ZSTD"), copies[0]
    assert copies[1].endswith("JSON 'auto' GZIP"), copies[1]
    assert "names GZIP but the objects are zstd" in p.stderr, p.stderr
