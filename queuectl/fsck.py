"""Check a spool and repair what is safe to repair (`queuectl fsck [--repair]`), and the
crash recovery every worker runs when it starts.

What it looks for: leftover temporary files, a record whose state disagrees with its
folder, a name that disagrees with its record, a file that is not a job, one id in two
folders, a job without its id marker (and markers without a job), logs without a job,
processing/ files whose owner is dead, registrations of dead workers, unsafe permissions.

Repairs never delete a job: what is doubtful is moved to rejected/ beside NAME.error
saying why, like a rejected dropped file. Only what carries no job is removed (an applied
or obsolete copy in tmp/, a stale id marker, a dead worker's registration).
"""
import os
import stat
import time

from . import fsutil, ingest, locks, names, pool, registry
from .errors import LostRace, QueuectlError
from .job import STATES, check_record
from .paths import ALL_DIRS
from .inventory import as_read
from .moves import MOVE_PREFIX, Corrupt

MOVE_GRACE = 5.0        # a mover may sit between its two renames this long (seconds)
ENQUEUE_GRACE = 60.0    # an enqueue's staged files younger than this may be in use
STALE_TMP_AGE = 3600.0  # other tmp/ files are somebody's work in progress until then
REGISTRATION_GRACE = 30.0  # a worker's registration this young is never judged dead


class Problem:
    def __init__(self, kind, path, detail, repair=None):
        self.kind, self.path, self.detail = kind, path, detail
        self.repair = repair      # a callable that fixes it and returns what it did, or None
        self.done = None

    def as_dict(self):
        return {"kind": self.kind, "path": self.path, "detail": self.detail,
                "repairable": self.repair is not None, "repaired": self.done}


def check(spool, now=None):
    """Every problem found, each with its repair (if one is safe)."""
    now = time.time() if now is None else now
    spool.moves.durable_moves = spool.config()["durable-moves"]  # its repairs move as workers do
    problems = []
    problems += _permissions(spool)
    problems += _tmp_leftovers(spool, now)
    seen = {}  # id -> [(state, name)]
    in_folders = []
    for state in STATES:
        in_folders += _state_folder(spool, state, seen)
    # a job in two folders (a move half persisted by a power cut) is settled first: the older
    # copy goes aside, and nothing else is done with it (a take-back would make it the newer)
    duplicates = _duplicates(spool, seen)
    older = {problem.path for problem in duplicates}
    problems += duplicates + [problem for problem in in_folders if problem.path not in older]
    problems += _id_markers(spool, seen)
    problems += _orphan_logs(spool, seen)
    problems += _stale_workers(spool)
    return problems


def repair(problems):
    """Apply each problem's repair in turn; returns the problems with `done` set."""
    for problem in problems:
        if problem.repair is None:
            continue
        try:
            problem.done = problem.repair()
        except (OSError, LostRace) as exc:
            problem.done = f"not repaired: {exc}"
    return problems


# ---------------------------------------------------------------- the checks

def _rel(spool, path):
    return os.path.relpath(path, spool.path)


def _permissions(spool):
    out = []
    uid = os.geteuid()
    for name in ("",) + tuple(ALL_DIRS):
        path = os.path.join(spool.path, name) if name else spool.path
        try:
            st = os.stat(path) if not name else os.lstat(path)  # the root may be reached by a symlink
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            out.append(Problem("unsafe", path, "a symlink where a folder should be"))
        elif st.st_uid != uid:
            out.append(Problem("unsafe", path, f"owned by uid {st.st_uid}, not {uid}"))
        elif st.st_mode & 0o022:
            mode = stat.S_IMODE(st.st_mode)

            def chmod(path=path, mode=mode):
                os.chmod(path, mode & ~0o022)
                return f"chmod {mode & ~0o022:04o} (was {mode:04o})"
            out.append(Problem("unsafe", path, f"writable by group or others (mode {mode:04o})", chmod))
    return out


def _tmp_leftovers(spool, now):
    out = []
    tmp_dir = spool.layout.tmp
    live_tokens = _live_enqueue_tokens(spool)
    for name in sorted(fsutil.listdir(tmp_dir)):
        path = os.path.join(tmp_dir, name)
        try:
            age = now - os.lstat(path).st_mtime
        except FileNotFoundError:
            continue
        if name.startswith(MOVE_PREFIX) and name.endswith(".json"):
            if age >= MOVE_GRACE and not _mover_alive(spool, path):
                out.append(Problem("tmp-leftover", path, "the new record of an interrupted move",
                                   lambda path=path: _finish_move(spool, path)))
        elif name.startswith(ingest.PREFIX):
            if age >= ingest.RECOVER_AGE:
                out.append(Problem("tmp-leftover", path, "a dropped file claimed by a crashed ingest",
                                   lambda path=path: ingest.recover_one(spool, path)))
        elif name.startswith("enq-"):
            token = "-".join(name.split("-")[:3]).split(".")[0]  # enq-PID-HEX[...]
            if token in live_tokens or age < ENQUEUE_GRACE:
                continue
            if name.endswith(".json"):
                out.append(Problem("tmp-leftover", path, "a job of an enqueue that did not finish",
                                   lambda path=path, name=name: _aside(spool, path, name,
                                                                       "staged by an enqueue that was interrupted "
                                                                       "(it did not report success)")))
            else:
                out.append(Problem("tmp-leftover", path, "a dead enqueuer's lock file or id marker copy",
                                   lambda path=path: _remove(path)))
        elif pool.owner_of(name):
            if not registry.is_alive(spool.layout, pool.owner_of(name)):
                out.append(Problem("tmp-leftover", path, "a spare file of a worker that is gone",
                                   lambda path=path: _remove(path)))
        elif age >= STALE_TMP_AGE:
            out.append(Problem("tmp-leftover", path, f"left {int(age)}s ago", lambda path=path: _remove(path)))
    return out


