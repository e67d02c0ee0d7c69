"""The Spool API and its on-disk protocol (spool.py), in process."""
import json
import multiprocessing
import os
import stat
import threading
import time

import pytest

from helpers import STATE_FOLDERS, claim_started, find_job, job_files, read_job_file, state_counts, tree_snapshot
from queuectl import fsck
from queuectl import Spool, fsutil, locks, names, registry, timeutil
from queuectl.errors import (SpoolError, Busy, DuplicateJob, FieldError, InvalidInput, JobNotFound, LostRace,
                             WrongState)
from queuectl.job import due_time
from queuectl.paths import ALL_DIRS
from queuectl.moves import Held

NO_BACKOFF = (1, 0, 0)  # retry delay 0


def claim(spool, job_id, host="hostA", pid=1001):
    """Claim the job and write its attempt's log header: its command counts as started."""
    state, name = find_job(spool, job_id)
    assert state == "pending"
    return claim_started(spool, name, host, pid)


def to_pending(spool, job_id):
    """Promote a failed job back to pending (regardless of its retry time)."""
    state, name = find_job(spool, job_id)
    assert state == "failed"
    spool.moves.promote(name)


def iso_ts(text):
    return timeutil.parse_iso(text)


def locked_by_someone(path):
    fd = fsutil.open_nofollow(path)
    try:
        return locks.is_locked(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- layout and enqueue

def test_spool_folders_are_created_0700(spool_dir):
    old = os.umask(0)
    try:
        spool = Spool(spool_dir)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(spool.path).st_mode) == 0o700
    for name in ("incoming", "pending", "processing", "failed", "completed", "dead", "logs",
                 "rejected", "tmp") + ALL_DIRS:
        st = os.lstat(os.path.join(spool.path, name))
        assert stat.S_ISDIR(st.st_mode), name
        assert stat.S_IMODE(st.st_mode) == 0o700, name


def test_enqueue_creates_a_pending_file_whose_name_and_record_agree(spool):
    before = time.time()
    rec = spool.enqueue("echo hi", id="job1", priority=3, max_retries=2, env={"A": "b"}, cwd="/tmp")
    after = time.time()
    files = job_files(spool.path, "pending")
    assert len(files) == 1
    name = files[0]
    prio, due, seq, job_id = names.parse_pending(name)
    on_disk = read_job_file(spool.path, "pending", name)
    assert on_disk == rec
    assert (job_id, prio) == ("job1", 3)
    assert due == pytest.approx(due_time(on_disk), abs=0.001)
    assert before - 0.01 <= due <= after + 0.01
    assert on_disk["state"] == "pending" and on_disk["attempts"] == 0
    assert on_disk["command"] == "echo hi" and on_disk["max_retries"] == 2
    assert on_disk["env"] == {"A": "b"} and on_disk["cwd"] == "/tmp"
    st = os.stat(os.path.join(spool.path, "pending", name))
    assert stat.S_IMODE(st.st_mode) & 0o077 == 0
    # nothing staged is left behind
    assert os.listdir(os.path.join(spool.path, "tmp")) == []
    assert spool.get("job1") == on_disk


def test_enqueue_is_durable_before_it_returns(spool, monkeypatch):
    """The job file is fsynced and pending/ is fsynced after the rename, before enqueue returns."""
    events = []
    real_fsync, real_rename, real_fsync_dir = os.fsync, os.rename, fsutil.fsync_dir

    def spy_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def spy_rename(src, dst, *a, **kw):
        events.append(("rename", str(dst)))
        return real_rename(src, dst, *a, **kw)

    def spy_fsync_dir(path):
        events.append(("fsync_dir", str(path)))
        return real_fsync_dir(path)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "rename", spy_rename)
    monkeypatch.setattr(fsutil, "fsync_dir", spy_fsync_dir)
    spool.enqueue("true", id="durable")
    pending_dir = os.path.join(spool.path, "pending")
    renames = [i for i, e in enumerate(events) if e[0] == "rename" and os.path.dirname(e[1]) == pending_dir]
    assert len(renames) == 1
    r = renames[0]
    assert any(e[0] == "fsync" for e in events[:r]), "the job file is fsynced before it is renamed in"
    assert ("fsync_dir", pending_dir) in events[r:], "pending/ is fsynced after the rename"


def test_claim_puts_the_counted_attempt_in_place_before_it_returns(spool):
    """Rule 4: the processing/ name already says attempt 1 when claim() returns, i.e.
    before the command can start, so every reader sees the attempt counted."""
    spool.enqueue("true", id="counted")
    held = spool.moves.claim(spool.names("pending")[0], "h", 1)
    try:
        claimed = names.parse_processing(held.name)
        assert (claimed.job_id, claimed.worker, claimed.attempt) == ("counted", "h:1", 1)
        seen = spool.get("counted")
        assert seen["attempts"] == 1 and seen["state"] == "processing" and seen["worker"] == "h:1"
    finally:
        held.close()


def test_enqueue_returns_a_generated_id_when_none_given(spool):
    a = spool.enqueue("true")
    b = spool.enqueue(command="true")
    assert a["id"] != b["id"] and a["id"] < b["id"]
    assert spool.get(a["id"])["state"] == "pending"


def test_enqueue_validates_fields(spool):
    with pytest.raises(FieldError) as info:
        spool.enqueue("true", priority=1000)
    assert info.value.field == "priority"
    with pytest.raises(FieldError) as info:
        spool.enqueue("true", id="../escape")
    assert info.value.field == "id"
    with pytest.raises(FieldError) as info:
        spool.enqueue("true", bogus=1)
    assert info.value.field == "bogus"
    assert state_counts(spool.path) == dict.fromkeys(STATE_FOLDERS, 0)
    assert not os.path.exists(os.path.join(os.path.dirname(spool.path), "escape"))


def test_enqueue_default_max_retries_comes_from_config(spool):
    spool.set_config("max-retries", "6")
    assert spool.enqueue("true")["max_retries"] == 6
    assert spool.enqueue("true", max_retries=0)["max_retries"] == 0


def make_job_in_state(spool, job_id, state):
    """A job in `state`; returns the Held of a processing job (keep it open)."""
    if state == "blocked":  # waits for a job that has not run
        spool.enqueue("true", id=f"{job_id}-first")
        spool.enqueue("false", id=job_id, after=[f"{job_id}-first"])
        return None
    spool.enqueue("false", id=job_id, max_retries=0 if state == "dead" else 5)
    if state == "pending":
        return None
    held = claim(spool, job_id)
    if state == "processing":
        return held
    if state == "completed":
        spool.moves.finish(held, 0)
    else:
        spool.moves.finish(held, 1, backoff=(2, 3600, 0))
    assert find_job(spool, job_id)[0] == state
    return None


