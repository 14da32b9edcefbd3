"""`rin-ship import` operations: the config fetched from an http(s):// or s3:// URL (Rin's
`-config`), Rin's single-dash flags and `-debug`, and the `/metrics` endpoint while importing."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loadlib import (Importer, make_queue, ndjson_gz, notify, pg_server,  # noqa: F401
                     pgdb, queue_depth, rin_config, summary, wait_for)
from rinlib import free_port, rin_ship_bin

pytestmark = pytest.mark.timeout(180)

TARGETS = [{"redshift": {"table": "logs"}, "s3": {"key_prefix": "incoming/"}}]


class ConfigServer:
    """A local HTTP server: GET <path> answers the text registered for it, else 404. Remembers
    the request targets it saw."""

    def __init__(self):
        self.files: dict[str, str] = {}
        self.seen: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.seen.append(self.path)
                body = outer.files.get(self.path.split("?", 1)[0])
                data = (body if body is not None else "not found\n").encode()
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/yaml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def config_server():
    s = ConfigServer()
    yield s
    s.close()


class ImporterAt(Importer):
    """An importer whose config is given as `location` (a URL), with Rin's flag spelling."""

    def __init__(self, workdir, location: str, name="imp", env=None, flag="-config"):
        super().__init__(workdir, {}, name=name, env=env)
        self.location, self.flag = location, flag

    def cmd(self, *extra):
        return [str(rin_ship_bin()), "import", self.flag, self.location, *extra]


def aws_env(moto, **extra) -> dict:
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    env.update(extra)
    return env


def test_config_over_http_dry_run(moto_server, bucket, pgdb, tmp_path, config_server):
    cfg = rin_config(moto_server, pgdb, "q", bucket, TARGETS)
    config_server.files["/conf/rin.yaml"] = json.dumps(cfg, indent=2)
    # A presigned-style query string is sent as is.
    url = config_server.url("/conf/rin.yaml?X-Amz-Signature=SECRETSIG&x=1")
    imp = ImporterAt(tmp_path, url)
    p = imp.run("-dry-run", "incoming/a.json.gz")
    assert f"s3://{bucket}/incoming/a.json.gz => target 0 \"public\".\"logs\"" in p.stdout, (
        p.stdout + p.stderr)
    assert config_server.seen == ["/conf/rin.yaml?X-Amz-Signature=SECRETSIG&x=1"]
    assert "SECRETSIG" not in p.stdout + p.stderr
    # The long form and RIN_CONFIG work too.
    imp2 = ImporterAt(tmp_path, url, name="imp2", flag="--config")
    assert "=> target 0" in imp2.run("--dry-run", "incoming/b").stdout
    p = subprocess.run([str(rin_ship_bin()), "import", "--dry-run", "incoming/c"],
                       env={**os.environ, "RIN_CONFIG": url}, capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert p.returncode == 0 and "=> target 0" in p.stdout, p.stderr


def test_config_url_errors_hide_the_query(moto_server, bucket, pgdb, tmp_path, config_server):
    url = config_server.url("/missing.yaml?X-Amz-Credential=AKIA&X-Amz-Signature=SECRETSIG")
    p = ImporterAt(tmp_path, url).run("-dry-run", "k", check=False)
    assert p.returncode != 0
    assert f"http://127.0.0.1:{config_server.port}/missing.yaml" in p.stderr, p.stderr
    assert "404" in p.stderr, p.stderr
    assert "SECRETSIG" not in p.stderr and "AKIA" not in p.stderr and "?" not in p.stderr, (
        p.stderr)
    # An invalid config names where it came from, still without the query.
    config_server.files["/bad.yaml"] = "queue_name: q\nbogus: 1\n"
    p = ImporterAt(tmp_path, config_server.url("/bad.yaml?sig=SECRETSIG"), name="bad").run(
        "-dry-run", "k", check=False)
    assert p.returncode != 0
    assert "invalid Rin config" in p.stderr and "/bad.yaml" in p.stderr, p.stderr
    assert "SECRETSIG" not in p.stderr, p.stderr


@pytest.mark.parametrize("endpoint_var", ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])
def test_config_from_s3_dry_run(moto_server, bucket, pgdb, tmp_path, endpoint_var):
    """s3://bucket/key through the default credential chain; the SDK itself reads the endpoint
    override (the config's own rin_ship.s3_endpoint cannot be known before it is read)."""
    cfg = rin_config(moto_server, pgdb, "q", bucket, TARGETS)
    moto_server.client().put_object(Bucket=bucket, Key="conf/rin config.yaml",
                                    Body=json.dumps(cfg).encode())
    env = aws_env(moto_server, **{endpoint_var: moto_server.endpoint})
    imp = ImporterAt(tmp_path, f"s3://{bucket}/conf/rin config.yaml", env=env)
    p = imp.run("-dry-run", "incoming/a.json.gz")
    assert f"s3://{bucket}/incoming/a.json.gz => target 0 \"public\".\"logs\"" in p.stdout, (
        p.stdout + p.stderr)
    # A missing key is an error naming the object.
    p = ImporterAt(tmp_path, f"s3://{bucket}/conf/nope.yaml", name="nope", env=env).run(
        "-dry-run", "k", check=False)
    assert p.returncode != 0 and f"s3://{bucket}/conf/nope.yaml" in p.stderr, p.stderr
    assert "NoSuchKey" in p.stderr, p.stderr


