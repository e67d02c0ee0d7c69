"""Turns: on a shared spool, the places of a limited queue go to the workers that waited
longest, whatever their host (docs/protocol.md "Queues and slots").

Without turns, a worker that lets a place go takes it again for the queue's next job at once,
and its host's other workers, woken by inotify, come next, while other hosts see no event and
look only on their rescan: the places of a busy queue would stay on one host.

A worker that may not start a job because the queue's limit across hosts is reached writes a
note, SPOOL/slots/waiting/QUEUE.STAMP.PID@HOST (STAMP: nanoseconds, so names sort by age), and
holds its flock while it waits. Before it takes a place, a worker looks at the queue's notes:
when an older one is held by a live worker, the place is left to that worker. A waiting worker
tries again every PROBE to PROBE_MAX seconds (only while its note is the oldest) and touches
its note each time. A note whose flock is free
belongs to a worker that died or went on to other work, and is removed by whoever finds it; a
note untouched for SILENT seconds (its host cut off, its lock not yet dropped by the
filesystem) is passed over. Notes hold no data; they only order the waiters, so the limit never
depends on them (slots.py holds it).
"""
import os
import time

from . import fsutil, locks
from .errors import Busy

# seconds between a waiting worker's looks for a free place (other hosts send no event): a
# tenth of the time it has waited, within these bounds, so a long wait costs the filesystem
# little and a handover is at most a tenth of the wait late
PROBE, PROBE_MAX = 0.3, 1.0
SILENT = 4.0  # seconds: a note untouched this long does not hold a place (its worker looks no more)


class Turns:
    def __init__(self, layout, host, pid):
        self.folder = os.path.join(layout.slots, "waiting")
        self.host = host
        self.pid = pid
        self.notes = {}       # queue -> (note name, fd holding its flock), while we wait
        self.next_probe = 0.0
        self.since = 0.0      # when this worker began to wait (its first note)

    def first(self, queue):
        """Whether no live worker began to wait for `queue` before this one."""
        mine = self.notes.get(queue)
        try:
            found = os.listdir(self.folder)
        except FileNotFoundError:
            return True
        prefix = queue + "."
        for name in found:
            if name.startswith("." + prefix) and _state(os.path.join(self.folder, name)) == "gone-silent":
                fsutil.unlink_quiet(os.path.join(self.folder, name))  # its worker crashed before the rename
        for name in sorted(n for n in found if n.startswith(prefix)):
            if mine is not None and name >= mine[0]:
                return True
            path = os.path.join(self.folder, name)
            state = _state(path)
            if state == "waiting":
                return False
            if state.startswith("gone"):
                fsutil.unlink_quiet(path)  # its worker died or went on to other work
        return True

    def wait(self, queue):
        """Take a place in the line for `queue` (kept while already in it)."""
        if queue in self.notes:
            return
        if not self.notes:
            self.since = time.monotonic()
            self.next_probe = self.since + PROBE
        name = f"{queue}.{time.time_ns():020d}.{self.pid}@{self.host}"
        # written under a dot name and renamed once locked, so that no one removes it as stale
        staging = os.path.join(self.folder, "." + name)
        try:
            try:
                fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL | fsutil.NOFOLLOW | fsutil.CLOEXEC, 0o600)
            except FileNotFoundError:  # the first wait on this spool
                os.makedirs(self.folder, mode=0o700, exist_ok=True)
                fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL | fsutil.NOFOLLOW | fsutil.CLOEXEC, 0o600)
        except OSError:
            return  # no note: this worker only loses its place in the line
        try:
            locks.hold(fd)
            os.rename(staging, os.path.join(self.folder, name))
        except (OSError, Busy):
            fsutil.close_quiet(fd)
            fsutil.unlink_quiet(staging)
            return
        self.notes[queue] = (name, fd)

    def leave(self, queue):
        note = self.notes.pop(queue, None)
        if note is not None:
            fsutil.unlink_quiet(os.path.join(self.folder, note[0]))
            fsutil.close_quiet(note[1])

    def keep_only(self, queues):
        """Leave the lines of every queue but `queues` (its waiting jobs are gone)."""
        for queue in [q for q in self.notes if q not in queues]:
            self.leave(queue)

    def clear(self):
        """This worker starts a command, pauses or stops: it can take no place while it does."""
        for queue in list(self.notes):
            self.leave(queue)

    def probe_due(self):
        """Whether a waiting worker should try its queues again now: its time to look has
        come, and it is first in one of its lines (the others look at the line only)."""
        now = time.monotonic()
        if not self.notes or now < self.next_probe:
            return False
        self.next_probe = now + min(PROBE_MAX, max(PROBE, (now - self.since) / 10))
        for _name, fd in self.notes.values():
            try:
                os.utime(fd)  # still looking: keeps our place (SILENT)
            except OSError:
                pass
        return any(self.first(queue) for queue in list(self.notes))

    def probe_in(self):
        """Seconds until the next try (inf when waiting for nothing)."""
        return max(0.0, self.next_probe - time.monotonic()) if self.notes else float("inf")


def _state(path):
    """A note's state: "waiting" (its worker holds it and looks), "silent" (held, but not
    touched for SILENT seconds), "gone" (free, or removed since the listing), "gone-silent"
    (free and untouched for SILENT seconds)."""
    try:
        fd = fsutil.open_nofollow(path)
    except OSError:
        return "gone"
    try:
        quiet = time.time() - os.fstat(fd).st_mtime >= SILENT
        if not locks.is_locked(fd):
            return "gone-silent" if quiet else "gone"
        return "silent" if quiet else "waiting"
    except OSError:  # removed since the open (GlusterFS opens lazily and fails at the first use)
        return "gone"
    finally:
        fsutil.close_quiet(fd)
