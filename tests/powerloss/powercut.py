"""Reads the recorder's trace (tests/powerloss/shim.c) and rebuilds a data folder as a power cut
after any one of its operations would leave it. Owns the power-loss model; it must never keep
anything the model says a power cut loses, nor lose anything it says survives.

The model (docs/durability.md, "Power loss"):
- A file's bytes are those of its last successful fsync/fdatasync (on any descriptor of the same
  file); writes after it are lost, unless the cut is `torn`: then each 4 KiB page written since
  is kept or lost at random, and the size is either the synced one or the current one.
- A failed fsync (the shim's EIO) makes nothing durable.
- A name (create, mkdir, unlink, rename) is durable once a directory it changes is fsynced after
  it; a rename is atomic (it links its file at the new name and unlinks the old name together).
  Names not made durable: `none` keeps none of them, `all` keeps all of them, `prefix` keeps
  those before a random point of the trace (metadata journals commit in order).
- A file whose name did not survive is gone; so is everything under a directory that did not.
"""

from __future__ import annotations

import os
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

OPEN, WRITE, TRUNCATE, FSYNC, RENAME, UNLINK, MKDIR, RMDIR, SEND, FSYNC_FAILED, CLOSE, DUP = (
    1, 2, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15)
O_CREAT, O_TRUNC = 0o100, 0o1000
HEAD = struct.Struct("<BiqqHHI")
PAGE = 4096


@dataclass
class Op:
    index: int
    op: int
    fd: int
    a: int
    b: int
    path: str
    path2: str
    data: bytes
    # Filled by `annotate`: the path a descriptor operation's descriptor was opened with.
    file: str = ""


def read_trace(path: Path) -> list[Op]:
    raw = Path(path).read_bytes()
    ops, at = [], 0
    while at + 4 <= len(raw):
        (n,) = struct.unpack_from("<I", raw, at)
        if at + 4 + n > len(raw):
            break  # the recorder was killed mid-record
        op, fd, a, b, l1, l2, dl = HEAD.unpack_from(raw, at + 4)
        s = at + 4 + HEAD.size
        p1 = raw[s:s + l1].decode()
        p2 = raw[s + l1:s + l1 + l2].decode()
        data = raw[s + l1 + l2:s + l1 + l2 + dl]
        ops.append(Op(len(ops), op, fd, a, b, p1, p2, data))
        at += 4 + n
    return ops


@dataclass
class Inode:
    number: int
    is_dir: bool = False
    cur: bytearray = field(default_factory=bytearray)
    synced: bytes = b""
    # Pages written since the last sync (for torn cuts).
    dirty: set = field(default_factory=set)


