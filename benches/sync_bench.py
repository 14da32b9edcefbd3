#!/usr/bin/env python3
"""Sync benchmark: `rin-ship sync --once` of a wide MariaDB table into PostgreSQL, against the
physical limit of the same copy, `mysqldump --tab` (the server writes a TSV) plus `psql \\copy`.

    .venv/bin/python benches/sync_bench.py [--rows 1000000] [--bin target/release/rin-ship]
                                           [--rows-per-object 500000] [--compression gzip|zstd]
                                           [--repeat 1] [--keep]

Owns: starting a throw-away MariaDB (tests/test_sync.py's server, plus `--secure-file-priv` for
the dump) and a throw-away PostgreSQL 15 (benches/load_pg.py's, fsync on), a 29-column table
filled server-side (`INSERT ... SELECT` from the Sequence engine), and the measurements, each
into a fresh database (an empty target):
  - `rin-ship sync --once` (a first pass: the full snapshot), `mode` OVERWRITE_EXISTING (the
    default) and APPEND: wall s, rin-ship's own CPU s and peak RSS (/usr/bin/time), the read
    and load phases (its `sync: read` log line), the servers' CPU s (/proc);
  - `mysqldump --tab` of the table, then `psql \\copy` of its TSV into a table of the same
    column types, written by hand below (and checked against the one rin-ship created). The
    TSV goes through one `sed` on its way in: MySQL writes a carriage return in a value raw
    (PostgreSQL's text COPY refuses it) and zero dates as `0000-00-00 00:00:00` (PostgreSQL
    has no such date; rin-ship syncs them as NULL); everything else loads as written.
Every target is checked: its row count and a checksum query over every column (strings and JSON
text through md5, numbers, times, JSON values) must equal the source's.

Must never: talk to anything but its own two servers (127.0.0.1 and their sockets); leave a
server running or (without --keep) its files behind; build the binary.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benches"))

from load_pg import start_pg  # noqa: E402
from loadlib import PG_BIN, Postgres  # noqa: E402
from test_sync import ENV, MariaDB, mysql_url, pg_warehouse, start_mariadb, write_config  # noqa: E402

DB = "bench"
TABLE = "wide"

# The source table: the types docs/sync.md maps, with NULLs, non-ASCII text, quotes, tabs,
# newlines, carriage returns and backslashes in TEXT and JSON, zero dates, BIGINT UNSIGNED
# values above int8.
SOURCE_DDL = f"""
CREATE TABLE {TABLE} (
  id BIGINT NOT NULL PRIMARY KEY,
  account_id INT NOT NULL,
  parent_id INT NULL,
  qty SMALLINT NOT NULL,
  level TINYINT NOT NULL,
  big_counter BIGINT UNSIGNED NOT NULL,
  amount DECIMAL(12,2) NOT NULL,
  discount DECIMAL(12,2) NULL,
  ratio DOUBLE NOT NULL,
  score DOUBLE NULL,
  weight FLOAT NULL,
  paid TINYINT(1) NOT NULL,
  archived TINYINT(1) NULL,
  code VARCHAR(8) NOT NULL,
  country CHAR(2) NOT NULL,
  name VARCHAR(40) NOT NULL,
  email VARCHAR(120) NULL,
  url VARCHAR(255) NULL,
  city VARCHAR(64) NOT NULL,
  session_id CHAR(36) NOT NULL,
  note TEXT NULL,
  body TEXT NULL,
  created DATETIME(6) NOT NULL,
  shipped DATETIME NULL,
  updated_at TIMESTAMP NOT NULL,
  birthday DATE NULL,
  doc JSON NULL,
  status ENUM('new','paid','shipped','cancelled','refunded') NOT NULL,
  tags SET('red','green','blue') NOT NULL
)"""

# One statement, `s` the sequence number (@N@: the rows); zero dates need a sql_mode without
# NO_ZERO_DATE.
FILL = f"""
SET SESSION sql_mode = 'STRICT_TRANS_TABLES', time_zone = '+00:00';
INSERT INTO {TABLE} SELECT
  s,
  s % 50000,
  IF(s % 4 = 0, NULL, s DIV 4),
  s % 1000,
  s % 7 - 3,
  IF(s % 2 = 0, s * 1000003, 18446744073709551615 - s * 7919),
  IF(s % 11 = 0, -1, 1) * (s * 37 % 10000000000) / 100,
  IF(s % 3 = 0, NULL, (s % 500) / 100),
  s / 7e0,
  IF(s % 5 = 0, NULL, 1.2345e0 * POW(10, s % 40 - 20)),
  IF(s % 9 = 0, NULL, (s % 10000) / 8),
  s % 2,
  IF(s % 9 = 0, NULL, s % 3 = 0),
  CONCAT('C', LPAD(s % 10000000, 7, '0')),
  ELT(1 + s % 6, 'JP', 'BR', 'US', 'CH', 'NG', 'FR'),
  CONCAT('customer ', s, ' ', ELT(1 + s % 5, 'Müller', 'O''Brien', 'Łukasz', '田中', 'Smith')),
  IF(s % 6 = 0, NULL, CONCAT('user', s, '@example.com')),
  IF(s % 13 = 0, NULL, CONCAT('https://shop.example.com/p/', s % 100000, '?ref=', MD5(s))),
  ELT(1 + s % 6, 'Tokyo', 'São Paulo', 'New York', 'Zürich', 'Lagos', 'Paris'),
  CONCAT_WS('-', SUBSTR(MD5(s), 1, 8), SUBSTR(MD5(s), 9, 4), SUBSTR(MD5(s), 13, 4),
            SUBSTR(MD5(s), 17, 4), SUBSTR(MD5(s), 21, 12)),
  IF(s % 10 = 0, NULL,
     CONCAT('note ', s, ': a tab\\there, a newline\\nthere, a backslash \\\\ and "quotes" é',
            IF(s % 1000 = 7, ', a carriage return\\r.', ''))),
  IF(s % 17 = 0, NULL, REPEAT(CONCAT('lorem ipsum ', s % 100, ' dolor; '), 1 + s % 20)),
  '2020-01-01 00:00:00' + INTERVAL s * 37 SECOND + INTERVAL s % 1000000 MICROSECOND,
  IF(s % 8 = 0, NULL, IF(s % 100 = 1, '0000-00-00 00:00:00',
     '2020-01-03 00:00:00' + INTERVAL s * 37 SECOND)),
  FROM_UNIXTIME(1600000000 + s * 13),
  IF(s % 4 = 0, NULL, '1950-01-01' + INTERVAL s % 20000 DAY),
  IF(s % 7 = 0, NULL,
     IF(s % 97 = 0, CONCAT('{{\\n\\t"n": ', s, ',\\n\\t"pretty": true\\n}}'),
        JSON_OBJECT('n', s, 'name', CONCAT('x\\t"y" \\\\ z é ', s), 'tags', JSON_ARRAY('a', s % 10),
                    'price', (s % 1000) / 4, 'nested', JSON_OBJECT('ok', s % 2 = 0)))),
  ELT(1 + s % 5, 'new', 'paid', 'shipped', 'cancelled', 'refunded'),
  ELT(1 + s % 4, '', 'red', 'red,blue', 'green,blue')
