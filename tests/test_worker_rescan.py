"""The worker's periodic rescan and pending/: on a local disk with inotify the events name
every file that enters or leaves pending/, so a rescan that sees the folder's stat change
does not list it again (a backlog of 100,000 scheduled jobs made each listing cost a drain
about 0.1 s); where events may miss changes (a shared spool, the polling fallback) it does.

The worker runs in a thread of this process; its jobs' commands are processes."""
import threading
import time
import types

import pytest

from helpers import wait_until
from queuectl import housekeeping, worker as workermod
from queuectl.pending import PendingIndex

pytestmark = pytest.mark.process


def bare_worker(spool, mechanism, shared):
    w = workermod.Worker(spool)
    w.waker = types.SimpleNamespace(mechanism=mechanism)
    w.shared = shared
    return w


@pytest.mark.parametrize("folder", ["pending", "failed"])
def test_local_inotify_relists_at_start_then_only_as_a_safety_net(spool, folder):
    w = bare_worker(spool, "inotify", shared=False)
    assert w.housekeeping.relist_due(folder, startup=True)
    assert not w.housekeeping.relist_due(folder, startup=False)  # the events since told every name
    assert not w.housekeeping.relist_due(folder, startup=False)
    w.housekeeping.next_relist[folder] = time.monotonic() - 0.001  # EVENTS_TRUSTED_RELIST has passed
    assert w.housekeeping.relist_due(folder, startup=False)
    assert not w.housekeeping.relist_due(folder, startup=False)


@pytest.mark.parametrize("mechanism, shared", [("inotify", True), ("polling", False), ("none", False)])
def test_relists_on_every_change_where_events_may_miss_some(spool, mechanism, shared):
    w = bare_worker(spool, mechanism, shared)
    assert all(w.housekeeping.relist_due(folder, startup=False) for _ in range(3) for folder in ("pending", "failed"))


def test_a_busy_local_worker_does_not_relist_pending_on_each_rescan(spool, monkeypatch):
    """Jobs keep arriving for 1.5 s while rescans run every 0.1 s: pending/ changes between
    every two of them, yet the folder is listed only at the start (and once at the end of
    nothing), and every job runs."""
    monkeypatch.setattr(housekeeping, "RESCAN_OVERRIDE", "0.1")
    passes = []
    real_refill = PendingIndex.refill

    def counting_refill(self, now):
        passes.append(now)
        return real_refill(self, now)
    monkeypatch.setattr(PendingIndex, "refill", counting_refill)
    w = workermod.Worker(spool)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: w.waker is not None and passes, 10, what="the worker's first pass")
        if w.waker.mechanism != "inotify":
            pytest.skip(f"inotify is not available here (wake-ups: {w.waker.mechanism})")
        ids = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            ids.append(spool.enqueue("true")["id"])
            time.sleep(0.05)
        wait_until(lambda: spool.counts()["completed"] == len(ids), 30, what="every job run")
    finally:
        w.stopping = "graceful"
        w.waker.poke()
        thread.join(15)
    assert not thread.is_alive()
    assert len(ids) >= 10
    assert len(passes) <= 2, f"pending/ listed {len(passes)} times in about 15 rescans"


def put_retry(spool, job_id, retry_at):
    """A retry waiting in failed/ as a worker's fail move leaves it."""
    import json
    import os
    from queuectl import names, timeutil
    spool.enqueue("true", id=job_id)
    pending = [n for n in os.listdir(spool.layout.pending) if n.endswith(f"_{job_id}.json")][0]
    path = os.path.join(spool.layout.pending, pending)
    with open(path) as fh:
        record = json.load(fh)
    record.update(state="failed", attempts=1, last_error="exit code 1", run_at=timeutil.iso(retry_at))
    with open(path, "w") as fh:
        json.dump(record, fh)
    os.rename(path, os.path.join(spool.layout.failed, names.failed_name(retry_at, job_id)))


def test_promotion_finds_the_due_retries_and_the_next_one_without_sorting_them_all(spool):
    import os
    now = time.time()
    put_retry(spool, "due-a", now - 5)
    put_retry(spool, "due-b", now - 1)
    put_retry(spool, "soon", now + 30)
    put_retry(spool, "later", now + 3600)
    open(os.path.join(spool.layout.failed, "1-not-a-retry.json"), "w").close()  # sorts first, never parses
    w = workermod.Worker(spool)
    next_at = w.housekeeping.promote_due()
    assert abs(next_at - (now + 30)) < 0.01
    assert sorted(r["id"] for r in spool.list("pending")) == ["due-a", "due-b"]
    assert sorted(os.listdir(spool.layout.failed)) == sorted(
        ["1-not-a-retry.json"] + [n for n in os.listdir(spool.layout.failed) if n.endswith(("_soon.json", "_later.json"))])


def test_a_name_not_ours_that_sorts_first_among_the_waiting_does_not_hide_the_next_retry(spool):
    import os
    now = time.time()
    put_retry(spool, "soon", now + 30)
    soon = os.listdir(spool.layout.failed)[0]
    junk = soon.replace("_soon.json", "_a bad id!.json")  # the same stamp, sorts first, never parses
    assert junk < soon
    open(os.path.join(spool.layout.failed, junk), "w").close()
    assert abs(workermod.Worker(spool).housekeeping.promote_due() - (now + 30)) < 0.01
    os.unlink(os.path.join(spool.layout.failed, [n for n in os.listdir(spool.layout.failed) if "_soon" in n][0]))
    assert workermod.Worker(spool).housekeeping.promote_due() == float("inf")


def test_a_take_back_that_fails_is_told_and_tried_again_not_fatal(spool, monkeypatch):
    """The rescan runs on the ticks of this worker's own running job: a take-back of another
    worker's job that fails (a full disk, a spool that stops answering) must not end this
    worker, and its job with it. It says so in one line and tries again at the next rescan."""
    import errno
    spool.enqueue("true", id="lost")
    claimed = spool.moves.claim(spool.find("lost")[1], "deadhost", 999999)
    claimed.close()  # its owner is dead: a take-back is due
    said = []
    w = workermod.Worker(spool, emit=said.append)

    def full_disk(name, reason=None):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(spool.moves, "take_back", full_disk)
    w.housekeeping.take_back_lost(relist=True)
    w.housekeeping.take_back_lost(relist=True)
    told = [line for line in said if "cannot take back processing/" in line and "No space left" in line]
    assert len(told) == 1, "told once, not at every rescan"
    assert spool.find("lost")[0] == "processing"

    def outage(name, reason=None):
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
    monkeypatch.setattr(spool.moves, "take_back", outage)
    w.shared = True
    with pytest.raises(OSError):  # between jobs an outage is the worker's to handle (it waits, rejoins)
        w.housekeeping.take_back_lost(relist=True)
    w.shared = False
    monkeypatch.undo()
    w.housekeeping.take_back_lost(relist=False)
    assert spool.find("lost")[0] != "processing", "tried again, and taken back"
