"""Helpers shared by the rin-ship integration tests.

Everything here talks to 127.0.0.1 only.
"""

from __future__ import annotations

import copy
import datetime as _dt
import gzip
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

import msgpack
import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# A fixed event time used all over the tests: 2024-05-01T12:34:56Z
T0 = 1714566896
T0_ISO = "2024-05-01T12:34:56"


def rin_ship_bin() -> Path:
    return Path(os.environ.get("RIN_SHIP_BIN", ROOT / "target" / "debug" / "rin-ship"))


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A port free now and never handed out before in this test run: the kernel may give the
    port it just freed again, and two listeners of one server got the same one (seen in CI)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


def port_open(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ---------------------------------------------------------------------------------------------
# gzip / NDJSON objects
# ---------------------------------------------------------------------------------------------


def gunzip_single_member(data: bytes, what: str = "object") -> bytes:
    """Decompress `data`, asserting it is exactly one gzip member with nothing after it."""
    assert data[:2] == b"\x1f\x8b", f"{what}: not gzip (starts with {data[:8]!r})"
    d = zlib.decompressobj(wbits=31)
    out = d.decompress(data) + d.flush()
    assert d.eof, f"{what}: truncated gzip stream ({len(data)} bytes)"
    assert d.unused_data == b"", (
        f"{what}: more than one gzip member or trailing garbage "
        f"({len(d.unused_data)} bytes after the first member)"
    )
    return out


def unzstd_single_frame(data: bytes, what: str = "object") -> bytes:
    """Decompress `data`, asserting it is exactly one zstd frame with nothing after it."""
    import zstandard
    assert data[:4] == b"\x28\xb5\x2f\xfd", f"{what}: not zstd (starts with {data[:8]!r})"
    d = zstandard.ZstdDecompressor().decompressobj()
    out = d.decompress(data)
    assert d.eof, f"{what}: truncated zstd frame ({len(data)} bytes)"
    assert d.unused_data == b"", (
        f"{what}: more than one zstd frame or trailing garbage ({len(d.unused_data)} bytes)")
    return out


def decompress_object(data: bytes, what: str = "object") -> bytes:
    """An object's NDJSON: one gzip member or one zstd frame, as its magic says."""
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return unzstd_single_frame(data, what)
    return gunzip_single_member(data, what)


def parse_ndjson(text: bytes, what: str = "object") -> list[dict]:
    out = []
    s = text.decode("utf-8")  # the objects must be valid UTF-8
    if s == "":
        return out
    assert s.endswith("\n"), f"{what}: NDJSON does not end with a newline: ...{s[-80:]!r}"
    for i, line in enumerate(s[:-1].split("\n")):
        assert line.strip() != "", f"{what}: empty line {i}"
        try:
            obj = json.loads(line)
        except ValueError as e:  # pragma: no cover - reported as failure
            raise AssertionError(f"{what}: line {i} is not JSON ({e}): {line[:200]!r}")
        assert isinstance(obj, dict), f"{what}: line {i} is not a JSON object: {line[:200]!r}"
        out.append(obj)
    return out


def canon(rec: dict) -> str:
    """Order-preserving canonical form (key order matters, -0.0 stays -0.0)."""
    return json.dumps(rec, ensure_ascii=False, allow_nan=True)


def assert_same_records(got: list[dict], expected: list[dict], what: str = "records"):
    g, e = Counter(map(canon, got)), Counter(map(canon, expected))
    if g == e:
        return
    missing = e - g
    extra = g - e
    dups = {k: n for k, n in g.items() if n > 1}
    msg = [f"{what}: got {len(got)} lines, expected {len(expected)}"]
    if missing:
        msg.append(f"  {sum(missing.values())} missing, e.g. {list(missing)[:3]}")
    if extra:
        msg.append(f"  {sum(extra.values())} unexpected/extra, e.g. {list(extra)[:3]}")
    if dups:
        msg.append(f"  {len(dups)} duplicated lines, e.g. {list(dups.items())[:3]}")
    raise AssertionError("\n".join(msg))


def rfc3339(sec: int, nanos: int = 0, precision: int = 6) -> str:
    base = _dt.datetime.fromtimestamp(sec, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if precision > 0:
        frac = f"{nanos:09d}"[:precision]
        return f"{base}.{frac}Z"
    return base + "Z"


def line(rec: dict, sec: int = T0, nanos: int = 0, precision: int = 6, time_key="time",
         tag=None, tag_key=None) -> dict:
    """The NDJSON object rin-ship must write for `rec` (default config)."""
    out = {}
    if time_key:
        out[time_key] = rfc3339(sec, nanos, precision)
    if tag_key:
        out[tag_key] = tag
    for k, v in rec.items():
        if k in (time_key, tag_key):
            continue
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# msgpack frame building (hand-made where the library would pick another encoding)
# ---------------------------------------------------------------------------------------------


class Raw:
    """Bytes spliced verbatim into an encoded frame."""

    def __init__(self, b: bytes):
        self.b = b


def str_hdr(n: int, force32: bool = False) -> bytes:
    if force32:
        return b"\xdb" + struct.pack(">I", n)
    if n < 32:
        return bytes([0xA0 | n])
    if n < 256:
        return b"\xd9" + bytes([n])
    if n < 65536:
        return b"\xda" + struct.pack(">H", n)
    return b"\xdb" + struct.pack(">I", n)


def bin_hdr(n: int) -> bytes:
    if n < 256:
        return b"\xc4" + bytes([n])
    if n < 65536:
        return b"\xc5" + struct.pack(">H", n)
    return b"\xc6" + struct.pack(">I", n)


def str32(b: bytes) -> Raw:
    """`b` encoded as msgpack str32 (what fluentd's out_forward sends)."""
    return Raw(str_hdr(len(b), force32=True) + b)


def raw_str(b: bytes) -> Raw:
    """A msgpack str holding arbitrary (maybe invalid UTF-8) bytes."""
    return Raw(str_hdr(len(b)) + b)


def fixext8_time(sec: int, nanos: int) -> Raw:
    return Raw(b"\xd7\x00" + struct.pack(">II", sec, nanos))


def ext8_time(sec: int, nanos: int) -> Raw:
    return Raw(b"\xc7\x08\x00" + struct.pack(">II", sec, nanos))


def enc(o) -> bytes:
    if isinstance(o, Raw):
        return o.b
    if isinstance(o, (list, tuple)):
        n = len(o)
        h = bytes([0x90 | n]) if n < 16 else (b"\xdc" + struct.pack(">H", n) if n < 65536
                                               else b"\xdd" + struct.pack(">I", n))
        return h + b"".join(enc(x) for x in o)
    if isinstance(o, dict):
        n = len(o)
        h = bytes([0x80 | n]) if n < 16 else (b"\xde" + struct.pack(">H", n) if n < 65536
                                               else b"\xdf" + struct.pack(">I", n))
        return h + b"".join(enc(k) + enc(v) for k, v in o.items())
    return msgpack.packb(o, use_bin_type=True)


def entries_bytes(entries) -> bytes:
    return b"".join(enc([t, r]) for t, r in entries)


def gzip_member(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


# ---------------------------------------------------------------------------------------------
# forward connections
# ---------------------------------------------------------------------------------------------


class ConnClosed(Exception):
    pass


class Fwd:
    """One forward-protocol TCP connection."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)

    def send(self, data) -> None:
        if not isinstance(data, (bytes, bytearray)):
            data = enc(data)
        self.sock.sendall(data)

    def read_obj(self, timeout: float = 10.0):
        """Next msgpack object from the server. Raises socket.timeout or ConnClosed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return next(self.unpacker)
            except StopIteration:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no reply from server")
            self.sock.settimeout(left)
            try:
                b = self.sock.recv(65536)
            except ConnectionResetError:
                raise ConnClosed("connection reset")
            if not b:
                raise ConnClosed("connection closed by server")
            self.unpacker.feed(b)

    def expect_ack(self, chunk: str, timeout: float = 10.0):
        try:
            got = self.read_obj(timeout)
        except socket.timeout:
            raise AssertionError(f"no ack for chunk {chunk!r} within {timeout}s")
        except ConnClosed as e:
            raise AssertionError(f"connection closed while waiting for ack of {chunk!r}: {e}")
        assert got == {"ack": chunk}, (
            f"ack mismatch: expected {{'ack': {chunk!r}}} (ack value as msgpack str), got {got!r}"
        )

    def sync(self, timeout: float = 10.0) -> None:
        """Barrier: an acked Forward frame with no entries. Frames on one connection are handled
        in order, so once it is acked every earlier frame on this connection was processed.
        (Used before SIGTERM where the records were sent without ack.)"""
        self._nsync = getattr(self, "_nsync", 0) + 1
        cid = f"rin-test-sync-{self._nsync}"
        self.send(["rin.test.sync", [], {"chunk": cid}])
        self.expect_ack(cid, timeout)

    def expect_closed(self, timeout: float = 10.0) -> None:
        """Assert the server closes this connection (EOF or reset) within timeout; any data
        (e.g. an ack) before that is an error."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"server did not close the connection within {timeout}s")
            self.sock.settimeout(left)
            try:
                b = self.sock.recv(65536)
            except ConnectionResetError:
                return
            except socket.timeout:
                continue
            if not b:
                return
            raise AssertionError(f"server sent {b[:100]!r} instead of closing the connection")

    def expect_silence(self, seconds: float) -> None:
        self.sock.settimeout(seconds)
        try:
            b = self.sock.recv(65536)
        except socket.timeout:
            return
        raise AssertionError(f"expected no reply, got {b[:100]!r}")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


# ---------------------------------------------------------------------------------------------
# the server under test
# ---------------------------------------------------------------------------------------------

ALL = []  # every RinShip created in the current test (for stderr on failure / cleanup)


class RinShip:
    def __init__(self, workdir: Path, config: dict | None = None, name: str = "rin",
                 env: dict | None = None, defaults: bool = True):
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.data_dir = self.dir / "data"
        self.forward_port = free_port()
        self.metrics_port = free_port()
        self.http_port = free_port()
        base = {
            "node": "test-node",
            "data_dir": str(self.data_dir),
            "forward": {"bind": f"127.0.0.1:{self.forward_port}"},
            "http": {"bind": f"127.0.0.1:{self.http_port}"},
            "buffer": {"seal_age": "1s"},
            "ship": {"shutdown_timeout": "5s", "max_backoff": "1s"},
            "metrics": {"enabled": True, "bind": f"127.0.0.1:{self.metrics_port}"},
        }
        self.config = deep_merge(base, config or {}) if defaults else (config or {})
        self.config_path = self.dir / "config.yaml"
        self.env = dict(os.environ)
        self.env.setdefault("RUST_BACKTRACE", "1")
        if env:
            self.env.update(env)
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.stderr_paths: list[Path] = []
        ALL.append(self)

    # -- config / process -------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.forward_port

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def buffer_dir(self) -> Path:
        return self.data_dir / "buffer"

    def write_config(self):
        # YAML is a superset of JSON
        self.config_path.write_text(json.dumps(self.config, indent=2) + "\n")

    def stderr_text(self) -> str:
        parts = []
        for p in self.stderr_paths:
            try:
                parts.append(f"----- {p.name} -----\n" + p.read_text(errors="replace"))
            except OSError:
                pass
        return "\n".join(parts)

    def stderr_tail(self, n: int = 4000) -> str:
        t = self.stderr_text()
        return t[-n:]

    def start(self, wait: bool = True, timeout: float = 30.0):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        b = rin_ship_bin()
        assert b.exists(), f"rin-ship binary not found at {b} (run `cargo build` or set RIN_SHIP_BIN)"
        self.write_config()
        self.starts += 1
        errp = self.dir / f"stderr.{self.starts}.log"
        self.stderr_paths.append(errp)
        self._err = open(errp, "wb")
        self.proc = subprocess.Popen(
            [str(b), "serve", "--config", str(self.config_path)],
            cwd=self.dir, env=self.env, stdin=subprocess.DEVNULL,
            stdout=self._err, stderr=self._err,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError(
                    f"rin-ship exited with {rc} during startup; stderr:\n{self.stderr_tail()}")
            if port_open(self.forward_port):
                return
            time.sleep(0.05)
        raise AssertionError(
            f"rin-ship did not accept TCP on {self.forward_port} within {timeout}s; "
            f"stderr:\n{self.stderr_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self):
        assert self.alive(), (
            f"rin-ship is not running (exit {self.proc.returncode if self.proc else None}); "
            f"stderr:\n{self.stderr_tail()}")

    def terminate(self, timeout: float = 60.0, expect: int | None = 0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"rin-ship did not exit within {timeout}s of SIGTERM; stderr:\n{self.stderr_tail()}")
        finally:
            self._err.close()
        if expect is not None:
            assert rc == expect, (
                f"rin-ship exit status after SIGTERM: {rc}, expected {expect}; "
                f"stderr:\n{self.stderr_tail()}")
        return rc

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if self.proc is not None:
            self._err.close()

    def restart(self, wait: bool = True):
        if self.alive():
            self.terminate()
        return self.start(wait=wait)

    def cleanup(self):
        if self.alive():
            self.kill()

    # -- output ----------------------------------------------------------------------------
    def objects(self, store_dir: Path | None = None) -> dict[str, bytes]:
        root = Path(store_dir or self.store_dir)
        out = {}
        if not root.exists():
            return out
        for p in sorted(root.rglob("*")):
            if p.is_file():
                rel = p.relative_to(root).as_posix()
                # skip in-progress temp files a store may use for atomic writes
                out[rel] = p.read_bytes()
        return out

    def records_by_key(self, store_dir: Path | None = None) -> dict[str, list[dict]]:
        out = {}
        for key, data in self.objects(store_dir).items():
            out[key] = parse_ndjson(decompress_object(data, key), key)
        return out

    def records(self, store_dir: Path | None = None) -> list[dict]:
        out = []
        for recs in self.records_by_key(store_dir).values():
            out.extend(recs)
        return out

    def wait_records(self, n: int, timeout: float = 20.0, store_dir: Path | None = None):
        deadline = time.monotonic() + timeout
        recs = []
        while time.monotonic() < deadline:
            try:
                recs = self.records(store_dir)
            except (AssertionError, OSError):
                recs = []  # object being written; try again
            if len(recs) >= n:
                return recs
            time.sleep(0.2)
        raise AssertionError(
            f"only {len(recs)} of {n} records in {store_dir or self.store_dir} after {timeout}s; "
            f"stderr:\n{self.stderr_tail()}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as r:
            return r.read().decode()

    def connect(self, timeout: float = 10.0) -> Fwd:
        return Fwd(self.forward_port, timeout)


# ---------------------------------------------------------------------------------------------
# moto S3
# ---------------------------------------------------------------------------------------------


class Moto:
    def __init__(self, workdir: Path, port: int | None = None):
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = None
        self.n = 0

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0):
        exe = VENV_BIN / "moto_server"
        assert exe.exists(), (
            f"{exe} missing: install it with `{VENV_BIN / 'pip'} install -r tests/requirements.txt`")
        self.n += 1
        self._log = open(self.workdir / f"moto.{self.n}.log", "wb")
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self._log, stderr=self._log,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"moto_server exited: {(self.workdir / f'moto.{self.n}.log').read_text()}")
            if port_open(self.port):
                return self
            time.sleep(0.05)
        raise AssertionError("moto_server did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
        self.proc = None

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="x", aws_secret_access_key="y",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def store_config(self, bucket: str, prefix: str = "") -> dict:
        return {"type": "s3", "bucket": bucket, "prefix": prefix, "region": "us-east-1",
                "endpoint": self.endpoint, "force_path_style": True,
                "access_key_id": "x", "secret_access_key": "y"}

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        c = self.client()
        out = {}
        token = None
        while True:
            kw = {"Bucket": bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            r = c.list_objects_v2(**kw)
            for o in r.get("Contents", []):
                out[o["Key"]] = c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            if not r.get("IsTruncated"):
                return out
            token = r["NextContinuationToken"]

    def records_by_key(self, bucket: str, prefix: str = "") -> dict[str, list[dict]]:
        return {k: parse_ndjson(decompress_object(v, k), k)
                for k, v in self.objects(bucket, prefix).items()}

    def records(self, bucket: str, prefix: str = "") -> list[dict]:
        out = []
        for v in self.records_by_key(bucket, prefix).values():
            out.extend(v)
        return out

    def wait_records(self, bucket: str, n: int, timeout: float = 30.0, prefix: str = ""):
        deadline = time.monotonic() + timeout
        recs = []
        while time.monotonic() < deadline:
            recs = self.records(bucket, prefix)
            if len(recs) >= n:
                return recs
            time.sleep(0.3)
        raise AssertionError(f"only {len(recs)} of {n} records in s3://{bucket}/{prefix} after {timeout}s")


def metric_lines(text: str, *needles: str) -> list[tuple[str, float]]:
    """(line, value) for sample lines of metrics starting with rin_ whose name contains any needle."""
    out = []
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        name = ln.split("{", 1)[0].split(" ", 1)[0]
        if not name.startswith("rin_"):
            continue
        if any(n in name.lower() for n in needles):
            try:
                out.append((ln, float(ln.rsplit(" ", 1)[1])))
            except ValueError:
                pass
    return out


class Tmux:
    """A tmux server of the test's own (its own socket), so nothing else is touched. Tests of
    what a user sees on a terminal (rin-ship top, progress bars) run the binary in its pane."""

    def __init__(self, name: str):
        if not shutil.which("tmux"):
            pytest.fail("tmux is missing: install it with `apt-get install -y tmux` "
                        "(tests/run does)")
        self.sock = name

    def __call__(self, *args, check=True) -> str:
        p = subprocess.run(["tmux", "-L", self.sock, "-f", "/dev/null", *args],
                           capture_output=True, text=True, timeout=20)
        if check:
            assert p.returncode == 0, (args, p.stderr)
        return p.stdout

    def screen(self, target: str = "top") -> str:
        return self("capture-pane", "-p", "-t", target)

    def run(self, target: str, command: str, label: str):
        """Runs `command` in pane `target` under bash, which then prints `<label> exit=<status>`
        (tmux's own #{pane_dead_status} is sometimes left empty for a pane that exited; bash
        also goes on after a Ctrl-C that its child handled and exited from)."""
        self("respawn-pane", "-k", "-t", target,
             f"bash -c '{command}; echo {label} exit=$?; sleep 60'")

    def exit_status(self, target: str, label: str, timeout: float) -> int:
        """The status [`run`] printed, once it has (AssertionError with the screen after
        `timeout` seconds)."""
        import re
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(rf"^{re.escape(label)} exit=(\d+)$", self.screen(target), re.M)
            if m:
                return int(m.group(1))
            time.sleep(0.2)
        raise AssertionError(f"{label} did not exit within {timeout} s; the screen:\n"
                             f"{self.screen(target)}")

    def kill(self):
        self("kill-server", check=False)

