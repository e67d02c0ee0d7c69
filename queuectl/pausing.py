"""Whether the spool is paused, as a busy worker sees it (docs/protocol.md, "Pause").

`queuectl pause` renames SPOOL/paused in and `resume` unlinks it. A worker on the same host
hears of either at once: inotify on the spool's own folder (waker.py, the folder "spool"),
read before each claim. Another host's pause makes no event here, so a worker also looks at
the file itself once a second while it runs job after job, and before every pass while
paused or without inotify. A look per job would cost a lookup on the metadata server of a
shared spool for every job.
"""
import os
import time

LOOK_EVERY = 1.0  # seconds between looks at SPOOL/paused when no event says it changed


class PauseWatch:
    def __init__(self, path, events_trusted):
        self.path = path
        self.events_trusted = events_trusted  # () -> whether inotify tells of this host's changes
        self.paused = False
        self._next_look = 0.0

    def check(self, event):
        """(paused, changed since the last check). `event`: the spool's folder changed."""
        now = time.monotonic()
        if not (event or self.paused or now >= self._next_look) and self.events_trusted():
            return self.paused, False
        self._next_look = now + LOOK_EVERY
        paused = os.path.lexists(self.path)
        changed, self.paused = paused != self.paused, paused
        return paused, changed
