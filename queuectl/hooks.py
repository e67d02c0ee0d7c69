"""The on-finish hook: a shell command a worker runs when a job reaches a final state.

The job's `on_finish` field, else the config key `on-finish` (docs/usage.md "The on-finish
hook"). The hook runs in the background of the worker, in a session of its own, with the
job's environment plus QUEUECTL_* variables that describe the finish; its output goes to the
worker's own output. It is killed after HOOK_TIMEOUT seconds and its result never changes the
job: the worker only logs a failure. Started after the finish is recorded, so a worker that
dies in between misses it (at most once, never twice).
"""
import os
import signal
import time

from . import runner

try:
    HOOK_TIMEOUT = float(os.environ.get("QUEUECTL_HOOK_TIMEOUT") or 30.0)  # tests shorten it
except ValueError:
    HOOK_TIMEOUT = 30.0
MAX_RUNNING = 32  # hooks of one worker at once: past that, starting one waits for the oldest
FINAL = ("completed", "dead")


def command_for(record, config):
    """The hook command for a finished record, or None: the job's own (an empty one means
    none), else the config's."""
    own = record.get("on_finish")
    if own is not None:
        return own if own.strip() else None
    return config.get("on-finish")


def hook_env(record, spool_path, host, log_path, base_env):
    env = runner.job_env(record, spool_path, base_env)
    exit_code = record.get("exit_code")
    env.update({
        "QUEUECTL_JOB_ID": record["id"],
        "QUEUECTL_STATE": record["state"],
        "QUEUECTL_EXIT_CODE": "" if exit_code is None else str(exit_code),
        "QUEUECTL_LAST_ERROR": record.get("last_error") or "",
        "QUEUECTL_ATTEMPTS": str(record.get("attempts", 0)),
        "QUEUECTL_COMMAND": record["command"],
        "QUEUECTL_LOG": log_path,
        "QUEUECTL_HOST": host,
    })
    return env


class Hooks:
    """The hooks a worker has started and not yet reaped."""

    def __init__(self, spool_path, host, log, base_env=None, out_fd=1, timeout=HOOK_TIMEOUT):
        self.spool_path, self.host, self.log = spool_path, host, log
        self.base_env, self.out_fd, self.timeout = base_env, out_fd, timeout
        self.running = {}  # pid -> (job id, monotonic deadline)

    def start(self, record, config, log_path):
        """Run the hook of `record` (a completed or dead job), if it has one."""
        if record.get("state") not in FINAL:
            return None
        command = command_for(record, config)
        if command is None:
            return None
        cwd = record.get("cwd") or os.path.expanduser("~")
        if not os.path.isdir(cwd):
            cwd = os.path.expanduser("~")
        env = hook_env(record, self.spool_path, self.host, log_path, self.base_env)
        self.reap()
        while len(self.running) >= MAX_RUNNING:  # bounded: each is killed after `timeout`
            time.sleep(min(0.05, self.reap()))
        try:
            pid = runner.spawn(["/bin/sh", "-c", command], cwd, env, self.out_fd)
        except (OSError, ValueError) as exc:  # ValueError: text that cannot be passed to exec
            self.log(f"job {record['id']}: on-finish hook could not start: {getattr(exc, 'strerror', None) or exc}")
            return None
        self.running[pid] = (record["id"], time.monotonic() + self.timeout)
        return pid

    def reap(self):
        """Collect the hooks that ended; kill those past their time. Returns the seconds until
        the next deadline (inf when none runs)."""
        now = time.monotonic()
        for pid, (job_id, deadline) in list(self.running.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                del self.running[pid]
                continue
            if done:
                del self.running[pid]
                code = os.waitstatus_to_exitcode(status)
                if code != 0:
                    self.log(f"job {job_id}: on-finish hook failed ({_describe(code)})")
            elif now >= deadline:
                _kill_group(pid)
                os.waitpid(pid, 0)
                del self.running[pid]
                self.log(f"job {job_id}: on-finish hook killed after {self.timeout:g}s")
        if not self.running:
            return float("inf")
        return max(0.0, min(deadline for _, deadline in self.running.values()) - now)

    def finish(self, kill=lambda: False):
        """At the worker's exit: wait for the running hooks (each within its time), or kill them
        once `kill()` says so (asked again, to stop at once, while waiting)."""
        while self.running:
            if kill():
                for pid in self.running:
                    _kill_group(pid)
            time.sleep(min(0.05, self.reap()))


def _kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _describe(code):
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"
