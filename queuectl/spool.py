"""The spool and its on-disk protocol. Every change of a job's state is made here (the
drop box, ingest.py, and fsck.py's repairs only move files that are not jobs yet, or not
jobs any more, and a worker re-routes a hand-made file from pending/ into incoming/).

Layout (SPEC "The spool on disk"): incoming/ pending/ processing/ failed/ completed/ dead/
logs/ rejected/ tmp/, plus ids/ (one empty-ish marker per job id), workers/ (one
registry file per live worker or supervisor, locked by it for life, its stop/cancel
requests and a note of its running job's process group) and config.json. Everything is created 0700. File names: see names.py.

Rules every transition follows
------------------------------
1. A job file is immutable. A change of state or content is a *new* file written in tmp/
   (and locked while the move lasts) and renamed into place; nothing is rewritten in place.
2. Whoever moves a job file first opens it (O_NOFOLLOW) and takes an exclusive,
   non-blocking flock on it (portalocker), then checks that the name still points at the
   inode it locked. A lock held by someone else means "busy": skip it. A worker holds the
   lock of its processing/ file for the whole attempt, so on a local filesystem a free
   lock on a processing/ file means its owner is dead.
3. A transition is two renames, in this order:
      a. rename(SRC, DST)        - the state change itself, atomic. It is also the FENCE: it
                                   fails with ENOENT if someone else moved SRC first (the
                                   job was taken back, cancelled, claimed by another worker).
                                   The loser discards its result; it never writes.
      b. rename(tmp/NEW, DST)    - the new record replaces the old content of DST. The mover
                                   still holds the lock on DST's old inode, so no one else
                                   moves DST in between.
   then the folders are fsynced as rule 8 says. Between a and b, DST holds the previous
   record, whose `state` lags behind its folder; readers read the new record from tmp/
   (inventory.py), and fsck.py finishes step b after a crash (the record in tmp/ names its
   id and state). So at every instant each job is in exactly one state folder.
4. A claim is the transition pending/NAME -> processing/ID_HOST_PID_aN.json. Before step b
   the claimer also locks the new file, so the processing/ name is never unlocked while
   its owner lives. `attempts` is incremented in that record, so it is in place before the
   command starts: a job that kills its worker still counts, and a poison pill ends in dead/.
   The processing name is unique per attempt; the attempt ends with the fenced rename
   processing/ID_HOST_PID_aN.json -> completed/ | failed/ | dead/ | pending/. If the job was
   taken back meanwhile, that name no longer exists and the late worker's result is
   dropped (logged in the job's log), whatever the job's newer state is.
5. Take-back: any process that locks a processing/ file (the owner is dead) moves it to
   failed/ or dead/ as a failed attempt, `last_error` "worker lost (host H, pid P)", after
   killing what is left of the job's process group on this host (registry.py), so that at
   most one copy runs. If the record in it does not say processing yet (the claimer died
   between 3a and 3b: the command never started), it goes back to pending/ uncounted.
6. Enqueue: the id is reserved by creating ids/ID with O_EXCL (atomic: of two racing
   enqueuers exactly one wins; O(1), no scan). The marker holds the name of the
   enqueuer's lock file, flock-held until its jobs are in pending/, so a marker left by a
   crashed enqueuer (lock free, no job with that id) is taken over, under a spool lock.
   Job files are written in tmp/, then (one fsync per job, or one syncfs for a batch)
   renamed into pending/, then pending/ and ids/ are fsynced; only then does enqueue return.
7. Liveness is the lock, never a PID: the kernel releases a dead process's flock, on any
   host. Events (inotify) are only hints; every worker rescans the folders every 2 s.
8. Durability. enqueue, cancel, dlq retry, purge and config fsync everything they wrote
   before returning. A worker's moves (claim, finish, retry promotion, take-back) are
   atomic and visible to every process at once - which is what a worker's death needs:
   the claimed record with `attempts` + 1 is in place before the command starts, so a job
   that kills its worker still counts the attempt - but they are not fsynced: they reach
   the disk with the filesystem's next commit (ext4: within 5 s). A power cut can set a
   job back by one step (a finished job found in processing/ again is taken back and run
   again: at-least-once), never lose it or put it in two folders. An fsync per move
   would cost a third of the drain rate (bench/).
9. Spare inodes (pool.py): a worker's moves keep the inode that step b displaces (linked
   into tmp/free-HOST_PID-N before b, still locked by the mover) and write their next
   staged record into it, so a job creates and frees no record file. Readers check that
   a record's id is the one in its name (inventory.py), since an inode they opened may
   since have been reused.
10. What a crash leaves: a file in tmp/ (finished, moved aside or deleted by fsck.py, which
   every worker runs at start), a stale id marker (taken over), a processing/ file with a
   free lock (taken back), an incoming file claimed into tmp/ (put back into incoming/ or,
   if its job exists, removed), a dead worker's spares in tmp/ (removed).
"""
import errno
import os
import time

