"""A worker's hold on a shared spool: at most one copy of a job runs, also across hosts.

A worker cut off from the spool (its host partitioned, the mount gone or hung) cannot
record anything, and after the filesystem's lock timeout another host takes its job back
and runs it again. So the worker itself must kill its job first: a prober thread asks the
spool for a fresh answer every second (a stat that the filesystem's caches serve for at most
about a second), and a watch thread, which touches no file and so never hangs, kills the
running job's process group once no answer came for `bound` seconds. `bound` (config
`contact-timeout`) must be shorter than the filesystem's lock timeout (docs/operations.md
"Tuning"). The job is then left in processing/ for a take-back: nothing is recorded for it.
"""
import os
import signal
import threading
import time


class ContactWatch:
    def __init__(self, probe_path, bound, interval=1.0, on_kill=None):
        self.probe_path = probe_path
        self.bound = bound
        self.interval = interval
        self.on_kill = on_kill or (lambda pgid, silent: None)
        self.last_ok = time.monotonic()
        self._pgid = None
        self.killed = set()      # process groups killed for lost contact
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = []

    def start(self):
        for target in (self._probe, self._watch):
            thread = threading.Thread(target=target, daemon=True, name=f"queuectl-{target.__name__[1:]}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self):
        self._stop.set()  # a prober stuck in a hung call is a daemon thread: it dies with us

    def silent_for(self):
        return time.monotonic() - self.last_ok

    def running(self, pgid):
        """The job now running (its process group), or None once it has exited: a process
        group id is reused after its group is gone, so the watch must forget it."""
        with self._lock:
            self._pgid = pgid

    def _probe(self):
        while not self._stop.is_set():
            try:
                os.stat(self.probe_path)
                self.last_ok = time.monotonic()
            except OSError:
                pass  # ENOTCONN, EIO, a vanished mount: no answer, the watch decides
            self._stop.wait(self.interval)

    def _watch(self):
        while not self._stop.wait(0.2):
            silent = self.silent_for()
            if silent <= self.bound:
                continue
            with self._lock:
                pgid, self._pgid = self._pgid, None
            if pgid is None:
                continue
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.killed.add(pgid)
            self.on_kill(pgid, silent)
