"""Slow and idle clients hold no more than their share (issue 15, hostile load): a forward frame
or an HTTP body that trickles in is cut off at its timeout with nothing stored, and at
`max_connections` the connection that delivered nothing the longest gives its place to a new
client. Every test also checks that a well-behaved client's events were stored exactly once
(nothing acked lost, nothing unacked stored)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from rinlib import Fwd, T0, assert_same_records, enc, line, metric_lines

pytestmark = pytest.mark.timeout(120)


def counter(r, name: str, label: str = "") -> float:
    return sum(v for ln, v in metric_lines(r.metrics(), name) if label in ln)


def stored_values(r) -> list:
    """The `i` of every stored record (HTTP events are timed on arrival), sorted; a record
    without one (something that should not have been stored) fails the comparison."""
    return sorted(rec.get("i", "missing") for rec in r.records())


def trickle(sock: socket.socket, data: bytes, every: float, stop: threading.Event):
    """Sends `data` a byte at a time, one every `every` seconds, until done, closed or `stop`."""
    for b in data:
        if stop.wait(every):
            return
        try:
            sock.sendall(bytes([b]))
        except OSError:
            return


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while True:
            if not sock.recv(4096):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_a_forward_frame_that_trickles_in_is_cut_off_at_frame_timeout(rin):
    r = rin({"forward": {"frame_timeout": "2s", "idle_timeout": "10m"}})
    frame = enc(["slow.t", T0, {"never": "stored"}, {"chunk": "slow-1"}])
    slow = socket.create_connection(("127.0.0.1", r.port))
    stop = threading.Event()
    # A byte every 0.3 s: far inside idle_timeout, but the frame needs ~10 s to arrive whole.
    t = threading.Thread(target=trickle, args=(slow, frame, 0.3, stop), daemon=True)
    started = time.monotonic()
    t.start()
    assert closed_within(slow, 15), "the slow frame's connection was not closed"
    took = time.monotonic() - started
    stop.set()
    assert 1.5 < took < 8, f"closed after {took:.1f} s, frame_timeout is 2 s"
    assert counter(r, "rin_forward_frames_rejected_total", 'reason="slow"') == 1
    # A client that sends whole frames is unaffected.
    with r.connect() as c:
        c.send(["ok.t", T0, {"i": 1}, {"chunk": "ok-1"}])
        c.expect_ack("ok-1")
    r.terminate()
    assert_same_records(r.records(), [line({"i": 1})])
    assert "forward.frame_timeout" in r.stderr_text()


def test_at_forward_max_connections_the_quietest_connection_gives_its_place(rin):
    r = rin({"forward": {"max_connections": 2}})
    time.sleep(0.5)  # the fixture's readiness probe has given its place back
    # Two connections that deliver nothing: one idle, one inside a frame it never finishes.
    idle = socket.create_connection(("127.0.0.1", r.port))
    partial = socket.create_connection(("127.0.0.1", r.port))
    partial.sendall(enc(["never.t", T0, {"x": 1}, {"chunk": "never"}])[:5])
    time.sleep(1.5)  # both quiet for more than the 1 s a place is kept without delivering
    # Two new clients at once get in, each in the place of one of them; their frames are acked.
    with Fwd(r.port) as first, Fwd(r.port) as second:
        for i, c in enumerate((first, second)):
            c.send(["ok.t", T0, {"i": i}, {"chunk": f"ok-{i}"}])
            c.expect_ack(f"ok-{i}")
    expected = [line({"i": 0}), line({"i": 1})]
    assert closed_within(idle, 5) and closed_within(partial, 5)
    assert counter(r, "rin_forward_connections_evicted_total") == 2
    assert counter(r, "rin_forward_connections_refused_total") == 0
    r.terminate()
    assert_same_records(r.records(), expected)


def test_at_forward_max_connections_a_delivering_connection_keeps_its_place(rin):
    r = rin({"forward": {"max_connections": 1}})
    time.sleep(0.5)  # the fixture's readiness probe has given its place back
    with r.connect() as busy:
        # Busy: a frame every 0.2 s, for longer than the quiet time a place is taken after.
        for i in range(8):
            busy.send(["busy.t", T0, {"i": i}, {"chunk": f"b-{i}"}])
            busy.expect_ack(f"b-{i}")
            time.sleep(0.2)
        newcomer = socket.create_connection(("127.0.0.1", r.port))
        # Refused (closed at once), and the busy connection goes on.
        assert closed_within(newcomer, 5)
        busy.send(["busy.t", T0, {"i": 8}, {"chunk": "b-8"}])
        busy.expect_ack("b-8")
    assert counter(r, "rin_forward_connections_refused_total", "max_connections") == 1
    r.terminate()
    assert_same_records(r.records(), [line({"i": i}) for i in range(9)])


def test_an_http_body_that_trickles_in_gets_408_and_is_not_stored(rin):
    r = rin({"http": {"body_timeout": "2s"}})
    body = b'{"never": "stored"}'
    slow = socket.create_connection(("127.0.0.1", r.http_port))
    slow.sendall(b"POST /slow.t HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:3])
    slow.settimeout(10)
    started = time.monotonic()
    answer = slow.recv(4096)
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"http.body_timeout" in answer, answer
    assert 1.5 < took < 8, f"answered after {took:.1f} s, body_timeout is 2 s"
    assert counter(r, "rin_http_requests_rejected_total", 'reason="slow"') == 1
    resp = requests.post(f"http://127.0.0.1:{r.http_port}/ok.t", json={"i": 1}, timeout=10)
    assert resp.status_code == 200, resp.text
    r.terminate()
    assert stored_values(r) == [1]


def test_at_http_max_connections_an_idle_keep_alive_connection_gives_its_place(rin):
    r = rin({"http": {"max_connections": 1}})
    url = f"http://127.0.0.1:{r.http_port}/ok.t"
    # A keep-alive session holds the only place, then goes quiet.
    held = requests.Session()
    assert held.post(url, json={"i": 0}, timeout=10).status_code == 200
    time.sleep(1.5)
    # A new client (a new connection) is served in its place, not left waiting.
    started = time.monotonic()
    resp = requests.post(url, json={"i": 1}, timeout=10, headers={"Connection": "close"})
    assert resp.status_code == 200, resp.text
    assert time.monotonic() - started < 5
    assert counter(r, "rin_http_connections_evicted_total") == 1
    # The evicted session reconnects on its next request.
    assert held.post(url, json={"i": 2}, timeout=10).status_code == 200
    r.terminate()
    assert stored_values(r) == [0, 1, 2]
