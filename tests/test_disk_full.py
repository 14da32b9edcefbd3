"""Full disks: `serve` with its data on a small tmpfs that the test fills (a filler file written
until ENOSPC) at chosen moments, so that a new chunk, a journal (commit) record, a seal, the
local queue and the embedded SQLite warehouse each meet ENOSPC. Each case checks, from the log
and `rin_disk_full_errors_total{stage}`, that the path was really hit; that nothing not stored
is acked (forward: no ack; HTTP 503 with Retry-After) while the process stays up; and that once
the filler is gone intake resumes by itself and every acked event is in the warehouse exactly
once (`rin-ship query`).

Needs root (mount -t tmpfs); every mount is unmounted by the fixture's finalizer."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from fluent import sender

import rinlib
from rinlib import T0, Fwd, metric_lines
from test_embedded import query

pytestmark = pytest.mark.timeout(240)

PAGE = 4096
TAG = "disk.t"


class SmallDisk:
    """A tmpfs of `size` mounted at `path`, and a filler file that takes all its free space."""

    def __init__(self, path: Path, size: str):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        for tool in ("mount", "umount", "dd"):
            assert shutil.which(tool), f"{tool} missing; run: apt-get install -y util-linux coreutils"
        assert os.geteuid() == 0, "mounting a tmpfs needs root: run the tests as root"
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
        assert p.returncode == 0, f"mount -t tmpfs failed: {p.stderr}"
        self.mounted = True

    def avail(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave_pages: int = 0):
        """Writes filler files until ENOSPC (dd fails there), then frees `leave_pages` pages."""
        reserve = self.path / "reserve"
        if leave_pages:
            reserve.write_bytes(b"\0" * (leave_pages * PAGE))
        for i, bs in enumerate(["1M", "4k"]):
            subprocess.run(["dd", "if=/dev/zero", f"of={self.path}/filler{i}", f"bs={bs}"],
                           capture_output=True)
        assert self.avail() == 0, f"the filler left {self.avail()} bytes free"
        if leave_pages:
            reserve.unlink()
            assert self.avail() == leave_pages * PAGE, self.avail()

    def free(self):
        for i in range(2):
            (self.path / f"filler{i}").unlink(missing_ok=True)

    def umount(self):
        if self.mounted:
            p = subprocess.run(["umount", str(self.path)], capture_output=True, text=True)
            if p.returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False


@pytest.fixture
def small_disk(tmp_path):
    """Factory: small_disk(path, size="24m") -> SmallDisk. At teardown every rin-ship of the
    test is killed first (a busy mount cannot be unmounted), then every mount is unmounted."""
    disks = []

    def make(path: Path | None = None, size: str = "24m") -> SmallDisk:
        d = SmallDisk(path or tmp_path / f"disk{len(disks)}", size)
        disks.append(d)
        return d

    yield make
    for r in rinlib.ALL:
        r.kill()
    for d in reversed(disks):
        d.umount()


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


class Sent:
    """What the test sent, and which of it was acked (every acked id must load exactly once)."""

    def __init__(self):
        self.acked: list[str] = []
        self.n = 0

    def records(self, prefix: str, count: int) -> list[dict]:
        out = []
        for _ in range(count):
            self.n += 1
            out.append({"id": f"{prefix}-{self.n}", "pad": "p" * 120})
        return out

    def frame(self, recs: list[dict], chunk: str) -> list:
        return [TAG, [[T0, x] for x in recs], {"chunk": chunk}]


def send_acked(conn: Fwd, sent: Sent, recs: list[dict], chunk: str):
    conn.send(sent.frame(recs, chunk))
    conn.expect_ack(chunk)
    sent.acked += [x["id"] for x in recs]


def post(r, recs: list[dict]) -> tuple[int, dict, str]:
    body = "\n".join(f'{{"id":"{x["id"]}","pad":"{x["pad"]}"}}' for x in recs).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{r.http_port}/{TAG}", data=body,
                                 headers={"Content-Type": "application/x-ndjson"})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


def metric(r, name: str, label: str) -> float:
    """The value of the series of family `name` with `label` (`key="value"`)."""
    for ln, v in metric_lines(r.metrics(), name):
        if ln.startswith(name + "{") and label in ln:
            return v
    raise AssertionError(f"no {name}{{{label}}} series")


def disk_full_count(r, stage: str) -> float:
    return metric(r, "rin_disk_full_errors_total", f'stage="{stage}"')


def wait_for(what: str, cond, r, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} not within {timeout}s:\n{r.stderr_tail()}"
        time.sleep(0.1)


def loaded_ids(r) -> list[str]:
    p = query("--config", str(r.config_path), f'SELECT id FROM "{TAG}"', check=False)
    if p.returncode != 0:
        assert "no such table" in p.stderr or "unable to open" in p.stderr, p.stderr
        return []
    return p.stdout.splitlines()[1:]


def assert_loaded_once(r, want: list[str], timeout: float = 60.0):
    """Every id of `want` in the warehouse exactly once, and nothing else."""
    deadline = time.monotonic() + timeout
    got: list[str] = []
    while time.monotonic() < deadline:
        got = loaded_ids(r)
        if len(got) >= len(want):
            break
        time.sleep(0.3)
    counts = Counter(got)
    dups = sorted(i for i, n in counts.items() if n > 1)
    missing = sorted(set(want) - set(counts))
    extra = sorted(set(counts) - set(want))
    assert not dups and not missing and not extra, (
        f"{len(got)} rows for {len(want)} acked events: {len(missing)} missing {missing[:5]}, "
        f"{len(dups)} twice {dups[:5]}, {len(extra)} unexpected {extra[:5]}\n{r.stderr_tail()}")


def open_chunk_data(r) -> Path:
    """The data file of the one open chunk of the default target (one shard)."""
    d = r.buffer_dir / "default"
    journals = sorted(d.glob("*.journal"))
    assert journals, f"no open chunk in {list(d.iterdir())}"
    return journals[-1].with_suffix(".json.gz")


def serve_on(rin, data_dir: Path, extra: dict | None = None):
    cfg = {"embedded_load": True, "data_dir": str(data_dir),
           "buffer": {"seal_age": "2s", "shards": 1}}
    r = rin(rinlib.deep_merge(cfg, extra or {}), start=False)
    r.data_dir = data_dir
    return r.start()


# ---------------------------------------------------------------------------------------------
# the buffer's disk: a new chunk, a journal record, a seal
# ---------------------------------------------------------------------------------------------


def test_full_buffer_disk_pushes_back_and_loses_nothing(rin, small_disk):
    disk = small_disk()
    r = serve_on(rin, disk.path / "data")
    sent = Sent()
    with r.connect() as c:
        for f in range(10):
            send_acked(c, sent, sent.records("warm", 10), f"warm-{f}")
    status, _, _ = post(r, recs := sent.records("http", 10))
    assert status == 200
    sent.acked += [x["id"] for x in recs]
    # Everything sealed, shipped and loaded: no chunk is open when the disk fills.
    assert_loaded_once(r, sent.acked)

    # (1) A new chunk: its number and files need pages the disk no longer has.
    disk.fill()
    failed = sent.records("new-chunk", 5)
    with r.connect() as c:
        c.send(sent.frame(failed, "new-chunk"))
        c.expect_closed(15)  # no ack: the frame was not stored
    assert disk_full_count(r, "chunk") >= 1
    log = r.stderr_text()
    assert re.search(r"the disk holding \S*/data/buffer/default is full", log), log[-3000:]
    assert "free space on that filesystem" in log and "intake resumes by itself" in log
    # While full: HTTP 503 with Retry-After, forward is not read (no ack), readiness fails.
    status, headers, text = post(r, sent.records("refused", 3))
    assert status == 503 and "retry-after" in headers and "is full" in text, (status, text)
    assert metric(r, "rin_http_requests_rejected_total", 'reason="disk_full"') >= 1
    assert re.search(r"^rin_disk_full 1$", r.metrics(), re.M), "rin_disk_full gauge not 1"
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{r.metrics_port}/readyz", timeout=5)
        raise AssertionError("/readyz answered 2xx with the disk full")
    except urllib.error.HTTPError as e:
        assert e.code == 503 and "is full" in e.read().decode()
    held = Fwd(r.forward_port)
    held_recs = sent.records("held", 4)
    held.send(sent.frame(held_recs, "held"))
    held.expect_silence(2.0)
    # fluent-logger (no acks): its records wait in the socket, unread, while the disk is full.
    logger = sender.FluentSender("disk", host="127.0.0.1", port=r.forward_port, timeout=5.0,
                                 nanosecond_precision=True)
    flog = sent.records("fluent-logger", 5)
    for x in flog:
        assert logger.emit("t", x), logger.last_error
    assert disk_full_count(r, "chunk") == 1, "intake kept writing into the full disk"
    r.assert_alive()

    # Space again: intake resumes by itself; the held frame gets its ack.
    disk.free()
    held.expect_ack("held", timeout=15)
    held.close()
    sent.acked += [x["id"] for x in held_recs]
    logger.close()
    sent.acked += [x["id"] for x in flog]  # stored once read; the test counts them as acked
    assert "the full disk has room again: intake resumes" in r.stderr_text()
    assert re.search(r"^rin_disk_full 0$", r.metrics(), re.M), "rin_disk_full gauge not 0"
    with r.connect() as c:
        send_acked(c, sent, failed, "new-chunk")  # the client's resend of the unacked frame
    status, _, _ = post(r, recs := sent.records("http-after", 3))
    assert status == 200
    sent.acked += [x["id"] for x in recs]

    # (2) A journal record: the open chunk's data page has room for a small commit, but a
    # commit record with a 3000-byte chunk id (4 KiB in the journal) needs a new page. The
    # chunk is then sealed from its journal (its last commit), and that seal needs a page too.
    # A fresh chunk, so that its age seal (2 s) does not come first.
    wait_for("every chunk shipped", lambda: not list((r.buffer_dir / "default").glob("*.journal")),
             r)
    c = r.connect()
    send_acked(c, sent, sent.records("open", 2), "open-0")
    data = open_chunk_data(r)
    def room() -> int:  # bytes the data file's last page still has
        return -data.stat().st_size % PAGE

    for k in range(200):
        if room() >= 512:
            break
        send_acked(c, sent, sent.records("open", 1), f"open-{k + 1}")
    assert room() >= 512
    disk.fill()
    long_id = "L" * 3000
    journal_recs = sent.records("journal", 1)
    c.send(sent.frame(journal_recs, long_id))
    c.expect_closed(15)
    c.close()
    assert disk_full_count(r, "journal") >= 1
    # The chunk is then cut back to its last durable commit and sealed from there (the
    # power-loss fix for a failed fsync): the cut may free the room the seal needs. Either the
    # seal fits now, or it hits the full disk and is retried once space is freed.
    seal_failed = disk_full_count(r, "seal") >= 1
    assert "file=Journal" in r.stderr_text()
    status, _, text = post(r, sent.records("refused", 2))
    assert status == 503 and "is full" in text
    r.assert_alive()
    disk.free()
    if seal_failed:
        wait_for("the retried seal", lambda: "sealed a chunk whose seal had failed earlier"
                 in r.stderr_text(), r)
    with r.connect() as c:
        send_acked(c, sent, journal_recs, long_id)
        send_acked(c, sent, sent.records("last", 5), "last")
    assert_loaded_once(r, sent.acked)
    r.terminate()


# ---------------------------------------------------------------------------------------------
# the local queue, on a disk of its own
# ---------------------------------------------------------------------------------------------


def test_full_queue_disk_keeps_the_chunk_until_it_is_queued(rin, small_disk, tmp_path):
    data_dir = tmp_path / "data"
    queue = small_disk(data_dir / "queue", size="4m")
    r = serve_on(rin, data_dir)
    sent = Sent()
    with r.connect() as c:
        send_acked(c, sent, sent.records("before", 5), "before")
    assert_loaded_once(r, sent.acked)
    queue.fill()
    with r.connect() as c:
        send_acked(c, sent, sent.records("queued", 20), "queued")  # the buffer has room
    wait_for("ENOSPC in the queue", lambda: disk_full_count(r, "queue") >= 1, r)
    log = r.stderr_text()
    assert re.search(r"the disk holding \S*/data/queue is full", log), log[-3000:]
    assert "notification failed (the chunk is kept until it is sent)" in log
    assert list((r.buffer_dir / "default").glob("*.json.gz")), "the chunk went before queued"
    assert not list((data_dir / "queue" / "tmp").iterdir()), "half a message left in tmp/"
    status, _, text = post(r, sent.records("refused", 2))
    assert status == 503 and "queue is full" in text, (status, text)
    r.assert_alive()
    queue.free()
    with r.connect() as c:
        send_acked(c, sent, sent.records("after", 5), "after")
    assert_loaded_once(r, sent.acked)
    r.terminate()


# ---------------------------------------------------------------------------------------------
# the embedded SQLite warehouse
# ---------------------------------------------------------------------------------------------


def test_full_warehouse_disk_retries_the_load(rin, small_disk, tmp_path):
    """The buffer and the objects live elsewhere; the data folder (queue, warehouse.db) is on
    the small disk, full but for two pages: the queue messages fit, the SQLite WAL does not."""
    disk = small_disk()
    r = serve_on(rin, disk.path / "data", {
        "buffer": {"dir": str(tmp_path / "buffer")},
        "stores": {"local": {"type": "local", "dir": str(tmp_path / "objects")}}})
    r_buffer = tmp_path / "buffer"
    sent = Sent()
    with r.connect() as c:
        send_acked(c, sent, sent.records("before", 5), "before")
    assert_loaded_once(r, sent.acked)
    disk.fill(leave_pages=2)
    with r.connect() as c:
        for f in range(12):  # about 2 MB of rows: more than the WAL has pages for
            send_acked(c, sent, sent.records(f"big{f}", 1000), f"big-{f}")
    wait_for("ENOSPC in the warehouse", lambda: disk_full_count(r, "warehouse") >= 1, r,
             timeout=60)
    disk.free()  # before the loader's in-process retries (1 s, 2 s) run out
    log = r.stderr_text()
    assert "the disk holding the SQLite warehouse is full" in log, log[-3000:]
    assert disk_full_count(r, "queue") == 0 and r_buffer.is_dir()
    r.assert_alive()
    assert_loaded_once(r, sent.acked, timeout=120)
    r.terminate()
