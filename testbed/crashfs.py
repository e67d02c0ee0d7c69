"""The file-system half of the power-loss explorer (powerloss.py): read a trace of real system
calls (`strace -f -y -xx`), keep the operations on one folder as a list, and build the disk
states a power cut after any of them may leave, under two persistence models.

Operations, in the order the kernel returned them (`Op.kind`):
    create PATH INO      a new empty file (open with O_CREAT of a name that did not exist)
    mkdir PATH INO       a new folder
    write INO OFF DATA   bytes written into a file (its name at the time resolves INO)
    trunc INO LEN        O_TRUNC, ftruncate
    rename SRC DST       replaces DST if it exists
    link SRC DST
    unlink PATH / rmdir PATH
    fsync INO            fsync/fdatasync of a file or a folder
    sync                 syncfs/sync: everything before it is durable
    mark TEXT            not an operation: a marker the workload left (an access() of
                         /qc-mark/TEXT), telling what had returned by then

Models (`states`):
    ext4-ordered  metadata persists as an in-order prefix; any fsync or sync makes everything
                  before it durable; a file's data written after the last of them may be
                  missing or cut short (never garbage), unless a rename over an existing
                  file carried it along (auto_da_alloc, on by default).
    posix-weak    after the last sync, each operation persists or not, independently, unless a
                  later fsync covers it: an fsync of a file covers that file's data, an fsync of
                  a folder that folder's entries. Sampled with a fixed seed.
"""
import os
import random
import re

MARK_DIR = "/qc-mark/"
ROOT_INO = 0  # the folder itself (its fsync); files and folders under it are 1, 2, ...
TRACED = ("openat,creat,write,pwrite64,writev,ftruncate,fsync,fdatasync,syncfs,sync,rename,renameat,"
          "renameat2,link,linkat,unlink,unlinkat,mkdir,mkdirat,rmdir,access,faccessat,faccessat2,close")
LINE = re.compile(r"^(\d+)\s+(.*)$")
CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+|\?)(?:<((?:\\x[0-9a-f]{2})*)>)?(.*)$")
STRING = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')
FD = re.compile(r"^(-?\d+|AT_FDCWD)(?:<((?:\\x[0-9a-f]{2})*)>)?")


def unhex(text):
    return bytes.fromhex(text.replace("\\x", "")) if text else b""


class Op:
    __slots__ = ("kind", "path", "dst", "ino", "off", "data", "index", "replaces")

    def __init__(self, kind, path=None, dst=None, ino=None, off=0, data=b"", replaces=False):
        self.kind, self.path, self.dst, self.ino, self.off, self.data = kind, path, dst, ino, off, data
        self.replaces = replaces  # a rename over an existing file
        self.index = -1

    def __repr__(self):
        return f"{self.kind}({self.path or ''}{' -> ' + self.dst if self.dst else ''} #{self.ino} {len(self.data)}B)"


def _merge_unfinished(lines):
    """strace -f splits a call that another process interrupted: join the halves by pid."""
    pending = {}
    for raw in lines:
        m = LINE.match(raw.rstrip("\n"))
        if not m:
            continue
        pid, rest = m.group(1), m.group(2)
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[: -len("<unfinished ...>")].rstrip()
            continue
        if rest.startswith("<... "):
            head = pending.pop(pid, None)
            if head is None:
                continue
            rest = head + rest[rest.index("resumed>") + len("resumed>"):]
        yield pid, rest


