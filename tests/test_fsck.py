"""fsck (queuectl/fsck.py): one test per kind of problem `check(spool)` reports.

Each test builds the situation by hand with plain file operations in a fresh spool (jobs
enqueued through `Spool.enqueue`, records copied from `Spool.get`, file names from
queuectl.names), checks that `check()` reports exactly that kind for that path, repairs
it, looks at the result on disk, and checks again.

Liveness is a flock (docs/protocol.md): a "live" worker, enqueuer or mover is simulated by
holding an flock from this process (fsck probes through a new open file description, which
conflicts); a "dead" one is the same files unlocked. A job held by a live process is
locked twice here, on its job file and on its id marker ids/ID, because which of the two
is the job's lock is being changed by a refactoring: these tests hold for either. Dead
workers are on host "deadhost", never this host, so a take-back kills nothing here.
"""
import fcntl
import json
import os
import stat
import time

import pytest

from queuectl import DuplicateJob, Spool, fsck, names

DEAD_HOST, DEAD_PID = "deadhost", 999999
LIVE_HOST, LIVE_PID = "livehost", 4242
OLD_STAMP = "2001-01-01T00:00:00.000Z"
STATE_FOLDERS = ("pending", "processing", "failed", "completed", "dead")


# ---------------------------------------------------------------- helpers

def rel(spool, path):
    return os.path.relpath(path, spool.path)


def found(spool, problems):
    """(kind, path relative to the spool) of every problem, sorted."""
    return sorted((p.kind, rel(spool, p.path)) for p in problems)


def kinds_at(spool, problems, relpath):
    return [p.kind for p in problems if rel(spool, p.path) == relpath]


def only(spool, kind, relpath):
    """check() reports exactly one problem, of `kind`, at `relpath`; returns the problems."""
    problems = fsck.check(spool)
    assert found(spool, problems) == [(kind, relpath)]
    return problems


def repaired(problems):
    fsck.repair(problems)
    return [p.done for p in problems]


def age(path, seconds):
    """Set a file's mtime `seconds` into the past (never through a symlink)."""
    when = time.time() - seconds
    os.utime(path, (when, when), follow_symlinks=False)


def write(path, data):
    if not isinstance(data, bytes):
        data = (json.dumps(data) + "\n").encode()
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def read(path):
    with open(path) as fh:
        return json.load(fh)


def state_path(spool, state, name):
    return os.path.join(spool.path, state, name)


def place(spool, job_id, state, name=None, **changes):
    """Put job `job_id` into `state` by hand: its record, with state and `changes`, written
    under `name` (the folder's name format by default); the old file removed. Returns the path."""
    old_state, old_name = spool.find(job_id)
    record = dict(spool.get(job_id), state=state)
    record.update(changes)
    if name is None:
        name = {"pending": names.pending_name(record["priority"], time.time(), time.time_ns(), job_id),
                "failed": names.failed_name(time.time() + 60, job_id),
                "processing": names.processing_name(job_id, DEAD_HOST, DEAD_PID, record["attempts"] or 1),
                }.get(state, names.final_name(job_id))
    path = write(state_path(spool, state, name), record)
    os.unlink(state_path(spool, old_state, old_name))
    return path


class Flock:
    """An open file whose flock this test holds (a live owner)."""

    def __init__(self, path, data=None):
        if data is not None:
            write(path, data)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@pytest.fixture
def held():
    """held(path, data=None) -> a Flock released at teardown."""
    locks = []

    def hold(path, data=None):
        lock = Flock(path, data)
        locks.append(lock)
        return lock
    yield hold
    for lock in locks:
        lock.close()


def hold_job(spool, held, job_id, path):
    """A live process holds job `job_id` (file at `path`): both candidate locks taken."""
    held(path)
    held(os.path.join(spool.layout.ids, job_id))


def live_worker(spool, held, host=LIVE_HOST, pid=LIVE_PID):
    """A registration in workers/ whose flock is held: a live worker."""
    name = f"{host}_{pid}"
    held(os.path.join(spool.layout.workers, name + ".json"),
         {"host": host, "pid": pid, "started_at": "2026-01-01T00:00:00.000Z"})
    return name


def log(spool, job_id):
    return os.path.join(spool.layout.logs, job_id + ".log")


def rejected_with_error(spool, name):
    """The file moved to rejected/NAME and the text of rejected/NAME.error."""
    path = os.path.join(spool.layout.rejected, name)
    assert os.path.lexists(path), f"rejected/{name} is missing: {os.listdir(spool.layout.rejected)}"
    with open(path + ".error") as fh:
        return path, fh.read()


# ---------------------------------------------------------------- a healthy spool

