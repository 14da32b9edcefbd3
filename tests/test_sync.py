"""`rin-ship sync`: tables from a real MariaDB server (Debian's mariadb-server, started here on
loopback) and a real PostgreSQL source into PostgreSQL and the embedded SQLite warehouse.

After each pass the target must equal the source row for row (both sides read by a query and
compared value by value, not by counts): a 100k-row snapshot, inserts and updates between
passes, a transaction that commits late inside the overlap window, SIGKILLs mid-pass, a source
column added later (reported, or added with `schema: evolve`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest

from loadlib import *  # noqa: F401,F403  (pg_server, pgdb)
from rinlib import Tmux, free_port, rin_ship_bin

MARIADB_INSTALL = "apt-get install -y mariadb-server"


class MariaDB:
    """A throw-away MariaDB server on 127.0.0.1 (user `sync`, password `pw`)."""

    def __init__(self, workdir: Path, extra_args: tuple[str, ...] = ()):
        self.dir = Path(workdir)
        self.port = free_port()
        self.proc = None
        # More `mariadbd` options (the benchmark's `--secure-file-priv`).
        self.extra_args = tuple(extra_args)

    def start(self):
        for tool in ("mariadbd", "mariadb-install-db", "mariadb"):
            assert shutil.which(tool), f"{tool} missing: install MariaDB with `{MARIADB_INSTALL}`"
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.dir, "mysql", "mysql")
        subprocess.run(["mariadb-install-db", "--user=mysql", f"--datadir={self.dir}/data",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True)
        self.proc = subprocess.Popen(
            ["mariadbd", "--user=mysql", f"--datadir={self.dir}/data", f"--socket={self.dir}/sock",
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--log-error={self.dir}/err",
             f"--pid-file={self.dir}/pid", "--innodb-flush-log-at-trx-commit=0",
             "--skip-log-bin", *self.extra_args])
        deadline = time.time() + 60
        while time.time() < deadline:
            if subprocess.run(["mariadb", "-S", f"{self.dir}/sock", "-u", "root", "-e", "SELECT 1"],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"mariadbd did not start: {(self.dir / 'err').read_text()}")
        self.root("CREATE USER 'sync'@'127.0.0.1' IDENTIFIED BY 'pw'; "
                  "GRANT ALL ON *.* TO 'sync'@'127.0.0.1'")
        return self

    def stop(self):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def root(self, sql: str, db: str = "") -> list[list[str]]:
        args = ["mariadb", "-S", f"{self.dir}/sock", "-u", "root", "-N", "-B", "-e", sql]
        if db:
            args.append(db)
        p = subprocess.run(args, capture_output=True, text=True)
        assert p.returncode == 0, f"{sql[:200]}: {p.stderr}"
        return [ln.split("\t") for ln in p.stdout.splitlines()]

    def session(self, db: str) -> subprocess.Popen:
        """An interactive client (statements written to its stdin), e.g. to hold a transaction
        open."""
        return subprocess.Popen(["mariadb", "-S", f"{self.dir}/sock", "-u", "root", "-N", "-B", "-n",
                                 db], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def start_mariadb(*extra_args: str) -> MariaDB:
    """A started server in a fresh temp dir (not under pytest's: the server runs as `mysql`).
    The caller stops it and removes `m.dir.parent`."""
    d = tempfile.mkdtemp(prefix="rin-ship-mariadb-")
    os.chmod(d, 0o755)
    return MariaDB(Path(d) / "m", extra_args).start()


@pytest.fixture(scope="session")
def mariadb():
    m = start_mariadb()
    yield m
    m.stop()
    shutil.rmtree(m.dir.parent, ignore_errors=True)


@pytest.fixture
def mysqldb(mariadb):
    name = "app_" + uuid.uuid4().hex[:8]
    mariadb.root(f"CREATE DATABASE {name}")
    return name


ORDERS = """
CREATE TABLE orders (
  id BIGINT UNSIGNED PRIMARY KEY,
  customer VARCHAR(40) NOT NULL,
  amount DECIMAL(20,6) NOT NULL,
  paid TINYINT(1) NOT NULL,
  note TEXT NULL,
  doc JSON NULL,
  created DATETIME(6) NULL,
  updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  raw BLOB NULL,
  KEY (updated_at)
)"""


def fill_orders(m: MariaDB, db: str, n: int):
    m.root(ORDERS, db)
    m.root(
        # updated_at spread over the past: a later pass's overlap window re-reads only the last
        # few minutes of them.
        "INSERT INTO orders (id, customer, amount, paid, note, doc, created, raw, updated_at) "
        "SELECT seq, CONCAT('cust-', seq % 977), seq * 1.000001 + 0.123456, seq % 2, "
        "IF(seq % 10 = 0, NULL, CONCAT('note \\t \"', seq, '\" é')), "
        "IF(seq % 3 = 0, JSON_OBJECT('n', seq, 'tags', JSON_ARRAY('a', seq)), NULL), "
        "IF(seq % 7 = 0, NULL, '2024-01-01 00:00:00' + INTERVAL seq SECOND), "
        f"IF(seq % 5 = 0, UNHEX('00FF10'), NULL), '2024-01-01 00:00:00' + INTERVAL seq SECOND "
        f"FROM seq_1_to_{n}", db)
    # Beyond int8, and the biggest a BIGINT UNSIGNED holds; a zero-ish decimal.
    m.root("INSERT INTO orders (id, customer, amount, paid) VALUES "
           "(18446744073709551615, 'max', 99999999999999.999999, 1), "
           "(9223372036854775808, 'int8+1', -0.000001, 0)", db)


def mysql_rows(m: MariaDB, db: str) -> list[tuple]:
    rows = m.root(
        "SELECT id, customer, CAST(amount AS CHAR), paid, COALESCE(note, '<null>'), "
        "COALESCE(CAST(doc AS CHAR), '<null>'), COALESCE(DATE_FORMAT(created, '%Y-%m-%d %H:%i:%s'), '<null>'), "
        "COALESCE(TO_BASE64(raw), '<null>') FROM orders ORDER BY id", db)
    out = []
    for r in rows:
        r = [v.replace("\\t", "\t") for v in r]
        doc = "<null>" if r[5] == "<null>" else json.loads(r[5])
        out.append((int(r[0]), r[1], Decimal(r[2]), r[3] == "1", r[4], doc, r[6], r[7]))
    return out


def pg_query(pgdb, sql: str) -> list[list[str]]:
    """Rows of a query, fields split on \x1f (the values hold tabs)."""
    out = subprocess.run(
        [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(pgdb.port), "-U", "postgres", "-d",
         pgdb.name, "-v", "ON_ERROR_STOP=1", "-At", "-F", "\x1f", "-c", sql],
        check=True, capture_output=True, text=True)
    return [ln.split("\x1f") for ln in out.stdout.splitlines() if ln != ""]


def pg_rows(pgdb, table="orders") -> list[tuple]:
    rows = pg_query(pgdb, 
        f"SELECT id, customer, amount::text, paid::text, COALESCE(note, '<null>'), "
        f"COALESCE(doc::text, '<null>'), COALESCE(to_char(created, 'YYYY-MM-DD HH24:MI:SS'), '<null>'), "
        f"COALESCE(raw, '<null>') FROM {table} ORDER BY id")
    out = []
    for r in rows:
        doc = "<null>" if r[5] == "<null>" else json.loads(r[5])
        out.append((int(r[0]), r[1], Decimal(r[2]), r[3] == "true", r[4], doc, r[6], r[7]))
    return out


def assert_same(source: list[tuple], target: list[tuple]):
    assert len(target) == len(source), f"{len(target)} rows in the target, {len(source)} in the source"
    diff = [(s, t) for s, t in zip(source, target) if s != t]
    assert not diff, f"{len(diff)} rows differ, e.g. source {diff[0][0]} target {diff[0][1]}"


def write_config(tmp_path: Path, source_url: str, warehouse: dict, tables: list[dict], **top) -> Path:
    cfg = {"source": {"url": source_url}, "warehouse": warehouse,
           "store": {"type": "local", "dir": str(tmp_path / "objects")}, "tables": tables}
    cfg.update(top)
    p = tmp_path / "sync.yaml"
    p.write_text(json.dumps(cfg))
    return p


def pg_warehouse(pgdb) -> dict:
    return {"type": "postgres", "host": "127.0.0.1", "port": pgdb.port, "dbname": pgdb.name,
            "user": "postgres", "password": "trust-auth-ignores-it", "schema": "public", "sslmode": "disable"}


def sync_once(config: Path, *extra, env=None, check=True) -> dict:
    p = subprocess.run([str(rin_ship_bin()), "sync", "--once", "-c", str(config), *extra],
                       capture_output=True, text=True, timeout=600, env=env)
    if check:
        assert p.returncode == 0, f"sync exited {p.returncode}:\n{p.stdout}\n{p.stderr[-4000:]}"
    summary = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {}
    summary["_stderr"] = p.stderr
    return summary


def mysql_url(m: MariaDB, db: str) -> str:
    return f"mysql://sync:${{SYNC_TEST_PASSWORD}}@127.0.0.1:{m.port}/{db}"


ENV = dict(os.environ, SYNC_TEST_PASSWORD="pw")


def test_mariadb_to_postgres_snapshot_then_incremental(mariadb, mysqldb, pgdb, tmp_path):
    n = 100_000
    fill_orders(mariadb, mysqldb, n)
    cfg = write_config(tmp_path, mysql_url(mariadb, mysqldb), pg_warehouse(pgdb),
                       [{"name": "orders", "watermark": "updated_at"}], rows_per_object=30_000)
    s = sync_once(cfg, env=ENV)
    t = s["tables"][0]
    assert s["ok"] and t["rows"] == n + 2 and t["objects"] == 4 and not t["incremental"], s
    assert t["target_check"]["created"], t
    assert_same(mysql_rows(mariadb, mysqldb), pg_rows(pgdb))
    # The newest updated_at is a few seconds old by the source's own clock.
    assert 0 <= t["watermark_lag_seconds"] < 600, t
    # The password came from ${SYNC_TEST_PASSWORD} and appears nowhere.
    assert ":pw@" not in s["_stderr"]

    # Changes between passes: updates (a JSON edit, a decimal, a NULL), inserts.
    mariadb.root("UPDATE orders SET amount = amount + 1, note = NULL WHERE id % 1000 = 1; "
                 "UPDATE orders SET doc = JSON_SET(COALESCE(doc, '{}'), '$.edited', true) WHERE id = 42; "
                 "INSERT INTO orders (id, customer, amount, paid) SELECT seq, 'new', 1.5, 1 "
                 f"FROM seq_{n + 1}_to_{n + 500}", mysqldb)
    s = sync_once(cfg, env=ENV)
    t = s["tables"][0]
    assert t["incremental"] and t["pass"] == 2, t
    # 100 updated + 1 + 500 inserted + 2 (the big ids, stamped now) + the rows of the overlap
    # window before the last watermark (5 minutes: 300 rows): not the whole table.
    assert 603 <= t["rows"] < 5000, t
    assert_same(mysql_rows(mariadb, mysqldb), pg_rows(pgdb))
    # Nothing changed: a pass reads only the overlap window and loads what it read again.
    s = sync_once(cfg, env=ENV)
    assert s["tables"][0]["rows"] < 5000, s
    assert_same(mysql_rows(mariadb, mysqldb), pg_rows(pgdb))
    ledger = int(pgdb.sql("SELECT count(*) FROM rin_ship_ledger")[0][0])
    objects = sum(1 for _ in (tmp_path / "objects").rglob("*.json.gz"))
    assert ledger == objects, (ledger, objects)


def test_late_commit_inside_the_overlap_window(mariadb, mysqldb, pgdb, tmp_path):
    fill_orders(mariadb, mysqldb, 1000)
    cfg = write_config(tmp_path, mysql_url(mariadb, mysqldb), pg_warehouse(pgdb),
                       [{"name": "orders", "watermark": "updated_at", "overlap": "5m"}])
    sync_once(cfg, env=ENV)
    # A transaction stamps row 5 now and commits only after the next pass read a later row.
    late = mariadb.session(mysqldb)
    late.stdin.write("BEGIN; UPDATE orders SET note = 'late' WHERE id = 5; SELECT 'held';\n")
    late.stdin.flush()
    assert late.stdout.readline().strip() == "held"
    time.sleep(1.1)
    mariadb.root("UPDATE orders SET note = 'early' WHERE id = 6", mysqldb)
    s = sync_once(cfg, env=ENV)
    assert s["tables"][0]["watermark_to"] > s["tables"][0]["watermark_from"], s
    late.stdin.write("COMMIT; SELECT 'done';\n")
    late.stdin.flush()
    assert late.stdout.readline().strip() == "done"
    late.stdin.close()
    late.wait(10)
    # Row 5's timestamp is older than the watermark the last pass recorded, but inside the
    # overlap: the next pass reads it again.
    sync_once(cfg, env=ENV)
    assert pgdb.sql("SELECT note FROM orders WHERE id = 5") == [["late"]]
    assert_same(mysql_rows(mariadb, mysqldb), pg_rows(pgdb))


def test_sigkill_mid_pass_then_restart(mariadb, mysqldb, pgdb, tmp_path):
    n = 60_000
    fill_orders(mariadb, mysqldb, n)
    cfg = write_config(tmp_path, mysql_url(mariadb, mysqldb), pg_warehouse(pgdb),
                       [{"name": "orders", "watermark": "updated_at"}], rows_per_object=2_000)
    objects = tmp_path / "objects"
    state = objects / "sync" / "_state" / "orders.json"
    kills = []
    # Killed while objects are written, then while they load (the state records them).
    for moment in ("writing", "loading"):
        p = subprocess.Popen([str(rin_ship_bin()), "sync", "--once", "-c", str(cfg)], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            if moment == "writing" and len(list(objects.rglob("*.json.gz"))) >= 3:
                break
            # Every object stored and recorded, the load in flight.
            if moment == "loading" and state.exists() and '"pending": {' in state.read_text():
                break
            time.sleep(0.02)
        assert p.poll() is None, f"sync finished before the {moment} kill"
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills.append(moment)
        if moment == "writing":
            # Between the kills, the source moves on.
            mariadb.root("UPDATE orders SET paid = 1 - paid WHERE id % 500 = 0", mysqldb)
    s = sync_once(cfg, env=ENV)
    assert s["ok"], s
    assert_same(mysql_rows(mariadb, mysqldb), pg_rows(pgdb))
    # Every stored object loaded exactly once.
    dup = pgdb.sql("SELECT object_key, count(*) FROM rin_ship_ledger GROUP BY object_key HAVING count(*) > 1")
    assert dup == [], dup
    assert kills == ["writing", "loading"]


def test_source_column_added_is_reported_then_evolved(mariadb, mysqldb, pgdb, tmp_path):
    fill_orders(mariadb, mysqldb, 200)
    cfg = write_config(tmp_path, mysql_url(mariadb, mysqldb), pg_warehouse(pgdb),
                       [{"name": "orders", "watermark": "updated_at"}])
    sync_once(cfg, env=ENV)
    mariadb.root("ALTER TABLE orders ADD COLUMN region VARCHAR(10) NULL; "
                 "UPDATE orders SET region = 'eu' WHERE id <= 10", mysqldb)
    s = sync_once(cfg, env=ENV)
    assert s["tables"][0]["target_check"]["missing"] == ["region"], s
    assert "source column region has no column in the target" in s["_stderr"]
    # evolve: the column is added and the rows read from then on carry it.
    cfg2 = write_config(tmp_path, mysql_url(mariadb, mysqldb), pg_warehouse(pgdb),
                        [{"name": "orders", "watermark": "updated_at"}], schema="evolve")
    mariadb.root("UPDATE orders SET region = 'us' WHERE id BETWEEN 11 AND 20", mysqldb)
    s = sync_once(cfg2, env=ENV)
    assert s["tables"][0]["target_check"]["added"] == ["region"], s
    got = pgdb.sql("SELECT region, count(*) FROM orders WHERE region IS NOT NULL GROUP BY 1 ORDER BY 1")
    # The `eu` rows were read before the column existed in the target, but the overlap window
    # reads them again.
    assert got == [["eu", "10"], ["us", "10"]], got


def test_dry_run_prints_the_ddl_and_writes_nothing(mariadb, mysqldb, pgdb, tmp_path):
    fill_orders(mariadb, mysqldb, 10)
    cfg = write_config(tmp_path, mysql_url(mariadb, mysqldb), pg_warehouse(pgdb),
                       [{"name": "orders", "watermark": "updated_at", "target": "public.orders_copy"}])
    p = subprocess.run([str(rin_ship_bin()), "sync", "--dry-run", "-c", str(cfg)], env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert 'CREATE TABLE "public"."orders_copy"' in p.stdout, p.stdout
    assert '"id" DECIMAL(20,0) NOT NULL' in p.stdout and '"amount" NUMERIC(20,6)' in p.stdout
    assert "a full snapshot" in p.stdout
    assert pgdb.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'orders_copy'") == [["0"]]
    assert not list((tmp_path / "objects").rglob("*.json.gz"))


PG_SOURCE = """
CREATE TABLE items (
  id bigint PRIMARY KEY,
  price numeric(30,10),
  at timestamptz NOT NULL,
  tags text[],
  attrs jsonb,
  flag boolean,
  name text
);
INSERT INTO items SELECT g, g * 1.0000000001, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 second',
  ARRAY['t' || g, 'x'], jsonb_build_object('g', g, 'deep', jsonb_build_array(g)), g % 2 = 0,
  'name ' || g || E' \\t "q"' FROM generate_series(1, 5000) g;
"""


def test_postgres_source_to_sqlite(pg_server, tmp_path):
    src = pg_server.create_db()
    pg_server.psql(PG_SOURCE, src)
    warehouse = tmp_path / "warehouse.db"
    cfg = write_config(tmp_path, f"postgres://postgres@127.0.0.1:{pg_server.port}/{src}",
                       {"type": "sqlite", "dbname": str(warehouse)},
                       [{"name": "items", "watermark": "at", "overlap": "1m",
                         "delete_missing": True, "reconcile_every": "0s"}], source_tls="x")
    # `tls: disable` for this loopback server.
    c = json.loads(cfg.read_text())
    c.pop("source_tls")
    c["source"]["tls"] = "disable"
    cfg.write_text(json.dumps(c))
    s = sync_once(cfg)
    assert s["tables"][0]["rows"] == 5000 and s["tables"][0]["deleted_rows"] == 0, s
    pg_server.psql("UPDATE items SET price = price * 2, at = now() WHERE id <= 20; "
                   "DELETE FROM items WHERE id BETWEEN 101 AND 130", src)
    s = sync_once(cfg)
    # The 20 changed rows, and the 61 rows (one a second) of the minute before the last
    # watermark, read again; the 30 deleted rows found by the key reconciliation.
    assert s["tables"][0]["incremental"] and s["tables"][0]["rows"] == 20 + 61, s
    assert s["tables"][0]["deleted_rows"] == 30, s

    def source():
        rows = pg_query(SimpleNamespace(port=pg_server.port, name=src),
                        "SELECT id, price::text, name, flag::text, attrs::text, "
                        "array_to_json(tags)::text FROM items ORDER BY id")
        return [(int(r[0]), Decimal(r[1]), r[2], r[3] == "true", json.loads(r[4]), json.loads(r[5]))
                for r in rows]

    db = sqlite3.connect(warehouse)
    got = [(int(r[0]), Decimal(r[1]), r[2], bool(r[3]), json.loads(r[4]), json.loads(r[5]))
           for r in db.execute("SELECT id, price, name, flag, attrs, tags FROM items ORDER BY id")]
    assert_same(source(), got)
    # OVERWRITE_EXISTING on the key: no row twice.
    assert db.execute("SELECT count(*), count(DISTINCT id) FROM items").fetchone() == (4970, 4970)


def test_progress_bar_on_a_terminal_under_tmux(mariadb, mysqldb, pgdb, tmp_path):
    """On a terminal, a pass draws a bar per table (rows of about how many, MiB, objects) and
    leaves its last state on screen; the JSON summary follows on stdout."""
    n = 60_000
    fill_orders(mariadb, mysqldb, n)
    cfg = write_config(tmp_path, mysql_url(mariadb, mysqldb), pg_warehouse(pgdb),
                       [{"name": "orders", "watermark": "updated_at"}], rows_per_object=25_000)
    tmux = Tmux(f"rin-sync-{os.getpid()}")
    try:
        tmux("new-session", "-d", "-s", "sync", "-x", "150", "-y", "40")
        tmux("set-option", "-g", "remain-on-exit", "on")
        tmux.run("sync", f"SYNC_TEST_PASSWORD=pw {rin_ship_bin()} sync --once -c {cfg}", "sync")
        status = tmux.exit_status("sync", "sync", 240)
        screen = tmux.screen("sync")
        print(screen)
        assert status == 0, screen
        total = f"{n + 2:,}"
        bar = re.search(rf"^orders \[\d\d:\d\d:\d\d\] =+ {total}/~{total} rows, \d+ MiB, 3 objects, ETA",
                        screen, re.M)
        assert bar, screen
        assert '{"ok":true' in screen.replace(" ", ""), screen
    finally:
        tmux.kill()
    assert_same(mysql_rows(mariadb, mysqldb), pg_rows(pgdb))


def test_daemon_metrics_through_a_real_scrape(mariadb, mysqldb, pgdb, tmp_path):
    """The daemon (no --once) on its schedule, its /metrics scraped over HTTP after the first
    pass: rows per table, when the last pass ended, how far the watermark lags; SIGTERM stops
    it with status 0."""
    import urllib.request

    n = 5_000
    fill_orders(mariadb, mysqldb, n)
    port = free_port()
    cfg = write_config(tmp_path, mysql_url(mariadb, mysqldb), pg_warehouse(pgdb),
                       [{"name": "orders", "watermark": "updated_at"}],
                       schedule="0 3 * * *", metrics_bind=f"127.0.0.1:{port}")
    proc = subprocess.Popen([str(rin_ship_bin()), "sync", "-c", str(cfg)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def scraped():
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                return None
            return text if re.search(r'^rin_sync_rows_total\{table="orders"\} [1-9]', text, re.M) else None

        text = wait_for(scraped, 120, "the first pass's rows in /metrics")
        sample = {m.group(1): float(m.group(2)) for m in re.finditer(
            r'^(rin_sync_\w+)\{table="orders"\} (\S+)$', text, re.M)}
        assert sample["rin_sync_rows_total"] == n + 2, text
        assert abs(sample["rin_sync_last_pass_timestamp_seconds"] - time.time()) < 120, text
        assert 0 <= sample["rin_sync_watermark_lag_seconds"] < 600, text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert 'on the cron schedule "0 3 * * *"' in err, err[-3000:]
    assert_same(mysql_rows(mariadb, mysqldb), pg_rows(pgdb))


def test_maintenance_after_a_pass_that_changed_many_rows(mariadb, mysqldb, pgdb, tmp_path):
    """A pass that loads at least maintain_after_rows rows is followed by a maintenance round
    over its table (ANALYZE here, as PostgreSQL's statistics call for); a pass that changed
    little is not."""
    n = 20_000
    fill_orders(mariadb, mysqldb, n)
    cfg = write_config(tmp_path, mysql_url(mariadb, mysqldb), pg_warehouse(pgdb),
                       [{"name": "orders", "watermark": "updated_at"}],
                       maintain_after_rows=10_000, maintenance={"analyze_stats_off_pct": 1})
    s = sync_once(cfg, env=ENV)
    m = s.get("maintenance")
    assert m and m["rounds"] == 1 and m["failed"] == 0, s
    analyzed = pg_query(pgdb, "SELECT last_analyze IS NOT NULL OR last_vacuum IS NOT NULL "
                              "FROM pg_stat_user_tables WHERE relname = 'orders'")
    assert analyzed == [["t"]], (analyzed, m)
    s = sync_once(cfg, env=ENV)
    assert s["tables"][0]["loaded_rows"] < 10_000 and "maintenance" not in s, s
    assert_same(mysql_rows(mariadb, mysqldb), pg_rows(pgdb))


def test_objects_announced_on_sqs_and_loaded_by_rin_ship_import(mariadb, mysqldb, pgdb, moto_server,
                                                                  bucket, tmp_path):
    """With `store.notify: {sqs_queue_url}`, a pass puts its objects in S3 and announces them on
    SQS instead of loading them; `rin-ship import` with the config `--import-config` prints
    loads them, exactly once, even when a crash before the pass was marked done announced them
    twice (simulated: the state object put back to pending)."""
    n = 30_000
    fill_orders(mariadb, mysqldb, n)
    _, queue_url = make_queue(moto_server)
    store = {"type": "s3", "bucket": bucket, "endpoint": moto_server.endpoint,
             "force_path_style": True, "region": "us-east-1", "access_key_id": "x",
             "secret_access_key": "y", "notify": {"sqs_queue_url": queue_url}}
    cfg = write_config(tmp_path, mysql_url(mariadb, mysqldb), pg_warehouse(pgdb),
                       [{"name": "orders", "watermark": "updated_at"}], rows_per_object=10_000)
    doc = json.loads(cfg.read_text())
    doc["store"] = store
    cfg.write_text(json.dumps(doc))
    s = sync_once(cfg, env=ENV)
    t = s["tables"][0]
    assert t["objects"] == 4 and t["loaded_rows"] == 0, s
    assert "announced on SQS" in s["_stderr"], s["_stderr"][-2000:]
    assert pg_rows(pgdb) == [], "sync loaded what it should only have announced"
    p = subprocess.run([str(rin_ship_bin()), "sync", "-c", str(cfg), "--import-config"],
                       capture_output=True, text=True, timeout=60, env=ENV)
    assert p.returncode == 0, p.stderr
    rin = json.loads(p.stdout)
    assert rin["queue_name"] == queue_url.rsplit("/", 1)[1], rin
    assert rin["rin_ship"]["sqs_endpoint"] == moto_server.endpoint, rin
    rin["rin_ship"].update({"wait_time_seconds": 1, "visibility_timeout_seconds": 5})
    # The same objects announced again (a crash between the announcement and the state's
    # `done`): the importer takes the repeats as duplicates.
    sqs = sqs_client(moto_server)
    first = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0)
    assert len(first.get("Messages", [])) >= 2, first
    for m in first["Messages"][:2]:
        sqs.send_message(QueueUrl=queue_url, MessageBody=m["Body"])
    imp = Importer(tmp_path, rin, env=ENV)
    done = imp.run("--batch", "--drain", "--max-execution-time", "120s", timeout=180)
    assert '"duplicates":2' in done.stdout.replace(" ", "") or "duplicate" in done.stderr, (
        done.stdout, done.stderr[-3000:])
    assert_same(mysql_rows(mariadb, mysqldb), pg_rows(pgdb))
    ledger = int(pgdb.sql("SELECT count(*) FROM rin_ship_ledger")[0][0])
    assert ledger == 4, ledger


def test_delete_missing_removes_rows_deleted_from_the_source(mariadb, mysqldb, pgdb, tmp_path):
    """`delete_missing`: after a pass, the warehouse rows whose key the source no longer has
    are deleted (MariaDB to PostgreSQL), on the reconcile_every schedule; a table without it
    keeps them, as Data Pipeline did."""
    n = 20_000
    fill_orders(mariadb, mysqldb, n)
    cfg = write_config(tmp_path, mysql_url(mariadb, mysqldb), pg_warehouse(pgdb),
                       [{"name": "orders", "watermark": "updated_at", "delete_missing": True,
                         "reconcile_every": "1h"}])
    s = sync_once(cfg, env=ENV)
    assert s["tables"][0]["deleted_rows"] == 0, s
    mariadb.root("DELETE FROM orders WHERE id % 100 = 7", mysqldb)
    # Not due yet (1h): nothing deleted, the rows stay.
    s = sync_once(cfg, env=ENV)
    assert "deleted_rows" not in s["tables"][0], s
    assert len(pg_rows(pgdb)) == n + 2
    # Due (every pass now): the 200 deleted rows go; the target equals the source again.
    doc = json.loads(cfg.read_text())
    doc["tables"][0]["reconcile_every"] = "0s"
    cfg.write_text(json.dumps(doc))
    s = sync_once(cfg, env=ENV)
    assert s["tables"][0]["deleted_rows"] == n // 100, s
    assert_same(mysql_rows(mariadb, mysqldb), pg_rows(pgdb))
    # On Redshift it is refused at load, with what to do instead.
    doc["warehouse"] = {"host": "example", "port": 5439, "dbname": "dw", "user": "u", "password": "p"}
    cfg.write_text(json.dumps(doc))
    p = sync_once(cfg, env=ENV, check=False)
    assert "delete_missing is not available on Redshift" in p["_stderr"], p
