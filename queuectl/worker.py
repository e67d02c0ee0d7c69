"""One worker process: take dropped files, promote due retries, claim the next due job, run it.

Idle, it sleeps until the earliest due time found in pending/ and failed/, a filesystem
event (waker.py), a signal, or the periodic rescan (config rescan-interval: the safety net for
missed events and for other hosts' changes on a network filesystem), whichever is first.
Signals only set flags: the first SIGTERM/SIGINT stops after the running job, the second
kills it and puts it back in pending/ uncounted (docs/contract.md "Commands").
"""
import errno
import os
import signal
import sys
import time

from . import doctor, fsck, fsinfo, fsutil, ingest, journal, names, pool, registry, runner, timeutil
from .hooks import Hooks
from .dependencies import BlockedJobs
from .folderstamp import FolderStamp
from .errors import Busy, LostRace, QueuectlError, SpoolError
from .moves import Corrupt
from .pending import PendingIndex
from .registry import StopMode
from .schedules import ScheduleClock, Schedules
from .runner import Interrupt
from .waker import Waker
from .contact import ContactWatch

RESCAN_OVERRIDE = os.environ.get("QUEUECTL_RESCAN")  # tests shorten the config's rescan-interval
# errors of a shared spool that is unreachable for a while: the worker waits and carries on
# (EBADFD: GlusterFS's answer on a file opened before the client lost its server)
OUTAGE_ERRNOS = frozenset({errno.ENOTCONN, errno.EIO, errno.EBADFD, errno.ETIMEDOUT, errno.ESTALE,
                           errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNABORTED,
                           errno.ECONNRESET, errno.ECONNREFUSED})
ALL = frozenset({"incoming", "pending", "failed", "workers", "blocked", "schedules"})
# the folders a rescan looks at; completed/ and dead/ only tell that a dependency may have ended
RESCANNED = ("incoming", "pending", "failed", "processing", "workers", "blocked", "completed", "dead",
             "schedules")
ENDED = ("completed", "dead")  # their stat changes when a job ends: a blocked job's dependency?
SHARED_CLAIM_SPREAD = 16  # on a shared spool, steal at random among the first N due names (pending.py)
PAUSED_LOOK = 0.5         # seconds between looks for `resume` while paused (no event tells of it)
RELIST_AFTER_LOSSES = 3   # lost claims in a row after which a worker on a shared spool lists pending/ again
# On a local disk with inotify the events name every file that enters or leaves pending/ (an
# overflow says "rescan"), so a rescan that sees pending/ changed lists it again only this
# often: a backlog of 100,000 scheduled jobs made each relisting cost a drain about 0.1 s.
EVENTS_TRUSTED_RELIST = 60.0


class Attempt:
    """One claimed attempt, from the claim until its result is on disk.

    The result of an attempt whose command has exited is recorded while the worker's next
    command starts (the finish overlaps the new command's start-up instead of delaying it),
    so a worker holds up to two: the one running and the one not yet recorded. Both stay in
    processing/, locked, until recorded."""

    def __init__(self, held, cfg):
        self.held = held          # the locked processing/ file (moves.Held)
        self.cfg = cfg            # the config the attempt started with
        self.outcome = None       # runner.Outcome once the command has exited
        self.announced = False    # its "started" line is printed
        self.pgid = None          # the command's process group, once it runs
        self.taken = None         # an ingest.Taken until its copy is settled

    @property
    def record(self):
        return self.held.record

    @property
    def job_id(self):
        return self.held.record["id"]