@pytest.mark.parametrize("state", STATE_FOLDERS)
def test_duplicate_id_refused_naming_the_state_and_nothing_changes(spool, state):
    held = make_job_in_state(spool, "dup", state)
    spool.enqueue("true", id="other")
    before = tree_snapshot(spool.path)
    counts = state_counts(spool.path)
    with pytest.raises(DuplicateJob) as info:
        spool.enqueue("echo again", id="dup")
    exc = info.value
    assert isinstance(exc, InvalidInput) and exc.exit_code == 2
    assert exc.state == state and state in str(exc) and "dup" in str(exc)
    assert state_counts(spool.path) == counts
    assert tree_snapshot(spool.path) == before
    # a batch containing it is refused whole, too
    with pytest.raises(DuplicateJob):
        spool.enqueue_many([{"command": "true", "id": "fresh1"}, {"command": "true", "id": "dup"},
                            {"command": "true", "id": "fresh2"}])
    assert tree_snapshot(spool.path) == before
    if held:
        held.close()


def _race_threads(spool_dir, job_id, results):
    barrier = threading.Barrier(2)

    def go(i):
        sp = Spool(spool_dir)
        barrier.wait()
        try:
            sp.enqueue(f"echo {i}", id=job_id)
            results.append("ok")
        except DuplicateJob:
            results.append("dup")

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive()


RACE_ROUNDS = 200


def test_two_threads_enqueue_the_same_id_exactly_one_wins(spool, spool_dir):
    for n in range(RACE_ROUNDS):
        results = []
        _race_threads(spool_dir, f"race-{n}", results)
        assert sorted(results) == ["dup", "ok"], (n, results)
    files = job_files(spool_dir, "pending")
    assert len(files) == RACE_ROUNDS
    assert sorted(names.parse_pending(f)[3] for f in files) == sorted(f"race-{n}" for n in range(RACE_ROUNDS))
    assert os.listdir(os.path.join(spool_dir, "tmp")) == []


def _race_process(spool_dir, barrier, queue, count):
    sp = Spool(spool_dir)
    out = []
    for n in range(count):
        barrier.wait(30)
        try:
            sp.enqueue(f"echo {os.getpid()}", id=f"prace-{n}")
            out.append("ok")
        except DuplicateJob:
            out.append("dup")
        except Exception as exc:  # pragma: no cover - reported to the test
            out.append(f"error: {exc!r}")
    queue.put((os.getpid(), out))


@pytest.mark.process  # forks
def test_two_processes_enqueue_the_same_id_exactly_one_wins(spool, spool_dir):
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_process, args=(spool_dir, barrier, queue, RACE_ROUNDS)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60)[1] for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    for n in range(RACE_ROUNDS):
        assert sorted([results[0][n], results[1][n]]) == ["dup", "ok"], (n, results[0][n], results[1][n])
    files = job_files(spool_dir, "pending")
    assert sorted(names.parse_pending(f)[3] for f in files) == sorted(f"prace-{n}" for n in range(RACE_ROUNDS))


def test_enqueuer_paused_right_after_reserving_the_id_still_wins(spool, spool_dir, monkeypatch):
    """The first enqueuer has made ids/ID (naming its live lock) but its job is not in
    pending/ yet: a rival must see the id as taken ("being enqueued"), not as a crash's."""
    import queuectl.moves as movesmod
    created, resume = threading.Event(), threading.Event()

    real_write = movesmod.fsutil.write_file

    def slow_write(path, *args, **kwargs):
        real_write(path, *args, **kwargs)
        if threading.current_thread().name == "first" and os.path.basename(os.path.dirname(path)) == "ids":
            created.set()
            resume.wait(10)  # preempted here, the marker made

    monkeypatch.setattr(movesmod.fsutil, "write_file", slow_write)
    outcome = {}

    def first():
        try:
            Spool(spool_dir).enqueue("echo first", id="same")
            outcome["first"] = "ok"
        except DuplicateJob:
            outcome["first"] = "dup"

    t = threading.Thread(target=first, name="first")
    t.start()
    assert created.wait(10)
    try:
        Spool(spool_dir).enqueue("echo second", id="same")
        outcome["second"] = "ok"
    except DuplicateJob as exc:
        outcome["second"] = "dup"
        assert "being enqueued" in str(exc)
    finally:
        resume.set()
        t.join(10)
    assert outcome == {"first": "ok", "second": "dup"}, outcome
    assert len([n for n in job_files(spool_dir, "pending") if n.endswith("_same.json")]) == 1


@pytest.mark.parametrize("content", [b"", b"garbage", b"enq-1-deadbeef", b"enq-../../x", b"\xff\xfe"])
def test_stale_id_marker_does_not_block_enqueue(spool, content):
    marker = os.path.join(spool.path, "ids", "ghost")
    with open(marker, "wb") as fh:
        fh.write(content)
    old = time.time() - 120  # an empty marker is "being written" for a minute, then stale
    os.utime(marker, (old, old))
    rec = spool.enqueue("true", id="ghost")
    assert spool.get("ghost")["id"] == rec["id"] == "ghost"
    assert len(job_files(spool.path, "pending")) == 1


def test_marker_of_a_crashed_enqueuer_whose_lock_file_is_left_is_taken_over(spool):
    token = "enq-99999-0badc0de"
    open(os.path.join(spool.path, "tmp", token + ".lock"), "wb").close()  # nobody holds its lock
    with open(os.path.join(spool.path, "ids", "crashed"), "w") as fh:
        fh.write(token)
    spool.enqueue("true", id="crashed")
    assert find_job(spool, "crashed")[0] == "pending"


def test_marker_of_a_live_enqueuer_blocks(spool):
    token = "enq-4242-livebeef"
    fd = fsutil.write_new(os.path.join(spool.path, "tmp", token + ".lock"), b"")
    locks.try_lock(fd)  # an enqueuer in progress
    try:
        with open(os.path.join(spool.path, "ids", "busy"), "w") as fh:
            fh.write(token)
        with pytest.raises(DuplicateJob) as info:
            spool.enqueue("true", id="busy")
        assert "being enqueued" in str(info.value)
        assert state_counts(spool.path)["pending"] == 0
    finally:
        os.close(fd)
    spool.enqueue("true", id="busy")  # its owner is gone now
    assert find_job(spool, "busy")[0] == "pending"


def test_purged_id_can_be_enqueued_again(spool):
    spool.enqueue("true", id="again")
    spool.moves.finish(claim(spool, "again"), 0)
    assert spool.purge("completed") == 1
    spool.enqueue("true", id="again")
    assert find_job(spool, "again")[0] == "pending"


# ---------------------------------------------------------------- batches

