"""`worker start`: N worker processes under one supervisor; `worker stop`.

The supervisor starts each worker as its own process (`python -m queuectl worker run`) in
its own process group, so a terminal's Ctrl+C reaches only the supervisor, which forwards
it: the first as SIGTERM (graceful: running jobs finish), the second as another SIGTERM
(the worker's second signal means "now"). It waits on pidfds; when a worker dies by a
signal or a crash, it takes the lost job back at once (the dead worker's lock is free)
and starts a replacement, slowing down if workers keep dying.
"""
import os
import select
import signal
import subprocess
import sys
import time

from . import names, registry, runner
from .errors import QueuectlError
from .hooks import Hooks


def worker_command(spool_path, burst, serve=()):
    cmd = [sys.executable, "-m", "queuectl", "--spool", spool_path, "worker", "run"]
    return cmd + (["--burst"] if burst else []) + list(serve)


def serve_options(queues=None, gpus=None):
    """The options of `worker run`/`start` that say what the workers serve."""
    options = [arg for queue in queues or () for arg in ("--queue", queue)]
    if gpus is not None:
        options += ["--gpus", ",".join(map(str, gpus)) or "none"]
    return options


class Supervisor:
    def __init__(self, spool, count, burst=False, emit=None, run_for=None, serve=()):
        self.spool, self.count, self.burst = spool, count, burst
        self.serve = list(serve)  # serve_options(): the workers' --queue and --gpus
        self.emit = emit or (lambda text: None)
        self.run_for = run_for    # seconds, then stop gracefully as `worker stop` would (--for)
        self.deadline = None
        # a job it takes back from a worker that died may be final: its on-finish hook runs here
        self.hooks = Hooks(spool.path, names.hostname(),
                           lambda text: self.emit(f"{time.strftime('%H:%M:%S')} supervisor: {text}"))
        self.children = {}  # pid -> (Popen, pidfd)
        self.signals = 0
        self.stop_asked = False
        self._restarts = []

    def _on_signal(self, signum, frame):
        self.signals += 1
        for proc, _ in list(self.children.values()):
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _stop_requested(self):
        """`worker stop` asked one of our workers to stop: replace no one."""
        host = names.hostname()
        return any(registry.stop_requested(self.spool.layout, registry.worker_name(host, pid))
                   for pid in self.children)

    def _spawn(self):
        proc = subprocess.Popen(worker_command(self.spool.path, self.burst, self.serve), process_group=0,
                                stdin=subprocess.DEVNULL)
        self.children[proc.pid] = (proc, os.pidfd_open(proc.pid))
        return proc

    def run(self):
        self.spool.layout.check_safe()
        registry.refuse_beside_older_workers(self.spool.layout)
        runner.close_inherited()  # nothing of the caller's reaches a hook run here
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda *a: None)  # wakes select through the wakeup fd
        host = names.hostname()
        self.name = registry.worker_name(host, os.getpid())
        self._reg_fd = registry.register(self.spool.layout, host, os.getpid(), {"role": "supervisor"})
        for _ in range(self.count):
            self._spawn()
        self.emit(f"{time.strftime('%H:%M:%S')} supervisor {names.hostname()}:{os.getpid()} "
                  f"started {self.count} worker(s) on {self.spool.path}"
                  + (f" for {self.run_for:g}s" if self.run_for else ""))
        if self.run_for:
            self.deadline = time.monotonic() + self.run_for
        worst = 0
        try:
            while self.children:
                fds = [r] + [pidfd for _, pidfd in self.children.values()]
                wait = 0.5 if self.deadline is None else min(0.5, max(0.0, self.deadline - time.monotonic()))
                try:
                    select.select(fds, [], [], wait)  # and look for a stop request
                except InterruptedError:
                    pass
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    self._time_is_up()
                if self.hooks.running:
                    self.hooks.reap()
                if not self.stop_asked and registry.stop_requested(self.spool.layout, self.name):
                    self.stop_asked = True  # `worker stop` asked our workers too
                try:
                    while os.read(r, 512):
                        pass
                except BlockingIOError:
                    pass
                for pid, (proc, pidfd) in list(self.children.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    os.close(pidfd)
                    del self.children[pid]
                    worst = self._on_exit(proc, code) or worst
        finally:
            self.hooks.finish(kill=lambda: self.signals > 1)
            signal.set_wakeup_fd(-1)
            os.close(r)
            os.close(w)
            registry.unregister(self.spool.layout, host, os.getpid(), self._reg_fd)
        return worst

    def _time_is_up(self):
        """--for ran out: every worker finishes its job and exits; none is replaced."""
        self.deadline = None
        self.stop_asked = True
        self.emit(f"{time.strftime('%H:%M:%S')} supervisor: {self.run_for:g}s are up; "
                  "stopping after the running jobs")
        for proc, _ in list(self.children.values()):
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _on_exit(self, proc, code):
        """A worker exited. Take its job back if it died; replace it unless we are stopping."""
        if code == 0:
            return 0  # burst done, or stopped (a signal, or `worker stop`)
        if code == -signal.SIGTERM and (self.signals or self.stop_asked):
            return 0  # our own stop reached it before it could take it gracefully: it ran nothing
        died = f"signal {-code}" if code < 0 else f"exit code {code}"
        self.spool.moves.durable_moves = self.spool.config()["durable-moves"]
        failed = []  # a full disk: those jobs wait, their locks free, for the next take-back
        taken = self.spool.moves.take_back_lost(on_error=lambda name, exc: failed.append((name, exc)))
        if failed:
            exc = failed[0][1]
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self.emit(f"{time.strftime('%H:%M:%S')} supervisor: cannot take back {len(failed)} job(s) now "
                      f"({reason}); the next worker start or `queuectl fsck --repair` will")
        for record in taken:
            self.emit(f"{time.strftime('%H:%M:%S')} supervisor: job {record['id']} taken back: "
                      f"{record['last_error']} -> {record['state']}")
            self.hooks.start(record, self.spool.config(), self.spool.log_path(record["id"]))
        if self.signals or self.stop_asked or code == 2 or self._stop_requested():
            return code if code > 0 else 1
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < 60] + [now]
        if len(self._restarts) > 10 * self.count:
            self.emit(f"{time.strftime('%H:%M:%S')} supervisor: workers keep dying; not restarting")
            return 1
        new = self._spawn()
        self.emit(f"{time.strftime('%H:%M:%S')} supervisor: worker pid {proc.pid} died ({died}); "
                  f"started pid {new.pid}")
        return 0