def test_a_clean_spool_with_jobs_in_every_state_reports_no_problem(spool, held):
    for job_id in ("p", "r", "f", "c", "d"):
        spool.enqueue(f"echo {job_id}", id=job_id)
    worker = live_worker(spool, held)
    # r runs on a live worker: its processing/ file is locked, its job note names it
    processing = place(spool, "r", "processing",
                       names.processing_name("r", LIVE_HOST, LIVE_PID, 1), attempts=1,
                       started_at="2026-01-01T00:00:01.000Z", worker=f"{LIVE_HOST}:{LIVE_PID}")
    hold_job(spool, held, "r", processing)
    write(os.path.join(spool.layout.workers, worker + ".job"), b"4243 r".ljust(160) + b"\n")
    place(spool, "f", "failed", attempts=1, last_error="exit code 1", exit_code=1)
    place(spool, "c", "completed", attempts=1, exit_code=0)
    place(spool, "d", "dead", attempts=4, last_error="exit code 1", exit_code=1)
    for job_id in ("r", "f", "c", "d"):
        write(log(spool, job_id), b"output\n")
    held(os.path.join(spool.layout.tmp, f"free-{worker}-1"), b"spare")  # the live worker's spare inode
    write(os.path.join(spool.layout.tmp, "config-in-progress"), b"young")  # younger than STALE_TMP_AGE
    assert sorted(r["state"] for r in spool.list()) == sorted(STATE_FOLDERS)
    assert found(spool, fsck.check(spool)) == []


def test_problems_describe_themselves(spool):
    os.chmod(spool.layout.failed, 0o777)
    [problem] = fsck.check(spool)
    assert problem.as_dict() == {"kind": "unsafe", "path": spool.layout.failed,
                                 "detail": "writable by group or others (mode 0777)",
                                 "repairable": True, "repaired": None}
    fsck.repair([problem])
    assert problem.as_dict()["repaired"] == "chmod 0755 (was 0777)"


# ---------------------------------------------------------------- unsafe

def test_unsafe_a_folder_writable_by_others_is_chmodded(spool):
    os.chmod(spool.layout.failed, 0o777)
    problems = only(spool, "unsafe", "failed")
    assert repaired(problems) == ["chmod 0755 (was 0777)"]
    assert stat.S_IMODE(os.stat(spool.layout.failed).st_mode) == 0o755
    assert found(spool, fsck.check(spool)) == []


def test_unsafe_the_spool_root_writable_by_group_is_chmodded(spool):
    os.chmod(spool.path, 0o770)
    problems = only(spool, "unsafe", ".")
    assert repaired(problems) == ["chmod 0750 (was 0770)"]
    assert found(spool, fsck.check(spool)) == []