def test_enqueue_many_all_or_nothing(spool):
    spool.enqueue("true", id="existing")
    before = tree_snapshot(spool.path)
    items = [{"command": "true", "id": f"b{i}"} for i in range(5)]
    items[2] = {"command": "true", "id": "b2", "priority": "high"}
    with pytest.raises(FieldError) as info:
        spool.enqueue_many(items)
    assert "job 3" in str(info.value) and "priority" in str(info.value)
    assert info.value.field.startswith("job 3")
    assert tree_snapshot(spool.path) == before


@pytest.mark.parametrize("bad", [
    {"id": "b2"},                           # no command
    {"command": "true", "id": "../b2"},
    {"command": "true", "nope": 1},
    ["not", "an", "object"],
])
def test_enqueue_many_bad_item_names_job_3(spool, bad):
    before = tree_snapshot(spool.path)
    items = [{"command": "true", "id": f"b{i}"} for i in range(5)]
    items[2] = bad
    with pytest.raises(InvalidInput) as info:
        spool.enqueue_many(items)
    assert "job 3" in str(info.value)
    assert tree_snapshot(spool.path) == before


def test_enqueue_many_refuses_an_id_twice_in_the_batch(spool):
    before = tree_snapshot(spool.path)
    with pytest.raises(FieldError) as info:
        spool.enqueue_many([{"command": "true", "id": "x"}, {"command": "true", "id": "y"},
                            {"command": "true", "id": "x"}])
    assert "job 3" in str(info.value)
    assert tree_snapshot(spool.path) == before


def test_enqueue_many_duplicate_of_an_existing_job_changes_nothing(spool):
    spool.enqueue("true", id="b3")
    before = tree_snapshot(spool.path)
    items = [{"command": "true", "id": f"b{i}"} for i in range(5)]
    with pytest.raises(DuplicateJob) as info:
        spool.enqueue_many(items)
    assert "b3" in str(info.value)
    assert tree_snapshot(spool.path) == before


def test_enqueue_many_success(spool):
    recs = spool.enqueue_many([{"command": f"echo {i}", "id": f"m{i}"} for i in range(100)])
    assert [r["id"] for r in recs] == [f"m{i}" for i in range(100)]
    assert [names.parse_pending(n)[3] for n in spool.names("pending")] == [f"m{i}" for i in range(100)]
    assert spool.enqueue_many([]) == []
    assert os.listdir(os.path.join(spool.path, "tmp")) == []


# ---------------------------------------------------------------- claim / finish

def test_claim_persists_attempts_before_the_command_starts(spool):
    spool.enqueue("true", id="c1")
    held = claim(spool, "c1", "hostA", 1234)
    try:
        assert isinstance(held, Held) and held.state == "processing" and held.fd is not None
        started = names.parse_processing(held.name).started
        assert held.name == names.processing_name("c1", "hostA", 1234, 1, started)
        assert abs(started - time.time()) < 5
        assert job_files(spool.path, "processing") == [held.name]
        assert job_files(spool.path, "pending") == []
        # one rename: the file holds the record as claimed; the name carries the attempt
        on_disk = read_job_file(spool.path, "processing", held.name)
        assert on_disk["attempts"] == 0 and on_disk["state"] == "pending"
        seen = spool.get("c1")
        assert seen["attempts"] == 1
        assert seen["state"] == "processing"
        assert seen["worker"] == "hostA:1234"
        assert seen["started_at"] == timeutil.iso(started) and seen["finished_at"] is None
        assert held.record == seen
        # the job (its id marker) is locked while held, so nobody can take it
        assert locked_by_someone(os.path.join(spool.path, "ids", "c1"))
        with pytest.raises(Busy):
            spool.moves.take_back(held.name)
        assert spool.get("c1")["state"] == "processing"
    finally:
        held.close()


def test_claim_of_a_gone_or_locked_pending_file(spool):
    spool.enqueue("true", id="c2")
    name = find_job(spool, "c2")[1]
    held = spool.moves.claim(name, "h", 1)
    with pytest.raises(LostRace):
        spool.moves.claim(name, "h", 2)  # already moved
    held.close()
    spool.enqueue("true", id="c3")
    name = find_job(spool, "c3")[1]
    fd = fsutil.open_nofollow(os.path.join(spool.path, "ids", "c3"))
    locks.try_lock(fd)  # another claimer in progress
    try:
        with pytest.raises(Busy):
            spool.moves.claim(name, "h", 3)
    finally:
        os.close(fd)
    assert find_job(spool, "c3") == ("pending", name)


def test_finish_success_goes_to_completed(spool):
    spool.enqueue("true", id="ok1", run_at="+0s")
    held = claim(spool, "ok1")
    new = spool.moves.finish(held, 0)
    assert held.fd is None
    assert new.state == "completed" and new.name == "ok1.json"
    rec = read_job_file(spool.path, "completed", "ok1.json")
    assert rec["state"] == "completed" and rec["exit_code"] == 0
    assert rec["last_error"] is None
    assert rec["attempts"] == 1 and rec["finished_at"] is not None
    assert state_counts(spool.path) == {"blocked": 0, "pending": 0, "processing": 0, "failed": 0, "completed": 1, "dead": 0}
    assert [n for n in os.listdir(os.path.join(spool.path, "tmp")) if n.startswith("mv-")] == []


def test_exponential_backoff_then_dead(spool):
    spool.enqueue("false", id="bk", max_retries=2)
    delays = []
    for attempt in (1, 2, 3):
        held = claim(spool, "bk", "h", 100 + attempt)
        assert held.record["attempts"] == attempt
        t0 = time.time()
        new = spool.moves.finish(held, 3, backoff=(10, 3600, 0))
        t1 = time.time()
        rec = new.record
        assert rec["attempts"] == attempt and rec["exit_code"] == 3 and rec["last_error"] == "exit code 3"
        if attempt <= 2:
            assert new.state == "failed"
            on_disk = read_job_file(spool.path, "failed", new.name)
            assert on_disk == rec
            run_at = iso_ts(rec["run_at"])
            d = 10 ** attempt
            assert t0 + d - 0.002 <= run_at <= t1 + d + 0.002
            assert names.parse_failed(new.name)[0] == pytest.approx(run_at, abs=0.002)
            delays.append(d)
            to_pending(spool, "bk")
        else:
            assert new.state == "dead"
            assert read_job_file(spool.path, "dead", "bk.json")["last_error"] == "exit code 3"
    assert delays == [10, 100]
    assert state_counts(spool.path)["dead"] == 1 and sum(state_counts(spool.path).values()) == 1


