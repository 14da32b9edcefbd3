"""Packaging, checked without a container engine or an init system: the Dockerfile's build
steps run as a script on this host and its runtime settings (user, volume, ports, health check)
tried against the binary it lays out; the systemd units through `systemd-analyze verify`; the
Kubernetes manifests parsed, and every port, probe path, environment variable and command line
they name checked against rin-ship itself; the Prometheus rules through promtool, and every
metric the rules and the Grafana dashboard use seen on a real serve's or import's /metrics."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from loadlib import Importer, make_queue, pg_server, pgdb, rin_config, wait_for  # noqa: F401
from rinlib import free_port, port_open, rin_ship_bin

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "examples" / "kubernetes"


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"{tool} is missing: install it with `apt-get install -y {package}` "
                    "(tests/run does)")
    return path


def env_vars_rin_ship_reads() -> set[str]:
    """Every environment variable named in the source: clap's `env = "X"`, std::env::var."""
    names = set()
    for p in (ROOT / "src").rglob("*.rs"):
        text = p.read_text()
        names |= set(re.findall(r'env = "([A-Z_][A-Z0-9_]*)"', text))
        names |= set(re.findall(r'env::var(?:_os)?\("([A-Z_][A-Z0-9_]*)"\)', text))
        names |= set(re.findall(r'(?:addr|env)\("([A-Z_][A-Z0-9_]*)"', text))
    return names


# ---------------------------------------------------------------------------------------------
# the Dockerfile
# ---------------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for ln in text.splitlines():
        ln = ln.strip()
        if ln and not ln.startswith("#"):
            op, _, rest = ln.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_build_steps_and_runtime_settings(tmp_path):
    steps = dockerfile()
    froms = [a for op, a in steps if op == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build"), froms
    runtime = steps[[i for i, (op, _) in enumerate(steps) if op == "FROM"][1]:]
    runs = [a for op, a in steps if op == "RUN"]
    assert any("packaging/docker/build.sh /rootfs" in r for r in runs), runs
    user = next(a for op, a in runtime if op == "USER")
    assert user.split(":")[0] not in ("0", "root"), user
    volume = json.loads(next(a for op, a in runtime if op == "VOLUME"))
    workdir = next(a for op, a in runtime if op == "WORKDIR")
    assert volume == [workdir] == ["/var/lib/rin-ship"], (volume, workdir)
    env = dict(re.findall(r"(\w+)=(\S+)", next(a for op, a in runtime if op == "ENV")))
    known = env_vars_rin_ship_reads()
    assert set(env) <= known, set(env) - known
    exposed = set(next(a for op, a in runtime if op == "EXPOSE").split())
    ports = {v.rsplit(":", 1)[1] for k, v in env.items() if k.endswith("_BIND")}
    assert {p.split("/")[0] for p in exposed} == ports, (exposed, ports)
    health = next(a for op, a in runtime if op == "HEALTHCHECK")
    health_cmd = json.loads(health[health.index("CMD") + 3:].strip())
    entry = json.loads(next(a for op, a in runtime if op == "ENTRYPOINT"))
    cmd = json.loads(next(a for op, a in runtime if op == "CMD"))
    copies = [a for op, a in runtime if op == "COPY"]
    assert any("/rootfs/usr/local/bin/rin-ship /usr/local/bin/rin-ship" in c for c in copies), copies
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert "target/" in dockerignore and ".git/" in dockerignore, dockerignore

    # The build stage's script, on this host (the dev profile and tests/run's features reuse the
    # test build, which every later test runs; the image builds with the release profile).
    rootfs = tmp_path / "rootfs"
    p = subprocess.run(["packaging/docker/build.sh", str(rootfs)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600,
                       env=dict(os.environ, PROFILE="dev",
                                FEATURES=os.environ.get("RIN_SHIP_FEATURES", "redshift,lambda,isal")))
    assert p.returncode == 0, p.stderr[-4000:]
    assert re.match(r"rin-ship \d+\.\d+\.\d+ \(commit ", p.stdout), p.stdout
    binary = rootfs / "usr/local/bin/rin-ship"
    assert os.access(binary, os.X_OK) and (rootfs / "var/lib/rin-ship").is_dir()

    # The image's command, with the image's environment (ports moved to free ones), from its
    # working directory: then its health check, as Docker would run it.
    work = tmp_path / "var-lib-rin-ship"
    work.mkdir()
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("RIN_")}
    moved = {k: v.rsplit(":", 1)[0] + f":{free_port()}" if k.endswith("_BIND") else v
             for k, v in env.items()}
    run_env.update(moved)
    argv = [str(binary) if a == entry[0] else a for a in entry + cmd]
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=work, env=run_env, stdout=log, stderr=log)
    try:
        metrics_port = int(moved["RIN_SHIP_METRICS_BIND"].rsplit(":", 1)[1])
        wait_for(lambda: port_open(metrics_port) or proc.poll() is not None, 30, "the image's serve")
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        hc = subprocess.run([str(binary) if a == health_cmd[0] else a for a in health_cmd],
                            env=run_env, capture_output=True, text=True, timeout=30)
        assert hc.returncode == 0 and hc.stdout == "ok\n", hc
        assert (work / "rin-data" / "buffer").is_dir(), "the data folder is not under WORKDIR"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "serve.log").read_text()
    lines = [json.loads(ln) for ln in (tmp_path / "serve.log").read_text().splitlines() if ln]
    assert any(ln["message"] == "rin-ship is running" for ln in lines), lines
    # Once stopped, the health check fails.
    hc = subprocess.run([str(binary), *health_cmd[1:]], env=run_env, capture_output=True,
                        text=True, timeout=30)
    assert hc.returncode == 1, hc