FROM (SELECT CAST(seq AS SIGNED) AS s FROM seq_1_to_@N@) AS q"""

# The baseline's target: the table rin-ship creates from the source (checked against it before
# the figures print): the types of docs/sync.md, NOT NULL only on the key, and MariaDB's JSON
# (a LONGTEXT with a json_valid CHECK, so the source reports `longtext`) as TEXT.
TARGET_DDL = """
CREATE TABLE {t} (
  id BIGINT NOT NULL, account_id INTEGER, parent_id INTEGER, qty SMALLINT, level SMALLINT,
  big_counter DECIMAL(20,0), amount NUMERIC(12,2), discount NUMERIC(12,2),
  ratio DOUBLE PRECISION, score DOUBLE PRECISION, weight REAL, paid BOOLEAN, archived BOOLEAN,
  code VARCHAR(8), country VARCHAR(2), name VARCHAR(40), email VARCHAR(120), url VARCHAR(255),
  city VARCHAR(64), session_id VARCHAR(36), note TEXT, body TEXT, created TIMESTAMP,
  shipped TIMESTAMP, updated_at TIMESTAMPTZ, birthday DATE, doc TEXT, status TEXT, tags TEXT,
  PRIMARY KEY (id)
)"""

STRINGS = "name, email, url, city, country, code, session_id, note, body, doc, status, tags"

# The same figures from each side, in the same order (MariaDB's session in UTC).
SOURCE_CHECK = f"""
SET time_zone = '+00:00';
SELECT COUNT(*), SUM(id), SUM(account_id), SUM(parent_id), SUM(qty + level), SUM(big_counter),
  SUM(amount), SUM(discount), SUM(paid), SUM(archived), COUNT(archived),
  SUM(CAST(CONV(SUBSTR(MD5(CONCAT_WS('|', {STRINGS})), 1, 8), 16, 10) AS UNSIGNED)),
  SUM(TIMESTAMPDIFF(MICROSECOND, '2000-01-01', created)),
  SUM(IF(YEAR(shipped) > 0, TIMESTAMPDIFF(SECOND, '2000-01-01', shipped), NULL)),
  SUM(IF(YEAR(shipped) > 0, 1, 0)), SUM(UNIX_TIMESTAMP(updated_at)),
  SUM(DATEDIFF(birthday, '2000-01-01')), COUNT(doc), SUM(CAST(JSON_VALUE(doc, '$.n') AS SIGNED)),
  SUM(ratio), SUM(score), SUM(weight)
