#!/usr/bin/env python3
"""Soak and overload run of `rin-ship serve` over Fluent forward (docs/durability.md, "Soak and
overload").

    .venv/bin/python benches/soak.py --short                 # about 50 s, what CI runs
    .venv/bin/python benches/soak.py [--long] [--minutes 30] # the long local run
    .venv/bin/python benches/soak.py --bin target/release/rin-ship --minutes 5

Owns: one throw-away `serve` (rinlib's RinShip: a temporary data folder, free 127.0.0.1
ports, the local object store), the load it offers in three phases (steady: K paced
connections waiting for each ack; overload: 10x that rate on more connections that do not
wait for acks, with gzip CompressedPackedForward frames against a small decompression budget,
which wait for room or are refused as busy and resent; recovery: steady again), a sample each
second of the process's RSS and of the decompression and buffer gauges from /metrics, every
ack latency, the table it prints, and the check of its invariants: every acked chunk's events
are in the shipped objects exactly once (and nothing else is, nor anything twice), peak RSS
(VmHWM) under --rss-limit-mib, the sampled rin_decompress_bytes within the budget. Exits 1
when one fails, 2 when serve itself failed (did not start, or exited during the run).

Must never: build the binary (no cargo: it uses the one given), talk to anything but
127.0.0.1, start more than the one server, or remove anything but the temporary folder it
made (kept with --keep, and on failure).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from rinlib import (ConnClosed, Fwd, RinShip, decompress_object, metric_lines,  # noqa: E402
                    parse_ndjson)

PHASES = ("steady", "overload", "recovery")
MIB = 1 << 20


# ---------------------------------------------------------------------------------------------
# bookkeeping
# ---------------------------------------------------------------------------------------------


class PhaseStats:
    def __init__(self):
        self.new = 0            # frames made (first send) in this phase
        self.gzip = 0           # of which CompressedPackedForward (gzip)
        self.sends = 0          # sends, resends included
        self.acked = 0          # sends that got their ack
        self.failed = 0         # sends that got none: connection closed (refused) or ack timeout
        self.events_acked = 0
        self.latencies: list[float] = []   # seconds, send -> ack, one per acked send
        self.samples: list[dict] = []      # one a second: rss, gauges


class Run:
    """What every connection and the sampler report to, under one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.phase = PHASES[0]
        self.stats = {p: PhaseStats() for p in PHASES}
        self.frames: dict[str, int] = {}   # chunk id -> events in it
        self.acked: set[str] = set()
        self.errors: list[str] = []        # protocol surprises (a wrong ack): invariant failures
        self.sending_ends = {}             # stream kind -> monotonic time it stops new frames

    def made(self, cid: str, n: int, gz: bool):
        with self.lock:
            self.frames[cid] = n
            s = self.stats[self.phase]
            s.new += 1
            s.gzip += gz

    def sent(self) -> str:
        with self.lock:
            self.stats[self.phase].sends += 1
            return self.phase

    def ack(self, phase: str, cid: str, n: int, latency: float):
        with self.lock:
            s = self.stats[phase]
            s.acked += 1
            s.latencies.append(latency)
            if cid not in self.acked:
                self.acked.add(cid)
                s.events_acked += n

    def failed(self, phase: str, k: int = 1):
        with self.lock:
            self.stats[phase].failed += k

    def error(self, msg: str):
        with self.lock:
            self.errors.append(msg)


# ---------------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------------

PACKER = msgpack.Packer(use_bin_type=True)


def entries(cid: str, n: int, msg: str) -> bytes:
    """PackedForward entries, each `[time, {"c": chunk id, "i": index, "msg": msg}]` (the C
    packer: rinlib's hand encoder costs a core at these rates)."""
    t = int(time.time())
    return b"".join(PACKER.pack([t, {"c": cid, "i": i, "msg": msg}]) for i in range(n))


def packed_forward(tag: str, cid: str, n: int, msg: str) -> bytes:
    return msgpack.packb([tag, entries(cid, n, msg), {"chunk": cid, "size": n}],
                         use_bin_type=True)