def test_backoff_is_capped_by_backoff_max(spool):
    spool.enqueue("false", id="cap", max_retries=5)
    spool.moves.finish(claim(spool, "cap"), 1, backoff=(10, 50, 0))
    to_pending(spool, "cap")
    t0 = time.time()
    new = spool.moves.finish(claim(spool, "cap"), 1, backoff=(10, 50, 0))
    t1 = time.time()
    assert t0 + 50 - 0.002 <= iso_ts(new.record["run_at"]) <= t1 + 50 + 0.002


def test_backoff_jitter_stays_within_its_share(spool):
    got = []
    for i in range(20):
        spool.enqueue("false", id=f"j{i}", max_retries=3)
        held = claim(spool, f"j{i}")
        t0 = time.time()
        new = spool.moves.finish(held, 1, backoff=(10, 3600, 0.5))
        t1 = time.time()
        run_at = iso_ts(new.record["run_at"])
        assert t0 + 10 - 0.002 <= run_at <= t1 + 15 + 0.002
        got.append(run_at - t0)
    assert max(got) - min(got) > 0.01, "jitter adds a random share"


def test_finish_uses_config_backoff_when_none_given(spool):
    spool.set_config("backoff-base", "7")
    spool.enqueue("false", id="cfg", max_retries=1)
    t0 = time.time()
    new = spool.moves.finish(claim(spool, "cfg"), 1)
    assert t0 + 7 - 0.002 <= iso_ts(new.record["run_at"]) <= time.time() + 7 + 0.002


def test_finish_with_error_and_max_retries_zero(spool):
    spool.enqueue("sleep 9", id="to", max_retries=0)
    new = spool.moves.finish(claim(spool, "to"), None, "timed out after 5s", backoff=NO_BACKOFF)
    assert new.state == "dead"
    rec = spool.get("to")
    assert rec["state"] == "dead" and rec["exit_code"] is None and rec["last_error"] == "timed out after 5s"
    assert rec["attempts"] == 1


def test_exit_zero_with_an_error_is_a_failure(spool):
    spool.enqueue("true", id="z", max_retries=1)
    new = spool.moves.finish(claim(spool, "z"), 0, "killed by signal 9 (SIGKILL)", backoff=NO_BACKOFF)
    assert new.state == "failed"


def test_promote_moves_a_failed_job_back_to_pending(spool):
    spool.enqueue("false", id="p1", priority=4, max_retries=3)
    failed = spool.moves.finish(claim(spool, "p1"), 1, backoff=(10, 3600, 0))
    run_at = iso_ts(failed.record["run_at"])
    new = spool.moves.promote(failed.name)
    assert new.state == "pending"
    assert job_files(spool.path, "failed") == []
    prio, due, _, job_id = names.parse_pending(new.name)
    assert (prio, job_id) == (4, "p1")
    assert due == pytest.approx(run_at, abs=0.002)  # still not due before its retry time
    rec = read_job_file(spool.path, "pending", new.name)
    assert rec["state"] == "pending" and rec["attempts"] == 1 and rec["last_error"] == "exit code 1"
    with pytest.raises(LostRace):
        spool.moves.promote(failed.name)


def test_requeue_does_not_count_the_attempt(spool):
    spool.enqueue("sleep 9", id="rq")
    held = claim(spool, "rq")
    new = spool.moves.requeue(held)
    assert new.state == "pending"
    assert spool.get("rq")["attempts"] == 0


# ---------------------------------------------------------------- take-back and fencing

def test_take_back_of_a_dead_owner_counts_a_failed_attempt(spool):
    spool.enqueue("sleep 60", id="tb", max_retries=1)
    held = claim(spool, "tb", "hostX", 777)
    name = held.name
    held.close()  # the owner dies: its lock is released
    new = spool.moves.take_back(name)
    assert new.state == "failed"
    rec = spool.get("tb")
    assert rec["state"] == "failed"
    assert rec["last_error"] == "worker lost (host hostX, pid 777)"
    assert rec["exit_code"] is None and rec["attempts"] == 1
    assert job_files(spool.path, "processing") == []
    # and out of retries: dead
    to_pending(spool, "tb")
    held = claim(spool, "tb", "hostY", 778)
    name = held.name
    held.close()
    assert spool.moves.take_back(name).state == "dead"
    rec = spool.get("tb")
    assert rec["state"] == "dead" and rec["last_error"] == "worker lost (host hostY, pid 778)"
    assert rec["attempts"] == 2


def test_take_back_of_a_held_file_is_busy(spool):
    spool.enqueue("sleep 60", id="busy")
    held = claim(spool, "busy")
    try:
        before = tree_snapshot(spool.path)
        with pytest.raises(Busy):
            spool.moves.take_back(held.name)
        assert spool.moves.take_back_lost() == []
        assert tree_snapshot(spool.path) == before
    finally:
        held.close()


def test_take_back_lost_takes_only_free_ones(spool):
    spool.enqueue("sleep 60", id="alive")
    spool.enqueue("sleep 60", id="lost", max_retries=0)
    alive = claim(spool, "alive", "h", 1)
    lost = claim(spool, "lost", "h", 2)
    lost.close()
    taken = spool.moves.take_back_lost()
    assert [r["id"] for r in taken] == ["lost"]
    assert find_job(spool, "lost")[0] == "dead"
    assert find_job(spool, "alive")[0] == "processing"
    alive.close()


@pytest.mark.parametrize("log", ["empty", "earlier-attempt", "removed", "a-directory", "a-fifo", "a-symlink",
                                 "other-host"])
def test_take_back_counts_an_attempt_unless_its_log_shows_it_never_started(spool, log):
    """Rule 5: the job's log holds no header of this attempt (only one written before the
    claim, by the same worker): the command never started, the job goes back to pending/.
    A log removed by hand, anything but a regular file there, and the log of a worker of
    another host (its header reaches a shared filesystem later than its claim) prove
    nothing: the attempt counts."""
    host = "elsewhere" if log == "other-host" else names.hostname()
    spool.enqueue("true", id="early", max_retries=0)
    name = find_job(spool, "early")[1]
    path = spool.layout.log("early")
    if log == "a-directory":
        os.mkdir(path)
    elif log == "a-fifo":
        os.mkfifo(path)  # a reader that opened it blocking would wait for ever
    elif log == "a-symlink":
        os.symlink("/dev/zero", path)
    elif log != "removed":
        with open(path, "wb") as fh:
            if log == "earlier-attempt":
                fh.write(f"=== queuectl attempt 1/1 of job early · worker {host}:31337 · "
                         f"{timeutil.iso(time.time() - 60)} ===\n$ true\n".encode())
    held = spool.moves.claim(name, host, 31337)
    held.close()
    new = spool.moves.take_back(held.name)
    got = spool.get("early")
    if log in ("removed", "a-directory", "a-fifo", "a-symlink", "other-host"):
        assert new.state == "dead" and got["attempts"] == 1 and got["last_error"].startswith("worker lost")
    else:
        assert new.state == "pending"
        assert got["state"] == "pending" and got["attempts"] == 0 and got["started_at"] is None


