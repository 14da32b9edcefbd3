#!/usr/bin/env python3
"""Loader benchmark: rin-ship against `psql \\copy` on the same rows into the same table.

    .venv/bin/python benches/load_pg.py [--records 1000000] [--objects 6] [--mode APPEND]
                                        [--importers 1] [--tables 1] [--codec gzip|zstd]

Starts a throw-away PostgreSQL 15 (fsync on, as a production server) and a moto S3 server,
writes `--records` access-log records (12 typed columns) as `--objects` NDJSON objects per
table, then measures:
  - `rin-ship backfill` of the objects into the table(s), `--importers` at once (one backfill
    per table prefix when there are several tables);
  - `psql \\copy` of the same rows as CSV into a fresh table of the same shape.
Prints `key: value` lines (wall seconds, rows/s, the ratio to \\copy, the importers' own CPU).
Only talks to 127.0.0.1. Uses the binary of RIN_SHIP_BIN (default target/release/rin-ship).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from loadlib import PG_BIN, Postgres  # noqa: E402
from rinlib import Moto  # noqa: E402

COLUMNS = [
    ("time", "timestamptz"), ("host", "text"), ("method", "text"), ("path", "text"),
    ("status", "int"), ("bytes", "bigint"), ("duration_ms", "double precision"),
    ("user_agent", "text"), ("referer", "text"), ("request_id", "text"),
    ("client_ip", "inet"), ("level", "text"),
]
DDL = "CREATE TABLE {t} (" + ", ".join(f"{c} {ty}" for c, ty in COLUMNS) + ")"


def record(rng: random.Random, i: int) -> dict:
    return {
        "time": f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}.{i % 1000000:06d}Z",
        "host": f"web-{rng.randrange(40)}",
        "method": rng.choice(["GET", "GET", "GET", "POST", "PUT"]),
        "path": f"/api/v1/items/{rng.randrange(100000)}?page={rng.randrange(50)}",
        "status": rng.choice([200, 200, 200, 201, 304, 404, 500]),
        "bytes": rng.randrange(100, 200000),
        "duration_ms": round(rng.random() * 800, 3),
        "user_agent": rng.choice(["Mozilla/5.0 (X11; Linux x86_64)", "curl/8.5.0",
                                  "Go-http-client/1.1"]),
        "referer": rng.choice(["https://example.com/", "-", "https://search.example/q"]),
        "request_id": f"{rng.getrandbits(64):016x}{i:016x}",
        "client_ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
        "level": rng.choice(["info", "info", "warn"]),
    }


def start_pg(d: Path) -> Postgres:
    """A throw-away server as tests/loadlib.py starts one, but with fsync on, as a production
    server runs."""
    pg = Postgres(d)
    d.mkdir(parents=True)
    if pg.as_root:
        shutil.chown(d, "postgres", "postgres")
    pg._run([str(PG_BIN / "initdb"), "-D", str(d / "data"), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C.UTF-8"])
    pg._run([str(PG_BIN / "pg_ctl"), "-D", str(d / "data"), "-l", str(d / "log"), "-w", "start",
             "-o", f"-p {pg.port} -k {d} -c listen_addresses=127.0.0.1 -c max_connections=50"])
    return pg


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--objects", type=int, default=6)
    ap.add_argument("--mode", default="APPEND")
    ap.add_argument("--importers", type=int, default=1)
    ap.add_argument("--tables", type=int, default=1)
    ap.add_argument("--codec", default="gzip", choices=["gzip", "zstd"])
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    binary = Path(os.environ.get("RIN_SHIP_BIN", ROOT / "target/release/rin-ship"))
    assert binary.is_file(), f"{binary} missing: build it with `cargo build --release`"
    work = Path(tempfile.mkdtemp(prefix="rin-load-"))
    os.chmod(work, 0o755)
    pg = start_pg(work / "pg")
    moto = Moto(work / "moto")
    moto.start()
    try:
        run(a, binary, work, pg, moto)
    finally:
        moto.stop()
        pg.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(a, binary: Path, work: Path, pg: Postgres, moto: Moto) -> None:
    rng = random.Random(1)
    s3 = moto.client()
    s3.create_bucket(Bucket="logs")
    db = pg.create_db()
    per_table = a.records // a.tables
    csv_buf = io.StringIO()
    writer = csv.writer(csv_buf)
    for t in range(a.tables):
        pg.psql(DDL.format(t=f"t{t}"), db)
        n = 0
        for o in range(a.objects):
            rows = [record(rng, t * per_table + n + k)
                    for k in range(per_table // a.objects)]
            n += len(rows)
            text = "".join(json.dumps(r) + "\n" for r in rows).encode()
            if a.codec == "zstd":
                import zstandard
                body, ext = zstandard.ZstdCompressor(level=3).compress(text), "zst"
            else:
                body, ext = gzip.compress(text, 6, mtime=0), "gz"
            s3.put_object(Bucket="logs", Key=f"in/t{t}/{o:04d}.json.{ext}", Body=body)
            for r in rows:
                writer.writerow([r[c] for c, _ in COLUMNS])
    total = per_table // a.objects * a.objects * a.tables
    print(f"records: {total}")
    print(f"tables: {a.tables}")
    print(f"importers: {a.importers}")
    print(f"mode: {a.mode}")
    extra = {"insert_mode": a.mode}
    if a.mode in ("KEEP_EXISTING", "OVERWRITE_EXISTING"):
        extra["key_columns"] = ["request_id"]
    cfg = {
        "queue_name": "unused",
        "redshift": {"host": "127.0.0.1", "port": pg.port, "dbname": db, "user": "postgres",
                     "password": "", "schema": "public"},
        "s3": {"bucket": "logs", "region": "us-east-1"},
        "targets": [{"redshift": {"table": "$1"}, "s3": {"key_regexp": r"^in/(t[0-9]+)/"},
                     **extra}],
        "rin_ship": {"warehouse": "postgres", "s3_endpoint": moto.endpoint,
                     "sqs_endpoint": moto.endpoint, "force_path_style": True,
                     "sslmode": "disable"},
    }
    cfg_path = work / "rin.yaml"
    cfg_path.write_text(json.dumps(cfg))
    env = dict(os.environ, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x",
               AWS_DEFAULT_REGION="us-east-1", RIN_SHIP_LOG="warn")
    # One backfill per table, `importers` of them at a time.
    prefixes = [f"s3://logs/in/t{t}/" for t in range(a.tables)]
    cpu0, t0 = children_cpu(), time.monotonic()
    pending = list(prefixes)
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < a.importers:
            # BENCH_WRAP: a profiler to run the importer under, e.g. `perf record -g -o p.data --`.
            wrap = os.environ.get("BENCH_WRAP", "").split()
            running.append(subprocess.Popen(
                wrap + [str(binary), "backfill", "-c", str(cfg_path), "--prefix", pending.pop(0)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for p in list(running):
            if p.poll() is not None:
                err = p.stderr.read().decode()
                assert p.returncode == 0, f"backfill exited {p.returncode}: {err[-3000:]}"
                running.remove(p)
        time.sleep(0.02)
    wall = time.monotonic() - t0
    cpu = children_cpu() - cpu0
    loaded = sum(int(pg.psql(f"SELECT count(*) FROM t{t}", db)[0][0]) for t in range(a.tables))
    assert loaded == total or a.mode != "APPEND", (loaded, total)
    print(f"rin-ship wall s: {wall:.2f}")
    print(f"rin-ship rows/s: {total / wall:.0f}")
    print(f"rin-ship own CPU s: {cpu:.2f}")
    # The physical limit: psql \copy of the same rows as CSV into a table of the same shape.
    pg.psql(DDL.format(t="copy_target"), db)
    csv_path = work / "rows.csv"
    csv_path.write_text(csv_buf.getvalue())
    t0 = time.monotonic()
    subprocess.run([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                    "-d", db, "-v", "ON_ERROR_STOP=1", "-c",
                    f"\\copy copy_target FROM '{csv_path}' WITH (FORMAT csv)"],
                   check=True, capture_output=True)
    copy_wall = time.monotonic() - t0
    print(f"psql copy wall s: {copy_wall:.2f}")
    print(f"speed vs psql copy: {copy_wall / wall:.2f}")


if __name__ == "__main__":
    main()
