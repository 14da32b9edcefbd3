"""HTTP intake: every body style fluentd in_http, fluent-bit out_http and Vector's http sink send,
compressed and not, with and without auth, answered 2xx only once durable; 503 (never 400) when
the buffer is full; 400 with a position on a bad body and nothing of it stored."""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import os
import subprocess
import time
import zlib

import msgpack
import pytest
import requests

from rinlib import T0, assert_same_records, line, metric_lines, rfc3339

pytestmark = pytest.mark.timeout(120)


def url(r, path="/http.test"):
    return f"http://127.0.0.1:{r.http_port}{path}"


def post(r, path="/http.test", data=b"", headers=None, **kw):
    return requests.post(url(r, path), data=data, headers=headers or {}, timeout=20, **kw)


def ok(resp):
    assert resp.status_code == 200, f"HTTP {resp.status_code}: {resp.text!r}"
    return resp


def iso(sec, nanos=0):
    base = _dt.datetime.fromtimestamp(sec, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


# ------------------------------------------------------------------------------ body styles

JSON_STYLES = {
    # fluentd in_http: one object
    "object": lambda recs: ("application/json", json.dumps(recs[0]).encode(), recs[:1]),
    # fluentd in_http / fluent-bit `format json` / Vector `codec: json`: an array
    "array": lambda recs: ("application/json", json.dumps(recs).encode(), recs),
    # fluent-bit `json_lines`, Vector `framing.method: newline_delimited`
    "ndjson": lambda recs: ("application/x-ndjson",
                            b"".join(json.dumps(x).encode() + b"\n" for x in recs), recs),
    # fluent-bit `json_stream`: objects back to back
    "json_stream": lambda recs: ("application/json",
                                 b"".join(json.dumps(x).encode() for x in recs), recs),
    # pretty-printed, CRLF, no content type
    "pretty_crlf": lambda recs: (None, json.dumps(recs, indent=2).replace("\n", "\r\n").encode(),
                                 recs),
}


@pytest.mark.parametrize("style", sorted(JSON_STYLES))
def test_json_styles(rin, style):
    r = rin()
    recs = [{"time": T0 + i, "i": i, "msg": f"hello \"{i}\"\n", "nested": {"a": [1, 2.5, None]},
             "big": 2**63 + i, "uni": "日本語 é"} for i in range(5)]
    ctype, body, sent = JSON_STYLES[style](recs)
    headers = {"Content-Type": ctype} if ctype else {}
    ok(post(r, "/app/web", body, headers))
    r.terminate()
    exp = [line({k: v for k, v in x.items() if k != "time"}, sec=x["time"]) for x in sent]
    assert_same_records(r.records(), exp)
    keys = list(r.objects())
    assert all(k.startswith("logs/app.web/dt=2024-05-01/") for k in keys), keys


def test_fluentd_form_and_query_time(rin):
    r = rin()
    # in_http form: json=<record>, time=<epoch>
    ok(post(r, "/form.a", {"json": json.dumps({"a": 1}), "time": str(T0)}))
    # ?time= wins over the record's own time field (as in fluentd)
    ok(post(r, f"/form.b?time={T0}.5", json.dumps({"b": 2, "time": 12345}).encode(),
            {"Content-Type": "application/json"}))
    # form msgpack=<record> (binary, percent-encoded)
    ok(post(r, "/form.c", {"msgpack": msgpack.packb({"c": 3}), "time": str(T0 + 1)}))
    # ?json= with an empty body
    ok(requests.post(url(r, "/form.d"), params={"json": json.dumps({"d": 4}), "time": str(T0)},
                     timeout=10))
    r.terminate()
    assert_same_records(r.records(), [
        line({"a": 1}), line({"b": 2}, nanos=500_000_000), line({"c": 3}, sec=T0 + 1),
        line({"d": 4}),
    ])


def test_fluentd_msgpack_bodies(rin):
    r = rin()
    one = msgpack.packb({"time": T0, "m": 1})
    many = msgpack.packb([{"time": T0 + 1, "m": 2}, {"time": T0 + 2, "m": 3}])
    ok(post(r, "/mp.one", one, {"Content-Type": "application/msgpack"}))
    ok(post(r, "/mp.many", many, {"Content-Type": "application/x-msgpack"}))
    r.terminate()
    assert_same_records(r.records(), [line({"m": 1}), line({"m": 2}, sec=T0 + 1),
                                      line({"m": 3}, sec=T0 + 2)])


def event_time(sec, nanos):
    return msgpack.ExtType(0, sec.to_bytes(4, "big") + nanos.to_bytes(4, "big"))


def test_fluent_bit_msgpack_chunk_with_header_tag(rin):
    """fluent-bit `format msgpack`: its raw chunk, [[EventTime, {meta}], {record}] entries (and
    the older [time, record]); group markers skipped; the tag comes from `header_tag`."""
    r = rin({"http": {"tag_header": "FLUENT-TAG"}})
    body = b"".join([
        msgpack.packb([[-1, {}], {}]),  # group start marker
        msgpack.packb([[event_time(T0, 123456789), {"meta": 1}], {"log": "a", "n": 1}]),
        msgpack.packb([event_time(T0, 5000), {"log": "b", "n": 2}]),
        msgpack.packb([T0 + 3, {"log": "c", "n": 3}]),
        msgpack.packb([[-2, {}], {}]),  # group end marker
    ])
    ok(post(r, "/", body, {"Content-Type": "application/msgpack", "FLUENT-TAG": "fb.msgpack"}))
    r.terminate()
    assert_same_records(r.records(), [
        line({"log": "a", "n": 1}, nanos=123456789), line({"log": "b", "n": 2}, nanos=5000),
        line({"log": "c", "n": 3}, sec=T0 + 3),
    ])
    assert all(k.startswith("logs/fb.msgpack/") for k in r.objects()), list(r.objects())


@pytest.mark.parametrize("fmt", ["json", "json_lines", "json_stream"])
def test_fluent_bit_json_formats_with_date_key(rin, fmt):
    """fluent-bit json formats carry the time in `json_date_key` (default `date`, a double, or
    iso8601 with json_date_format); rin-ship reads it when http.time_key names it."""
    r = rin({"http": {"tag_header": "X-Tag", "time_key": "date"}})
    recs = [{"date": T0 + 0.25, "log": "x"}, {"date": iso(T0, 500_000_000), "log": "y"}]
    if fmt == "json":
        body, ctype = json.dumps(recs).encode(), "application/json"
    elif fmt == "json_lines":
        body, ctype = b"".join(json.dumps(x).encode() + b"\n" for x in recs), "application/x-ndjson"
    else:
        body, ctype = b"".join(json.dumps(x).encode() for x in recs), "application/json"
    ok(post(r, "/", body, {"Content-Type": ctype, "X-Tag": "fb.json"}))
    r.terminate()
    assert_same_records(r.records(), [
        line(recs[0], nanos=250_000_000), line(recs[1], nanos=500_000_000),
    ])


@pytest.mark.parametrize("framing", ["json_array", "newline_delimited"])
def test_vector_http_sink_bodies(rin, framing):
    """Vector http sink with `compression: gzip`: `codec: json` (array) or NDJSON framing;
    Vector's `timestamp` field read as the time when http.time_key names it."""
    r = rin({"http": {"time_key": "timestamp"}})
    events = [{"message": f"m{i}", "host": "h", "source_type": "demo_logs",
               "timestamp": iso(T0, i * 1000)} for i in range(20)]
    if framing == "json_array":
        raw, ctype = json.dumps(events).encode(), "application/json"
    else:
        raw, ctype = b"".join(json.dumps(e).encode() + b"\n" for e in events), "application/x-ndjson"
    ok(post(r, "/vector.demo", gzip.compress(raw), {"Content-Type": ctype,
                                                    "Content-Encoding": "gzip"}))
    r.terminate()
    assert_same_records(r.records(), [line(e, nanos=i * 1000) for i, e in enumerate(events)])


# ------------------------------------------------------------------------------ encodings

def _encodings():
    import cramjam
    import zstandard

    def deflate_raw(b):
        c = zlib.compressobj(wbits=-15)
        return c.compress(b) + c.flush()

    return {
        "gzip": ("gzip", lambda b: gzip.compress(b)),
        "gzip_multi_member": ("gzip", lambda b: gzip.compress(b[:len(b) // 2])
                              + gzip.compress(b[len(b) // 2:])),
        "deflate_zlib": ("deflate", zlib.compress),
        "deflate_raw": ("deflate", deflate_raw),
        "zstd": ("zstd", lambda b: zstandard.ZstdCompressor().compress(b)),
        "snappy_raw": ("snappy", lambda b: bytes(cramjam.snappy.compress_raw(b))),
        "snappy_framed": ("snappy", lambda b: bytes(cramjam.snappy.compress(b))),
        "identity": ("identity", lambda b: b),
    }


@pytest.mark.parametrize("name", ["gzip", "gzip_multi_member", "deflate_zlib", "deflate_raw",
                                  "zstd", "snappy_raw", "snappy_framed", "identity"])
def test_content_encodings(rin, name):
    r = rin()
    coding, fn = _encodings()[name]
    recs = [{"time": T0, "i": i, "pad": "x" * 50} for i in range(300)]
    raw = b"".join(json.dumps(x).encode() + b"\n" for x in recs)
    ok(post(r, "/enc.t", fn(raw), {"Content-Type": "application/x-ndjson",
                                   "Content-Encoding": coding}))
    # msgpack compressed too
    ok(post(r, "/enc.m", fn(msgpack.packb([{"time": T0, "mp": 1}])),
            {"Content-Type": "application/msgpack", "Content-Encoding": coding}))
    r.terminate()
    exp = [line({"i": i, "pad": "x" * 50}) for i in range(300)] + [line({"mp": 1})]
    assert_same_records(r.records(), exp)


def test_large_body_and_metrics(rin):
    """A multi-MB body (parsed off the async workers), then the Prometheus counters."""
    r = rin()
    recs = [{"time": T0, "i": i, "pad": os.urandom(32).hex()} for i in range(20000)]
    raw = b"".join(json.dumps(x).encode() + b"\n" for x in recs)
    assert len(raw) > 1 << 20
    ok(post(r, "/big.t", raw, {"Content-Type": "application/x-ndjson"}))
    text = r.metrics()
    events = metric_lines(text, "rin_events_in_total")
    assert any('intake="http"' in l and 'target="default"' in l and v == 20000
               for l, v in events), events
    byts = metric_lines(text, "rin_bytes_in_total")
    assert any('intake="http"' in l and v == len(raw) for l, v in byts), byts
    assert any('code="200"' in l for l, _ in metric_lines(text, "rin_http_requests_total"))
    assert metric_lines(text, "rin_ack_latency_seconds"), "no ack latency histogram"
    assert any('state="open"' in l for l, _ in metric_lines(text, "rin_buffer_chunks")), text
    assert "big.t" not in text, "metrics must not be labelled by tag (unbounded cardinality)"
    r.terminate()
    assert_same_records(r.records(), [line({k: v for k, v in x.items() if k != "time"})
                                      for x in recs])


# ------------------------------------------------------------------------------ errors

def test_bad_bodies_get_400_with_position_and_store_nothing(rin):
    r = rin()
    bad_ndjson = b'{"time":%d,"ok":1}\n{"ok":2}\n{"ok": 3,\n' % T0
    resp = post(r, "/bad.t", bad_ndjson, {"Content-Type": "application/x-ndjson"})
    assert resp.status_code == 400, resp.text
    assert "line 3" in resp.text or "line 4" in resp.text, resp.text
    resp = post(r, "/bad.t", b'[{"a":1}, 7]', {"Content-Type": "application/json"})
    assert resp.status_code == 400 and "line 1" in resp.text, resp.text
    good = msgpack.packb({"a": 1})
    resp = post(r, "/bad.t", good + b"\xc1", {"Content-Type": "application/msgpack"})
    assert resp.status_code == 400 and f"byte offset {len(good)}" in resp.text, resp.text
    resp = post(r, "/bad.t", b"not gzip at all", {"Content-Encoding": "gzip"})
    assert resp.status_code == 400, resp.text
    resp = post(r, "/bad.t", gzip.compress(b'{"a":1}\n{"a":'), {"Content-Encoding": "gzip"})
    assert resp.status_code == 400, resp.text
    resp = post(r, "/bad.t", b'{"a":1}', {"Content-Encoding": "br"})
    assert resp.status_code == 415, resp.text
    resp = post(r, "/bad.t", {"other": "x"})  # form without json=
    assert resp.status_code == 400, resp.text
    resp = post(r, "/", b'{"a":1}')  # no tag anywhere
    assert resp.status_code == 400 and "tag" in resp.text, resp.text
    resp = requests.get(url(r, "/bad.t"), timeout=10)
    assert resp.status_code == 405, resp.text
    ok(post(r, "/bad.t", json.dumps({"time": T0, "good": 1}).encode()))
    rejected = metric_lines(r.metrics(), "rin_http_requests_rejected_total")
    assert any('reason="malformed"' in l and v >= 4 for l, v in rejected), rejected
    r.terminate()
    assert_same_records(r.records(), [line({"good": 1})])


def test_size_caps_give_413(rin):
    r = rin({"http": {"max_body_bytes": "4KiB", "max_decompressed_bytes": "64KiB"}})
    resp = post(r, "/cap.t", b'{"a":"' + b"x" * 5000 + b'"}')
    assert resp.status_code == 413, resp.text
    bomb = gzip.compress(b'{"a":"' + b"x" * 200_000 + b'"}')
    assert len(bomb) < 4096
    resp = post(r, "/cap.t", bomb, {"Content-Encoding": "gzip"})
    assert resp.status_code == 413 and "max_decompressed_bytes" in resp.text, resp.text
    ok(post(r, "/cap.t", gzip.compress(json.dumps({"time": T0, "fits": 1}).encode()),
            {"Content-Encoding": "gzip"}))
    r.terminate()
    assert_same_records(r.records(), [line({"fits": 1})])


def test_unrouted_tag_is_retryable_and_not_stored(rin):
    r = rin({"targets": [{"name": "only", "match": ["app.**"]}]})
    resp = post(r, "/other.tag", b'{"a":1}')
    assert resp.status_code == 500 and "matches no target" in resp.text, resp.text
    ok(post(r, "/app.x", json.dumps({"time": T0, "a": 2}).encode()))
    r.terminate()
    assert_same_records(r.records(), [line({"a": 2})])


def test_full_buffer_gives_503_with_retry_after(rin, moto_private):
    """Store unreachable + tiny quota: once the buffer is full, requests get 503 + Retry-After,
    never a 4xx (fluent-bit drops data on most 4xx); /readyz says not ready."""
    r = rin({
        "stores": {"s3store": moto_private.store_config("nobucket")},
        "targets": [{"name": "t", "match": ["**"], "store": "s3store"}],
        "buffer": {"seal_age": "200ms", "seal_bytes": "1KiB", "quota": "16KiB"},
        "ship": {"shutdown_timeout": "2s", "max_backoff": "1s"},
        "http": {"retry_after": "3s"},
    })
    statuses = []
    for i in range(200):
        rec = {"i": i, "rnd": os.urandom(1500).hex()}
        resp = post(r, "/full.t", json.dumps(rec).encode())
        statuses.append(resp.status_code)
        assert resp.status_code in (200, 503), (resp.status_code, resp.text)
        if resp.status_code == 503:
            assert resp.headers.get("Retry-After") == "3", resp.headers
            break
        time.sleep(0.05)
    assert 503 in statuses, f"no 503 after {len(statuses)} requests of ~3 KB with a 16 KiB quota"
    assert statuses.count(200) >= 2, statuses
    # still refused a moment later, and readiness reflects it
    time.sleep(0.5)
    assert post(r, "/full.t", b'{"again":1}').status_code == 503
    ready = requests.get(f"http://127.0.0.1:{r.metrics_port}/readyz", timeout=5)
    assert ready.status_code == 503, ready.text
    assert requests.get(f"http://127.0.0.1:{r.metrics_port}/healthz", timeout=5).status_code == 200
    r.terminate(timeout=40)


# ------------------------------------------------------------------------------ auth

AUTH = {"http": {"auth": {"bearer_token": "${RIN_TEST_HTTP_TOKEN}", "username": "fb",
                          "password": "pa:ss"}}}


def test_auth_bearer_and_basic(rin):
    r = rin(AUTH, env={"RIN_TEST_HTTP_TOKEN": "t0ken-123"})
    body = json.dumps({"time": T0, "who": "x"}).encode()
    for headers, kw in [({}, {}), ({"Authorization": "Bearer wrong"}, {}),
                        ({"Authorization": "Bearer t0ken-1234"}, {}),
                        ({"Authorization": "Token t0ken-123"}, {}),
                        ({}, {"auth": ("fb", "wrong")}), ({}, {"auth": ("fbx", "pa:ss")})]:
        resp = post(r, "/auth.t", body, headers, **kw)
        assert resp.status_code == 401, (headers, kw, resp.status_code)
        assert "WWW-Authenticate" in resp.headers
        assert "t0ken" not in resp.text
    ok(post(r, "/auth.t", json.dumps({"time": T0, "who": "bearer"}).encode(),
            {"Authorization": "Bearer t0ken-123"}))
    ok(post(r, "/auth.t", json.dumps({"time": T0, "who": "basic"}).encode(), auth=("fb", "pa:ss")))
    r.terminate()
    assert_same_records(r.records(), [line({"who": "bearer"}), line({"who": "basic"})])
    assert "t0ken-123" not in r.stderr_text() and "pa:ss" not in r.stderr_text()


def test_auth_off_accepts_any_authorization_header(rin):
    r = rin()
    ok(post(r, "/noauth.t", json.dumps({"time": T0, "a": 1}).encode(),
            {"Authorization": "Bearer whatever"}))
    r.terminate()
    assert_same_records(r.records(), [line({"a": 1})])


# ------------------------------------------------------------------------------ curl, h2, TLS

def curl(*args, input=None):
    p = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code} %{http_version}", *args],
                       input=input, capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    body, _, status = p.stdout.decode().rpartition("\n")
    code, version = status.split()
    return int(code), version, body


def test_curl_http1_http2_and_basic_auth(rin):
    r = rin({"http": {"auth": {"username": "u", "password": "p"}}})
    code, version, body = curl("-u", "u:p", "-H", "Content-Type: application/json",
                               "--data-binary", json.dumps({"time": T0, "via": "curl"}),
                               url(r, "/curl.t"))
    assert (code, version) == (200, "1.1"), (code, version, body)
    code, version, body = curl("--http2-prior-knowledge", "-u", "u:p", "-H",
                               "Content-Encoding: gzip", "--data-binary", "@-",
                               url(r, "/curl.h2"),
                               input=gzip.compress(json.dumps({"time": T0, "via": "h2"}).encode()))
    assert (code, version) == (200, "2"), (code, version, body)
    code, _, body = curl("-H", "Content-Type: application/json", "--data-binary", "{}",
                         url(r, "/curl.t"))
    assert code == 401, body
    r.terminate()
    assert_same_records(r.records(), [line({"via": "curl"}), line({"via": "h2"})])


def test_tls(rin, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    r = rin({"http": {"tls": {"cert": str(cert), "key": str(key)}}})
    https = f"https://127.0.0.1:{r.http_port}/tls.t"
    resp = requests.post(https, data=json.dumps({"time": T0, "tls": 1}), verify=str(cert),
                         timeout=10)
    assert resp.status_code == 200, resp.text
    code, _, body = curl("--cacert", str(cert), "--data-binary",
                         json.dumps({"time": T0, "tls": 2}), https)
    assert code == 200, body
    # HTTP/2 negotiated over TLS (ALPN h2)
    code, version, body = curl("--http2", "--cacert", str(cert), "--data-binary",
                               json.dumps({"time": T0, "tls": 3}), https)
    assert (code, version) == (200, "2"), (code, version, body)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"http://127.0.0.1:{r.http_port}/tls.t", data=b"{}", timeout=5)
    r.terminate()
    assert_same_records(r.records(), [line({"tls": 1}), line({"tls": 2}), line({"tls": 3})])


def test_http_disabled_and_sigterm_exit(rin):
    r = rin({"http": {"enabled": False}})
    with pytest.raises(requests.exceptions.ConnectionError):
        post(r, "/x.t", b"{}")
    r.terminate()


def test_keepalive_session_many_requests_then_sigterm(rin):
    """Many requests on one keep-alive connection; SIGTERM with the connection still open ends
    promptly and keeps everything answered 200."""
    r = rin({"buffer": {"seal_age": "60s"}})
    s = requests.Session()
    exp = []
    for i in range(100):
        rec = {"time": T0, "k": i}
        resp = s.post(url(r, "/ka.t"), data=json.dumps(rec), timeout=10)
        assert resp.status_code == 200, resp.text
        exp.append(line({"k": i}))
    t = time.monotonic()
    r.terminate(timeout=30)
    assert time.monotonic() - t < 15
    s.close()
    assert_same_records(r.records(), exp)
    assert rfc3339(T0) in json.dumps(r.records()[0])


@pytest.mark.parametrize("bad,field", [
    ({"auth": {"username": "u"}}, "http.auth"),
    ({"tag_header": "bad header"}, "http.tag_header"),
    ({"bind": "nowhere"}, "http.bind"),
    ({"colour": 1}, "colour"),
])
def test_invalid_http_config_names_the_field(tmp_path, bad, field):
    from rinlib import rin_ship_bin
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"http": bad}))
    done = subprocess.run([str(rin_ship_bin()), "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and field in done.stderr, done.stderr


# ------------------------------------------------------------------------------ idempotency


def test_idempotency_key_resend_is_acked_not_stored_twice(rin):
    """A client that lost a 200 resends with the same Idempotency-Key: 200 again, one copy,
    also after a crash and restart (the key is journaled with the events)."""
    r = rin()
    body = json.dumps([{"time": T0, "n": 1}, {"time": T0, "n": 2}]).encode()
    h = {"Content-Type": "application/json", "Idempotency-Key": "req-0001"}
    ok(post(r, "/idem.a", body, h))
    ok(post(r, "/idem.a", body, h))  # the resend
    ok(post(r, "/idem.a", json.dumps({"time": T0, "n": 3}).encode(),
            {"Content-Type": "application/json", "Idempotency-Key": "req-0002"}))
    ok(post(r, "/idem.a", json.dumps({"time": T0, "n": 4}).encode(),
            {"Content-Type": "application/json"}))  # no key: stored as sent
    r.kill()  # SIGKILL: the chunk is recovered at restart, the keys with it
    r.restart()
    ok(post(r, "/idem.a", body, h))  # resend after the crash
    bad = post(r, "/idem.a", body, {"Content-Type": "application/json",
                                    "Idempotency-Key": "has space"})
    assert bad.status_code == 400, bad.text
    assert "Idempotency-Key" in bad.text
    assert "rin_http_resends_deduplicated_total 1" in r.metrics()  # since the restart
    r.terminate()
    got = sorted(x["n"] for x in r.records())
    assert got == [1, 2, 3, 4], got


def test_idempotency_key_of_a_rejected_request_is_released(rin):
    """A key whose request was not stored (400) can be used again for the fixed request."""
    r = rin()
    h = {"Content-Type": "application/json", "Idempotency-Key": "retry-me"}
    assert post(r, "/idem.b", b'{"time": 1, "n": ', h).status_code == 400
    ok(post(r, "/idem.b", json.dumps({"time": T0, "n": 1}).encode(), h))
    r.terminate()
    assert [x["n"] for x in r.records()] == [1]
