"""Forward protocol hardening: shared-key handshake (fluentd and fluent-bit styles, user auth),
TLS with client certificates and reload on SIGHUP, UDP heartbeat, zstd frames, and per-connection
limits. Every refusal costs only its own connection: good clients in the same run get through."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import msgpack
import pytest
import zstandard

from rinlib import T0, ConnClosed, Fwd, enc, entries_bytes, line, metric_lines, raw_str

KEY = "s3cr3t-shared-key"


def sha512_hex(*parts: bytes) -> str:
    h = hashlib.sha512()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def secure(extra: dict | None = None) -> dict:
    sec = {"self_hostname": "rin-server", "shared_key": KEY}
    sec.update(extra or {})
    return {"forward": {"security": sec, "handshake_timeout": "1s"}}


def handshake(c: Fwd, key: str = KEY, salt_as_str: bool = False, host: bytes = b"client-1",
              username: str = "", password: str = "") -> list:
    """Reads HELO, sends PING, returns the PONG (already checked for shape)."""
    helo = c.unpacker_raw_read()
    assert helo[0] == b"HELO", helo
    opts = {k.decode(): v for k, v in helo[1].items()}
    nonce, auth_salt = opts["nonce"], opts["auth"]
    assert isinstance(nonce, bytes) and len(nonce) == 16, opts
    assert opts["keepalive"] is True
    salt = os.urandom(16) if salt_as_str else b"fluentd-salt-123"
    digest = sha512_hex(salt, host, nonce, key.encode())
    pw = sha512_hex(auth_salt, username.encode(), password.encode()) if username else ""
    if salt_as_str:
        # fluent-bit: the salt is 16 raw random bytes inside a msgpack *str*
        ping = enc(["PING", raw_str(host), raw_str(salt), digest, username, pw])
    else:
        ping = msgpack.packb(["PING", host, salt, digest, username, pw], use_bin_type=True)
    c.send(ping)
    pong = c.unpacker_raw_read()
    assert pong[0] == b"PONG" and len(pong) == 5, pong
    if pong[1] is True:
        assert pong[3] == b"rin-server"
        assert pong[4].decode() == sha512_hex(salt, b"rin-server", nonce, key.encode()), \
            "PONG digest must be sha512(salt + server_hostname + nonce + shared_key)"
    return pong


def raw_reader(c: Fwd):
    """Adds a reader that keeps msgpack str as bytes (HELO/PONG fields are raw)."""
    unpacker = msgpack.Unpacker(raw=True)

    def read(timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                return next(unpacker)
            except StopIteration:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no reply")
            c.sock.settimeout(left)
            b = c.sock.recv(65536)
            if not b:
                raise ConnClosed("closed")
            unpacker.feed(b)
    c.unpacker_raw_read = read
    return c


def connect(r, **kw) -> Fwd:
    return raw_reader(Fwd(r.port, **kw))


@pytest.mark.parametrize("style", ["fluentd-bin-salt", "fluent-bit-str-salt"])
def test_shared_key_handshake_then_acked_frames(rin, style):
    r = rin(secure())
    with connect(r) as c:
        pong = handshake(c, salt_as_str=(style == "fluent-bit-str-salt"))
        assert pong[1] is True and pong[2] == b"", pong
        recs = [{"i": i, "style": style} for i in range(5)]
        c.send(["sec.ok", [[T0 + i, x] for i, x in enumerate(recs)], {"chunk": "sec-1"}])
        assert c.unpacker_raw_read() == {b"ack": b"sec-1"}
    r.terminate()
    assert r.records() == [line(x, T0 + i) for i, x in enumerate(recs)]


def test_wrong_key_refused_and_good_clients_unharmed(rin):
    r = rin(secure())
    good = connect(r)
    assert handshake(good)[1] is True
    bad = connect(r)
    pong = handshake(bad, key="not-the-key")
    assert pong[1] is False and pong[3] == b"" and pong[4] == b"", pong
    assert b"mismatch" in pong[2]
    with pytest.raises((ConnClosed, ConnectionResetError)):
        bad.unpacker_raw_read(timeout=5)
    # a frame without any handshake is never stored either
    nohs = connect(r)
    nohs.unpacker_raw_read()  # HELO
    nohs.send(["sec.bad", [[T0, {"x": 1}]], {"chunk": "nohs"}])
    with pytest.raises((ConnClosed, ConnectionResetError, socket.timeout)):
        reply = nohs.unpacker_raw_read(timeout=5)
        assert reply != {b"ack": b"nohs"}
        raise ConnClosed("no ack as expected")
    good.send(["sec.good", [[T0, {"ok": True}]], {"chunk": "g1"}])
    assert good.unpacker_raw_read() == {b"ack": b"g1"}
    good.close()
    failures = metric_lines(r.metrics(), "handshake_failures")
    assert any('shared_key_mismatch' in ln and v >= 1 for ln, v in failures), failures
    r.terminate()
    assert r.records() == [line({"ok": True}, T0)]
    assert KEY not in r.stderr_text() and "not-the-key" not in r.stderr_text()


def test_user_auth(rin):
    r = rin(secure({"user_auth": True, "users": [{"username": "alice", "password": "pw1"}]}))
    with connect(r) as c:
        pong = handshake(c, username="alice", password="pw1")
        assert pong[1] is True, pong
    with connect(r) as c:
        pong = handshake(c, username="alice", password="wrong")
        assert pong[1] is False and b"password" in pong[2], pong
    with connect(r) as c:
        pong = handshake(c, username="mallory", password="pw1")
        assert pong[1] is False, pong
    assert "pw1" not in r.stderr_text()


def test_client_stalling_mid_handshake_is_cut_off(rin):
    r = rin(secure())
    staller = connect(r)
    assert staller.unpacker_raw_read()[0] == b"HELO"
    half = msgpack.packb(["PING", b"host", b"salt", "x" * 128, "", ""])
    staller.send(half[:20])  # then nothing
    good = connect(r)
    assert handshake(good)[1] is True
    good.send(["stall.good", [[T0, {"a": 1}]], {"chunk": "s1"}])
    assert good.unpacker_raw_read() == {b"ack": b"s1"}
    t0 = time.monotonic()
    with pytest.raises((ConnClosed, ConnectionResetError)):
        staller.unpacker_raw_read(timeout=10)
    assert time.monotonic() - t0 < 5, "handshake_timeout 1s should close the staller quickly"
    assert any("timeout" in ln for ln, _ in metric_lines(r.metrics(), "handshake_failures"))


def _node(env_extra: dict, port: int, mode: str, n: int):
    node = shutil.which("node")
    mod = Path(__file__).parent.parent / ".tools" / "node" / "node_modules"
    if node is None or not (mod / "@fluent-org" / "logger").exists():
        pytest.fail("Node client missing: tests/run installs it (npm install --no-save --prefix "
                    ".tools/node @fluent-org/logger@1.0.10)")
    env = dict(os.environ, NODE_PATH=str(mod), **env_extra)
    p = subprocess.run([node, str(Path(__file__).with_name("node_client.js")), str(port), mode, "1",
                        str(n), str(T0)], env=env, capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, f"node client failed: {p.stdout}\n{p.stderr}"
    assert json.loads(p.stdout.strip().splitlines()[-1])["ok"] == n


def _node_expected(mode: str, n: int):
    return [line({"i": i, "mode": mode, "s": "x" * (i % 50)}, T0 + i, i * 1000) for i in range(n)]


@pytest.mark.parametrize("mode", ["Forward", "CompressedPackedForward"])
def test_node_client_with_shared_key(rin, mode):
    r = rin(secure())
    _node({"NODE_SHARED_KEY": KEY}, r.port, mode, 50)
    r.terminate()
    assert sorted(json.dumps(x, sort_keys=True) for x in r.records()) == \
        sorted(json.dumps(x, sort_keys=True) for x in _node_expected(mode, 50))


# --- TLS -------------------------------------------------------------------------------------


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)
    return crt, key


def make_cert(d: Path, name: str, ca: tuple[Path, Path], server: bool) -> tuple[Path, Path]:
    key, csr, crt, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=" +
                   ("serverAuth" if server else "clientAuth") + "\n")
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                    "-keyout", str(key), "-out", str(csr)], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
                    "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(crt)],
                   check=True, capture_output=True)
    return crt, key


@pytest.fixture
def pki(tmp_path):
    if shutil.which("openssl") is None:
        pytest.fail("openssl missing: apt-get install -y openssl")
    d = tmp_path / "pki"
    d.mkdir()
    ca = make_ca(d, "test-ca")
    return {"dir": d, "ca": ca, "server": make_cert(d, "server", ca, True),
            "client": make_cert(d, "client", ca, False)}


class TlsFwd(Fwd):
    def __init__(self, port: int, ctx: ssl.SSLContext):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)


def client_ctx(pki, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"][0]))
    if with_cert:
        ctx.load_cert_chain(str(pki["client"][0]), str(pki["client"][1]))
    return ctx


def test_tls_with_client_certificates(rin, pki):
    r = rin({"forward": {"tls": {"cert": str(pki["server"][0]), "key": str(pki["server"][1]),
                                 "client_ca": str(pki["ca"][0])}, "handshake_timeout": "2s"}})
    with TlsFwd(r.port, client_ctx(pki, True)) as c:
        c.send(["tls.ok", [[T0, {"tls": 1}]], {"chunk": "t1"}])
        c.expect_ack("t1")
    # no client certificate: the TLS handshake fails, nothing is stored
    with pytest.raises((ssl.SSLError, ConnClosed, ConnectionResetError, OSError)):
        with TlsFwd(r.port, client_ctx(pki, False)) as c:
            c.send(["tls.bad", [[T0, {"tls": 0}]], {"chunk": "t2"}])
            c.expect_ack("t2")
    # plain TCP on a TLS port is refused, not parsed
    with Fwd(r.port) as plain:
        plain.send(["tls.plain", [[T0, {"tls": 0}]], {"chunk": "t3"}])
        got = b""
        plain.sock.settimeout(5)
        try:
            while chunk := plain.sock.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
        # at most a TLS alert record (content type 0x15), then the connection is closed
        assert got == b"" or got[0] == 0x15, got
    r.terminate()
    assert r.records() == [line({"tls": 1}, T0)]


def test_tls_and_shared_key_with_node_client(rin, pki):
    cfg = secure()
    cfg["forward"]["tls"] = {"cert": str(pki["server"][0]), "key": str(pki["server"][1])}
    r = rin(cfg)
    _node({"NODE_SHARED_KEY": KEY, "NODE_TLS_CA": str(pki["ca"][0])}, r.port, "PackedForward", 30)
    r.terminate()
    assert len(r.records()) == 30


def test_tls_certificate_reload_on_sighup_keeps_connections(rin, pki):
    cert, key = pki["dir"] / "live.crt", pki["dir"] / "live.key"
    shutil.copy(pki["server"][0], cert)
    shutil.copy(pki["server"][1], key)
    r = rin({"forward": {"tls": {"cert": str(cert), "key": str(key)}}})
    ctx = client_ctx(pki, False)
    old = TlsFwd(r.port, ctx)
    old.send(["reload.a", [[T0, {"n": 1}]], {"chunk": "r1"}])
    old.expect_ack("r1")
    first = old.sock.getpeercert(binary_form=True)
    # a new certificate from the same CA, then SIGHUP
    new_crt, new_key = make_cert(pki["dir"], "server2", pki["ca"], True)
    shutil.copy(new_crt, cert)
    shutil.copy(new_key, key)
    r.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while True:
        with TlsFwd(r.port, ctx) as fresh:
            if fresh.sock.getpeercert(binary_form=True) != first:
                fresh.send(["reload.b", [[T0, {"n": 2}]], {"chunk": "r2"}])
                fresh.expect_ack("r2")
                break
        assert time.monotonic() < deadline, "new connections still get the old certificate"
        time.sleep(0.2)
    # the connection opened before the reload still works
    old.send(["reload.a", [[T0, {"n": 3}]], {"chunk": "r3"}])
    old.expect_ack("r3")
    old.close()
    # a broken file on reload keeps the current certificate
    cert.write_text("not a certificate")
    r.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    with TlsFwd(r.port, ctx) as c:
        c.send(["reload.c", [[T0, {"n": 4}]], {"chunk": "r4"}])
        c.expect_ack("r4")
    assert "TLS reload failed" in r.stderr_text()
    r.terminate()
    assert sorted(x["n"] for x in r.records()) == [1, 2, 3, 4]


# --- UDP heartbeat, zstd, limits ------------------------------------------------------------------


def test_udp_heartbeat_on_the_same_port(rin):
    r = rin()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(5)
    u.sendto(b"\x00", ("127.0.0.1", r.port))
    data, _ = u.recvfrom(16)
    assert data == b"\x00"


def test_zstd_compressed_packed_forward(rin):
    r = rin()
    recs = [{"z": i, "pad": "y" * i} for i in range(40)]
    blob = entries_bytes([(T0 + i, x) for i, x in enumerate(recs)])
    # two zstd frames back to back, like a client compressing per batch
    z = zstandard.ZstdCompressor()
    payload = z.compress(blob[: len(blob) // 2]) + z.compress(blob[len(blob) // 2:])
    with Fwd(r.port) as c:
        c.send(["zstd.tag", payload, {"compressed": "zstd", "chunk": "z1"}])
        c.expect_ack("z1")
    r.terminate()
    assert r.records() == [line(x, T0 + i) for i, x in enumerate(recs)]


def test_zstd_bomb_closes_connection(rin):
    r = rin({"forward": {"max_decompressed_bytes": "1MiB"}})
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\x90" * (20 << 20))
    with Fwd(r.port) as c:
        c.send(["bomb", bomb, {"compressed": "zstd", "chunk": "b1"}])
        c.expect_closed()
    assert any("too_large" in ln for ln, _ in metric_lines(r.metrics(), "rejected"))


def test_max_entries_per_frame(rin):
    r = rin({"forward": {"max_entries": 10}})
    with Fwd(r.port) as c:
        c.send(["many", [[T0, {"i": i}] for i in range(11)], {"chunk": "m1"}])
        c.expect_closed()
    with Fwd(r.port) as c:
        c.send(["many", [[T0, {"i": i}] for i in range(10)], {"chunk": "m2"}])
        c.expect_ack("m2")
    r.terminate()
    assert len(r.records()) == 10


def test_max_connections(rin):
    r = rin({"forward": {"max_connections": 2}})

    def synced() -> Fwd:
        # The start-up port probe holds a slot until the server has seen it close: retry.
        deadline = time.monotonic() + 5
        while True:
            c = Fwd(r.port)
            try:
                c.sync()
                return c
            except AssertionError:
                c.close()
                assert time.monotonic() < deadline, "no free connection slot within 5s"
                time.sleep(0.1)

    a, b = synced(), synced()
    third = Fwd(r.port)
    third.expect_closed()
    a.send(["conn.a", [[T0, {"a": 1}]], {"chunk": "ca"}])
    a.expect_ack("ca")
    a.close()
    deadline = time.monotonic() + 5
    while True:  # a slot is free again once the server has seen `a` close
        with Fwd(r.port) as again:
            try:
                again.sync()
                break
            except AssertionError:
                assert time.monotonic() < deadline, "no slot freed 5s after a connection closed"
                time.sleep(0.1)
    b.close()
    assert any("max_connections" in ln for ln, _ in metric_lines(r.metrics(), "connections_refused"))


def test_fluent_signal_metrics_refused(rin):
    r = rin()
    with Fwd(r.port) as c:
        c.send(["fb.metrics", b"\x92\x01\x80", {"fluent_signal": 1, "chunk": "sig"}])
        c.expect_closed()
    assert any("signal" in ln for ln, _ in metric_lines(r.metrics(), "rejected"))
    r.terminate()
    assert r.records() == []
