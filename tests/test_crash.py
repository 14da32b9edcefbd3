"""SIGKILL at random moments: acked data survives, resends with the same chunk id are not
stored twice."""

from __future__ import annotations

import itertools
import random
import subprocess
import signal
import threading
import time

import pytest

from rinlib import T0, ConnClosed, assert_same_records, entries_bytes, gzip_member, line, str32


class Client:
    """Shared bookkeeping for several sending connections."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.seq = itertools.count()
        self.frames = {}       # chunk id -> (frame, [records])
        self.acked = set()
        self.pending = []      # chunk ids sent (or about to be) and not yet acked, in order
        self.errors = []
        self.killing = False   # set before SIGKILL: errors after that are expected

    def new_frame(self, w):
        with self.lock:
            n = self.rng.randint(1, 25)
            recs = [{"seq": next(self.seq), "w": w, "pad": "x" * self.rng.randint(0, 200)}
                    for _ in range(n)]
            cid = f"w{w}-{recs[0]['seq']}-{self.rng.getrandbits(32):08x}\n"
            mode = self.rng.choice(["forward", "packed", "gzip", "message"])
            tag = f"crash.w{w}"
            if mode == "message":
                recs = recs[:1]
                frame = [tag, T0, recs[0], {"chunk": cid}]
            elif mode == "forward":
                frame = [tag, [[T0, x] for x in recs], {"chunk": cid, "size": len(recs)}]
            elif mode == "packed":
                frame = [tag, str32(entries_bytes([(T0, x) for x in recs])),
                         {"chunk": cid, "size": len(recs), "compressed": "text"}]
            else:
                eb = entries_bytes([(T0, x) for x in recs])
                half = len(recs) // 2
                if half:
                    body = (gzip_member(entries_bytes([(T0, x) for x in recs[:half]]))
                            + gzip_member(entries_bytes([(T0, x) for x in recs[half:]])))
                else:
                    body = gzip_member(eb)
                frame = [tag, body, {"chunk": cid, "size": len(recs), "compressed": "gzip"}]
            self.frames[cid] = (frame, recs)
            self.pending.append(cid)
            return cid, frame

    def mark_acked(self, cid):
        with self.lock:
            self.acked.add(cid)
            if cid in self.pending:
                self.pending.remove(cid)

    def n_acked(self):
        with self.lock:
            return len(self.acked)

    def worker(self, r, w, stop, window=4):
        """Keeps up to `window` frames in flight (pipelined), so that at a SIGKILL some frames
        are likely stored but not yet acked: their resend must then be deduplicated."""
        try:
            c = r.connect(timeout=10)
        except OSError:
            return
        inflight = set()
        try:
            while not stop.is_set() or inflight:
                while not stop.is_set() and len(inflight) < window:
                    cid, frame = self.new_frame(w)
                    inflight.add(cid)
                    c.send(frame)
                got = c.read_obj(15)
                assert isinstance(got, dict) and got.get("ack") in inflight, (
                    f"unexpected reply {got!r}, in flight: {sorted(inflight)}")
                inflight.discard(got["ack"])
                self.mark_acked(got["ack"])
        except (OSError, AssertionError, ConnClosed) as e:
            # expected when the server is killed; an error while it is alive is not
            if not self.killing:
                self.errors.append(f"worker {w}: {e!r} while the server was alive")
        finally:
            c.close()

    def resend_pending(self, r):
        with self.lock:
            todo = list(self.pending)
        with r.connect() as c:
            for cid in todo:
                c.send(self.frames[cid][0])
                c.expect_ack(cid, timeout=20)
                self.mark_acked(cid)

    def all_records(self):
        return [rec for _, recs in self.frames.values() for rec in recs]

    def kill_rounds(self, r, rng, kills, acks, pause):
        """`kills` rounds of: 2 to 4 workers send until `acks` (a (min, max) range) more frames
        are acked, wait `pause()` seconds, SIGKILL rin-ship while they keep sending, restart it.
        A last round stops the workers instead; then every unacked frame is resent until acked."""
        for rnd in range(kills + 1):
            self.resend_pending(r)
            stop = threading.Event()
            nworkers = rng.randint(2, 4)
            ts = [threading.Thread(target=self.worker, args=(r, w, stop), daemon=True)
                  for w in range(nworkers)]
            base = self.n_acked()
            target = base + rng.randint(*acks)
            for t in ts:
                t.start()
            deadline = time.monotonic() + 60
            while self.n_acked() < target:
                assert time.monotonic() < deadline, (
                    f"round {rnd}: only {self.n_acked() - base} acks in 60s; stderr:\n"
                    f"{r.stderr_tail()}")
                assert not self.errors, self.errors
                time.sleep(0.005)
            time.sleep(pause())
            if rnd < kills:
                self.killing = True
                r.kill()  # SIGKILL while the workers are sending
                for t in ts:
                    t.join(20)
                self.killing = False
                print(f"round {rnd}: killed after {self.n_acked()} acks, "
                      f"{len(self.pending)} pending")
                r.start()
            else:
                stop.set()
                for t in ts:
                    t.join(30)
        assert not self.errors, self.errors
        self.resend_pending(r)
        assert not self.pending


# Every chunk encoder: a chunk cut back to its last durable point must close into an object
# holding exactly the committed lines, whatever wrote it.
ENCODERS = {
    "zlib": ({}, ".json.gz", ["gzip", "-t"]),
    "zstd": ({"compression": "zstd"}, ".json.zst", ["zstd", "-t", "-q"]),
    "isal": ({"gzip_engine": "isal"}, ".json.gz", ["gzip", "-t"]),
}


def check_objects(r, encoder: str) -> None:
    _, suffix, tool = ENCODERS[encoder]
    for key in r.objects():
        assert key.endswith(suffix), key
        p = subprocess.run([*tool, str(r.store_dir / key)], capture_output=True, text=True)
        assert p.returncode == 0, f"{' '.join(tool)} {key}: {p.stderr}"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_sigkill_mid_flight_three_times(rin, encoder):
    seed = random.randrange(1 << 30)
    print("seed", seed)
    cl = Client(seed)
    rng = random.Random(seed + 1)
    r = rin({"buffer": {"seal_age": "1s", "seal_bytes": "48KiB", **ENCODERS[encoder][0]}})
    kills = 3
    cl.kill_rounds(r, rng, kills, acks=(5, 60), pause=lambda: rng.random() * 0.3)
    r.terminate()
    assert r.objects()
    check_objects(r, encoder)
    got = r.records()
    expected = [line(x) for x in cl.all_records()]
    # every acked record exactly once, nothing twice, nothing invented
    seqs = [g.get("seq") for g in got]
    dup = sorted({s for s in seqs if seqs.count(s) > 1})[:10] if len(seqs) != len(set(seqs)) else []
    assert not dup, f"records stored twice (seq): {dup} (seed {seed})"
    assert_same_records(got, expected, f"records after 3 SIGKILLs (seed {seed})")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_sigkill_with_open_chunk(rin, encoder):
    """Acked records sitting in an unsealed chunk (seal_age 60s) survive SIGKILL, and a second
    kill right after recovery does not duplicate or lose them."""
    r = rin({"buffer": {"seal_age": "60s", "seal_bytes": "64MiB", **ENCODERS[encoder][0]}})
    expected = []
    with r.connect() as c:
        for i in range(60):
            cid = f"open-{i}"
            recs = [{"i": i, "j": j} for j in range(5)]
            c.send(["open.chunk", [[T0, x] for x in recs], {"chunk": cid}])
            c.expect_ack(cid)
            expected += [line(x) for x in recs]
    time.sleep(0.5)
    assert r.records() == [], "seal_age 60s: nothing should be shipped yet"
    r.kill()
    r.start()
    r.kill()  # killed again right after recovery
    r.start()
    with r.connect() as c:  # resend of an already-acked chunk after two crashes: deduped
        c.send(["open.chunk", [[T0, {"i": 0, "j": j}] for j in range(5)], {"chunk": "open-0"}])
        c.expect_ack("open-0")
    r.terminate()
    assert_same_records(r.records(), expected)
    check_objects(r, encoder)


@pytest.mark.timeout(120)
def test_sigkill_after_sigterm_started(rin):
    """SIGKILL during the SIGTERM drain (uploads in progress) then restart: nothing lost or
    duplicated."""
    r = rin({"buffer": {"seal_age": "60s", "seal_bytes": "8KiB"}})
    expected = []
    with r.connect() as c:
        for i in range(200):
            recs = [{"k": i, "p": "z" * 100}]
            c.send(["term.kill", [[T0, x] for x in recs], {"chunk": f"tk{i}"}])
            c.expect_ack(f"tk{i}")
            expected += [line(x) for x in recs]
    r.proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    r.kill()
    r.start()
    r.terminate()
    assert_same_records(r.records(), expected)
