"""The move engine: every change of a job file's folder or content is made here.

The on-disk protocol these moves follow (layout, file names, the order of each
transition's steps, what is fsynced when, what a crash leaves) is written down in
docs/protocol.md; the rule numbers cited below are that document's.

This is the worker's and fsck's side of the spool: claim, finish, retry promotion,
take-back, requeue, adoption of hand-placed records, setting files aside. The public
Python API (spool.py) uses the same primitives (`find_held`, `move`) for the user's
operations, and ingest.py stores dropped jobs through `store_new`.
"""
import errno
import os
import time

from . import config as configmod
from . import fsutil, journal, locks, logs, names, timeutil
from .errors import Busy, DuplicateJob, FieldError, JobNotFound, LostRace, SpoolError, WrongState
from .faults import crashpoint
from .inventory import Inventory, as_read
from .job import State, check_record, due_time, running_record

MAX_DROP_BYTES = 1024 * 1024
MOVE_PREFIX = "mv-"  # tmp/mv-ID-PID-HEX.json: the new record of a move in progress
TAKE_PREFIX = "take-"  # ids/ID holds "take-HOST_PID" while a worker stores a dropped job as claimed
MARKER_WRITE_GRACE = 60.0  # a marker still empty this long after creation was left by a crash
# kinds of move that are not fsynced (a worker's claim, finish, promotion, take-back, ...);
# every other kind is (docs/protocol.md "Durability")
LAZY_MOVES = frozenset({"complete", "fail", "bury", "kill", "requeue", "promote", "takeback",
                        "takeback-dead", "unclaim", "release", "cascade"})
# kinds of move that end an attempt or finish a job: each appends a line to the journal
# (journal.py). The others start something (claim, promote, retry, release, ...) or undo a claim.
FINISHING_MOVES = frozenset({"complete", "fail", "bury", "kill", "takeback", "takeback-dead", "cancel", "cascade"})


class Held:
    """A job this process holds: the lock on its id marker (`lock_fd`), and its file's folder,
    name, record and open fd (`fd`, the inode a worker's pool may keep; may be None)."""

    def __init__(self, state, name, fd, record, lock_fd=None):
        self.state, self.name, self.fd, self.record = state, name, fd, record
        self.lock_fd = lock_fd
        self.grant = None  # the slots a claimed attempt holds (slots.Grant), if any

    def close(self):
        """Close the file and release the job's lock."""
        if self.fd is not None:
            fsutil.close_quiet(self.fd)
            self.fd = None
        if self.lock_fd is not None:
            fsutil.close_quiet(self.lock_fd)
            self.lock_fd = None