def test_a_cancel_request_that_came_too_late_is_never_heeded_by_a_later_attempt(spool):
    """A request names the attempt it kills: left behind by a job that ended first, it is
    not a reason to kill the job's next run (after `retry`, attempts start again at 1)."""
    spool.enqueue("true", id="c")
    first = claim(spool, "c", "hostA", 1001)
    registry.request_cancel(spool.layout, "hostA_1001", "c", first.name)
    assert registry.cancel_requested(spool.layout, "hostA_1001", "c", first.name)
    spool.moves.finish(first, 0)  # it ended before the worker looked: the request stays
    request = os.path.join(spool.layout.workers, "hostA_1001.cancel.c")
    assert os.path.lexists(request)
    spool.retry("c")
    second = claim(spool, "c", "hostA", 1001)  # the same worker, attempt 1 again
    try:
        assert not registry.cancel_requested(spool.layout, "hostA_1001", "c", second.name)
        assert not os.path.lexists(request)  # too late for any attempt: removed
    finally:
        second.close()
    with open(request, "w") as fh:  # 0.1.0's request names no attempt: whichever runs
        fh.write("cancel")
    assert registry.cancel_requested(spool.layout, "hostA_1001", "c", "any")


def test_take_back_of_a_claim_interrupted_between_its_renames_is_uncounted(spool):
    """Rule 5: a processing/ file still holding the pending record goes back to pending/."""
    rec = spool.enqueue("true", id="half")
    name = find_job(spool, "half")[1]
    pname = names.processing_name("half", "hostZ", 31337, 1)
    os.rename(os.path.join(spool.path, "pending", name), os.path.join(spool.path, "processing", pname))
    new = spool.moves.take_back(pname)
    assert new.state == "pending"
    got = spool.get("half")
    assert got["state"] == "pending" and got["attempts"] == 0 and got["command"] == rec["command"]


def test_fencing_a_late_finish_after_take_back_and_reclaim(spool):
    spool.enqueue("sleep 60", id="fence", max_retries=3)
    first = claim(spool, "fence", "hostA", 1001)
    first.close()                                   # worker 1 'dies' (or loses its lock)
    spool.moves.take_back(first.name)                     # another worker takes it back
    to_pending(spool, "fence")
    second = claim(spool, "fence", "hostB", 2002)   # and a second worker runs it
    try:
        before = tree_snapshot(spool.path)
        newer = spool.get("fence")
        assert newer["state"] == "processing" and newer["attempts"] == 2
        for code, error in ((0, None), (1, None), (None, "timed out after 5s")):
            with pytest.raises(LostRace):
                spool.moves.finish(first, code, error, backoff=NO_BACKOFF)
            assert spool.get("fence") == newer
            assert tree_snapshot(spool.path) == before
        with pytest.raises(LostRace):
            spool.moves.requeue(first)
        assert tree_snapshot(spool.path) == before
        assert not [n for n in os.listdir(os.path.join(spool.path, "tmp")) if n.startswith("mv-")]
        # the rightful owner still finishes normally
        assert spool.moves.finish(second, 0).state == "completed"
    finally:
        second.close()


def test_fencing_a_late_finish_after_take_back_to_failed(spool):
    spool.enqueue("sleep 60", id="fence2", max_retries=3)
    first = claim(spool, "fence2")
    first.close()
    spool.moves.take_back(first.name)
    before = tree_snapshot(spool.path)
    with pytest.raises(LostRace):
        spool.moves.finish(first, 0)
    assert tree_snapshot(spool.path) == before
    assert spool.get("fence2")["last_error"].startswith("worker lost")


@pytest.mark.parametrize("final", ["completed", "dead"])
def test_fencing_a_late_finish_after_the_job_already_ended(spool, final):
    """Worker 1 loses its job; worker 2 runs it to completed/ (or dead/). Worker 1 then finishes
    with the same outcome: the target name exists, but this is still just a lost race."""
    spool.enqueue("true", id="late", max_retries=1)
    first = claim(spool, "late", "hostA", 1001)
    first.close()
    spool.moves.take_back(first.name)
    to_pending(spool, "late")
    second = claim(spool, "late", "hostB", 2002)
    if final == "completed":
        spool.moves.finish(second, 0)
    else:
        spool.moves.finish(second, 1, backoff=NO_BACKOFF)
    first.record["max_retries"] = 0  # worker 1's copy: out of retries too, so it also targets dead/
    before = tree_snapshot(spool.path)
    with pytest.raises(LostRace):
        spool.moves.finish(first, 0 if final == "completed" else 1, backoff=NO_BACKOFF)
    assert tree_snapshot(spool.path) == before


@pytest.mark.parametrize("how", ["completed", "dead", "cancelled"])
def test_a_finished_job_has_no_next_attempt_time(spool, how):
    spool.enqueue("true", id="fin", run_at="+0s", max_retries=0 if how == "dead" else 2)
    if how == "cancelled":
        spool.moves.finish(claim(spool, "fin"), 1, backoff=(10, 3600, 0))
        assert spool.get("fin")["run_at"] is not None  # the retry time, while failed
        spool.cancel("fin")
    else:
        spool.moves.finish(claim(spool, "fin"), 0 if how == "completed" else 1, backoff=NO_BACKOFF)
    rec = spool.get("fin")
    assert rec["state"] == ("completed" if how == "completed" else "dead")
    assert rec["run_at"] is None


# ---------------------------------------------------------------- user operations

@pytest.mark.parametrize("state", ["pending", "failed"])
def test_cancel_pending_or_failed_goes_to_dead(spool, state):
    make_job_in_state(spool, "cx", state)
    rec = spool.cancel("cx")
    assert rec["state"] == "dead" and rec["last_error"] == "cancelled"
    assert spool.get("cx")["state"] == "dead"
    assert job_files(spool.path, "dead") == ["cx.json"]
    assert job_files(spool.path, state) == []


def test_cancel_of_a_running_job_is_wrong_state(spool):
    held = make_job_in_state(spool, "run", "processing")
    try:
        before = tree_snapshot(spool.path)
        with pytest.raises(WrongState) as info:
            spool.cancel("run")
        assert "processing" in str(info.value)
        assert tree_snapshot(spool.path) == before
    finally:
        held.close()


@pytest.mark.parametrize("state", ["completed", "dead"])
def test_cancel_of_a_final_job_is_wrong_state(spool, state):
    make_job_in_state(spool, "fin", state)
    with pytest.raises(WrongState):
        spool.cancel("fin")
    assert find_job(spool, "fin")[0] == state


