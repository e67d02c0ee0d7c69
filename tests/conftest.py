"""Shared fixtures: a fresh spool per test, the real CLI in a subprocess, bounded waits."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from queuectl import Spool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Poll `predicate` until it returns a truthy value; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def spool_dir(tmp_path):
    path = tmp_path / "spool"
    return str(path)


@pytest.fixture
def spool(spool_dir):
    return Spool(spool_dir)


def cli_env(spool_dir, **extra):
    env = dict(os.environ)
    env["QUEUECTL_SPOOL"] = spool_dir
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("QUEUECTL_RESCAN", "0.5")
    env.pop("NO_COLOR", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Cli:
    """Runs `python -m queuectl` against one spool; starts background workers and always stops them."""

    def __init__(self, spool_dir):
        self.spool_dir = spool_dir
        self.procs = []
        self.extra_kills = []  # (pid or pidfile, group): see kill_at_teardown

    def __call__(self, *args, input=None, timeout=60, env=None, cwd=None):
        return subprocess.run([sys.executable, "-m", "queuectl", *args], input=input,
                              capture_output=True, text=True, timeout=timeout,
                              env=cli_env(self.spool_dir, **(env or {})), cwd=cwd or ROOT)

    def json(self, *args, **kw):
        result = self(*args, "--json", **kw)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def start(self, *args, env=None):
        """Start a long-running command (e.g. `worker start`) in the background."""
        proc = subprocess.Popen([sys.executable, "-m", "queuectl", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                env=cli_env(self.spool_dir, **(env or {})), cwd=ROOT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_tailed(self, *args, env=None):
        """`start`, with a Tail (proc.tail) draining and keeping its output."""
        proc = self.start(*args, env=env)
        proc.tail = Tail(proc)
        return proc

    def kill_at_teardown(self, pid_or_pidfile, group=True):
        """SIGKILL this process (group) first at teardown: a detached supervisor (it would replace
        the workers being killed), or a job whose pid a file holds (orphaned by a killed worker)."""
        self.extra_kills.append((pid_or_pidfile, group))

    def _kill_extra(self):
        for what, group in self.extra_kills:
            try:
                if isinstance(what, int):
                    pid = what
                else:
                    with open(what) as fh:
                        pid = int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                (os.killpg if group else os.kill)(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def live_workers(self):
        return self.json("status")["workers"]

    def cleanup(self):
        self._kill_extra()
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            if proc.stdout:
                proc.stdout.close()
        # workers live in their own process groups, and a supervisor killed just now may have
        # started one that is not registered yet: find them by this test's unique spool path
        # in their command line, and stop them by pid (twice, for late replacements)
        for _ in range(2):
            for pid in spool_processes(self.spool_dir):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        self._kill_extra()  # jobs left behind by killed workers


def spool_processes(spool_dir):
    """Pids of queuectl processes started with `--spool SPOOL_DIR` or QUEUECTL_SPOOL=SPOOL_DIR."""
    needle, env_needle = spool_dir.encode(), f"QUEUECTL_SPOOL={spool_dir}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                args = fh.read().split(b"\0")
            if b"queuectl" not in args:
                continue
            if needle in args:
                out.append(int(entry))
                continue
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if env_needle in fh.read().split(b"\0"):
                    out.append(int(entry))
        except OSError:
            continue
    return out


@pytest.fixture
def cli(spool_dir):
    runner = Cli(spool_dir)
    yield runner
    runner.cleanup()


def job_files(spool_dir, state):
    return sorted(n for n in os.listdir(os.path.join(spool_dir, state)) if n.endswith(".json"))


# ---------------------------------------------------------------- helpers of the end-to-end tests

def spool_snapshot(spool_dir, ignore=(".ids.lock", ".config.lock")):
    """Every entry under the spool: relative path -> (kind, size, content digest). For
    "nothing was changed" checks; lock files of spool-wide critical sections are ignored."""
    import hashlib
    out = {}
    for root, dirs, files in os.walk(spool_dir):
        for name in dirs + files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, spool_dir)
            if rel in ignore:
                continue
            st = os.lstat(path)
            if os.path.isdir(path) and not os.path.islink(path):
                out[rel] = ("dir", 0, "")
            else:
                with open(path, "rb") as fh:
                    digest = hashlib.sha1(fh.read()).hexdigest()
                out[rel] = ("file", st.st_size, digest)
    return out


def pid_gone(pid):
    """True when no process `pid` exists any more (a zombie counts as gone: PID 1 may not reap)."""
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


class Tail:
    """Reads a started process's output in a thread, so a full pipe never blocks it, and keeps
    it for assertions. Reads its own dup of the fd: closing proc.stdout does not disturb it."""

    def __init__(self, proc):
        import threading
        self.proc = proc
        self._fd = os.dup(proc.stdout.fileno())
        self._chunks = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while True:
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    break
                self._chunks.append(chunk)
        except OSError:
            pass
        finally:
            os.close(self._fd)

    def text(self):
        return b"".join(self._chunks).decode("utf-8", "replace")

    def wait_for(self, needle, timeout=10.0):
        return wait_until(lambda: needle in self.text(), timeout, what=f"{needle!r} in the output")


def tree_snapshot(root, skip_root_dotfiles=True):
    """{relative path: bytes | 'dir' | 'link->TARGET'} of everything under `root` (symlinks not
    followed). Root-level dot-files (lock files of the implementation) are left out by default."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if skip_root_dotfiles and rel_dir == "." and name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                out[rel] = "link->" + os.readlink(path)
            elif os.path.isdir(path):
                out[rel] = "dir"
            elif os.path.isfile(path):
                with open(path, "rb") as fh:
                    out[rel] = fh.read()
            else:
                out[rel] = "special"
    return out


STATE_FOLDERS = ("pending", "processing", "failed", "completed", "dead")


def read_job(spool_dir, job_id):
    """(folder, record) of a job read straight from the spool, or (None, None). The record is
    None while a move is between its two renames (its content still says the old state)."""
    from queuectl import names
    for state in STATE_FOLDERS:
        folder = os.path.join(spool_dir, state)
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            if job_id not in name or names.id_of(state, name) != job_id:
                continue
            try:
                with open(os.path.join(folder, name)) as fh:
                    record = json.load(fh)
            except (OSError, ValueError):
                return state, None
            return state, record if isinstance(record, dict) and record.get("state") == state else None
    return None, None


def wait_job(spool_dir, job_id, states, timeout=10.0, what=None):
    """Wait until the job sits in one of `states` with its move finished; returns the record."""
    states = (states,) if isinstance(states, str) else tuple(states)

    def settled():
        state, record = read_job(spool_dir, job_id)
        return record if state in states and record else None
    return wait_until(settled, timeout, what=what or f"job {job_id} in {'/'.join(states)}")
