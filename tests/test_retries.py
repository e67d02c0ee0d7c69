"""The view of failed/ (queuectl/retries.py): due order without sorting, kept current from
names instead of a listing per failure."""
import os
import time

import pytest

from queuectl import fsutil, housekeeping, names, retries, timeutil
from queuectl.job import State
from queuectl.registry import StopMode
from queuectl.retries import RetryView
from queuectl.worker import Worker


def view_of(folder_names):
    """A view whose folder is the list `folder_names`; `listed` counts its listings."""
    listed = []

    class Listed(RetryView):
        def _names(self):
            listed.append(1)
            return list(folder_names)
    return Listed("/nonexistent"), listed


def fail_pending(spool, job_id, retry_at):
    """What a worker's failed attempt of job_id, waiting in pending/, does: a fenced move to
    failed/ with its retry due at retry_at. Returns the failed/ name."""
    name = [n for n in os.listdir(spool.layout.pending) if n.endswith(f"_{job_id}.json")][0]
    held = spool.moves.lock("pending", name)
    record = dict(held.record, state="failed", attempts=1, last_error="exit code 1", run_at=timeutil.iso(retry_at))
    failed_name = names.failed_name(retry_at, job_id)
    spool.moves.move(held, State.FAILED, failed_name, record, kind="fail").close()
    return failed_name


def put_failed(spool, job_id, retry_at):
    """A job that failed elsewhere (another host, another process): in failed/, due at retry_at."""
    spool.enqueue("true", id=job_id, run_at="+1h")
    return fail_pending(spool, job_id, retry_at)


def test_due_names_come_in_due_order_and_the_next_one_is_told():
    now = time.time()
    late, soon, due_a, due_b = (names.failed_name(now + d, f"job-{d}") for d in (3600, 30, -5, -1))
    view, listed = view_of([late, due_b, soon, due_a, ".hidden.json", "notes.txt"])
    assert view.due(now) == [due_a, due_b]
    assert abs(view.next_at() - (now + 30)) < 0.01
    assert view.due(now) == []  # taken once
    assert len(listed) == 1


def test_names_added_and_removed_keep_the_view_without_listing_again():
    now = time.time()
    first = names.failed_name(now + 60, "first")
    view, listed = view_of([first])
    assert abs(view.next_at() - (now + 60)) < 0.01
    earlier = names.failed_name(now - 1, "earlier")
    view.add(earlier)
    view.add(earlier)  # an event repeating what the worker added itself
    view.add(".staged.json")
    assert view.due(now) == [earlier]
    view.remove(first)  # promoted by another worker
    assert view.next_at() == float("inf")
    assert len(listed) == 1
    view.forget()
    assert abs(view.next_at() - (now + 60)) < 0.01
    assert len(listed) == 2


def test_a_name_that_is_not_a_retry_is_dropped_and_does_not_hide_the_next():
    now = time.time()
    soon = names.failed_name(now + 30, "soon")
    junk = soon.replace("_soon.json", "_a bad id!.json")  # the same stamp, sorts first, never parses
    assert junk < soon
    view, _ = view_of([junk, soon])
    assert view.due(now + 60) == [soon]
    assert view.next_at() == float("inf")


def test_a_name_added_before_the_first_listing_is_found_by_it():
    now = time.time()
    name = names.failed_name(now - 1, "x")
    folder = []
    view, listed = view_of(folder)
    view.add(name)  # not listed yet: the listing will find it
    folder.append(name)
    assert view.due(now) == [name]
    assert len(listed) == 1


@pytest.mark.process
def test_a_storm_of_first_failures_does_not_list_failed_once_per_failure(spool, monkeypatch):
    """Every job fails once and waits 100 s for its retry: failed/ fills up while the worker
    runs. Listing it after each failure made the drain quadratic (10,000 jobs: 61 s instead
    of 11 s); the worker now learns each new name from its own move or its event."""
    spool.set_config("backoff-base", 100)
    jobs = 40
    spool.enqueue_many([{"command": "false", "max_retries": 1}] * jobs)
    listings = []
    real = fsutil.listdir

    def counting(path):
        if os.path.realpath(path) == os.path.realpath(spool.layout.failed):
            listings.append(path)
        return real(path)
    monkeypatch.setattr(fsutil, "listdir", counting)
    assert Worker(spool, burst=True).run() == 0
    assert len(os.listdir(spool.layout.failed)) == jobs
    assert len(listings) <= 3, f"failed/ listed {len(listings)} times for {jobs} failures"


@pytest.mark.process
def test_a_retry_of_this_worker_and_one_from_elsewhere_are_promoted_when_due(spool, monkeypatch):
    """Its own failure is in the view at once; a job that another process moves into
    failed/ while the worker waits arrives by its event. Both run when due, with no rescan
    to find them."""
    monkeypatch.setenv("QUEUECTL_RESCAN", "3600")
    monkeypatch.setattr(housekeeping, "RESCAN_OVERRIDE", "3600")  # read at import
    spool.set_config("backoff-base", 1)
    own = spool.enqueue('[ "$QUEUECTL_ATTEMPT" -gt 1 ]', max_retries=1)["id"]
    other = spool.enqueue("true", id="other", run_at="+1h")["id"]
    worker = Worker(spool)
    started, dropped, done = time.monotonic(), [], []

    def drop_other_into_failed():
        """What another worker's failed attempt does: a fenced move to failed/, due soon."""
        fail_pending(spool, other, time.time() + 0.3)
        dropped.append(time.monotonic())

    def idle(timeout):
        done[:] = sorted(r["id"] for r in spool.list("completed"))
        if len(done) == 2 or time.monotonic() - started > 20:
            worker.stopping = StopMode.GRACEFUL
            return
        if not dropped and worker.execution.running is None and own not in done:
            drop_other_into_failed()  # the worker waits for its own retry now
        worker.waker.wait(min(timeout, 5.0))
    monkeypatch.setattr(worker, "_idle", idle)
    assert worker.run() == 0
    assert done == sorted([own, other]), f"completed: {done}"
    assert time.monotonic() - dropped[0] < 5  # not found by a rescan (none ran)