FROM {TABLE}"""

TARGET_CHECK = f"""
SELECT count(*), sum(id), sum(account_id), sum(parent_id), sum(qty + level), sum(big_counter),
  sum(amount), sum(discount), sum(paid::int), sum(archived::int), count(archived),
  sum(('x' || lpad(substr(md5(concat_ws('|', {STRINGS})), 1, 8), 16, '0'))::bit(64)::bigint),
  sum((extract(epoch FROM created - timestamp '2000-01-01') * 1000000)::bigint),
  sum(extract(epoch FROM shipped - timestamp '2000-01-01')::bigint),
  count(shipped), sum(extract(epoch FROM updated_at)::bigint),
  sum(birthday - date '2000-01-01'), count(doc), sum((doc::jsonb->>'n')::bigint),
  sum(ratio), sum(score), sum(weight::float8)
FROM {{t}}"""
FLOATS = 3  # the last figures are float sums: equal to a relative 1e-9 (summing order differs)

# What the TSV of `mysqldump --tab` needs before PostgreSQL's text COPY takes it (see the
# module's docstring): a raw CR in a value becomes COPY's `\r`; the zero dates of `shipped`
# (column 24 of 29, so between two tabs) become `\N`.
SED = [r"-e", r"s/\r/\\r/g", r"-e", r"s/\t0000-00-00 00:00:00\t/\t\\N\t/g"]


def proc_cpu(pid: int, children: bool = False) -> float:
    """utime + stime of a process (all its threads), and of its waited-for children."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def pg_cpu(pg: Postgres) -> float:
    """The PostgreSQL server's CPU: the postmaster, its exited backends (reaped by it) and the
    processes alive now."""
    pm = int((pg.dir / "data" / "postmaster.pid").read_text().split()[0])
    total = proc_cpu(pm, children=True)
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                f = (p / "stat").read_text().rsplit(")", 1)[1].split()
                if int(f[1]) == pm:
                    total += proc_cpu(int(p.name))
            except (OSError, IndexError):
                pass
    return total


