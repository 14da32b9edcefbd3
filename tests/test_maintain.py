"""`rin-ship maintain` against a real PostgreSQL: VACUUM / ANALYZE chosen from
pg_stat_user_tables, `--dry-run`, and the heavy-load skip."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from loadlib import PG_BIN, pg_server, pgdb, summary, wait_for  # noqa: F401
from rinlib import rin_ship_bin

pytestmark = pytest.mark.timeout(120)


def config(pgdb, targets=(), **maintenance) -> dict:
    """A Rin config on the test database: one fixed-table target per name in `targets`, plus
    a `$1` target (never a maintenance table by itself)."""
    tgts = [{"redshift": {"table": t}, "s3": {"key_prefix": f"{t}/"}} for t in targets]
    tgts.append({"redshift": {"table": "$1"}, "s3": {"key_regexp": "^dyn/([a-z_]+)/"}})
    return {
        "queue_name": "unused",
        "redshift": {"host": "127.0.0.1", "port": pgdb.port, "dbname": pgdb.name,
                     "user": "postgres", "password": "", "schema": "public"},
        "s3": {"bucket": "unused", "region": "us-east-1"},
        "targets": tgts,
        "rin_ship": {"warehouse": "postgres", "sslmode": "disable",
                     "maintenance": maintenance},
    }


def maintain(tmp_path, cfg: dict, *args, check=True) -> subprocess.CompletedProcess:
    path = tmp_path / "rin.yaml"
    path.write_text(json.dumps(cfg, indent=2))
    p = subprocess.run([str(rin_ship_bin()), "maintain", "--config", str(path), *args],
                       capture_output=True, text=True, timeout=60,
                       env={"RIN_SHIP_LOG": "info,rin_ship=debug", "PATH": "/usr/bin:/bin"})
    if check:
        assert p.returncode == 0, f"maintain exited {p.returncode}:\n{p.stderr[-6000:]}"
    return p


def counts(pgdb, table: str) -> tuple[int, int]:
    """(vacuum_count, analyze_count): manual runs only; autovacuum is off on these tables."""
    rows = pgdb.sql("SELECT vacuum_count, analyze_count FROM pg_stat_user_tables "
                    f"WHERE relid = '{table}'::regclass")
    return int(rows[0][0]), int(rows[0][1])


def dead(pgdb, table: str) -> int:
    return int(pgdb.sql("SELECT n_dead_tup FROM pg_stat_user_tables "
                        f"WHERE relid = '{table}'::regclass")[0][0])


def make(pgdb, table: str, rows=1000):
    pgdb.sql(f"CREATE TABLE {table} (i int, pad text) WITH (autovacuum_enabled = false)")
    pgdb.sql(f"INSERT INTO {table} SELECT g, repeat('x', 50) FROM generate_series(1, {rows}) g")


def churn(pgdb, table: str, rows=1000):
    """Half the rows deleted: 50 % dead tuples."""
    make(pgdb, table, rows)
    pgdb.sql(f"DELETE FROM {table} WHERE i % 2 = 0")
    # The deleting backend reports its counts when it exits: wait until they show.
    wait_for(lambda: dead(pgdb, table) == rows // 2, 10, f"dead tuples of {table}")


def test_vacuums_and_analyzes_what_needs_it(pgdb, tmp_path):
    churn(pgdb, "churn")                                   # 50 % dead -> VACUUM (ANALYZE)
    make(pgdb, "stale")                                    # 200 of 1200 modified -> ANALYZE
    pgdb.sql("ANALYZE stale")
    pgdb.sql("INSERT INTO stale SELECT g, 'y' FROM generate_series(1, 200) g")
    make(pgdb, "clean")                                    # vacuumed and analyzed: nothing
    pgdb.sql("VACUUM ANALYZE clean")
    make(pgdb, "barely")                                   # 10 % dead exactly: nothing
    pgdb.sql("DELETE FROM barely WHERE i <= 100")
    pgdb.sql("ANALYZE barely")
    churn(pgdb, "ledgered", 100)                           # only named in the ledger
    churn(pgdb, "unlisted", 100)                           # in neither: never touched
    pgdb.sql("CREATE TABLE rin_ship_ledger (target varchar(1024))")
    pgdb.sql("""INSERT INTO rin_ship_ledger VALUES ('"public"."ledgered"'), ('"public"."ledgered"')""")
    wait_for(lambda: int(pgdb.sql("SELECT n_mod_since_analyze FROM pg_stat_user_tables "
                                  "WHERE relname = 'stale'")[0][0]) == 200, 10, "stale counts")
    wait_for(lambda: dead(pgdb, "barely") == 100, 10, "barely counts")
    names = ["churn", "stale", "clean", "barely", "ledgered", "unlisted"]
    before = {t: counts(pgdb, t) for t in names}

    p = maintain(tmp_path, config(pgdb, ["churn", "stale", "clean", "barely"]), "--once")
    s = summary(p)
    assert s["tables_checked"] == 5, (s, p.stderr[-3000:])
    assert s["vacuumed"] == 2 and s["analyzed"] == 3, (s, p.stderr[-3000:])
    assert s["skipped_heavy_load"] == 0 and s["failed"] == 0, s
    after = {t: counts(pgdb, t) for t in names}
    delta = {t: (after[t][0] - before[t][0], after[t][1] - before[t][1]) for t in names}
    assert delta == {"churn": (1, 1), "ledgered": (1, 1), "stale": (0, 1), "clean": (0, 0),
                     "barely": (0, 0), "unlisted": (0, 0)}, delta
    assert dead(pgdb, "churn") == 0
    assert 'VACUUM (ANALYZE) "public"."churn"' in p.stderr, p.stderr[-3000:]

    # Nothing left to do: a second round runs nothing.
    s = summary(maintain(tmp_path, config(pgdb, ["churn", "stale", "clean", "barely"]), "--once"))
    assert s["vacuumed"] == 0 and s["analyzed"] == 0 and s["tables_checked"] == 5, s
    assert {t: counts(pgdb, t) for t in names} == after


def test_dry_run_prints_and_runs_nothing(pgdb, tmp_path):
    pgdb.sql('CREATE TABLE "Odd Name" (i int) WITH (autovacuum_enabled = false)')
    pgdb.sql('INSERT INTO "Odd Name" SELECT generate_series(1, 400)')
    pgdb.sql('DELETE FROM "Odd Name" WHERE i > 100')
    wait_for(lambda: dead(pgdb, '"Odd Name"') == 300, 10, "dead tuples")
    make(pgdb, "fresh", 50)                                # never analyzed: ANALYZE
    wait_for(lambda: int(pgdb.sql("SELECT n_mod_since_analyze FROM pg_stat_user_tables "
                                  "WHERE relname = 'fresh'")[0][0]) == 50, 10, "fresh counts")
    cfg = config(pgdb, [], tables=['public."Odd Name"', "fresh", "no_such_table"])
    before = counts(pgdb, '"Odd Name"'), counts(pgdb, "fresh")

    p = maintain(tmp_path, cfg, "--dry-run")
    lines = [ln for ln in p.stdout.splitlines() if not ln.startswith("{")]
    assert lines == [
        'ANALYZE "public"."fresh";  -- modified since analyze 100% > 10%',
        'VACUUM (ANALYZE) "public"."Odd Name";  -- dead tuples 75% > 10%',
    ] or lines == [
        'VACUUM (ANALYZE) "public"."Odd Name";  -- dead tuples 75% > 10%',
        'ANALYZE "public"."fresh";  -- modified since analyze 100% > 10%',
    ], p.stdout
    s = summary(p)
    assert s["planned"] == 2 and s["vacuumed"] == 0 and s["analyzed"] == 0, s
    assert (counts(pgdb, '"Odd Name"'), counts(pgdb, "fresh")) == before

    s = summary(maintain(tmp_path, cfg, "--once"))
    assert s["vacuumed"] == 1 and s["analyzed"] == 2, s
    assert counts(pgdb, '"Odd Name"')[0] == before[0][0] + 1
    assert counts(pgdb, "fresh") == (before[1][0], before[1][1] + 1)


def psql_bg(pgdb, sql: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(pgdb.port), "-U", "postgres",
         "-d", pgdb.name, "-v", "ON_ERROR_STOP=1", "-c", sql],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def running_loads(pgdb) -> int:
    return int(pgdb.sql("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
                        "(query ILIKE 'insert%' OR query ILIKE 'copy%')")[0][0])


def test_heavy_load_skips(pgdb, tmp_path):
    churn(pgdb, "busy1")
    churn(pgdb, "busy2")
    pgdb.sql("CREATE TABLE sink (i int)")
    b1, b2 = counts(pgdb, "busy1"), counts(pgdb, "busy2")
    procs = []
    try:
        # One long INSERT: below the default threshold (2): maintenance goes on.
        procs.append(psql_bg(pgdb, "INSERT INTO sink SELECT 1 FROM pg_sleep(60)"))
        wait_for(lambda: running_loads(pgdb) == 1, 10, "the INSERT running")
        s = summary(maintain(tmp_path, config(pgdb, [], tables=["busy1"]), "--once"))
        assert s["skipped_heavy_load"] == 0 and s["vacuumed"] == 1, s
        assert counts(pgdb, "busy1")[0] == b1[0] + 1

        # Plus a COPY ... FROM STDIN held open: two loads, the threshold: skipped.
        copy = psql_bg(pgdb, "COPY sink FROM STDIN")
        procs.append(copy)
        copy.stdin.write("1\n")
        copy.stdin.flush()
        wait_for(lambda: running_loads(pgdb) == 2, 10, "the COPY running")
        p = maintain(tmp_path, config(pgdb, [], tables=["busy2"]), "--once")
        s = summary(p)
        assert s["skipped_heavy_load"] == 1 and s["vacuumed"] == 0 and s["analyzed"] == 0, s
        assert "loads are heavy" in p.stderr, p.stderr[-3000:]
        assert counts(pgdb, "busy2") == b2

        # heavy_load_queries: 0 never skips.
        s = summary(maintain(tmp_path, config(pgdb, [], tables=["busy2"], heavy_load_queries=0),
                             "--dry-run"))
        assert s["planned"] == 1 and s["skipped_heavy_load"] == 0, s

        # Loads done: the next round runs.
        copy.stdin.close()
        copy.wait(10)
        pgdb.sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                 "WHERE query ILIKE 'insert into sink%' AND pid <> pg_backend_pid()")
        procs[0].wait(10)
        wait_for(lambda: running_loads(pgdb) == 0, 10, "the loads to end")
        s = summary(maintain(tmp_path, config(pgdb, [], tables=["busy2"]), "--once"))
        assert s["skipped_heavy_load"] == 0 and s["vacuumed"] == 1, s
        assert counts(pgdb, "busy2")[0] == b2[0] + 1
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.kill()
                pr.wait()


def test_daemon_rounds_until_sigterm(pgdb, tmp_path):
    churn(pgdb, "loop_t", 200)
    path = tmp_path / "rin.yaml"
    path.write_text(json.dumps(config(pgdb, ["loop_t"], interval="1s")))
    err = open(tmp_path / "stderr.log", "w")
    p = subprocess.Popen([str(rin_ship_bin()), "maintain", "--config", str(path)],
                         stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        wait_for(lambda: counts(pgdb, "loop_t")[0] == 1, 20, "the first round's VACUUM")
        # More churn: a later round picks it up without a restart.
        pgdb.sql("DELETE FROM loop_t WHERE i % 5 = 1")
        wait_for(lambda: counts(pgdb, "loop_t")[0] == 2, 20, "a later round's VACUUM")
        time.sleep(1.5)
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, (tmp_path / "stderr.log").read_text()[-3000:]
    s = json.loads(out.strip().splitlines()[-1])
    assert s["rounds"] >= 3 and s["vacuumed"] == 2 and s["failed"] == 0, s


def test_bad_maintenance_config_fails(pgdb, tmp_path):
    p = maintain(tmp_path, config(pgdb, ["t"], vacuum_mode="SOMETIMES"), "--once", check=False)
    assert p.returncode != 0
    assert "maintenance" in p.stderr and "vacuum_mode" in p.stderr, p.stderr
