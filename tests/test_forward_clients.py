"""Real forward-protocol client libraries against rin-ship.

Fact (checked in the installed source, fluent/sender.py): Python fluent-logger 0.11.1 has NO
ack support at all -- FluentSender only ever sends Message mode `[tag, time, record]` without an
option map, and there is no `require_ack` / `ack` parameter (unknown kwargs are silently
swallowed by **kwargs). Acked sends are therefore tested with the Node client
@fluent-org/logger 1.0.x (installed by tests/run under .tools/node), which sends Message, Forward,
PackedForward (bin) and CompressedPackedForward with `chunk` and waits for `{"ack": chunk}`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from fluent import asyncsender, sender

from rinlib import ROOT, T0, assert_same_records, line

TAGGED = {"targets": [{"name": "default", "match": ["**"], "store": "local", "tag_key": "tag"}]}


@pytest.mark.timeout(120)
def test_fluent_logger_seconds_many_records_several_tags(rin):
    r = rin(TAGGED)
    labels = ["web", "db", "x.y"]
    expected = []
    s = sender.FluentSender("app", host="127.0.0.1", port=r.port, timeout=5.0)
    for i in range(1500):
        label = labels[i % 3]
        rec = {"i": i, "msg": f"hello {i}", "nested": {"k": [i, "v"]}, "ok": i % 2 == 0}
        assert s.emit_with_time(label, T0 + i, rec), f"emit {i} failed: {s.last_error!r}"
        expected.append(line(rec, T0 + i, tag=f"app.{label}", tag_key="tag"))
    s.close()
    # sealed by seal_age (1s) without any shutdown
    got = r.wait_records(len(expected), timeout=20)
    assert_same_records(got, expected, "records after seal_age")
    r.terminate()
    assert_same_records(r.records(), expected, "records after SIGTERM")


@pytest.mark.timeout(120)
def test_fluent_logger_nanosecond_precision(rin):
    r = rin(TAGGED)
    expected = []
    s = sender.FluentSender("nano", host="127.0.0.1", port=r.port, nanosecond_precision=True)
    for i in range(300):
        nanos = 123456000 + i * 1000  # multiples of 1000: no rounding question at 6 digits
        rec = {"i": i}
        ok = s.emit_with_time("t", sender.EventTime(T0 + i, nanos), rec)
        assert ok, f"emit {i} failed: {s.last_error!r}"
        expected.append(line(rec, T0 + i, nanos, tag="nano.t", tag_key="tag"))
    s.close()
    r.wait_records(len(expected), timeout=20)
    r.terminate()
    assert_same_records(r.records(), expected)


@pytest.mark.timeout(120)
def test_fluent_logger_emit_current_time(rin):
    r = rin()
    before = time.time()
    s = sender.FluentSender("now", host="127.0.0.1", port=r.port, nanosecond_precision=True)
    s2 = sender.FluentSender("now", host="127.0.0.1", port=r.port)  # integer seconds
    for i in range(10):
        assert s.emit("ns", {"i": i})
        assert s2.emit("sec", {"j": i})
    s.close()
    s2.close()
    after = time.time()
    # no ack in fluent-logger: wait for the data to be shipped (seal_age) before SIGTERM;
    # SIGTERM right after a fire-and-forget client closes is tested in test_shutdown.py
    r.wait_records(20, timeout=20)
    r.terminate()
    got = r.records()
    assert len(got) == 20, got
    for rec in got:
        ts = rec["time"]
        assert ts.endswith("Z") and len(ts) == len("2024-05-01T12:34:56.789012Z"), ts
        t = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
        assert before - 1 <= t.timestamp() <= after + 1, f"time {ts} not within the send window"
        assert list(rec.keys())[0] == "time"
    assert sorted(r_["i"] for r_ in got if "i" in r_) == list(range(10))
    assert sorted(r_["j"] for r_ in got if "j" in r_) == list(range(10))
    sec_times = [r_["time"] for r_ in got if "j" in r_]
    assert all(t.endswith(".000000Z") for t in sec_times), sec_times


@pytest.mark.timeout(120)
def test_fluent_logger_async_sender(rin):
    r = rin(TAGGED)
    s = asyncsender.FluentSender("async", host="127.0.0.1", port=r.port, queue_maxsize=10000)
    expected = []
    for i in range(1000):
        rec = {"i": i, "text": "ü✓ " * (i % 5)}
        s.emit_with_time("a" if i % 2 else "b", T0, rec)
        expected.append(line(rec, T0, tag="async." + ("a" if i % 2 else "b"), tag_key="tag"))
    s.close()  # waits for the queue to drain
    r.wait_records(len(expected), timeout=20)
    r.terminate()
    assert_same_records(r.records(), expected)


def _node():
    node = shutil.which("node")
    mod = ROOT / ".tools" / "node" / "node_modules" / "@fluent-org" / "logger"
    if node is None or not mod.exists():
        pytest.fail("Node client missing: install with `npm install --no-save --prefix .tools/node "
                    "@fluent-org/logger@1.0.10` (tests/run does this)")
    return node, mod.parent.parent


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ack", [True, False], ids=["ack", "noack"])
@pytest.mark.parametrize("mode", ["Message", "Forward", "PackedForward", "CompressedPackedForward"])
def test_node_fluent_org_logger(rin, mode, ack):
    node, node_path = _node()
    r = rin(TAGGED)
    n = 400
    env = dict(os.environ, NODE_PATH=str(node_path))
    p = subprocess.run([node, str(Path(__file__).with_name("node_client.js")), str(r.port), mode,
                        "1" if ack else "0", str(n), str(T0)],
                       env=env, capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, f"node client failed ({p.returncode}): {p.stdout}\n{p.stderr}"
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["ok"] == n, res
    tag = f"node.{mode.lower()}"
    expected = [line({"i": i, "mode": mode, "s": "x" * (i % 50)}, T0 + i, i * 1000, tag=tag,
                     tag_key="tag") for i in range(n)]
    if ack:
        # acked means durable: SIGKILL right away must not lose anything
        r.kill()
        r.start()
    else:
        r.wait_records(n, timeout=20)
    r.terminate()
    assert_same_records(r.records(), expected)


def _go_client():
    client = ROOT / ".tools" / "go" / "fluent-go-client"
    if not client.exists():
        pytest.fail("Go client missing: tests/run builds it from tests/go_client/main.go with "
                    "`apt-get install -y golang-go golang-github-fluent-fluent-logger-golang-dev`")
    return client


GO_MODES = {
    # Docker's fluentd log driver defaults: Message mode, integer seconds, no ack
    "plain": {},
    "subsecond": {"SUBSECOND": "1"},  # EventTime ext (fluentd-sub-second-precision)
    "ack": {"ACK": "1", "SUBSECOND": "1"},  # fluentd-request-ack: waits for {"ack": id}
    "async": {"ASYNC": "1"},  # fluentd-async
    "json": {"JSON": "1"},  # MarshalAsJSON: JSON frames; fluentd reads them by the first byte
    "json_ack": {"JSON": "1", "ACK": "1"},  # JSON frames, ack answered in JSON
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", sorted(GO_MODES))
def test_fluent_logger_golang(rin, mode):
    """fluent-logger-golang 1.9 (Debian's package; the library inside Docker's fluentd log
    driver) in each of its encodings."""
    client = _go_client()
    r = rin(TAGGED)
    n = 200
    env = dict(os.environ, FLUENT_PORT=str(r.port), RECORDS=str(n), T0=str(T0),
               TAG=f"go.{mode}", **GO_MODES[mode])
    p = subprocess.run([str(client)], env=env, capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, f"go client failed ({p.returncode}): {p.stdout}\n{p.stderr}"
    subsecond = GO_MODES[mode].get("SUBSECOND") == "1"
    expected = [line({"i": i, "msg": f'hello "{i}"\n',
                      "nested": {"ok": True, "list": [1, "x", None]}},
                     T0 + i, 123456789 if subsecond else 0, tag=f"go.{mode}", tag_key="tag")
                for i in range(n)]
    if GO_MODES[mode].get("ACK") == "1":
        r.kill()  # acked means durable
        r.start()
    else:
        r.wait_records(n, timeout=20)
    r.terminate()
    got = r.records()
    # Go randomizes map order: compare records, not key order (time and tag still lead).
    assert all(list(x)[:2] == ["time", "tag"] for x in got), got[:3]
    key = lambda x: json.dumps(x, sort_keys=True)  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, expected))