class Moves(Inventory):
    """Moves job files of one spool. A worker sets `pool` (pool.Pool): its lazy moves then
    recycle the inodes they displace instead of creating files."""

    def __init__(self, layout):
        self.layout = layout
        self.path = layout.root
        self._seq = 0
        self.pool = None
        self.durable_moves = False  # config durable-moves: a worker's moves fsynced too
        self.journal = journal.Writer(layout.journal)

    def next_seq(self):
        self._seq = max(self._seq + 1, time.time_ns())
        return self._seq

    def store_new(self, records, progress=None):
        """Write new pending records durably (rule 6). Duplicate id -> DuplicateJob, nothing kept."""
        lay = self.layout
        token = f"enq-{os.getpid()}-{os.urandom(4).hex()}"
        owner_path = os.path.join(lay.tmp, token + ".lock")
        batch = len(records) > 1
        staged, reserved = [], []
        owner_fd = None
        try:
            owner_fd = fsutil.write_new(owner_path, b"", sync=False)
            locks.hold(owner_fd)
            crashpoint("enqueue.locked")
            for record in records:
                tmp = os.path.join(lay.tmp, f"{token}-{len(staged)}.json")
                fsutil.write_file(tmp, fsutil.dumps(record), sync=not batch)
                staged.append(tmp)
                if progress and len(staged) % 200 == 0:
                    progress(len(staged), len(records))
                crashpoint("enqueue.staged")
            for record in records:
                self.reserve_id(record["id"], token)
                reserved.append(record["id"])
                crashpoint("enqueue.reserved")
            if batch:
                fsutil.syncfs(lay.tmp)
                crashpoint("enqueue.synced")
            for tmp, record in zip(staged, records):
                if record["state"] == State.BLOCKED:  # waits for its `after` (dependencies.py)
                    dst = os.path.join(lay.blocked, names.final_name(record["id"]))
                else:
                    dst = os.path.join(lay.pending, self.pending_name(record))
                os.rename(tmp, dst)
                reserved.remove(record["id"])  # in pending/ now: its marker must stay, whatever happens
                crashpoint("enqueue.renamed")
            staged = []
            for state in sorted({record["state"] for record in records}):
                fsutil.fsync_dir(lay.state_dir(state))
            fsutil.fsync_dir(lay.ids)
            crashpoint("enqueue.fsynced")
            reserved = []
        except OSError as exc:
            raise fsutil.translate(exc, "enqueue failed") from None
        finally:
            for tmp in staged:
                _unlink_quiet(tmp)
            for job_id in reserved:
                _unlink_quiet(os.path.join(lay.ids, job_id))
            if owner_fd is not None:
                fsutil.close_quiet(owner_fd)
                _unlink_quiet(owner_path)

    def reserve_id(self, job_id, token):
        """Create ids/ID with O_EXCL: of racing enqueuers exactly one wins, on a network
        filesystem too (link(2) is not exclusive there). The marker then holds `token`, the
        name of the enqueuer's lock file; a rival that reads it still empty treats it as being
        written. The marker is never replaced: it is also the job's lock file."""
        marker = os.path.join(self.layout.ids, job_id)
        try:
            fsutil.write_file(marker, token.encode(), sync=False)
            return
        except FileExistsError:
            pass
        # The id is taken, unless its marker was left by a crash.
        with locks.spool_lock(self.layout.ids_lock):
            if self.marker_owner_alive(marker):
                raise DuplicateJob(job_id, "being enqueued")
            for _ in range(3):  # a job moving between folders can slip past one look
                found = self.find(job_id)
                if found:
                    raise DuplicateJob(job_id, found[0])
                time.sleep(0.005)
            fd = fsutil.open_nofollow(marker, os.O_RDWR)  # rewritten in place: same inode, same lock
            try:
                os.pwrite(fd, token.encode(), 0)
                os.ftruncate(fd, len(token))
            finally:
                fsutil.close_quiet(fd)

    def marker_owner_alive(self, marker, now=None):
        """Whether an enqueue that created this marker may still be running: its owner's lock
        file is locked, or the marker is young and still empty (being written)."""
        try:
            fd = fsutil.open_nofollow(marker)
        except OSError:
            return False
        try:
            owner = fsutil.read_fd(fd, 256).decode("ascii", "replace").strip()
            age = (time.time() if now is None else now) - os.fstat(fd).st_mtime
        finally:
            fsutil.close_quiet(fd)
        if not owner:
            return age < MARKER_WRITE_GRACE
        if owner.startswith(TAKE_PREFIX):  # a worker storing a dropped job straight into processing/
            return locks.path_is_locked(marker)
        if not owner.startswith("enq-") or "/" in owner:
            return False
        return locks.path_is_locked(os.path.join(self.layout.tmp, owner + ".lock"))

    def job_locked(self, job_id):
        """Whether a live process holds job `job_id` (its id marker's lock)."""
        return locks.path_is_locked(os.path.join(self.layout.ids, job_id))

    # ---------------------------------------------------------------- transitions

    def lock(self, state, name, job_id=None):
        """Take job STATE/NAME: lock its id marker, then read its file. The lock is on the
        marker, never on the job file, because the marker's inode never changes while a job
        file's does at every move (a host with a stale cache could lock an old inode).
        Raises LostRace (gone), Busy (a live process holds the job) or Corrupt."""
        path = os.path.join(self.layout.state_dir(state), name)
        if job_id is None:
            job_id = names.id_of(state, name)
        if job_id is None:
            raise Corrupt(state, name, "a name that is not a job's")
        lock_fd = self._lock_marker(job_id, path)
        try:
            fd, st = fsutil.open_nofollow_stat(path, os.O_RDWR)
        except FileNotFoundError:
            fsutil.close_quiet(lock_fd)
            raise LostRace(f"{state}/{name} is gone") from None
        except OSError as exc:
            fsutil.close_quiet(lock_fd)
            if exc.errno in (errno.ELOOP, errno.EINVAL, errno.EISDIR, errno.ENXIO):
                raise Corrupt(state, name, "not a regular file (a symlink is never followed)") from None
            raise fsutil.translate(exc, f"{state}/{name}") from None
        try:
            if st.st_uid != os.geteuid():
                raise Corrupt(state, name, "owned by another user; not run (see docs/contract.md, Safety)")
            record = fsutil.read_json_fd(fd, from_start=False, size=st.st_size)  # just opened: no seek
            if not isinstance(record, dict):
                raise Corrupt(state, name, "not a JSON object")
            if record.get("id") != job_id:  # an inode since reused by a worker's pool: moved on
                raise LostRace(f"{state}/{name} was replaced")
        except FileNotFoundError:
            # GlusterFS opens lazily (open-behind): a file moved away since reads as ENOENT
            fsutil.close_quiet(fd)
            fsutil.close_quiet(lock_fd)
            raise LostRace(f"{state}/{name} is gone") from None
        except (ValueError, UnicodeDecodeError) as exc:
            fsutil.close_quiet(fd)
            fsutil.close_quiet(lock_fd)
            raise Corrupt(state, name, f"not valid JSON: {exc}") from None
        except BaseException:
            fsutil.close_quiet(fd)
            fsutil.close_quiet(lock_fd)
            raise
        return Held(state, name, fd, record, lock_fd)

    def _lock_marker(self, job_id, job_path):
        """Open and lock ids/ID. A missing marker is made only while the job file exists (a
        job without its marker gets one; a job gone since leaves none behind). Raises Busy
        when a live process holds it, LostRace when the job is gone."""
        path = os.path.join(self.layout.ids, job_id)
        flags = os.O_RDWR | fsutil.NOFOLLOW | fsutil.CLOEXEC
        try:
            try:
                fd = os.open(path, flags)
            except FileNotFoundError:
                if not os.path.lexists(job_path):
                    raise LostRace(f"{job_path} is gone") from None
                fd = os.open(path, flags | os.O_CREAT, 0o600)
        except OSError as exc:
            raise fsutil.translate(exc, f"ids/{job_id}") from None
        try:
            locks.try_lock(fd)
        except Busy:
            fsutil.close_quiet(fd)
            if not os.path.lexists(job_path):
                # its holder has moved it on (a claim that runs it): gone from here, not busy here
                raise LostRace(f"{job_path} is gone") from None
            raise
        except BaseException:
            fsutil.close_quiet(fd)
            raise
        return fd

    def move(self, held, dst_state, dst_name, record, kind, keep_lock=False):
        """Rule 3: fenced rename of a held job file, then its new content. Returns the new Held.

        Durability by kind (rule 8): user commands fsync the file and both folders before
        returning; a worker's moves are left to the filesystem's next commit, unless config
        `durable-moves` is on (`durable_moves`)."""
        durable = self.durable_moves or kind not in LAZY_MOVES
        lay = self.layout
        src = os.path.join(lay.state_dir(held.state), held.name)
        dst_dir = lay.state_dir(dst_state)
        dst = os.path.join(dst_dir, dst_name)
        record = dict(record, state=str(dst_state), updated_at=timeutil.iso(timeutil.now()))
        tmp = os.path.join(lay.tmp, f"{MOVE_PREFIX}{record['id']}-{os.getpid()}-{os.urandom(3).hex()}.json")
        # an mv-* file in tmp/ whose job is locked is a move in progress: recovery keeps off
        pool = None if durable else self.pool
        if pool is not None:
            new_fd = pool.write_new(tmp, fsutil.dumps(record))
        else:
            new_fd = fsutil.write_new(tmp, fsutil.dumps(record), sync=durable)
        crashpoint(f"{kind}.staged")
        try:
            # no look at dst first: on a network filesystem a stat may be stale; the rename of
            # src alone decides, and dst names carry the job's id, so they are the job's own
            try:
                os.rename(src, dst)          # a: the state change, and the fence
            except FileNotFoundError:
                raise LostRace(f"{held.state}/{held.name} was moved by someone else") from None
            crashpoint(f"{kind}.moved")
            spare = pool.keep(dst, held) if pool is not None else None  # the inode b displaces
            try:
                os.rename(tmp, dst)          # b: the new record
            except BaseException:
                if spare:
                    pool.discard(spare)
                raise
            tmp = None
            if kind in FINISHING_MOVES:  # the move is made: nothing the journal meets undoes it
                self.journal.append(record, ended_attempt=held.state == "processing")
            crashpoint(f"{kind}.replaced")
            if durable:
                fsutil.fsync_dir(dst_dir)
            if durable and dst_dir != os.path.dirname(src):
                fsutil.fsync_dir(os.path.dirname(src))
            crashpoint(f"{kind}.synced")
        except BaseException:
            fsutil.close_quiet(new_fd)
            if tmp:
                _unlink_quiet(tmp)
            raise
        lock_fd, held.lock_fd = held.lock_fd, None
        held.close()
        if keep_lock:
            return Held(str(dst_state), dst_name, new_fd, record, lock_fd)
        fsutil.close_quiet(new_fd)
        if lock_fd is not None:
            fsutil.close_quiet(lock_fd)
        return Held(str(dst_state), dst_name, None, record)

    def rewrite(self, held, record):
        """Replace the record of a held job file where it is (fsck's repair of a lagging
        state). Same rules: a new file in tmp/, renamed over the name."""
        folder = self.layout.state_dir(held.state)
        tmp = os.path.join(self.layout.tmp, f"{MOVE_PREFIX}{record['id']}-{os.getpid()}-{os.urandom(3).hex()}.json")
        fsutil.write_file(tmp, fsutil.dumps(record))
        os.rename(tmp, os.path.join(folder, held.name))
        fsutil.fsync_dir(folder)

    # -- the worker's side

    def claim(self, name, worker_host, worker_pid, job_id=None, admit=None):
        """Claim pending/NAME for this worker (rule 4). Returns the Held processing file.
        `job_id`: the id in NAME, when the caller has parsed it already. `admit(record)`, if
        given, is asked once the job is locked and read, before it moves: it returns what the
        attempt holds besides the job (a slots.Grant, kept as `Held.grant`), or None when the
        job may not start now; the claim then returns None and leaves the job in pending/.

        Raises LostRace/Busy when another worker was first, Corrupt for a damaged file.
        """
        if job_id is None:
            job_id = names.id_of("pending", name)
        held = self.lock("pending", name, job_id)
        try:
            check_record(held.record)
            if held.record["id"] != job_id:
                raise FieldError("id", "the record's id is not the one in its file name")
        except FieldError as exc:
            held.close()
            raise Corrupt("pending", name, str(exc)) from None
        grant = None
        if admit is not None:
            try:
                grant = admit(held.record)
            except BaseException:
                held.close()
                raise
            if grant is None:
                held.close()
                return None
        # One rename, the record left as it was: the attempt, its worker and its start are in
        # the new name (job.running_record), and the record is rewritten once, at the finish.
        started = round(timeutil.now(), 3)  # the name's START has milliseconds
        claim = names.ProcessingName(job_id, worker_host, worker_pid, held.record["attempts"] + 1, started)
        dst_name = names.processing_name(*claim)
        try:
            try:
                os.rename(os.path.join(self.layout.pending, name), os.path.join(self.layout.processing, dst_name))
            except FileNotFoundError:  # the fence: someone else moved it (a cancel)
                raise LostRace(f"pending/{name} was moved by someone else") from None
            crashpoint("claim.moved")
            if self.durable_moves:
                fsutil.fsync_dir(self.layout.processing)
                fsutil.fsync_dir(self.layout.pending)
            crashpoint("claim.synced")
        except BaseException:
            held.close()
            if grant is not None:
                grant.release()
            raise
        held.state, held.name, held.grant = str(State.PROCESSING), dst_name, grant
        held.record = running_record(held.record, claim)
        return held

    def store_claimed(self, record, worker_host, worker_pid):
        """A dropped job that this idle worker runs at once (rule 6b): reserve its id and write
        it straight into processing/ as this worker's first attempt, skipping pending/ and the
        claim. Nothing is fsynced here: the dropped file's copy in tmp/ stays until
        settle_claimed() has made the record durable, once the command runs. Returns the Held
        processing file, or None when ids/ID exists already (then store_new() decides: a
        duplicate, or a marker a crash left)."""
        lay = self.layout
        job_id = record["id"]
        marker = os.path.join(lay.ids, job_id)
        try:
            lock_fd = os.open(marker, os.O_RDWR | os.O_CREAT | os.O_EXCL | fsutil.NOFOLLOW | fsutil.CLOEXEC, 0o600)
        except FileExistsError:
            return None
        except OSError as exc:
            raise fsutil.translate(exc, f"ids/{job_id}") from None
        tmp = new_fd = None
        try:
            locks.try_lock(lock_fd)  # before the token: an empty marker reads as "being written"
            os.pwrite(lock_fd, f"{TAKE_PREFIX}{worker_host}_{worker_pid}".encode(), 0)
            now = round(timeutil.now(), 3)
            record = dict(record, state=str(State.PROCESSING), attempts=record["attempts"] + 1,
                          started_at=timeutil.iso(now), finished_at=None, worker=f"{worker_host}:{worker_pid}",
                          updated_at=timeutil.iso(now))
            name = names.processing_name(job_id, worker_host, worker_pid, record["attempts"], now)
            tmp = os.path.join(lay.tmp, f"{MOVE_PREFIX}{job_id}-{os.getpid()}-{os.urandom(3).hex()}.json")
            new_fd = fsutil.write_new(tmp, fsutil.dumps(record), sync=False)
            crashpoint("take.staged")
            os.rename(tmp, os.path.join(lay.processing, name))
            tmp = None
            crashpoint("take.moved")
        except BaseException as exc:
            if tmp:
                _unlink_quiet(tmp)
            if new_fd is not None:
                fsutil.close_quiet(new_fd)
            _unlink_quiet(marker)  # ours, and no job file carries it
            fsutil.close_quiet(lock_fd)
            if isinstance(exc, OSError):
                raise fsutil.translate(exc, f"job {job_id}") from None
            raise
        return Held(str(State.PROCESSING), name, new_fd, record, lock_fd)

    def settle_claimed(self, held, copy):
        """The command of a job stored by store_claimed() runs: make its record durable, then
        remove the dropped file's copy, which stood for the job until now."""
        try:
            if held.fd is not None:
                os.fsync(held.fd)
            fsutil.fsync_dir(self.layout.processing)
            fsutil.fsync_dir(self.layout.ids)
        except OSError as exc:
            raise fsutil.translate(exc, f"job {held.record['id']}") from None
        crashpoint("take.synced")
        _unlink_quiet(copy)
        crashpoint("take.done")

    def finish(self, held, exit_code=None, error=None, backoff=None):
        """End an attempt: completed if exit_code == 0 and no error, else failed/dead
        (docs/contract.md "Running a job"). `backoff` = (base, max, jitter). Raises LostRace when fenced off."""
        record = dict(held.record)
        now = timeutil.now()
        record.update(finished_at=timeutil.iso(now), exit_code=exit_code)
        if exit_code == 0 and error is None:
            record.update(last_error=None, run_at=None)  # run_at is the *next* attempt's
            return self.move(held, State.COMPLETED, names.final_name(record["id"]), record, kind="complete")
        record["last_error"] = error or f"exit code {exit_code}"
        return self._fail(held, record, now, backoff)

    def _fail(self, held, record, now, backoff, retry_kind="fail", dead_kind="bury"):
        base, cap, jitter = backoff or self.backoff_config()
        if record["attempts"] <= record["max_retries"]:
            delay = min(base ** record["attempts"], cap)
            if jitter:
                import random
                delay += delay * random.uniform(0, jitter)
            retry_at = now + delay
            record["run_at"] = timeutil.iso(retry_at)
            return self.move(held, State.FAILED, names.failed_name(retry_at, record["id"]), record, kind=retry_kind)
        record["run_at"] = None
        return self.move(held, State.DEAD, names.final_name(record["id"]), record, kind=dead_kind)

    def backoff_config(self):
        cfg = configmod.read(self.layout.config)
        return cfg["backoff-base"], cfg["backoff-max"], cfg["backoff-jitter"]

    def finish_cancelled(self, held):
        """End a running attempt killed by `cancel --kill`: the job goes to dead/."""
        record = dict(held.record, exit_code=None, last_error="cancelled", run_at=None,
                      finished_at=timeutil.iso(timeutil.now()))
        return self.move(held, State.DEAD, names.final_name(record["id"]), record, kind="kill")

    def requeue(self, held, reason=None):
        """Put a running job back in pending/ without counting the attempt (stop --now)."""
        record = dict(held.record)
        record.update(attempts=max(0, record["attempts"] - 1), exit_code=None,
                      finished_at=timeutil.iso(timeutil.now()))
        if reason:
            record["last_error"] = reason
        return self.move(held, State.PENDING, self.pending_name(record), record, kind="requeue")

    def pending_name(self, record, due=None):
        due = due_time(record) if due is None else due
        return names.pending_name(record["priority"], due, self.next_seq(), record["id"])

    def release(self, held):
        """A blocked job whose dependencies have all completed goes to pending/, in its claim
        order (its due time is its run_at or creation time, as at enqueue)."""
        record = dict(held.record)
        return self.move(held, State.PENDING, self.pending_name(record), record, kind="release")

    def bury_blocked(self, held, reason):
        """A blocked job one of whose dependencies is dead goes to dead/ without running."""
        record = dict(held.record, last_error=reason, run_at=None, exit_code=None,
                      finished_at=timeutil.iso(timeutil.now()))
        return self.move(held, State.DEAD, names.final_name(record["id"]), record, kind="cascade")

    def promote(self, name, now=None):
        """Move a due failed/NAME into pending/ so it competes by priority. LostRace/Busy if not ours."""
        now = timeutil.now() if now is None else now
        held = self.lock("failed", name)
        try:
            check_record(held.record)
        except FieldError as exc:
            held.close()
            raise Corrupt("failed", name, str(exc)) from None
        record = dict(held.record)
        try:
            return self.move(held, State.PENDING, self.pending_name(record), record, kind="promote")
        except BaseException:
            held.close()
            raise

    def take_back(self, name, reason=None):
        """Rule 5: take back processing/NAME if its owner is dead (its lock is free).

        Returns the new Held, or raises Busy (owner alive) / LostRace."""
        held = self.lock("processing", name)
        parsed = names.parse_processing(name)
        host, pid = (parsed.host, parsed.pid) if parsed else ("?", "?")
        try:
            check_record(held.record)
            if not parsed or held.record["id"] != parsed.job_id:
                raise FieldError("id", "the record's id is not the one in its file name")
        except FieldError as exc:
            held.close()
            raise Corrupt("processing", name, str(exc)) from None
        running = as_read("processing", name, held.record)  # a claim of this version: the name merged in
        newer = self._newer_final_copy(running)
        if newer:  # a power cut kept a finishing move's new record but not its first rename
            held.close()
            try:
                self.move_aside(os.path.join(self.layout.processing, name), name,
                                f"found in processing/ and set aside: the job is also in {newer} (newer)")
            except FileNotFoundError:
                # no power cut: its worker finished it just now, and this host's cache still
                # showed the name (GlusterFS keeps a name that moved away for a second or two)
                pass
            raise LostRace(f"processing/{name}: the job is also in {newer}")
        from . import registry
        registry.kill_leftover_job(self.layout, host, pid, held.record["id"])  # one copy at a time
        record = dict(held.record)
        try:
            if not self._attempt_started(record, parsed):
                if parsed.started is not None:  # the attempt as the name counts it, not yet begun
                    record["attempts"] = max(0, parsed.attempt - 1)
                return self.move(held, State.PENDING, self.pending_name(record), record, kind="unclaim")
            record = dict(running)
            now = timeutil.now()
            record.update(exit_code=None, finished_at=timeutil.iso(now),
                          last_error=reason or f"worker lost (host {host}, pid {pid})")
            return self._fail(held, record, now, None, retry_kind="takeback", dead_kind="takeback-dead")
        except BaseException:
            held.close()
            raise

    def _attempt_started(self, record, claim):
        """Whether the command of the attempt in processing/ under `claim` (its parsed name)
        may have started: then the attempt counts."""
        if claim.started is None:  # 0.1.0's claim: its second rename wrote the running record
            return record.get("state") == "processing"
        if record.get("state") == "processing" and record.get("worker") == claim.worker \
                and record.get("attempts") == claim.attempt:
            return True  # a dropped job taken straight into processing/ (rule 6b)
        if claim.host != names.hostname():
            # the header reaches the shared filesystem's server later than the claim did:
            # another host's log proves nothing, and the attempt counts
            return True
        # the log tells whether the attempt's header was written, just before the command started
        return logs.attempt_started(self.layout.log(record["id"]), claim)

    def _newer_final_copy(self, record):
        """STATE/NAME of a copy of `record`'s job in completed/, dead/ or blocked/ that is at
        least as new, else None (three lookups by name: a take-back is rare)."""
        name = names.final_name(record["id"])
        for state in (State.COMPLETED, State.DEAD, State.BLOCKED):
            path = os.path.join(self.layout.state_dir(state), name)
            try:
                other = check_record(fsutil.read_json(path))
            except (OSError, ValueError, FieldError):
                continue
            # the same job (after a power cut, a recycled inode may hold another job's record)
            if other["id"] == record["id"] and (other.get("updated_at") or "") >= (record.get("updated_at") or ""):
                return f"{state.value}/{name}"
        return None

    def take_back_lost(self, exclude=(), candidates=None, on_error=None):
        """Take back every processing/ job whose owner is dead (of `candidates`, names listed
        earlier, if given). Returns the records taken back. A job that cannot be moved (a
        full disk) raises, unless `on_error(name, exc)` is given: it is told, and the others
        are still taken back."""
        out = []
        for name in self.names("processing") if candidates is None else candidates:
            if name in exclude:
                continue
            try:
                try:
                    out.append(self.take_back(name).record)
                except Corrupt as exc:
                    self.set_aside(exc)
                except LostRace:
                    continue
            except (OSError, SpoolError) as exc:
                if on_error is None:
                    raise
                on_error(name, exc)
        return out

    def set_aside(self, corrupt):
        """Move a damaged or foreign file found in a state folder to rejected/ (never run it)."""
        src = os.path.join(self.layout.state_dir(corrupt.state), corrupt.name)
        try:
            return self.move_aside(src, corrupt.name, f"found in {corrupt.state}/ and set aside: {corrupt.reason}")
        except FileNotFoundError:
            return None

    # -- helpers of the user operations (spool.py) and of fsck

    def find_held(self, job_id, states):
        for _ in range(5):
            found = self.find(job_id, patient=True)
            if not found:
                raise JobNotFound(job_id)
            if found[0] not in states:
                return found[0], None
            try:
                return found[0], self.lock(*found)
            except Corrupt as exc:
                raise WrongState(f"job {job_id!r}: {exc.reason} (see `queuectl fsck`)") from None
            except LostRace as exc:
                if isinstance(exc, Busy):
                    raise WrongState(f"job {job_id!r} is busy (a worker is moving it); try again") from None
                continue
        raise WrongState(f"job {job_id!r} keeps moving; try again")

    def adopt(self, name):
        """A whole record put into pending/ by hand (`mv dead/ID.json pending/`: plain mv
        works, docs/contract.md): file it under its proper name as a new try, like `dlq
        retry` (attempts 0, due now). Raises Corrupt when it is not a record of a job that
        exists nowhere else (the worker then checks it as a dropped file), LostRace/Busy when
        someone else has it."""
        path = os.path.join(self.layout.pending, name)
        try:
            job_id = check_record(fsutil.read_json(path))["id"]  # its lock is the id's marker
        except FileNotFoundError:
            raise LostRace(f"pending/{name} is gone") from None
        except (OSError, ValueError, UnicodeDecodeError, TypeError, KeyError, FieldError) as exc:
            raise Corrupt("pending", name, f"not a job record: {exc}") from None
        held = self.lock("pending", name, job_id)
        try:
            check_record(held.record)
            job_id = held.record["id"]
            found = self.find(job_id)
            if found and found != ("pending", name):
                raise FieldError("id", f"job {job_id!r} is also in {found[0]}/")
        except FieldError as exc:
            held.close()
            raise Corrupt("pending", name, str(exc)) from None
        now = timeutil.now()  # its id is reserved now: lock() made the marker if it was missing
        record = dict(held.record, attempts=0, run_at=timeutil.iso(now), exit_code=None, finished_at=None)
        try:
            return self.move(held, State.PENDING, self.pending_name(record, now), record, kind="adopt")
        except BaseException:
            held.close()
            raise

    def delete(self, held):
        """Purge a held completed/ or dead/ job: its file, then its log, then its id marker
        (the id is free again only once nothing of the job is left)."""
        job_id = held.record.get("id") or names.id_of(held.state, held.name)
        os.unlink(os.path.join(self.layout.state_dir(held.state), held.name))
        crashpoint("purge.unlinked")
        if job_id:
            _unlink_quiet(self.layout.log(job_id))
            crashpoint("purge.log-unlinked")
            _unlink_quiet(os.path.join(self.layout.ids, job_id))
            crashpoint("purge.id-unlinked")

    def sync_folder(self, state):
        fsutil.fsync_dir(self.layout.state_dir(state))

    def move_aside(self, src_path, name, reason):
        """Put a file that is not a valid job into rejected/ beside NAME.error; never overwrite."""
        raw = os.fsencode(name)  # a dropped name need not be UTF-8
        short = name if len(raw) <= 200 else os.fsdecode(raw[:200])
        if short != name:
            reason += f"\n(original name, shortened here: {name})"
        for _ in range(100):  # another process may pick the same free name: O_EXCL decides
            dst_name = unique_name(self.layout.rejected, short)
            try:
                fsutil.write_file(os.path.join(self.layout.rejected, dst_name + ".error"),
                                  (reason.rstrip() + "\n").encode("utf-8", "replace"))
                break
            except FileExistsError:
                continue
        dst = os.path.join(self.layout.rejected, dst_name)
        crashpoint("reject.explained")
        try:
            os.rename(src_path, dst)
        except FileNotFoundError:  # moved on meanwhile: no explanation without its file
            _unlink_quiet(os.path.join(self.layout.rejected, dst_name + ".error"))
            raise
        crashpoint("reject.moved")
        fsutil.fsync_dir(self.layout.rejected)
        return dst_name


class Corrupt(LostRace):
    """A job file in a state folder that cannot be read as a record."""

    def __init__(self, state, name, reason):
        self.state, self.name, self.reason = state, name, reason
        super().__init__(f"{state}/{name}: {reason}")


def unique_name(folder, name):
    """`name`, or name.1, name.2, ... so that neither it nor its .error exists in `folder`."""
    candidate, n = name, 0
    while os.path.lexists(os.path.join(folder, candidate)) or \
            os.path.lexists(os.path.join(folder, candidate + ".error")):
        n += 1
        candidate = f"{name}.{n}"
    return candidate


def _same_inode(path, fd):
    try:
        return os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _unlink_quiet(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