def _split_args(text):
    """Top-level comma split of a call's arguments (strings are hex, so hold no commas)."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur).strip())
    return out


class Recorder:
    """Turns trace lines into Ops on the folder `root`, keeping a name -> inode map as it goes,
    starting from the files and folders already under `root` (durable: made before the trace)."""

    def __init__(self, root, existing):
        self.root = root.rstrip("/") + "/"
        self.names = {}            # relative path -> inode
        self.kind = {}             # inode -> "f" | "d"
        self.next_ino = 1
        self.offsets = {}          # (pid, fd) -> [inode, offset, append]
        self.ops = []
        for rel, is_dir in existing:
            self._new(rel, "d" if is_dir else "f")

    def _new(self, rel, kind):
        ino = self.next_ino
        self.next_ino += 1
        self.names[rel] = ino
        self.kind[ino] = kind
        return ino

    def rel(self, path):
        path = os.path.normpath(path)
        if path + "/" == self.root:
            return ""
        return path[len(self.root):] if path.startswith(self.root) else None

    def _path_arg(self, dirfd_arg, path_arg):
        path = unhex(STRING.match(path_arg).group(1)).decode("utf-8", "surrogateescape")
        if not path.startswith("/"):
            base = unhex(FD.match(dirfd_arg).group(2) or "").decode("utf-8", "surrogateescape")
            path = os.path.join(base, path)
        return path

    def _emit(self, op):
        op.index = len(self.ops)
        self.ops.append(op)

    def feed(self, lines):
        for pid, rest in _merge_unfinished(lines):
            m = CALL.match(rest)
            if not m:
                continue
            name, args, ret, ret_path, _tail = m.groups()
            if ret == "?" or ret.startswith("-"):
                if name in ("access", "faccessat", "faccessat2", "openat"):
                    self._mark(args)
                continue
            self._call(pid, name, _split_args(args), int(ret), ret_path)

    def _mark(self, args):
        """access("/qc-mark/TEXT") (or an open of it) by the workload or a job: a marker."""
        for arg in _split_args(args):
            m = STRING.match(arg)
            if m:
                path = unhex(m.group(1)).decode("utf-8", "surrogateescape")
                if path.startswith(MARK_DIR):
                    self._emit(Op("mark", path=path[len(MARK_DIR):]))
                return

    def _fd_inode(self, arg, pid=None):
        """The inode behind a descriptor: the one it was opened on in this process (a name
        replaced since then no longer leads to it), else the file its path names now (a
        descriptor inherited from a parent, such as a job's log)."""
        m = FD.match(arg)
        if not m:
            return None
        slot = self.offsets.get((pid, int(m.group(1)))) if m.group(1) != "AT_FDCWD" else None
        if slot is not None:
            return slot[0]
        if not m.group(2):
            return None
        rel = self.rel(unhex(m.group(2)).decode("utf-8", "surrogateescape"))
        if rel == "":
            return ROOT_INO
        return self.names.get(rel) if rel is not None else None

    def _call(self, pid, name, args, ret, ret_path):
        if name == "openat":
            path = self._path_arg(args[0], args[1])
            rel = self.rel(path)
            if rel is None:
                return
            flags = args[2]
            ino = self.names.get(rel)
            if ino is None and "O_CREAT" in flags:
                ino = self._new(rel, "f")
                self._emit(Op("create", path=rel, ino=ino))
            elif ino is not None and "O_TRUNC" in flags:
                self._emit(Op("trunc", ino=ino, off=0))
            if ino is not None:
                self.offsets[(pid, ret)] = [ino, 0, "O_APPEND" in flags]
        elif name in ("write", "pwrite64"):
            ino = self._fd_inode(args[0], pid)
            if ino is None:
                return
            data = unhex(STRING.match(args[1]).group(1))[:ret]
            fd = int(FD.match(args[0]).group(1))
            slot = self.offsets.get((pid, fd))
            if name == "pwrite64":
                off = int(args[3])
            elif slot is not None and slot[0] == ino and not slot[2]:
                off = slot[1]
                slot[1] += len(data)
            else:
                off = None  # O_APPEND, or a descriptor opened before the trace: at the end
            self._emit(Op("write", ino=ino, off=off, data=data))
        elif name == "ftruncate":
            ino = self._fd_inode(args[0], pid)
            if ino is not None:
                self._emit(Op("trunc", ino=ino, off=int(args[1])))
        elif name in ("fsync", "fdatasync"):
            ino = self._fd_inode(args[0], pid)
            if ino is not None:
                self._emit(Op("fsync", ino=ino))
        elif name in ("syncfs", "sync"):
            self._emit(Op("sync"))
        elif name in ("rename", "renameat", "renameat2", "link", "linkat"):
            if name in ("rename", "link"):
                src, dst = self._path_arg("AT_FDCWD", args[0]), self._path_arg("AT_FDCWD", args[1])
            else:
                src, dst = self._path_arg(args[0], args[1]), self._path_arg(args[2], args[3])
            src, dst = self.rel(src), self.rel(dst)
            if src is None or dst is None or src not in self.names:
                return
            kind = "link" if name.startswith("link") else "rename"
            ino = self.names[src]
            replaces = dst in self.names and dst != src
            self.names[dst] = ino
            if kind == "rename":
                del self.names[src]
                if self.kind[ino] == "d":  # a folder moved: its whole subtree is renamed
                    for rel in [r for r in self.names if r.startswith(src + "/")]:
                        self.names[dst + rel[len(src):]] = self.names.pop(rel)
            self._emit(Op(kind, path=src, dst=dst, ino=ino, replaces=replaces))
        elif name in ("unlink", "unlinkat", "rmdir"):
            path = self._path_arg("AT_FDCWD", args[0]) if name != "unlinkat" else self._path_arg(args[0], args[1])
            rel = self.rel(path)
            if rel is None or rel not in self.names:
                return
            ino = self.names.pop(rel)
            self._emit(Op("rmdir" if self.kind[ino] == "d" else "unlink", path=rel, ino=ino))
        elif name in ("mkdir", "mkdirat"):
            path = self._path_arg("AT_FDCWD", args[0]) if name == "mkdir" else self._path_arg(args[0], args[1])
            rel = self.rel(path)
            if rel is not None and rel not in self.names:
                ino = self._new(rel, "d")
                self._emit(Op("mkdir", path=rel, ino=ino))
        elif name in ("access", "faccessat", "faccessat2"):
            self._mark(", ".join(args))
        elif name == "close":
            m = FD.match(args[0])
            if m:
                self.offsets.pop((pid, int(m.group(1))), None)


# ---------------------------------------------------------------- replay

def replay(initial, ops, keep=None, cut=None):
    """The tree after applying `ops` (those for which keep(op) is true) to `initial` ({path: bytes
    or None for a folder}, inodes 1.. in the Recorder's order). `cut`: {op index: bytes kept} for
    writes that persisted only in part. Returns {path: bytes | None}.

    An inode exists once the operation that made it was issued, whether or not its name
    persisted: a rename whose source name did not persist still puts the inode under its new
    name (what a folder's fsync after the rename makes durable), with whatever of its data
    persisted."""
    names, data = {}, {}
    for ino, (rel, content) in enumerate(initial, start=1):
        names[rel] = ino
        data[ino] = None if content is None else bytearray(content)
    for op in ops:
        if op.kind == "create":
            data.setdefault(op.ino, bytearray())
        elif op.kind == "mkdir":
            data.setdefault(op.ino, None)
        if keep is not None and not keep(op):
            continue
        kind = op.kind
        if kind in ("create", "mkdir"):
            if op.path not in names and _parent_exists(names, op.path):
                names[op.path] = op.ino
        elif kind == "write":
            buf = data.get(op.ino)
            if buf is None:
                continue
            chunk = op.data if cut is None or op.index not in cut else op.data[:cut[op.index]]
            off = len(buf) if op.off is None else op.off
            if off > len(buf):
                buf.extend(b"\0" * (off - len(buf)))  # a hole reads as zeros, as a file's would
            buf[off:off + len(chunk)] = chunk
        elif kind == "trunc":
            buf = data.get(op.ino)
            if buf is not None:
                del buf[op.off:]
        elif kind in ("rename", "link"):
            if op.ino not in data or not _parent_exists(names, op.dst):
                continue
            names[op.dst] = op.ino
            if kind == "rename" and names.get(op.path) == op.ino and op.path != op.dst:
                del names[op.path]
                if data[op.ino] is None:
                    for rel in [r for r in names if r.startswith(op.path + "/")]:
                        names[op.dst + rel[len(op.path):]] = names.pop(rel)
        elif kind in ("unlink", "rmdir"):
            if names.get(op.path) == op.ino and (kind == "unlink" or not any(r.startswith(op.path + "/") for r in names)):
                del names[op.path]
    return {rel: (None if data[ino] is None else bytes(data[ino])) for rel, ino in names.items()}


def _parent_exists(names, rel):
    parent = os.path.dirname(rel)
    return parent == "" or parent in names


# ---------------------------------------------------------------- crash states

def _covers(op, fsync_ino, dir_of):
    """Whether an fsync of inode `fsync_ino` makes `op` durable (posix-weak)."""
    if op.kind in ("write", "trunc"):
        return op.ino == fsync_ino
    if op.kind in ("create", "mkdir", "unlink", "rmdir"):
        return dir_of(op.path) == fsync_ino
    if op.kind in ("rename", "link"):
        return dir_of(op.dst) == fsync_ino
    return False


def states(ops, initial, model, rng=None, samples=4, points=None):
    """Yield (persisted, judged, variant name, tree) for the disk states a power cut may
    leave: the operations before `persisted` are what reached the disk (under the model), and
    the cut came before ops[judged] (what the workload had been told by then counts: its
    markers before `judged`). `points`: only these `persisted` values."""
    dirs = _dir_inodes(initial, ops)
    n = len(ops)
    barriers = [op.index for op in ops if op.kind in ("sync", "fsync")]
    for j in range(n + 1) if points is None else points:
        done = ops[:j]
        if model == "ext4-ordered":
            # metadata persists as a prefix: the cut may come any time before the next fsync
            # returns, so a state that ends at j is judged by what was told up to that fsync
            judged = next((b for b in barriers if b >= j), n)
            barrier = max((b + 1 for b in barriers if b < j), default=0)
            yield j, judged, "all", replay(initial, done)
            # a rename over an existing file carries the file's data along (ext4's auto_da_alloc)
            carried = {}
            for op in done[barrier:]:
                if op.kind == "rename" and op.replaces:
                    carried[op.ino] = op.index
            unsynced = [op for op in done[barrier:] if op.kind == "write" and op.data
                        and carried.get(op.ino, -1) < op.index]
            if unsynced:
                gone = {op.index for op in unsynced}
                yield j, judged, "unsynced-data-lost", replay(initial, done, keep=lambda op: op.index not in gone)
                yield j, judged, "unsynced-data-cut", replay(initial, done,
                                                             cut={i: len(ops[i].data) // 2 for i in gone})
                files = sorted({op.ino for op in unsynced})
                if 1 < len(files) <= 6:
                    for ino in files:
                        lost = {op.index for op in unsynced if op.ino == ino}
                        yield j, judged, f"unsynced-data-lost-of-{ino}", replay(
                            initial, done, keep=lambda op, lost=lost: op.index not in lost)
        else:
            barrier = max((b + 1 for b in barriers if b < j and ops[b].kind == "sync"), default=0)
            free = []
            for op in done[barrier:]:
                if op.kind in ("mark", "sync", "fsync"):
                    continue
                later = (o for o in done[op.index + 1:] if o.kind == "fsync")
                if not any(_covers(op, o.ino, dirs) for o in later):
                    free.append(op.index)
            if not free:
                yield j, j, "all", replay(initial, done)
                continue
            yield j, j, "none-unsynced", replay(initial, done, keep=lambda op: op.index not in free)
            yield j, j, "all", replay(initial, done)
            for s in range(samples):
                dropped = {i for i in free if rng.random() < 0.5}
                yield j, j, f"sample-{s}", replay(initial, done, keep=lambda op, d=dropped: op.index not in d)


def _dir_inodes(initial, ops):
    """A function: relative path -> the inode of its parent folder at the time (by name:
    folders of a spool are never renamed)."""
    by_name = {rel: ino for ino, (rel, content) in enumerate(initial, start=1) if content is None}
    for op in ops:
        if op.kind == "mkdir":
            by_name.setdefault(op.path, op.ino)
    by_name.setdefault("", ROOT_INO)
    return lambda rel: by_name.get(os.path.dirname(rel), -1)


def rng_for(seed):
    return random.Random(seed)
