"""A worker's bounded view of pending/: which name to claim next, without holding every name.

pending/ may hold 100,000 names (a backlog of scheduled jobs), and a claim must not
list and sort the folder each time. A pass streams the folder once (os.scandir: no list of
every name) and keeps two short sorted lists:

- `due`: the LIMIT first due names in claim order (byte order of the names);
- `later`: the LIMIT not-yet-due names that come due first, as (due stamp, name).

Claims take `due[0]`; names reported by inotify are slotted in; a name of `later` moves to
`due` when its time comes. A new pass is made only when a list that was cut short runs out
(so at most once per LIMIT claims), on the worker's periodic rescan, and after lost events.
A name that sorts after a cut-short `due` list is left for that next pass: it comes after
every name kept, so claim order holds. A name whose job was locked when the worker tried to
claim it (a command still moving the job into pending/, another worker mid-claim) is
deferred, not forgotten: no event tells when a lock is released, so it is tried again after
DEFER_FIRST seconds, doubling up to DEFER_MAX while it stays locked. Due times are compared as the fixed-width text of
the names (names.py), so nothing is parsed per name.
"""
import bisect
import os
import random
import zlib

from . import names

LIMIT = 2048
SHARE_SCAN = 256  # how far into the best priority a worker looks for a name of its share
DEFER_FIRST = 0.01  # seconds before a name found locked is tried again (a move holds it for ms)
DEFER_MAX = 1.0


