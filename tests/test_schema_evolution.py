"""Schema evolution for logs on PostgreSQL (issue 14): a key that appears in the middle of a
stream and that the target has no column for is never dropped without a word. Per target,
`schema: report` (the default) loads the rows without it and counts and logs it, `evolve` adds
the column (its type from the values) and loads the rows with it, `strict` refuses the object.
Real parts: moto S3 + SQS with bucket notifications, a real PostgreSQL, `rin-ship import`."""

from __future__ import annotations

import json
import subprocess

import pytest

from loadlib import (Importer, make_queue, ndjson_gz, notify, pg_server,  # noqa: F401
                     pgdb, rin_config)
from rinlib import rin_ship_bin

pytestmark = pytest.mark.timeout(180)

# The stream: the first records have only the table's columns; from the third on, the
# application logs four new keys (a string, an integer then a float, a nested value, a bool).
RECORDS = [{"i": 0, "path": "/a"}, {"i": 1, "path": "/b"}] + [
    {"i": i, "path": "/c", "agent": f"curl/{i}", "latency": 1 if i == 2 else i + 0.5,
     "ctx": {"ids": [i]}, "ok": i % 2 == 0} for i in range(2, 6)]


def load(moto, pgdb, bucket, tmp_path, schema=None):
    q, url = make_queue(moto)
    notify(moto, bucket, url)
    pgdb.sql("CREATE TABLE logs (i bigint, path text)")
    target = {"redshift": {"table": "logs"}, "s3": {"key_prefix": "incoming/"}}
    if schema:
        target["schema"] = schema
    imp = Importer(tmp_path, rin_config(moto, pgdb, q, bucket, [target]))
    moto.client().put_object(Bucket=bucket, Key="incoming/a.json.gz", Body=ndjson_gz(RECORDS))
    p = imp.run("--batch", "--drain", "--max-execution-time", "60s", timeout=120, check=False)
    return p


def columns(pgdb) -> list[list[str]]:
    return pgdb.sql("SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'logs' ORDER BY ordinal_position")


def test_report_loads_the_rows_and_names_the_keys(moto_server, bucket, pgdb, tmp_path):
    p = load(moto_server, pgdb, bucket, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert pgdb.count("logs") == 6
    assert columns(pgdb) == [["i", "bigint"], ["path", "text"]]
    assert "keys that match no column were left out" in p.stderr, p.stderr[-3000:]
    for k in ("agent", "latency", "ctx", "ok"):
        assert k in p.stderr, (k, p.stderr[-3000:])


def test_evolve_adds_the_columns_and_loads_the_values(moto_server, bucket, pgdb, tmp_path):
    p = load(moto_server, pgdb, bucket, tmp_path, schema="evolve")
    assert p.returncode == 0, p.stderr[-3000:]
    assert columns(pgdb) == [["i", "bigint"], ["path", "text"], ["agent", "text"],
                             ["latency", "double precision"], ["ctx", "jsonb"], ["ok", "boolean"]]
    got = pgdb.sql("SELECT i, coalesce(agent, '-'), coalesce(latency::text, '-'), "
                   "coalesce(ctx::text, '-'), coalesce(ok::text, '-') FROM logs ORDER BY i")
    assert got == [["0", "-", "-", "-", "-"], ["1", "-", "-", "-", "-"]] + [
        [str(i), f"curl/{i}", "1" if i == 2 else str(i + 0.5), json.dumps({"ids": [i]}),
         "true" if i % 2 == 0 else "false"] for i in range(2, 6)]
    # Loaded once: one ledger row, six rows, though the first attempt met the new keys.
    assert pgdb.sql("SELECT count(*), sum(row_count) FROM rin_ship_ledger") == [["1", "6"]]
    assert "schema: evolve added columns" in p.stderr, p.stderr[-3000:]


def test_strict_refuses_the_object(moto_server, bucket, pgdb, tmp_path):
    p = load(moto_server, pgdb, bucket, tmp_path, schema="strict")
    assert pgdb.count("logs") == 0
    assert columns(pgdb) == [["i", "bigint"], ["path", "text"]]
    assert "schema: strict refuses them" in p.stderr, p.stderr[-3000:]
    assert pgdb.sql("SELECT count(*) FROM rin_ship_ledger") == [["0"]]


def test_evolve_is_refused_where_it_cannot_work(tmp_path):
    cfg = {"queue_name": "q", "redshift": {"host": "h", "port": 5439, "dbname": "d", "user": "u",
                                           "password": "p"},
           "s3": {"bucket": "b", "region": "us-east-1"}, "sql_option": "JSON 'auto' GZIP",
           "targets": [{"redshift": {"table": "logs"}, "s3": {"key_prefix": "x/"},
                        "schema": "evolve"}]}
    path = tmp_path / "rin.json"
    path.write_text(json.dumps(cfg))
    p = subprocess.run([str(rin_ship_bin()), "check-config", "-c", str(path)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "schema: evolve is for PostgreSQL targets" in p.stderr, p.stderr