def start_detached(spool, count, burst=False, timeout=15.0, run_for=None, serve=()):
    """Run the supervisor in the background (own session, output to workers/HOST.log).
    Returns (supervisor pid, live worker names) once the workers registered."""
    # in the spool's root, not workers/: that folder is watched, and every line would wake workers
    log_path = os.path.join(spool.path, f"supervisor-{names.hostname()}.log")
    before = {w["name"] for w in registry.live_workers(spool.layout)}
    cmd = [sys.executable, "-m", "queuectl", "--spool", spool.path, "worker", "start", "--count", str(count)]
    cmd += (["--burst"] if burst else []) + (["--for", f"{max(run_for, 0.001):.3f}"] if run_for else []) + list(serve)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [w["name"] for w in registry.live_workers(spool.layout) if w["name"] not in before]
        if len(live) >= count or burst and proc.poll() is not None:
            return proc.pid, live, log_path
        if proc.poll() is not None:
            raise QueuectlError(f"the workers did not start; see {log_path}")
        time.sleep(0.05)
    raise QueuectlError(f"the workers did not register within {timeout:g}s; see {log_path}")


def stop_workers(spool, now=False, wait=True, timeout=None):
    """Ask every live worker and supervisor of the spool to stop; wait until they have exited.
    Returns (names still running when `timeout` ran out, workers asked). It keeps looking
    while it waits: a replacement a supervisor started for a worker that had just died
    registers late, and is asked too (the supervisor, asked first, replaces no one after)."""
    mode = registry.StopMode.NOW if now else registry.StopMode.GRACEFUL
    asked = {}  # name -> role

    def ask_new():
        for w in registry.live_workers(spool.layout, supervisors=True):
            if w["name"] not in asked:
                registry.request_stop(spool.layout, w["name"], mode)
                asked[w["name"]] = w.get("role", "worker")

    def workers():
        return [n for n, role in asked.items() if role != "supervisor"]

    ask_new()
    if not wait:
        return list(asked), workers()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        ask_new()
        remaining = [n for n in asked if registry.is_alive(spool.layout, n)]
        if not remaining or deadline is not None and time.monotonic() >= deadline:
            return remaining, workers()
        time.sleep(0.05)