# ---------------------------------------------------------------------------------------------
# systemd
# ---------------------------------------------------------------------------------------------


def unit(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ln in (ROOT / "packaging" / "systemd" / name).read_text().splitlines():
        if "=" in ln and not ln.lstrip().startswith(("#", "[")):
            k, v = ln.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def seconds(v: str) -> float:
    m = re.fullmatch(r"(\d+)(min|s|m|h)?", v)
    assert m, v
    return int(m.group(1)) * {"min": 60, "m": 60, "h": 3600, "s": 1, None: 1}[m.group(2)]


@pytest.mark.parametrize("name", ["rin-ship.service", "rin-ship-import.service"])
def test_systemd_units_verify(name, tmp_path):
    analyze = need("systemd-analyze", "systemd")
    # verify checks that ExecStart's binary exists: point it at the one under test.
    text = (ROOT / "packaging" / "systemd" / name).read_text()
    assert "ExecStart=/usr/local/bin/rin-ship " in text
    (tmp_path / name).write_text(text.replace("/usr/local/bin/rin-ship", str(rin_ship_bin())))
    p = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stderr.strip() == "" and p.stdout.strip() == "", p
    u = unit(name)
    assert u["Restart"] == ["on-failure"], u
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp",
                      "CapabilityBoundingSet", "SystemCallFilter", "RestrictAddressFamilies"):
        assert hardening in u, hardening
    assert u["DynamicUser"] == ["yes"], u
    assert set(re.findall(r"RIN_SHIP_\w+", " ".join(u.get("Environment", [])))) <= env_vars_rin_ship_reads()


