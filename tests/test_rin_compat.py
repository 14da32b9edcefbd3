"""Rin drop-in (issue 12): a Rin user's config, flags, environment and scripts, unchanged.

Driven by Rin's own material in tests/rin/ (its test configs, its README config, its SQS test
messages; see tests/rin/README.md for where each comes from), Rin's flags from cmd/rin/main.go,
and the behaviours in shared/reference/anchors.md. Everything runs the real binary against
moto (S3, SQS, Redshift's GetClusterCredentials) and a real PostgreSQL. docs/rin-compatibility.md
names, for each Rin key, flag, variable and behaviour, the test here that shows it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from loadlib import (Importer, make_queue, ndjson_gz, notify, pg_server, pgdb,  # noqa: F401
                     queue_depth, rin_config, s3_event, send_body, summary, wait_for)
from rinlib import ROOT, rin_ship_bin
from test_lambda import FakeRuntime, require_lambda_build, sqs_record

pytestmark = pytest.mark.timeout(180)

RIN = ROOT / "tests" / "rin"
DOC = ROOT / "docs" / "rin-compatibility.md"
TARGETS = [{"redshift": {"table": "logs"}, "s3": {"key_prefix": "incoming/"}}]
TABLE = "CREATE TABLE logs (time timestamptz, i bigint, path text)"
# What Rin's own test configs need from the environment (`{{ must_env ... }}`).
RIN_ENV = {"AWS_SECRET_ACCESS_KEY": "SSS", "REDSHIFT_PASSWORD": "README-PW-SECRET"}


@pytest.fixture
def rin_bin(tmp_path) -> Path:
    """The binary installed under Rin's name, as a Rin user's scripts call it."""
    p = tmp_path / "bin" / "rin"
    p.parent.mkdir()
    os.symlink(rin_ship_bin(), p)
    return p


def run(args, env=None, cwd=None, timeout=60) -> subprocess.CompletedProcess:
    full = dict(os.environ, RIN_SHIP_LOG="info")
    full.update(env or {})
    return subprocess.run([str(a) for a in args], env=full, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def put(moto, bucket, key, records) -> str:
    moto.client().put_object(Bucket=bucket, Key=key, Body=ndjson_gz(records))
    return moto.client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


def ledger_rows(pgdb) -> int:
    if pgdb.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'rin_ship_ledger'") == [["0"]]:
        return 0
    return pgdb.count("rin_ship_ledger")


def setup_import(moto, pgdb, bucket, tmp_path, name="imp", **ext):
    q, url = make_queue(moto)
    notify(moto, bucket, url)
    pgdb.sql(TABLE)
    imp = Importer(tmp_path, rin_config(moto, pgdb, q, bucket, TARGETS, **ext), name=name)
    return q, url, imp


# ---------------------------------------------------------------------------------------------
# flags and RIN_* variables (cmd/rin/main.go)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["env", "env-lambda", "flag-bare", "flag-go-bool"])
def test_rin_dry_run_loads_nothing(moto_server, bucket, pgdb, tmp_path, rin_bin, how):
    """RIN_DRY_RUN=true (Rin reads every flag from RIN_<FLAG>) and -dry-run never load: no row,
    no ledger, every message still on the queue, even with -batch and under a Lambda runtime.
    The same setup then loads for real, so the dry run had something to load."""
    q, url, imp = setup_import(moto_server, pgdb, bucket, tmp_path)
    put(moto_server, bucket, "incoming/a.json.gz", [{"i": 1}, {"i": 2}])
    wait_for(lambda: queue_depth(moto_server, url) == 2, 10, "the test event and the event")
    env = {"RIN_DRY_RUN": "true"} if how.startswith("env") else {}
    flags = {"env": [], "env-lambda": ["--lambda"], "flag-bare": ["-dry-run"],
             "flag-go-bool": ["-dry-run=T"]}[how]
    if how == "env-lambda":
        env["AWS_LAMBDA_RUNTIME_API"] = "127.0.0.1:9"  # nothing there: it must not be used
    p = run([rin_bin, "-config", imp.config_path, "-batch", *flags], env=env, cwd=imp.dir)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("dry run: nothing is loaded"), p.stdout
    assert "target 0: s3://%s/incoming/" % bucket in p.stdout, p.stdout
    assert pgdb.count("logs") == 0 and ledger_rows(pgdb) == 0
    assert queue_depth(moto_server, url) == 2
    # A value that is not a boolean stops before anything (never read as false).
    p = run([rin_bin, "-config", imp.config_path, "-batch"], env={"RIN_DRY_RUN": "ture"},
            cwd=imp.dir)
    assert p.returncode == 2 and "not a boolean" in p.stderr, p.stderr
    assert pgdb.count("logs") == 0 and queue_depth(moto_server, url) == 2
    # RIN_DRY_RUN=false (and empty) load.
    p = run([rin_bin, "-config", imp.config_path, "-batch"], env={"RIN_DRY_RUN": "false"},
            cwd=imp.dir)
    assert p.returncode == 0, p.stderr
    assert summary(p)["loaded_rows"] == 2 and pgdb.count("logs") == 2
    assert queue_depth(moto_server, url) == 0


def test_bare_dry_run_lists_rins_targets(rin_bin, tmp_path):
    """`rin -config config.yml -dry-run` on Rin's own test config: the targets as Rin lists
    them (discard, break), then how to render a key's SQL; no secret; nothing contacted."""
    for args in (["-config", RIN / "config.yml", "-dry-run"],
                 ["-c", RIN / "config.yml", "--dry-run"],
                 ["import", "--config", RIN / "config.yml", "--dry-run"]):
        p = run([rin_bin, *args], env=RIN_ENV, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        lines = p.stdout.splitlines()
        assert [ln.split(":", 1)[0] for ln in lines[1:6]] == [f"target {i}" for i in range(5)]
        assert lines[1] == "target 0: s3://test.bucket.test/test/foo/discard => discard"
        assert lines[3].endswith("/test/xxx.bar_break => break"), lines[3]
        assert "s3://example.bucket/test/(s[0-9]+)/(t[0-9]+)/ => " in lines[5]
        assert "--dry-run KEY" in lines[6]
        assert "test_pass" not in p.stdout + p.stderr and "SSS" not in p.stdout + p.stderr
    # RIN_CONFIG and RIN_DRY_RUN alone, no flag at all.
    p = run([rin_bin], env=dict(RIN_ENV, RIN_CONFIG=str(RIN / "config.yml.iam_role"),
                                RIN_DRY_RUN="1"), cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.count("\ntarget ") == 5, p.stdout + p.stderr
    # A file:// URL, as Rin's -config takes one.
    p = run([rin_bin, "-config", f"file://{RIN / 'localstack.yml'}", "-dry-run"], cwd=tmp_path)
    assert p.returncode == 0 and "target 0: s3://rin-test/test_xxx/foo" in p.stdout, p.stderr
    # Rin's default -config is ./config.yaml.
    (tmp_path / "config.yaml").write_text((RIN / "localstack.yml").read_text())
    p = run([rin_bin, "-dry-run"], cwd=tmp_path)
    assert p.returncode == 0 and "target 0: s3://rin-test/test_xxx/foo" in p.stdout, p.stderr


def test_short_flags_version_and_go_durations(moto_server, bucket, pgdb, tmp_path, rin_bin):
    """Rin's -c -b -d -v -version, Go durations for -max-execution-time and
    RIN_MAX_EXECUTION_TIME (1h30m, 5m0s, 0h0m3s), RIN_CONFIG + RIN_BATCH + RIN_DEBUG."""
    q, url, imp = setup_import(moto_server, pgdb, bucket, tmp_path)
    for v in ("-v", "-version", "--version"):
        p = run([rin_bin, v])
        assert p.returncode == 0 and p.stdout.startswith("rin-ship "), (v, p.stdout, p.stderr)
        p = run([rin_ship_bin(), "import", "-c", "whatever.yaml", v])
        assert p.returncode == 0 and p.stdout.startswith("rin-ship "), (v, p.stdout, p.stderr)
    put(moto_server, bucket, "incoming/a.json.gz", [{"i": 1}])
    # RIN_VERSION is not read: a version number in the environment changes nothing.
    p = run([rin_bin, "-c", imp.config_path, "-b", "-d", "-max-execution-time", "1h30m"],
            env={"RIN_VERSION": "v1.3.2"}, cwd=imp.dir)
    assert p.returncode == 0, p.stderr
    assert summary(p)["loaded_rows"] == 1 and " DEBUG " in p.stderr
    put(moto_server, bucket, "incoming/b.json.gz", [{"i": 2}])
    p = run([rin_bin], env={"RIN_CONFIG": str(imp.config_path), "RIN_BATCH": "true",
                            "RIN_MAX_EXECUTION_TIME": "5m0s"}, cwd=imp.dir)
    assert p.returncode == 0 and summary(p)["loaded_rows"] == 1, p.stderr
    assert " DEBUG " not in p.stderr
    # Daemon mode, stopped by the Go duration.
    t = time.monotonic()
    p = run([rin_bin, "-config=%s" % imp.config_path], env={"RIN_MAX_EXECUTION_TIME": "0h0m3s"},
            cwd=imp.dir)
    took = time.monotonic() - t
    assert p.returncode == 0 and 2.5 < took < 20, (took, p.stderr)
    assert "max execution time reached" in p.stderr
    p = run([rin_bin, "-c", imp.config_path, "-b", "-max-execution-time", "soon"], cwd=imp.dir)
    assert p.returncode == 2 and "not a duration" in p.stderr, p.stderr
    assert pgdb.count("logs") == 2


# ---------------------------------------------------------------------------------------------
# configs Rin accepts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["config.yml", "config.yml.iam_role", "config.redshift-data.yml",
                                  "localstack.yml", "README.config.yaml"])
