"""Whether a worker may start a job now: its queue served here, not paused, a free slot under
its limits (slots.py).

A job that may not start stays in pending/ and is set aside in the worker's view of pending/
("parked", pending.py) with its queue noted, so that the jobs behind it, of other queues, are
claimed; the queue's other jobs are parked too, without a read, until something may have freed
a slot: a settings change or a slot released on this host (an event in queues/), a rescan,
or this worker's own job ending. Within a queue, claim order holds: its parked jobs come back
together, in order.
"""
import os
import re
import shutil
import subprocess
import time

from . import queues
from .job import queue_of
from .slots import Grant, Slots

OPEN = Grant()  # what an attempt of a queue without limits holds: nothing
FULL_READ_EVERY = 10.0  # seconds: the settings are read again at least this often when a claim asks


class Admission:
    def __init__(self, layout, host, served=None, gpus=(), turns=None):
        self.layout = layout
        self.host = host
        self.slots = Slots(layout, host)
        self.turns = turns      # turns.Turns on a shared spool: places go to the longest waiter
        self.served = frozenset(served) if served else None  # `worker start --queue`: only these
        self.gpus = list(gpus)  # the GPU indices this worker offers (`worker start --gpus`)
        self.gpus_short = False  # a GPU job found too few free GPUs since the last reopen()
        self.gpus_of = {}       # pending/ name -> GPUs its job needs, once read
        self.settings = {}      # queue name -> queues.Settings, for queues with a settings file
        self.closed = set()     # queues found full, paused or not served since the last reopen()
        self.queue_of = {}      # pending/ name -> its job's queue, once read
        self.stale = True
        self._seen = None       # the stat of queues/ when the settings were read
        self._read_at = -FULL_READ_EVERY

    def reload(self):
        """Read the queues' settings again if queues/ changed since they were read: settings are
        renamed in or removed, which changes the folder; a slot's release only touches a file."""
        try:
            st = os.stat(self.layout.queues)
            seen = (st.st_ino, st.st_mtime_ns, st.st_nlink)
        except OSError:
            seen = None
        now = time.monotonic()
        # a filesystem whose folder times are coarse could hide a change: read them all now and then
        if seen is None or seen != self._seen or now >= self._read_at + FULL_READ_EVERY:
            self.settings = queues.read_all(self.layout)
            self._seen, self._read_at = seen, now
        self.stale = False

    def reopen(self):
        """Something may have freed a slot: every queue may be tried again."""
        self.closed.clear()
        self.gpus_short = False

    def forget(self, name):
        self.queue_of.pop(name, None)
        self.gpus_of.pop(name, None)

    def known_closed(self, name):
        """Whether `name` is a job of a queue already found closed, or needs more GPUs than are
        free here: parked without a read."""
        queue = self.queue_of.get(name)
        return queue is not None and self._closed_to(queue, self.gpus_of.get(name, 0))

    def _closed_to(self, queue, needs):
        """Whether a job of `queue` that needs `needs` GPUs cannot start here now, as far as
        is known without a try: its queue found full or paused, or too few GPUs."""
        return queue in self.closed or bool(needs) and (self.gpus_short or needs > len(self.gpus))

    def _settings(self, queue):
        """The queue's settings when it is restricted (a limit, a pause), else None."""
        if self.stale:
            self.reload()
        settings = self.settings.get(queue)
        return settings if settings is not None and settings.restricted else None

    def needs_nothing(self, record):
        """Whether a dropped job may run at once without a claim (ingest.take_first): its
        queue is served here and has no limit and no pause, and it needs no GPU."""
        queue = queue_of(record)
        if record.get("gpus") or self.served is not None and queue not in self.served:
            return False
        return self._settings(queue) is None

    def admit(self, name, record):
        """Called by the claim with the locked job's record: a Grant (OPEN when its queue has no
        limit), or None when it may not start now."""
        queue = queue_of(record)
        needs = record.get("gpus") or 0
        self.queue_of[name] = queue
        self.gpus_of[name] = needs
        if self.served is not None and queue not in self.served:
            self.closed.add(queue)
        if self._closed_to(queue, needs):
            return None
        settings = self._settings(queue)
        if settings is None and not needs:
            return OPEN
        turns = self.turns if settings is not None and settings.limit is not None else None
        if turns is not None and not settings.paused and not turns.first(queue):
            turns.wait(queue)  # a worker waited longer for a place of this queue: leave it one
            self.closed.add(queue)
            return None
        grant = self.slots.take(settings) if settings is not None else Grant()
        if grant is None:
            if turns is not None:
                if self.slots.refused == "limit":
                    turns.wait(queue)
                else:
                    turns.leave(queue)  # held back by this host alone: no place to wait for
            self.closed.add(queue)
            return None
        if turns is not None:
            turns.leave(queue)
        if needs and not self.slots.take_gpus(grant, needs, self.gpus):
            grant.release()
            self.gpus_short = True  # the queue is not full: only the GPU jobs wait
            return None
        return grant

    def probe_due(self):
        """Whether this worker waits first in a queue's line and should try again now."""
        return self.turns is not None and self.turns.probe_due()

    def probe_in(self):
        return self.turns.probe_in() if self.turns is not None else float("inf")

    def leave_lines(self):
        """This worker starts a command, pauses or stops: it can take no place meanwhile."""
        if self.turns is not None:
            self.turns.clear()

    def waiting_queues(self, parked):
        """Keep a place in line only for the queues that still have parked names."""
        if self.turns is not None and self.turns.notes:
            self.turns.keep_only({self.queue_of.get(name) for name in parked})

    def released(self, record):
        """A job's slots were let go: wake this host's other workers (an attribute change in
        queues/; other hosts look on their rescan, or sooner when they wait in the queue's
        line: turns.py)."""
        try:
            if record.get("gpus"):  # GPU waiters may be of any queue: a file of the host's own
                path = os.path.join(self.layout.queues, f".gpus@{self.host}")
                if not os.path.exists(path):
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
                os.utime(path)
            if self.settings.get(queue_of(record)) is not None:
                os.utime(queues.path_of(self.layout, queue_of(record)))
        except OSError:
            pass


def detect_gpus(environ=None):
    """The GPU indices a worker offers by default: those `nvidia-smi -L` lists, else the
    worker's CUDA_VISIBLE_DEVICES (numbers only), else none."""
    environ = os.environ if environ is None else environ
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
            found = [int(m) for m in re.findall(r"^GPU (\d+):", out, re.M)]
            if found:
                return found
        except (OSError, subprocess.SubprocessError):
            pass
    return parse_gpus(environ.get("CUDA_VISIBLE_DEVICES", ""), strict=False)


def parse_gpus(text, strict=True):
    """'0,1,3' -> [0, 1, 3]. Strict (`--gpus`): anything else is a ValueError naming it."""
    indices = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) > 1023:
            if strict:
                raise ValueError(f"not a GPU index: {part!r} (give indices such as 0,1,3)")
            return []
        if int(part) not in indices:
            indices.append(int(part))
    return indices
