"""One attempt of one command (docs/contract.md "Running a job").

/bin/sh -c COMMAND in its own session and process group (posix_spawn), stdin /dev/null,
stdout+stderr appended to the job's log. The worker waits on a pidfd (no polling for the exit) together with a wake-up
pipe, so a stop or cancel request interrupts the wait at once. Timeout: SIGTERM to the
group, SIGKILL after KILL_GRACE seconds. Durations use time.monotonic().
"""
import enum
import fcntl
import os
import select
import signal
import time

from . import logs

KILL_GRACE = 3.0
TICK = 0.5  # how often a running attempt checks the log cap and control requests
FAST_TICK = 0.02  # ... while its log is being cut


class LogError(OSError):
    pass


class Interrupt(str, enum.Enum):
    """Why the worker cut an attempt short."""

    NOW = "now"        # `worker stop --now` or a second Ctrl+C: back to pending/, uncounted
    CANCEL = "cancel"  # `cancel --kill`: to dead/


class Outcome:
    def __init__(self, exit_code=None, error=None, interrupted=None, duration=0.0):
        self.exit_code = exit_code      # None when killed or not started
        self.error = error              # None on success, else the record's last_error
        self.interrupted = interrupted  # an Interrupt when the worker cut it short
        self.duration = duration

    @property
    def ok(self):
        return self.exit_code == 0 and self.error is None


def job_env(record, spool_path, base=None, extra=None):
    """The command's environment: the one captured when it was queued from the CLI, else the
    worker's (`base`, a copy made once); then the job's `env`, then queuectl's variables."""
    captured = record.get("captured_env")
    if captured is not None:
        env = dict(captured)
    else:
        env = dict(os.environ if base is None else base)
    env.update(record.get("env") or {})
    env["QUEUECTL_JOB_ID"] = record["id"]
    env["QUEUECTL_ATTEMPT"] = str(record["attempts"])
    env["QUEUECTL_SPOOL"] = spool_path
    if extra:
        env.update(extra)
    return env


# With a guard, the command runs under a small shell that kills the job's whole process group
# when the guard pipe's write end closes: when the worker dies, even by kill -9, its job dies
# with it. Another host cannot kill a lost worker's job, so on a shared spool this is what
# keeps a taken-back job from running twice. The job's exit status passes through (a job
# killed by a signal is re-killed by the same signal).
GUARD_SCRIPT = """/bin/sh -c "$0" 3<&- &
job=$!
{ read -r _ <&3; kill -KILL 0; } &
guard=$!
exec 3<&-
wait "$job"; code=$?
kill "$guard" 2>/dev/null
if [ "$code" -gt 128 ] && [ "$code" -lt 160 ]; then kill -$((code - 128)) $$; fi
exit "$code"
"""


def run(record, log_path, spool_path, worker_id, timeout=None, log_max_bytes=0,
        interrupt=lambda: None, wakeup_fds=(), on_tick=None, base_env=None, on_start=None, guard=False,
        extra_env=None):
    """Run one attempt; returns an Outcome. `interrupt()` returns None or an Interrupt; it
    is called on every tick and whenever one of `wakeup_fds` is readable, and must consume
    what made it readable (the worker's waker does). With `guard`, the job dies with this
    process (GUARD_SCRIPT).
    Raises LogError when the log cannot be opened (e.g. a planted symlink: never followed)."""
    try:
        log_fd = logs.open_for_append(log_path)
    except OSError as exc:
        raise LogError(f"cannot open the job's log {log_path}: {exc.strerror}") from None
    started = time.monotonic()
    try:
        header = logs.header(record, worker_id)
        os.write(log_fd, header)
        # the offset after an O_APPEND write is the log's size, known without a call to the
        # filesystem: a log that holds only this header has no earlier attempt's note to read
        fresh = os.lseek(log_fd, 0, os.SEEK_CUR) == len(header)
        cwd = record.get("cwd") or os.path.expanduser("~")
        guard_r = guard_w = None
        if guard:
            guard_r, guard_w = os.pipe2(os.O_CLOEXEC)
            argv = ["/bin/sh", "-c", GUARD_SCRIPT, record["command"]]
        else:
            argv = ["/bin/sh", "-c", record["command"]]
        try:
            pid = spawn(argv, cwd, job_env(record, spool_path, base_env, extra_env), log_fd, guard_fd=guard_r)
        except OSError as exc:
            if guard:
                os.close(guard_r)
                os.close(guard_w)
            error = f"cannot start: cwd {cwd}: {exc.strerror}" if exc.filename == cwd else \
                f"cannot start: {exc.strerror}"
            logs.append_line(log_fd, f"[queuectl: {error}]")
            return Outcome(None, error, duration=time.monotonic() - started)
        if guard:
            os.close(guard_r)  # the job has it; the write end stays here until the job is over
        try:
            # the running total of what the cap cut
            cut = [0] if fresh and len(header) <= (log_max_bytes or len(header)) else [logs.cap(log_fd, log_max_bytes)]
            if on_start:
                on_start(pid)  # the job's process group id (it leads its own session and group)
            outcome = _wait(pid, timeout, log_fd, log_max_bytes, interrupt, wakeup_fds, on_tick, started, cut)
            # the job wrote through this open file (O_APPEND): its offset is the log's end,
            # known without a stat, which on a network filesystem is a round trip per job
            if os.lseek(log_fd, 0, os.SEEK_CUR) > log_max_bytes > 0:
                logs.cap(log_fd, log_max_bytes, cut[0])
            return outcome
        finally:
            if guard:
                os.close(guard_w)
    finally:
        os.close(log_fd)


