"""Small filesystem primitives: safe joins, no-follow opens, atomic writes, directory fsync.

A job file is written into tmp/ and renamed into place; whether the file and its folders
are fsynced depends on the move (docs/protocol.md, "Durability"). Opens use O_NOFOLLOW so a
planted symlink is never followed.
"""
import errno
import json
import os
import stat

from .errors import SpoolError

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)


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


def write_file(path, data, sync=True, mode=0o600):
    os.close(write_new(path, data, sync=sync, mode=mode))


def open_nofollow(path, flags=os.O_RDONLY):
    """Open an existing regular file without following a symlink or blocking on a FIFO."""
    fd = os.open(path, flags | NOFOLLOW | CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_fd(fd, limit=None):
    """Read a whole file from offset 0; with `limit`, read at most limit+1 bytes."""
    chunks, size = [], 0
    os.lseek(fd, 0, os.SEEK_SET)
    while True:
        want = 1 << 16 if limit is None else min(1 << 16, limit + 1 - size)
        if want <= 0:
            break
        chunk = os.read(fd, want)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def read_json_fd(fd):
    return json.loads(read_fd(fd).decode("utf-8"))


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
