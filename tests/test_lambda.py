"""`rin-ship import` as an AWS Lambda function for SQS events (needs a build with
`--features lambda`), against a fake Lambda Runtime API, moto S3 and a real PostgreSQL."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loadlib import (Importer, ndjson_gz, pg_server, pgdb, rin_config, s3_event,  # noqa: F401
                     wait_for)
from rinlib import rin_ship_bin

pytestmark = pytest.mark.timeout(180)

API = "/2018-06-01/runtime"


class FakeRuntime:
    """The Lambda Runtime API: hands out the queued invocations on GET .../invocation/next (a
    /next with nothing queued is held until `close`), records what the function posts back."""

    def __init__(self):
        self.events: list[tuple[str, dict]] = []
        self.cond = threading.Condition()
        self.responses: dict[str, object] = {}
        self.errors: dict[str, object] = {}
        self.init_errors: list[dict] = []
        self.served: dict[str, float] = {}
        self.waiting = 0  # /next calls being held
        self.closed = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        n = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if n == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(n)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _client_gone(self) -> bool:
                readable, _, _ = select.select([self.connection], [], [], 0)
                try:
                    return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    return True

            def _send(self, code, body=b"", headers=()):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path != f"{API}/invocation/next":
                    return self._send(404)
                with fake.cond:
                    fake.waiting += 1
                    try:
                        while True:
                            # A killed runtime's held /next must not take the next process's
                            # event: checked under the lock, right before taking one.
                            if self._client_gone():
                                return
                            if fake.closed.is_set():
                                return self._send(500, b'{"errorMessage":"closed"}')
                            if fake.events:
                                rid, payload = fake.events.pop(0)
                                break
                            fake.cond.wait(0.1)
                    finally:
                        fake.waiting -= 1
                fake.served[rid] = time.time()
                deadline = int((time.time() + 60) * 1000)
                self._send(200, json.dumps(payload).encode(), [
                    ("Content-Type", "application/json"),
                    ("Lambda-Runtime-Aws-Request-Id", rid),
                    ("Lambda-Runtime-Deadline-Ms", str(deadline)),
                    ("Lambda-Runtime-Invoked-Function-Arn",
                     "arn:aws:lambda:us-east-1:123456789012:function:rin-ship"),
                    ("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000"),
                ])

            def do_POST(self):
                body = self._body()
                parts = self.path[len(API):].strip("/").split("/")
                try:
                    doc = json.loads(body) if body else None
                except ValueError:
                    doc = body.decode(errors="replace")
                if parts == ["init", "error"]:
                    fake.init_errors.append(doc)
                elif len(parts) == 3 and parts[0] == "invocation" and parts[2] == "response":
                    fake.responses[parts[1]] = doc
                elif len(parts) == 3 and parts[0] == "invocation" and parts[2] == "error":
                    fake.errors[parts[1]] = doc
                else:
                    return self._send(404)
                self._send(202, b'{"status":"OK"}')

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def invoke(self, records: list[dict]) -> str:
        rid = str(uuid.uuid4())
        with self.cond:
            self.events.append((rid, {"Records": records}))
            self.cond.notify_all()
        return rid

    def close(self):
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()


def sqs_record(message_id: str, body: str, receive_count: int = 1) -> dict:
    return {
        "messageId": message_id,
        "receiptHandle": f"handle-{message_id}",
        "body": body,
        "attributes": {"ApproximateReceiveCount": str(receive_count),
                       "SentTimestamp": "1714566896000", "SenderId": "AIDAEXAMPLE",
                       "ApproximateFirstReceiveTimestamp": "1714566896001"},
        "messageAttributes": {},
        "md5OfBody": "0" * 32,
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:rin-ship",
        "awsRegion": "us-east-1",
    }


@pytest.fixture
def runtime():
    f = FakeRuntime()
    yield f
    f.close()


def require_lambda_build():
    p = subprocess.run([str(rin_ship_bin()), "import", "--lambda", "--config", "/nonexistent"],
                       capture_output=True, text=True, timeout=30,
                       env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")})
    if "without the Lambda handler" in p.stderr:
        pytest.fail(f"{rin_ship_bin()} has no Lambda handler: build it with "
                    "`cargo build --features lambda`")


@pytest.fixture
def lambda_setup(moto_server, bucket, pgdb, tmp_path, runtime):
    require_lambda_build()
    pgdb.sql("CREATE TABLE logs (time timestamptz, i bigint, path text)")
    targets = [{"redshift": {"table": "logs"}, "s3": {"key_prefix": "incoming/"}}]
    cfg = rin_config(moto_server, pgdb, "unused-queue", bucket, targets)
    # Never to be printed (moto and trust-auth PostgreSQL accept anything).
    cfg["credentials"]["aws_secret_access_key"] = "TOPSECRET-aws"
    cfg["redshift"]["password"] = "PWSECRET-db"
    imp = Importer(tmp_path, cfg)
    imp.env.update({
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{runtime.port}",
        "AWS_LAMBDA_FUNCTION_NAME": "rin-ship",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/rin-ship",
        "AWS_LAMBDA_LOG_STREAM_NAME": "stream",
    })
    procs = []
    yield imp, procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def put_object(moto, bucket, key, records) -> str:
    moto.client().put_object(Bucket=bucket, Key=key, Body=ndjson_gz(records))
    return moto.client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


def start(imp, procs, cmd, env=None):
    imp.n += 1
    err = open(imp.dir / f"stderr.{imp.n}.log", "w")
    p = subprocess.Popen(cmd, env=env or imp.env, stdout=subprocess.PIPE, stderr=err, text=True,
                         cwd=imp.dir)
    procs.append(p)
    return p


def test_lambda_batch_item_failures(moto_server, bucket, pgdb, runtime, lambda_setup):
    imp, procs = lambda_setup
    etag = put_object(moto_server, bucket, "incoming/l 1.json.gz",
                      [{"i": i, "path": "/lambda"} for i in range(7)])
    good = json.dumps({"Records": [s3_event(bucket, "incoming/l+1.json.gz", etag)]})
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket})
    r1 = runtime.invoke([sqs_record("good-1", good), sqs_record("bad-1", "{not json"),
                         sqs_record("test-1", test_event)])
    r2 = runtime.invoke([sqs_record("good-1", good, receive_count=2)])  # redelivered

    p = start(imp, procs, imp.cmd())  # `import`, AWS_LAMBDA_RUNTIME_API set: the handler
    wait_for(lambda: len(runtime.responses) == 2 or p.poll() is not None, 60,
             "two invocation responses")
    assert p.poll() is None, imp.stderr()
    assert runtime.responses[r1] == {"batchItemFailures": [{"itemIdentifier": "bad-1"}]}
    assert runtime.responses[r2] == {"batchItemFailures": []}
    assert runtime.errors == {} and runtime.init_errors == []
    assert pgdb.count("logs") == 7
    assert pgdb.sql("SELECT count(DISTINCT i), min(path) FROM logs") == [["7", "/lambda"]]
    assert pgdb.sql("SELECT object_key, etag, row_count FROM rin_ship_ledger") == [
        ["incoming/l 1.json.gz", etag, "7"]]
    # The warehouse connection outlives an invocation: the one in use now was opened before
    # the second invocation was handed out.
    wait_for(lambda: runtime.waiting == 1, 10, "the third /next")
    conns = pgdb.sql("SELECT extract(epoch FROM backend_start) FROM pg_stat_activity "
                     f"WHERE datname = '{pgdb.name}' AND application_name = 'rin-ship'")
    assert len(conns) == 1, conns
    assert float(conns[0][0]) < runtime.served[r2], (conns, runtime.served)

    # The runtime loop waits on /next for good: the platform ends it.
    p.kill()
    p.wait(10)
    err = imp.stderr()
    assert "TOPSECRET" not in err and "PWSECRET" not in err
    assert "{not json" not in err  # bodies are not logged
    assert "malformed_json" in err and "bad-1" in err


def test_bootstrap_name_and_failure_modes(moto_server, bucket, pgdb, runtime, lambda_setup,
                                          tmp_path):
    imp, procs = lambda_setup
    boot = tmp_path / "pkg" / "bootstrap"
    boot.parent.mkdir()
    os.symlink(rin_ship_bin(), boot)

    # A config that cannot be loaded: reported to /init/error, non-zero exit.
    env = dict(imp.env, RIN_CONFIG=str(tmp_path / "missing.yaml"))
    p = start(imp, procs, [str(boot)], env=env)
    assert p.wait(30) != 0
    assert len(runtime.init_errors) == 1, runtime.init_errors
    assert "missing.yaml" in runtime.init_errors[0]["errorMessage"]

    # `bootstrap` with no arguments: the handler, config from RIN_CONFIG.
    etag = put_object(moto_server, bucket, "incoming/b.json.gz", [{"i": 1}, {"i": 2}])
    good = json.dumps({"Records": [s3_event(bucket, "incoming/b.json.gz", etag)]})
    r1 = runtime.invoke([sqs_record("g", good), sqs_record("odd", json.dumps({"hello": 1}))])
    env = dict(imp.env, RIN_CONFIG=str(imp.config_path))
    p = start(imp, procs, [str(boot)], env=env)
    wait_for(lambda: r1 in runtime.responses or p.poll() is not None, 60, "the response")
    assert runtime.responses[r1] == {"batchItemFailures": [{"itemIdentifier": "odd"}]}
    assert pgdb.count("logs") == 2
    p.kill()
    p.wait(10)

    # RIN_SHIP_LAMBDA_ON_FAILURE=error (event source mapping without ReportBatchItemFailures):
    # a failed message fails the whole invocation; what loaded is a ledger duplicate next time.
    etag = put_object(moto_server, bucket, "incoming/c.json.gz", [{"i": 3}])
    good = json.dumps({"Records": [s3_event(bucket, "incoming/c.json.gz", etag)]})
    r2 = runtime.invoke([sqs_record("g2", good), sqs_record("bad", "nope")])
    r3 = runtime.invoke([sqs_record("g2", good, 2)])
    env = dict(imp.env, RIN_SHIP_LAMBDA_ON_FAILURE="error")
    p = start(imp, procs, imp.cmd("--lambda"), env=env)
    wait_for(lambda: r3 in runtime.responses or p.poll() is not None, 60, "the responses")
    assert r2 not in runtime.responses and "not processed" in runtime.errors[r2]["errorMessage"]
    assert runtime.responses[r3] == {"batchItemFailures": []}
    assert pgdb.sql("SELECT string_agg(i::text, ',' ORDER BY i) FROM logs") == [["1,2,3"]]
    p.kill()
    p.wait(10)


def test_dry_run_is_not_the_handler(moto_server, bucket, pgdb, runtime, lambda_setup):
    imp, procs = lambda_setup
    p = imp.run("--dry-run", "incoming/x.json.gz", timeout=30)
    assert '=> target 0 "public"."logs"' in p.stdout, p.stdout
