"""The drop box (docs/contract.md "Dropping files"): files in incoming/ become pending jobs or go to rejected/.

One file at a time: rename incoming/NAME -> tmp/ingest-ID-NAME (the claim: of several workers
exactly one gets it; ID is the id a job without one will get), look at it without following
a symlink or blocking on a FIFO, read at most 1 MiB, check it, store the job (docs/protocol.md, rule
6), then remove the claimed copy. An idle worker takes a due job straight into processing/
instead (take_first, rule 6b) and removes the copy once the command runs. Whatever is not a valid job is moved to rejected/ beside
NAME.error; nothing is deleted unread. After a crash, recover() puts claimed copies whose
job does not exist back into incoming/.
"""
import json
import os
import stat
import time

from . import dependencies, fsutil, timeutil
from .faults import crashpoint
from .errors import FieldError, InvalidInput, QueuectlError
from .job import due_time, new_id, new_record, validate_input
from .moves import MAX_DROP_BYTES, unique_name

PREFIX = "ingest-"


def candidates(spool):
    """Names in incoming/ that are offered as jobs (dot-names and non-.json are ignored)."""
    return sorted(n for n in fsutil.listdir(spool.layout.incoming)
                  if n.endswith(".json") and not n.startswith("."))


def ingest_all(spool, report=None):
    """Take every file waiting in incoming/. Returns (accepted records, rejected names)."""
    accepted, rejected = [], []
    for name in candidates(spool):
        result = ingest_one(spool, name)
        if result is None:
            continue
        kind, value = result
        (accepted if kind == "accepted" else rejected).append(value)
        if report:
            report(kind, name, value)
    return accepted, rejected


class Taken:
    """A dropped job stored straight into processing/ for the worker that took it: `held` (its
    Held processing file) and `copy`, the dropped file's copy in tmp/, which stands for the job
    until the worker calls settle() once the command runs."""

    def __init__(self, held, copy):
        self.held, self.copy = held, copy


def take_first(spool, worker_host, worker_pid, report=None, config=None, may_take=None):
    """For an idle worker with nothing due in pending/: take the first file waiting in
    incoming/ and, if it is a job due now, store it as this worker's claimed job (no trip
    through pending/, no fsync before its command starts). Returns a Taken, or None when
    there was nothing to take (what was found is then filed as ingest_all() does). `config`:
    the spool's config if the caller has it at hand (its defaults apply to the job)."""
    for name in candidates(spool):
        result = ingest_one(spool, name, take=(worker_host, worker_pid), config=config, may_take=may_take)
        if result is None:
            continue
        kind, value = result
        if report:
            report("accepted" if kind == "taken" else kind, name, value.held.record if kind == "taken" else value)
        return value if kind == "taken" else None
    return None


def settle(spool, taken):
    spool.moves.settle_claimed(taken.held, taken.copy)


def ingest_one(spool, name, take=None, config=None, may_take=None):
    """-> ("accepted", record) | ("rejected", reason) | None when another process took it;
    with `take` (host, pid), ("taken", Taken) when the job was due and stored as claimed (and
    `may_take(record)`, if given, allows it: a job of a limited queue goes through a claim)."""
    lay = spool.layout
    job_id = new_id()
    claimed = os.path.join(lay.tmp, f"{PREFIX}{job_id}-{name}")  # fits: names are <= 255 bytes
    if len(os.fsencode(os.path.basename(claimed))) > 255:
        claimed = os.path.join(lay.tmp, f"{PREFIX}{job_id}-long.json")
    try:
        os.rename(os.path.join(lay.incoming, name), claimed)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise fsutil.translate(exc, f"incoming/{name}") from None
    try:
        os.utime(claimed, follow_symlinks=False)  # recovery judges age by mtime: claimed now
    except OSError:
        pass
    crashpoint("ingest.claimed")
    try:
        record = _read_job(spool, claimed, job_id, config)
        dependencies.place(spool, [record])  # blocked/ when it waits for jobs not completed
        if take is not None and record["state"] == "pending" and due_time(record) <= timeutil.now() \
                and (may_take is None or may_take(record)):
            held = spool.moves.store_claimed(record, *take)
            if held is not None:
                return "taken", Taken(held, claimed)
        spool.moves.store_new([record])
        crashpoint("ingest.stored")
    except (InvalidInput, _NotAJob) as exc:
        reason = str(exc)
        spool.moves.move_aside(claimed, name, f"rejected at {timeutil.iso(timeutil.now())}: {reason}")
        return "rejected", reason
    except QueuectlError:
        _put_back(spool, claimed, name)  # e.g. disk full: leave it for a later try
        raise
    except Exception as exc:  # whatever else a hostile file provokes: reject it, never die on it
        reason = f"could not be read as a job ({type(exc).__name__}: {str(exc)[:200]})"
        spool.moves.move_aside(claimed, name, f"rejected at {timeutil.iso(timeutil.now())}: {reason}")
        return "rejected", reason
    _unlink(claimed)
    crashpoint("ingest.done")
    return "accepted", record


