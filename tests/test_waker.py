"""The worker's wake-ups (queuectl/waker.py), in process.

How the mechanism is chosen (Waker.start): QUEUECTL_WAKER, read when start() runs.
  unset, "auto", "native", "inotify" -> inotify read in the caller's thread; if it cannot
                                        start (OSError/ImportError), the polling fallback
  "none"                             -> nothing watches; only poke() and the timeout wake
  anything else (e.g. "poll")        -> watchdog's PollingObserver in its own threads,
                                        whose handler writes to the wake-up pipe
`mechanism` says which one runs ("inotify", "poll", "none").

The polling observer looks every 1.0 s (PollingObserver(timeout=1.0) in waker.py). One
test runs it at that real interval; the others make it look every FAST seconds (a
subclass of PollingObserver patched in where waker.py imports it at start()), so that
they exercise the same handler, note() and pipe in a fraction of the time.

Every wait here is bounded: wait(timeout) is called with the time left before a
deadline, and a missed wake-up fails the test instead of hanging it.
"""
import ctypes
import errno
import os
import select
import threading
import time

import pytest
from watchdog.observers import inotify_c, polling

from queuectl.waker import CONTROL, LOST, RESCAN, Waker

FOLDERS = ("incoming", "pending", "failed", CONTROL)
REAL_POLL_INTERVAL = 1.0  # waker.py: PollingObserver(timeout=1.0)
FAST = 0.05               # the patched polling interval
SLACK = 1.5               # a loaded 2-core machine may run a thread late by this much


@pytest.fixture
def folders(tmp_path):
    out = {}
    for name in FOLDERS + ("tmp",):  # tmp/ is not watched: files are staged there
        path = tmp_path / name
        path.mkdir()
        out[name] = str(path)
    return out


@pytest.fixture
def fast_poll(monkeypatch):
    """Make the polling fallback look every FAST s instead of every 1 s."""
    class FastPollingObserver(polling.PollingObserver):
        requested = []

        def __init__(self, *, timeout=polling.DEFAULT_OBSERVER_TIMEOUT):
            FastPollingObserver.requested.append(timeout)
            super().__init__(timeout=FAST)

    monkeypatch.setattr(polling, "PollingObserver", FastPollingObserver)
    return FastPollingObserver


@pytest.fixture
def start_waker(folders, monkeypatch):
    """start_waker(mode, track_names=...) -> a started Waker over FOLDERS; stopped at teardown."""
    started = []

    def start(mode, watched=FOLDERS, **kw):
        if mode is None:
            monkeypatch.delenv("QUEUECTL_WAKER", raising=False)
        else:
            monkeypatch.setenv("QUEUECTL_WAKER", mode)
        waker = Waker([folders[n] for n in watched], **kw).start()
        started.append(waker)
        return waker

    yield start
    for waker in started:
        waker.stop()


@pytest.fixture(params=["inotify", "poll"])
def watching(request, start_waker, fast_poll):
    """A started waker for each watching mechanism (the polling one at the FAST interval)."""
    def start(**kw):
        waker = start_waker(request.param, **kw)
        if waker.mechanism != request.param:
            pytest.skip(f"{request.param} is not available here (got {waker.mechanism})")
        return waker
    start.mode = request.param
    return start


def bound(waker):
    """How long a change may take to wake `waker`."""
    return (FAST if waker.mechanism == "poll" else 0.0) + SLACK


def timed_wait(waker, timeout):
    t0 = time.monotonic()
    woke = waker.wait(timeout)
    return woke, time.monotonic() - t0


def collect(waker, done, within, folder="pending"):
    """wait()/take()/take_names(folder) until done(dirty, added, removed) holds; fail after
    `within` seconds. Returns (dirty, added, removed, seconds taken)."""
    t0 = time.monotonic()
    deadline = t0 + within
    dirty, added, removed = set(), [], []
    while True:
        dirty |= waker.take()
        a, r = waker.take_names(folder)
        added += a
        removed += r
        if done(dirty, added, removed):
            return dirty, added, removed, time.monotonic() - t0
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no wake-up within {within}s ({waker.mechanism}): "
                                 f"dirty={dirty} added={added} removed={removed}")
        waker.wait(left)