def test_rins_configs_pass_check_config(name, tmp_path):
    """Every config of Rin's README and test/ folder: `check-config -c` recognises it as an
    import config and validates it, without printing a secret."""
    p = run([rin_ship_bin(), "check-config", "-c", RIN / name], env=RIN_ENV, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    n = len(yaml.safe_load((RIN / name).read_text())["targets"])
    assert p.stdout.startswith(f"import config ok: {n} target(s), queue "), p.stdout
    assert p.stdout.count("\n  target ") == n, p.stdout
    assert "warning" not in p.stdout, p.stdout
    for secret in ("test_pass", "SSS", "toor", "example_pass", "README-PW-SECRET"):
        assert secret not in p.stdout + p.stderr, secret


@pytest.mark.parametrize("name,why", [("config.yml.invalid_regexp", "key_regexp"),
                                      ("config.yml.no_key_matcher",
                                       "key_prefix or key_regexp is not defined"),
                                      ("config.yml.not_found", "cannot read")])
def test_rins_broken_configs_are_refused(name, why, tmp_path):
    """Rin's TestLoadConfigError: these must fail (and say why), in check-config and import."""
    p = run([rin_ship_bin(), "check-config", "--import", "-c", RIN / name], cwd=tmp_path)
    assert p.returncode == 1 and why in p.stderr, p.stderr
    p = run([rin_ship_bin(), "import", "-config", RIN / name, "-dry-run"], cwd=tmp_path)
    assert p.returncode == 1 and why in p.stderr, p.stderr


def test_check_config_import_flag_and_serve_configs(tmp_path):
    """--import takes RIN_CONFIG like import; serve's own configs are still serve's."""
    p = run([rin_ship_bin(), "check-config", "--import"],
            env=dict(RIN_ENV, RIN_CONFIG=str(RIN / "config.yml")), cwd=tmp_path)
    assert p.returncode == 0 and "import config ok: 5 target(s)" in p.stdout, p.stderr
    p = run([rin_ship_bin(), "check-config", "-c", ROOT / "examples" / "rin-ship-s3.yaml"])
    assert p.returncode == 0 and p.stdout.startswith("config ok:"), p.stderr
    # A must_env that is not set fails, naming it (as import would).
    env = {k: v for k, v in os.environ.items() if k != "AWS_SECRET_ACCESS_KEY"}
    p = subprocess.run([str(rin_ship_bin()), "check-config", "-c", str(RIN / "config.yml")],
                       env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "AWS_SECRET_ACCESS_KEY" in p.stderr, p.stderr


YAML_WITH_ANCHORS = """\
# Rin ignores keys it does not know; YAML anchors live under x- keys.
x-connection: &conn
  host: 127.0.0.1
  port: {port}
  dbname: {db}
  user: postgres
  password: ""
queue_name: {queue}
credentials: {{aws_access_key_id: x, aws_secret_access_key: y, aws_region: us-east-1}}
redshift:
  <<: *conn
  schema: public
  owner: data-team          # not a Rin key
s3: {{bucket: {bucket}, region: us-east-1}}
sql_option: "JSON 'auto' GZIP"
targets:
  - redshift: {{<<: *conn, table: logs}}
    s3: {{key_prefix: incoming/}}
    description: the access logs
rin_ship: {ext}
"""


def test_unknown_keys_and_anchors_load(moto_server, bucket, pgdb, tmp_path):
    """A config with YAML anchors under x- keys, merge keys and keys Rin does not know loads
    (a warning names each unknown key); rin_ship: keys stay strict."""
    q, url = make_queue(moto_server)
    notify(moto_server, bucket, url)
    pgdb.sql(TABLE)
    ext = rin_config(moto_server, pgdb, q, bucket, TARGETS)["rin_ship"]
    text = YAML_WITH_ANCHORS.format(port=pgdb.port, db=pgdb.name, queue=q, bucket=bucket,
                                    ext=json.dumps(ext))
    imp = Importer(tmp_path, {})
    imp.config_path.write_text(text)
    put(moto_server, bucket, "incoming/a.json.gz", [{"i": 1}, {"i": 2}, {"i": 3}])
    p = imp.run("-batch")
    assert summary(p)["loaded_rows"] == 3 and pgdb.count("logs") == 3
    for key in ("redshift.owner", "targets[0].description"):
        assert f"unknown key `{key}` ignored" in p.stderr, p.stderr
    assert "x-connection" not in p.stderr
    strict = tmp_path / "strict.yaml"
    strict.write_text(text.replace('"warehouse"', '"warehose"'))
    p = run([rin_ship_bin(), "check-config", "-c", strict])
    assert p.returncode == 1 and "warehose" in p.stderr, p.stderr


def test_lambda_config_without_queue_name(moto_server, bucket, pgdb, tmp_path):
    """Rin requires queue_name only outside Lambda: the handler loads with a config without
    one, `import` polling SQS says what is missing."""
    require_lambda_build()
    runtime = FakeRuntime()
    try:
        pgdb.sql(TABLE)
        cfg = rin_config(moto_server, pgdb, "unused", bucket, TARGETS)
        del cfg["queue_name"]
        imp = Importer(tmp_path, cfg)
        p = imp.run("-batch", check=False)
        assert p.returncode == 1 and "queue_name required" in p.stderr, p.stderr
        etag = put(moto_server, bucket, "incoming/l.json.gz", [{"i": 1}, {"i": 2}])
        body = json.dumps({"Records": [s3_event(bucket, "incoming/l.json.gz", etag)]})
        rid = runtime.invoke([sqs_record("m1", body)])
        env = dict(imp.env, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{runtime.port}",
                   AWS_LAMBDA_FUNCTION_NAME="rin", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="512",
                   AWS_LAMBDA_FUNCTION_VERSION="$LATEST")
        proc = subprocess.Popen([str(rin_ship_bin()), "import", "-config", str(imp.config_path)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            wait_for(lambda: rid in runtime.responses or proc.poll() is not None, 60,
                     "the invocation's response")
            assert runtime.responses.get(rid) == {"batchItemFailures": []}, runtime.responses
            assert pgdb.count("logs") == 2
        finally:
            proc.kill()
            proc.wait(10)
    finally:
        runtime.close()


@pytest.mark.parametrize("var", ["RIN_DRY_RUN", "RIN_BATCH"])
def test_lambda_bootstrap_refuses_dry_run_and_batch_mode(moto_server, bucket, pgdb, tmp_path,
                                                          var):
    """Under Lambda (`bootstrap`, config from RIN_CONFIG), RIN_DRY_RUN=true lists the targets
    and does not start the handler; RIN_BATCH=true (Rin's Lambda batch mode) is refused with
    what to do. Neither answers an invocation, so no message is taken as done."""
    require_lambda_build()
    runtime = FakeRuntime()
    try:
        pgdb.sql(TABLE)
        imp = Importer(tmp_path, rin_config(moto_server, pgdb, "q", bucket, TARGETS))
        boot = tmp_path / "pkg" / "bootstrap"
        boot.parent.mkdir()
        os.symlink(rin_ship_bin(), boot)
        etag = put(moto_server, bucket, "incoming/d.json.gz", [{"i": 1}])
        body = json.dumps({"Records": [s3_event(bucket, "incoming/d.json.gz", etag)]})
        rid = runtime.invoke([sqs_record("m1", body)])
        env = dict(imp.env, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{runtime.port}",
                   AWS_LAMBDA_FUNCTION_NAME="rin", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="512",
                   AWS_LAMBDA_FUNCTION_VERSION="$LATEST", RIN_CONFIG=str(imp.config_path))
        env[var] = "true"
        p = subprocess.run([str(boot)], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 1, p.stderr
        assert len(runtime.init_errors) == 1, runtime.init_errors
        assert var in runtime.init_errors[0]["errorMessage"]
        if var == "RIN_DRY_RUN":
            assert "target 0: s3://%s/incoming/" % bucket in p.stdout, p.stdout
        else:
            assert "event source mapping" in p.stderr, p.stderr
        assert rid not in runtime.responses and pgdb.count("logs") == 0
    finally:
        runtime.close()


@pytest.mark.parametrize("reconnect", [True, False])
def test_reconnect_on_error(moto_server, bucket, pgdb, tmp_path, reconnect):
    """`reconnect_on_error: true` (Rin) drops the connection after a failed import; the next
    load runs on a new one. Without it the session is kept. The table's DEFAULT
    pg_backend_pid() records which session wrote each row."""
    q, url = make_queue(moto_server)
    notify(moto_server, bucket, url)
    pgdb.sql("CREATE TABLE logs (i bigint, pid int DEFAULT pg_backend_pid())")
    targets = [{"redshift": {"table": "$1"}, "s3": {"key_regexp": "^in/([a-z]+)/"}}]
    cfg = rin_config(moto_server, pgdb, q, bucket, targets)
    cfg["redshift"]["reconnect_on_error"] = reconnect
    imp = Importer(tmp_path, cfg)
    proc = imp.start()
    try:
        put(moto_server, bucket, "in/logs/a.json.gz", [{"i": 1}])
        wait_for(lambda: pgdb.count("logs") == 1, 30, "the first row")
        put(moto_server, bucket, "in/missing/b.json.gz", [{"i": 2}])
        wait_for(lambda: "load failed" in imp.stderr(), 30, "the failed load")
        put(moto_server, bucket, "in/logs/c.json.gz", [{"i": 3}])
        wait_for(lambda: pgdb.count("logs") == 2, 30, "the second row")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    pids = dict(pgdb.sql("SELECT i, pid FROM logs"))
    err = imp.stderr()
    if reconnect:
        assert pids["1"] != pids["3"], pids
        assert "reconnect_on_error: closing the connection" in err, err[-3000:]
    else:
        assert pids["1"] == pids["3"], pids
        assert "reconnect_on_error" not in err


def test_empty_password_logs_in_with_cluster_credentials(moto_server, bucket, pgdb, tmp_path):
    """Rin: an empty redshift.password means GetClusterCredentials, for the cluster named by the
    first DNS label of host, as DbUser = user. moto answers the API (as `IAM:<user>`); the
    PostgreSQL server stands in for the cluster's endpoint, so the login is real: the ledger
    is created by `IAM:<user>`. (The COPY itself is Redshift's and fails there: nothing loads.)"""
    import boto3

    user = "u" + uuid.uuid4().hex[:8]
    rs = boto3.client("redshift", endpoint_url=moto_server.endpoint, region_name="us-east-1",
                      aws_access_key_id="x", aws_secret_access_key="y")
    try:
        rs.create_cluster(ClusterIdentifier="localhost", NodeType="dc2.large",
                          MasterUsername="admin", MasterUserPassword="Passw0rd!")
    except rs.exceptions.ClusterAlreadyExistsFault:
        pass
    pgdb.sql(f'CREATE ROLE "IAM:{user}" LOGIN')
    pgdb.sql(f'GRANT ALL ON SCHEMA public TO "IAM:{user}"')
    pgdb.sql(TABLE)
    q, url = make_queue(moto_server)
    notify(moto_server, bucket, url)
    cfg = rin_config(moto_server, pgdb, q, bucket, TARGETS, warehouse="redshift")
    cfg["redshift"].update(host="localhost", user=user, password="")
    imp = Importer(tmp_path, cfg, env={"AWS_ENDPOINT_URL_REDSHIFT": moto_server.endpoint,
                                       "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"})
    p = imp.run("--dry-run")
    assert f"{user}:(iam cluster(localhost))@localhost:" in p.stdout, p.stdout
    put(moto_server, bucket, "incoming/a.json.gz", [{"i": 1}])
    p = imp.run("-batch", check=False)
    err = p.stderr
    assert f"GetClusterCredentials cluster localhost user {user} database {pgdb.name}" in err, (
        err[-4000:])
    assert pgdb.sql("SELECT tableowner FROM pg_tables WHERE tablename = 'rin_ship_ledger'") == [
        [f"IAM:{user}"]]
    assert pgdb.count("logs") == 0 and pgdb.count("rin_ship_ledger") == 0
    assert "COPY" in err and queue_depth(moto_server, url) >= 1  # left for redelivery


def test_driver_override_and_workgroup_user(tmp_path):
    """A redshift-data target under a wire-protocol top level (inheriting host and password the
    Data API does not use) and a workgroup with a user load (the user with a warning), and the
    dry run shows the Data API batch."""
    cfg = {
        "queue_name": "q",
        "credentials": {"aws_region": "ap-northeast-1",
                        "aws_iam_role": "arn:aws:iam::123456789012:role/rin"},
        "redshift": {"driver": "postgres", "host": "rs.example.com", "port": 5439,
                     "dbname": "dev", "user": "loader", "password": "TOP-PW-SECRET"},
        "s3": {"bucket": "b", "region": "ap-northeast-1"},
        "sql_option": "JSON 'auto' GZIP",
        "targets": [
            {"redshift": {"driver": "redshift-data", "cluster": "c1", "table": "a"},
             "s3": {"key_prefix": "a/"}},
            {"redshift": {"driver": "redshift-data", "workgroup": "wg", "table": "b"},
             "s3": {"key_prefix": "b/"}},
            {"redshift": {"table": "c"}, "s3": {"key_prefix": "c/"}},
        ],
    }
    path = tmp_path / "rin.yaml"
    path.write_text(json.dumps(cfg))
    p = run([rin_ship_bin(), "check-config", "-c", path])
    assert p.returncode == 0, p.stderr
    assert "target 0: s3://b/a/ => redshift-data://loader@cluster(c1)/dev/a" in p.stdout
    assert "target 2: s3://b/c/ => loader:****@rs.example.com:5439/dev/c" in p.stdout
    assert "warning" not in p.stdout, "inherited settings are not the target's mistake"
    cfg["redshift"]["driver"] = "redshift-data"
    cfg["redshift"].update(workgroup="wg0", password="")
    del cfg["redshift"]["host"]
    cfg["targets"] = cfg["targets"][1:2]
    path.write_text(json.dumps(cfg))
    p = run([rin_ship_bin(), "import", "-config", path, "-dry-run", "b/x.json.gz"])
    assert p.returncode == 0, p.stderr
    assert 'redshift.user "loader" is not used with a workgroup' in p.stderr, p.stderr
    out = p.stdout
    assert "redshift-data://@workgroup(wg)/dev" in out, out
    i = out.index("BatchExecuteStatement")
    assert re.search(r'LOCK "public"."rin_ship_ledger"\n.*SELECT 1 / \(CASE', out[i:]), out
    assert "IAM_ROLE" in out or "aws_iam_role=" in out
    assert "TOP-PW-SECRET" not in out + p.stderr


# ---------------------------------------------------------------------------------------------
# the dry run shows the whole transaction
# ---------------------------------------------------------------------------------------------


def test_dry_run_statements_are_the_ones_postgres_runs(moto_server, bucket, pgdb, pg_server,
                                                       tmp_path):
    """`--dry-run KEY` shows START TRANSACTION, the ledger's LOCK and lookup, the load, the ledger INSERT and
    COMMIT in order; each shown statement is then found, verbatim, in PostgreSQL's statement
    log of the real load of that key (nothing is shown that does not run)."""
    q, url, imp = setup_import(moto_server, pgdb, bucket, tmp_path)
    key = "incoming/t x.json.gz"
    p = imp.run("--dry-run", key)
    shown = [ln[2:] for ln in p.stdout.splitlines() if ln.startswith("  ")]
    order = ["START TRANSACTION", "SELECT pg_advisory_xact_lock(", "SELECT 1 FROM", "CREATE TEMP TABLE",
             "COPY \"public\".\"logs\" (", "INSERT INTO \"public\".\"rin_ship_ledger\"", "COMMIT"]
    at = [next(i for i, s in enumerate(shown) if s.startswith(o)) for o in order]
    assert at == sorted(at), shown
    assert f"$2 = '{key}'" in shown[at[2]]
    pgdb.sql(f"ALTER DATABASE {pgdb.name} SET log_statement = 'all'")
    log = Path(pg_server.dir) / "log"
    start = log.stat().st_size
    put(moto_server, bucket, key, [{"i": 1}])
    p = imp.run("-batch")
    assert summary(p)["loaded_rows"] == 1
    text = log.read_text(errors="replace")[start:]
    for s in shown:
        s = s.split("  -- ")[0].removeprefix("-- once per connection, before the first load: ")
        s = s.removeprefix("-- once per connection, when the ledger is missing: ")
        if "<" in s or s.startswith("--"):
            continue  # a schematic line: the columns are the table's
        assert s in text, f"shown but not run: {s}\n{text[-3000:]}"


def test_dry_run_of_rins_configs_masks_secrets(tmp_path):
    """Rin's config.yml (access keys in the COPY) and config.redshift-data.yml: the whole
    transaction, with the secret key and the password masked."""
    p = run([rin_ship_bin(), "import", "-config", RIN / "config.yml", "-dry-run",
             "test/foo/xxx.json", "test/foo/discard/xxx.json", "s3://example.bucket/test/s1/t256/aaa.json"],
            env=RIN_ENV, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "SSS" not in out + p.stderr and "test_pass" not in out + p.stderr
    assert "CREDENTIALS 'aws_access_key_id=AAA;aws_secret_access_key=****'" in out, out
    assert 's3://test.bucket.test/test/foo/xxx.json => target 1 "foo"' in out
    assert "s3://test.bucket.test/test/foo/discard/xxx.json => discarded" in out
    assert 'aaa.json => target 4 "s1"."t256"' in out
    for s in ('LOCK "public"."rin_ship_ledger"', "SELECT pg_last_copy_count()",
              'INSERT INTO "public"."rin_ship_ledger"', "COMMIT"):
        assert s in out, s
    p = run([rin_ship_bin(), "import", "-config", RIN / "config.redshift-data.yml", "-dry-run",
             "test/foo/a.json"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "BatchExecuteStatement" in p.stdout and "aws_iam_role=" in p.stdout, p.stdout


# ---------------------------------------------------------------------------------------------
# Rin's SQS messages
# ---------------------------------------------------------------------------------------------


def test_rins_test_messages_with_rins_config(moto_server, pgdb, tmp_path):
    """Rin's own SQS test messages (S3 test event, SNS-wrapped test event, a plain event, an
    SNS-wrapped event) against Rin's test/config.yml, its connection, queue and region pointed
    at the test services: the test events are deleted, the unmatched key is deleted, the SNS-wrapped event
    loads into Rin's `foo` table. Only the SNS event's eTag is replaced, by the ETag of the
    object put for it."""
    cfg = yaml.safe_load((RIN / "config.yml").read_text())
    bucket = cfg["s3"]["bucket"]
    try:
        moto_server.client().create_bucket(Bucket=bucket)
    except Exception:  # noqa: BLE001 - already there from an earlier run on this server
        pass
    q, url = make_queue(moto_server)
    cfg["queue_name"] = q
    cfg["credentials"]["aws_region"] = "us-east-1"  # where the test queue is
    cfg["redshift"].update(host="127.0.0.1", port=pgdb.port, dbname=pgdb.name, user="postgres",
                           password="")
    cfg["rin_ship"] = rin_config(moto_server, pgdb, q, bucket, [])["rin_ship"]
    pgdb.sql("CREATE TABLE foo (i bigint)")
    imp = Importer(tmp_path, {}, env=RIN_ENV)
    # YAML, as Rin's file is: its `{{ must_env ... }}` stays in single quotes.
    imp.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    etag = put(moto_server, bucket, "test/foo/bar.json", [{"i": 7}])
    notification = json.loads((RIN / "notification.json").read_text())
    inner = json.loads(notification["Message"])
    inner["Records"][0]["s3"]["object"]["eTag"] = etag
    notification["Message"] = json.dumps(inner)
    for name in ("testevent.json", "testeventsns.json", "event.json"):
        send_body(moto_server, url, (RIN / name).read_text())
    send_body(moto_server, url, json.dumps(notification))
    s = imp.batch()
    assert s["messages"] == 4 and s["test_events"] == 2, s
    assert s["loaded_objects"] == 1 and s["deleted"] == 4, s
    assert pgdb.sql("SELECT i FROM foo") == [["7"]]
    assert queue_depth(moto_server, url) == 0


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------

RIN_KEYS = [
    "queue_name", "credentials.aws_access_key_id", "credentials.aws_secret_access_key",
    "credentials.aws_region", "credentials.aws_iam_role", "redshift.driver", "redshift.host",
    "redshift.port", "redshift.dbname", "redshift.user", "redshift.password", "redshift.schema",
    "redshift.table", "redshift.cluster", "redshift.workgroup", "redshift.reconnect_on_error",
    "s3.bucket", "s3.region", "s3.key_prefix", "s3.key_regexp", "sql_option",
    "targets[].redshift", "targets[].s3", "targets[].sql_option", "targets[].discard",
    "targets[].break",
]
RIN_FLAGS = ["-config", "-c", "-debug", "-d", "-batch", "-b", "-version", "-v",
             "-max-execution-time", "-dry-run"]
RIN_VARS = ["RIN_CONFIG", "RIN_DEBUG", "RIN_BATCH", "RIN_MAX_EXECUTION_TIME", "RIN_DRY_RUN"]


def test_compatibility_table_is_complete():
    """docs/rin-compatibility.md has a row for every Rin key, flag and variable, and every test
    it cites exists."""
    doc = DOC.read_text()
    rows = [ln for ln in doc.splitlines() if ln.startswith("| ")]
    firsts = {ln.split("|")[1].strip() for ln in rows}
    for name in RIN_KEYS + RIN_FLAGS + RIN_VARS:
        assert f"`{name}`" in firsts, f"no row for {name} in {DOC}"
    known = set()
    for f in (ROOT / "tests").glob("test_*.py"):
        known |= set(re.findall(r"^def (test_\w+)", f.read_text(), re.M))
    for f in (ROOT / "src").rglob("*.rs"):
        known |= set(re.findall(r"fn (\w+)\(\)", f.read_text()))
    cited = set(re.findall(r"\.(?:py|rs)::(\w+)", doc))
    assert cited, "the table cites no test"
    missing = sorted(c for c in cited if c not in known)
    assert not missing, f"{DOC} cites tests that do not exist: {missing}"
