"""What an operator deploys and watches: /metrics (every family with HELP, present from the
start, the buffer, upload and load figures), /readyz of serve and import, JSON logs and log
filters, --version, `rin-ship top` under tmux, fluent-bit's FLUENT-TAG header on the
defaults, one connection's order across objects (and the README's Quick start), config errors
that say what to do, and the decompression memory budget, all against real processes."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest
import requests
from fluent import sender
from prometheus_client.parser import text_string_to_metric_families

from loadlib import (Importer, make_queue, pg_server, pgdb, rin_config,  # noqa: F401
                     wait_for)
from rinlib import Fwd, T0, Tmux, free_port, port_open, rin_ship_bin
from test_embedded import (Bare, bare, connect_ro, lean_bin, query,  # noqa: F401 (bare: fixture)
                           table_rows, wait_rows)

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
# What tests/run builds (RIN_SHIP_FEATURES, else its default) plus the default features, as
# --version and rin_build_info list them.
BUILT_FEATURES = ",".join(sorted(
    set(os.environ.get("RIN_SHIP_FEATURES", "redshift,lambda,isal").split(",")) | {"s3", "sqs", "mysql"}))


def scrape(port: int) -> dict:
    """/metrics parsed by the Prometheus client's own parser: {family name: Metric}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict, name: str, **labels) -> float:
    """The sum of the samples called `name` (a family's own name or a _count/_bucket/...)
    whose labels include `labels`."""
    total, found = 0.0, False
    for f in families.values():
        for s in f.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
                found = True
    assert found, f"no sample {name}{labels} in {sorted(families)}"
    return total


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def emit(port: int, tag: str, records: list[dict]):
    prefix, rest = tag.split(".", 1)
    log = sender.FluentSender(prefix, host="127.0.0.1", port=port, nanosecond_precision=True)
    for r in records:
        assert log.emit(rest, r), log.last_error
    log.close()


# Families every `serve` exports from its first scrape (with the embedded loader: the load
# and local-queue families too). Counters named without `_total` by the parser.
SERVE_FAMILIES = {
    "rin_build_info", "process_start_time_seconds", "process_resident_memory_bytes",
    "rin_ready", "rin_events_in", "rin_bytes_in", "rin_ack_latency_seconds",
    "rin_events_refused", "rin_forward_frames_rejected", "rin_http_requests",
    "rin_http_requests_rejected", "rin_buffer_bytes", "rin_buffer_quota_bytes",
    "rin_buffer_fill_ratio", "rin_buffer_chunks", "rin_buffer_oldest_chunk_age_seconds",
    "rin_chunks_sealed", "rin_buffer_full", "rin_buffer_commit_errors", "rin_events_out",
    "rin_objects_uploaded", "rin_uploaded_bytes", "rin_upload_duration_seconds",
    "rin_upload_errors", "rin_upload_retries", "rin_last_upload_timestamp_seconds",
    "rin_notifications", "rin_notification_errors", "rin_decompress_bytes",
    "rin_decompress_budget_bytes",
}
EMBEDDED_FAMILIES = {
    "rin_local_queue_messages", "rin_local_queue_dead_letters", "rin_import_messages",
    "rin_import_records", "rin_import_rows", "rin_import_load_errors",
    "rin_import_quarantined", "rin_load_duration_seconds", "rin_last_load_timestamp_seconds",
}
IMPORT_FAMILIES = {
    "rin_build_info", "rin_ready", "rin_import_messages", "rin_import_records",
    "rin_import_rows", "rin_import_load_errors", "rin_import_quarantined",
    "rin_load_duration_seconds", "rin_last_load_timestamp_seconds", "rin_import_queue_messages",
}


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def test_every_family_has_help_and_exists_from_the_start(bare):
    s = bare().start()
    fams = scrape(s.metrics_port)
    missing = (SERVE_FAMILIES | EMBEDDED_FAMILIES) - set(fams)
    assert not missing, f"families absent on a fresh serve: {sorted(missing)}"
    undocumented = [n for n, f in fams.items() if not f.documentation.strip()]
    assert not undocumented, f"families without # HELP: {undocumented}"
    # Zero-valued, not absent: an alert on them works before the first event.
    assert value(fams, "rin_events_in_total", intake="forward", target="default") == 0
    assert value(fams, "rin_import_load_errors_total", kind="data") == 0
    assert value(fams, "rin_upload_duration_seconds_count") == 0
    assert value(fams, "rin_load_duration_seconds_count", warehouse="sqlite") == 0
    assert value(fams, "rin_buffer_quota_bytes") == 2 << 30
    assert value(fams, "rin_ready", check="buffer") == 1
    assert "rin_upload_seconds" not in fams, "renamed to rin_upload_duration_seconds"
    info = next(iter(fams["rin_build_info"].samples))
    assert info.value == 1
    assert set(info.labels) == {"version", "commit", "features"}, info.labels
    assert re.fullmatch(r"[0-9a-f]{12}|unknown", info.labels["commit"]), info.labels
    assert info.labels["features"] == BUILT_FEATURES, info.labels
    assert value(fams, "process_resident_memory_bytes") > 1 << 20
    assert abs(value(fams, "process_start_time_seconds") - time.time()) < 120
    s.terminate()