def compressed_packed_forward(tag: str, cid: str, n: int, msg: str) -> bytes:
    body = gzip.compress(entries(cid, n, msg), compresslevel=1, mtime=0)
    return msgpack.packb([tag, body, {"chunk": cid, "size": n, "compressed": "gzip"}],
                         use_bin_type=True)


# ---------------------------------------------------------------------------------------------
# one forward connection
# ---------------------------------------------------------------------------------------------


class Stream(threading.Thread):
    """One client connection: makes frames at `fps` (while its kind is sending), keeps at most
    `window` unacked, and resends every frame whose connection closed (or whose ack did not
    come within `ack_timeout`) on a new connection, with the same chunk id, as fluentd does.
    window 1 is a client that waits for each ack; a larger one does not wait (behind its
    schedule, it sends as fast as the window lets)."""

    MAX_TRIES = 50

    def __init__(self, run: Run, port: int, kind: str, name: str, fps: float, window: int,
                 n: int, msg: str, gz: bool, ack_timeout: float, drain_s: float):
        super().__init__(name=name, daemon=True)
        self.run_, self.port, self.kind = run, port, kind
        self.fps, self.window, self.n, self.msg, self.gz = fps, window, n, msg, gz
        self.ack_timeout, self.drain_s = ack_timeout, drain_s
        self.tag = f"soak.{kind}"
        self.seq = itertools.count(1)
        self.fwd: Fwd | None = None
        self.inflight: collections.OrderedDict = collections.OrderedDict()  # cid -> item
        self.resend: collections.deque = collections.deque()
        self.tries: collections.Counter = collections.Counter()
        self.connects = 0

    def make(self):
        cid = f"{self.name}-{next(self.seq)}"
        build = compressed_packed_forward if self.gz else packed_forward
        frame = build(self.tag, cid, self.n, self.msg)
        self.run_.made(cid, self.n, self.gz)
        return cid, frame

    def drop_connection(self):
        """The connection is gone: its unacked frames go back, in order, to be resent."""
        if self.fwd is not None:
            self.fwd.close()
            self.fwd = None
        for cid, (frame, _t, phase) in reversed(self.inflight.items()):
            self.run_.failed(phase)
            if self.tries[cid] < self.MAX_TRIES:
                self.resend.appendleft((cid, frame))
        self.inflight.clear()

    def run(self):
        interval = 1.0 / self.fps
        next_t = time.monotonic()
        while True:
            now = time.monotonic()
            end = self.run_.sending_ends.get(self.kind)
            sending = end is None or now < end
            if not sending and (not (self.inflight or self.resend) or now > end + self.drain_s):
                break
            if self.fwd is None:
                try:
                    self.fwd = Fwd(self.port, timeout=self.ack_timeout)
                    self.connects += 1
                except OSError:
                    time.sleep(0.2)
                    continue
            if len(self.inflight) < self.window and (self.resend or (sending and now >= next_t)):
                if self.resend:
                    cid, frame = self.resend.popleft()
                else:
                    cid, frame = self.make()
                    # Behind schedule by more than a second: catch up no faster than the window.
                    next_t = max(next_t + interval, now - 1.0)
                self.tries[cid] += 1
                try:
                    self.fwd.sock.settimeout(self.ack_timeout)
                    phase = self.run_.sent()
                    self.inflight[cid] = (frame, time.monotonic(), phase)
                    self.fwd.send(frame)
                except OSError:
                    self.drop_connection()
                    time.sleep(0.1)
                continue
            wait = max(0.001, min(next_t - now, 0.05)) if sending else 0.05
            if not self.inflight:
                time.sleep(wait)
                continue
            try:
                got = self.fwd.read_obj(timeout=wait)
            except socket.timeout:
                _frame, t, _phase = next(iter(self.inflight.values()))
                if time.monotonic() - t > self.ack_timeout:
                    self.drop_connection()
                continue
            except (ConnClosed, OSError):
                self.drop_connection()
                time.sleep(0.1)
                continue
            cid = got.get("ack") if isinstance(got, dict) else None
            if cid not in self.inflight:
                self.run_.error(f"{self.name}: unexpected reply {got!r}")
                self.drop_connection()
                continue
            _frame, t, phase = self.inflight.pop(cid)
            self.run_.ack(phase, cid, self.n, time.monotonic() - t)
        if self.fwd is not None:
            self.fwd.close()


