"""Time: run_at is wall-clock, timeouts and sleeps are monotonic. A wall-clock jump
backwards or forwards loses no scheduled job, and overdue jobs run promptly after a jump
forward (within the rescan interval, not at the old wake-up time).

The worker runs in a thread of this process, with queuectl's wall clock (timeutil.now)
replaced by one the test can move; the monotonic clock is left alone. The worker runs its jobs'
commands as processes: these tests are in the `process` loop.
"""
import os
import threading
import time

import pytest

from helpers import job_state, wait_until
from queuectl import housekeeping, timeutil, worker as workermod

pytestmark = pytest.mark.process


class FakeWallClock:
    def __init__(self):
        self.offset = 0.0

    def __call__(self):
        return time.time() + self.offset

    def jump(self, seconds):
        self.offset += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeWallClock()
    monkeypatch.setattr(timeutil, "now", fake)
    monkeypatch.setattr(housekeeping, "RESCAN_OVERRIDE", "0.5")
    return fake


@pytest.fixture
def running_worker(spool):
    w = workermod.Worker(spool)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    wait_until(lambda: w.waker is not None and os.listdir(spool.layout.workers), 10, what="worker registered")
    yield w
    w.stopping = "graceful"
    w.waker.poke()
    thread.join(15)
    assert not thread.is_alive()


def test_forward_jump_runs_overdue_jobs_promptly(spool, clock, running_worker):
    spool.enqueue("true", id="later", run_at="+1h")
    spool.enqueue("true", id="now")
    wait_until(lambda: job_state(spool, "now") == "completed", 10, what="the due job")
    assert job_state(spool, "later") == "pending"  # not due: the worker sleeps till +1h or a rescan
    clock.jump(2 * 3600)
    started = time.monotonic()
    wait_until(lambda: job_state(spool, "later") == "completed", 5, what="the overdue job after the jump")
    assert time.monotonic() - started < 3  # the rescan (0.5 s here), not the old wake-up in an hour
    rec = spool.get("later")
    assert timeutil.parse_iso(rec["started_at"]) >= timeutil.parse_iso(spool.get("later")["created_at"]) + 3600


def test_backward_jump_loses_no_scheduled_job(spool, clock, running_worker):
    spool.enqueue("true", id="soon", run_at="+2s")
    clock.jump(-3600)
    deadline = time.monotonic() + 3.5   # well past the job's original due time
    while time.monotonic() < deadline:
        assert job_state(spool, "soon") == "pending"  # never lost, never run early by the new clock
        time.sleep(0.1)
    assert len(spool.names("pending")) == 1
    clock.jump(3600)  # the clock comes back: the job, now overdue, runs at once
    wait_until(lambda: job_state(spool, "soon") == "completed", 5, what="the job after the clock came back")


def test_backward_jump_keeps_a_retry(spool, clock, running_worker):
    spool.set_config("backoff-base", 1)
    spool.enqueue("exit 1", id="flaky", max_retries=1)
    wait_until(lambda: job_state(spool, "flaky") == "failed", 10, what="first failure")
    clock.jump(-600)
    time.sleep(1.5)
    assert job_state(spool, "flaky") == "failed"  # waiting, not lost, not run twice
    assert spool.get("flaky")["attempts"] == 1
    clock.jump(600)
    wait_until(lambda: job_state(spool, "flaky") == "dead", 5, what="the retry")
    assert spool.get("flaky")["attempts"] == 2


def test_timeout_uses_the_monotonic_clock(spool, clock, running_worker):
    """A wall-clock jump during an attempt neither kills it early nor lets it run over."""
    spool.enqueue("sleep 0.6", id="steady", timeout_seconds=3)
    wait_until(lambda: job_state(spool, "steady") == "processing", 10, what="start")
    clock.jump(24 * 3600)
    wait_until(lambda: job_state(spool, "steady") == "completed", 10, what="completion")
    assert spool.get("steady")["last_error"] is None

    spool.enqueue("sleep 30", id="stuck", timeout_seconds=1, max_retries=0)
    wait_until(lambda: job_state(spool, "stuck") == "processing", 10, what="start")
    clock.jump(-24 * 3600)
    t0 = time.monotonic()
    wait_until(lambda: job_state(spool, "stuck") == "dead", 10, what="the timeout")
    assert time.monotonic() - t0 < 5
    assert spool.get("stuck")["last_error"] == "timed out after 1s"
