"""The retries waiting in failed/, as one worker last saw them, in due order.

A failed/ name starts with its retry's fixed-width time stamp (names.failed_name), so the
text order of the names is their due order, and a heap of them gives the next one without
sorting. The folder is listed once, then the view is kept current from the names that the
waker's events report and from the worker's own moves into failed/; the rescan lists it
again only when its stat changed (housekeeping.py). Listing failed/ after every failure
made a storm of first failures cost O(failed/) each: 10,000 of them took a worker 61 s,
against 11 s for 10,000 jobs that died at once.

Memory is bounded between listings: a listing keeps the LIMIT names that come due first,
without sorting the folder; a name added beyond the last of them waits for the next listing,
which is made when the names kept run out; and a view grown to twice LIMIT by added names is
listed again.

A name in the view may be gone by the time it is due (another worker promoted it, a
`retry` or `purge` moved it): its promotion then loses the race, which costs a failed
lock, not a wrong move.
"""
import heapq

from . import fsutil, names, timeutil

LIMIT = 2048


class RetryView:
    """The names in failed/ that look like retries, known to this worker."""

    def __init__(self, folder):
        self.folder = folder             # failed/
        self._heap = None                # None: list the folder at the next look
        self._known = set()              # the names in the heap (an event may repeat a listing)
        self._horizon = None             # the last name kept when the folder held more
        self._junk = set()               # names that are not retries': not kept again

    def forget(self):
        """List failed/ again at the next look (a rescan saw it change, events were lost)."""
        self._heap = None

    def add(self, name):
        """A name entered failed/ (an event, or this worker's own move)."""
        if self._heap is None or name in self._known or not name.endswith(names.SUFFIX) or name.startswith("."):
            return
        if self._horizon is not None and name > self._horizon:
            return  # beyond the names kept: the next listing finds it
        if len(self._known) >= 2 * LIMIT:
            self.forget()  # a storm of failures: the next listing keeps the LIMIT first again
            return
        self._known.add(name)
        heapq.heappush(self._heap, name)

    def remove(self, name):
        """A name left failed/: dropped lazily, when it comes first (see `_first`)."""
        if self._heap is not None:
            self._known.discard(name)

    def due(self, now=None):
        """Take the names whose retry is due, in due order. Each is out of the view once
        taken (its promoter adds back one whose job was locked)."""
        now = timeutil.now() if now is None else now
        now_stamp = names.stamp(now)  # fixed width: compared as text
        taken = []
        while True:
            name = self._first(may_list=not taken)  # these first: the promotions empty the folder
            if name is None or name[:len(now_stamp)] > now_stamp:
                return taken
            parsed = names.parse_failed(name)
            if parsed is not None and parsed.next_attempt > now:  # the stamp is rounded to the millisecond
                return taken
            self._pop()
            if parsed is None:
                self._junk.add(name)
            elif not taken or taken[-1] != name:  # a name removed and added again
                taken.append(name)

    def next_at(self):
        """The wall time of the next retry in the view (inf: none). A name that is not a
        retry's (it never parses) is dropped from the view: fsck reports it."""
        while True:
            name = self._first()
            if name is None:
                return float("inf")
            parsed = names.parse_failed(name)
            if parsed is not None:
                return parsed.next_attempt
            self._junk.add(name)
            self._pop()

    def _first(self, may_list=True):
        """The first name in the view; listing the folder at most once per call."""
        while True:
            if self._heap is None:
                if not may_list:
                    return None
                self._load()
                may_list = not self._heap and self._horizon is not None  # all it kept was junk: look further
            while self._heap and self._heap[0] not in self._known:
                heapq.heappop(self._heap)  # removed meanwhile
            if self._heap or self._horizon is None:
                return self._heap[0] if self._heap else None
            self._heap = None  # the names kept ran out, and the folder held more

    def _names(self):
        return fsutil.listdir(self.folder)  # a C loop: faster than a scan with a Python step per name

    def _load(self):
        listed = self._names()
        if self._junk:
            listed = set(listed) - self._junk
        first = heapq.nsmallest(LIMIT + 1, listed)  # sorted, and no sort of the whole folder
        self._horizon = first[LIMIT - 1] if len(first) > LIMIT else None
        self._heap = []  # sorted: a heap already
        for name in first[:LIMIT]:
            if name.endswith(names.SUFFIX) and not name.startswith("."):
                self._heap.append(name)
            else:
                self._junk.add(name)  # a dot-file, an .error note: never a retry
        self._known = set(self._heap)

    def _pop(self):
        self._known.discard(heapq.heappop(self._heap))