# ---------------------------------------------------------------------------------------------
# sampling the process
# ---------------------------------------------------------------------------------------------


def proc_status_kib(pid: int, field: str) -> int:
    """A `VmRSS:`-style line of /proc/PID/status, in KiB (0 once the process is gone)."""
    try:
        for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
            if ln.startswith(field + ":"):
                return int(ln.split()[1])
    except OSError:
        pass
    return 0


def gauges(text: str) -> dict[str, float]:
    """The sampled figures of one /metrics text, summed over labels."""
    want = {
        "decompress": "rin_decompress_bytes", "budget": "rin_decompress_budget_bytes",
        "buffer": "rin_buffer_bytes", "chunks": "rin_buffer_chunks",
        "events_in": "rin_events_in_total", "events_out": "rin_events_out_total",
        "dedup": "rin_forward_resends_deduplicated_total",
        "conn_refused": "rin_forward_connections_refused_total",
    }
    out = dict.fromkeys(want, 0.0)
    for ln, v in metric_lines(text, *want.values()):
        name = ln.split("{", 1)[0].split(" ", 1)[0]
        for k, m in want.items():
            if name == m:
                out[k] += v
    # Counters by one label: rejected_<reason>, waits_<outcome> (binaries without the
    # budget's bounded wait have no rin_decompress_waits_total).
    for metric, label, prefix in (("rin_forward_frames_rejected_total", "reason", "rejected_"),
                                  ("rin_decompress_waits_total", "outcome", "waits_")):
        for ln, v in metric_lines(text, metric):
            value = ln.split(f'{label}="', 1)[1].split('"', 1)[0] if f'{label}="' in ln else "?"
            out[prefix + value] = out.get(prefix + value, 0.0) + v
    return out


class Sampler(threading.Thread):
    def __init__(self, run: Run, rin: RinShip):
        super().__init__(name="sampler", daemon=True)
        self.run_, self.rin = run, rin
        self.stop = threading.Event()
        self.scrape_failures = 0
        self.last: dict[str, float] = {}

    def run(self):
        while not self.stop.wait(1.0):
            s = {"rss": proc_status_kib(self.rin.proc.pid, "VmRSS") * 1024}
            try:
                g = gauges(self.rin.metrics())
                s.update(g)
                self.last = g
            except OSError:
                self.scrape_failures += 1
            with self.run_.lock:
                self.run_.stats[self.run_.phase].samples.append(s)


# ---------------------------------------------------------------------------------------------
# the invariants
# ---------------------------------------------------------------------------------------------


def count_objects(store: Path, frames: dict[str, int]):
    """Reads every object once, counting each (chunk id, index); returns (objects, events,
    {cid: bytearray of counts}, events of unknown chunks)."""
    seen = {cid: bytearray(n) for cid, n in frames.items()}
    objects = events = unknown = 0
    for p in sorted(store.rglob("*")):
        if not p.is_file():
            continue
        objects += 1
        key = p.relative_to(store).as_posix()
        for rec in parse_ndjson(decompress_object(p.read_bytes(), key), key):
            events += 1
            counts = seen.get(rec.get("c"))
            i = rec.get("i")
            if counts is None or not isinstance(i, int) or not 0 <= i < len(counts):
                unknown += 1
            else:
                counts[i] = min(counts[i] + 1, 255)
    return objects, events, seen, unknown