def touch(path, data=b"{}"):
    with open(path, "wb") as fh:
        fh.write(data)


def inotify_fds():
    out = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            out += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
        except OSError:
            pass
    return out


# ---------------------------------------------------------------- choosing the mechanism

@pytest.mark.parametrize("env, expected", [
    (None, "inotify"), ("auto", "inotify"), ("native", "inotify"), ("inotify", "inotify"),
    ("poll", "poll"), ("something-else", "poll"), ("none", "none"),
])
def test_mechanism_follows_QUEUECTL_WAKER(start_waker, fast_poll, env, expected):
    waker = start_waker(env)
    if expected == "inotify" and waker.mechanism == "poll":
        pytest.skip("inotify cannot start here")
    assert waker.mechanism == expected
    assert (waker.observer is not None) == (expected == "poll")
    if expected == "inotify":
        # a running job's wait watches the pipe and the inotify instance of workers/
        assert len(waker.control_fds) == 2 and waker.control_fds[0] == waker.pipe_r
    else:
        assert waker.control_fds == [waker.pipe_r]


def test_a_new_waker_reports_none_until_started(folders):
    waker = Waker([folders["pending"]])
    try:
        assert waker.mechanism == "none" and waker.observer is None
        assert waker.take() == set()
    finally:
        waker.stop()


def test_polling_fallback_when_no_inotify_instance_is_left(start_waker, fast_poll, folders, monkeypatch):
    def no_instance():
        ctypes.set_errno(errno.EMFILE)
        return -1
    monkeypatch.setattr(inotify_c, "inotify_init", no_instance)
    waker = start_waker("auto")
    assert waker.mechanism == "poll"
    touch(os.path.join(folders["pending"], "a.json"))
    dirty, added, _, _ = collect(waker, lambda d, a, r: "a.json" in a, bound(waker))
    assert "pending" in dirty and added == ["a.json"]


def test_polling_fallback_when_a_watch_cannot_be_added_closes_the_inotify_fds(
        start_waker, fast_poll, folders, monkeypatch):
    real = inotify_c.inotify_add_watch

    def watch_limit(fd, path, mask):
        if path.endswith(b"/failed"):  # the third folder: two watches are in place already
            ctypes.set_errno(errno.ENOSPC)
            return -1
        return real(fd, path, mask)
    monkeypatch.setattr(inotify_c, "inotify_add_watch", watch_limit)
    before = inotify_fds()
    waker = start_waker("inotify")
    assert waker.mechanism == "poll"
    assert inotify_fds() == before  # the half-built inotify instance was closed
    assert waker.control_fds == [waker.pipe_r]
    touch(os.path.join(folders["failed"], "f.json"))
    dirty, _, _, _ = collect(waker, lambda d, a, r: "failed" in d, bound(waker))
    assert dirty == {"failed"}


def test_polling_fallback_when_a_folder_is_unreadable_to_inotify(start_waker, fast_poll, folders, monkeypatch):
    """EACCES from inotify_add_watch must not leave that folder unwatched under "inotify"."""
    real = inotify_c.inotify_add_watch

    def denied(fd, path, mask):
        if path.endswith(b"/incoming"):
            ctypes.set_errno(errno.EACCES)
            return -1
        return real(fd, path, mask)
    monkeypatch.setattr(inotify_c, "inotify_add_watch", denied)
    waker = start_waker("auto")
    assert waker.mechanism == "poll"
    touch(os.path.join(folders["incoming"], "drop.json"))
    dirty, _, _, _ = collect(waker, lambda d, a, r: "incoming" in d, bound(waker))
    assert dirty == {"incoming"}


# ---------------------------------------------------------------- changes wake wait()

def test_a_created_file_wakes_wait_and_take_names_its_folder(watching, folders):
    waker = watching()
    t0 = time.monotonic()
    touch(os.path.join(folders["pending"], "a.json"))
    woke, _ = timed_wait(waker, bound(waker))
    assert woke, "wait() was not woken by a new file"
    dirty, added, removed, _ = collect(waker, lambda d, a, r: "a.json" in a, bound(waker))
    assert time.monotonic() - t0 < bound(waker) + 0.5
    assert dirty == {"pending"}
    assert (added, removed) == (["a.json"], [])
    assert waker.take() == set() and waker.take_names("pending") == ([], [])