def test_cancel_unknown_job(spool):
    with pytest.raises(JobNotFound):
        spool.cancel("nope")


def test_retry_dead_goes_back_to_pending_with_attempts_zero(spool):
    make_job_in_state(spool, "rd", "dead")
    assert spool.get("rd")["attempts"] == 1
    t0 = time.time()
    rec = spool.retry_dead("rd")
    assert rec["state"] == "pending" and rec["attempts"] == 0
    assert t0 - 0.002 <= iso_ts(rec["run_at"]) <= time.time() + 0.002
    assert find_job(spool, "rd")[0] == "pending"
    assert job_files(spool.path, "dead") == []
    assert names.pending_due(find_job(spool, "rd")[1]) <= time.time()
    # and it can run again
    assert spool.moves.finish(claim(spool, "rd"), 0).state == "completed"


def test_retry_dead_of_a_job_that_is_not_dead(spool):
    spool.enqueue("true", id="np")
    with pytest.raises(WrongState):
        spool.retry_dead("np")
    with pytest.raises(JobNotFound):
        spool.retry_dead("nope")


def _finish_with_time(spool, job_id, finished_at):
    """A completed job whose finished_at is `finished_at` (rewritten by hand, like an old job)."""
    spool.enqueue(f"echo {job_id}", id=job_id)
    spool.moves.finish(claim(spool, job_id), 0)
    path = os.path.join(spool.path, "completed", f"{job_id}.json")
    rec = read_job_file(spool.path, "completed", f"{job_id}.json")
    rec["finished_at"] = rec["updated_at"] = timeutil.iso(finished_at)
    with open(path, "w") as fh:
        json.dump(rec, fh)
    with open(spool.log_path(job_id), "w") as fh:
        fh.write("output\n")


def test_purge_deletes_only_old_jobs_with_their_logs_and_frees_the_id(spool):
    now = time.time()
    _finish_with_time(spool, "old", now - 8 * 86400)
    _finish_with_time(spool, "new", now - 60)
    spool.enqueue("true", id="waiting")
    assert spool.purge("completed", older_than=7 * 86400) == 1
    assert job_files(spool.path, "completed") == ["new.json"]
    assert not os.path.exists(spool.log_path("old"))
    assert os.path.exists(spool.log_path("new"))
    assert not os.path.exists(os.path.join(spool.path, "ids", "old"))
    with pytest.raises(JobNotFound):
        spool.get("old")
    spool.enqueue("true", id="old")  # the id is free again
    assert find_job(spool, "old")[0] == "pending"
    assert spool.purge("dead") == 0
    assert spool.purge("completed") == 1
    assert job_files(spool.path, "completed") == []
    assert find_job(spool, "waiting")[0] == "pending"


def test_purge_dead_and_a_fixed_now(spool):
    make_job_in_state(spool, "d1", "dead")
    assert spool.purge("dead", older_than=3600) == 0
    assert spool.purge("dead", older_than=3600, now=time.time() + 7200) == 1
    assert job_files(spool.path, "dead") == []


def test_purge_skips_a_locked_file(spool):
    make_job_in_state(spool, "lk", "completed")
    fd = fsutil.open_nofollow(os.path.join(spool.path, "ids", "lk"))
    locks.try_lock(fd)  # someone moves the job
    try:
        assert spool.purge("completed") == 0
    finally:
        os.close(fd)
    assert spool.purge("completed") == 1


@pytest.mark.parametrize("state", ["pending", "processing", "failed", "bogus"])
def test_purge_only_final_states(spool, state):
    with pytest.raises(FieldError):
        spool.purge(state)


# ---------------------------------------------------------------- reads

def test_counts_including_scheduled(spool):
    assert spool.counts() == {"incoming": 0, "blocked": 0, "pending": 0, "scheduled": 0, "processing": 0,
                              "failed": 0, "completed": 0, "dead": 0}
    spool.enqueue("true", id="now1")
    spool.enqueue("true", id="later", run_at="+1h")
    spool.enqueue("true", id="later2", run_at="+1d", priority=0)
    spool.enqueue("true", id="run")
    spool.enqueue("false", id="fail", max_retries=2)
    spool.enqueue("true", id="done")
    spool.enqueue("false", id="dead", max_retries=0)
    spool.enqueue("true", id="waits", after=["later"])
    held = claim(spool, "run")
    spool.moves.finish(claim(spool, "fail"), 1, backoff=(10, 3600, 0))
    spool.moves.finish(claim(spool, "done"), 0)
    spool.moves.finish(claim(spool, "dead"), 1)
    with open(os.path.join(spool.path, "incoming", "drop.json"), "w") as fh:
        fh.write('{"command": "true"}')
    for ignored in (".hidden.json", "notes.txt"):
        open(os.path.join(spool.path, "incoming", ignored), "w").close()
    try:
        assert spool.counts() == {"incoming": 1, "blocked": 1, "pending": 3, "scheduled": 2, "processing": 1,
                                  "failed": 1, "completed": 1, "dead": 1}
        assert spool.counts(now=time.time() + 7200)["scheduled"] == 1
    finally:
        held.close()


def test_list_of_pending_is_in_claim_order(spool):
    spool.enqueue("true", id="p10-a")
    spool.enqueue("true", id="p5-later", priority=5, run_at="+1h")
    spool.enqueue("true", id="p5-a", priority=5)
    spool.enqueue("true", id="p10-b")
    spool.enqueue("true", id="p0", priority=0, run_at="+2h")
    spool.enqueue("true", id="p5-b", priority=5)
    spool.enqueue("true", id="p10-early", run_at=time.time() - 3600)
    expected = ["p0", "p5-a", "p5-b", "p5-later", "p10-early", "p10-a", "p10-b"]
    assert [r["id"] for r in spool.list("pending")] == expected
    assert [r["id"] for r in spool.list("pending", limit=3)] == expected[:3]
    assert all(r["state"] == "pending" for r in spool.list("pending"))


def test_list_all_states_and_limit(spool):
    spool.enqueue("true", id="a")
    make_job_in_state(spool, "b", "completed")
    make_job_in_state(spool, "c", "dead")
    got = {r["id"]: r["state"] for r in spool.list()}
    assert got == {"a": "pending", "b": "completed", "c": "dead"}
    assert len(spool.list(limit=2)) == 2
    assert spool.list("failed") == []
    with pytest.raises(ValueError):
        spool.list("bogus")


def test_get_unknown_id_raises_job_not_found(spool):
    with pytest.raises(JobNotFound) as info:
        spool.get("missing")
    assert isinstance(info.value, LookupError)
    assert info.value.job_id == "missing" and "missing" in str(info.value)
    assert info.value.exit_code == 1