def test_a_due_retry_whose_job_is_locked_is_tried_again_soon_not_forgotten(spool):
    """A command or another worker holds the job's lock when its retry comes due: the view
    keeps the name and the worker looks again a second later, though failed/ may not
    change again for a long while (the rescan lists it again only every minute)."""
    spool.set_config("backoff-base", 1)
    job_id = "locked"
    failed_name = put_failed(spool, job_id, time.time() - 1)
    keeping = Worker(spool).housekeeping
    other = spool.moves.lock("failed", failed_name)  # say, a `cancel` at work
    try:
        before = time.time()
        next_at = keeping.promote_due()
        assert before + 0.9 <= next_at <= time.time() + 1.1
        assert os.listdir(spool.layout.failed) == [failed_name]
    finally:
        other.close()
    assert keeping.promote_due() == float("inf")
    assert [r["id"] for r in spool.list("pending")] == [job_id]


def test_memory_is_bounded_and_names_beyond_those_kept_are_found_by_the_next_listing(monkeypatch):
    monkeypatch.setattr(retries, "LIMIT", 4)
    now = time.time()
    folder = [names.failed_name(now - 100 + i, f"j{i}") for i in range(10)]
    view, listed = view_of(folder)
    assert abs(view.next_at() - (now - 100)) < 0.01
    assert len(view._known) == 4
    view.add(names.failed_name(now + 50, "beyond"))  # after the last kept: left to the listing
    assert len(view._known) == 4
    first = view.due(now)
    assert first == folder[:4] and len(listed) == 1
    del folder[:4]  # promoted
    assert view.due(now) == folder[:4] and len(listed) == 2  # the kept ran out: listed again
    folder[:] = [names.failed_name(now + 10, "one")]
    assert abs(view.next_at() - (now + 10)) < 0.01 and len(listed) == 3  # no horizon now
    for i in range(7):
        view.add(names.failed_name(now - 200 + i, f"storm{i}"))
    assert len(view._known) == 8  # twice LIMIT
    view.add(names.failed_name(now - 100, "one-more"))  # too many: listed again at the next look
    view.next_at()
    assert len(listed) == 4 and len(view._known) == 1


class QuietWaker:
    """A waker that reports what the test gives it, and nothing else."""
    mechanism = "inotify"

    def __init__(self):
        self.names = {}

    def take(self):
        return set()

    def take_names(self, folder):
        return self.names.pop(folder, ([], []))


def keeping_of(spool, shared):
    worker = Worker(spool)
    worker.waker, worker.shared = QuietWaker(), shared
    return worker.housekeeping


def test_on_a_shared_spool_the_rescan_finds_another_hosts_retry(spool):
    keeping = keeping_of(spool, shared=True)
    keeping.maintain(startup=True)
    assert keeping.promote_due(frozenset({"failed"})) == float("inf")
    put_failed(spool, "elsewhere", time.time() - 1)
    assert keeping.promote_due(frozenset({"rescan"})) == float("inf")  # pending/ relisted: not failed/
    assert spool.list("pending") == []
    keeping.maintain()  # failed/ changed since its last look: listed again
    keeping.promote_due(frozenset({"failed"}))
    assert [r["id"] for r in spool.list("pending")] == ["elsewhere"]


def test_a_name_that_came_and_went_between_two_looks_is_not_kept(spool, monkeypatch):
    keeping = keeping_of(spool, shared=False)
    assert keeping.promote_due() == float("inf")  # listed: empty
    ghost = names.failed_name(time.time() - 1, "ghost")
    keeping.worker.waker.names["failed"] = ([ghost], [ghost])  # failed, then promoted elsewhere
    locks = []
    monkeypatch.setattr(keeping.worker.moves, "promote", lambda name, now: locks.append(name))
    assert keeping.promote_due(frozenset({"failed"})) == float("inf")
    assert locks == []


def test_lost_events_list_failed_again(spool):
    keeping = keeping_of(spool, shared=False)
    assert keeping.promote_due() == float("inf")
    put_failed(spool, "unseen", time.time() - 1)  # its event was lost in an overflow
    keeping.promote_due(frozenset({"failed", "rescan", "lost"}))
    assert [r["id"] for r in spool.list("pending")] == ["unseen"]


def test_more_junk_than_the_view_keeps_does_not_hide_a_retry(monkeypatch):
    monkeypatch.setattr(retries, "LIMIT", 4)
    now = time.time()
    retry = names.failed_name(now + 30, "real")
    junk = [".staged.json", "0-note.txt", "1-x.json.error", "1-y.json.error", "1-z.json.error", "2-bad id.json"]
    assert all(j < retry for j in junk)
    view, listed = view_of(junk + [retry])
    assert abs(view.next_at() - (now + 30)) < 0.01
    assert view.due(now + 60) == [retry]