def _live_enqueue_tokens(spool):
    return {name[:-5] for name in fsutil.listdir(spool.layout.tmp)
            if name.startswith("enq-") and name.endswith(".lock")
            and locks.path_is_locked(os.path.join(spool.layout.tmp, name))}


def _state_folder(spool, state, seen):
    out = []
    folder = spool.layout.state_dir(state)
    for name in sorted(fsutil.listdir(folder)):
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        job_id = names.id_of(state, name)
        if state == "pending" and job_id is None and stat.S_ISREG(st.st_mode) and name.endswith(".json") \
                and not name.startswith("."):
            hand_placed = _hand_placed_record(path)  # `mv dead/ID.json pending/`: a worker files it
            if hand_placed:
                seen.setdefault(hand_placed, []).append((state, name))
            continue  # otherwise a worker checks it like a dropped file
        if not stat.S_ISREG(st.st_mode) or job_id is None:
            what = "not a regular file" if not stat.S_ISREG(st.st_mode) else "a name that is not a job's"
            out.append(Problem("not-a-job", path, what, lambda path=path, name=name, what=what:
                               _aside(spool, path, name, f"found in {state}/: {what}")))
            continue
        try:
            record = fsutil.read_json(path)
            check_record(record)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, QueuectlError) as exc:
            out.append(Problem("corrupt", path, f"unreadable record: {exc}", lambda path=path, name=name, exc=exc:
                               _aside(spool, path, name, f"found in {state}/, unreadable: {exc}")))
            continue
        if record["id"] != job_id:
            detail = f"name says {job_id!r}, record says {record['id']!r}"
            out.append(Problem("name-mismatch", path, detail, lambda path=path, name=name, detail=detail:
                               _aside(spool, path, name, f"found in {state}/: {detail}")))
            continue
        seen.setdefault(job_id, []).append((state, name))
        if state == "processing":
            if not spool.moves.job_locked(job_id):
                out.append(Problem("orphan-processing", path, "no live worker holds it",
                                   lambda name=name: _take_back(spool, name)))
        elif record.get("state") != state:
            out.append(Problem("state-mismatch", path, f"record says {record.get('state')!r}",
                               lambda state=state, name=name: _relabel(spool, state, name)))
    return out


def _hand_placed_record(path):
    try:
        return check_record(fsutil.read_json(path))["id"]
    except (OSError, ValueError, QueuectlError, TypeError, KeyError):
        return None


def _duplicates(spool, seen):
    out = []
    for job_id, places in sorted(seen.items()):
        if len(places) < 2:
            continue
        ranked = sorted(places, key=lambda p: _updated(spool, *p), reverse=True)
        keep = ranked[0]
        for state, name in ranked[1:]:
            path = os.path.join(spool.layout.state_dir(state), name)
            detail = f"id {job_id!r} is also in {keep[0]}/{keep[1]} (newer)"
            out.append(Problem("duplicate", path, detail, lambda path=path, name=name, detail=detail, state=state:
                               _aside(spool, path, name, f"found in {state}/: {detail}")))
    return out


def _id_markers(spool, seen):
    out = []
    markers = set(fsutil.listdir(spool.layout.ids))
    for job_id in sorted(set(seen) - markers):
        path = os.path.join(spool.layout.ids, job_id)
        out.append(Problem("missing-id-marker", path, "a job without its id marker (duplicates would pass)",
                           lambda path=path: _create_marker(path)))
    for job_id in sorted(markers - set(seen)):
        path = os.path.join(spool.layout.ids, job_id)
        if _in_use(spool, job_id):
            continue  # an enqueue in progress, or a job being moved right now
        out.append(Problem("stale-id-marker", path, "an id marker without a job (harmless)",
                           lambda path=path, job_id=job_id: _remove_stale_marker(spool, path, job_id)))
    return out


def _in_use(spool, job_id):
    """Whether a live process holds job `job_id`'s marker: an enqueue that made it and is
    still running, or a mover that holds its lock."""
    marker = os.path.join(spool.layout.ids, job_id)
    return spool.moves.marker_owner_alive(marker) or spool.moves.job_locked(job_id)


def _remove_stale_marker(spool, path, job_id):
    """Look again first: the folders were listed one after another, so a job moving between
    them may have been missed; its marker is its lock and must stay."""
    if spool.moves.job_locked(job_id) or spool.find(job_id) is not None or spool.moves.marker_owner_alive(path):
        return "kept: its job exists (it was moving while fsck looked)"
    return _remove(path)


