"""One worker process: the claim loop. Take dropped files, claim the next due job, run it.

Idle, it sleeps until the earliest due time found in pending/ and failed/, a filesystem
event (waker.py), a signal, or the periodic rescan, whichever is first. The other rooms of a
worker: housekeeping.py (rescans, due retries, take-back, schedules, blocked jobs) and
execution.py (running an attempt and recording it). Signals only set flags: the first
SIGTERM/SIGINT stops after the running job, the second kills it and puts it back in pending/
uncounted (docs/contract.md "Commands").
"""
import os
import signal
import sys
import time

from . import config as configmod, doctor, fsinfo, fsutil, ingest, names, pool, registry, runner, timeutil
from .admission import Admission, detect_gpus
from .contact import ContactWatch
from .errors import Busy, LostRace, QueuectlError, SpoolError
from .execution import Execution
from .housekeeping import Housekeeping
from .moves import Corrupt
from .pausing import PauseWatch
from .pending import PendingIndex
from .registry import StopMode
from .runner import Interrupt
from .turns import Turns
from .waker import LOST, Waker

ALL = frozenset({"incoming", "pending", "failed", "workers", "blocked", "schedules", "queues", "spool"})
SHARED_CLAIM_SPREAD = 16  # on a shared spool, steal at random among the first N due names (pending.py)
JOURNAL_HOLD = 1.0        # seconds a busy worker keeps finish lines before one write (journal.py)
PAUSED_LOOK = 0.5         # seconds between looks for `resume` while paused (no event tells of it)
CONFIG_LOOK = 1.0         # seconds a busy worker goes on with the settings it read (a stat saved per job)
RELIST_AFTER_LOSSES = 3   # lost claims in a row after which a worker on a shared spool lists pending/ again


