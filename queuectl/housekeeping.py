"""What a worker looks after besides claiming: the periodic rescan, due retries, the jobs of
lost workers, schedules and blocked jobs.

The rescan (config rescan-interval) is the safety net for missed events and for other hosts'
changes on a network filesystem: a `stat` of each folder, and a listing only of those whose
stat changed (folderstamp.py). What it finds is handed to the claim loop as "dirty" marks.
"""
import os
import time

from . import fsck, fsutil, journal, timeutil
from .dependencies import BlockedJobs
from .errors import Busy, LostRace, QueuectlError
from .folderstamp import FolderStamp
from .moves import Corrupt
from .retries import RetryView
from .waker import LOST
from .schedules import ScheduleClock, Schedules

RESCAN_OVERRIDE = os.environ.get("QUEUECTL_RESCAN")  # tests shorten the config's rescan-interval
# the folders a rescan looks at; completed/ and dead/ only tell that a dependency may have ended
RESCANNED = ("incoming", "pending", "failed", "processing", "workers", "blocked", "completed", "dead",
             "schedules")
ENDED = ("completed", "dead")  # their stat changes when a job ends: a blocked job's dependency?
# On a local disk with inotify the events name every file that enters or leaves pending/ and
# failed/ (an overflow says "rescan"), so a rescan that sees one changed lists it again only
# this often: a backlog of 100,000 scheduled jobs made each relisting cost a drain about 0.1 s.
EVENTS_TRUSTED_RELIST = 60.0
BUSY_RETRY = 1.0  # a due retry whose job was locked is tried again this much later