def test_upload_and_load_figures_after_traffic(bare):
    s = bare(seal_age="500ms").start()
    started = time.time()
    emit(s.forward_port, "ops.web", [{"i": i} for i in range(30)])
    wait_rows(s.db, "ops.web", 30, stderr=s.stderr)
    fams = wait_for(lambda: (f := scrape(s.metrics_port))
                    and value(f, "rin_load_duration_seconds_count", warehouse="sqlite") >= 1
                    and f, 20, "a load on /metrics")
    assert value(fams, "rin_events_in_total", intake="forward", target="default") == 30
    assert value(fams, "rin_events_out_total", target="default") == 30
    assert value(fams, "rin_upload_duration_seconds_count") >= 1
    assert value(fams, "rin_import_rows_total") == 30
    for gauge in ("rin_last_upload_timestamp_seconds", "rin_last_load_timestamp_seconds"):
        t = value(fams, gauge)
        assert started - 1 <= t <= time.time() + 1, (gauge, t, started)
    assert value(fams, "rin_local_queue_messages", state="ready") == 0
    assert value(fams, "rin_local_queue_messages", state="dead") == 0
    assert value(fams, "rin_buffer_oldest_chunk_age_seconds") == 0  # all shipped
    s.terminate()


def test_stalled_uploads_show_in_oldest_chunk_age_fill_ratio_and_readyz(rin, moto_private):
    """S3 unreachable: the oldest chunk ages, the buffer fills against its quota (gauge and
    ratio), and /readyz says why it is not ready."""
    quota = 24 << 10
    r = rin({
        "stores": {"s3store": moto_private.store_config("nobucket")},  # moto not started
        "targets": [{"name": "t", "match": ["**"], "store": "s3store"}],
        "buffer": {"seal_age": "200ms", "seal_bytes": "2KiB", "quota": quota},
        "ship": {"shutdown_timeout": "1s", "max_backoff": "1s"},
    })
    with r.connect() as c:
        for i in range(40):
            c.send(["st.t", T0, {"i": i, "pad": os.urandom(600).hex()}, {"chunk": f"s{i}"}])
            try:
                c.expect_ack(f"s{i}", timeout=2)
            except AssertionError:
                break
    first = scrape(r.metrics_port)
    time.sleep(1.5)
    fams = scrape(r.metrics_port)
    age0 = value(first, "rin_buffer_oldest_chunk_age_seconds")
    age1 = value(fams, "rin_buffer_oldest_chunk_age_seconds")
    assert age1 > 0 and age1 >= age0 + 1, (age0, age1)
    used = value(fams, "rin_buffer_bytes")
    assert value(fams, "rin_buffer_quota_bytes") == quota
    assert value(fams, "rin_buffer_fill_ratio") == pytest.approx(used / quota, rel=0.05)
    assert value(fams, "rin_upload_errors_total") > 0
    if used >= quota:
        status, body = http_get(r.metrics_port, "/readyz")
        assert status == 503 and "buffer: the buffer is at its disk quota" in body, body
        assert value(fams, "rin_ready", check="buffer") == 0
    r.terminate(timeout=40)


# ---------------------------------------------------------------------------------------------
# the importer's readiness
# ---------------------------------------------------------------------------------------------


TARGETS = [{"redshift": {"table": "logs"}, "s3": {"key_prefix": "incoming/"}}]


