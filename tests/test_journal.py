"""The finish journal (journal/, queuectl/journal.py): one line per end of an attempt or final
state change, written by Moves.move; never able to fail a move; old hours removed."""
import errno
import os
import stat
import time

import pytest

from helpers import claim_started, wait_until
from queuectl import fsck, journal, metrics, names, timeutil
from queuectl.moves import FINISHING_MOVES
from queuectl.worker import Worker

# the kinds of move that start something or undo a claim: no journal line
NOT_FINISHING = {"promote", "requeue", "unclaim", "adopt", "dlq-retry", "retry", "release"}


def lines(spool):
    """{file name: [fields of each line]} of journal/."""
    folder = os.path.join(spool.path, "journal")
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as fh:
            out[name] = [line.split(" ") for line in fh.read().splitlines()]
    return out


def only_file(spool):
    found = lines(spool)
    assert len(found) == 1, found
    return found.popitem()


def finish_one(spool, command="true", exit_code=0, job_id="j"):
    """Enqueue, claim and record one attempt in process; returns the moved Held."""
    spool.enqueue(command, id=job_id, max_retries=0)
    held = spool.moves.claim(spool.names("pending")[0], "h", 1)
    return spool.moves.finish(held, exit_code, backoff=(1, 0, 0))


def test_every_kind_of_move_is_classified():
    """A new kind of move must say whether it ends an attempt or finishes a job (then it
    belongs in FINISHING_MOVES and writes a journal line)."""
    from test_crash_points import POINTS  # every kind passed to Moves.move, read from the source
    steps = (".staged", ".moved", ".replaced", ".synced")  # the crash points of Moves.move
    kinds = {p[:-len(".staged")] for p in POINTS if p.endswith(".staged") and all(p[:-7] + s in POINTS for s in steps)}
    assert kinds == FINISHING_MOVES | NOT_FINISHING, kinds ^ (FINISHING_MOVES | NOT_FINISHING)
    assert not FINISHING_MOVES & NOT_FINISHING


@pytest.mark.process
def test_a_drain_writes_one_line_per_finish(spool, monkeypatch):
    """A worker drains: a success, a failure retried once then dead, and a cancelled waiting
    job; each end of an attempt and each final move is one line of this process's file of
    this hour, in time order; promotions and claims write none."""
    monkeypatch.setenv("QUEUECTL_RESCAN", "0.1")
    spool.set_config("backoff-max", 0.05)  # the retry is due 0.05 s after the failure
    spool.enqueue("true", id="ok")
    spool.enqueue("sleep 0.05; exit 3", id="bad", max_retries=1)
    spool.enqueue("true", id="never", run_at="+1h")
    before = time.time()
    spool.cancel("never")
    assert Worker(spool, burst=True).run() == 0  # a burst leaves a retry that is not due yet
    retry_at = timeutil.parse_iso(spool.get("bad")["run_at"])
    wait_until(lambda: time.time() > retry_at, 5, what="the retry to be due")
    assert Worker(spool, burst=True).run() == 0
    after = time.time()
    assert spool.get("ok")["state"] == "completed" and spool.get("bad")["state"] == "dead"

    name, entries = only_file(spool)
    assert name == f"{names.hostname()}_{os.getpid()}-{journal.hour_text(after)}.log" or \
        journal.hour_text(before) != journal.hour_text(after)  # an hour may turn during the test
    folder = os.path.join(spool.path, "journal")
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o600
    assert all(len(fields) == 5 for fields in entries), entries
    times = [float(fields[0]) for fields in entries]
    assert times == sorted(times) and before <= times[0] and times[-1] <= after
    assert sorted((f[2], f[1], f[3]) for f in entries) == [
        ("bad", "dead", "2"), ("bad", "failed", "1"), ("never", "dead", "0"), ("ok", "completed", "1")]
    runtime = {(f[2], f[1]): f[4] for f in entries}
    assert runtime[("never", "dead")] == "-"  # cancelled while waiting: no attempt ended
    assert 0.05 <= float(runtime[("bad", "failed")]) < 5 and 0.05 <= float(runtime[("bad", "dead")]) < 5
    assert 0 <= float(runtime[("ok", "completed")]) < 5

    now = time.time()
    info = metrics.collect(spool, now=now)
    assert info["finished"]["last_minute"] == {"completed": 1, "dead": 2}
    earlier = [f[1] for f in entries if float(f[0]) <= now]  # per_minute: the current minute too
    assert sum(info["per_minute"]["completed"]) == earlier.count("completed")
    assert sum(info["per_minute"]["failed"]) == len(earlier) - earlier.count("completed")
    assert info["retries"]["jobs_retried"] == 1 and info["runtime_seconds"]["count"] == 2  # ok, bad


def test_takeback_and_kill_are_journaled(spool):
    """A lost worker's attempt taken back, and a running job killed by cancel --kill."""
    spool.enqueue("true", id="lost", max_retries=0)
    claim_started(spool, spool.names("pending")[0], "ghosthost", 999999).close()  # its worker is gone
    spool.moves.take_back(spool.names("processing")[0])
    spool.enqueue("true", id="killed")
    held = spool.moves.claim(spool.names("pending")[0], "h", 1)
    spool.moves.finish_cancelled(held)
    _, entries = only_file(spool)
    assert [(f[1], f[2], f[3]) for f in entries] == [("dead", "lost", "1"), ("dead", "killed", "1")]
    assert all(f[4] != "-" for f in entries)