class Housekeeping:
    """The housekeeping of one worker (`worker`: its owner, whose marks, log and view of
    pending/ it updates)."""

    def __init__(self, worker):
        self.worker = worker
        self.spool = worker.spool
        self.layout = worker.layout
        self.blocked = BlockedJobs(worker.moves)
        self.clock = ScheduleClock(Schedules(self.layout))
        self.stamps = {folder: FolderStamp(os.path.join(self.layout.root, folder)) for folder in RESCANNED}
        self.processing = None    # processing/ as last listed: the take-back probes these
        self._told = set()        # (name, error) of take-backs that failed, told once each
        self._failed = 0          # take-backs that failed in this pass
        self.next_rescan = 0.0
        self.next_relist = {}     # folder -> when a rescan may list it again (EVENTS_TRUSTED_RELIST)
        self.next_failed = 0.0
        self.retries = RetryView(self.layout.failed)
        self.pruned_hour = None   # the hour whose old journal files were last removed

    def rescan_interval(self):
        return float(RESCAN_OVERRIDE) if RESCAN_OVERRIDE else self.worker.config()["rescan-interval"]

    def maintain(self, startup=False):
        """The periodic rescan: take back lost jobs, finish crashed moves, and look again at
        the folders that changed since they were last listed (folderstamp.py)."""
        worker = self.worker
        self.next_rescan = time.monotonic() + self.rescan_interval()
        # completed/ and dead/ only matter while jobs wait in blocked/: no stat of them otherwise
        folders = RESCANNED if self.blocked else tuple(f for f in RESCANNED if f not in ENDED)
        changed = self.look_around(folders, everything=startup)
        marks = changed & {"incoming", "failed", "workers", "blocked", "schedules"}
        if "pending" in changed and self.relist_due("pending", startup):
            marks.add("rescan")
        if "failed" in changed and self.relist_due("failed", startup):
            self.retries.forget()
        if changed & {"completed", "dead"}:
            marks.add("ended")  # another host's or a command's job ended: a dependency?
        worker.mark(marks)
        worker.check_requests()
        self.take_back_lost(relist="processing" in changed)
        if startup:  # after the take-back: it reads the dead workers' notes that this clears
            for problem in fsck.recover(self.spool):
                worker.log(f"recovery: {problem.path}: {problem.detail}: {problem.done}")
        hour = int(time.time() // 3600)
        if hour != self.pruned_hour:  # at start, then once an hour: files of hours gone by
            self.pruned_hour = hour
            journal.prune(self.layout.journal)

    def tick(self):
        """While a job runs: on the rescan's schedule, take back other workers' lost jobs and
        look for requests (a stop or cancel written on another host raises no event here)."""
        if time.monotonic() >= self.next_rescan:
            self.next_rescan = time.monotonic() + self.rescan_interval()
            changed = self.look_around(("processing", "workers"))
            if "workers" in changed:
                self.worker.mark({"workers"})  # read on the next tick: requests, and the share
            self.take_back_lost(relist="processing" in changed)

    def relist_due(self, folder, startup):
        """Whether a rescan that saw `folder` (pending/ or failed/) change lists it again:
        always where events may miss changes (another host's, the polling fallback), else
        every EVENTS_TRUSTED_RELIST."""
        now = time.monotonic()
        events_complete = not self.worker.shared and self.worker.waker.mechanism == "inotify"
        if events_complete and not startup and now < self.next_relist.get(folder, 0.0):
            return False
        self.next_relist[folder] = now + EVENTS_TRUSTED_RELIST
        return True

    def look_around(self, folders, everything=False):
        """The folders of `folders` to list again on this rescan: those whose stat changed
        (each is listed in this pass, after the stat)."""
        changed = set()
        for folder in folders:
            stamp = self.stamps[folder]
            look = stamp.look()
            if everything or stamp.changed(look):
                stamp.listed(look)
                changed.add(folder)
        return changed

    def forget_stamps(self):
        """After an outage: look at every folder again."""
        for stamp in self.stamps.values():
            stamp.forget()
        self.retries.forget()

    def take_back_lost(self, relist=True):
        worker = self.worker
        if relist or self.processing is None:
            self.processing = self.spool.names("processing")
        # a job that cannot be taken back now (a full disk, a spool that stops answering) is
        # tried again at the next rescan: this worker's own running job must not die of it
        self._failed = 0
        taken = worker.moves.take_back_lost(exclude=worker.execution.held_names(), candidates=self.processing,
                                            on_error=self._cannot_take_back)
        if not self._failed:
            self._told.clear()
        for record in taken:
            worker.log(f"job {record['id']} taken back: {record['last_error']} -> {record['state']}")
            worker.execution.hook(record)
        if taken:
            self.processing = None  # moved: list again next time
            worker.share_names()    # a worker died: its share goes to the others

    def _cannot_take_back(self, name, exc):
        worker = self.worker
        if worker.shared and getattr(exc, "errno", None) in fsutil.OUTAGE_ERRNOS and worker.execution.running is None:
            raise exc  # the spool stops answering: the worker's outage handling takes over
        self.processing = None
        self._failed += 1
        if (name, str(exc)) not in self._told:
            self._told.add((name, str(exc)))
            worker.log(f"cannot take back processing/{name} now ({exc}); trying again at the next rescan")

    # ---------------------------------------------------------------- retries

    def promote_due(self, dirty=frozenset()):
        """Move due retries from failed/ to pending/. Returns the next retry's wall time.
        `dirty`: the loop's marks; the names of failed/ that events reported go into the view."""
        if dirty & {"failed", LOST}:
            added, removed = self.worker.waker.take_names("failed")
            if LOST in dirty:
                self.retries.forget()  # events were lost: list again; the names so far are superseded
            else:
                gone = set(removed)
                for name in gone:
                    self.retries.remove(name)
                for name in added:
                    if name not in gone:  # came and went between two looks (or the order is unknown)
                        self.retries.add(name)
        now = timeutil.now()
        busy = []
        for name in self.retries.due(now):
            try:
                self.worker.moves.promote(name, now)
            except Corrupt as exc:
                self.worker.set_aside(exc)
            except Busy:
                busy.append(name)  # locked by a command or another worker: still there, maybe
            except LostRace:
                continue  # gone: promoted or moved by someone else
        next_at = self.retries.next_at()
        for name in busy:
            self.retries.add(name)
        return min(next_at, now + BUSY_RETRY) if busy else next_at

    # ---------------------------------------------------------------- schedules and blocked jobs

    def fire_schedules(self):
        """Enqueue the due occurrences of the schedules (exactly once over all workers: the
        occurrence's id is reserved like any job id)."""
        try:
            for name, job_id in self.clock.fire(self.spool.enqueue_many, timeutil.now()):
                self.worker.log(f"schedule {name}: job {job_id} enqueued")
        except (OSError, QueuectlError) as exc:  # e.g. a full disk: it fires on a later look
            self.worker.log(f"schedules: {exc}")
            self.clock.next_at = timeutil.now() + self.rescan_interval()

    def resolve_blocked(self, candidates):
        """Release those of the blocked jobs `candidates` (None: all) whose dependencies
        completed; bury those with a dead one."""
        worker = self.worker
        if not self.blocked or candidates is not None and not candidates:
            return

        def report(action, record):
            if action == "release":
                worker.log(f"job {record['id']} released: the jobs it waited for completed")
            else:
                worker.log(f"job {record['id']} dead ({record['last_error']}) without running")
                worker.execution.hook(record)
        if self.blocked.resolve(candidates, report) and worker.waker.mechanism != "inotify":
            worker.pending_changed_unseen()  # no event will name the released files

    def ended(self, job_id):
        """Job `job_id` ended completed or dead here: decide the blocked jobs that wait for it."""
        if self.blocked:
            self.resolve_blocked(self.blocked.dependents([job_id]))