class Replay:
    """Replays the trace in order; `state_at(k, ...)` is what survives a cut after op k."""

    def __init__(self, ops: list[Op], root: str):
        self.ops = ops
        self.root = root.rstrip("/")

    def state_at(self, cut: int, names: str, torn: bool, rng: random.Random):
        """The files {relative path: bytes} and folders a cut right after op `cut` leaves."""
        inodes: dict[int, Inode] = {}
        ns: dict[str, int] = {self.root: 0}            # the page cache's view: path -> inode
        inodes[0] = Inode(0, is_dir=True)
        fds: dict[int, int] = {}
        # Name operations in order: (index, kind, path, path2, inode, dirs it changes)
        pending: list[tuple] = []
        durable_upto: dict[int, bool] = {}           # index of name op -> made durable
        waiting: dict[str, list[int]] = {}           # folder -> its name ops not durable yet
        n_inode = 1
        def name_op(entry):
            pending.append(entry)
            for d in entry[5]:
                waiting.setdefault(d, []).append(entry[0])

        for op in self.ops[:cut + 1]:
            if op.op == OPEN:
                ino = ns.get(op.path)
                if ino is None:
                    if not op.a & O_CREAT:
                        continue  # an open that failed to find it (cannot happen: traced on success)
                    ino = n_inode
                    n_inode += 1
                    inodes[ino] = Inode(ino)
                    ns[op.path] = ino
                    name_op((op.index, "link", op.path, "", ino, {parent(op.path)}))
                elif op.a & O_TRUNC and not inodes[ino].is_dir:
                    f = inodes[ino]
                    f.dirty.update(range(0, max(len(f.cur), 1) // PAGE + 1))
                    f.cur = bytearray()
                fds[op.fd] = ino
            elif op.op == DUP:
                if op.a in fds:
                    fds[op.fd] = fds[op.a]
            elif op.op == CLOSE:
                fds.pop(op.fd, None)
            elif op.op == WRITE:
                ino = fds.get(op.fd)
                if ino is None:
                    continue
                f = inodes[ino]
                end = op.a + len(op.data)
                if len(f.cur) < op.a:
                    f.cur.extend(b"\0" * (op.a - len(f.cur)))
                f.cur[op.a:end] = op.data
                f.dirty.update(range(op.a // PAGE, (end - 1) // PAGE + 1))
            elif op.op == TRUNCATE:
                ino = fds.get(op.fd)
                if ino is None:
                    continue
                f = inodes[ino]
                if op.a < len(f.cur):
                    del f.cur[op.a:]
                else:
                    f.cur.extend(b"\0" * (op.a - len(f.cur)))
                f.dirty.add(op.a // PAGE)
            elif op.op == FSYNC:
                ino = fds.get(op.fd)
                if ino is None:
                    continue
                f = inodes[ino]
                if f.is_dir:
                    for idx in waiting.pop(op.file, []):
                        durable_upto[idx] = True
                else:
                    f.synced = bytes(f.cur)
                    f.dirty.clear()
            elif op.op == MKDIR:
                ino = n_inode
                n_inode += 1
                inodes[ino] = Inode(ino, is_dir=True)
                ns[op.path] = ino
                name_op((op.index, "link", op.path, "", ino, {parent(op.path)}))
            elif op.op in (UNLINK, RMDIR):
                ino = ns.pop(op.path, None)
                name_op((op.index, "unlink", op.path, "", ino, {parent(op.path)}))
            elif op.op == RENAME:
                ino = ns.pop(op.path, None)
                if ino is None:
                    continue
                ns[op.path2] = ino
                name_op((op.index, "rename", op.path, op.path2, ino,
                                {parent(op.path), parent(op.path2)}))
        # The names that survive.
        if names == "prefix":
            point = rng.randint(0, cut + 1)
        else:
            point = -1
        kept: dict[str, int] = {self.root: 0}
        for idx, kind, p1, p2, ino, _ in pending:
            keep = idx in durable_upto or names == "all" or (names == "prefix" and idx < point)
            if not keep:
                continue
            if kind == "link":
                kept[p1] = ino
            elif kind == "unlink":
                kept.pop(p1, None)
            else:
                kept.pop(p1, None)
                kept[p2] = ino
        files, dirs = {}, []
        for p in sorted(kept, key=len):
            if p == self.root or not reachable(kept, p, self.root):
                continue
            f = inodes[kept[p]]
            rel = os.path.relpath(p, self.root)
            if f.is_dir:
                dirs.append(rel)
            else:
                files[rel] = torn_content(f, rng) if torn else f.synced
        return files, dirs


def torn_content(f: Inode, rng: random.Random) -> bytes:
    """The synced bytes, with each page written since taken from the page cache or not."""
    size = rng.choice([len(f.synced), len(f.cur)])
    out = bytearray(f.synced[:size].ljust(size, b"\0"))
    for page in f.dirty:
        if rng.random() < 0.5:
            lo, hi = page * PAGE, min((page + 1) * PAGE, size)
            if lo < hi:
                out[lo:hi] = bytes(f.cur[lo:hi]).ljust(hi - lo, b"\0")
    return bytes(out)


def parent(p: str) -> str:
    return p.rsplit("/", 1)[0]


def annotate(ops: list[Op]):
    """Gives each descriptor operation the path its descriptor was opened with."""
    fds: dict[int, str] = {}
    for op in ops:
        if op.op == OPEN:
            fds[op.fd] = op.path
            op.file = op.path
        elif op.op == DUP:
            if op.a in fds:
                fds[op.fd] = fds[op.a]
        elif op.op in (WRITE, TRUNCATE, FSYNC, FSYNC_FAILED, CLOSE):
            op.file = fds.get(op.fd, "")
            if op.op == CLOSE:
                fds.pop(op.fd, None)


def reachable(kept: dict[str, int], p: str, root: str) -> bool:
    d = parent(p)
    while len(d) > len(root):
        if d not in kept:
            return False
        d = parent(d)
    return True


def materialize(files: dict[str, bytes], dirs: list[str], into: Path):
    into.mkdir(parents=True, exist_ok=True)
    for d in dirs:
        (into / d).mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        p = into / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def category(op: Op, root: str) -> str:
    """Which path of rin-ship an operation belongs to."""
    path = op.path or op.file or op.path2
    if op.op in (WRITE, TRUNCATE, FSYNC, FSYNC_FAILED, CLOSE):
        path = op.file
    rel = os.path.relpath(path, root) if path else ""
    if op.op == SEND:
        return "ack"
    name = rel.rsplit("/", 1)[-1]
    if rel.startswith("buffer/"):
        if op.op == RENAME and op.path2.endswith(".shipped") or name.endswith(".shipped"):
            return "dedupe"
        if op.op == UNLINK:
            return "shipping"
        if name == "seq.next" or name == "seq.tmp":
            return "seq"
        if name.endswith(".journal"):
            if op.op == WRITE and b'"kind":"sealed"' in op.data:
                return "seal"
            return "journal"
        if op.op == TRUNCATE:
            return "seal"
        return "chunk"
    if rel.startswith("objects"):
        return "shipping"
    if rel.startswith("queue"):
        return "queue"
    if name.startswith("warehouse.db"):
        return "ledger"
    return "other"