def _wait(pid, timeout, log_fd, log_max_bytes, interrupt, wakeup_fds, on_tick, started, cut):
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    for fd in wakeup_fds:
        poller.register(fd, select.POLLIN)
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
            now = time.monotonic()
            if reason is None:
                request = interrupt()
                if request:
                    interrupted = request
                    reason = "stopped (--now)" if request == Interrupt.NOW else "cancelled"
                    _signal_group(pid, signal.SIGTERM)
                    kill_at = now + KILL_GRACE
                    for fd in wakeup_fds:  # nothing more to ask: only the exit matters now
                        poller.unregister(fd)
                elif deadline is not None and now >= deadline:
                    reason = f"timed out after {timeout:g}s"
                    _signal_group(pid, signal.SIGTERM)
                    kill_at = now + KILL_GRACE
            if kill_at is not None and now >= kill_at:
                _signal_group(pid, signal.SIGKILL)
                kill_at = now + 3600
            before = cut[0]
            cut[0] = logs.cap(log_fd, log_max_bytes, before)
            # a job flooding its log is looked at again soon; others less and less often
            tick = FAST_TICK if cut[0] != before else min(TICK, tick * 2)
            if on_tick:
                on_tick()
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if reason is not None:
            # the shell is gone; make sure nothing of its group lingers after a kill
            _signal_group(pid, signal.SIGKILL)
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


# dispositions a job must not inherit: Python ignores SIGPIPE and SIGXFSZ, and an ignored
# signal stays ignored across exec (handled ones are reset by exec itself)
_DEFAULT_SIGNALS = tuple(getattr(signal, n) for n in ("SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM", "SIGHUP",
                                                      "SIGQUIT", "SIGUSR1", "SIGUSR2") if hasattr(signal, n))


def spawn(argv, cwd, env, out_fd, guard_fd=None):
    """Start argv in `cwd` in a new session (its own process group), stdin /dev/null, stdout and
    stderr on out_fd; returns the pid. OSError (with .filename = cwd when cwd is the problem).

    os.posix_spawn is glibc's vfork+exec: one C call, where subprocess.Popen ran about a
    fifth of a worker's CPU time per job (bench/). posix_spawn cannot change directory in
    the child, so the caller's directory is changed around the call and restored: the
    worker is single-threaded. Only descriptors without close-on-exec reach the job:
    Python opens everything close-on-exec, and close_inherited() covers the rest."""
    if out_fd <= 2:  # the dup2s below must not clobber it
        out_fd = fcntl.fcntl(out_fd, fcntl.F_DUPFD_CLOEXEC, 3)
        dup = out_fd
    else:
        dup = None
    here = os.open(".", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            os.chdir(cwd)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, cwd) from None
        try:
            actions = [(os.POSIX_SPAWN_DUP2, out_fd, 1), (os.POSIX_SPAWN_DUP2, out_fd, 2),
                       (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
            if guard_fd is not None:
                actions.append((os.POSIX_SPAWN_DUP2, guard_fd, 3))
            return os.posix_spawn(argv[0], argv, env, setsid=True, setsigmask=(), setsigdef=_DEFAULT_SIGNALS,
                                  file_actions=actions)
        finally:
            os.fchdir(here)
    finally:
        os.close(here)
        if dup is not None:
            os.close(dup)


def close_inherited():
    """Mark every descriptor above 2 close-on-exec, so that nothing this process inherited
    reaches a job (spawn() does not close descriptors the way subprocess does)."""
    for entry in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        fd = int(entry)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass


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
