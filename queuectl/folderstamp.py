"""Has a folder changed since it was last listed? atd's trick, for the periodic rescan.

An idle worker looks at every folder each `rescan-interval` for changes inotify cannot see
(other hosts'). A listing costs in proportion to the folder's size, and on a network
filesystem each is a round trip or more; a `stat` of the folder is one. Every filesystem
queuectl supports sets a folder's mtime when a name is added to it, removed or renamed
(GlusterFS shows another host's change after up to ~1 s of attribute cache), so the rescan
lists a folder only when its stat differs from the one taken just before the last listing.

Two cases make an unchanged stat untrustworthy, and then the folder is listed anyway:
- the last change came less than SETTLE seconds before that listing: another change in the
  same timestamp tick, from a host whose clock is up to a second off (doctor's bound), or
  hidden by an attribute cache, would leave the same mtime;
- FULL_LOOK seconds have passed since the last listing (a safety net, nothing more).
"""
import os
import time

SETTLE = 3.0       # seconds: clock skew (1 s) + attribute cache (1-2 s) + timestamp granularity
FULL_LOOK = 30.0   # seconds between listings made whatever the stat says


class FolderStamp:
    def __init__(self, path):
        self.path = path
        self._seen = None        # the stat key taken just before the last listing
        self._trusted = False    # that key was old enough when taken to stand for the contents
        self._listed_at = 0.0    # monotonic time of the last listing

    def look(self):
        """Stat the folder now (one operation): pass the result to changed() and, after
        listing the folder, to listed()."""
        return self._key(), time.time()

    def changed(self, look):
        """True when the folder must be listed. An error of stat counts as a change: the
        listing will meet (and report) the same error."""
        key, _ = look
        if key is None or key != self._seen or not self._trusted:
            return True
        return time.monotonic() - self._listed_at >= FULL_LOOK

    def listed(self, look):
        """The folder was listed after `look` was taken."""
        key, taken_at = look
        self._seen = key
        self._trusted = key is not None and taken_at - key[0] / 1e9 >= SETTLE
        self._listed_at = time.monotonic()

    def forget(self):
        """The folder must be listed at the next look (after a fault, say)."""
        self._seen = None

    def _key(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_nlink, st.st_size)
