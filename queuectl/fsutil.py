"""Small filesystem primitives: safe joins, no-follow opens, atomic writes, directory fsync.

A job file is written into tmp/ and renamed into place; whether the file and its folders
are fsynced depends on the move (docs/protocol.md, "Durability"). Opens use O_NOFOLLOW so a
planted symlink is never followed.
"""
import errno
import json
import os
import re
import stat
import sys

from .errors import SpoolError

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)

# errors of a shared spool that is unreachable for a while: a worker waits and carries on
# (EBADFD: GlusterFS's answer on a file opened before the client lost its server)
OUTAGE_ERRNOS = frozenset({errno.ENOTCONN, errno.EIO, errno.EBADFD, errno.ETIMEDOUT, errno.ESTALE,
                           errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNABORTED,
                           errno.ECONNRESET, errno.ECONNREFUSED})


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dumps(record):
    # one line: json's C encoder only runs without indent (5x faster on the claim path);
    # `jq . FILE` pretty-prints it
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def write_new(path, data, sync=True, mode=0o600):
    """Create `path` exclusively (never through a symlink) with `data`; fsync it if `sync`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    return fd


def close_quiet(fd):
    """close(2) whose error does not matter: on a network filesystem closing a file that
    another host has since removed can fail (GlusterFS: ENOENT from the flush)."""
    try:
        os.close(fd)
    except OSError:
        pass


def unlink_quiet(path):
    """unlink(2) of a file whose removal does not matter if it fails (gone already, or the
    spool unreachable): a spare, a note of a waiting worker."""
    try:
        os.unlink(path)
    except OSError:
        pass


def write_file(path, data, sync=True, mode=0o600):
    os.close(write_new(path, data, sync=sync, mode=mode))


def open_nofollow(path, flags=os.O_RDONLY):
    """Open an existing regular file without following a symlink or blocking on a FIFO."""
    return open_nofollow_stat(path, flags)[0]


def open_nofollow_stat(path, flags=os.O_RDONLY):
    """open_nofollow(), and the opened file's stat: (fd, stat_result)."""
    fd = os.open(path, flags | NOFOLLOW | CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_fd(fd, limit=None, from_start=True, size=None):
    """Read a whole file from offset 0 (from where it is, for a file just opened: no seek);
    with `limit`, read at most limit+1 bytes. `size`: the file's size from an fstat just made;
    a first read that returns exactly that many bytes of the size+1 asked for ends it (no
    second read to find the end: one call less per record on a network filesystem)."""
    chunks, got = [], 0
    if from_start:
        os.lseek(fd, 0, os.SEEK_SET)
    while True:
        want = 1 << 16 if limit is None else min(1 << 16, limit + 1 - got)
        if size is not None and not chunks:
            want = min(want, size + 1)
        if want <= 0:
            break
        chunk = os.read(fd, want)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
        if size is not None and len(chunks) == 1 and got == size and size + 1 == want:
            break
    return b"".join(chunks)


def read_json_fd(fd, from_start=True, size=None):
    return json.loads(read_fd(fd, from_start=from_start, size=size).decode("utf-8"))


def read_fd_path(path, limit=1 << 20):
    fd = open_nofollow(path)
    try:
        return read_fd(fd, limit)
    finally:
        close_quiet(fd)


def read_json(path):
    fd = open_nofollow(path)
    try:
        return read_json_fd(fd)
    finally:
        close_quiet(fd)


def listdir(path):
    """Names in a folder; an absent folder is empty."""
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


_DOT_JOB = re.compile(r"\0\.(?:[^\0]*\.)?json(?=\0)")  # a dot-name ending in .json


def count_job_names(entries):
    """How many of a folder's names are job files (end in .json, do not start with a dot),
    without a Python step per name: 1,000,000 names are counted in C-speed string scans."""
    if not entries:
        return 0
    text = "\0" + "\0".join(entries) + "\0"
    return text.count(".json\0") - len(_DOT_JOB.findall(text))


# count_job_files reads the folder with getdents64(2) where its number is known
_GETDENTS64 = {"x86_64": 217, "aarch64": 61} if sys.platform.startswith("linux") else {}
_DENTS_BUFFER = 1 << 20  # 1 MiB: about 50 calls for 1,000,000 names; the fastest size measured
# A hidden job name in a getdents64 buffer: the name starts right after the record's d_type
# byte (0-14), so "a byte below 0x20, a dot" is a dot-name's start when names hold no byte
# below 0x20. The run up to ".json" and the name's NUL holds only bytes >= 0x20, so it cannot
# begin in the header before d_type (its d_reclen's high byte is 0 or 1). Matched from the
# dot (a literal: the scan is fast), the byte before it checked by a look-behind.
_DOT_JOB_RECORD = re.compile(rb"\.(?<=[\x00-\x1f]\.)(?:[\x20-\xff]*\.)?json\x00")
_syscall = None


def count_job_files(folder):
    """count_job_names(listdir(folder)) without making 1,000,000 strings: on Linux x86_64 and
    aarch64 the raw getdents64 records are counted with bytes scans (an absent folder is 0).
    Elsewhere, or on any error, the folder is listed.

    Exact for names whose bytes are all >= 0x20 (every printable name, UTF-8 included): each
    name ending in ".json" is followed by its NUL, so b".json\\0" is counted once per such
    name, and the hidden ones are subtracted (_DOT_JOB_RECORD). Limits: a name holding a byte
    below 0x20 may be miscounted (queuectl never makes one in a state folder); a record whose
    inode number or offset cookie held the bytes ".json" and a zero would count once more.
    That needs an inode number >= 2**32 (never on ext4) or a 64-bit hash cookie (ext4's
    hashed folders, NFS) holding them by chance: about 3 in 2**48 per entry."""
    number = _GETDENTS64.get(os.uname().machine)
    if number is not None:
        try:
            return _count_dents(folder, number)
        except Exception:  # no ctypes, a refused call, a missing folder: the plain way decides
            pass
    return count_job_names(listdir(folder))


def _count_dents(folder, number):
    import ctypes
    global _syscall
    if _syscall is None:
        call = ctypes.CDLL(None, use_errno=True).syscall
        call.restype = ctypes.c_long
        call.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_size_t)
        _syscall = call
    buf = bytearray(_DENTS_BUFFER)  # zeroed; one per call: the dashboard counts from threads
    view = (ctypes.c_char * len(buf)).from_buffer(buf)  # pins buf while the kernel writes into it
    address = ctypes.addressof(view)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | CLOEXEC)
    total = 0
    try:
        while True:
            n = _syscall(number, fd, address, len(buf))
            if n < 0:
                raise OSError(ctypes.get_errno(), "getdents64")
            if n == 0:
                return total
            total += buf.count(b".json\0", 0, n) - len(_DOT_JOB_RECORD.findall(buf, 0, n))
            # the kernel does not write a record's padding: what an earlier call left there
            # could read as ".json\0", so the buffer goes back to zeros
            ctypes.memset(address, 0, n)
    finally:
        os.close(fd)


def translate(exc, what):
    """An OSError as a one-line SpoolError naming what was being done."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on device"
    elif exc.errno == errno.EROFS:
        reason = "read-only filesystem"
    error = SpoolError(f"{what}: {reason}")
    error.errno = exc.errno  # kept: a worker tells a network filesystem's outage by it
    return error


def syncfs(path):
    """One syncfs(2) for the filesystem holding `path`: a batch's files in one flush."""
    import ctypes
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)