def test_a_file_renamed_in_from_an_unwatched_folder_wakes_wait(watching, folders):
    waker = watching()
    staged = os.path.join(folders["tmp"], "staged")
    touch(staged)
    woke, elapsed = timed_wait(waker, 0.1)
    assert not woke, "staging in an unwatched folder woke the waiter"
    os.rename(staged, os.path.join(folders["pending"], "010_job.json"))
    woke, elapsed = timed_wait(waker, bound(waker))
    assert woke and elapsed < bound(waker)
    dirty, added, removed, _ = collect(waker, lambda d, a, r: a, bound(waker))
    assert dirty == {"pending"} and (added, removed) == (["010_job.json"], [])


@pytest.mark.parametrize("name", ["pending", "failed"])  # the names a worker keeps a view of by default
def test_a_rename_inside_a_folder_and_a_delete_report_removed_names(watching, folders, name):
    folder = folders[name]
    touch(os.path.join(folder, "old.json"))
    waker = watching()  # old.json exists before: the poller's first snapshot holds it
    os.rename(os.path.join(folder, "old.json"), os.path.join(folder, "new.json"))
    dirty, added, removed, _ = collect(waker, lambda d, a, r: a and r, bound(waker), folder=name)
    assert dirty == {name} and (added, removed) == (["new.json"], ["old.json"])
    os.unlink(os.path.join(folder, "new.json"))
    dirty, added, removed, _ = collect(waker, lambda d, a, r: r, bound(waker), folder=name)
    assert dirty == {name} and (added, removed) == ([], ["new.json"])


def test_each_watched_folder_is_reported_under_its_name(watching, folders):
    waker = watching()
    touch(os.path.join(folders["incoming"], "drop.json"))
    touch(os.path.join(folders["failed"], "f.json"))
    os.rename(_staged(folders, "req"), os.path.join(folders[CONTROL], "h_1.stop"))
    dirty, _, _, _ = collect(waker, lambda d, a, r: {"incoming", "failed", CONTROL} <= d, bound(waker))
    assert dirty == {"incoming", "failed", CONTROL}


def _staged(folders, name):
    path = os.path.join(folders["tmp"], name)
    touch(path)
    return path


def test_names_are_kept_only_for_tracked_folders(watching, folders):
    waker = watching(track_names=("pending",))
    touch(os.path.join(folders["failed"], "f.json"))
    dirty, _, _, _ = collect(waker, lambda d, a, r: "failed" in d, bound(waker), folder="failed")
    assert dirty == {"failed"}
    assert waker.take_names("failed") == ([], [])


def test_track_names_keeps_the_names_of_more_folders(watching, folders):
    waker = watching(track_names=("pending", "failed"))
    touch(os.path.join(folders["failed"], "f.json"))
    touch(os.path.join(folders["pending"], "p.json"))
    _, added_failed, _, _ = collect(waker, lambda d, a, r: a, bound(waker), folder="failed")
    _, added_pending, _, _ = collect(waker, lambda d, a, r: a, bound(waker), folder="pending")
    assert added_failed == ["f.json"] and added_pending == ["p.json"]


def test_wait_stays_true_until_the_changes_are_taken(watching, folders):
    waker = watching()
    touch(os.path.join(folders["pending"], "a.json"))
    assert timed_wait(waker, bound(waker))[0]
    woke, elapsed = timed_wait(waker, 1.0)  # nothing taken yet: no sleep
    assert woke and elapsed < 0.5
    collect(waker, lambda d, a, r: a, bound(waker))
    woke, elapsed = timed_wait(waker, 0.2)
    assert not woke and elapsed >= 0.19