class Servers:
    def __init__(self, m: MariaDB, pg: Postgres):
        self.m, self.pg = m, pg

    def cpu(self) -> tuple[float, float]:
        return proc_cpu(self.m.proc.pid), pg_cpu(self.pg)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def same(source: list[str], target: list[str]) -> list[str]:
    """The figures that differ (NULL sums as None; float sums to a relative 1e-9)."""
    bad = []
    for i, (s, t) in enumerate(zip(source, target)):
        s = None if s in ("NULL", "") else s
        t = None if t == "" else t
        if s is None or t is None:
            ok = s == t
        elif i >= len(source) - FLOATS:
            ok = abs(float(s) - float(t)) <= 1e-9 * max(abs(float(s)), 1.0)
        else:
            ok = Decimal(s) == Decimal(t)
        if not ok:
            bad.append(f"figure {i}: source {s} target {t}")
    return bad


def check_target(pg: Postgres, db: str, table: str, n: int, source: list[str]) -> None:
    got = pg.psql(TARGET_CHECK.format(t=table), db)[0]
    assert int(got[0]) == n, f"{table}: {got[0]} rows, the source has {n}"
    bad = same(source, got)
    assert not bad, f"{table} differs from the source: " + "; ".join(bad)


def column_types(pg: Postgres, db: str, table: str) -> list[tuple[str, str, bool]]:
    return [(r[0], r[1], r[2] == "t") for r in pg.psql(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
        f"WHERE attrelid = 'public.{table}'::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum", db)]


