"""Reading the spool: find a job by id, records, listings, counts, status. Nothing here moves
a file; the Spool class (spool.py) inherits these methods.

Final states are found by name (completed/ID.json, dead/ID.json); pending/, failed/ and
processing/ names carry more than the id, so those folders are listed. Counts come from
listings alone, never from opening files.
"""
import itertools
import os
import time

from . import fsutil, names, queues, timeutil
from .errors import JobNotFound, SpoolError
from .job import STATES, State, check_id, queue_of, running_record
from .waiting import why_waiting


FIND_AGAIN = (0.0, 0.05, 0.2, 0.5)  # pauses before the looks again of find()
WAITING_SCAN = 50  # due pending jobs `status` reads to say why they wait (a read each)
UNREADABLE_PATIENCE = 1.5  # seconds a record that is not valid JSON is read again before it is called damaged


def as_read(state, name, record):
    """The record of STATE/NAME as readers show it: in processing/, a claim of this version
    left the record as it was and its name holds the running attempt (job.running_record)."""
    claim = names.parse_processing(name) if state == "processing" else None
    if claim is None or claim.started is None or not isinstance(record, dict):
        return record
    return running_record(record, claim)


class Inventory:
    """Read-only views of a spool; needs `self.layout` and `self.path`."""

    def find(self, job_id, patient=False):
        """(state, file name) of a job, or None. Final states and blocked/ by name; the others
        by listing. A job that moves between two folders while they are listed one after the
        other is in neither listing: `patient` (for a "no such job" said to a user) looks
        again while its id marker says it exists, for up to a second (a network filesystem
        may show a listing that old)."""
        check_id(job_id)
        for pause in FIND_AGAIN if patient else ():
            found = self._find_once(job_id)
            if found or not os.path.lexists(os.path.join(self.layout.ids, job_id)):
                return found
            time.sleep(pause)
        return self._find_once(job_id)

    def _find_once(self, job_id):
        lay = self.layout
        final = names.final_name(job_id)
        for state in (State.COMPLETED, State.DEAD, State.BLOCKED):
            if os.path.lexists(os.path.join(lay.state_dir(state), final)):
                return state.value, final
        for state in (State.PROCESSING, State.PENDING, State.FAILED):
            for name in fsutil.listdir(lay.state_dir(state)):
                if job_id in name and names.id_of(state.value, name) == job_id:
                    return state.value, name
        return None

    def get(self, job_id):
        """The job's record, its `state` taken from its folder. JobNotFound if none."""
        for _ in range(5):  # a job may move between find and read; look again
            found = self.find(job_id, patient=True)
            if not found:
                break
            try:
                record = self._read_settled(found[0], found[1])
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                raise SpoolError(f"job {job_id!r}: {found[0]}/{found[1]} is unreadable ({exc}); "
                                 "see `queuectl fsck`") from None
            if not isinstance(record, dict):
                raise SpoolError(f"job {job_id!r}: {found[0]}/{found[1]} is not a record; see `queuectl fsck`")
            return record
        raise JobNotFound(job_id)

    def _read_settled(self, state, name):
        """_read(), reading a record that is not valid JSON again for UNREADABLE_PATIENCE: on a
        network filesystem a record just renamed into place may read empty or short from
        another host for a moment (MooseFS: until the writer's close and the reader's
        attribute cache catch up); a damaged file stays so."""
        give_up = time.monotonic() + UNREADABLE_PATIENCE
        while True:
            try:
                return self._read(state, name, patience=UNREADABLE_PATIENCE)
            except ValueError:
                if time.monotonic() >= give_up:
                    raise
                time.sleep(0.05)

    def _read(self, state, name, patience=0.02):
        """A job file's record. A claimed job's file in processing/ holds its record as it was
        claimed: the running attempt is merged in from the name (rule 4). Between the two
        renames of a move (docs/protocol.md, rule 3) the file still holds the previous record
        while the new one waits in tmp/mv-ID-*.json: wait a moment for it to land, else read
        it from tmp/; label the record by its folder after `patience` seconds (`get` waits
        longer: another host's cache may show the old record for up to a second, and after a
        claim that record is the one claimed, without its attempt)."""
        path = os.path.join(self.layout.state_dir(state), name)
        claim = names.parse_processing(name) if state == "processing" else None
        expected_id = claim.job_id if claim else names.id_of(state, name)
        give_up = time.monotonic() + patience
        for attempt in itertools.count():
            record = fsutil.read_json(path)
            if isinstance(record, dict) and expected_id and record.get("id") != expected_id:
                # opened just before a worker displaced the file and reused its inode (pool.py)
                raise FileNotFoundError(path)
            if claim and claim.started is not None and isinstance(record, dict):
                return running_record(record, claim)  # no record waits in tmp/ for a claim
            if not isinstance(record, dict) or record.get("state") == state:
                return record
            if attempt == 0:
                staged = self._staged_record(record.get("id"), state)
                if staged is not None:
                    return staged
            if time.monotonic() >= give_up:
                record["state"] = state
                return record
            time.sleep(0.002 if attempt < 10 else 0.05)

    def _staged_record(self, job_id, state):
        if not isinstance(job_id, str):
            return None
        prefix = f"mv-{job_id}-"
        for entry in fsutil.listdir(self.layout.tmp):
            if entry.startswith(prefix) and entry.endswith(".json"):
                try:
                    staged = fsutil.read_json(os.path.join(self.layout.tmp, entry))
                except (OSError, ValueError):
                    continue
                if isinstance(staged, dict) and staged.get("id") == job_id and staged.get("state") == state:
                    return staged
        return None

    def names(self, state):
        """Job file names of one state folder, in claim order for pending/ and failed/."""
        return sorted(n for n in fsutil.listdir(self.layout.state_dir(state))
                      if n.endswith(names.SUFFIX) and not n.startswith("."))

    def list(self, state=None, limit=None, queue=None):
        """Records of one state (or all), pending in claim order; of one queue, if given.
        Unreadable files are skipped."""
        states = [State(state).value] if state else STATES
        out = []
        for st in states:
            for name in self.names(st):
                if limit is not None and len(out) >= limit:
                    return out
                try:
                    record = self._read(st, name)
                except (OSError, ValueError):
                    continue
                if isinstance(record, dict) and (queue is None or queue_of(record) == queue):
                    out.append(record)
        return out

    def counts(self, now=None):
        return count_jobs(self.layout, now)

    def status(self):
        """What `status` shows: counts, live workers with their current job, oldest waiting job,
        the queues with settings, and the first due jobs that no live worker can serve (why)."""
        from . import registry
        paused = os.path.lexists(self.layout.paused)
        live = registry.live_workers(self.layout)
        settings = queues.read_all(self.layout)
        return {"spool": self.path, "paused": paused, "counts": self.counts(), "workers": self.workers(live),
                "oldest_waiting": self._oldest_waiting(),
                "queues": [dict(s.as_dict(), running=None) for s in settings.values()],
                "waiting": self.waiting(live, settings)}

    def waiting(self, live, settings, scan=WAITING_SCAN):
        """[{id, queue, why}] for the first `scan` due jobs of pending/ that no live worker
        can run (a paused queue, no worker of its queue, more GPUs than offered)."""
        out = []
        due = names.stamp(timeutil.now())
        for name in self.names("pending")[:scan]:
            if names.pending_due_text(name) > due:
                break
            try:
                record = self._read("pending", name)
            except (OSError, ValueError):
                continue
            why = why_waiting(record, live, settings) if isinstance(record, dict) else None
            if why:
                out.append({"id": record["id"], "queue": queue_of(record), "why": why})
        return out

    def why_waiting(self, record):
        """Why this pending job waits although due, or None (for `show`)."""
        from . import registry
        if record.get("state") != "pending":
            return None
        return why_waiting(record, registry.live_workers(self.layout), queues.read_all(self.layout))

    def workers(self, live=None):
        """Live workers (any host), each with the job it runs now and since when, and the queues
        and GPUs it serves."""
        from . import registry
        running = {}
        for name in self.names("processing"):
            parsed = names.parse_processing(name)
            if parsed:
                running[registry.worker_name(parsed.host, parsed.pid)] = (parsed.job_id, name)
        workers = []
        for w in registry.live_workers(self.layout) if live is None else live:
            job, since = None, None
            if w["name"] in running:
                job, name = running[w["name"]]
                try:
                    since = self._read("processing", name).get("started_at")
                except (OSError, ValueError):
                    pass
            workers.append({"host": w.get("host"), "pid": w.get("pid"), "job": job, "since": since,
                            "started_at": w.get("started_at"), "queues": w.get("queues"), "gpus": w.get("gpus") or []})
        return workers

    def _oldest_waiting(self):
        """The waiting job (pending or failed) enqueued first. Pending names carry the enqueue
        time, so only the first of each priority and the failed/ records are read."""
        candidates = []
        pending = self.names("pending")
        best = min(pending, key=lambda n: n[names.PENDING_SEQ], default=None)
        if best:
            candidates.append(("pending", best))
        candidates += [("failed", n) for n in self.names("failed")[:1000]]
        oldest = None
        for state, name in candidates:
            try:
                rec = self._read(state, name)
                ts = timeutil.parse_iso(rec["created_at"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if oldest is None or ts < oldest[0]:
                oldest = (ts, {"id": rec["id"], "state": state, "created_at": rec["created_at"],
                               "age_seconds": round(timeutil.now() - ts, 3)})
        return oldest[1] if oldest else None

    def log_path(self, job_id):
        return self.layout.log(check_id(job_id))


def count_jobs(layout, now=None):
    """Jobs per folder; `scheduled` = pending ones not due yet. From listings alone: no file
    is opened, nothing sorted, and due times are compared as the fixed-width text of the
    names. Folders but pending/ are counted without a string per name (fsutil.count_job_files:
    1,000,000 completed jobs cost one pass of getdents64)."""
    now = timeutil.now() if now is None else now
    counts = {"incoming": fsutil.count_job_files(layout.incoming)}
    for st in STATES:
        counts[st] = fsutil.count_job_files(layout.state_dir(st)) if st != "pending" else 0
    pending = [n for n in fsutil.listdir(layout.pending) if n.endswith(names.SUFFIX) and not n.startswith(".")]
    counts["pending"] = len(pending)
    due_stamp = names.stamp(now)
    counts["scheduled"] = sum(1 for n in pending if names.pending_due_text(n) > due_stamp)
    return counts
