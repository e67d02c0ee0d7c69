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
from queuectl import worker as workermod
from queuectl.pending import PendingIndex

pytestmark = pytest.mark.process


def bare_worker(spool, mechanism, shared):
    w = workermod.Worker(spool)
    w.waker = types.SimpleNamespace(mechanism=mechanism)
    w.shared = shared
    return w


def test_local_inotify_relists_at_start_then_only_as_a_safety_net(spool):
    w = bare_worker(spool, "inotify", shared=False)
    assert w._relist_due(startup=True)
    assert not w._relist_due(startup=False)  # the events since told every name
    assert not w._relist_due(startup=False)
    w._next_relist = time.monotonic() - 0.001  # EVENTS_TRUSTED_RELIST has passed
    assert w._relist_due(startup=False)
    assert not w._relist_due(startup=False)


@pytest.mark.parametrize("mechanism, shared", [("inotify", True), ("polling", False), ("none", False)])
def test_relists_on_every_change_where_events_may_miss_some(spool, mechanism, shared):
    w = bare_worker(spool, mechanism, shared)
    assert all(w._relist_due(startup=False) for _ in range(3))


def test_a_busy_local_worker_does_not_relist_pending_on_each_rescan(spool, monkeypatch):
    """Jobs keep arriving for 1.5 s while rescans run every 0.1 s: pending/ changes between
    every two of them, yet the folder is listed only at the start (and once at the end of
    nothing), and every job runs."""
    monkeypatch.setattr(workermod, "RESCAN_OVERRIDE", "0.1")
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