def check_exactly_once(run: Run, store: Path) -> tuple[list[str], dict]:
    objects, events, seen, unknown = count_objects(store, run.frames)
    fails = []
    missing = dup = 0
    missing_eg, dup_eg = [], []
    for cid, counts in seen.items():
        if cid in run.acked and counts.count(0):
            missing += counts.count(0)
            missing_eg.append(cid)
        d = sum(c - 1 for c in counts if c > 1)
        if d:
            dup += d
            dup_eg.append(cid)
    unacked_stored = sum(1 for cid, c in seen.items() if cid not in run.acked and any(c))
    if missing:
        fails.append(f"{missing} events of acked chunks missing from the objects, e.g. "
                     f"{missing_eg[:3]}")
    if dup:
        fails.append(f"{dup} events stored more than once, e.g. {dup_eg[:3]}")
    if unknown:
        fails.append(f"{unknown} events in the objects that no frame sent")
    if run.errors:
        fails.append(f"{len(run.errors)} protocol errors, e.g. {run.errors[:3]}")
    return fails, {"objects": objects, "events": events, "missing": missing, "duplicated": dup,
                   "unknown": unknown, "unacked_chunks_stored": unacked_stored}


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------


def pct(sorted_xs: list[float], q: float) -> float:
    if not sorted_xs:
        return float("nan")
    return sorted_xs[min(len(sorted_xs) - 1, max(0, int(round(q * len(sorted_xs))) - 1))]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append("| " + " | ".join(c.rjust(w) if i else c.ljust(w)
                                     for i, (c, w) in enumerate(zip(r, widths))) + " |")
        if j == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def report(run: Run, durations: dict[str, float]) -> str:
    head = ["phase", "s", "frames new (gzip)", "sends", "acked", "refused/unacked",
            "events acked", "acked ev/s", "ack p50 ms", "p90", "p99", "max", "RSS MiB min-max",
            "decompress MiB max", "buffer MiB max"]
    rows = [head]
    for p in PHASES:
        s = run.stats[p]
        lat = sorted(s.latencies)
        rss = [x["rss"] for x in s.samples if x.get("rss")] or [0]
        dec = max([x.get("decompress", 0) for x in s.samples] or [0])
        buf = max([x.get("buffer", 0) for x in s.samples] or [0])
        d = durations.get(p, 0) or float("nan")
        rows.append([p, f"{d:.0f}", f"{s.new} ({s.gzip})", str(s.sends), str(s.acked),
                     str(s.failed), str(s.events_acked), f"{s.events_acked / d:.0f}",
                     *(f"{pct(lat, q) * 1000:.1f}" for q in (0.5, 0.9, 0.99)),
                     f"{(lat[-1] if lat else float('nan')) * 1000:.1f}",
                     f"{min(rss) / MIB:.0f}-{max(rss) / MIB:.0f}", f"{dec / MIB:.1f}",
                     f"{buf / MIB:.1f}"])
    return table(rows)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