def test_rin_flags_import_from_http_config(moto_server, bucket, pgdb, tmp_path, config_server):
    """`rin-ship import -config URL -batch -debug -max-execution-time 1m`, as Rin is run."""
    q, url = make_queue(moto_server)
    notify(moto_server, bucket, url)
    pgdb.sql("CREATE TABLE logs (time timestamptz, i bigint, path text, status int)")
    config_server.files["/rin.yaml"] = json.dumps(rin_config(moto_server, pgdb, q, bucket,
                                                              TARGETS))
    moto_server.client().put_object(Bucket=bucket, Key="incoming/a.json.gz",
                                    Body=ndjson_gz([{"i": 1}, {"i": 2}]))
    imp = ImporterAt(tmp_path, config_server.url("/rin.yaml"))
    p = imp.run("-batch", "-debug", "-max-execution-time", "1m")
    s = summary(p)
    assert s["loaded_objects"] == 1 and s["loaded_rows"] == 2, s
    assert pgdb.count("logs") == 2
    assert " DEBUG " in p.stderr, p.stderr[-3000:]
    # Without -debug (and RIN_SHIP_LOG=info), no debug lines; RIN_DEBUG=1 turns them on.
    moto_server.client().put_object(Bucket=bucket, Key="incoming/b.json.gz",
                                    Body=ndjson_gz([{"i": 3}]))
    p = imp.run("-batch=true")
    assert summary(p)["loaded_objects"] == 1 and " DEBUG " not in p.stderr, p.stderr[-3000:]
    moto_server.client().put_object(Bucket=bucket, Key="incoming/c.json.gz",
                                    Body=ndjson_gz([{"i": 4}]))
    imp.env["RIN_DEBUG"] = "1"
    p = imp.run("-batch")
    assert summary(p)["loaded_objects"] == 1 and " DEBUG " in p.stderr, p.stderr[-3000:]
    assert pgdb.count("logs") == 4
    assert queue_depth(moto_server, url) == 0


def metrics_text(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


def test_metrics_endpoint_while_importing(moto_server, bucket, pgdb, tmp_path):
    q, url = make_queue(moto_server)
    notify(moto_server, bucket, url)
    pgdb.sql("CREATE TABLE logs (time timestamptz, i bigint, path text, status int)")
    port = free_port()
    imp = Importer(tmp_path, rin_config(moto_server, pgdb, q, bucket, TARGETS,
                                        metrics_bind=f"127.0.0.1:{port}"))
    moto_server.client().put_object(Bucket=bucket, Key="incoming/m.json.gz",
                                    Body=gzip.compress(b'{"i": 1}\n{"i": 2}\n', mtime=0))
    p = imp.start()  # daemon mode
    try:
        wait_for(lambda: 'rin_import_records_total{outcome="loaded"} 1' in metrics_text(port)
                 or p.poll() is not None, 30, "the loaded-records counter on /metrics")
        assert p.poll() is None, imp.stderr()[-4000:]
        text = metrics_text(port)
        assert 'rin_import_records_total{outcome="loaded"} 1' in text, text
        assert pgdb.count("logs") == 2
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, imp.stderr()[-4000:]
    s = json.loads(out.strip().splitlines()[-1])
    assert s["loaded_objects"] == 1 and s["test_events"] == 1, s
    assert queue_depth(moto_server, url) == 0