def run_sync(a, binary: Path, work: Path, srv: Servers, n: int, source: list[str],
             mode: str) -> dict:
    """One `rin-ship sync --once` into a fresh database; its figures."""
    pg = srv.pg
    db = pg.create_db()
    d = Path(tempfile.mkdtemp(prefix="sync-", dir=work))
    table = {"name": TABLE}
    if mode != "OVERWRITE_EXISTING":
        table["mode"] = mode
    cfg = write_config(d, mysql_url(srv.m, DB), pg_warehouse(SimpleNamespace(port=pg.port, name=db)),
                       [table], rows_per_object=a.rows_per_object, compression=a.compression)
    timing = d / "time.txt"
    cpu0, (m0, p0) = children_cpu(), srv.cpu()
    t0 = time.monotonic()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "%e %U %S %M", "-o", str(timing), str(binary),
                             "sync", "--once", "-c", str(cfg), "--log-format", "json"],
                            env=dict(ENV, RIN_SHIP_LOG="info"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # The log line that ends the read (every object stored): the CPU split between the phases.
    read_s, at_read, err = None, None, []
    for line in proc.stderr:
        err.append(line)
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("message") == "sync: read":
            read_s = float(ev["seconds"])
            rin = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            at_read = (proc_cpu(int(rin[0])) if rin else None, *srv.cpu())
    out = proc.stdout.read()
    proc.wait(7200)
    wall = time.monotonic() - t0
    cpu = children_cpu() - cpu0
    time.sleep(1)  # the postmaster reaps the last backends (their CPU counts once it has)
    m1, p1 = srv.cpu()
    assert proc.returncode == 0, f"sync exited {proc.returncode}:\n{out}\n{''.join(err)[-4000:]}"
    summary = json.loads(out.strip().splitlines()[-1])
    t = summary["tables"][0]
    assert summary["ok"] and t["rows"] == n and not t["incremental"], summary
    phases = None
    if at_read and at_read[0] is not None:
        # (rin-ship, mariadbd, postgres) CPU s of the read, then of the load.
        phases = ((at_read[0], at_read[1] - m0, at_read[2] - p0),
                  (cpu - at_read[0], m1 - at_read[1], p1 - at_read[2]))
    _, user, sys_, rss_kb = timing.read_text().split()[-4:]
    check_target(pg, db, TABLE, n, source)
    types = column_types(pg, db, TABLE)
    pg.psql(f"DROP DATABASE {db}")
    if not a.keep:
        shutil.rmtree(d, ignore_errors=True)
    return {"method": f"rin-ship sync --once, {mode}", "wall": wall, "cpu": cpu,
            "user": float(user), "sys": float(sys_), "rss_mb": int(rss_kb) / 1024,
            "read": read_s, "pass": t["seconds"], "objects": t["objects"], "bytes": t["bytes"],
            "raw_bytes": t["raw_bytes"], "mariadb_cpu": m1 - m0, "pg_cpu": p1 - p0,
            "phases": phases, "types": types}


def run_baseline(work: Path, srv: Servers, n: int, source: list[str], tab: Path,
                 keep: bool) -> dict:
    """`mysqldump --tab` of the table, then `psql \\copy` of its TSV into a fresh database."""
    m, pg = srv.m, srv.pg
    for f in tab.iterdir():
        f.unlink()
    db = pg.create_db()
    pg.psql(TARGET_DDL.format(t=TABLE), db)
    cpu0, (m0, p0) = children_cpu(), srv.cpu()
    t0 = time.monotonic()
    # As root on the socket (FILE privilege); the server writes the .txt into --tab's folder,
    # which --secure-file-priv allows; mysqldump's default --tz-utc dumps TIMESTAMPs in UTC.
    subprocess.run(["mysqldump", "-S", f"{m.dir}/sock", "-u", "root", f"--tab={tab}", DB, TABLE],
                   check=True, capture_output=True)
    dump_wall = time.monotonic() - t0
    dump_cpu = children_cpu() - cpu0
    m1 = proc_cpu(m.proc.pid)
    tsv = tab / f"{TABLE}.txt"
    tsv_bytes = tsv.stat().st_size
    t1 = time.monotonic()
    sed = subprocess.Popen(["sed", *SED, str(tsv)], stdout=subprocess.PIPE)
    psql = subprocess.run(
        [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-d", db,
         "-v", "ON_ERROR_STOP=1", "-c", f"\\copy {TABLE} FROM pstdin"],
        stdin=sed.stdout, capture_output=True, text=True, env=dict(os.environ, PGTZ="UTC"))
    sed.stdout.close()
    assert sed.wait() == 0 and psql.returncode == 0, f"\\copy failed: {psql.stderr[-3000:]}"
    copy_wall = time.monotonic() - t1
    wall = time.monotonic() - t0
    cpu = children_cpu() - cpu0
    time.sleep(1)
    p1 = pg_cpu(pg)
    check_target(pg, db, TABLE, n, source)
    types = column_types(pg, db, TABLE)
    pg.psql(f"DROP DATABASE {db}")
    if not keep:
        tsv.unlink()
    return {"method": "mysqldump --tab + psql \\copy", "wall": wall, "dump_wall": dump_wall,
            "copy_wall": copy_wall, "dump_cpu": dump_cpu, "client_cpu": cpu,
            "tsv_bytes": tsv_bytes, "mariadb_cpu": m1 - m0, "pg_cpu": p1 - p0, "types": types}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--bin", type=Path, default=ROOT / "target/release/rin-ship")
    ap.add_argument("--rows-per-object", type=int, default=500_000)
    ap.add_argument("--compression", default="gzip", choices=["gzip", "zstd"])
    ap.add_argument("--repeat", type=int, default=1, help="measure each method this many times")
    ap.add_argument("--keep", action="store_true", help="keep the servers' files and the objects")
    a = ap.parse_args()
    binary = a.bin.resolve()
    assert binary.is_file(), f"{binary} missing: build it with `cargo build --release`"
    h = subprocess.run([str(binary), "sync", "--help"], capture_output=True)
    assert h.returncode == 0, f"{binary} has no `sync` subcommand (an old build?): try --bin"
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout
    work = Path(tempfile.mkdtemp(prefix="rin-sync-bench-"))
    os.chmod(work, 0o755)
    # The dump's folder: written by the server (user mysql), the only one it may write.
    tab = work / "tab"
    tab.mkdir()
    shutil.chown(tab, "mysql", "mysql")
    m = pg = None
    try:
        m = start_mariadb(f"--secure-file-priv={tab}", "--innodb-buffer-pool-size=1G")
        pg = start_pg(work / "pg")
        run(a, binary, version.strip(), work, Servers(m, pg), tab)
    finally:
        if m:
            m.stop()
            if not a.keep:
                shutil.rmtree(m.dir.parent, ignore_errors=True)
        if pg:
            pg.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept: {work}" + (f" {m.dir.parent}" if m else ""))


def run(a, binary: Path, version: str, work: Path, srv: Servers, tab: Path) -> None:
    n = a.rows
    m = srv.m
    m.root(f"CREATE DATABASE {DB}")
    m.root(SOURCE_DDL, DB)
    t0 = time.monotonic()
    m.root(FILL.replace("@N@", str(n)), DB)
    fill = time.monotonic() - t0
    m.root(f"ANALYZE TABLE {TABLE}", DB)
    size = m.root("SELECT data_length FROM information_schema.tables "
                  f"WHERE table_schema = '{DB}' AND table_name = '{TABLE}'")[0][0]
    # Also the warm-up: every method then reads a table the caches hold alike.
    source = m.root(SOURCE_CHECK, DB)[0]
    assert int(source[0]) == n, source
    print(f"binary: {binary} ({version})")
    print(f"rows: {n}")
    print("columns: 29")
    print(f"source fill s: {fill:.1f} (InnoDB data {int(size) / 2**20:.0f} MiB)")
    print(f"rows_per_object: {a.rows_per_object}, compression: {a.compression}")
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    results = []
    for _ in range(a.repeat):
        for mode in ("OVERWRITE_EXISTING", "APPEND"):
            results.append(run_sync(a, binary, work, srv, n, source, mode))
        results.append(run_baseline(work, srv, n, source, tab, a.keep))
    base = [r for r in results if "dump_wall" in r]
    # The rin-ship-created target and the hand-written one have the same columns and types.
    created = next(r["types"] for r in results if "dump_wall" not in r)
    assert base[0]["types"] == created, (base[0]["types"], created)
    best_base = min(r["wall"] for r in base)
    print()
    print(f"{'method':<40} {'wall s':>8} {'rows/s':>9} {'rin-ship CPU s':>15} "
          f"{'vs baseline':>12}")
    for r in results:
        rate = n / r["wall"]
        cpu = f"{r['cpu']:.2f}" if "cpu" in r else "-"
        ratio = f"{rate / (n / best_base):.2f}"
        print(f"{r['method']:<40} {r['wall']:>8.2f} {rate:>9.0f} {cpu:>15} {ratio:>12}")
    print()
    for r in results:
        if "cpu" in r:
            read = f"{r['read']:.1f}" if r["read"] is not None else "?"
            load = f"{r['pass'] - r['read']:.1f}" if r["read"] is not None else "?"
            print(f"{r['method']}: read+write objects s {read}, load s {load}, "
                  f"user/sys s {r['user']:.2f}/{r['sys']:.2f}, peak RSS MB {r['rss_mb']:.0f}, "
                  f"objects {r['objects']}, object MiB {r['bytes'] / 2**20:.1f} "
                  f"(NDJSON {r['raw_bytes'] / 2**20:.0f}), mariadbd CPU s {r['mariadb_cpu']:.2f}, "
                  f"postgres CPU s {r['pg_cpu']:.2f}")
            if r["phases"]:
                print("  CPU s (rin-ship / mariadbd / postgres): " + ", ".join(
                    f"{name} {c[0]:.2f} / {c[1]:.2f} / {c[2]:.2f}"
                    for name, c in zip(("read", "load"), r["phases"])))
        else:
            print(f"{r['method']}: dump s {r['dump_wall']:.2f}, \\copy s {r['copy_wall']:.2f}, "
                  f"TSV MiB {r['tsv_bytes'] / 2**20:.0f}, mariadbd CPU s {r['mariadb_cpu']:.2f}, "
                  f"postgres CPU s {r['pg_cpu']:.2f}, clients (mysqldump, sed, psql) CPU s "
                  f"{r['client_cpu']:.2f} (mysqldump {r['dump_cpu']:.2f})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("checks: row counts and the 22-figure checksum equal the source in every target")


if __name__ == "__main__":
    main()
