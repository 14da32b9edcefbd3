"""Configuration: invalid files fail fast and precisely; ${VAR} expansion; no secret leaks."""

from __future__ import annotations

import subprocess
from pathlib import Path
import time

import pytest

from rinlib import T0, RinShip, assert_same_records, line, port_open, rin_ship_bin

pytestmark = pytest.mark.timeout(60)

SECRET = "s3cr3t-VALUE-9f8e7d6c5b4a"


def run_expect_failure(r: RinShip, timeout: float = 15.0):
    r.write_config()
    p = subprocess.Popen([str(rin_ship_bin()), "serve", "--config", str(r.config_path)],
                         cwd=r.dir, env=r.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"rin-ship kept running with an invalid config; stderr:\n{err.decode()}")
    text = err.decode(errors="replace") + out.decode(errors="replace")
    assert p.returncode != 0, f"exit status 0 with an invalid config; output:\n{text}"
    assert not port_open(r.forward_port), "forward port open after a config error"
    return text


INVALID = {
    # name: (config overrides, strings that must all appear in stderr)
    "unknown_top_field": ({"colour": "blue"}, ["colour"]),
    "unknown_nested_field": ({"buffer": {"seal_bytez": "1MiB"}}, ["buffer", "seal_bytez"]),
    "bad_size": ({"buffer": {"seal_bytes": "12 potatoes"}}, ["buffer.seal_bytes"]),
    "bad_duration": ({"buffer": {"seal_age": "soon"}}, ["buffer.seal_age"]),
    "bad_bind": ({"forward": {"bind": "not-an-address"}}, ["forward.bind"]),
    "unknown_store": ({"targets": [{"name": "t", "match": ["**"], "store": "nope"}]},
                      ["targets[0].store", "nope"]),
    "unknown_store_second_target": (
        {"targets": [{"name": "t", "match": ["a.**"], "store": "local"},
                     {"name": "u", "match": ["**"], "store": "missing"}]},
        ["targets[1].store"]),
    "unknown_fallback": ({"fallback": "ghost"}, ["fallback", "ghost"]),
    "bad_time_format": ({"targets": [{"name": "t", "match": ["**"], "time_format": "iso-ish"}]},
                        ["targets[0].time_format"]),
    "store_bad_type": ({"stores": {"weird": {"type": "ftp"}}}, ["stores.weird"]),
    "wrong_type_number": ({"ship": {"concurrency": "many"}}, ["ship.concurrency"]),
    "missing_env_var": (
        {"stores": {"s3": {"type": "s3", "bucket": "b", "region": "us-east-1",
                           "endpoint": "http://127.0.0.1:9", "force_path_style": True,
                           "access_key_id": "x",
                           "secret_access_key": "${RIN_TEST_DEFINITELY_MISSING}"}}},
        ["stores.s3.secret_access_key", "RIN_TEST_DEFINITELY_MISSING"]),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_config_fails_naming_file_and_field(rin, case):
    cfg, needles = INVALID[case]
    r = rin(cfg, start=False)
    text = run_expect_failure(r)
    assert str(r.config_path) in text or r.config_path.name in text, (
        f"stderr does not name the config file {r.config_path}:\n{text}")
    for n in needles:
        assert n in text, f"stderr does not mention {n!r}:\n{text}"


def test_yaml_syntax_error(rin):
    r = rin(start=False)
    r.write_config()
    r.config_path.write_text("forward:\n  bind: [unclosed\n")
    p = subprocess.run([str(rin_ship_bin()), "serve", "--config", str(r.config_path)],
                       capture_output=True, text=True, timeout=15)
    assert p.returncode != 0
    assert str(r.config_path) in p.stderr or r.config_path.name in p.stderr, p.stderr


def test_missing_config_file(rin, tmp_path):
    missing = tmp_path / "does-not-exist.yaml"
    p = subprocess.run([str(rin_ship_bin()), "serve", "--config", str(missing)],
                       capture_output=True, text=True, timeout=15)
    assert p.returncode != 0
    assert "does-not-exist.yaml" in p.stderr, p.stderr


def test_secret_not_in_stderr_on_config_error(rin):
    cfg = {
        "stores": {"s3": {"type": "s3", "bucket": "b", "region": "us-east-1",
                          "endpoint": "http://127.0.0.1:9", "force_path_style": True,
                          "access_key_id": "${RIN_TEST_KEY_ID}",
                          "secret_access_key": "${RIN_TEST_SECRET}"}},
        "targets": [{"name": "t", "match": ["**"], "store": "s3", "bogus": 1}],
    }
    r = rin(cfg, start=False, env={"RIN_TEST_SECRET": SECRET, "RIN_TEST_KEY_ID": "AKIDEXAMPLE"})
    text = run_expect_failure(r)
    assert "bogus" in text, text
    assert SECRET not in text, f"secret leaked in stderr:\n{text}"


def test_env_expansion_and_no_secret_in_logs(rin):
    env = {"RIN_TEST_NODE": "node-from-env", "RIN_TEST_SECRET": SECRET,
           "RIN_TEST_PREFIX": "pfx", "RUST_LOG": "debug"}
    cfg = {
        "node": "${RIN_TEST_NODE}",
        "stores": {"s3": {"type": "s3", "bucket": "b", "region": "us-east-1",
                          "endpoint": "http://127.0.0.1:9", "force_path_style": True,
                          "access_key_id": "x", "secret_access_key": "${RIN_TEST_SECRET}"}},
        "targets": [{"name": "default", "match": ["**"], "store": "local",
                     "key": "${RIN_TEST_PREFIX}/{tag}/{node}-{seq}.json.gz"}],
    }
    r = rin(cfg, env=env)
    with r.connect() as c:
        c.send(["env.t", T0, {"a": 1}, {"chunk": "e1"}])
        c.expect_ack("e1")
    r.terminate()
    keys = list(r.objects())
    assert len(keys) == 1 and keys[0].startswith("pfx/env.t/node-from-env-"), keys
    assert_same_records(r.records(), [line({"a": 1})])
    err = r.stderr_text()
    assert SECRET not in err, "secret_access_key value appears in the logs"
    assert "${" not in keys[0]


def test_sizes_and_durations_units(rin):
    """All documented unit spellings are accepted."""
    cfg = {"forward": {"max_frame_bytes": "1MB", "max_decompressed_bytes": 4194304,
                       "idle_timeout": "5m"},
           "buffer": {"seal_bytes": "64KiB", "seal_age": "500ms", "quota": "1GiB",
                      "dedupe_window": "2s"},
           "ship": {"shutdown_timeout": "5s", "max_backoff": "500ms"}}
    r = rin(cfg)
    with r.connect() as c:
        c.send(["u.t", T0, {"a": 1}, {"chunk": "u"}])
        c.expect_ack("u")
    # seal_age 500ms: the object appears without shutdown
    r.wait_records(1, timeout=10)
    r.terminate()


def test_defaults_only_empty_config(rin, tmp_path):
    """An empty config file runs (forward port and data_dir are the defaults, so run it in a
    scratch cwd and only check it starts and stops cleanly if 24224 is free)."""
    if port_open(24224) or port_open(2021) or port_open(9880):
        pytest.fail("ports 24224/2021/9880 busy on this machine; cannot check the defaults")
    r = rin({}, start=False, defaults=False)
    r.forward_port = 24224
    r.start()
    with r.connect() as c:
        c.send(["d.t", T0, {"a": 1}, {"chunk": "d"}])
        c.expect_ack("d")
    r.terminate()
    objs = list((r.dir / "rin-data" / "objects").rglob("*.json.gz"))
    assert len(objs) == 1, f"expected one object under ./rin-data/objects, got {objs}"
    time.sleep(0.1)


@pytest.mark.parametrize("example", sorted(p.name for p in (Path(__file__).parent.parent / "examples").glob("*.yaml")))
def test_example_configs_are_valid(example):
    """Every rin-ship config shipped in examples/ passes `rin-ship check-config`."""
    path = Path(__file__).parent.parent / "examples" / example
    done = subprocess.run([str(rin_ship_bin()), "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{example}: {done.stderr}"
    assert "config ok" in done.stdout


EXAMPLES = Path(__file__).parent.parent / "examples"


def test_kubernetes_sidecar_config_is_valid(tmp_path):
    """The rin-ship config inside examples/kubernetes/sidecar.yaml's ConfigMap passes
    `rin-ship check-config`, and the pod's grace period covers ship.shutdown_timeout."""
    import yaml

    docs = [d for d in yaml.safe_load_all((EXAMPLES / "kubernetes" / "sidecar.yaml").read_text())
            if d]
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    text = cm["data"]["rin-ship.yaml"]
    path = tmp_path / "rin-ship.yaml"
    path.write_text(text)
    done = subprocess.run([str(rin_ship_bin()), "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"sidecar.yaml ConfigMap: {done.stderr}"
    assert "config ok: 2 target(s)" in done.stdout, done.stdout

    conf = yaml.safe_load(text)
    shutdown = int(conf["ship"]["shutdown_timeout"].rstrip("s"))
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > shutdown + 5, pod
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "rin-ship")
    assert sidecar["restartPolicy"] == "Always"
    port = int(conf["metrics"]["bind"].rsplit(":", 1)[1])
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    mounts = {m["mountPath"] for m in sidecar["volumeMounts"]}
    assert conf["data_dir"] in mounts, mounts


def test_aws_example(tmp_path):
    """examples/aws: every JSON document parses (including the JSON strings inside SQS
    attributes), and rin.yaml loads in `rin-ship import --dry-run` with IAM_ROLE COPYs."""
    import json
    import os

    for f in sorted((EXAMPLES / "aws").glob("*.json")):
        doc = json.loads(f.read_text())
        for v in doc.values():
            if isinstance(v, str) and v.startswith("{"):
                json.loads(v)
    env = dict(os.environ, REDSHIFT_PASSWORD="not-a-real-password")
    done = subprocess.run(
        [str(rin_ship_bin()), "import", "--config", str(EXAMPLES / "aws" / "rin.yaml"),
         "--dry-run", "logs/access/dt=2026-01-01/hour=00/web-1-0000000001.json.gz",
         "logs/app/dt=2026-01-01/hour=00/web-1-0000000002.json.gz",
         "logs/by-table/web/errors/a.json.gz"],
        capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "not-a-real-password" not in out + done.stderr
    assert '=> target 0 "public"."access_log"' in out, out
    assert '=> target 1 "public"."app_log"' in out, out
    assert '=> target 2 "web"."errors"' in out, out
    assert ("IAM_ROLE 'arn:aws:iam::123456789012:role/rin-ship-redshift-copy' MANIFEST "
            "REGION 'ap-northeast-1' JSON 'auto' GZIP") in out, out
    assert "s3://my-log-bucket/rin-ship/manifests/" in out, out