from . import config as configmod
from . import fsutil, locks, names, timeutil
from .faults import crashpoint
from .errors import (Busy, DuplicateJob, FieldError, JobNotFound, LostRace,
                     SpoolError, WrongState)
from .job import State, check_record, due_time, new_record, validate_input
from .inventory import Inventory
from .paths import Layout, default_spool

MAX_DROP_BYTES = 1024 * 1024
# rule 8: the moves a worker makes are not fsynced; every other move is (see Spool._move)
LAZY_MOVES = {"claim", "complete", "fail", "bury", "kill", "requeue", "promote", "takeback",
              "takeback-dead", "unclaim"}


class Held:
    """A job file this process has locked: its folder, name, open fd and record."""

    def __init__(self, state, name, fd, record):
        self.state, self.name, self.fd, self.record = state, name, fd, record

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Spool(Inventory):
    """A queuectl spool. `Spool(path)` creates the folders on first use (mode 0700)."""

    def __init__(self, path=None, create=True):
        self.layout = Layout(path or default_spool())
        self.path = self.layout.root
        if create:
            self.layout.create()
        self._seq = 0
        self.pool = None  # a worker sets a pool.Pool: its moves then recycle inodes

    # ---------------------------------------------------------------- config

    def config(self):
        return configmod.read(self.layout.config)

    def set_config(self, key, value):
        name = configmod.canonical_key(key)
        number = configmod.parse_value(name, value)
        with locks.spool_lock(self.layout.config_lock):
            data = configmod.stored(self.layout.config)
            data[name] = number
            configmod.write(self.layout.config, self.layout.tmp, data)
        return number

    def unset_config(self, key):
        name = configmod.canonical_key(key)
        with locks.spool_lock(self.layout.config_lock):
            data = configmod.stored(self.layout.config)
            data.pop(name, None)
            data.pop(name.replace("-", "_"), None)
            configmod.write(self.layout.config, self.layout.tmp, data)
        return configmod.KEYS[name][0]

    # ---------------------------------------------------------------- enqueue

    def enqueue(self, command=None, **fields):
        """Add one job; returns its record. Raises FieldError / DuplicateJob (nothing changed)."""
        if command is not None:
            fields["command"] = command
        return self.enqueue_many([fields])[0]

    def enqueue_many(self, items, progress=None):
        """Add jobs all or nothing: every item is checked first; returns the records.
        `progress(done, total)`, if given, is called as the job files are written."""
        if not items:
            return []
        now = timeutil.now()
        defaults = {"max_retries": self.config()["max-retries"]}
        records, seen = [], set()
        for index, item in enumerate(items):
            try:
                fields = validate_input(item, defaults, now=now)
            except FieldError as exc:
                if len(items) > 1:
                    raise FieldError(f"job {index + 1}: {exc.field}", str(exc).split(": ", 1)[1]) from None
                raise
            record = new_record(fields, now)
            if record["id"] in seen:
                raise FieldError(f"job {index + 1}: id", f"{record['id']!r} appears twice in the batch")
            seen.add(record["id"])
            records.append(record)
        self._store_new(records, progress)
        return records

    def _next_seq(self):
        self._seq = max(self._seq + 1, time.time_ns())
        return self._seq

    def _store_new(self, records, progress=None):
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
                self._reserve_id(record["id"], token)
                reserved.append(record["id"])
                crashpoint("enqueue.reserved")
            if batch:
                _syncfs(lay.tmp)
                crashpoint("enqueue.synced")
            for tmp, record in zip(staged, records):
                name = names.pending_name(record["priority"], due_time(record), self._next_seq(), record["id"])
                os.rename(tmp, os.path.join(lay.pending, name))
                reserved.remove(record["id"])  # in pending/ now: its marker must stay, whatever happens
                crashpoint("enqueue.renamed")
            staged = []
            fsutil.fsync_dir(lay.pending)
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
                os.close(owner_fd)
                _unlink_quiet(owner_path)

    def _reserve_id(self, job_id, token):
        """Create ids/ID atomically with its content: link(2) of a complete tmp file fails with
        EEXIST when the id is taken, and a rival never sees a half-written marker."""
        marker = os.path.join(self.layout.ids, job_id)
        tmp = os.path.join(self.layout.tmp, f"{token}-id-{os.urandom(3).hex()}")
        fsutil.write_file(tmp, token.encode(), sync=False)
        try:
            os.link(tmp, marker)
            return
        except FileExistsError:
            pass
        finally:
            _unlink_quiet(tmp)
        # The id is taken, unless its marker was left by a crash (rule 6).
        with locks.spool_lock(self.layout.ids_lock):
            if self._marker_owner_alive(marker):
                raise DuplicateJob(job_id, "being enqueued")
            for _ in range(3):  # a job moving between folders can slip past one look
                found = self.find(job_id)
                if found:
                    raise DuplicateJob(job_id, found[0])
                time.sleep(0.005)
            fsutil.write_file(tmp, token.encode(), sync=False)
            os.rename(tmp, marker)

    def _marker_owner_alive(self, marker):
        try:
            owner = fsutil.read_fd_path(marker).decode("ascii", "replace").strip()
        except OSError:
            return False
        if not owner.startswith("enq-") or "/" in owner:
            return False
        return locks.path_is_locked(os.path.join(self.layout.tmp, owner + ".lock"))

    # ---------------------------------------------------------------- transitions

    def _lock(self, state, name):
        """Open and lock a job file (rule 2). Raises LostRace (gone) or Busy (locked)."""
        path = os.path.join(self.layout.state_dir(state), name)
        try:
            fd = fsutil.open_nofollow(path, os.O_RDWR)
        except FileNotFoundError:
            raise LostRace(f"{state}/{name} is gone") from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EINVAL, errno.EISDIR, errno.ENXIO):
                raise Corrupt(state, name, "not a regular file (a symlink is never followed)") from None
            raise fsutil.translate(exc, f"{state}/{name}") from None
        try:
            if os.fstat(fd).st_uid != os.geteuid():
                raise Corrupt(state, name, "owned by another user; not run (SPEC: Safety)")
            try:
                locks.try_lock(fd)
            except Busy:
                if _same_inode(path, fd):
                    raise
                raise LostRace(f"{state}/{name} was replaced") from None  # e.g. kept by a worker's pool
            if not _same_inode(path, fd):
                raise LostRace(f"{state}/{name} was replaced")
            record = fsutil.read_json_fd(fd)
        except (ValueError, UnicodeDecodeError) as exc:
            os.close(fd)
            raise Corrupt(state, name, f"not valid JSON: {exc}") from None
        except BaseException:
            os.close(fd)
            raise
        if not isinstance(record, dict):
            os.close(fd)
            raise Corrupt(state, name, "not a JSON object")
        return Held(state, name, fd, record)

    def _move(self, held, dst_state, dst_name, record, kind, keep_lock=False):
        """Rule 3: fenced rename of a held job file, then its new content. Returns the new Held.

        Durability by kind (rule 8): user commands fsync the file and both folders before
        returning; a worker's moves are left to the filesystem's next commit."""
        durable = kind not in LAZY_MOVES
        lay = self.layout
        src = os.path.join(lay.state_dir(held.state), held.name)
        dst_dir = lay.state_dir(dst_state)
        dst = os.path.join(dst_dir, dst_name)
        record = dict(record, state=str(dst_state), updated_at=timeutil.iso(timeutil.now()))
        tmp = os.path.join(lay.tmp, f"mv-{record['id']}-{os.getpid()}-{os.urandom(3).hex()}.json")
        # a locked mv-* file in tmp/ is a move in progress: recovery keeps off
        pool = None if durable else self.pool
        if pool is not None:
            new_fd = pool.write_new(tmp, fsutil.dumps(record))
        else:
            new_fd = fsutil.write_new(tmp, fsutil.dumps(record), sync=durable)
        crashpoint(f"{kind}.staged")
        try:
            if pool is None:
                locks.hold(new_fd)
            if os.path.lexists(dst) and dst != src:
                if not os.path.lexists(src):
                    raise LostRace(f"{held.state}/{held.name} was moved by someone else")
                raise SpoolError(f"{dst_state}/{dst_name} already exists")
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
            crashpoint(f"{kind}.replaced")
            if durable:
                fsutil.fsync_dir(dst_dir)
            if durable and dst_dir != os.path.dirname(src):
                fsutil.fsync_dir(os.path.dirname(src))
            crashpoint(f"{kind}.synced")
        except BaseException:
            os.close(new_fd)
            if tmp:
                _unlink_quiet(tmp)
            raise
        held.close()
        if keep_lock:
            return Held(str(dst_state), dst_name, new_fd, record)
        os.close(new_fd)
        return Held(str(dst_state), dst_name, None, record)

    def rewrite(self, held, record):
        """Replace the record of a held job file where it is (fsck's repair of a lagging
        state). Same rules: a new file in tmp/, renamed over the name."""
        folder = self.layout.state_dir(held.state)
        tmp = os.path.join(self.layout.tmp, f"mv-{record['id']}-{os.getpid()}-{os.urandom(3).hex()}.json")
        fsutil.write_file(tmp, fsutil.dumps(record))
        os.rename(tmp, os.path.join(folder, held.name))
        fsutil.fsync_dir(folder)

    # -- the worker's side

    def claim(self, name, worker_host, worker_pid):
        """Claim pending/NAME for this worker (rule 4). Returns the Held processing file.

        Raises LostRace/Busy when another worker was first, Corrupt for a damaged file.
        """
        held = self._lock("pending", name)
        try:
            check_record(held.record)
            if held.record["id"] != names.id_of("pending", name):
                raise FieldError("id", "the record's id is not the one in its file name")
        except FieldError as exc:
            held.close()
            raise Corrupt("pending", name, str(exc)) from None
        now = timeutil.now()
        record = dict(held.record)
        record.update(attempts=record["attempts"] + 1, started_at=timeutil.iso(now), finished_at=None,
                      worker=f"{worker_host}:{worker_pid}")
        dst = names.processing_name(record["id"], worker_host, worker_pid, record["attempts"])
        try:
            return self._move(held, State.PROCESSING, dst, record, kind="claim", keep_lock=True)
        except BaseException:
            held.close()
            raise

    def finish(self, held, exit_code=None, error=None, backoff=None):
        """End an attempt: completed if exit_code == 0 and no error, else failed/dead (SPEC
        "Running a job"). `backoff` = (base, max, jitter). Raises LostRace when fenced off."""
        record = dict(held.record)
        now = timeutil.now()
        record.update(finished_at=timeutil.iso(now), exit_code=exit_code)
        if exit_code == 0 and error is None:
            record.update(last_error=None, run_at=None)  # SPEC: run_at is the *next* attempt's
            return self._move(held, State.COMPLETED, names.final_name(record["id"]), record, kind="complete")
        record["last_error"] = error or f"exit code {exit_code}"
        return self._fail(held, record, now, backoff)

    def _fail(self, held, record, now, backoff, retry_kind="fail", dead_kind="bury"):
        base, cap, jitter = backoff or self._backoff()
        if record["attempts"] <= record["max_retries"]:
            delay = min(base ** record["attempts"], cap)
            if jitter:
                import random
                delay += delay * random.uniform(0, jitter)
            retry_at = now + delay
            record["run_at"] = timeutil.iso(retry_at)
            return self._move(held, State.FAILED, names.failed_name(retry_at, record["id"]), record, kind=retry_kind)
        record["run_at"] = None
        return self._move(held, State.DEAD, names.final_name(record["id"]), record, kind=dead_kind)

    def _backoff(self):
        cfg = self.config()
        return cfg["backoff-base"], cfg["backoff-max"], cfg["backoff-jitter"]

    def finish_cancelled(self, held):
        """End a running attempt killed by `cancel --kill`: the job goes to dead/."""
        record = dict(held.record, exit_code=None, last_error="cancelled", run_at=None,
                      finished_at=timeutil.iso(timeutil.now()))
        return self._move(held, State.DEAD, names.final_name(record["id"]), record, kind="kill")

    def request_kill(self, job_id):
        """cancel --kill of a running job: ask its worker (wherever it runs) to kill it.
        Returns the worker's name; WrongState if the job is not running."""
        from . import registry
        found = self.find(job_id)
        if not found:
            raise JobNotFound(job_id)
        if found[0] != "processing":
            raise WrongState(f"job {job_id!r} is {found[0]}, not running")
        parsed = names.parse_processing(found[1])
        name = registry.worker_name(parsed[1], parsed[2])
        registry.request_cancel(self.layout, name, job_id)
        return name

    def requeue(self, held, reason=None):
        """Put a running job back in pending/ without counting the attempt (stop --now)."""
        record = dict(held.record)
        record.update(attempts=max(0, record["attempts"] - 1), exit_code=None,
                      finished_at=timeutil.iso(timeutil.now()))
        if reason:
            record["last_error"] = reason
        return self._move(held, State.PENDING, self._pending_name(record), record, kind="requeue")

    def _pending_name(self, record, due=None):
        due = due_time(record) if due is None else due
        return names.pending_name(record["priority"], due, self._next_seq(), record["id"])

    def promote(self, name, now=None):
        """Move a due failed/NAME into pending/ so it competes by priority. LostRace/Busy if not ours."""
        now = timeutil.now() if now is None else now
        held = self._lock("failed", name)
        try:
            check_record(held.record)
        except FieldError as exc:
            held.close()
            raise Corrupt("failed", name, str(exc)) from None
        record = dict(held.record)
        try:
            return self._move(held, State.PENDING, self._pending_name(record), record, kind="promote")
        except BaseException:
            held.close()
            raise

    def take_back(self, name, reason=None):
        """Rule 5: take back processing/NAME if its owner is dead (its lock is free).

        Returns the new Held, or raises Busy (owner alive) / LostRace."""
        held = self._lock("processing", name)
        parsed = names.parse_processing(name)
        host, pid = (parsed[1], parsed[2]) if parsed else ("?", "?")
        try:
            check_record(held.record)
            if not parsed or held.record["id"] != parsed[0]:
                raise FieldError("id", "the record's id is not the one in its file name")
        except FieldError as exc:
            held.close()
            raise Corrupt("processing", name, str(exc)) from None
        from . import registry
        registry.kill_leftover_job(self.layout, host, pid, held.record["id"])  # one copy at a time
        record = dict(held.record)
        try:
            if record.get("state") != "processing":
                # died between the claim's two renames: the command never started
                return self._move(held, State.PENDING, self._pending_name(record), record, kind="unclaim")
            now = timeutil.now()
            record.update(exit_code=None, finished_at=timeutil.iso(now),
                          last_error=reason or f"worker lost (host {host}, pid {pid})")
            return self._fail(held, record, now, None, retry_kind="takeback", dead_kind="takeback-dead")
        except BaseException:
            held.close()
            raise

    def take_back_lost(self, exclude=()):
        """Take back every processing/ job whose owner is dead. Returns the records taken back."""
        out = []
        for name in self.names("processing"):
            if name in exclude:
                continue
            try:
                out.append(self.take_back(name).record)
            except Corrupt as exc:
                self.set_aside(exc)
            except LostRace:
                continue
        return out

    def set_aside(self, corrupt):
        """Move a damaged or foreign file found in a state folder to rejected/ (never run it)."""
        src = os.path.join(self.layout.state_dir(corrupt.state), corrupt.name)
        try:
            return self.move_aside(src, corrupt.name, f"found in {corrupt.state}/ and set aside: {corrupt.reason}")
        except FileNotFoundError:
            return None

    # -- user operations

    def _find_held(self, job_id, states):
        for _ in range(5):
            found = self.find(job_id)
            if not found:
                raise JobNotFound(job_id)
            if found[0] not in states:
                return found[0], None
            try:
                return found[0], self._lock(*found)
            except Corrupt as exc:
                raise WrongState(f"job {job_id!r}: {exc.reason} (see `queuectl fsck`)") from None
            except LostRace as exc:
                if isinstance(exc, Busy):
                    raise WrongState(f"job {job_id!r} is busy (a worker is moving it); try again") from None
                continue
        raise WrongState(f"job {job_id!r} keeps moving; try again")

    def cancel(self, job_id):
        """A pending or failed job goes to dead/ with last_error 'cancelled'.

        Returns the record; raises WrongState naming the state otherwise."""
        state, held = self._find_held(job_id, ("pending", "failed"))
        if held is None:
            raise WrongState(f"job {job_id!r} is {state}; only pending or failed jobs can be cancelled"
                             + (" (use --kill for a running one)" if state == "processing" else ""))
        record = dict(held.record, last_error="cancelled", run_at=None,
                      finished_at=timeutil.iso(timeutil.now()))
        try:
            return self._move(held, State.DEAD, names.final_name(job_id), record, kind="cancel").record
        except BaseException:
            held.close()
            raise

    def retry_dead(self, job_id):
        """dlq retry: dead/ID.json back to pending/ with attempts 0 and run_at now."""
        state, held = self._find_held(job_id, ("dead",))
        if held is None:
            raise WrongState(f"job {job_id!r} is {state}, not dead")
        now = timeutil.now()
        record = dict(held.record, attempts=0, run_at=timeutil.iso(now), exit_code=None)
        try:
            return self._move(held, State.PENDING, self._pending_name(record, now), record, kind="dlq-retry").record
        except BaseException:
            held.close()
            raise

    def adopt(self, name):
        """A whole record put into pending/ by hand (`mv dead/ID.json pending/`, SPEC: plain
        mv works): file it under its proper name as a new try, like `dlq retry` (attempts 0,
        due now). Raises Corrupt when it is not a record of a job that exists nowhere else
        (the worker then checks it as a dropped file), LostRace/Busy when someone else has it."""
        held = self._lock("pending", name)
        try:
            check_record(held.record)
            job_id = held.record["id"]
            found = self.find(job_id)
            if found and found != ("pending", name):
                raise FieldError("id", f"job {job_id!r} is also in {found[0]}/")
        except FieldError as exc:
            held.close()
            raise Corrupt("pending", name, str(exc)) from None
        marker = os.path.join(self.layout.ids, job_id)
        if not os.path.lexists(marker):  # a record from elsewhere: its id is reserved now
            fsutil.write_file(marker, b"adopted", sync=False)
        now = timeutil.now()
        record = dict(held.record, attempts=0, run_at=timeutil.iso(now), exit_code=None, finished_at=None)
        try:
            return self._move(held, State.PENDING, self._pending_name(record, now), record, kind="adopt")
        except BaseException:
            held.close()
            raise

    def purge(self, state, older_than=None, now=None, progress=None):
        """Delete completed or dead jobs (finished more than `older_than` seconds ago) and their
        logs. Returns the number deleted. Each file is locked first, so a job being moved is skipped."""
        if state not in ("completed", "dead"):
            raise FieldError("state", f"must be completed or dead, got {state!r}")
        now = timeutil.now() if now is None else now
        deleted = 0
        todo = self.names(state)
        for done, name in enumerate(todo, 1):
            if progress and done % 200 == 0:
                progress(done, len(todo))
            path = os.path.join(self.layout.state_dir(state), name)
            try:
                held = self._lock(state, name)
            except (LostRace, Corrupt):
                continue
            try:
                if older_than is not None:
                    stamp = held.record.get("finished_at") or held.record.get("updated_at")
                    try:
                        when = timeutil.parse_iso(stamp)
                    except (TypeError, ValueError):
                        when = os.fstat(held.fd).st_mtime
                    if now - when < older_than:
                        continue
                job_id = held.record.get("id") or names.id_of(state, name)
                os.unlink(path)
                crashpoint("purge.unlinked")
                if job_id:
                    _unlink_quiet(self.layout.log(job_id))
                    crashpoint("purge.log-unlinked")
                    _unlink_quiet(os.path.join(self.layout.ids, job_id))
                    crashpoint("purge.id-unlinked")
                deleted += 1
            finally:
                held.close()
        if deleted:
            fsutil.fsync_dir(self.layout.state_dir(state))
        return deleted

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
        os.rename(src_path, dst)
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


def _syncfs(path):
    """One syncfs(2) for the filesystem holding `path`: a batch's files in one flush."""
    import ctypes
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)
