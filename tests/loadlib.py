"""Helpers and fixtures for the COPY-stage tests (`rin-ship import`): a real PostgreSQL 15
server started for the session, SQS queues and bucket notifications on the moto server.

Import the fixtures into a test module with `from loadlib import *  # noqa`.
Everything talks to 127.0.0.1 only."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from rinlib import free_port, rin_ship_bin

PG_BIN = Path(os.environ.get("RIN_SHIP_PG_BIN", "/usr/lib/postgresql/15/bin"))


class Postgres:
    """A throw-away PostgreSQL server (trust auth, fsync off) on 127.0.0.1."""

    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.port = free_port()
        self.as_root = os.geteuid() == 0

    def _run(self, args, **kw):
        if self.as_root:
            args = ["runuser", "-u", "postgres", "--"] + args
        p = subprocess.run(args, capture_output=True, text=True, **kw)
        if p.returncode != 0:
            raise AssertionError(f"{args} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    def start(self):
        assert (PG_BIN / "initdb").exists(), (
            f"PostgreSQL server binaries missing in {PG_BIN}: "
            "install them with `apt-get install -y postgresql-15`")
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run([str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres",
                   "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"])
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-l",
                   str(self.dir / "log"), "-w", "start", "-o",
                   f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c max_connections=200"])
        return self

    def stop(self):
        try:
            self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate",
                       "stop"])
        except AssertionError:
            pass

    def psql(self, sql: str, db: str = "postgres") -> list[list[str]]:
        out = subprocess.run(
            [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-F", "\t", "-c", sql],
            check=True, capture_output=True, text=True)
        return [ln.split("\t") for ln in out.stdout.splitlines() if ln != ""]

    def create_db(self) -> str:
        name = "t_" + uuid.uuid4().hex[:10]
        self.psql(f"CREATE DATABASE {name}")
        return name


@pytest.fixture(scope="session")
def pg_server():
    # Not under pytest's tmp dir: that is private to root, and the server runs as `postgres`.
    d = tempfile.mkdtemp(prefix="rin-ship-pg-")
    os.chmod(d, 0o755)
    p = Postgres(Path(d) / "pg")
    p.start()
    yield p
    p.stop()
    shutil.rmtree(d, ignore_errors=True)


class PgDb:
    def __init__(self, server: Postgres, name: str):
        self.server, self.name = server, name

    def sql(self, s: str) -> list[list[str]]:
        return self.server.psql(s, self.name)

    def count(self, table: str) -> int:
        return int(self.sql(f"SELECT count(*) FROM {table}")[0][0])

    @property
    def port(self):
        return self.server.port


@pytest.fixture
def pgdb(pg_server):
    return PgDb(pg_server, pg_server.create_db())


# ---------------------------------------------------------------------------------------------
# SQS + notifications on moto
# ---------------------------------------------------------------------------------------------


def sqs_client(moto):
    import boto3

    return boto3.client("sqs", endpoint_url=moto.endpoint, region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="y")


def make_queue(moto, name=None, visibility=3) -> tuple[str, str]:
    name = name or ("q-" + uuid.uuid4().hex[:10])
    url = sqs_client(moto).create_queue(
        QueueName=name, Attributes={"VisibilityTimeout": str(visibility)})["QueueUrl"]
    return name, url


def notify(moto, bucket, queue_url, prefix=""):
    """A real bucket notification (moto sends s3:TestEvent first)."""
    sqs = sqs_client(moto)
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    cfg = {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}
    if prefix:
        cfg["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}
    moto.client().put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [cfg]})


def queue_depth(moto, url) -> int:
    a = sqs_client(moto).get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                      "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


def drain_bodies(moto, url, wait=1) -> list[str]:
    """Receive and delete every message; returns the bodies."""
    sqs = sqs_client(moto)
    out = []
    while True:
        r = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait)
        msgs = r.get("Messages", [])
        if not msgs:
            return out
        for m in msgs:
            out.append(m["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def send_body(moto, url, body: str):
    sqs_client(moto).send_message(QueueUrl=url, MessageBody=body)


def ndjson_gz(records: list[dict]) -> bytes:
    return gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode(), mtime=0)


def s3_event(bucket, key_encoded, etag="", name="ObjectCreated:Put") -> dict:
    obj = {"key": key_encoded, "size": 1}
    if etag:
        obj["eTag"] = etag
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": "2024-05-01T00:00:00.000Z", "eventName": name,
            "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket}, "object": obj}}


# ---------------------------------------------------------------------------------------------
# the importer
# ---------------------------------------------------------------------------------------------


def rin_config(moto, pgdb, queue, bucket, targets, **ext) -> dict:
    """A Rin config (plus `rin_ship:`) loading into the test database."""
    rs = {"warehouse": "postgres", "s3_endpoint": moto.endpoint, "sqs_endpoint": moto.endpoint,
          "force_path_style": True, "sslmode": "disable", "wait_time_seconds": 1,
          "visibility_timeout_seconds": 3}
    rs.update(ext)
    return {
        "queue_name": queue,
        "credentials": {"aws_access_key_id": "x", "aws_secret_access_key": "y",
                        "aws_region": "us-east-1"},
        "redshift": {"host": "127.0.0.1", "port": pgdb.port, "dbname": pgdb.name,
                     "user": "postgres", "password": "", "schema": "public"},
        "s3": {"bucket": bucket, "region": "us-east-1"},
        "sql_option": "JSON 'auto' GZIP",
        "targets": targets,
        "rin_ship": rs,
    }


class Importer:
    def __init__(self, workdir: Path, config: dict, name="imp", env=None):
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "rin.yaml"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.env = dict(os.environ)
        self.env.setdefault("RIN_SHIP_LOG", "info")
        if env:
            self.env.update(env)
        self.n = 0
        self.proc = None

    def cmd(self, *extra):
        return [str(rin_ship_bin()), "import", "--config", str(self.config_path), *extra]

    def run(self, *extra, timeout=60, check=True) -> subprocess.CompletedProcess:
        self.n += 1
        p = subprocess.run(self.cmd(*extra), env=self.env, capture_output=True, text=True,
                           timeout=timeout, cwd=self.dir)
        (self.dir / f"stderr.{self.n}.log").write_text(p.stderr)
        if check:
            assert p.returncode == 0, f"import exited {p.returncode}:\n{p.stderr[-6000:]}"
        return p

    def batch(self, *extra, timeout=60, check=True) -> dict:
        p = self.run("--batch", *extra, timeout=timeout, check=check)
        return summary(p)

    def start(self, *extra):
        self.n += 1
        self._err = open(self.dir / f"stderr.{self.n}.log", "w")
        self.proc = subprocess.Popen(self.cmd(*extra), env=self.env, stdout=subprocess.PIPE,
                                     stderr=self._err, text=True, cwd=self.dir)
        return self.proc

    def stderr(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.dir.glob("stderr.*.log")))


def summary(p) -> dict:
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no summary on stdout:\n{p.stdout}\n{p.stderr[-4000:]}"
    return json.loads(lines[-1])


def wait_for(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