class Worker:
    def __init__(self, spool, burst=False, emit=None):
        self.spool = spool
        self.moves = spool.moves  # a worker moves job files through the engine
        self.layout = spool.layout
        self.burst = burst
        self.host = names.hostname()
        self.pid = os.getpid()
        self.id = f"{self.host}:{self.pid}"
        self.name = registry.worker_name(self.host, self.pid)
        self.emit = emit or (lambda text: None)
        self.stopping = None      # a StopMode once asked to stop
        self._signals = 0
        self._dirty = set(ALL)
        self._pending = PendingIndex(self.layout.pending)
        self._blocked = BlockedJobs(self.moves)
        self._clock = ScheduleClock(Schedules(self.layout))
        self._stamps = {folder: FolderStamp(os.path.join(self.layout.root, folder)) for folder in RESCANNED}
        self._processing = None   # processing/ as last listed: the take-back probes these
        self._next_rescan = 0.0
        self._next_relist = 0.0   # see EVENTS_TRUSTED_RELIST
        self._next_failed = 0.0
        self._pruned_hour = None  # the hour whose old journal files were last removed
        self._config = None
        self._config_mtime = None
        self._running = None      # the Attempt whose command runs now
        self._unrecorded = None   # the Attempt whose command has exited, result not yet recorded
        self.waker = None
        self.shared = False       # the spool is on a network filesystem (fsinfo.py)
        self.claims_won = self.claims_lost = self.claims_deferred = self._lost_in_row = 0
        self._paused = False
        self.contact = None       # its ContactWatch then
        self._base_env = dict(os.environ)  # a plain dict: cheaper to copy per job than os.environ
        self.hooks = Hooks(spool.path, self.host, self._log, base_env=self._base_env)

    # ---------------------------------------------------------------- control

    def install_signal_handlers(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        self._signals += 1
        self.stopping = StopMode.GRACEFUL if self._signals == 1 else StopMode.NOW
        if self.waker:
            self.waker.poke()

    def _check_requests(self):
        """Take the waker's news; when workers/ changed (an event, or the rescan's stat for
        another host's change), look for a stop request and share the names out again."""
        self._dirty |= self.waker.take()
        if "workers" in self._dirty:
            self._dirty.discard("workers")
            self._share_names()
            request = registry.stop_requested(self.layout, self.name)
            if request and (self.stopping is None or request == StopMode.NOW):
                self.stopping = request

    def _interrupt(self):
        """Called on each tick of a running attempt: None or an Interrupt."""
        self._check_requests()
        if self.stopping == StopMode.NOW:
            return Interrupt.NOW
        if self._running and registry.cancel_requested(self.layout, self.name, self._running.job_id):
            return Interrupt.CANCEL
        return None

    def config(self):
        try:
            st = os.stat(self.layout.config)
            mtime = (st.st_ino, st.st_mtime_ns)  # a new file each write: the inode tells too
        except FileNotFoundError:
            mtime = None
        if self._config is None or mtime != self._config_mtime:
            self._config, self._config_mtime = self.spool.config(), mtime
        return self._config

    # ---------------------------------------------------------------- main loop

    def run(self):
        self.layout.check_safe()
        check_filesystem(self.layout)
        runner.close_inherited()
        self._reg_fd = registry.register(self.layout, self.host, self.pid)
        self.shared = fsinfo.is_network(self.layout.root)
        if self.shared:  # other hosts' claims are unseen here: workers share the names out (pending.py)
            self._pending.spread = SHARED_CLAIM_SPREAD
        if not self.shared:  # spare inodes only on a local disk (pool.py)
            self.moves.pool = pool.Pool(self.layout.tmp, self.name)  # registered first: fsck keeps its spares
        else:  # another host cannot kill our job if we die or lose contact: we must (contact.py)
            self.contact = ContactWatch(os.path.join(self.layout.workers, self.name + ".json"),
                                        self.config()["contact-timeout"], on_kill=self._lost_contact).start()
        self._job_note = registry.JobNote(self.layout, self.host, self.pid)
        self.waker = Waker([self.layout.incoming, self.layout.pending, self.layout.failed,
                            self.layout.workers, self.layout.blocked, self.layout.schedules]).start()
        try:
            self._log(f"worker {self.id} started (wake-ups: {self.waker.mechanism})")
            self._maintain(startup=True)
            self._loop()
        finally:
            try:
                self._record_previous()
                self.hooks.finish(kill=self.stopping == StopMode.NOW)
            finally:
                if self.moves.pool is not None:
                    self.moves.pool.close()
            self.moves.pool = None
            if self.contact is not None:
                self.contact.stop()
            self.waker.stop()
            self._job_note.close()
            self.moves.journal.close()
            try:
                registry.unregister(self.layout, self.host, self.pid, self._reg_fd)
            except OSError:  # the spool is gone or unreachable: the lock dies with us anyway
                pass
            self._log(f"worker {self.id} stopped ({self.claims_won} job(s) claimed, "
                      f"{self.claims_lost} claim(s) lost to other workers, "
                      f"{self.claims_deferred} deferred while a job was locked)")
        return 0

    def _loop(self):
        while True:
            try:
                return self._serve()
            except OSError as exc:
                if not self.shared or exc.errno not in OUTAGE_ERRNOS or self.stopping:
                    raise
                self._log(f"spool unreachable ({exc.strerror}); trying again")
                self.waker.wait(1.0)
                for stamp in self._stamps.values():
                    stamp.forget()
                self._rejoin()

    def _rejoin(self):
        """After an outage the filesystem may have dropped our registration's lock (it frees a
        silent client's locks): register again, so that `status` and `worker stop` see us."""
        try:
            fd = registry.register(self.layout, self.host, self.pid)
            note = registry.JobNote(self.layout, self.host, self.pid)
        except OSError:
            return
        fsutil.close_quiet(self._reg_fd)
        self._reg_fd = fd
        try:
            self._job_note.close()
        except OSError:
            pass
        self._job_note = note

    def _serve(self):
        looked_again = False
        while True:
            self._check_requests()
            if self.stopping:
                self._record_previous()
                return
            now_m = time.monotonic()
            if now_m >= self._next_rescan:
                self._maintain()
                if self.stopping:
                    continue  # asked on the rescan (a request from another host): stop now
            dirty, self._dirty = self._dirty, set()
            if "failed" in dirty or timeutil.now() >= self._next_failed:
                self._next_failed = self._promote_due()
            next_failed = self._next_failed
            if "schedules" in dirty:
                self._clock.reload(timeutil.now())
            if timeutil.now() >= self._clock.next_at:
                self._fire_schedules()
            if "blocked" in dirty:
                self._resolve_blocked(self._blocked.relist())  # new ones: their jobs may be done
            if "ended" in dirty and self._blocked:
                self._resolve_blocked(None)  # something ended elsewhere: look at them all
            if "rescan" in dirty:
                self._relist_pending()
            elif "pending" in dirty:
                self._apply_pending_changes()
            paused = self._check_paused()
            if "incoming" in dirty:
                if not paused and self._pending.peek(timeutil.now()) is None:
                    # nothing due waits: run the first dropped job at once (no trip through pending/)
                    taken = ingest.take_first(self.spool, self.host, self.pid, report=self._report_ingest,
                                              config=self.config())
                    if taken is not None:
                        self._dirty.add("incoming")  # the rest: filed once the command runs
                        self._execute(taken.held, taken)
                        looked_again = False
                        continue
                self._ingest_rest()
            if paused:
                self._record_previous()
                if self.burst:
                    return  # nothing it may run now
                self.waker.wait(min(PAUSED_LOOK, max(0.0, self._next_rescan - time.monotonic())))
                continue
            (name, job_id), next_pending = self._pick(timeutil.now())
            if name:
                self._attempt(name, job_id)
                looked_again = False
                continue
            self._record_previous()
            if self.burst and not looked_again:
                looked_again = True  # events are hints: read the folder itself before leaving
                self._relist_pending()
                continue
            if self.burst and not ingest.candidates(self.spool):
                return
            wake_at = min(next_failed, next_pending, self._clock.next_at)
            timeout = min(self._next_rescan - time.monotonic(), wake_at - timeutil.now(), self._reap_hooks())
            if timeout > 0:
                self.waker.wait(timeout)

    def _reap_hooks(self):
        """Seconds until a running on-finish hook must be killed (inf: none runs)."""
        return self.hooks.reap() if self.hooks.running else float("inf")

    def _hook(self, record):
        """A job reached a final state here: start its on-finish hook, if it has one."""
        self.hooks.start(record, self.config(), self.spool.log_path(record["id"]))

    def _check_paused(self):
        """Whether the spool is paused (`queuectl pause`, any host): a stat per pass."""
        paused = os.path.lexists(self.layout.paused)
        if paused != self._paused:
            self._paused = paused
            self._log("spool paused: no new job is claimed until `queuectl resume`" if paused else "spool resumed")
        return paused

    def _ingest_rest(self):
        """File what waits in incoming/ into pending/."""
        self._dirty.discard("incoming")
        accepted, _ = ingest.ingest_all(self.spool, report=self._report_ingest)
        if accepted and self.waker.mechanism != "inotify":
            self._pending.stale = True  # no event will name the new pending/ files

    def _relist_pending(self):
        self.waker.take_names("pending")  # the next pass supersedes what events said so far
        self._pending.stale = True

    def _apply_pending_changes(self):
        """Keep the view of pending/ current from the events' names instead of listing the
        folder again per job (a claim must not cost O(pending)). Misses are caught by the
        rescan; a stale name only costs a failed open."""
        added, removed = self.waker.take_names("pending")
        index, now = self._pending, timeutil.now()
        for entry in removed:
            index.remove(entry)
        for entry in added:
            if entry.startswith(".") or not os.path.lexists(os.path.join(self.layout.pending, entry)):
                continue
            index.add(entry, now)

    def _maintain(self, startup=False):
        """The periodic rescan: take back lost jobs, finish crashed moves, and look again at
        the folders that changed since they were last listed (folderstamp.py)."""
        self._next_rescan = time.monotonic() + self._rescan_interval()
        # completed/ and dead/ only matter while jobs wait in blocked/: no stat of them otherwise
        folders = RESCANNED if self._blocked else tuple(f for f in RESCANNED if f not in ENDED)
        changed = self._look_around(folders, everything=startup)
        self._dirty |= changed & {"incoming", "failed"}
        if "pending" in changed and self._relist_due(startup):
            self._dirty.add("rescan")
        if "workers" in changed:
            self._dirty.add("workers")  # requests, and the share (_check_requests)
        if "blocked" in changed:
            self._dirty.add("blocked")
        if "schedules" in changed:
            self._dirty.add("schedules")
        if changed & {"completed", "dead"}:
            self._dirty.add("ended")  # another host's or a command's job ended: a dependency?
        self._check_requests()
        self._take_back_lost(relist="processing" in changed)
        if startup:  # after the take-back: it reads the dead workers' notes that this clears
            for problem in fsck.recover(self.spool):
                self._log(f"recovery: {problem.path}: {problem.detail}: {problem.done}")
        hour = int(time.time() // 3600)
        if hour != self._pruned_hour:  # at start, then once an hour: files of hours gone by
            self._pruned_hour = hour
            journal.prune(self.layout.journal)

    def _relist_due(self, startup):
        """Whether a rescan that saw pending/ change lists it again: always where events may
        miss changes (another host's, the polling fallback), else every EVENTS_TRUSTED_RELIST."""
        now = time.monotonic()
        events_complete = not self.shared and self.waker.mechanism == "inotify"
        if events_complete and not startup and now < self._next_relist:
            return False
        self._next_relist = now + EVENTS_TRUSTED_RELIST
        return True

    def _look_around(self, folders, everything=False):
        """The folders of `folders` to list again on this rescan: those whose stat changed
        (each is listed in this pass, after the stat)."""
        changed = set()
        for folder in folders:
            stamp = self._stamps[folder]
            look = stamp.look()
            if everything or stamp.changed(look):
                stamp.listed(look)
                changed.add(folder)
        return changed

    def _resolve_blocked(self, candidates):
        """Release those of the blocked jobs `candidates` (None: all) whose dependencies
        completed; bury those with a dead one."""
        if not self._blocked or candidates is not None and not candidates:
            return

        def report(action, record):
            if action == "release":
                self._log(f"job {record['id']} released: the jobs it waited for completed")
            else:
                self._log(f"job {record['id']} dead ({record['last_error']}) without running")
                self._hook(record)
        if self._blocked.resolve(candidates, report) and self.waker.mechanism != "inotify":
            self._pending.stale = True  # no event will name the released files

    def _fire_schedules(self):
        """Enqueue the due occurrences of the schedules (exactly once over all workers: the
        occurrence's id is reserved like any job id)."""
        try:
            for name, job_id in self._clock.fire(self.spool.enqueue_many, timeutil.now()):
                self._log(f"schedule {name}: job {job_id} enqueued")
        except (OSError, QueuectlError) as exc:  # e.g. a full disk: it fires on a later look
            self._log(f"schedules: {exc}")
            self._clock.next_at = timeutil.now() + self._rescan_interval()

    def _share_names(self):
        """On a shared spool, split pending/ between the live workers (pending.py): our rank
        among their names. Redone when workers/ changes and after a take-back."""
        if not self.shared:
            return
        live = sorted(w["name"] for w in registry.live_workers(self.layout, own=self.name))
        share = (live.index(self.name), len(live)) if self.name in live and len(live) > 1 else None
        self._pending.share = share
        self._pending.steal_lag = self._rescan_interval()

    def _promote_due(self):
        """Move due retries from failed/ to pending/. Returns the next retry's wall time."""
        now = timeutil.now()
        # a name starts with its retry's time stamp: the due ones are found by comparing text,
        # and only they are sorted (a worker starting beside 100,000 waiting retries sorted them all)
        now_stamp = names.stamp(now)  # fixed width
        due, first_waiting = [], None
        for name in fsutil.listdir(self.layout.failed):
            if not name.endswith(names.SUFFIX) or name.startswith("."):
                continue
            if name[:len(now_stamp)] <= now_stamp:
                due.append(name)
            elif first_waiting is None or name < first_waiting:
                first_waiting = name
        for name in sorted(due):
            parsed = names.parse_failed(name)
            if parsed is None:
                continue
            if parsed.next_attempt > now:  # the stamp is rounded to the millisecond
                return parsed.next_attempt
            try:
                self.moves.promote(name, now)
            except Corrupt as exc:
                self._set_aside(exc)
            except LostRace:
                continue
        if first_waiting is None:
            return float("inf")
        parsed = names.parse_failed(first_waiting)
        if parsed is not None:
            return parsed.next_attempt
        # a name not ours sorts first: the next retry is the first that parses
        return next((p.next_attempt for p in map(names.parse_failed, self.spool.names("failed"))
                     if p is not None and p.next_attempt > now), float("inf"))

    def _pick(self, now):
        """(The first due name in claim order and its job id, or (None, None)), and the
        earliest due time of those not due."""
        index = self._pending
        while True:
            if index.stale:
                index.refill(now)
            while index.strays:  # hand-made files: filed as jobs or checked as dropped files
                self._reroute(index.strays.pop())
            name, next_due = index.pick(now)
            if name is None:
                return (None, None), next_due
            parsed = names.parse_pending(name)
            if parsed is not None:
                return (name, parsed.job_id), next_due
            self._reroute(name)

    def _reroute(self, name):
        """A file put into pending/ by hand without our name format: a whole record (`mv
        dead/ID.json pending/`) is filed as a new try; anything else is checked like a
        dropped file."""
        if name.startswith("."):
            return
        try:
            adopted = self.moves.adopt(name)
            self._pending.add(adopted.name, timeutil.now())
            self._log(f"pending/{name}: a record put here by hand, filed as job {adopted.record['id']}")
            return
        except Corrupt:
            pass
        except LostRace:
            return
        src = os.path.join(self.layout.pending, name)
        dst = os.path.join(self.layout.incoming, name)
        if not os.path.lexists(dst):
            try:
                os.rename(src, dst)
                self._dirty.add("incoming")
            except OSError:
                pass

    def _attempt(self, name, job_id):
        try:
            held = self.moves.claim(name, self.host, self.pid, job_id=job_id)
        except Corrupt as exc:
            self._set_aside(exc)
            return
        except Busy:
            # a live process holds the job: another worker claiming it, or a command whose move
            # into pending/ is not over; the name stays ours to try again (pending.py)
            self.claims_deferred += 1
            self._pending.defer(name, timeutil.now())
            return
        except LostRace:
            self.claims_lost += 1  # another worker was first: normal, but counted
            self._lost_in_row += 1
            if self.shared and self._lost_in_row >= RELIST_AFTER_LOSSES:
                self._lost_in_row = 0  # our view is stale (other hosts' claims): look again
                self._relist_pending()
            return
        self.claims_won += 1
        self._lost_in_row = 0
        self._execute(held)

    def _execute(self, held, taken=None):
        """Run a held attempt; `taken` when it is a dropped job stored straight as claimed
        (ingest.take_first): its copy goes once the command runs."""
        attempt = self._running = Attempt(held, self.config())
        attempt.taken = taken
        timeout = attempt.record.get("timeout_seconds")
        if timeout is None:
            timeout = attempt.cfg["job-timeout"]
        try:
            attempt.outcome = self._run(attempt, timeout)
        except BaseException:
            held.close()
            raise
        finally:
            self._running = None
            if self.contact is not None:
                self.contact.running(None)  # its group is gone: the id may be reused
        if not attempt.announced:  # the command could not start: on_start never ran
            self._settle(attempt)
            self._record_previous()
            self._announce(attempt)
        self._unrecorded = attempt

    def _announce(self, attempt):
        attempt.announced = True
        record = attempt.record
        total = record["max_retries"] + 1
        self._log(f"job {record['id']} started (attempt {record['attempts']}/{total}): {record['command']}")

    def _rescan_interval(self):
        return float(RESCAN_OVERRIDE) if RESCAN_OVERRIDE else self.config()["rescan-interval"]

    def _lost_contact(self, pgid, silent):
        """Called by the contact watch's thread: it has just killed our running job."""
        self._log(f"no answer from the spool for {silent:.0f}s: job process group {pgid} killed; "
                  "it is left for a take-back")

    def _started(self, pgid, attempt):
        """The command runs: note its process group, then record the previous attempt's result
        while this one runs."""
        attempt.pgid = pgid
        if self.contact is not None:
            self.contact.running(pgid)
        self._job_note.set(pgid, attempt.job_id)
        self._settle(attempt)
        self._record_previous()
        self._announce(attempt)
        if "incoming" in self._dirty:  # dropped with the job just taken: file them now
            self._ingest_rest()

    def _settle(self, attempt):
        """A taken drop's command runs (or could not start): make the job durable, drop the copy.
        A failure leaves the copy, which stands for the job until recovery removes it."""
        taken, attempt.taken = attempt.taken, None
        if taken is None:
            return
        try:
            ingest.settle(self.spool, taken)
        except (OSError, QueuectlError) as exc:
            self._log(f"job {attempt.job_id}: could not make its record durable ({exc}); "
                      "its dropped file is kept in tmp/ until recovery")

    def _record_previous(self):
        """Record the result of the attempt whose command has exited, if any."""
        attempt, self._unrecorded = self._unrecorded, None
        if attempt is None:
            return
        try:
            self._finish(attempt)
        finally:
            attempt.held.close()
            registry.clear_cancel(self.layout, self.name, attempt.job_id)  # a request that came too late

    def _run(self, attempt, timeout):
        record, cfg = attempt.record, attempt.cfg
        log_path = self.spool.log_path(record["id"])
        for _ in range(2):
            try:
                return runner.run(record, log_path, self.spool.path, self.id,
                                  timeout=timeout or None, log_max_bytes=cfg["log-max-bytes"],
                                  interrupt=self._interrupt, wakeup_fds=self.waker.control_fds,
                                  on_tick=self._tick, base_env=self._base_env, guard=self.shared,
                                  on_start=lambda pgid: self._started(pgid, attempt))
            except runner.LogError as exc:
                # something that is not a regular file sits where the log goes: set it aside
                try:
                    moved = self.moves.move_aside(log_path, os.path.basename(log_path), str(exc))
                    self._log(f"job {record['id']}: {exc}; moved to rejected/{moved}")
                except OSError:
                    return runner.Outcome(None, str(exc))
        return runner.Outcome(None, "cannot open the job's log")

    def _finish(self, attempt):
        held, outcome, cfg = attempt.held, attempt.outcome, attempt.cfg
        job_id = attempt.job_id
        if self.contact is not None and attempt.pgid in self.contact.killed:
            # killed for lost contact: another host may run it by now; record nothing
            self._log(f"job {job_id} not recorded (killed for lost contact); left for a take-back")
            return
        try:
            if outcome.interrupted == Interrupt.NOW:
                self.moves.requeue(held)
                self._log(f"job {job_id} stopped (--now): back in pending, attempt not counted")
                return
            if outcome.interrupted == Interrupt.CANCEL:
                new = self.moves.finish_cancelled(held)
                registry.clear_cancel(self.layout, self.name, job_id)
            else:
                new = self.moves.finish(held, outcome.exit_code, outcome.error,
                                        backoff=(cfg["backoff-base"], cfg["backoff-max"], cfg["backoff-jitter"]))
        except LostRace:
            # fenced off: the job was taken back while we ran it; its newer state stands
            self._note_in_log(job_id, "result discarded: the job was taken back from this worker")
            self._log(f"job {job_id} finished late; result discarded (the job was taken back)")
            return
        rec = new.record
        if rec["state"] in ("completed", "dead"):
            self._hook(rec)
        if rec["state"] in ("completed", "dead") and self._blocked:
            # at once, even while our next command runs: other workers may take what it frees
            self._resolve_blocked(self._blocked.dependents([job_id]))
        if rec["state"] == "completed":
            self._log(f"job {job_id} completed in {outcome.duration:.2f}s")
        elif rec["state"] == "failed":
            self._log(f"job {job_id} failed ({rec['last_error']}); retry at {rec['run_at']}")
        else:
            self._log(f"job {job_id} dead ({rec['last_error']}) after {rec['attempts']} attempt(s)")

    def _tick(self):
        """While a job runs: on the rescan's schedule, take back other workers' lost jobs and
        look for requests (a stop or cancel written on another host raises no event here)."""
        self._reap_hooks()
        if time.monotonic() >= self._next_rescan:
            self._next_rescan = time.monotonic() + self._rescan_interval()
            changed = self._look_around(("processing", "workers"))
            if "workers" in changed:
                self._dirty.add("workers")  # read on the next tick: requests, and the share
            self._take_back_lost(relist="processing" in changed)

    def _take_back_lost(self, relist=True):
        if relist or self._processing is None:
            self._processing = self.spool.names("processing")
        exclude = {a.held.name for a in (self._running, self._unrecorded) if a is not None}
        taken = self.moves.take_back_lost(exclude=exclude, candidates=self._processing)
        for record in taken:
            self._log(f"job {record['id']} taken back: {record['last_error']} -> {record['state']}")
            self._hook(record)
        if taken:
            self._processing = None  # moved: list again next time
            self._share_names()      # a worker died: its share goes to the others

    def _set_aside(self, exc):
        try:
            dst = self.moves.set_aside(exc)
        except OSError:
            return
        if dst:
            self._log(f"{exc.state}/{exc.name} set aside in rejected/{dst}: {exc.reason}")

    def _report_ingest(self, kind, name, value):
        if kind == "accepted":
            self._log(f"incoming/{name} -> job {value['id']}")
        else:
            self._log(f"incoming/{name} rejected: {value}")

    def _note_in_log(self, job_id, text):
        from . import logs
        try:
            fd = logs.open_for_append(self.spool.log_path(job_id))
            try:
                logs.append_line(fd, f"[queuectl: {text}]")
            finally:
                os.close(fd)
        except OSError:
            pass

    def _log(self, text):
        self.emit(f"{time.strftime('%H:%M:%S')} {self.id} {text}")


def check_filesystem(layout):
    """The checks of `queuectl doctor`: a filesystem that fails one is refused, in one line."""
    failed = doctor.failures(layout)
    if failed:
        first = failed[0]
        raise SpoolError(f"the spool's filesystem fails `queuectl doctor`: {first.name}: {first.detail}; "
                         f"fix: {first.fix}")


def run_worker(spool, burst=False, out=None):
    """Entry point of a worker process; prints a line per event to `out` (stdout)."""
    out = out or sys.stdout

    def emit(line):
        try:
            out.write(line + "\n")
            out.flush()
        except (OSError, ValueError):
            pass

    worker = Worker(spool, burst=burst, emit=emit)
    worker.install_signal_handlers()
    try:
        return worker.run()
    except QueuectlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # e.g. a full disk while writing a record: one line, no traceback
        print(f"error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return 1