class _NotAJob(Exception):
    pass


def _read_job(spool, path, job_id, config=None):
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise _NotAJob("a symlink, not a regular file (not followed)")
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
        raise _NotAJob(f"{kind}, not a regular file")
    if st.st_size > MAX_DROP_BYTES:
        raise _NotAJob(f"too large: {st.st_size} bytes (at most {MAX_DROP_BYTES})")
    try:
        fd, st = fsutil.open_nofollow_stat(path)
    except OSError as exc:
        raise _NotAJob(f"cannot open: {exc.strerror}") from None
    try:
        if st.st_uid != os.geteuid():
            raise _NotAJob("owned by another user")
        data = fsutil.read_fd(fd, MAX_DROP_BYTES, from_start=False)  # just opened: no seek
    finally:
        os.close(fd)
    if len(data) > MAX_DROP_BYTES:
        raise _NotAJob(f"too large: over {MAX_DROP_BYTES} bytes")
    try:
        item = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise _NotAJob("not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise _NotAJob(f"invalid JSON: {str(exc)[:200]}") from None
    now = timeutil.now()
    fields = validate_input(item, {"max_retries": (config or spool.config())["max-retries"]}, now=now)
    if fields["id"] is None:
        fields["id"] = job_id
    return new_record(fields, now)


def _put_back(spool, claimed, name):
    try:
        os.rename(claimed, os.path.join(spool.layout.incoming, unique_name(spool.layout.incoming, name)))
    except OSError:
        pass


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


RECOVER_AGE = 30.0  # an ingest in progress holds its claimed copy for milliseconds, not this long


def recover(spool, min_age=RECOVER_AGE):
    """Claimed copies left in tmp/ by a crashed ingest: gone if their job exists, else back
    into incoming/ to be taken again. Returns how many were handled."""
    handled = 0
    for tmp_name in fsutil.listdir(spool.layout.tmp):
        if not tmp_name.startswith(PREFIX):
            continue
        path = os.path.join(spool.layout.tmp, tmp_name)
        try:
            if time.time() - os.lstat(path).st_mtime < min_age:
                continue
        except FileNotFoundError:
            continue
        recover_one(spool, path)
        handled += 1
    return handled


def recover_one(spool, path):
    """One claimed copy (tmp/ingest-ID-NAME): remove it if its job exists, else put it back."""
    rest = os.path.basename(path)[len(PREFIX):]
    parts = rest.split("-", 4)
    generated = "-".join(parts[:4])
    original = parts[4] if len(parts) == 5 else rest
    job_id = generated
    try:
        item = fsutil.read_json(path)
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            job_id = item["id"]
    except (OSError, ValueError):
        pass
    try:
        exists = spool.find(job_id) is not None
    except FieldError:
        exists = False
    if exists and (job_id == generated or _same_job(spool, job_id, path)):
        _unlink(path)
        return "removed: its job was enqueued"
    _put_back(spool, path, original)
    return "put back into incoming/"


def _same_job(spool, job_id, path):
    """A dropped file with its own id whose job exists: the ingest got as far as pending/."""
    try:
        item = fsutil.read_json(path)
        return spool.get(job_id).get("command") == item.get("command")
    except (OSError, ValueError, QueuectlError, AttributeError):
        return False
