"""A job that a command or a worker puts (back) into pending/ while workers run is claimed at
once, by any worker, including the one that ran it before.

A move into pending/ holds the job's lock until its record is in place and synced; a worker
woken by the rename tried to claim, found the lock held, and forgot the name. Nothing announces
a lock's release, and a worker on a local disk with inotify lists pending/ again only once a
minute, so the job waited (docs/design.md, "The view of pending/"). BOUND is far below that
minute: each test fails if the name is forgotten.
"""
import fcntl
import os
import signal
import threading
import time

import pytest

from helpers import wait_until
from queuectl import names, timeutil
from queuectl.registry import StopMode
from queuectl.schedules import Schedules
from queuectl.housekeeping import EVENTS_TRUSTED_RELIST
from queuectl.worker import Worker

pytestmark = pytest.mark.process
BOUND = 5.0
assert BOUND < EVENTS_TRUSTED_RELIST / 4


class WorkerThread:
    """A worker of this process, in a thread, so that a test can read its counters."""

    def __init__(self, spool):
        self.worker = Worker(spool)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_until(lambda: self.worker.waker is not None, timeout=BOUND, what="the worker's start")
        return self.worker

    def __exit__(self, *exc):
        self.worker.stopping = StopMode.GRACEFUL
        self.worker.waker.poke()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the worker did not stop"


def test_a_job_locked_when_the_worker_tries_it_runs_once_the_lock_is_released(spool, tmp_path):
    """The mechanism, made deterministic: this test holds the job's lock (as a mover does)
    while the job's due name appears in pending/, until the worker has tried and deferred it."""
    mark = tmp_path / "ran"
    spool.enqueue(f"touch {mark}", id="held", run_at="+1h")  # scheduled: the worker leaves it
    [scheduled] = os.listdir(spool.layout.pending)
    with WorkerThread(spool) as worker:
        marker = os.open(os.path.join(spool.layout.ids, "held"), os.O_RDWR)
        try:
            fcntl.flock(marker, fcntl.LOCK_EX | fcntl.LOCK_NB)
            due_now = names.pending_name(10, timeutil.now(), names.parse_pending(scheduled).seq, "held")
            os.rename(os.path.join(spool.layout.pending, scheduled), os.path.join(spool.layout.pending, due_now))
            wait_until(lambda: worker.claims_deferred >= 1, timeout=BOUND, what="a claim that finds the job locked")
            assert not mark.exists()
        finally:
            os.close(marker)  # the lock goes with it, and no event says so
        released = time.monotonic()
        wait_until(lambda: spool.get("held")["state"] == "completed", timeout=BOUND, what="the job's run")
        assert mark.exists() and time.monotonic() - released < BOUND
        assert worker.claims_lost == 0, "a job held by a command is not a claim lost to another worker"


def completed_again(cli, job_id, since):
    """The job completed by an attempt that started after `since` (wall time)."""
    def check():
        rec = cli.show(job_id)
        return rec["state"] == "completed" and timeutil.parse_iso(rec["started_at"]) >= since
    wait_until(check, timeout=BOUND, what=f"job {job_id} to run again")


@pytest.fixture
def one_worker(cli):
    proc = cli.start_tailed("worker", "start", "-n", "1")
    wait_until(lambda: len(cli.live_workers()) == 1, timeout=15, what="the worker")
    yield proc
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0, proc.tail.text()
    assert "0 claim(s) lost to other workers" in proc.tail.text(), "one worker: no claim can be lost"


def test_retry_dlq_retry_and_cancel_then_retry_run_on_the_same_worker(cli, one_worker):
    assert cli("enqueue", '{"id":"ok","command":"true"}').returncode == 0
    completed_again(cli, "ok", 0)
    for _ in range(3):  # the race is with the retry's synced move: near certain, and repeated
        since = time.time()
        assert cli("retry", "ok").returncode == 0
        completed_again(cli, "ok", since)

    assert cli("enqueue", '{"id":"d","command":"test -e $QUEUECTL_SPOOL/fixed","max_retries":0}').returncode == 0
    wait_until(lambda: cli.show("d")["state"] == "dead", timeout=BOUND, what="job d to die")
    open(os.path.join(cli.spool_dir, "fixed"), "w").close()
    since = time.time()
    assert cli("dlq", "retry", "d").returncode == 0
    completed_again(cli, "d", since)

    assert cli("enqueue", "--id", "later", "--run-at", "+1h", "-c", "true").returncode == 0
    assert cli("cancel", "later").returncode == 0
    since = time.time()
    assert cli("retry", "later").returncode == 0
    completed_again(cli, "later", since)


def test_a_job_taken_back_from_a_dead_worker_runs_again_at_once(cli, tmp_path):
    """kill -9 of the worker that runs a job: another worker takes it back into failed/,
    promotes it when its backoff (1 s) is over and claims it, all of it within BOUND."""
    assert cli("config", "set", "backoff-base", "1").returncode == 0
    first = tmp_path / "first"
    assert cli("enqueue", "--id", "lost", "--max-retries", "1", "-c",
               f"test -e {first} || {{ touch {first}; sleep 60; }}").returncode == 0
    doomed = cli.start_tailed("worker", "run")
    wait_until(first.exists, timeout=15, what="the first attempt")
    survivor = cli.start_tailed("worker", "run")
    wait_until(lambda: len(cli.live_workers()) == 2, timeout=15, what="the second worker")
    doomed.kill()
    doomed.wait(timeout=10)
    killed = time.monotonic()
    wait_until(lambda: cli.show("lost")["state"] == "completed", timeout=BOUND + 2, what="the take-back and re-run")
    assert time.monotonic() - killed < BOUND + 2
    rec = cli.show("lost")
    assert rec["attempts"] == 2 and rec["worker"].endswith(f":{survivor.pid}")
    survivor.send_signal(signal.SIGINT)
    assert survivor.wait(timeout=30) == 0


def test_a_missed_schedule_occurrence_runs_at_once_on_a_running_worker(cli, spool, one_worker):
    """A schedule added with a past occurrence is fired by the running worker (it enqueues into
    pending/ itself), and that job runs at once."""
    now = time.time()
    Schedules(spool.layout).add("tick", "* * * * *", {"command": "true"}, now=now - 120)
    fired = wait_until(lambda: [r for r in spool.list("completed") if r["id"].startswith("tick-")],
                       timeout=BOUND, what="the schedule's job to run")
    assert len(fired) == 1