class Worker:
    def __init__(self, spool, burst=False, emit=None, queues=None, gpus=None):
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
        self._dirty = set(ALL)    # marks of what changed, for the loop to look at
        self._pending = PendingIndex(self.layout.pending)
        self._config = configmod.Watched(self.layout.config, CONFIG_LOOK, self._events_trusted)
        self.waker = None
        self.shared = False       # the spool is on a network filesystem (fsinfo.py)
        self.claims_won = self.claims_lost = self.claims_deferred = self._lost_in_row = 0
        self._pause = None        # pausing.PauseWatch once the waker runs
        self.contact = None       # its ContactWatch then
        self.job_note = None      # registry.JobNote: the running job's process group, for take-backs
        self.admission = Admission(self.layout, self.host, served=queues,
                                   gpus=detect_gpus() if gpus is None else gpus)
        self.housekeeping = Housekeeping(self)
        self.execution = Execution(self)

    # ---------------------------------------------------------------- control

    def install_signal_handlers(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        self._signals += 1
        self.stopping = StopMode.GRACEFUL if self._signals == 1 else StopMode.NOW
        if self.waker:
            self.waker.poke()

    def mark(self, marks):
        """Tell the loop that these folders (or "rescan", "ended") need a look."""
        self._dirty |= marks

    def check_requests(self):
        """Take the waker's news; when workers/ changed (an event, or the rescan's stat for
        another host's change), look for a stop request and share the names out again."""
        self._dirty |= self.waker.take()
        if "workers" in self._dirty:
            self._dirty.discard("workers")
            self.share_names()
            request = registry.stop_requested(self.layout, self.name)
            if request and (self.stopping is None or request == StopMode.NOW):
                self.stopping = request

    def interrupt(self):
        """Called on each tick of a running attempt: None or an Interrupt."""
        self.check_requests()
        if self.stopping == StopMode.NOW:
            return Interrupt.NOW
        running = self.execution.running
        if running and registry.cancel_requested(self.layout, self.name, running.job_id, running.held.name):
            return Interrupt.CANCEL
        return None

    def tick(self):
        """Called on each tick of a running attempt."""
        self.execution.reap_hooks()
        self.moves.journal.flush_due()
        self.housekeeping.tick()

    def config(self):
        """The spool's settings (looked at once a second while busy, and after every wait)."""
        cfg = self._config.get()
        self.moves.durable_moves = cfg["durable-moves"]
        return cfg

    def _events_trusted(self):
        """Whether inotify tells of a change on this host (`pause`, `config set`)."""
        return self.waker is not None and self.waker.mechanism == "inotify"

    # ---------------------------------------------------------------- main loop

    def run(self):
        self.layout.check_safe()
        check_filesystem(self.layout)
        self.config()  # read before the first claim: durable-moves applies to it
        self.moves.journal.hold = JOURNAL_HOLD
        runner.close_inherited()
        registry.refuse_beside_older_workers(self.layout)
        self._reg_fd = registry.register(self.layout, self.host, self.pid, self._offer())
        self.shared = fsinfo.is_network(self.layout.root)
        if self.shared:  # other hosts' claims are unseen here: workers share the names out (pending.py)
            self._pending.spread = SHARED_CLAIM_SPREAD
            self.admission.turns = Turns(self.layout, self.host, self.pid)  # and places of limits
        if not self.shared:  # spare inodes only on a local disk (pool.py)
            self.moves.pool = pool.Pool(self.layout.tmp, self.name)  # registered first: fsck keeps its spares
        else:  # another host cannot kill our job if we die or lose contact: we must (contact.py)
            self.contact = ContactWatch(os.path.join(self.layout.workers, self.name + ".json"),
                                        self.config()["contact-timeout"], on_kill=self._lost_contact).start()
        self.job_note = registry.JobNote(self.layout, self.host, self.pid)
        os.makedirs(self.layout.queues, mode=0o700, exist_ok=True)  # a spool made before queues
        self.waker = Waker([self.layout.incoming, self.layout.pending, self.layout.failed,
                            self.layout.workers, self.layout.blocked, self.layout.schedules,
                            self.layout.queues, (self.layout.root, "spool")]).start()
        self._pause = PauseWatch(self.layout.paused, self._events_trusted)
        try:
            offer = self._offer()
            self.log(f"worker {self.id} started (wake-ups: {self.waker.mechanism}"
                     + (f"; queues: {', '.join(offer['queues'])}" if offer["queues"] else "")
                     + (f"; GPUs: {','.join(map(str, offer['gpus']))}" if offer["gpus"] else "") + ")")
            self.housekeeping.maintain(startup=True)
            self._loop()
        finally:
            try:
                self.admission.leave_lines()
                self.execution.record_previous()
                self.execution.hooks.finish(kill=lambda: self.stopping == StopMode.NOW)
            finally:
                self.moves.journal.close()  # what it holds, even when recording failed
                if self.moves.pool is not None:
                    self.moves.pool.close()
            self.moves.pool = None
            if self.contact is not None:
                self.contact.stop()
            self.waker.stop()
            self.job_note.close()
            try:
                registry.unregister(self.layout, self.host, self.pid, self._reg_fd)
            except OSError:  # the spool is gone or unreachable: the lock dies with us anyway
                pass
            self.log(f"worker {self.id} stopped ({self.claims_won} job(s) claimed, "
                     f"{self.claims_lost} claim(s) lost to other workers, "
                     f"{self.claims_deferred} deferred while a job was locked)")
        return 0

    def _offer(self):
        """What this worker serves, in its registration (status, and why a job waits)."""
        served = self.admission.served
        return {"gpus": self.admission.gpus, "queues": sorted(served) if served else None}

    def _loop(self):
        while True:
            try:
                return self._serve()
            except OSError as exc:
                if not self.shared or exc.errno not in fsutil.OUTAGE_ERRNOS or self.stopping:
                    raise
                self.log(f"spool unreachable ({exc.strerror}); trying again")
                self.mark(ALL)  # what the interrupted pass took (a pause, say) is looked at again
                self._config.look_now()
                self.waker.wait(1.0)
                self.housekeeping.forget_stamps()
                self._rejoin()

    def _rejoin(self):
        """After an outage the filesystem may have dropped our registration's lock (it frees a
        silent client's locks): register again, so that `status` and `worker stop` see us."""
        try:
            fd = registry.register(self.layout, self.host, self.pid, self._offer())
            note = registry.JobNote(self.layout, self.host, self.pid)
        except OSError:
            return
        fsutil.close_quiet(self._reg_fd)
        self._reg_fd = fd
        try:
            self.job_note.close()
        except OSError:
            pass
        self.job_note = note

    def _serve(self):
        looked_again = False
        keeping, execution = self.housekeeping, self.execution
        while True:
            self.check_requests()
            if self.stopping:
                execution.record_previous()
                return
            execution.reap_hooks()  # a stream of short jobs never idles: collect finished hooks here
            if time.monotonic() >= keeping.next_rescan:
                keeping.maintain()
                self.reopen_queues(reload=True)  # another host's slot may be free by now
                if self.stopping:
                    continue  # asked on the rescan (a request from another host): stop now
            dirty, self._dirty = self._dirty, set()
            if "queues" in dirty:
                self.reopen_queues(reload=True)
            elif self.admission.probe_due():
                self.reopen_queues()  # waiting in a queue's line: another host may have let a place go
            if dirty & {"failed", LOST} or timeutil.now() >= keeping.next_failed:
                keeping.next_failed = keeping.promote_due(dirty)
            next_failed = keeping.next_failed
            if "schedules" in dirty:
                keeping.clock.reload(timeutil.now())
            if timeutil.now() >= keeping.clock.next_at:
                keeping.fire_schedules()
            if "blocked" in dirty:
                keeping.resolve_blocked(keeping.blocked.relist())  # new ones: their jobs may be done
            if "ended" in dirty and keeping.blocked:
                keeping.resolve_blocked(None)  # something ended elsewhere: look at them all
            if "rescan" in dirty:
                self._relist_pending()
            elif "pending" in dirty:
                self._apply_pending_changes()
            if "spool" in dirty:
                self._config.look_now()  # config.json or the pause changed on this host
            paused = self._check_paused("spool" in dirty)
            if "incoming" in dirty:
                if not paused and self._pending.peek(timeutil.now()) is None:
                    # nothing due waits: run the first dropped job at once (no trip through pending/)
                    taken = ingest.take_first(self.spool, self.host, self.pid, report=self._report_ingest,
                                              config=self.config(), may_take=self.admission.needs_nothing)
                    if taken is not None:
                        self._dirty.add("incoming")  # the rest: filed once the command runs
                        execution.execute(taken.held, taken)
                        looked_again = False
                        continue
                self._ingest_rest()
            if paused:
                self.admission.leave_lines()
                execution.record_previous()
                if self.burst:
                    return  # nothing it may run now
                self._idle(min(PAUSED_LOOK, max(0.0, keeping.next_rescan - time.monotonic())))
                continue
            (name, job_id), next_pending = self._pick(timeutil.now())
            if name:
                self._attempt(name, job_id)
                looked_again = False
                continue
            self.admission.waiting_queues(self._pending.parked)
            execution.record_previous()
            if self.burst and not looked_again:
                looked_again = True  # events are hints: read the folder itself before leaving
                self._relist_pending()
                continue
            if self.burst and not ingest.candidates(self.spool) and not self._pending.deferred:
                return  # (a deferred job is being moved into pending/ right now: wait for it)
            wake_at = min(next_failed, next_pending, keeping.clock.next_at)
            timeout = min(keeping.next_rescan - time.monotonic(), wake_at - timeutil.now(), execution.reap_hooks(),
                          self.admission.probe_in())
            if timeout > 0:
                self._idle(timeout)

    def _idle(self, timeout):
        """Wait for an event, a due time or a request: nothing to claim now."""
        self.moves.journal.flush()  # the finishes held so far reach `metrics` now
        self._config.look_now()  # a setting changed while we waited applies to the next job
        self.waker.wait(timeout)

    def _check_paused(self, event):
        """Whether the spool is paused (`queuectl pause`, any host; pausing.py)."""
        paused, changed = self._pause.check(event)
        if changed:
            self.log("spool paused: no new job is claimed until `queuectl resume`" if paused else "spool resumed")
        return paused

    def command_started(self):
        """The command of an attempt runs: file what was dropped with the job just taken."""
        if "incoming" in self._dirty:
            self._ingest_rest()

    def _ingest_rest(self):
        """File what waits in incoming/ into pending/."""
        self._dirty.discard("incoming")
        accepted, _ = ingest.ingest_all(self.spool, report=self._report_ingest)
        if accepted and self.waker.mechanism != "inotify":
            self.pending_changed_unseen()  # no event will name the new pending/ files

    # ---------------------------------------------------------------- the view of pending/

    def reopen_queues(self, reload=False):
        """A slot may be free, or the queues' settings changed: try the parked jobs again."""
        if reload:
            self.admission.stale = True
        if self._pending.parked or self.admission.closed:
            self.admission.reopen()
            self._pending.unpark()

    def pending_changed_unseen(self):
        """Files entered pending/ that no event will name: list it before the next pick."""
        self._pending.stale = True

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
            self.admission.forget(entry)
        for entry in added:
            if entry.startswith(".") or not os.path.lexists(os.path.join(self.layout.pending, entry)):
                continue
            index.add(entry, now)

    def share_names(self):
        """On a shared spool, split pending/ between the live workers (pending.py): our rank
        among their names. Redone when workers/ changes and after a take-back."""
        if not self.shared:
            return
        live = sorted(w["name"] for w in registry.live_workers(self.layout, own=self.name))
        share = (live.index(self.name), len(live)) if self.name in live and len(live) > 1 else None
        self._pending.share = share
        self._pending.steal_lag = self.housekeeping.rescan_interval()

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
            self.log(f"pending/{name}: a record put here by hand, filed as job {adopted.record['id']}")
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
        admission = self.admission
        if admission.known_closed(name):
            self._pending.park(name)  # its queue is full, paused or not ours: no read needed
            return
        try:
            held = self.moves.claim(name, self.host, self.pid, job_id=job_id,
                                    admit=lambda record: admission.admit(name, record))
        except Corrupt as exc:
            self.set_aside(exc)
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
        if held is None:
            self._pending.park(name)
            return
        admission.forget(name)
        self.claims_won += 1
        self._lost_in_row = 0
        self.execution.execute(held)

    # ---------------------------------------------------------------- reports

    def _lost_contact(self, pgid, silent):
        """Called by the contact watch's thread: it has just killed our running job."""
        self.log(f"no answer from the spool for {silent:.0f}s: job process group {pgid} killed; "
                 "it is left for a take-back")

    def set_aside(self, exc):
        try:
            dst = self.moves.set_aside(exc)
        except OSError:
            return
        if dst:
            self.log(f"{exc.state}/{exc.name} set aside in rejected/{dst}: {exc.reason}")

    def _report_ingest(self, kind, name, value):
        if kind == "accepted":
            self.log(f"incoming/{name} -> job {value['id']}")
        else:
            self.log(f"incoming/{name} rejected: {value}")

    def log(self, text):
        self.emit(f"{time.strftime('%H:%M:%S')} {self.id} {text}")


def check_filesystem(layout):
    """The checks of `queuectl doctor`: a filesystem that fails one is refused, in one line."""
    failed = doctor.failures(layout)
    if failed:
        first = failed[0]
        raise SpoolError(f"the spool's filesystem fails `queuectl doctor`: {first.name}: {first.detail}; "
                         f"fix: {first.fix}")


def run_worker(spool, burst=False, out=None, queues=None, gpus=None):
    """Entry point of a worker process; prints a line per event to `out` (stdout)."""
    out = out or sys.stdout

    def emit(line):
        try:
            out.write(line + "\n")
            out.flush()
        except (OSError, ValueError):
            pass

    worker = Worker(spool, burst=burst, emit=emit, queues=queues, gpus=gpus)
    worker.install_signal_handlers()
    try:
        return worker.run()
    except QueuectlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # e.g. a full disk while writing a record: one line, no traceback
        print(f"error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return 1