def test_the_real_polling_interval_bounds_the_wake_up(start_waker, folders):
    """Without the FAST patch: a change is seen within the observer's 1 s poll."""
    waker = start_waker("poll")
    assert waker.mechanism == "poll" and waker.observer.timeout == REAL_POLL_INTERVAL
    t0 = time.monotonic()
    touch(os.path.join(folders["pending"], "a.json"))
    dirty, added, _, elapsed = collect(waker, lambda d, a, r: a, REAL_POLL_INTERVAL + SLACK)
    assert dirty == {"pending"} and added == ["a.json"]
    assert time.monotonic() - t0 < REAL_POLL_INTERVAL + SLACK


# ---------------------------------------------------------------- poke and timeouts

@pytest.mark.parametrize("mode", ["inotify", "poll", "none"])
def test_poke_from_another_thread_wakes_a_waiter(start_waker, fast_poll, mode):
    waker = start_waker(mode)
    timer = threading.Timer(0.1, waker.poke)
    timer.start()
    try:
        woke, elapsed = timed_wait(waker, 5.0)
    finally:
        timer.cancel()
        timer.join(1.0)
    assert woke and 0.05 <= elapsed < 0.1 + SLACK
    assert waker.take() == set()  # a poke names no folder...
    woke, _ = timed_wait(waker, 0.1)
    assert not woke               # ...and take() consumed it


@pytest.mark.parametrize("mode", ["inotify", "poll", "none"])
def test_a_poke_before_wait_makes_wait_return_at_once(start_waker, fast_poll, mode):
    waker = start_waker(mode)
    for _ in range(3):
        waker.poke()
    woke, elapsed = timed_wait(waker, 5.0)
    assert woke and elapsed < 0.5
    waker.take()
    assert not timed_wait(waker, 0.05)[0]


@pytest.mark.parametrize("mode", ["inotify", "poll", "none"])
def test_wait_returns_false_after_about_the_timeout_when_nothing_happens(start_waker, fast_poll, mode):
    waker = start_waker(mode)
    woke, elapsed = timed_wait(waker, 0.3)
    assert not woke
    assert 0.29 <= elapsed < 0.3 + SLACK
    for timeout in (0, -5):
        woke, elapsed = timed_wait(waker, timeout)
        assert not woke and elapsed < 0.2


def test_with_none_changes_do_not_wake(start_waker, folders):
    waker = start_waker("none")
    touch(os.path.join(folders["pending"], "a.json"))
    woke, elapsed = timed_wait(waker, 0.3)
    assert not woke and elapsed >= 0.29
    assert waker.take() == set() and waker.take_names("pending") == ([], [])


# ---------------------------------------------------------------- workers/ and a running job

def test_a_request_renamed_into_workers_makes_a_control_fd_readable(start_waker, folders):
    waker = start_waker("inotify")
    if waker.mechanism != "inotify":
        pytest.skip("inotify cannot start here")
    pipe, control = waker.control_fds
    touch(os.path.join(folders["pending"], "a.json"))  # the queue's events wait meanwhile
    assert select.select(waker.control_fds, [], [], 0.1)[0] == []
    os.rename(_staged(folders, "req"), os.path.join(folders[CONTROL], "h_1.cancel.j1"))
    ready, _, _ = select.select(waker.control_fds, [], [], SLACK)
    assert ready == [control]
    assert waker.take() == {"pending", CONTROL}


def test_a_request_in_workers_wakes_the_control_pipe_when_polling(start_waker, fast_poll, folders):
    waker = start_waker("poll")
    os.rename(_staged(folders, "req"), os.path.join(folders[CONTROL], "h_1.stop"))
    ready, _, _ = select.select(waker.control_fds, [], [], FAST + SLACK)
    assert ready == [waker.pipe_r]
    dirty, _, _, _ = collect(waker, lambda d, a, r: CONTROL in d, bound(waker))
    assert dirty == {CONTROL}


def test_a_job_note_rewritten_in_place_does_not_wake(start_waker, folders):
    """workers/HOST_PID.job is rewritten per job: inotify watches only names coming in."""
    note = os.path.join(folders[CONTROL], "h_1.job")
    touch(note, b" " * 160)
    waker = start_waker("inotify")
    if waker.mechanism != "inotify":
        pytest.skip("inotify cannot start here")
    fd = os.open(note, os.O_RDWR)
    try:
        os.pwrite(fd, b"4242 job-1".ljust(160), 0)
    finally:
        os.close(fd)
    woke, _ = timed_wait(waker, 0.2)
    assert not woke and waker.take() == set()