def test_a_worker_holds_lines_and_writes_them_in_one_write(spool, monkeypatch):
    """With `hold` (a busy worker) lines wait until the hold is over or flush(); each hour's
    lines are one write to that hour's file; close() writes what is held."""
    writes = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: (writes.append(data), real_write(fd, data))[1])
    writer = journal.Writer(os.path.join(spool.path, "journal"))
    writer.hold = 60.0
    hour = 3600 * 490_000
    for i, now in enumerate((hour - 2, hour - 1, hour + 1)):  # two lines in one hour, one in the next
        writer.append({"state": "completed", "id": f"j{i}", "attempts": 1}, ended_attempt=False, now=now)
    assert writes == [] and lines(spool) == {}
    writer.flush()
    assert len(writes) == 2 and [len(v) for v in lines(spool).values()] == [2, 1]
    writer.append({"state": "dead", "id": "late", "attempts": 2}, ended_attempt=False, now=hour + 2)
    writer.close()
    assert len(writes) == 3 and [f[2] for f in sorted(lines(spool).items())[-1][1]] == ["j2", "late"]
    writer.hold = 0.0  # not a worker: every line at once
    writer.append({"state": "dead", "id": "now", "attempts": 1}, ended_attempt=False, now=hour + 3)
    assert len(writes) == 4
    writer.close()


def test_held_lines_are_written_once_their_hold_is_over(spool, monkeypatch):
    """flush_due(), which a worker calls on each tick of a running job: a finish is never
    held for the whole next job."""
    clock = [1000.0]
    monkeypatch.setattr(journal.time, "monotonic", lambda: clock[0])
    writer = journal.Writer(os.path.join(spool.path, "journal"))
    writer.hold = 1.0
    writer.append({"state": "completed", "id": "a", "attempts": 1}, ended_attempt=False, now=time.time())
    writer.flush_due()
    assert lines(spool) == {}
    clock[0] += 1.0
    writer.flush_due()
    assert [f[2] for f in only_file(spool)[1]] == ["a"]
    writer.close()


@pytest.mark.parametrize("how", ["journal-is-a-file", "disk-full"])
def test_a_journal_that_cannot_be_written_never_fails_the_move(spool, monkeypatch, how):
    folder = os.path.join(spool.path, "journal")
    if how == "journal-is-a-file":
        os.rmdir(folder)
        with open(folder, "w") as fh:
            fh.write("in the way\n")
    else:
        real_write = os.write

        def full(fd, data):  # only the journal's writes: the staged records must still be written
            if "/journal/" in os.readlink(f"/proc/self/fd/{fd}"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)
        monkeypatch.setattr(journal.os, "write", full)
    moved = finish_one(spool)
    assert moved.state == "completed" and spool.get("j")["state"] == "completed"
    spool.enqueue("true", id="waiting")
    spool.cancel("waiting")  # a durable move too
    assert spool.get("waiting")["state"] == "dead"
    if how == "disk-full":
        assert [len(entries) for entries in lines(spool).values()] == [0]  # opened, nothing written


def test_prune_keeps_this_hour_and_the_two_before(spool):
    folder = os.path.join(spool.path, "journal")
    now = 1_800_000_000.0 + 600  # 08:10
    kept = [f"h_1-{journal.hour_text(now - 3600 * back)}.log" for back in (0, 1, 2)] + \
        ["notes.txt", ".h_1-20200101T00.log", "h_1-2020010100.log"]  # not journal files: left alone
    old = [f"h_1-{journal.hour_text(now - 3600 * back)}.log" for back in (3, 30)] + ["h.x_22-20270115T04.log"]
    for name in kept + old:
        open(os.path.join(folder, name), "w").close()
    assert sorted(journal.prune(folder, now)) == sorted(old)
    assert sorted(os.listdir(folder)) == sorted(kept)
    assert journal.prune(os.path.join(folder, "missing"), now) == []


@pytest.mark.process
def test_a_worker_prunes_old_hours_and_fsck_reports_nothing(spool, monkeypatch):
    monkeypatch.setenv("QUEUECTL_RESCAN", "0.1")
    folder = os.path.join(spool.path, "journal")
    stale = f"otherhost_7-{journal.hour_text(time.time() - 3 * 3600)}.log"
    recent = f"otherhost_7-{journal.hour_text(time.time() - 3600)}.log"
    for name in (stale, recent):
        with open(os.path.join(folder, name), "w") as fh:
            fh.write("1.000 completed x 1 0.100\n")
    spool.enqueue("true", id="one")
    assert fsck.check(spool) == []  # journal files are not problems, old or not
    assert Worker(spool, burst=True).run() == 0
    assert stale not in os.listdir(folder) and recent in os.listdir(folder)
    assert len(os.listdir(folder)) == 2  # and this process's own file
    assert fsck.check(spool) == []
