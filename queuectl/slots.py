"""Slots: how a queue's limit holds on every host (docs/protocol.md "Queues and slots").

A queue with `limit N` has N slot files, SPOOL/slots/QUEUE.0 ... QUEUE.(N-1); with `per-host M`,
M more per host, SPOOL/slots/QUEUE@HOST.0 ... A worker may run a job of the queue only while it
holds a flock on one free slot of each kind; it takes them after it has locked the job and
before it moves the job into processing/, and lets them go when the command has exited. A
flock excludes across hosts on the filesystems queuectl supports (`queuectl doctor` checks)
and dies with its process, so a worker killed while it holds a slot gives it back, and at most
N commands of the queue run at once, across all hosts.

A limit lowered from K to N leaves jobs running on slots N..K-1: a claim then counts the held
slots of all K and takes one only while fewer than N are held.

GPUs are slots of a host too: SPOOL/slots/gpu@HOST.INDEX, one per GPU index a worker offers
(`worker start --gpus`); a job that needs N takes N of them, and runs with exactly those in
CUDA_VISIBLE_DEVICES, so jobs that run at once on a host never share a device.
"""
import os

from . import fsutil, locks
from .errors import Busy


class Grant:
    """The slots one attempt holds (open, flocked descriptors), and the GPUs they give it."""

    __slots__ = ("fds", "gpus")

    def __init__(self, fds=()):
        self.fds = list(fds)
        self.gpus = []

    def release(self):
        for fd in self.fds:
            fsutil.close_quiet(fd)
        self.fds = []


class Slots:
    def __init__(self, layout, host):
        self.folder = layout.slots
        self.host = host
        self.refused = None  # why the last take() returned None: "paused", "limit" or "per-host"

    def take(self, settings):
        """A Grant for one job of the queue `settings` describes, or None when its limit (or
        its limit on this host) is reached or it is paused."""
        self.refused = None
        if settings.paused:
            self.refused = "paused"
            return None
        grant = Grant()
        try:
            for kind, limit, made, prefix in (
                    ("limit", settings.limit, settings.slots, settings.name),
                    ("per-host", settings.per_host, settings.host_slots, f"{settings.name}@{self.host}")):
                if limit is None:
                    continue
                fd = self._take_one(prefix, limit, made)
                if fd is None:
                    grant.release()
                    self.refused = kind
                    return None
                grant.fds.append(fd)
        except BaseException:
            grant.release()
            raise
        return grant

    def take_gpus(self, grant, count, offered):
        """Add `count` of this host's GPUs `offered` to `grant` (SPOOL/slots/gpu@HOST.INDEX, one
        flock each, shared by every worker of the host); False, with none added, when fewer are free."""
        taken = []
        for index in offered:
            if len(taken) == count:
                break
            fd = self._try(f"gpu@{self.host}", index)
            if fd is not None:
                taken.append((index, fd))
        if len(taken) < count:
            for _, fd in taken:
                fsutil.close_quiet(fd)
            return False
        grant.fds.extend(fd for _, fd in taken)
        grant.gpus = [index for index, _ in taken]
        return True

    def _take_one(self, prefix, limit, made):
        """An fd holding a free slot among PREFIX.0 .. PREFIX.(limit-1), or None."""
        if limit <= 0:
            return None
        if made <= limit:
            for i in range(limit):
                fd = self._try(prefix, i)
                if fd is not None:
                    return fd
            return None
        # a lowered limit: the jobs still running on the slots above it count too
        held = sum(1 for i in range(limit, made) if self._is_held(prefix, i))
        taken = None
        for i in range(limit):
            if held >= limit:
                break
            if taken is None:
                taken = self._try(prefix, i)
                held += taken is None
            else:
                held += self._is_held(prefix, i)
        if taken is not None and held >= limit:
            fsutil.close_quiet(taken)
            return None
        return taken

    def _path(self, prefix, index):
        return os.path.join(self.folder, f"{prefix}.{index}")

    def _try(self, prefix, index):
        path = self._path(prefix, index)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | fsutil.NOFOLLOW | fsutil.CLOEXEC, 0o600)
        except FileNotFoundError:  # slots/ missing (a spool made before queues): make it
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | fsutil.NOFOLLOW | fsutil.CLOEXEC, 0o600)
        try:
            locks.hold(fd)
        except Busy:
            fsutil.close_quiet(fd)
            return None
        return fd

    def _is_held(self, prefix, index):
        return locks.path_is_locked(self._path(prefix, index))

    def held(self, settings):
        """How many of the queue's slots are held now (all hosts), for `queue list`."""
        return sum(1 for i in range(max(settings.slots, settings.limit or 0)) if self._is_held(settings.name, i))
