"""The only module that takes locks. One lock API for everything: flock(2).

- portalocker: an exclusive, non-blocking flock on a job's id marker (ids/ID), held by the
  worker for the whole attempt. The kernel (or the filesystem's server) drops it when the
  process dies, so "lock free" means "owner dead" (a lost worker's job is taken back).
  Every mover of a job file takes it first.
- filelock: spool-wide critical sections on small lock files (config writes, id reservation
  clean-up), blocking with a timeout.
- fcntl.flock directly, for the two things the quick commands do (enqueue holds its
  owner lock; status probes whether a worker's registration is locked): importing
  portalocker costs more than all of `enqueue` otherwise does. It is the same flock, so both sides see each other's locks.

filelock's UnixFileLock and portalocker both use flock, never POSIX record locks: mixing the
two kinds misbehaves on GlusterFS, where a spool may later live.
"""
import fcntl
import os

from .errors import Busy, SpoolError


_EXCLUSIVE_NOW = None  # portalocker's flags, combined once (an enum operation per claim otherwise)


def try_lock(fd):
    """Lock an open file (a job's id marker) for this process, or raise Busy if a live
    process holds it."""
    global _EXCLUSIVE_NOW
    import portalocker  # imported on first use: CLI start-up stays light
    if _EXCLUSIVE_NOW is None:
        _EXCLUSIVE_NOW = portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING
    try:
        portalocker.lock(fd, _EXCLUSIVE_NOW)
    except portalocker.exceptions.AlreadyLocked:
        raise Busy("locked by a live process") from None
    except portalocker.exceptions.LockException as exc:
        raise Busy(str(exc)) from None


def hold(fd):
    """Take the flock of an open file now, or raise Busy (the quick commands' path)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise Busy("locked by a live process") from None


def is_locked(fd):
    """True when another open file description holds the lock (probe, then release)."""
    try:
        hold(fd)
    except Busy:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def path_is_locked(path):
    """True when a live process holds the flock of the file at `path` (never followed if a
    symlink); False when it is free or cannot be opened."""
    from .fsutil import open_nofollow
    try:
        fd = open_nofollow(path)
    except OSError:
        return False
    try:
        return is_locked(fd)
    except OSError:  # gone since the open (GlusterFS opens lazily and fails at the first use)
        return False
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def spool_lock(path, timeout=30):
    """A blocking lock for a spool-wide critical section, used as a context manager."""
    import filelock
    lock = filelock.UnixFileLock(path, timeout=timeout, mode=0o600)
    return _Guard(lock, path, filelock.Timeout)


class _Guard:
    def __init__(self, lock, path, timeout_error):
        self.lock, self.path, self.timeout_error = lock, path, timeout_error

    def __enter__(self):
        try:
            self.lock.acquire()
        except self.timeout_error:
            raise SpoolError(f"timed out waiting for the lock {self.path}") from None
        return self

    def __exit__(self, *exc):
        self.lock.release()