def test_lost_events_mean_rescan(start_waker, folders):
    """An inotify queue overflow (events lost) names every watched folder, RESCAN and LOST."""
    waker = start_waker("inotify")
    if waker.mechanism != "inotify":
        pytest.skip("inotify cannot start here")
    with open("/proc/sys/fs/inotify/max_queued_events") as fh:
        limit = int(fh.read())
    if limit > 40000:
        pytest.skip(f"max_queued_events is {limit}: too many events to overflow quickly")
    a, b = os.path.join(folders["pending"], "a"), os.path.join(folders["pending"], "b")
    touch(a)
    for _ in range(limit // 2 + 8):  # two events per rename
        os.rename(a, b)
        a, b = b, a
    assert timed_wait(waker, 0)[0]
    assert waker.take() == set(FOLDERS) | {RESCAN, LOST}


# ---------------------------------------------------------------- stop

@pytest.mark.parametrize("mode", ["inotify", "poll", "none"])
def test_stop_is_quick_and_leaves_nothing_watching(start_waker, fast_poll, folders, mode):
    before = inotify_fds()
    waker = start_waker(mode)  # stopped again at teardown: a second stop() is harmless
    t0 = time.monotonic()
    waker.stop()
    assert time.monotonic() - t0 < 1.0
    assert inotify_fds() <= before
    waker.poke()  # a late poke (a signal handler) is harmless
    touch(os.path.join(folders["pending"], "late.json"))
    if waker.observer is not None:
        deadline = time.monotonic() + FAST + SLACK
        while waker.observer.is_alive() and time.monotonic() < deadline:
            waker.observer.join(0.05)
        assert not waker.observer.is_alive(), "the polling observer did not stop"


# ---------------------------------------------------------------- defects found once, fixed

@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_a_folder_given_with_a_trailing_slash_keeps_its_name(folders, fast_poll, monkeypatch, mode):
    monkeypatch.setenv("QUEUECTL_WAKER", mode)
    waker = Waker([folders["pending"] + os.sep]).start()
    try:
        touch(os.path.join(folders["pending"], "a.json"))
        dirty, added, _, _ = collect(waker, lambda d, a, r: d, bound(waker))
        assert dirty == {"pending"} and added == ["a.json"]
    finally:
        waker.stop()


def test_a_failed_start_leaves_no_polling_thread_behind(start_waker, fast_poll, folders):
    os.rmdir(folders["failed"])
    before = set(threading.enumerate())
    wakers = [start_waker("poll") for _ in range(5)]  # emitters start in set order: 3 in 4 leak
    left = [t for t in threading.enumerate() if t not in before and isinstance(t, polling.PollingEmitter)]
    try:
        assert [w.mechanism for w in wakers] == ["none"] * 5
        assert left == []
    finally:
        for thread in left:
            thread.stop()
            thread.join(1.0)


def test_the_spools_own_folder_is_watched_under_its_given_name(monkeypatch, tmp_path):
    """A folder given as (path, name) is named so, whatever its last part (a spool folder
    may be called "pending"): `pause` renames SPOOL/paused in, `resume` removes it, and
    `config set` renames config.json in; each is one event of "spool", before the call returns."""
    monkeypatch.setenv("QUEUECTL_WAKER", "inotify")
    root = tmp_path / "pending"
    (root / "tmp").mkdir(parents=True)
    waker = Waker([(str(root), "spool")]).start()
    try:
        if waker.mechanism != "inotify":
            pytest.skip("inotify cannot start here")
        assert waker.take() == set()
        touch(str(root / "tmp" / ".paused"), b"{}")
        assert waker.take() == set(), "a file staged in tmp/ is not the spool's own folder"
        os.rename(root / "tmp" / ".paused", root / "paused")
        assert waker.take() == {"spool"}, "no wait: the event is queued before rename() returns"
        os.unlink(root / "paused")
        assert waker.take() == {"spool"}
        assert waker.take_names("spool") == ([], []), "names are kept only for pending/"
    finally:
        waker.stop()
