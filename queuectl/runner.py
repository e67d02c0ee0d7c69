"""One attempt of one command (SPEC "Running a job").

/bin/sh -c COMMAND in its own process group, stdin /dev/null, stdout+stderr appended to the
job's log. The worker waits on a pidfd (no polling for the exit) together with a wake-up
pipe, so a stop or cancel request interrupts the wait at once. Timeout: SIGTERM to the
group, SIGKILL after KILL_GRACE seconds. Durations use time.monotonic().
"""
import os
import select
import signal
import subprocess
import time

from . import logs

KILL_GRACE = 3.0
TICK = 0.5  # how often a running attempt checks the log cap and control requests
FAST_TICK = 0.02  # ... while its log is being cut


class LogError(OSError):
    pass


class Outcome:
    def __init__(self, exit_code=None, error=None, interrupted=None, duration=0.0):
        self.exit_code = exit_code      # None when killed or not started
        self.error = error              # None on success, else SPEC's last_error
        self.interrupted = interrupted  # "now" or "cancel" when the worker cut it short
        self.duration = duration

    @property
    def ok(self):
        return self.exit_code == 0 and self.error is None


def job_env(record, spool_path, base=None):
    env = dict(os.environ if base is None else base)  # a worker passes a copy made once
    env.update(record.get("env") or {})
    env["QUEUECTL_JOB_ID"] = record["id"]
    env["QUEUECTL_ATTEMPT"] = str(record["attempts"])
    env["QUEUECTL_SPOOL"] = spool_path
    return env


def run(record, log_path, spool_path, worker_id, timeout=None, log_max_bytes=0,
        interrupt=lambda: None, wakeup_fd=None, on_tick=None, base_env=None, on_start=None):
    """Run one attempt; returns an Outcome. `interrupt()` returns None, "now" or "cancel".
    Raises LogError when the log cannot be opened (e.g. a planted symlink: never followed)."""
    try:
        log_fd = logs.open_for_append(log_path)
    except OSError as exc:
        raise LogError(f"cannot open the job's log {log_path}: {exc.strerror}") from None
    started = time.monotonic()
    try:
        os.write(log_fd, logs.header(record, worker_id))
        cwd = record.get("cwd") or os.path.expanduser("~")
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", record["command"]], cwd=cwd, env=job_env(record, spool_path, base_env),
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, start_new_session=True,
                close_fds=True)
        except OSError as exc:
            error = f"cannot start: cwd {cwd}: {exc.strerror}" if exc.filename in (cwd, None) else \
                f"cannot start: {exc.strerror}"
            logs.append_line(log_fd, f"[queuectl: {error}]")
            return Outcome(None, error, duration=time.monotonic() - started)
        cut = [logs.cap(log_fd, log_max_bytes)]  # the running total of what the cap cut
        if on_start:
            on_start(proc.pid)  # the job's process group id (it leads its own group)
        outcome = _wait(proc, timeout, log_fd, log_max_bytes, interrupt, wakeup_fd, on_tick, started, cut)
        logs.cap(log_fd, log_max_bytes, cut[0])
        return outcome
    finally:
        os.close(log_fd)


def _wait(proc, timeout, log_fd, log_max_bytes, interrupt, wakeup_fd, on_tick, started, cut):
    pidfd = os.pidfd_open(proc.pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    if wakeup_fd is not None:
        poller.register(wakeup_fd, select.POLLIN)
    deadline = started + timeout if timeout else None
    kill_at = None
    tick = FAST_TICK  # starts short: a flood of output is caught before it grows far
    reason = None
    interrupted = None
    try:
        while True:
            now = time.monotonic()
            wait = tick
            if deadline is not None and reason is None:
                wait = min(wait, max(0.0, deadline - now))
            if kill_at is not None:
                wait = min(wait, max(0.0, kill_at - now))
            events = poller.poll(wait * 1000)
            if any(fd == pidfd for fd, _ in events):
                break
            if wakeup_fd is not None and any(fd == wakeup_fd for fd, _ in events):
                _drain(wakeup_fd)
            now = time.monotonic()
            if reason is None:
                request = interrupt()
                if request:
                    interrupted = request
                    reason = "stopped (--now)" if request == "now" else "cancelled"
                    _signal_group(proc.pid, signal.SIGTERM)
                    kill_at = now + KILL_GRACE
                elif deadline is not None and now >= deadline:
                    reason = f"timed out after {timeout:g}s"
                    _signal_group(proc.pid, signal.SIGTERM)
                    kill_at = now + KILL_GRACE
            if kill_at is not None and now >= kill_at:
                _signal_group(proc.pid, signal.SIGKILL)
                kill_at = now + 3600
            before = cut[0]
            cut[0] = logs.cap(log_fd, log_max_bytes, before)
            # a job flooding its log is looked at again soon; others less and less often
            tick = FAST_TICK if cut[0] != before else min(TICK, tick * 2)
            if on_tick:
                on_tick()
        code = proc.wait()
        if reason is not None:
            # the shell is gone; make sure nothing of its group lingers after a kill
            _signal_group(proc.pid, signal.SIGKILL)
    finally:
        os.close(pidfd)
    duration = time.monotonic() - started
    if reason is not None:
        logs.append_line(log_fd, f"[queuectl: {reason}]")
        return Outcome(None, reason, interrupted, duration)
    if code < 0:
        name = _signame(-code)
        error = f"killed by signal {-code} ({name})"
        logs.append_line(log_fd, f"[queuectl: {error}]")
        return Outcome(None, error, None, duration)
    if code != 0:
        return Outcome(code, f"exit code {code}", None, duration)
    return Outcome(0, None, None, duration)


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signame(num):
    try:
        return signal.Signals(num).name
    except ValueError:
        return "unknown"


def _drain(fd):
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, OSError):
        pass
