"""A worker's attempts: run a claimed job's command, record its result, start its hook.

The result of an attempt whose command has exited is recorded while the worker's next command
starts (the finish overlaps the new command's start-up instead of delaying it), so a worker
holds up to two attempts: the one running and the one not yet recorded. Both stay in
processing/, locked, until recorded. A job that ends completed or dead starts its on-finish
hook (hooks.py) once the move is made.
"""
import os

from . import ingest, logs, registry, runner
from .errors import LostRace, QueuectlError
from .hooks import FINAL, Hooks, command_for
from .runner import Interrupt


class Attempt:
    """One claimed attempt, from the claim until its result is on disk."""

    def __init__(self, held, cfg):
        self.held = held          # the locked processing/ file (moves.Held)
        self.cfg = cfg            # the config the attempt started with
        self.outcome = None       # runner.Outcome once the command has exited
        self.announced = False    # its "started" line is printed
        self.pgid = None          # the command's process group, once it runs
        self.taken = None         # an ingest.Taken until its copy is settled
        self.guarded = False      # the command dies with its worker (runner.GUARD_SCRIPT)

    @property
    def record(self):
        return self.held.record

    @property
    def job_id(self):
        return self.held.record["id"]


class Execution:
    """The attempts of one worker (`worker`: its owner, whose spool, log, config, requests and
    housekeeping it uses)."""

    def __init__(self, worker):
        self.worker = worker
        self.spool = worker.spool
        self.running = None       # the Attempt whose command runs now
        self.unrecorded = None    # the Attempt whose command has exited, result not yet recorded
        self.base_env = dict(os.environ)  # a plain dict: cheaper to copy per job than os.environ
        self.hooks = Hooks(worker.spool.path, worker.host, worker.log, base_env=self.base_env)

    def held_names(self):
        """The processing/ names this worker holds: never taken back from it."""
        return {a.held.name for a in (self.running, self.unrecorded) if a is not None}

    def execute(self, held, taken=None):
        """Run a held attempt; `taken` when it is a dropped job stored straight as claimed
        (ingest.take_first): its copy goes once the command runs."""
        self.worker.admission.leave_lines()  # no place can be taken while this command runs
        attempt = self.running = Attempt(held, self.worker.config())
        attempt.taken = taken
        timeout = attempt.record.get("timeout_seconds")
        if timeout is None:
            timeout = attempt.cfg["job-timeout"]
        contact = self.worker.contact
        try:
            attempt.outcome = self._run(attempt, timeout)
        except BaseException:
            held.close()
            raise
        finally:
            self.running = None
            if contact is not None:
                contact.running(None)  # its group is gone: the id may be reused
            self._release_slots(held)
        if not attempt.announced:  # the command could not start: on_start never ran
            self._settle(attempt)
            self.record_previous()
            self._announce(attempt)
        self.unrecorded = attempt

    def _release_slots(self, held):
        """The command has exited: its queue's slots go at once, before the result is recorded."""
        grant, held.grant = held.grant, None
        if grant is not None and grant.fds:
            grant.release()
            self.worker.admission.released(held.record)
            self.worker.reopen_queues()

    def record_previous(self):
        """Record the result of the attempt whose command has exited, if any."""
        attempt, self.unrecorded = self.unrecorded, None
        if attempt is None:
            return
        try:
            self._finish(attempt)
        finally:
            attempt.held.close()  # a cancel request that came too late names this attempt: harmless

    def hook(self, record, cfg=None):
        """A job reached a final state here: start its on-finish hook, if it has one. `cfg`:
        the config at hand (an attempt's), which spares a stat of config.json per job."""
        cfg = cfg or self.worker.config()
        if record.get("state") in FINAL and command_for(record, cfg) is not None:
            self.spool.moves.journal.flush()  # the hook may ask `metrics` about this finish
        self.hooks.start(record, cfg, self.spool.log_path(record["id"]))

    def reap_hooks(self):
        """Seconds until a running on-finish hook must be killed (inf: none runs)."""
        return self.hooks.reap() if self.hooks.running else float("inf")

    # ---------------------------------------------------------------- one attempt

    def _announce(self, attempt):
        attempt.announced = True
        record = attempt.record
        total = record["max_retries"] + 1
        self.worker.log(f"job {record['id']} started (attempt {record['attempts']}/{total}): {record['command']}")

    def _started(self, pgid, attempt):
        """The command runs: note its process group, then record the previous attempt's result
        while this one runs."""
        worker = self.worker
        attempt.pgid = pgid
        if worker.contact is not None:
            worker.contact.running(pgid)
        if not attempt.guarded:  # a guarded job dies with its worker: no take-back has it to kill
            worker.job_note.set(pgid, attempt.job_id)
        self._settle(attempt)
        self.record_previous()
        self._announce(attempt)
        worker.command_started()

    def _settle(self, attempt):
        """A taken drop's command runs (or could not start): make the job durable, drop the copy.
        A failure leaves the copy, which stands for the job until recovery removes it."""
        taken, attempt.taken = attempt.taken, None
        if taken is None:
            return
        try:
            ingest.settle(self.spool, taken)
        except (OSError, QueuectlError) as exc:
            self.worker.log(f"job {attempt.job_id}: could not make its record durable ({exc}); "
                            "its dropped file is kept in tmp/ until recovery")

    def _run(self, attempt, timeout):
        worker, record, cfg = self.worker, attempt.record, attempt.cfg
        log_path = self.spool.log_path(record["id"])
        # a job holding a slot dies with its worker, as on a shared spool: the slot is free
        # then, and no orphan may run beside the next job
        attempt.guarded = worker.shared or bool(attempt.held.grant and attempt.held.grant.fds)
        for _ in range(2):
            try:
                return runner.run(record, log_path, self.spool.path, worker.id,
                                  timeout=timeout or None, log_max_bytes=cfg["log-max-bytes"],
                                  interrupt=worker.interrupt, wakeup_fds=worker.waker.control_fds,
                                  on_tick=worker.tick, base_env=self.base_env,
                                  guard=attempt.guarded,
                                  extra_env=gpu_env(attempt.held.grant),
                                  on_start=lambda pgid: self._started(pgid, attempt))
            except runner.LogError as exc:
                # something that is not a regular file sits where the log goes: set it aside
                try:
                    moved = self.spool.moves.move_aside(log_path, os.path.basename(log_path), str(exc))
                    worker.log(f"job {record['id']}: {exc}; moved to rejected/{moved}")
                except OSError:
                    return runner.Outcome(None, str(exc))
        return runner.Outcome(None, "cannot open the job's log")

    def _finish(self, attempt):
        worker, moves = self.worker, self.spool.moves
        held, outcome, cfg = attempt.held, attempt.outcome, attempt.cfg
        job_id = attempt.job_id
        if worker.contact is not None and attempt.pgid in worker.contact.killed:
            # killed for lost contact: another host may run it by now; record nothing
            worker.log(f"job {job_id} not recorded (killed for lost contact); left for a take-back")
            return
        try:
            if outcome.interrupted == Interrupt.NOW:
                moves.requeue(held)
                worker.log(f"job {job_id} stopped (--now): back in pending, attempt not counted")
                return
            if outcome.interrupted == Interrupt.CANCEL:
                new = moves.finish_cancelled(held)
                registry.clear_cancel(self.spool.layout, worker.name, job_id)
            else:
                new = moves.finish(held, outcome.exit_code, outcome.error,
                                   backoff=(cfg["backoff-base"], cfg["backoff-max"], cfg["backoff-jitter"]))
        except LostRace:
            # fenced off: the job was taken back while we ran it; its newer state stands
            self._note_in_log(job_id, "result discarded: the job was taken back from this worker")
            worker.log(f"job {job_id} finished late; result discarded (the job was taken back)")
            return
        rec = new.record
        if rec["state"] in ("completed", "dead"):
            self.hook(rec, cfg)
            # at once, even while our next command runs: other workers may take what it frees
            worker.housekeeping.ended(job_id)
        if rec["state"] == "completed":
            worker.log(f"job {job_id} completed in {outcome.duration:.2f}s")
        elif rec["state"] == "failed":
            worker.housekeeping.retries.add(new.name)  # no listing of failed/ to learn it (retries.py)
            worker.mark({"failed"})  # its due time counts for the next wake-up, with or without events
            worker.log(f"job {job_id} failed ({rec['last_error']}); retry at {rec['run_at']}")
        else:
            worker.log(f"job {job_id} dead ({rec['last_error']}) after {rec['attempts']} attempt(s)")

    def _note_in_log(self, job_id, text):
        try:
            fd = logs.open_for_append(self.spool.log_path(job_id))
            try:
                logs.append_line(fd, f"[queuectl: {text}]")
            finally:
                os.close(fd)
        except OSError:
            pass


def gpu_env(grant):
    """The variables that give a job exactly its GPUs (none: the job needs none)."""
    if grant is None or not grant.gpus:
        return None
    indices = ",".join(map(str, grant.gpus))
    return {"CUDA_VISIBLE_DEVICES": indices, "QUEUECTL_GPUS": indices}