def test_import_readyz_reflects_queue_and_warehouse(moto_server, bucket, pgdb, tmp_path):
    q, url = make_queue(moto_server)
    pgdb.sql("CREATE TABLE logs (i bigint)")

    def run(name, **override):
        port = free_port()
        cfg = rin_config(moto_server, pgdb, q, bucket, TARGETS, metrics_bind=f"127.0.0.1:{port}")
        for k, v in override.items():
            section, key = k.split("__")
            cfg[section][key] = v
        imp = Importer(tmp_path, cfg, name=name)
        p = imp.start()
        wait_for(lambda: port_open(port) or p.poll() is not None, 20, "the metrics port")
        assert p.poll() is None, imp.stderr()[-3000:]
        return imp, p, port

    def readyz(port):
        return http_get(port, "/readyz")

    # Both reachable: ready.
    imp, p, port = run("ok")
    try:
        status, body = wait_for(lambda: (r := readyz(port))[0] == 200 and r, 20, "ready")
        assert "queue: ok" in body and "warehouse: ok" in body, body
        fams = scrape(port)
        missing = IMPORT_FAMILIES - set(fams)
        assert not missing, f"families absent on a fresh import: {sorted(missing)}"
        assert not [n for n, f in fams.items() if not f.documentation.strip()]
        assert value(fams, "rin_ready", check="warehouse") == 1
        assert value(fams, "rin_import_queue_messages", state="visible") == 0
        assert value(fams, "rin_load_duration_seconds_count", warehouse="postgres") == 0
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    assert p.returncode == 0, imp.stderr()[-3000:]

    # The warehouse port has nothing listening: not ready, and /readyz names it.
    imp, p, port = run("nowarehouse", redshift__port=free_port())
    try:
        status, body = wait_for(lambda: (r := readyz(port))[0] == 503
                                and "warehouse: cannot connect" in r[1] and r, 20,
                                "warehouse not ready")
        assert "queue: ok" in body, body
        assert value(scrape(port), "rin_ready", check="warehouse") == 0
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)

    # SQS unreachable (nothing listens at the endpoint): not ready, naming the queue.
    dead = f"http://127.0.0.1:{free_port()}"
    imp, p, port = run("noqueue", rin_ship__sqs_endpoint=dead,
                       rin_ship__queue_url=f"{dead}/123456789012/{q}")
    try:
        status, body = wait_for(lambda: (r := readyz(port))[0] == 503
                                and "warehouse: ok" in r[1] and r, 30, "the warehouse probed")
        queue = next(ln for ln in body.splitlines() if ln.startswith("queue: "))
        assert "127.0.0.1" in queue and "not reached yet" not in queue, body
        assert value(scrape(port), "rin_ready", check="queue") == 0
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)


# ---------------------------------------------------------------------------------------------
# logs, version
# ---------------------------------------------------------------------------------------------