def _orphan_logs(spool, seen):
    out = []
    for name in sorted(fsutil.listdir(spool.layout.logs)):
        if name.endswith(".log") and name[:-4] not in seen:
            path = os.path.join(spool.layout.logs, name)
            if _in_use(spool, name[:-4]):
                continue  # its job is being enqueued or moved right now
            # (a marker alone, left by a crash in the middle of a purge, is removed in the same
            # run: one `fsck --repair` leaves nothing for the next)
            out.append(Problem("orphan-log", path, "a log without a job", lambda path=path, name=name:
                               _aside(spool, path, name, "a log whose job no longer exists")))
    return out


def _stale_workers(spool, now=None):
    out = []
    now = time.time() if now is None else now
    live = {w["name"] for w in registry.live_workers(spool.layout, supervisors=True)}
    busy = {registry.worker_name(p.host, p.pid) for p in map(names.parse_processing, spool.names("processing")) if p}
    for name in sorted(fsutil.listdir(spool.layout.workers)):
        if name.startswith(".doctor-"):
            continue  # a check of `doctor` in progress (it removes its own files)
        owner = registry.owner_of(name)
        if owner in live or name.endswith(".job") and owner in busy:
            continue  # a .job note is kept until its job is taken back (it names the job's group)
        if _young(os.path.join(spool.layout.workers, owner + ".json"), now):
            continue  # just registered: another host's cache may not show the file or its lock yet
        path = os.path.join(spool.layout.workers, name)
        what = "registration" if name.endswith(".json") else "request or note"
        out.append(Problem("stale-worker", path, f"{what} of a worker that is gone",
                           lambda path=path: _remove(path)))
    return out


def _young(path, now):
    try:
        return now - os.lstat(path).st_mtime < REGISTRATION_GRACE
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------- the repairs

def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        return "already gone"
    return "removed"


def _aside(spool, path, name, reason):
    if not os.path.lexists(path):
        return "already gone"
    when = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
    dst = spool.moves.move_aside(path, name, f"moved aside by fsck at {when}: {reason}")
    return f"moved to rejected/{dst}"


def _create_marker(path):
    fsutil.write_file(path, b"fsck")
    return "created"


def _mover_alive(spool, path):
    """A staged record's job is locked: its mover is alive (or a worker runs the job)."""
    try:
        job_id = fsutil.read_json(path).get("id")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(job_id, str) and spool.moves.job_locked(job_id)


def _take_back(spool, name):
    held = spool.moves.take_back(name)
    return f"taken back to {held.state}/{held.name}"


def _relabel(spool, state, name):
    """The record lags its folder (a move cut between its renames, no new record in tmp/):
    the folder is the truth; rewrite the record's state under the job's lock."""
    try:
        held = spool.moves.lock(state, name)
    except Corrupt as exc:
        return f"not repaired: {exc.reason}"
    try:
        if held.record.get("state") == state:
            return "already consistent"
        spool.moves.rewrite(held, dict(held.record, state=state))
    finally:
        held.close()
    return f"record state set to {state!r}"


def _updated(spool, state, name):
    """When the copy STATE/NAME last changed: a claim does not rewrite the record, so a
    processing/ copy changed when its attempt started (the START in its name)."""
    try:
        return as_read(state, name, fsutil.read_json(os.path.join(spool.layout.state_dir(state), name))) \
            .get("updated_at") or ""
    except (OSError, ValueError, AttributeError):
        return ""


def _finish_move(spool, tmp_path):
    """tmp/mv-*.json: the new record of a move whose step b did not happen. If the job sits in
    the folder it names and that file's record lags, put it in place; else it is obsolete."""
    try:
        new = fsutil.read_json(tmp_path)
        check_record(new)  # a power cut may leave a spare inode half rewritten: parseable, not whole
        found = spool.find(new["id"])
    except (OSError, ValueError, KeyError, TypeError, QueuectlError):
        return _remove(tmp_path) + " (unreadable)"
    if found and found[0] == new.get("state"):
        try:
            held = spool.moves.lock(*found)
        except LostRace:
            return "busy; left for later"
        try:
            lagging = held.record.get("state") != found[0]
            newer = (new.get("updated_at") or "") >= (held.record.get("updated_at") or "")
            if lagging and newer:  # never install an older crashed move over a newer one
                os.rename(tmp_path, os.path.join(spool.layout.state_dir(found[0]), found[1]))
                fsutil.fsync_dir(spool.layout.state_dir(found[0]))
                return f"new record put in place: {found[0]}/{found[1]}"
        finally:
            held.close()
    return _remove(tmp_path) + " (obsolete: the move it belonged to never happened or was completed)"


# ---------------------------------------------------------------- worker start-up

def recover(spool):
    """What every worker does when it starts: repair what crashes leave behind, quietly.
    Returns the problems it repaired."""
    found = _tmp_leftovers(spool, time.time()) + _stale_workers(spool)
    return repair(found)