# The load's knobs: flag, type, default, help.
KNOBS = [
    ("--minutes", float, 30.0, "long mode: total minutes (steady 40%%, overload 20%%, "
                               "recovery 40%%)"),
    ("--rate", float, 2000.0, "steady events/s, all steady connections together"),
    ("--conns", int, 4, "K: steady connections (each waits for every ack)"),
    ("--events", int, 100, "events per PackedForward frame"),
    ("--overload", float, 10.0, "overload: offered rate / steady rate"),
    ("--overload-conns", int, 12, "extra PackedForward connections in the overload"),
    ("--window", int, 16, "unacked frames per overload connection"),
    ("--gzip-conns", int, 4, "overload connections sending gzip CompressedPackedForward"),
    ("--gzip-events", int, 500, "events per gzip frame"),
    ("--gzip-pad", int, 10000, "bytes of each gzip event's msg (500 x 10 kB: 5 MB decompressed)"),
    ("--gzip-fps", float, 1.0, "gzip frames/s per gzip connection"),
    ("--decompress-memory-mib", int, 12, "serve's decompress_memory: less than two gzip "
                                         "frames' reservations (8 MiB each)"),
    ("--max-decompressed-mib", int, 8, "serve's forward/http max_decompressed_bytes"),
    ("--rss-limit-mib", float, 512.0, "peak RSS (VmHWM) must stay under this"),
    ("--ack-timeout", float, 30.0, "seconds without an ack before a connection is dropped"),
]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--short", action="store_true", help="about 50 s in all (CI)")
    mode.add_argument("--long", action="store_true", help="--minutes in all (the default)")
    ap.add_argument("--bin", default=str(ROOT / "target" / "debug" / "rin-ship"),
                    help="the rin-ship binary (default target/debug/rin-ship)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    for flag, typ, default, help_ in KNOBS:
        ap.add_argument(flag, type=typ, default=default, help=f"{help_} (default {default:g})")
    return ap.parse_args(argv)


def durations_of(a) -> dict[str, float]:
    if a.short:
        return {"steady": 12.0, "overload": 20.0, "recovery": 12.0}
    total = a.minutes * 60.0
    return {"steady": 0.4 * total, "overload": 0.2 * total, "recovery": 0.4 * total}


def config(a) -> dict:
    """rinlib's test config (local store, 1 s seal age, metrics on) with a small decompression
    budget, so that the gzip frames of the overload can spend it."""
    cap = f"{a.max_decompressed_mib}MiB"
    return {
        "decompress_memory": f"{a.decompress_memory_mib}MiB",
        "forward": {"max_decompressed_bytes": cap},
        "http": {"max_decompressed_bytes": cap},
        "ship": {"shutdown_timeout": "60s"},
    }


def wait_drained(rin: RinShip, timeout: float) -> dict[str, float]:
    """Until every event in has been shipped and no chunk is left in the buffer."""
    deadline = time.monotonic() + timeout
    g = {}
    while time.monotonic() < deadline:
        try:
            g = gauges(rin.metrics())
        except OSError:
            g = {}
        if g and g["events_out"] >= g["events_in"] and g["chunks"] == 0:
            return g
        time.sleep(0.5)
    return g


def enter(run: Run, phase: str, at: float, streams: list[Stream]):
    """At monotonic time `at`: the phase begins (what is sent from now counts in it), and the
    connections it adds start."""
    time.sleep(max(0.0, at - time.monotonic()))
    with run.lock:
        run.phase = phase
    print(f"soak: {phase}", flush=True)
    for s in streams:
        s.start()


def main(argv=None) -> int:
    a = parse_args(argv)
    binary = Path(a.bin).resolve()
    if not binary.exists():
        print(f"soak: no binary at {binary}", file=sys.stderr)
        return 2
    os.environ["RIN_SHIP_BIN"] = str(binary)   # what rinlib's RinShip.start runs
    durations = durations_of(a)
    work = Path(tempfile.mkdtemp(prefix="rin-soak-"))
    rin = RinShip(work, config(a), name="serve")
    run = Run()
    ok = False
    try:
        try:
            rin.start()
        except AssertionError as e:   # rinlib's way of saying serve did not come up
            print(f"soak: {e}", file=sys.stderr)
            return 2
        mode = "short" if a.short else f"long, {a.minutes:g} min"
        version = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.strip()
        print(f"soak ({mode}): {version}: {binary} serve -c {rin.config_path}; phases "
              + ", ".join(f"{p} {d:.0f} s" for p, d in durations.items()), flush=True)
        msg = "GET /soak/index.html HTTP/1.1 200 " + "x" * 60
        pad = "y" * a.gzip_pad
        t_start = time.monotonic()
        t_over = t_start + durations["steady"]
        t_rec = t_over + durations["overload"]
        t_end = t_rec + durations["recovery"]
        run.sending_ends = {"steady": t_end, "over": t_rec, "gzip": t_rec}
        drain = a.ack_timeout + 10
        steady_fps = a.rate / a.events / a.conns
        over_fps = (a.overload - 1) * a.rate / a.events
        over_fps -= a.gzip_conns * a.gzip_fps * a.gzip_events / a.events
        over_fps = max(over_fps, 1.0) / max(a.overload_conns, 1)

        def stream(kind, i, fps, window, n, m, gz):
            return Stream(run, rin.forward_port, kind, f"{kind}{i}", fps, window, n, m, gz,
                          a.ack_timeout, drain)

        steady = [stream("steady", i, steady_fps, 1, a.events, msg, False)
                  for i in range(a.conns)]
        over = [stream("over", i, over_fps, a.window, a.events, msg, False)
                for i in range(a.overload_conns)]
        over += [stream("gzip", i, a.gzip_fps, 2, a.gzip_events, pad, True)
                 for i in range(a.gzip_conns)]
        sampler = Sampler(run, rin)
        sampler.start()
        enter(run, "steady", t_start, steady)
        enter(run, "overload", t_over, over)
        enter(run, "recovery", t_rec, [])
        time.sleep(max(0.0, t_end - time.monotonic()))
        for s in steady + over:
            s.join(drain + 5)
        sampler.stop.set()
        sampler.join(5)
        if not rin.alive():
            print(f"soak: serve exited during the run:\n{rin.stderr_tail()}", file=sys.stderr)
            return 2
        t_ship = time.monotonic()
        g = wait_drained(rin, 120.0)
        hwm = proc_status_kib(rin.proc.pid, "VmHWM") * 1024
        try:
            rin.terminate(timeout=120.0)   # ships whatever is left before it exits
        except AssertionError as e:        # rinlib: no exit 0 after SIGTERM
            print(f"soak: {e}", file=sys.stderr)
            return 2
        print(f"soak: drained and stopped in {time.monotonic() - t_ship:.1f} s"
              + ("" if g.get("chunks") == 0 else " (chunks were left at SIGTERM)"), flush=True)
        fails, counted = check_exactly_once(run, rin.store_dir)
        dec = max((x.get("decompress", 0) for st in run.stats.values() for x in st.samples),
                  default=0)
        if dec > a.decompress_memory_mib * MIB:
            fails.append(f"rin_decompress_bytes reached {dec / MIB:.1f} MiB, over the "
                         f"{a.decompress_memory_mib} MiB budget")
        limit = a.rss_limit_mib * MIB
        if hwm >= limit:
            fails.append(f"peak RSS (VmHWM) {hwm / MIB:.0f} MiB >= --rss-limit-mib "
                         f"{a.rss_limit_mib:g}")
        print()
        print(report(run, durations))
        print()
        rejected, waits = (", ".join(f"{k[len(pre):]} {v:.0f}" for k, v in sorted(g.items())
                                     if k.startswith(pre) and v) for pre in ("rejected_", "waits_"))
        print(f"VmHWM {hwm / MIB:.0f} MiB (limit {a.rss_limit_mib:g} MiB); "
              f"decompress budget {g.get('budget', 0) / MIB:.0f} MiB")
        print(f"server: events in {g.get('events_in', 0):.0f}, out {g.get('events_out', 0):.0f}; "
              f"frames rejected: {rejected or 'none'}; payloads that waited for the decompression "
              f"budget: {waits or 'none'}; resends deduplicated "
              f"{g.get('dedup', 0):.0f}; connections refused {g.get('conn_refused', 0):.0f}; "
              f"metrics scrapes failed {sampler.scrape_failures}")
        print(f"frames never acked: {len(run.frames) - len(run.acked)} of {len(run.frames)}; "
              f"connections made "
              f"{sum(s.connects for s in steady + over)}")
        print(f"objects {counted['objects']}, events in them {counted['events']}: acked chunks' "
              f"events missing {counted['missing']}, duplicated {counted['duplicated']}, "
              f"unknown {counted['unknown']}; unacked chunks found stored "
              f"{counted['unacked_chunks_stored']}")
        for f in fails:
            print(f"INVARIANT FAILED: {f}")
        if not fails:
            print("invariants: ok (every acked event exactly once, nothing else stored; peak RSS "
                  "under the limit; decompression within its budget)")
        ok = not fails
        return 0 if ok else 1
    finally:
        rin.cleanup()
        if ok and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"soak: kept {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