def test_get_state_comes_from_the_folder(spool):
    for state in STATE_FOLDERS:
        held = make_job_in_state(spool, f"s-{state}", state)
        assert spool.get(f"s-{state}")["state"] == state
        if held:
            held.close()


def test_get_does_not_confuse_ids_that_contain_each_other(spool):
    spool.enqueue("echo 1", id="a_b")
    spool.enqueue("echo 2", id="a")
    spool.enqueue("echo 3", id="b")
    assert spool.get("a")["command"] == "echo 2"
    assert spool.get("a_b")["command"] == "echo 1"
    held = claim(spool, "a_b", "h", 5)
    try:
        assert spool.get("a")["state"] == "pending"
        assert spool.get("a_b")["state"] == "processing"
    finally:
        held.close()


def test_get_never_reads_outside_the_spool(spool, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"id": "outside", "command": "secret"}))
    with pytest.raises((JobNotFound, InvalidInput)):
        spool.get("../../outside")


def test_status(spool):
    assert spool.status()["workers"] == []
    spool.enqueue("true", id="first")
    spool.enqueue("true", id="second", priority=0)
    spool.enqueue("true", id="third")
    layout = spool.layout
    reg_fd = registry.register(layout, "hostW", 4321)
    held = claim(spool, "third", "hostW", 4321)
    try:
        info = spool.status()
        assert info["spool"] == spool.path
        assert info["counts"] == spool.counts()
        assert info["counts"]["processing"] == 1
        assert len(info["workers"]) == 1
        w = info["workers"][0]
        assert (w["host"], w["pid"], w["job"]) == ("hostW", 4321, "third")
        assert w["since"] == held.record["started_at"]
        assert info["oldest_waiting"]["id"] == "first"
    finally:
        held.close()
        registry.unregister(layout, "hostW", 4321, reg_fd)
    assert spool.status()["workers"] == []


# ---------------------------------------------------------------- crash leftovers

def test_recovery_finishes_a_move_interrupted_between_its_two_renames(spool):
    """Rule 3: a crash after rename (a) leaves the job in its new folder with the old record and
    the new record in tmp/mv-*; the state is the folder's, and recovery puts the record in place."""
    spool.enqueue("true", id="half-done")
    held = claim(spool, "half-done", "h", 9)
    new = dict(held.record, state="completed", exit_code=0, finished_at=timeutil.iso(time.time()))
    tmp = os.path.join(spool.path, "tmp", "mv-half-done-9-abcdef.json")
    with open(tmp, "w") as fh:
        json.dump(new, fh)
    os.rename(os.path.join(spool.path, "processing", held.name),
              os.path.join(spool.path, "completed", "half-done.json"))   # step (a) only
    held.close()                                                         # and the mover dies
    assert spool.get("half-done")["state"] == "completed"                # the folder says so
    assert read_job_file(spool.path, "completed", "half-done.json")["state"] == "pending"  # as claimed
    os.utime(tmp, (time.time() - 60,) * 2)
    assert len(fsck.recover(spool)) == 1
    assert read_job_file(spool.path, "completed", "half-done.json") == new
    assert os.listdir(os.path.join(spool.path, "tmp")) == []
    assert sum(state_counts(spool.path).values()) == 1


def test_recovery_drops_an_obsolete_record_and_keeps_fresh_ones(spool):
    spool.enqueue("true", id="moved-on")
    rec = spool.get("moved-on")
    stale = os.path.join(spool.path, "tmp", "mv-moved-on-1-aaaaaa.json")
    with open(stale, "w") as fh:
        json.dump(dict(rec, state="failed"), fh)  # names a folder the job is not in
    os.utime(stale, (time.time() - 60,) * 2)
    fresh = os.path.join(spool.path, "tmp", "mv-moved-on-2-bbbbbb.json")
    with open(fresh, "w") as fh:
        json.dump(dict(rec, state="failed"), fh)  # a mover may be between its renames right now
    before = read_job_file(spool.path, "pending", find_job(spool, "moved-on")[1])
    assert len(fsck.recover(spool)) == 1
    assert not os.path.exists(stale) and os.path.exists(fresh)
    assert read_job_file(spool.path, "pending", find_job(spool, "moved-on")[1]) == before


def test_counting_job_names_agrees_with_the_plain_filter():
    """count_jobs counts names with string scans instead of a step per name; it must count
    exactly what the plain filter keeps (ends in .json, no leading dot)."""
    import random
    from queuectl.fsutil import count_job_names
    parts = [".", "json", ".json", "a", "x.", "\n", ".j", "son", "_"]
    rng = random.Random(7)
    for _ in range(2000):
        entries = ["".join(rng.choice(parts) for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(0, 8))]
        entries = [e for e in entries if e not in (".", "..")]
        assert count_job_names(entries) == sum(1 for n in entries if n.endswith(".json") and not n.startswith(".")), entries