def test_unsafe_a_symlink_instead_of_a_folder_is_reported_not_repaired(spool, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.rmdir(spool.layout.logs)
    os.symlink(str(elsewhere), spool.layout.logs)
    problems = only(spool, "unsafe", "logs")
    assert problems[0].detail == "a symlink where a folder should be" and problems[0].repair is None
    assert repaired(problems) == [None]
    assert os.path.islink(spool.layout.logs)  # left for a human to look at


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_unsafe_a_folder_owned_by_another_user_is_reported_not_repaired(spool):
    os.chown(spool.layout.pending, 4321, -1)
    problems = only(spool, "unsafe", "pending")
    assert problems[0].detail == f"owned by uid 4321, not {os.geteuid()}" and problems[0].repair is None
    assert repaired(problems) == [None]
    assert os.stat(spool.layout.pending).st_uid == 4321


# ---------------------------------------------------------------- tmp-leftover: mv- (a move's new record)

def mv_name(job_id):
    return f"mv-{job_id}-{DEAD_PID}-a1b2c3.json"


def test_tmp_leftover_mv_record_of_a_move_that_never_happened_is_removed(spool):
    spool.enqueue("true", id="j")
    pending_before = spool.find("j")
    record = dict(spool.get("j"), state="completed", exit_code=0,
                  updated_at="2099-01-01T00:00:00.000Z")
    staged = write(os.path.join(spool.layout.tmp, mv_name("j")), record)
    age(staged, fsck.MOVE_GRACE + 5)
    problems = only(spool, "tmp-leftover", f"tmp/{mv_name('j')}")
    assert problems[0].detail == "the new record of an interrupted move"
    [done] = repaired(problems)
    assert done.startswith("removed (obsolete")
    assert not os.path.lexists(staged)
    assert spool.find("j") == pending_before and spool.get("j")["state"] == "pending"
    assert found(spool, fsck.check(spool)) == []


def test_tmp_leftover_mv_record_of_a_move_cut_between_its_renames_is_put_in_place(spool):
    spool.enqueue("true", id="j")
    _, pending_name = spool.find("j")
    # step a of pending -> completed happened (the file moved, still holding its old record);
    # step b (the new record from tmp/ renamed over it) did not
    completed = state_path(spool, "completed", "j.json")
    os.rename(state_path(spool, "pending", pending_name), completed)
    new = dict(read(completed), state="completed", exit_code=0, attempts=1,
               updated_at="2099-01-01T00:00:00.000Z")
    staged = write(os.path.join(spool.layout.tmp, mv_name("j")), new)
    age(staged, fsck.MOVE_GRACE + 5)
    problems = fsck.check(spool)
    assert kinds_at(spool, problems, f"tmp/{mv_name('j')}") == ["tmp-leftover"]
    assert found(spool, problems) == [("state-mismatch", "completed/j.json"),
                                      ("tmp-leftover", f"tmp/{mv_name('j')}")]
    done = dict(zip(map(lambda p: p.kind, problems), repaired(problems)))
    assert done == {"tmp-leftover": "new record put in place: completed/j.json",
                    "state-mismatch": "already consistent"}
    assert read(completed) == new and not os.path.lexists(staged)
    assert found(spool, fsck.check(spool)) == []


def test_tmp_leftover_mv_record_young_or_locked_is_a_move_in_progress(spool, held):
    spool.enqueue("true", id="j")
    staged = write(os.path.join(spool.layout.tmp, mv_name("j")), dict(spool.get("j"), state="dead"))
    assert found(spool, fsck.check(spool)) == []  # younger than MOVE_GRACE
    age(staged, fsck.MOVE_GRACE + 5)
    mover = [held(staged), held(os.path.join(spool.layout.ids, "j"))]  # its mover is alive
    assert found(spool, fsck.check(spool)) == []
    for lock in mover:
        lock.close()
    assert kinds_at(spool, fsck.check(spool), f"tmp/{mv_name('j')}") == ["tmp-leftover"]


# ---------------------------------------------------------------- tmp-leftover: ingest- (a claimed drop)

GENERATED = "20261124-131501-123456-3fa9c"  # the id an ingest generates (job.new_id's format)


def test_tmp_leftover_ingest_copy_whose_job_was_not_stored_goes_back_to_incoming(spool):
    name = f"ingest-{GENERATED}-backup.json"
    claimed = write(os.path.join(spool.layout.tmp, name), {"command": "make backup"})
    assert found(spool, fsck.check(spool)) == []  # an ingest in progress holds it for milliseconds, not RECOVER_AGE
    age(claimed, 60)
    problems = only(spool, "tmp-leftover", f"tmp/{name}")
    assert problems[0].detail == "a dropped file claimed by a crashed ingest"
    assert repaired(problems) == ["put back into incoming/"]
    assert os.listdir(spool.layout.incoming) == ["backup.json"]
    assert read(os.path.join(spool.layout.incoming, "backup.json")) == {"command": "make backup"}
    assert found(spool, fsck.check(spool)) == []


def test_tmp_leftover_ingest_copy_whose_job_exists_is_removed(spool):
    spool.enqueue("make backup", id=GENERATED)  # the crash came after the job was stored
    name = f"ingest-{GENERATED}-backup.json"
    claimed = write(os.path.join(spool.layout.tmp, name), {"command": "make backup"})
    age(claimed, 60)
    problems = only(spool, "tmp-leftover", f"tmp/{name}")
    assert repaired(problems) == ["removed: its job was enqueued"]
    assert not os.path.lexists(claimed) and os.listdir(spool.layout.incoming) == []
    assert spool.get(GENERATED)["command"] == "make backup"
    assert found(spool, fsck.check(spool)) == []


# ---------------------------------------------------------------- tmp-leftover: enq- (an enqueue's files)

TOKEN = "enq-4217-f0f1332e"


def test_tmp_leftover_enq_staged_job_of_a_dead_enqueuer_is_moved_aside(spool):
    name = f"{TOKEN}-0.json"
    record = {"id": "staged", "command": "true", "state": "pending"}
    staged = write(os.path.join(spool.layout.tmp, name), record)
    age(staged, fsck.ENQUEUE_GRACE + 5)
    problems = only(spool, "tmp-leftover", f"tmp/{name}")
    assert problems[0].detail == "a job of an enqueue that did not finish"
    assert repaired(problems) == [f"moved to rejected/{name}"]
    path, error = rejected_with_error(spool, name)
    assert read(path) == record
    assert "moved aside by fsck" in error and "staged by an enqueue that was interrupted" in error
    assert spool.find("staged") is None  # never enqueued: it did not report success
    assert found(spool, fsck.check(spool)) == []


def test_tmp_leftover_enq_staged_job_young_or_of_a_live_enqueuer_is_left_alone(spool, held):
    staged = write(os.path.join(spool.layout.tmp, f"{TOKEN}-0.json"), {"id": "s", "command": "true"})
    assert found(spool, fsck.check(spool)) == []  # younger than ENQUEUE_GRACE
    age(staged, fsck.ENQUEUE_GRACE + 5)
    owner = held(os.path.join(spool.layout.tmp, TOKEN + ".lock"), b"")  # the enqueue still runs
    age(os.path.join(spool.layout.tmp, TOKEN + ".lock"), fsck.ENQUEUE_GRACE + 5)
    assert found(spool, fsck.check(spool)) == []
    owner.close()
    assert found(spool, fsck.check(spool)) == [("tmp-leftover", f"tmp/{TOKEN}-0.json"),
                                               ("tmp-leftover", f"tmp/{TOKEN}.lock")]


@pytest.mark.parametrize("name", [f"{TOKEN}.lock", f"{TOKEN}-id-a1b2c3"],
                         ids=["owner-lock", "id-marker-copy"])
def test_tmp_leftover_enq_lock_or_marker_copy_of_a_dead_enqueuer_is_removed(spool, name):
    path = write(os.path.join(spool.layout.tmp, name), TOKEN.encode() if "-id-" in name else b"")
    age(path, fsck.ENQUEUE_GRACE + 5)
    problems = only(spool, "tmp-leftover", f"tmp/{name}")
    assert problems[0].detail == "a dead enqueuer's lock file or id marker copy"
    assert repaired(problems) == ["removed"]
    assert os.listdir(spool.layout.tmp) == []
    assert found(spool, fsck.check(spool)) == []


# ---------------------------------------------------------------- tmp-leftover: free- (a worker's spare inode)

def test_tmp_leftover_spare_of_a_dead_worker_is_removed_a_live_ones_kept(spool, held):
    worker = live_worker(spool, held)
    live_spare = write(os.path.join(spool.layout.tmp, f"free-{worker}-1"), b"x")
    dead_spare = write(os.path.join(spool.layout.tmp, f"free-{DEAD_HOST}_{DEAD_PID}-3"), b"x")
    # a dead worker's registration left behind is not "alive" either (unlocked)
    write(os.path.join(spool.layout.workers, f"{DEAD_HOST}_{DEAD_PID}.json"), {"host": DEAD_HOST})
    problems = fsck.check(spool)
    assert kinds_at(spool, problems, rel(spool, dead_spare)) == ["tmp-leftover"]
    assert kinds_at(spool, problems, rel(spool, live_spare)) == []  # no age needed: liveness decides
    [spare] = [p for p in problems if p.kind == "tmp-leftover"]
    assert spare.detail == "a spare file of a worker that is gone"
    fsck.repair(problems)
    assert spare.done == "removed"
    assert os.listdir(spool.layout.tmp) == [f"free-{worker}-1"]
    assert found(spool, fsck.check(spool)) == []


# ---------------------------------------------------------------- tmp-leftover: anything else, when old

def test_tmp_leftover_an_old_unknown_file_is_removed_a_young_one_kept(spool):
    old = write(os.path.join(spool.layout.tmp, "reg-host-1.json"), b"{}")
    young = write(os.path.join(spool.layout.tmp, "somebody-else"), b"")
    age(old, fsck.STALE_TMP_AGE + 10)
    age(young, fsck.STALE_TMP_AGE - 60)
    problems = only(spool, "tmp-leftover", "tmp/reg-host-1.json")
    assert problems[0].detail.startswith("left ") and problems[0].detail.endswith("s ago")
    assert repaired(problems) == ["removed"]
    assert os.listdir(spool.layout.tmp) == ["somebody-else"]
    assert found(spool, fsck.check(spool)) == []


# ---------------------------------------------------------------- not-a-job

def _regular(path):
    write(path, b"notes\n")


def _folder(path):
    os.mkdir(path)


def _symlink(path):
    os.symlink("/etc/passwd", path)


def _fifo(path):
    os.mkfifo(path)


@pytest.mark.parametrize("state, name, make, what", [
    ("completed", "notes.txt", _regular, "a name that is not a job's"),
    ("processing", "j.json", _regular, "a name that is not a job's"),  # no _HOST_PID_aN
    ("dead", "x.json", _folder, "not a regular file"),
    ("failed", names.failed_name(0, "s"), _symlink, "not a regular file"),
    ("pending", names.pending_name(10, 0, 1, "q"), _fifo, "not a regular file"),
], ids=["text-file", "bad-processing-name", "folder", "symlink", "fifo"])
def test_not_a_job_is_moved_aside(spool, state, name, make, what):
    path = state_path(spool, state, name)
    make(path)
    problems = only(spool, "not-a-job", f"{state}/{name}")
    assert problems[0].detail == what
    assert repaired(problems) == [f"moved to rejected/{name}"]
    moved, error = rejected_with_error(spool, name)
    assert f"found in {state}/: {what}" in error
    assert not os.path.lexists(path)
    if make is _symlink:
        assert os.readlink(moved) == "/etc/passwd"  # moved, never followed
    assert found(spool, fsck.check(spool)) == []


def test_files_handed_to_pending_are_left_to_the_workers(spool):
    """A .json with a name that is not a pending name is a worker's business (a hand-placed
    record is filed as a new try, anything else checked like a dropped file)."""
    spool.enqueue("true", id="a")
    place(spool, "a", "dead", attempts=4, exit_code=1)
    os.rename(state_path(spool, "dead", "a.json"), state_path(spool, "pending", "a.json"))  # mv dead/a.json pending/
    write(log(spool, "a"), b"old output\n")
    write(state_path(spool, "pending", "whatever.json"), b"{not even json")
    assert found(spool, fsck.check(spool)) == []  # no stale marker, no orphan log: the hand-placed record counts


# ---------------------------------------------------------------- corrupt

@pytest.mark.parametrize("content, reason", [
    (b"{not json", "Expecting property name"),
    (b"[1, 2]", "record is not a JSON object"),
    (b'{"id": "ghost", "state": "completed"}', "command"),
    (b"\xff\xfe", "codec can't decode"),
], ids=["not-json", "not-an-object", "missing-field", "not-utf8"])
def test_corrupt_record_is_moved_aside(spool, content, reason):
    path = write(state_path(spool, "completed", "ghost.json"), content)
    problems = only(spool, "corrupt", "completed/ghost.json")
    assert problems[0].detail.startswith("unreadable record: ") and reason in problems[0].detail
    assert repaired(problems) == ["moved to rejected/ghost.json"]
    moved, error = rejected_with_error(spool, "ghost.json")
    with open(moved, "rb") as fh:
        assert fh.read() == content  # set aside as it was, never rewritten
    assert "found in completed/, unreadable:" in error
    assert not os.path.lexists(path)
    assert found(spool, fsck.check(spool)) == []


def test_corrupt_record_of_an_enqueued_job_also_frees_its_id(spool):
    spool.enqueue("true", id="j")
    _, name = spool.find("j")
    write(state_path(spool, "pending", name), b"\0\0\0")  # e.g. a disk that lost the content
    problems = fsck.check(spool)
    assert found(spool, problems) == [("corrupt", f"pending/{name}"), ("stale-id-marker", "ids/j")]
    assert repaired(problems) == [f"moved to rejected/{name}", "removed"]
    assert found(spool, fsck.check(spool)) == []
    assert spool.enqueue("true", id="j")["id"] == "j"  # the id is free again


# ---------------------------------------------------------------- name-mismatch

def test_name_mismatch_is_moved_aside(spool):
    spool.enqueue("true", id="b")
    path = write(state_path(spool, "completed", "a.json"), dict(spool.get("b"), state="completed"))
    problems = only(spool, "name-mismatch", "completed/a.json")
    assert problems[0].detail == "name says 'a', record says 'b'"
    assert repaired(problems) == ["moved to rejected/a.json"]
    moved, error = rejected_with_error(spool, "a.json")
    assert read(moved)["id"] == "b" and "found in completed/: name says 'a', record says 'b'" in error
    assert not os.path.lexists(path)
    assert spool.get("b")["state"] == "pending"  # the job itself is untouched
    assert found(spool, fsck.check(spool)) == []


# ---------------------------------------------------------------- orphan-processing

@pytest.mark.parametrize("record_state, attempts, ends_in", [
    ("processing", 1, "failed"),   # its owner died while the command ran: a counted attempt
    ("processing", 4, "dead"),     # ... and that was its last try (max_retries 3)
    ("pending", 0, "pending"),     # died between the claim's two renames: never started
], ids=["retry", "last-try", "claim-cut"])
def test_orphan_processing_is_taken_back(spool, record_state, attempts, ends_in):
    spool.enqueue("true", id="j", max_retries=3)
    name = names.processing_name("j", DEAD_HOST, DEAD_PID, max(attempts, 1))
    path = place(spool, "j", "processing", name, attempts=attempts)
    if record_state != "processing":
        write(path, dict(read(path), state=record_state))
    problems = only(spool, "orphan-processing", f"processing/{name}")
    assert problems[0].detail == "no live worker holds it"
    [done] = repaired(problems)
    state, new_name = spool.find("j")
    assert state == ends_in and done == f"taken back to {state}/{new_name}"
    record = read(state_path(spool, state, new_name))
    assert record["state"] == ends_in and record["attempts"] == attempts
    if ends_in != "pending":
        assert record["last_error"] == f"worker lost (host {DEAD_HOST}, pid {DEAD_PID})"
        assert record["exit_code"] is None and record["finished_at"]
    assert os.listdir(spool.layout.processing) == []
    assert found(spool, fsck.check(spool)) == []


def test_a_processing_file_held_by_a_live_worker_is_not_an_orphan(spool, held):
    spool.enqueue("true", id="j")
    name = names.processing_name("j", LIVE_HOST, LIVE_PID, 1)
    hold_job(spool, held, "j", place(spool, "j", "processing", name, attempts=1))
    live_worker(spool, held)
    assert found(spool, fsck.check(spool)) == []


# ---------------------------------------------------------------- state-mismatch

@pytest.mark.parametrize("folder, record_says", [
    ("completed", "processing"), ("dead", "processing"), ("failed", "processing"), ("pending", "failed"),
])
def test_state_mismatch_record_is_relabelled_by_its_folder(spool, folder, record_says):
    """A move cut between its two renames, its new record lost: the folder is the truth."""
    spool.enqueue("true", id="j")
    path = place(spool, "j", folder, attempts=1)
    write(path, dict(read(path), state=record_says))
    problems = only(spool, "state-mismatch", rel(spool, path))
    assert problems[0].detail == f"record says {record_says!r}"
    assert repaired(problems) == [f"record state set to {folder!r}"]
    record = read(path)
    assert record["state"] == folder and record["id"] == "j" and record["attempts"] == 1
    assert spool.find("j") == (folder, os.path.basename(path))
    assert found(spool, fsck.check(spool)) == []


# ---------------------------------------------------------------- duplicate

@pytest.mark.parametrize("newer", ["pending", "dead"])
def test_duplicate_the_older_copy_is_moved_aside(spool, newer):
    spool.enqueue("true", id="j")
    _, pending_name = spool.find("j")
    pending_path = state_path(spool, "pending", pending_name)
    dead_path = write(state_path(spool, "dead", "j.json"),
                      dict(spool.get("j"), state="dead", attempts=4, updated_at=OLD_STAMP))
    if newer == "dead":
        write(dead_path, dict(read(dead_path), updated_at="2099-01-01T00:00:00.000Z"))
    keep, drop = (pending_path, dead_path) if newer == "pending" else (dead_path, pending_path)
    problems = only(spool, "duplicate", rel(spool, drop))
    assert problems[0].detail == f"id 'j' is also in {rel(spool, keep)} (newer)"
    kept = read(keep)
    drop_name = os.path.basename(drop)
    assert repaired(problems) == [f"moved to rejected/{drop_name}"]
    moved, error = rejected_with_error(spool, drop_name)
    assert f"is also in {rel(spool, keep)}" in error
    assert read(keep) == kept and not os.path.lexists(drop)
    assert os.path.lexists(os.path.join(spool.layout.ids, "j"))  # the job still exists: its id too
    assert found(spool, fsck.check(spool)) == []


def test_duplicate_a_claimed_copy_is_as_new_as_its_start(spool):
    """A claim leaves the record as it was: a copy of it left in pending/ (a power cut that
    kept the claim's new name but not the removal of the old one) is the older one."""
    spool.enqueue("true", id="j")
    name = spool.names("pending")[0]
    before = read(state_path(spool, "pending", name))
    claimed = spool.moves.claim(name, DEAD_HOST, DEAD_PID)
    claimed.close()
    stale = write(state_path(spool, "pending", name), before)
    problems = [p for p in fsck.check(spool) if p.kind == "duplicate"]
    assert [p.path for p in problems] == [stale]
    assert problems[0].detail == f"id 'j' is also in processing/{claimed.name} (newer)"
    fsck.repair(fsck.check(spool))
    got = spool.get("j")  # taken back from its dead worker: no log says the command never started
    assert got["state"] == "failed" and got["attempts"] == 1 and got["last_error"].startswith("worker lost")
    assert found(spool, fsck.check(spool)) == []


def test_duplicate_left_in_processing_goes_aside_before_any_take_back(spool):
    """A power cut kept a move's new record (completed/) but not the rename that took the job
    out of processing/: the old copy goes aside; a take-back of it would have made it the newer."""
    spool.enqueue("true", id="j")
    running = place(spool, "j", "processing", attempts=1, updated_at=OLD_STAMP)
    write(state_path(spool, "completed", "j.json"), dict(read(running), state="completed", exit_code=0,
                                                         updated_at="2099-01-01T00:00:00.000Z"))
    problems = fsck.check(spool)
    assert [p.kind for p in problems if p.path == running] == ["duplicate"]  # no orphan-processing
    fsck.repair(problems)
    assert spool.find("j") == ("completed", "j.json")
    assert os.listdir(spool.layout.failed) == [] and not os.path.lexists(running)
    assert found(spool, fsck.check(spool)) == []


def test_a_workers_take_back_leaves_a_stale_processing_copy_aside_when_the_job_finished(spool):
    """The same half-persisted finish, met by a worker's take-back before any fsck: the job
    stays completed and does not run again."""
    spool.enqueue("true", id="j")
    running = place(spool, "j", "processing", attempts=1, updated_at=OLD_STAMP)
    write(state_path(spool, "completed", "j.json"), dict(read(running), state="completed", exit_code=0,
                                                         updated_at="2099-01-01T00:00:00.000Z"))
    assert spool.moves.take_back_lost() == []
    assert spool.find("j") == ("completed", "j.json") and not os.path.lexists(running)
    moved, error = rejected_with_error(spool, os.path.basename(running))
    assert "also in completed/j.json (newer)" in error
    assert found(spool, fsck.check(spool)) == []


def test_a_take_back_that_meets_a_finish_through_a_stale_name_moves_nothing_and_goes_on(spool, monkeypatch):
    """Another host's worker finished the job just now, and this host's cache still showed its
    processing/ name (GlusterFS: for a second or two): the take-back read the claimed record,
    found the newer completed one, and its move aside meets a name that is gone. That is a lost
    race, not an error: no worker may die of it, and nothing is left in rejected/."""
    spool.enqueue("true", id="j")
    running = place(spool, "j", "processing", attempts=1, updated_at=OLD_STAMP)
    write(state_path(spool, "completed", "j.json"), dict(read(running), state="completed", exit_code=0,
                                                         updated_at="2099-01-01T00:00:00.000Z"))
    real = spool.moves._newer_final_copy

    def finished_meanwhile(record):
        os.unlink(running)  # the other worker's fenced rename, seen too late here
        return real(record)
    monkeypatch.setattr(spool.moves, "_newer_final_copy", finished_meanwhile)
    assert spool.moves.take_back_lost() == []
    assert spool.find("j") == ("completed", "j.json")
    assert os.listdir(spool.layout.rejected) == []


def test_fsck_and_take_backs_follow_durable_moves(spool):
    spool.set_config("durable-moves", "on")
    fsck.check(spool)
    assert spool.moves.durable_moves is True


# ---------------------------------------------------------------- missing-id-marker / stale-id-marker

def test_missing_id_marker_is_created(spool):
    spool.enqueue("true", id="j")
    marker = os.path.join(spool.layout.ids, "j")
    os.unlink(marker)
    problems = only(spool, "missing-id-marker", "ids/j")
    assert repaired(problems) == ["created"]
    with open(marker, "rb") as fh:
        assert fh.read() == b"fsck"
    assert found(spool, fsck.check(spool)) == []
    with pytest.raises(DuplicateJob):  # the marker does its job again
        spool.enqueue("true", id="j")


def test_stale_id_marker_is_removed(spool):
    marker = write(os.path.join(spool.layout.ids, "ghost"), TOKEN.encode())  # its enqueuer died
    problems = only(spool, "stale-id-marker", "ids/ghost")
    assert repaired(problems) == ["removed"]
    assert not os.path.lexists(marker)
    assert found(spool, fsck.check(spool)) == []
    assert spool.enqueue("true", id="ghost")["id"] == "ghost"


def test_an_id_marker_of_an_enqueue_in_progress_is_not_stale(spool, held):
    write(os.path.join(spool.layout.ids, "coming"), TOKEN.encode())
    owner = held(os.path.join(spool.layout.tmp, TOKEN + ".lock"), b"")
    write(log(spool, "coming"), b"")  # nor is the log of a job being enqueued an orphan
    assert found(spool, fsck.check(spool)) == []
    owner.close()  # the enqueue died: its marker and the log are both left over, and one
    # repair takes both (the log is not kept for the marker that the same repair removes)
    left = sorted(found(spool, fsck.check(spool)))
    assert left == [("orphan-log", "logs/coming.log"), ("stale-id-marker", "ids/coming")]
    fsck.repair(fsck.check(spool))
    assert found(spool, fsck.check(spool)) == []


# ---------------------------------------------------------------- orphan-log

def test_orphan_log_is_moved_aside(spool):
    spool.enqueue("true", id="alive")
    write(log(spool, "alive"), b"mine\n")
    write(log(spool, "ghost"), b"whose?\n")
    problems = only(spool, "orphan-log", "logs/ghost.log")
    assert problems[0].detail == "a log without a job"
    assert repaired(problems) == ["moved to rejected/ghost.log"]
    moved, error = rejected_with_error(spool, "ghost.log")
    assert "a log whose job no longer exists" in error
    with open(moved, "rb") as fh:
        assert fh.read() == b"whose?\n"
    assert os.listdir(spool.layout.logs) == ["alive.log"]
    assert found(spool, fsck.check(spool)) == []


# ---------------------------------------------------------------- stale-worker

def test_stale_worker_files_of_a_dead_worker_are_removed(spool, held):
    dead = f"{DEAD_HOST}_{DEAD_PID}"
    workers = spool.layout.workers
    write(os.path.join(workers, dead + ".json"), {"host": DEAD_HOST, "pid": DEAD_PID})  # unlocked
    write(os.path.join(workers, dead + ".stop"), b"graceful")
    write(os.path.join(workers, dead + ".cancel.j"), b"cancel")
    write(os.path.join(workers, dead + ".job"), b"4243 gone".ljust(160) + b"\n")
    old = time.time() - 2 * fsck.REGISTRATION_GRACE  # a young registration is never judged dead
    os.utime(os.path.join(workers, dead + ".json"), (old, old))
    live = live_worker(spool, held)
    write(os.path.join(workers, live + ".stop"), b"now")  # a live worker's request is kept
    problems = fsck.check(spool)
    assert found(spool, problems) == [("stale-worker", f"workers/{dead}{suffix}")
                                      for suffix in (".cancel.j", ".job", ".json", ".stop")]
    details = {rel(spool, p.path): p.detail for p in problems}
    assert details[f"workers/{dead}.json"] == "registration of a worker that is gone"
    assert details[f"workers/{dead}.stop"] == "request or note of a worker that is gone"
    assert repaired(problems) == ["removed"] * 4
    assert sorted(os.listdir(workers)) == [live + ".json", live + ".stop"]
    assert found(spool, fsck.check(spool)) == []


def test_a_young_registration_seen_unlocked_is_not_judged_dead(spool):
    """Another host's cache may not show a just-made registration, or its lock, for a moment."""
    young = f"{DEAD_HOST}_{DEAD_PID}"
    write(os.path.join(spool.layout.workers, young + ".json"), {"host": DEAD_HOST, "pid": DEAD_PID})
    write(os.path.join(spool.layout.workers, young + ".job"), b"1 x".ljust(160) + b"\n")
    assert found(spool, fsck.check(spool)) == []


def test_a_dead_workers_job_note_is_kept_until_its_job_is_taken_back(spool):
    dead = f"{DEAD_HOST}_{DEAD_PID}"
    note = write(os.path.join(spool.layout.workers, dead + ".job"), b"4243 j".ljust(160) + b"\n")
    spool.enqueue("true", id="j")
    name = names.processing_name("j", DEAD_HOST, DEAD_PID, 1)
    place(spool, "j", "processing", name, attempts=1)
    problems = fsck.check(spool)
    # the note names the job's process group: whoever takes the job back needs it
    assert found(spool, problems) == [("orphan-processing", f"processing/{name}")]
    repaired(problems)
    assert spool.find("j")[0] == "failed"
    # now the note is of no use: gone in this pass or reported by the next one (the report
    # says which fsck does today: it needs a second pass)
    problems = fsck.check(spool)
    assert found(spool, problems) in ([], [("stale-worker", f"workers/{dead}.job")])
    repaired(problems)
    assert not os.path.lexists(note)
    assert found(spool, fsck.check(spool)) == []


# ---------------------------------------------------------------- defects found once, fixed

def test_a_live_worker_on_a_host_with_a_dotted_name_is_not_stale(spool, held):
    live = live_worker(spool, held, host="build1.example.com")  # names.hostname() keeps dots
    write(os.path.join(spool.layout.workers, live + ".stop"), b"graceful")
    assert [w["host"] for w in spool.workers()] == ["build1.example.com"]
    assert found(spool, fsck.check(spool)) == []


def test_a_spool_reached_through_a_symlink_is_not_unsafe(tmp_path):
    real = tmp_path / "real"
    os.mkdir(str(real), 0o700)
    os.symlink(str(real), str(tmp_path / "link"))
    spool = Spool(str(tmp_path / "link"))
    spool.layout.check_safe()  # the workers accept it
    assert found(spool, fsck.check(spool)) == []


def test_a_marker_whose_job_moved_while_fsck_looked_is_kept(spool):
    """The folders are listed one after another: a job moving from a folder not listed yet to
    one already listed is seen in neither. Its marker (its lock) must survive the repair."""
    spool.enqueue("true", id="mover")
    problems = fsck._id_markers(spool, seen={})  # as if the listing had missed the job
    assert [p.kind for p in problems] == ["stale-id-marker"]
    fsck.repair(problems)
    assert problems[0].done.startswith("kept")
    assert os.path.exists(os.path.join(spool.layout.ids, "mover"))
    with pytest.raises(DuplicateJob):
        spool.enqueue("true", id="mover")