def test_json_logs_and_the_json_filter_mistake(bare):
    """RIN_SHIP_LOG=json is read as the format (it used to hide every line);
    RIN_SHIP_LOG_FORMAT=json and --log-format json likewise; each line one JSON object."""
    for env in ({"RIN_SHIP_LOG": "json"}, {"RIN_SHIP_LOG_FORMAT": "json"}):
        s = bare()
        s.env.update(env)
        s.start()
        emit(s.forward_port, "j.web", [{"i": 1}])
        s.terminate()
        lines = [ln for ln in s.stderr().splitlines() if ln.strip()]
        assert len(lines) >= 5, lines
        objs = [json.loads(ln) for ln in lines]
        assert all({"timestamp", "level", "message"} <= set(o) for o in objs), objs[:3]
        msgs = [o["message"] for o in objs]
        assert "rin-ship is running" in msgs and any("bye" in m for m in msgs), msgs
    p = subprocess.run([str(rin_ship_bin()), "--log-format", "json", "--log-level", "debug",
                        "query", "--data-dir", str(s.dir / "rin-data"), "SELECT 1"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stdout == "1\n1\n", p


@pytest.mark.parametrize("command", [
    ["serve"], ["check-config"], ["query", "SELECT 1"], ["top", "--once"], ["health"],
    ["import", "--config", "x.yaml"], ["backfill", "--config", "x.yaml", "--prefix", "s3://b/p"],
    ["maintain", "--config", "x.yaml", "--once"],
])
def test_every_command_refuses_an_invalid_log_filter(command, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIN_")}
    for how in ("env", "flag"):
        e, args = dict(env), list(command)
        if how == "env":
            e["RIN_SHIP_LOG"] = "bogus["
        else:
            args = ["--log-level", "bogus[", *args]
        p = subprocess.run([str(rin_ship_bin()), *args], capture_output=True, text=True,
                           timeout=30, env=e, cwd=tmp_path)
        assert p.returncode == 2, (how, p)
        assert 'invalid log filter "bogus["' in p.stderr and "RIN_SHIP_LOG" in p.stderr, p.stderr
    e = dict(env, RIN_SHIP_LOG="warning")
    p = subprocess.run([str(rin_ship_bin()), *command], capture_output=True, text=True,
                       timeout=30, env=e, cwd=tmp_path)
    assert p.returncode == 2 and "did you mean `warn`" in p.stderr, p.stderr


def test_version_names_commit_date_and_features():
    pat = (r"rin-ship (\d+\.\d+\.\d+) \(commit ([0-9a-f]{12}|unknown), built "
           r"(\d{4}-\d\d-\d\d), features: ([a-z0-9,-]+)\)\n")
    out = subprocess.run([str(rin_ship_bin()), "--version"], capture_output=True, text=True,
                         check=True).stdout
    m = re.fullmatch(pat, out)
    assert m, out
    assert m.group(4) == BUILT_FEATURES, out
    cargo = (ROOT / "Cargo.toml").read_text()
    assert f'version = "{m.group(1)}"' in cargo
    if shutil.which("git") and (ROOT / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()
        assert m.group(2) == head, (out, head)
    lean = subprocess.run([str(lean_bin()), "--version"], capture_output=True, text=True,
                          check=True).stdout
    assert lean.endswith("features: none)\n"), lean


# ---------------------------------------------------------------------------------------------
# rin-ship top, under tmux
# ---------------------------------------------------------------------------------------------


def test_top_under_tmux_against_a_running_serve(bare):
    s = bare(seal_age="1s").start()
    tmux = Tmux(f"rin-top-{os.getpid()}")
    stop = threading.Event()

    def traffic():
        log = sender.FluentSender("top", host="127.0.0.1", port=s.forward_port)
        i = 0
        while not stop.is_set():
            log.emit("web", {"i": i, "path": "/x"})
            i += 1
            time.sleep(0.005)
        log.close()

    t = threading.Thread(target=traffic)
    try:
        tmux("new-session", "-d", "-s", "top", "-x", "160", "-y", "45")
        tmux("set-option", "-g", "remain-on-exit", "on")
        tmux.run("top", f"{rin_ship_bin()} top 127.0.0.1:{s.metrics_port} --interval 1s", "top")
        t.start()

        def shows_traffic():
            screen = tmux.screen()
            row = re.search(r"^forward\s+default\s+([\d.k]+)\s", screen, re.M)
            loads = re.search(r"^LOADS\s+rows \S+\s+objects \S+\s+total rows ([\d.k]+)", screen, re.M)
            if row and float(row.group(1).rstrip("k")) > 0 and loads and loads.group(1) != "0":
                return screen
            return None

        screen = wait_for(shows_traffic, 30, "top showing events/s and loaded rows")
        assert f"rin-ship top  http://127.0.0.1:{s.metrics_port}  serve + embedded loader" in screen, screen
        assert "ready: buffer ok" in screen, screen
        assert re.search(r"^BUFFER .* of 2\.0 GiB", screen, re.M), screen
        assert re.search(r"^UPLOADS .*latency p50 \S+ p99 \S+", screen, re.M), screen
        assert re.search(r"^QUEUE\s+local: ready \d+, inflight \d+, dead 0", screen, re.M), screen
        assert re.search(r"^uploaded\s+default\s+\S+\s+\d+", screen, re.M), screen
        # Ctrl-C: it exits 0 and gives the screen back (the alternate screen is left).
        tmux("send-keys", "-t", "top", "C-c")
        assert tmux.exit_status("top", "top", 10) == 0, tmux.screen()
        assert "rin-ship top" not in tmux.screen()
    finally:
        stop.set()
        if t.is_alive():
            t.join()
        tmux.kill()
    s.terminate()


def test_top_shows_an_unreachable_endpoint_and_health_exits_1(tmp_path):
    port = free_port()
    p = subprocess.run([str(rin_ship_bin()), "top", f"127.0.0.1:{port}", "--once"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and f"cannot connect to 127.0.0.1:{port}" in p.stderr, p
    p = subprocess.run([str(rin_ship_bin()), "health", f"127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p


# ---------------------------------------------------------------------------------------------
# fluent-bit's http output on the defaults
# ---------------------------------------------------------------------------------------------


def fluent_bit_http_output() -> dict:
    """The [OUTPUT] section of fluent-bit/http.conf, keys lowercased."""
    out, section = {}, None
    for ln in (ROOT / "fluent-bit" / "http.conf").read_text().splitlines():
        ln = ln.strip()
        if not ln or ln.startswith("#"):
            continue
        if ln.startswith("["):
            section = ln
            continue
        if section == "[OUTPUT]":
            k, v = ln.split(None, 1)
            out[k.lower()] = v
    return out


def test_fluent_bit_http_conf_works_on_the_defaults(rin):
    """A request shaped as fluent-bit/http.conf makes fluent-bit send (URI /, the tag in
    FLUENT-TAG, json_lines, gzip, the time under Json_Date_Key as iso8601) is stored, on
    rin-ship's default `http:` settings."""
    out = fluent_bit_http_output()
    assert out["uri"] == "/" and out["header_tag"] == "FLUENT-TAG", out
    assert out["format"] == "json_lines" and out["compress"] == "gzip", out
    date_key = out["json_date_key"]
    r = rin()  # nothing set under http: beyond the port
    assert "tag_header" not in r.config["http"]
    recs = [{date_key: "2024-05-01T12:34:56.250000Z", "log": f"line {i}"} for i in range(5)]
    body = gzip.compress(b"".join(json.dumps(x).encode() + b"\n" for x in recs))
    resp = requests.post(f"http://127.0.0.1:{r.http_port}{out['uri']}", data=body, timeout=20,
                         headers={"Content-Type": "application/json", "Content-Encoding": "gzip",
                                  "User-Agent": "Fluent-Bit", out["header_tag"]: "fb.app"})
    assert resp.status_code == 200, (resp.status_code, resp.text)
    # Without the header, POST / has no tag: 400 says how to send one.
    resp = requests.post(f"http://127.0.0.1:{r.http_port}/", data=b'{"a":1}', timeout=20)
    assert resp.status_code == 400, resp.text
    r.terminate()
    by_key = r.records_by_key()
    assert all(k.startswith("logs/fb.app/") for k in by_key), list(by_key)
    got = [x for v in by_key.values() for x in v]
    assert [x["log"] for x in got] == [f"line {i}" for i in range(5)], got
    assert all(x["time"] == "2024-05-01T12:34:56.250000Z" for x in got), got


# ---------------------------------------------------------------------------------------------
# order across objects; the Quick start
# ---------------------------------------------------------------------------------------------


def seq_of(key: str) -> int:
    return int(re.search(r"-(\d+)\.json\.gz$", key).group(1))


def test_one_connections_events_keep_their_order_across_objects(rin):
    """Small chunks over two writers, one fluent-logger connection sending without waiting
    (Message mode, no acks: frames pipeline) while another connection keeps the writers busy:
    the first connection's events, read object by object in sequence order, are in the order
    it sent them."""
    r = rin({"buffer": {"shards": 2, "seal_bytes": "4KiB", "seal_age": "300ms"}})
    n = 3000
    stop = threading.Event()

    def noise():
        log = sender.FluentSender("noise", host="127.0.0.1", port=r.forward_port)
        while not stop.is_set():
            log.emit("t", {"noise": "x" * 100})
        log.close()

    t = threading.Thread(target=noise)
    t.start()
    try:
        emit(r.forward_port, "order.t", [{"i": i} for i in range(n)])
    finally:
        stop.set()
        t.join()
    r.wait_records(n, timeout=60)
    r.terminate()
    objects = sorted(((seq_of(k), v) for k, v in r.records_by_key().items()), key=lambda kv: kv[0])
    ours = [x["i"] for _, recs in objects for x in recs if "i" in x]
    assert len(ours) == n
    assert ours == list(range(n)), "one connection's events out of order across objects"
    assert sum(1 for _, recs in objects if any("i" in x for x in recs)) > 2, "too few objects"


def readme_quick_start() -> tuple[str, list[str], list[str], list[str]]:
    """From README's Quick start: the Python snippet, and what it shows `rin-ship query`,
    `find` and `zcat` print."""
    text = (ROOT / "README.md").read_text()
    qs = text[text.index("## Quick start"):text.index("### The embedded loader")]
    blocks = re.findall(r"((?:^    .*\n|^\n)+)", qs, re.M)
    blocks = [re.sub(r"^    ", "", b, flags=re.M).strip("\n") for b in blocks if b.strip()]
    snippet = next(b for b in blocks if "FluentSender" in b)
    py = snippet[snippet.index("from fluent"):snippet.rindex("log.close()") + len("log.close()")]
    shown: dict[str, list[str]] = {}
    for b in blocks:
        prompt = None
        for ln in b.splitlines():
            if ln.startswith("$ "):
                prompt = ln[2:].split()[0:3]
                prompt = " ".join(prompt)
                shown[prompt] = []
            elif prompt:
                shown[prompt].append(ln)
    query_out = next(v for k, v in shown.items() if k.startswith("cargo run --release"))
    find_out = next(v for k, v in shown.items() if k.startswith("find"))
    zcat_out = next(v for k, v in shown.items() if k.startswith("zcat"))
    return py, query_out, find_out, zcat_out


def test_readme_quick_start_is_what_a_user_sees(bare):
    """The Quick start run as written (its Python snippet, on the embedded defaults): one
    object, rows in the order sent, and the output shaped as the README shows it."""
    py, query_out, find_out, zcat_out = readme_quick_start()
    s = bare(seal_age="5s").start()
    script = py.replace("port=24224", f"port={s.forward_port}")
    assert script != py, "the snippet no longer names port 24224"
    subprocess.run([str(Path(os.sys.executable)), "-c", script], check=True, timeout=30)
    rows = wait_rows(s.db, "app.web", 3, timeout=30, stderr=s.stderr)
    p = query('SELECT * FROM "app.web"', cwd=s.dir)
    got = p.stdout.splitlines()
    assert got[0] == query_out[0], (got, query_out)
    assert len(got) == len(query_out) == 4, got
    ts = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
    for g, want in zip(got[1:], query_out[1:]):
        assert ts.sub("T", g) == ts.sub("T", want), (g, want)
    objects = sorted((s.dir / "rin-data" / "objects").rglob("*.json.gz"))
    assert len(objects) == len(find_out) == 1, objects
    key = objects[0].relative_to(s.dir).as_posix()
    shape = re.compile(r"rin-data/objects/logs/app\.web/dt=\d{4}-\d\d-\d\d/hour=\d\d/"
                       r"[A-Za-z0-9-]+-[0-9a-f]{8}-\d{10}\.json\.gz")
    assert shape.fullmatch(key) and shape.fullmatch(find_out[0]), (key, find_out)
    lines = gzip.decompress(objects[0].read_bytes()).decode().splitlines()
    assert [ts.sub("T", ln) for ln in lines] == [ts.sub("T", ln) for ln in zcat_out], lines
    s.terminate()


# ---------------------------------------------------------------------------------------------
# config errors that say what to do
# ---------------------------------------------------------------------------------------------


def serve_error(rin, config: dict, env=None) -> str:
    r = rin(config, start=False, env=env)
    r.write_config()
    p = subprocess.run([str(rin_ship_bin()), "serve", "--config", str(r.config_path)],
                       capture_output=True, text=True, timeout=30, env=r.env, cwd=r.dir)
    assert p.returncode == 1, p
    return p.stderr


def test_bind_takes_a_host_name_and_explains_a_bare_port(rin):
    port = free_port()
    r = rin({"forward": {"bind": f"localhost:{port}"}}, start=False)
    r.forward_port = port
    r.start()
    with Fwd(port) as c:
        c.send(["n.t", T0, {"a": 1}, {"chunk": "n"}])
        c.expect_ack("n")
    r.terminate()
    err = serve_error(rin, {"forward": {"bind": 24224}})
    assert "field `forward.bind`" in err and "127.0.0.1:24224" in err and "0.0.0.0:24224" in err, err
    err = serve_error(rin, {"http": {"bind": "no-such-host.invalid:9880"}})
    assert "field `http.bind`" in err and "cannot resolve the host" in err, err
    err = serve_error(rin, {"forward": {"max_connections": "many"}})
    assert "field `forward.max_connections`" in err and '"many" is not a whole number' in err, err


def test_a_port_in_use_names_the_setting_that_moves_it(rin, tmp_path):
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    try:
        err = serve_error(rin, {"forward": {"bind": f"127.0.0.1:{port}"}})
        assert "cannot listen for forward on" in err and "forward.bind" in err, err
        assert "RIN_SHIP_FORWARD_BIND" in err and "another process" in err, err
        err = serve_error(rin, {"metrics": {"bind": f"127.0.0.1:{port}"}})
        assert "metrics.bind" in err and "RIN_SHIP_METRICS_BIND" in err, err
        # Without a config file, the variable is what moves it.
        env = {k: v for k, v in os.environ.items() if k != "RIN_SHIP_CONFIG"}
        env["RIN_SHIP_HTTP_BIND"] = f"127.0.0.1:{port}"
        env["RIN_SHIP_FORWARD_BIND"] = f"127.0.0.1:{free_port()}"
        env["RIN_SHIP_METRICS_BIND"] = f"127.0.0.1:{free_port()}"
        p = subprocess.run([str(rin_ship_bin()), "serve"], capture_output=True, text=True,
                           timeout=30, env=env, cwd=tmp_path)
        assert p.returncode == 1 and "RIN_SHIP_HTTP_BIND" in p.stderr, p.stderr
    finally:
        held.close()


def test_a_config_path_from_rin_ship_config_says_so(tmp_path):
    env = dict(os.environ, RIN_SHIP_CONFIG=str(tmp_path / "gone.yaml"))
    for args in (["serve"], ["check-config"], ["query", "SELECT 1"]):
        p = subprocess.run([str(rin_ship_bin()), *args], capture_output=True, text=True,
                           timeout=30, env=env, cwd=tmp_path)
        assert p.returncode == 1, p
        assert f"RIN_SHIP_CONFIG={tmp_path / 'gone.yaml'}" in p.stderr, p.stderr
        assert "unset it or pass --config" in p.stderr, p.stderr
    # Given on the command line, the error does not blame the variable.
    p = subprocess.run([str(rin_ship_bin()), "check-config", "-c", str(tmp_path / "x.yaml")],
                       capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path)
    assert p.returncode == 1 and "RIN_SHIP_CONFIG" not in p.stderr, p.stderr


def test_query_hints_to_quote_a_tag(bare):
    s = bare(seal_age="500ms").start()
    emit(s.forward_port, "app.web", [{"i": 1}])
    wait_rows(s.db, "app.web", 1, stderr=s.stderr)
    s.terminate()
    p = query("SELECT * FROM app.web", cwd=s.dir, check=False)
    assert p.returncode == 1, p
    assert """quote it: rin-ship query 'SELECT * FROM "app.web"'""" in p.stderr, p.stderr


# ---------------------------------------------------------------------------------------------
# decompression memory, against the sidecar's memory limit
# ---------------------------------------------------------------------------------------------


def gzip_bomb(size: int) -> bytes:
    """`size` zero bytes, gzip-compressed in a stream (never all in memory)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    out = [c.compress(chunk) for _ in range(size >> 20)]
    out.append(c.flush())
    return b"".join(out)


def peak_rss(pid: int) -> int:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmHWM:"):
            return int(ln.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def mebibytes(q: str) -> int:
    m = re.fullmatch(r"(\d+)(Mi|Gi)", q)
    return int(m.group(1)) << (20 if m.group(2) == "Mi" else 30)


def bombard(port: int, bomb: bytes, n: int):
    """`n` connections at once, each sending one CompressedPackedForward bomb frame."""
    import msgpack

    frame = msgpack.packb(["bomb.t", bomb, {"compressed": "gzip", "chunk": "bomb"}],
                          use_bin_type=True)
    errors = []

    def one():
        try:
            with Fwd(port, timeout=60) as c:
                c.send(frame)
                c.expect_closed(60)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_decompression_stays_within_the_sidecars_memory_limit(rin):
    """The rin-ship config of examples/kubernetes/sidecar.yaml under 8 gzip bombs at once
    (each 512 MiB of zeros; its max_decompressed_bytes is 32 MiB, its decompress_memory 64 MiB)
    and then real traffic: the process's peak RSS stays below the container's limits.memory,
    and every bomb is refused (too large or busy), not acked."""
    import yaml

    docs = [d for d in yaml.safe_load_all((ROOT / "examples/kubernetes/sidecar.yaml").read_text()) if d]
    conf = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["rin-ship.yaml"])
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    limit = mebibytes(next(c for c in pod["initContainers"] if c["name"] == "rin-ship")
                      ["resources"]["limits"]["memory"])
    # Its limits and budget, on this machine's ports and folders, shipping to the local store.
    config = {k: conf[k] for k in ("forward", "http", "decompress_memory", "buffer")}
    config["forward"] = dict(conf["forward"], bind=None)
    config["forward"].pop("bind")
    config["buffer"] = {k: v for k, v in conf["buffer"].items() if k != "quota"}
    r = rin(config)
    bombard(r.forward_port, gzip_bomb(512 << 20), 8)
    # Real frames after the bombs: stored and acked.
    with r.connect() as c:
        for i in range(20):
            c.send(["ok.t", [[T0, {"i": i, "pad": "y" * 1000}] for _ in range(500)], {"chunk": f"k{i}"}])
            c.expect_ack(f"k{i}", timeout=30)
    text = r.metrics()
    peak = peak_rss(r.proc.pid)
    r.terminate()
    refused = sum(float(m.group(1)) for m in re.finditer(
        r'rin_forward_frames_rejected_total\{reason="(?:too_large|busy)"\} (\S+)', text))
    assert refused == 8, text
    print(f"peak RSS {peak >> 20} MiB, limit {limit >> 20} MiB")
    assert peak < limit, f"peak RSS {peak >> 20} MiB over the sidecar's limit {limit >> 20} MiB"


def test_decompression_budget_on_the_defaults(rin):
    """Default limits: 8 bombs at once (1 GiB of zeros each; max_decompressed_bytes is 256 MiB)
    cost at most the one decompress_memory budget (256 MiB) plus the process itself, not
    8 x max_decompressed_bytes."""
    r = rin()
    bombard(r.forward_port, gzip_bomb(1 << 30), 8)
    text = r.metrics()
    peak = peak_rss(r.proc.pid)
    r.terminate()
    print(f"peak RSS {peak >> 20} MiB")
    assert peak < (256 << 20) + (96 << 20), f"peak RSS {peak >> 20} MiB"
    assert "rin_decompress_budget_bytes 268435456" in text, text
    refused = sum(float(m.group(1)) for m in re.finditer(
        r'rin_forward_frames_rejected_total\{reason="(?:too_large|busy)"\} (\S+)', text))
    assert refused == 8, text


def test_a_burst_of_compressed_frames_over_the_budget_is_taken_in_turn(rin):
    """Eight connections at once each send a gzip CompressedPackedForward frame of real events
    decompressing to about 3 MiB, against a 4 MiB decompress_memory: only one fits at a time,
    so the others wait for room (up to 2 s each) instead of being refused, and every frame is
    acked and stored once."""
    import msgpack

    r = rin({"decompress_memory": "4MiB", "forward": {"max_decompressed_bytes": "4MiB"},
             "http": {"max_decompressed_bytes": "4MiB"}})
    per_frame = 3000
    frames = []
    for conn in range(8):
        entries = b"".join(msgpack.packb([T0, {"conn": conn, "i": i, "pad": "x" * 1000}])
                           for i in range(per_frame))
        frames.append(msgpack.packb(["burst.t", gzip.compress(entries, 1),
                                     {"compressed": "gzip", "chunk": f"burst-{conn}"}],
                                    use_bin_type=True))
    errors = []

    def send(conn: int):
        try:
            with Fwd(r.port, timeout=60) as c:
                c.send(frames[conn])
                c.expect_ack(f"burst-{conn}", timeout=60)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((conn, e))

    threads = [threading.Thread(target=send, args=(conn,)) for conn in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = r.metrics()
    r.terminate()
    assert not errors, errors
    def sample(name: str) -> float:
        m = re.search(rf'^{re.escape(name)} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    assert sample('rin_forward_frames_rejected_total{reason="busy"}') == 0, text
    waited = sample('rin_decompress_waits_total{outcome="admitted"}')
    print(f"frames that waited for room and were then taken: {waited:.0f} of 8")
    assert waited >= 1, "no frame had to wait: the test does not exercise the wait"

    records = r.records()
    assert len(records) == 8 * per_frame
    assert len({(rec["conn"], rec["i"]) for rec in records}) == 8 * per_frame