def test_counting_job_files_agrees_with_the_plain_filter(tmp_path, monkeypatch):
    """count_job_files counts a folder's job names from raw getdents64 records (Linux x86_64,
    aarch64); on random folders of printable names (dots, hidden names, .json.tmp, names up to
    255 bytes, UTF-8, more than one 1 MiB buffer) it must count what the plain filter keeps,
    and so must its listing fallback."""
    import random
    rng = random.Random(11)
    parts = [".", "json", ".json", ".json.tmp", "a", "x.", ".j", "son", "_", " ", "é", "-", "~", "\x7f"]

    def plain(folder):
        return sum(1 for n in fsutil.listdir(folder) if n.endswith(".json") and not n.startswith("."))

    def fallback(folder):
        monkeypatch.setattr(fsutil, "_GETDENTS64", {})
        try:
            return fsutil.count_job_files(folder)
        finally:
            monkeypatch.undo()

    number = fsutil._GETDENTS64.get(os.uname().machine)
    folders = [str(tmp_path / "missing"), str(tmp_path / "empty")]
    os.mkdir(folders[1])
    for case in range(40):
        folder = tmp_path / f"f{case}"
        folder.mkdir()
        many = case % 10 == 9  # several thousand long names: the records fill more than one buffer
        for _ in range(rng.randint(5000, 8000) if many else rng.randint(1, 60)):
            name = "".join(rng.choice(parts) for _ in range(rng.randint(1, 6)))
            if many or rng.random() < 0.1:
                low = 200 - len(name.encode()) if many else 0
                name = name + "x" * rng.randint(max(0, low), 250 - len(name.encode())) + rng.choice(["", ".json"])
            if name in (".", "..") or len(name.encode()) > 255 or "/" in name:
                continue
            path = folder / name
            if not os.path.lexists(path):
                kind = rng.random()
                if kind < 0.05:
                    path.mkdir()  # counted by name, whatever the file type, like the filter
                elif kind < 0.1:
                    path.symlink_to("nowhere")
                else:
                    path.touch()
        folders.append(str(folder))
    names_seen = [n for folder in folders for n in fsutil.listdir(folder)]
    assert sum(1 for n in names_seen if n.startswith(".") and n.endswith(".json")) > 20  # hidden ones to subtract
    assert sum(1 for n in names_seen if n.endswith(".json.tmp")) > 20
    assert max(sum((20 + len(os.fsencode(n)) + 7) // 8 * 8 for n in fsutil.listdir(f)) for f in folders) > 1 << 20
    for folder in folders:
        expected = plain(folder)
        assert fsutil.count_job_files(folder) == expected, folder
        assert fallback(folder) == expected, folder
        if number is not None and os.path.isdir(folder):
            assert fsutil._count_dents(folder, number) == expected, folder  # the fast path itself
    if number is None:
        pytest.skip("no getdents64 fast path on this platform: only the fallback was checked")


def test_find_looks_again_for_a_job_caught_between_two_folders(spool, monkeypatch):
    """A job claimed on another host while pending/ and processing/ are listed one after the
    other is in neither listing: a "no such job" said to a user looks again first."""
    spool.enqueue("true", id="j")
    real, looks = spool._find_once, []

    def between_folders(job_id):
        looks.append(job_id)
        return None if len(looks) == 1 else real(job_id)
    monkeypatch.setattr(spool, "_find_once", between_folders)
    assert spool.find("j") is None  # one look, as the claim loop and id reservation want
    looks.clear()
    assert spool.find("j", patient=True)[0] == "pending"
    looks.clear()
    result = spool.wait(["j"], timeout=0.1)  # not "no such job"
    assert result.unfinished == ["j"]
    started = time.monotonic()
    assert spool.find("nope", patient=True) is None  # no marker: no job, no second look
    assert time.monotonic() - started < 0.05


def test_cancel_kill_waits_out_a_dead_record_that_still_reads_as_the_old_one(spool):
    """On a network filesystem the worker's new record may land in dead/ID.json a while after
    the file itself (the move's two renames, a reader's cache): `cancel --kill` reads again
    instead of calling the killed job one that ended by itself."""
    spool.enqueue("sleep 60", id="slowfs")
    held = claim(spool, "slowfs", "hostX", 777)
    processing = os.path.join(spool.layout.processing, held.name)
    dead = os.path.join(spool.layout.dead, "slowfs.json")

    def worker_on_a_slow_filesystem():
        time.sleep(0.2)
        os.rename(processing, dead)  # the file has moved; its content is still the running attempt's
        time.sleep(0.4)
        record = dict(held.record, state="dead", last_error="cancelled", exit_code=None)
        with open(dead + ".new", "w") as fh:
            json.dump(record, fh)
        os.rename(dead + ".new", dead)
    thread = threading.Thread(target=worker_on_a_slow_filesystem)
    thread.start()
    try:
        record = spool._kill_running("slowfs", held.name, timeout=10)
    finally:
        thread.join(5)
        held.close()
    assert record["last_error"] == "cancelled"


def test_cancel_kill_of_a_job_that_ended_by_itself_says_so(spool):
    spool.enqueue("true", id="ended")
    held = claim(spool, "ended", "hostX", 777)
    os.rename(os.path.join(spool.layout.processing, held.name), os.path.join(spool.layout.completed, "ended.json"))
    held.close()
    with pytest.raises(WrongState, match="ended before it could be killed"):
        spool._kill_running("ended", held.name, timeout=5)


def test_a_record_that_reads_empty_for_a_moment_is_read_again(spool):
    """Another host may read a record just renamed into place before its bytes (MooseFS):
    `get` (and `wait`, `show`) reads it again instead of calling it damaged."""
    spool.enqueue("true", id="late")
    held = claim(spool, "late", "hostX", 777)
    record = spool.moves.finish(held, 0).record
    path = os.path.join(spool.layout.completed, "late.json")
    open(path, "w").close()  # what the other host sees for a moment

    def bytes_arrive():
        time.sleep(0.3)
        with open(path + ".new", "w") as fh:
            json.dump(record, fh)
        os.rename(path + ".new", path)
    thread = threading.Thread(target=bytes_arrive)
    thread.start()
    try:
        assert spool.get("late")["state"] == "completed"
    finally:
        thread.join(5)


def test_a_record_that_stays_damaged_is_reported_after_a_moment(spool):
    spool.enqueue("true", id="broken")
    held = claim(spool, "broken", "hostX", 777)
    spool.moves.finish(held, 0)
    with open(os.path.join(spool.layout.completed, "broken.json"), "w") as fh:
        fh.write("{not json")
    started = time.monotonic()
    with pytest.raises(SpoolError, match="unreadable"):
        spool.get("broken")
    assert 1.0 < time.monotonic() - started < 10


@pytest.mark.parametrize("size", [0, 1, 461, 65535, 65536, 65537, 200000])
@pytest.mark.parametrize("limit", [None, 10, 70000])
def test_reading_with_the_size_known_reads_the_same_bytes(tmp_path, size, limit):
    """A record's read given its fstat size (one read when it is exact) returns what the
    plain read returns, for sizes around the chunk size and with or without a limit."""
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    reads = []
    for known in (None, size):
        fd = os.open(path, os.O_RDONLY)
        try:
            reads.append(fsutil.read_fd(fd, limit=limit, from_start=False, size=known))
        finally:
            os.close(fd)
    assert reads[0] == reads[1] and len(reads[0]) == (size if limit is None else min(size, limit + 1))


def test_a_folder_made_by_another_host_at_the_same_instant_is_not_an_error(tmp_path, monkeypatch):
    """GlusterFS may answer the loser of two hosts' mkdir of one folder with ESTALE, not
    EEXIST: the spool is made all the same, once the folder is there."""
    import errno
    from queuectl.paths import Layout
    real_mkdir, raced = os.mkdir, []

    def mkdir(path, mode=0o777):
        if path.endswith("pending") and not raced:
            raced.append(path)
            real_mkdir(path, mode)  # the other host's
            raise OSError(errno.ESTALE, "Stale file handle")
        return real_mkdir(path, mode)
    monkeypatch.setattr(os, "mkdir", mkdir)
    layout = Layout(str(tmp_path / "spool"))
    layout.create()
    assert raced and layout.exists()


def test_a_stale_handle_that_lasts_is_reported(tmp_path, monkeypatch):
    import errno
    from queuectl.paths import Layout
    real_mkdir = os.mkdir

    def mkdir(path, mode=0o777):
        if path.endswith("pending"):
            raise OSError(errno.ESTALE, "Stale file handle")
        return real_mkdir(path, mode)
    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(SpoolError, match="Stale file handle"):
        Layout(str(tmp_path / "spool")).create()