class PendingIndex:
    def __init__(self, folder, limit=LIMIT):
        self.folder = folder
        self.limit = limit
        self.due, self.due_complete = [], True
        self.later, self.later_complete = [], True
        self.strays = []      # names not in our format: the worker files or re-routes them
        self.stale = True     # a pass is needed before the next pick
        self.spread = 1       # see pick()
        self.share = None     # (rank, count): this worker's share of the names, see pick()
        self.steal_lag = 2.0  # seconds another share's head may lag behind ours, see pick()
        self.deferred = {}    # name -> (wall time to try it again, delay): found locked, out of `due`
        self._retrying = {}   # name -> delay: a deferred name back in `due`
        self._picked = (None, 0.0)  # the last name picked and its delay, for defer()
        self.parked = set()   # names whose job may not start now (its queue's limit): admission.py

    def refill(self, now):
        """One pass over the folder (O(names) time, O(limit) memory)."""
        now_stamp = names.stamp(now)
        due, later, strays = [], [], []
        due_cut = later_cut = False
        limit = self.limit
        due_field = names.PENDING_DUE  # a slice, not a call per name
        try:
            entries = os.scandir(self.folder)
        except FileNotFoundError:
            entries = None
        looks_pending = names.looks_pending
        deferred, parked = self.deferred, self.parked
        if entries is not None:
            with entries:
                for entry in entries:
                    name = entry.name
                    if not looks_pending(name):
                        if not name.startswith(".") and len(strays) < limit:
                            strays.append(name)
                        continue
                    if deferred and name in deferred or parked and name in parked:
                        continue  # comes back when its time to try again comes (_bring_due, unpark)
                    stamp = name[due_field]
                    if stamp <= now_stamp:
                        due_cut |= _keep_smallest(due, name, limit)
                    elif later_cut and stamp > later[-1][0]:
                        continue  # a backlog's common case: later than every name kept
                    else:
                        later_cut |= _keep_smallest(later, (stamp, name), limit)
        self.due, self.due_complete = due, not due_cut
        self.later, self.later_complete = later, not later_cut
        self.strays = strays
        self._retrying = {}
        self.stale = False

    def add(self, name, now):
        """A name that appeared in pending/ (an inotify hint)."""
        if not names.looks_pending(name):
            if not name.startswith(".") and name not in self.strays:
                self.strays.append(name)
            return
        if name in self.deferred or name in self.parked:
            return  # the event of the move that holds it: tried again when its time comes
        stamp = names.pending_due_text(name)
        if stamp <= names.stamp(now):
            _insert(self.due, name, self.limit, self.due_complete, self._cut_due)
        else:
            _insert(self.later, (stamp, name), self.limit, self.later_complete, self._cut_later)

    def remove(self, name):
        """A name that left pending/ (claimed, cancelled, moved by hand)."""
        self.deferred.pop(name, None)
        self._retrying.pop(name, None)
        self.parked.discard(name)
        if names.looks_pending(name):
            _discard(self.due, name)
            _discard(self.later, (names.pending_due_text(name), name))
        elif name in self.strays:
            self.strays.remove(name)

    def defer(self, name, now):
        """The job of `name` (just picked) was locked by another live process: try it again
        later, sooner than any rescan, since nothing will announce the lock's release."""
        picked, delay = self._picked
        delay = min(DEFER_MAX, delay * 2) if picked == name and delay else DEFER_FIRST
        self.deferred[name] = (now + delay, delay)

    def park(self, name):
        """The job of `name` (just picked) may not start now: keep it out of `due` until unpark()."""
        self.parked.add(name)

    def unpark(self):
        """The parked names go back to `due`, in claim order (a slot may have been freed)."""
        for name in self.parked:
            _insert(self.due, name, self.limit, self.due_complete, self._cut_due)
        self.parked.clear()

    def pick(self, now):
        """(name to claim or None, wall time of the next due job or inf). Pops the name.

        On a local disk a worker takes the first due name. On a shared spool the workers of
        other hosts claim names that this view cannot see go, so all taking the head would make
        most claims lose the race; there (`spread` > 1) the choice is _choose()'s. Priority
        order always holds."""
        self._bring_due(now)
        if self.due:
            name = self.due.pop(self._choose())
            self._picked = (name, self._retrying.pop(name, 0.0) if self._retrying else 0.0)
            return name, self.next_due()
        return None, self.next_due()

    def peek(self, now):
        """The first due name in claim order, or None; nothing is popped."""
        self._bring_due(now)
        return self.due[0] if self.due else None

    def _bring_due(self, now):
        if self.stale:
            self.refill(now)
        if self.deferred:
            self._bring_deferred(now)
        now_stamp = names.stamp(now)
        while self.later and self.later[0][0] <= now_stamp:
            _stamp, name = self.later.pop(0)
            _insert(self.due, name, self.limit, self.due_complete, self._cut_due)
            if not self.later and not self.later_complete:
                self.refill(now)  # the names cut from `later` may be due too
                now_stamp = names.stamp(now)
        if not self.due and not self.due_complete:
            self.refill(now)

    def _bring_deferred(self, now):
        """Deferred names whose time to try again has come go back to `due`; their delay is
        kept until they are picked, so that a second refusal doubles it."""
        for name, (again_at, delay) in list(self.deferred.items()):
            if again_at <= now:
                del self.deferred[name]
                self._retrying[name] = delay
                _insert(self.due, name, self.limit, self.due_complete, self._cut_due)

    def _choose(self):
        """Index in `due` of the name to claim.

        With a `share` (rank, count) the live workers split the names between them by a hash
        of the name: a worker takes the first due name of its own share, which no other
        worker tries unless it steals, so claims do not collide. It steals when the names of
        its share are more than `steal_lag` seconds younger than names of another share at the
        head (their owner is busy or gone: a job never waits long on one worker), drawing
        among those; and when its share has no due name of the best priority, drawing among
        all of them it looked at (stealers drawing from a few head names would collide).
        Without a share it draws among the first `spread`. Order within a priority is
        loosened either way; priority order holds."""
        due = self.due
        if self.spread <= 1 or len(due) < 2:
            return 0
        priority = due[0][:3]
        if self.share is None:
            same = 1
            while same < min(self.spread, len(due)) and due[same][:3] == priority:
                same += 1
            return random.randrange(same)
        rank, count = self.share
        looked = 0
        for i, name in enumerate(due[:SHARE_SCAN]):
            if name[:3] != priority:
                break
            looked = i + 1
            if zlib.crc32(name.encode()) % count == rank:
                mine = names.parse_stamp(name[names.PENDING_DUE])
                lagging = [j for j in range(min(self.spread, i))
                           if names.parse_stamp(due[j][names.PENDING_DUE]) < mine - self.steal_lag]
                return random.choice(lagging) if lagging else i
        return random.randrange(looked)

    def next_due(self):
        again = min((at for at, _ in self.deferred.values()), default=float("inf"))
        if self.later:
            return min(again, names.parse_stamp(self.later[0][0]))
        if not self.later_complete:
            return 0.0  # names were cut: look again at once
        return again

    def __len__(self):
        return len(self.due) + len(self.later)

    def _cut_due(self):
        self.due_complete = False

    def _cut_later(self):
        self.later_complete = False


def _keep_smallest(items, item, limit):
    """Add to a sorted list that keeps the `limit` smallest items. True if one was cut."""
    if len(items) < limit:
        bisect.insort(items, item)
        return False
    if item < items[-1]:
        bisect.insort(items, item)
        items.pop()
    return True


def _insert(items, item, limit, complete, on_cut):
    """Insert into a sorted, bounded list. A list cut short never takes an item beyond its
    end: that item is found again by the next pass."""
    i = bisect.bisect_left(items, item)
    if i < len(items) and items[i] == item:
        return
    if not complete and i == len(items):
        return
    items.insert(i, item)
    if len(items) > limit:
        items.pop()
        on_cut()


def _discard(items, item):
    i = bisect.bisect_left(items, item)
    if i < len(items) and items[i] == item:
        items.pop(i)