def test_systemd_serve_unit_against_its_config(tmp_path):
    """The serve unit's command line works with the config it names (the S3 example), and
    its stop timeout outlasts that config's ship.shutdown_timeout and the connections' drain."""
    u = unit("rin-ship.service")
    argv = shlex.split(u["ExecStart"][0])
    assert argv[1:3] == ["serve", "--config"], argv
    conf = yaml.safe_load((ROOT / "examples" / "rin-ship-s3.yaml").read_text())
    shutdown = seconds(str(conf.get("ship", {}).get("shutdown_timeout", "30s")))
    drain = 5  # connections read what their clients sent for up to 5 s first
    assert seconds(u["TimeoutStopSec"][0]) > shutdown + drain, u["TimeoutStopSec"]
    # The working directory is the state directory: the default data_dir lands there.
    assert u["WorkingDirectory"] == ["/var/lib/rin-ship"] and u["StateDirectory"] == ["rin-ship"]
    assert "data_dir" not in conf or str(conf["data_dir"]).startswith(("/var/lib/rin-ship", "./", "rin-data"))
    p = subprocess.run([str(rin_ship_bin()), "check-config", "-c",
                        str(ROOT / "examples" / "rin-ship-s3.yaml")],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    imp = unit("rin-ship-import.service")
    assert shlex.split(imp["ExecStart"][0])[1:3] == ["import", "--config"], imp


# ---------------------------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------------------------


def manifests(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            out.append((d["kind"], d["spec"]["template"]["spec"]))
        elif d["kind"] == "CronJob":
            out.append((d["kind"], d["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return out


def rin_ship_containers(pod: dict) -> list[dict]:
    return [c for c in pod.get("initContainers", []) + pod["containers"]
            if c.get("image", "").split("/")[-1].startswith("rin-ship")]


def config_of(docs: list[dict], pod: dict, container: dict, tmp_path: Path) -> Path:
    """The config file the container's --config names, written out from its ConfigMap."""
    args = container["args"]
    path = args[args.index("--config") + 1]
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = next(d for d in docs if d["kind"] == "ConfigMap"
              and d["metadata"]["name"] == volume["configMap"]["name"])
    text = cm["data"][path[len(mount["mountPath"]) + 1:]]
    out = tmp_path / Path(path).name
    out.write_text(text)
    return out


def check_container(docs, kind, pod, c, tmp_path, known_env):
    cfg_path = config_of(docs, pod, c, tmp_path)
    cfg_text = cfg_path.read_text()
    conf = yaml.safe_load(cfg_text)
    command = c["args"][0]
    # Environment: each variable is one rin-ship (or the AWS SDK) reads, or one its config uses.
    used_by_config = set(re.findall(r"\$\{(\w+)", cfg_text)) | set(
        re.findall(r'env "(\w+)"', cfg_text))
    for e in c.get("env", []):
        n = e["name"]
        assert n in known_env or n in used_by_config or n.startswith("AWS_"), (kind, n)
    # Ports and probes: the metrics listener of the config.
    if command == "serve":
        binds = {conf.get("metrics", {}).get("bind", "127.0.0.1:2021"),
                 conf.get("forward", {}).get("bind", "127.0.0.1:24224")}
        metrics = conf.get("metrics", {}).get("bind", "127.0.0.1:2021")
    else:
        metrics = conf["rin_ship"]["metrics_bind"]
        binds = {metrics}
    metrics_port = int(metrics.rsplit(":", 1)[1])
    for port in c.get("ports", []):
        assert any(b.endswith(f":{port['containerPort']}") for b in binds), (kind, port, binds)
    probes = {k: c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in c}
    if kind != "CronJob":
        assert {"readinessProbe", "livenessProbe"} <= set(probes), (kind, probes)
        # A probe from the kubelet must reach the listener: not only the pod's loopback.
        assert not metrics.startswith("127."), (kind, metrics)
    for name, probe in probes.items():
        assert probe["httpGet"]["path"] in ("/healthz", "/readyz"), (kind, name, probe)
        assert probe["httpGet"]["port"] == metrics_port, (kind, name, probe)
    # The command line: what rin-ship itself accepts, with this config.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIN_", "AWS_"))}
    env.update({e["name"]: e.get("value", "from-a-secret") for e in c.get("env", [])})
    env.setdefault("POD_NAME", "web-0")
    args = [str(cfg_path) if a.endswith(cfg_path.name) else a for a in c["args"]]
    if command == "serve":
        check = ["check-config", "--config", str(cfg_path)]
    else:
        check = [*args, "--dry-run", "logs/access/dt=2026-01-01/hour=00/web-0-0000000001.json.gz"]
    p = subprocess.run([str(rin_ship_bin()), *check], capture_output=True, text=True, timeout=60,
                       env=env, cwd=tmp_path)
    assert p.returncode == 0, (kind, check, p.stderr)
    return conf, metrics_port


def test_kubernetes_sidecar_and_importer_name_only_what_exists(tmp_path):
    known = env_vars_rin_ship_reads()
    seen = set()
    for name in ("sidecar.yaml", "importer.yaml"):
        docs = manifests(name)
        for kind, pod in pod_specs(docs):
            for c in rin_ship_containers(pod):
                conf, _ = check_container(docs, kind, pod, c, tmp_path, known)
                seen.add((name, kind, c["args"][0]))
                if kind == "CronJob":
                    job = next(d for d in docs if d["kind"] == "CronJob")["spec"]
                    assert job["concurrencyPolicy"] == "Forbid", job
                    args = c["args"]
                    assert "--batch" in args, args
                    limit = seconds(args[args.index("--max-execution-time") + 1].replace("m", "min"))
                    deadline = job["jobTemplate"]["spec"]["activeDeadlineSeconds"]
                    assert deadline > limit + pod["terminationGracePeriodSeconds"] / 2, (deadline, limit)
                elif c["args"][0] == "import":
                    assert pod["terminationGracePeriodSeconds"] >= 120, pod
    assert seen == {("sidecar.yaml", "Deployment", "serve"), ("importer.yaml", "Deployment", "import"),
                    ("importer.yaml", "CronJob", "import")}, seen


def test_sidecar_memory_limit_covers_its_decompression_settings():
    """The budget the sidecar's config sets (the decompressed payloads, and the lines made
    from them) plus the process at rest and the lines queued for compression fit its
    limits.memory; test_operations measures it under load."""
    docs = manifests("sidecar.yaml")
    conf = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["rin-ship.yaml"])
    pod = pod_specs(docs)[0][1]
    c = rin_ship_containers(pod)[0]
    limit = c["resources"]["limits"]["memory"]
    mib = lambda s: int(re.fullmatch(r"(\d+)(MiB|Mi)", s).group(1))  # noqa: E731
    budget = mib(conf["decompress_memory"])
    assert mib(conf["forward"]["max_decompressed_bytes"]) <= budget
    at_rest, queued_lines = 40, 32
    assert at_rest + 2 * budget + queued_lines + mib(conf["forward"]["max_frame_bytes"]) < mib(limit), conf


# ---------------------------------------------------------------------------------------------
# Prometheus rules and the Grafana dashboard
# ---------------------------------------------------------------------------------------------


def test_alert_rules_pass_promtool():
    promtool = need("promtool", "prometheus")
    rules = ROOT / "examples" / "prometheus"
    p = subprocess.run([promtool, "check", "rules", str(rules / "alerts.yaml")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    p = subprocess.run([promtool, "test", "rules", str(rules / "alerts_test.yaml")],
                       capture_output=True, text=True, timeout=60, cwd=rules)
    assert p.returncode == 0, p.stdout + p.stderr


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b((?:rin|process)_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def families_on(port: int) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE ")}


def test_rules_and_dashboard_use_only_metrics_rin_ship_exports(moto_server, bucket, pgdb, tmp_path):
    from test_embedded import Bare

    alerts = yaml.safe_load((ROOT / "examples" / "prometheus" / "alerts.yaml").read_text())
    used = set()
    for g in alerts["groups"]:
        for rule in g["rules"]:
            used |= metric_names(rule["expr"])
    dash = json.loads((ROOT / "examples" / "grafana" / "rin-ship.json").read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(panels) >= 10, panels
    for p in panels:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            used |= metric_names(t["expr"])
    used |= metric_names(json.dumps(dash["templating"]))

    s = Bare(tmp_path / "serve").start()
    exported = families_on(s.metrics_port)
    s.terminate()
    q, _ = make_queue(moto_server)
    port = free_port()
    imp = Importer(tmp_path, rin_config(moto_server, pgdb, q, bucket,
                                        [{"redshift": {"table": "t"}, "s3": {"key_prefix": "x/"}}],
                                        metrics_bind=f"127.0.0.1:{port}"))
    p = imp.start()
    try:
        wait_for(lambda: port_open(port) or p.poll() is not None, 20, "the importer's metrics")
        exported |= families_on(port)
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    missing = used - exported
    assert not missing, f"used by alerts.yaml or rin-ship.json but not exported: {sorted(missing)}"
