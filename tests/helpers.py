"""Helpers shared by the tests (plain functions and classes; the fixtures are in conftest.py).

Import what you need: `from helpers import wait_until, read_job`. Sections:

- waiting: wait_until
- the real CLI in subprocesses: QUEUECTL, cli_env, Cli (the `cli` fixture), Tail, run_cli,
  is_one_line_error, fsck_json
- processes: run_bounded (a run that never waits past its bound), process_state, pid_gone,
  pids, command_line, spool_processes (the processes of a spool), leaked_processes (what conftest's leak check looks for)
- reading a spool: STATE_FOLDERS, job_files, state_counts, read_job_file, state_records, and
  "where is job X?", by what the test needs:
    job_places(spool_dir, id)  every (state, file name) holding it, from the names: to check
                               that there is exactly one
    find_job(spool, id)        (state, file name) as Spool.find sees it; fails the test if none
    job_state(spool, id)       its state as Spool.find sees it, or None
    read_job(spool_dir, id)    (state, record), the record only once a move has finished
    wait_job(spool_dir, id, states)  waits for read_job to show one of `states`
- writing into a spool: drop (the drop box), write_final (a finished job file)
- snapshots, for "nothing was changed" checks: tree_snapshot, outside_snapshot
- reporting: report_line (a line on the terminal under output capture)
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUEUECTL = (sys.executable, "-m", "queuectl")  # the CLI from this checkout: [*QUEUECTL, "status"]
STATE_FOLDERS = ("blocked", "pending", "processing", "failed", "completed", "dead")
# the lock files of the spool-wide critical sections (queuectl/paths.py): implementation, not state
SPOOL_LOCK_FILES = (".config.lock", ".ids.lock")


# ---------------------------------------------------------------- waiting

def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Poll `predicate` until it returns a truthy value (returned); fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------- the real CLI in subprocesses

def cli_env(spool_dir, **extra):
    """The environment of a CLI process of this checkout on `spool_dir`; `extra` on top."""
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
        """Run one command to its end: a subprocess.CompletedProcess with text stdout/stderr."""
        return subprocess.run([*QUEUECTL, *args], input=input,
                              capture_output=True, text=True, timeout=timeout,
                              env=cli_env(self.spool_dir, **(env or {})), cwd=cwd or ROOT)

    def json(self, *args, **kw):
        """The parsed stdout of `ARGS --json`, which must succeed."""
        result = self(*args, "--json", **kw)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def show(self, job_id):
        """The record `show JOB_ID --json` prints."""
        return self.json("show", job_id)

    def log(self, job_id):
        """What `logs JOB_ID` prints, which must succeed."""
        result = self("logs", job_id)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def live_workers(self):
        """The live workers `status --json` lists."""
        return self.json("status")["workers"]

    def start(self, *args, env=None):
        """Start a long-running command (e.g. `worker start`) in the background."""
        proc = subprocess.Popen([*QUEUECTL, *args], stdout=subprocess.PIPE,
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

    def cleanup(self):
        """Kill everything this test started on its spool (the `cli` fixture's teardown)."""
        self._kill_extra()
        for proc in self.procs:
            kill_process_group(proc)
            if proc.stdout:
                proc.stdout.close()
        # workers live in their own process groups, and a supervisor killed just now may have
        # started one that is not registered yet: find them by this test's unique spool path
        # in their command line, and stop them by pid (twice, for late replacements)
        for _ in range(2):
            for pid in spool_processes(self.spool_dir, queuectl_only=True):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        self._kill_extra()  # jobs left behind by killed workers


class Tail:
    """Reads a started process's output in a thread, so a full pipe never blocks it, and keeps
    it for assertions. Reads its own dup of the fd: closing proc.stdout does not disturb it."""

    def __init__(self, proc):
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


def run_cli(spool_dir, args, timeout=60, env=None, input=None):
    """`python -m queuectl ARGS` against spool_dir, for spools the `cli` fixture does not know
    (a tmpfs mount, a module-wide spool); args may be str or bytes. Returns (returncode,
    stdout text, stderr text), decoded leniently."""
    proc = subprocess.run([*QUEUECTL, *args], input=input,
                          capture_output=True, timeout=timeout, cwd=ROOT,
                          env=cli_env(spool_dir, **(env or {})))
    return (proc.returncode, proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"))


def is_one_line_error(stderr):
    """A refusal as the CLI should print it: one line, no traceback."""
    text = stderr.strip()
    return bool(text) and "\n" not in text and "Traceback" not in stderr


def fsck_json(spool_dir, timeout=120):
    """(exit code, report) of `fsck --json` through the CLI; exit 0 (clean) or 1 (problems)."""
    code, out, err = run_cli(spool_dir, ["fsck", "--json"], timeout=timeout)
    assert "Traceback" not in err
    assert code in (0, 1), err
    return code, json.loads(out)


# ---------------------------------------------------------------- processes

def process_state(pid):
    """The state letter of process `pid` in /proc (R, S, Z, ...), or None if there is none."""
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def pid_gone(pid):
    """True when no process `pid` exists any more (a zombie counts as gone: PID 1 may not reap)."""
    return process_state(pid) in (None, "Z", "X")


def pids():
    """The pids of every process now."""
    return {int(entry) for entry in os.listdir("/proc") if entry.isdigit()}


def _mentions(arg, path):
    """Whether one command-line argument names `path` or something under it."""
    at = arg.find(path)
    while at >= 0:
        end = at + len(path)
        if end == len(arg) or arg[end] in "/ '\"=:;":
            return True
        at = arg.find(path, at + 1)
    return False


def spool_processes(spool_dir, queuectl_only=False, among=None):
    """Pids of the live (not zombie) processes of spool_dir: QUEUECTL_SPOOL=SPOOL_DIR in their
    environment (the CLI's and every job's: workers set it) or the path in their command line.
    queuectl_only: only `python -m queuectl` processes. among: look only at these pids."""
    paths = {spool_dir, os.path.realpath(spool_dir)}
    env_needles = {f"QUEUECTL_SPOOL={p}".encode() for p in paths}
    out = []
    for pid in sorted(pids() if among is None else among):
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = fh.read().split(b"\0")
            if queuectl_only and b"queuectl" not in args:
                continue
            text = [a.decode("utf-8", "replace") for a in args]
            mine = any(_mentions(a, p) for a in text for p in paths)
            if not mine:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    mine = bool(env_needles.intersection(fh.read().split(b"\0")))
        except OSError:
            continue
        if mine and not pid_gone(pid):
            out.append(pid)
    return out


def run_bounded(argv, timeout, input=None, env=None, cwd=None):
    """subprocess.run(argv, capture_output=True, text=True, timeout=timeout) that never waits
    past its bound. A process blocked on a FUSE request its daemon already took survives
    SIGKILL until the daemon answers, and subprocess.run waits for it after the kill without
    a bound: a hung filesystem would hang the test run."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{' '.join(argv[-4:])}: no end within {timeout:g}s, and alive 10 s after "
                                 f"SIGKILL: stuck on a filesystem that does not answer") from None
        raise subprocess.TimeoutExpired(argv, timeout, out, err) from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def kill_process_group(proc, timeout=10):
    """SIGKILL a started process's group (it leads its own session) and reap it, bounded."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def command_line(pid):
    """The command line of process `pid` as one string ('?' if it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return " ".join(a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a) or "?"
    except OSError:
        return "?"


def leaked_processes(spool_dir, among=None, grace=2.0):
    """{pid: command line} of the processes of spool_dir still alive after up to `grace` s
    (processes on their way out get that long). among: only these pids are candidates (the
    ones created during a test: a process that knows the test's spool is one of them)."""
    deadline = time.monotonic() + grace
    while True:
        left = spool_processes(spool_dir, among=among)
        if not left or time.monotonic() >= deadline:
            return {pid: command_line(pid) for pid in left}
        time.sleep(0.05)


# ---------------------------------------------------------------- reading a spool

def job_files(spool_dir, state):
    """The sorted *.json names in a folder of the spool."""
    return sorted(n for n in os.listdir(os.path.join(spool_dir, state)) if n.endswith(".json"))


def state_counts(spool_dir, states=STATE_FOLDERS):
    """{folder: number of *.json files in it}."""
    return {state: len(job_files(spool_dir, state)) for state in states}


def read_job_file(spool_dir, state, name):
    """The parsed content of STATE/NAME in the spool."""
    with open(os.path.join(spool_dir, state, name), "rb") as fh:
        return json.loads(fh.read())


def state_records(spool_dir, state):
    """The records of the job files in a state folder; a file that moves away meanwhile (or is
    between the two renames of a move) is left out."""
    out = []
    for name in job_files(spool_dir, state):
        try:
            out.append(read_job_file(spool_dir, state, name))
        except (OSError, ValueError):
            pass
    return out


def claim_started(spool, name, host, pid):
    """Claim pending/NAME for worker HOST:PID and write the attempt's log header, as a worker
    does just before the command starts: a take-back then counts the attempt. Returns Held."""
    from queuectl import logs
    held = spool.moves.claim(name, host, pid)
    with open(spool.layout.log(held.record["id"]), "ab") as fh:
        fh.write(logs.header(held.record, held.record["worker"]))
    return held


def job_places(spool_dir, job_id):
    """Every (state folder, file name) that holds job `job_id`, by name."""
    from queuectl import names
    out = []
    for state in STATE_FOLDERS:
        for name in os.listdir(os.path.join(spool_dir, state)):
            if names.id_of(state, name) == job_id:
                out.append((state, name))
    return out


def find_job(spool, job_id):
    """(state, file name) of job `job_id` as Spool.find sees it; fails the test if it has none."""
    found = spool.find(job_id)
    assert found, f"job {job_id} not found"
    return found


def job_state(spool, job_id):
    """The state folder of job `job_id` as Spool.find sees it, or None if it has none."""
    found = spool.find(job_id)
    return found[0] if found else None


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
            claim = names.parse_processing(name) if state == "processing" else None
            if claim and claim.started is not None and isinstance(record, dict):
                from queuectl.job import running_record
                return state, running_record(record, claim)  # a claim leaves its record as it was
            return state, record if isinstance(record, dict) and record.get("state") == state else None
    return None, None


def wait_job(spool_dir, job_id, states, timeout=10.0, what=None):
    """Wait until the job sits in one of `states` with its move finished; returns the record."""
    states = (states,) if isinstance(states, str) else tuple(states)

    def settled():
        state, record = read_job(spool_dir, job_id)
        return record if state in states and record else None
    return wait_until(settled, timeout, what=what or f"job {job_id} in {'/'.join(states)}")


# ---------------------------------------------------------------- writing into a spool

def drop(spool_dir, name, content):
    """Drop a file into incoming/ the safe way (docs/contract.md "Dropping files"): write it
    in tmp/, then rename it into incoming/NAME. content: str or bytes. Returns its path."""
    staged = os.path.join(spool_dir, "tmp", f".drop-{os.getpid()}-{time.monotonic_ns()}.part")
    with open(staged, "wb") as fh:
        fh.write(content if isinstance(content, bytes) else content.encode())
    path = os.path.join(spool_dir, "incoming", name)
    os.rename(staged, path)
    return path


def write_final(spool_dir, state, job_id, mtime=None, **fields):
    """A finished job file (completed/ or dead/) written the way the spool holds one, for the
    read-only views; `fields` override the record's, `mtime` sets the file's. Returns the record."""
    rec = {"id": job_id, "command": f"echo {job_id}", "state": state, "attempts": 1,
           "max_retries": 0, "priority": 10, "run_at": None, "timeout_seconds": None, "cwd": None,
           "env": None, "created_at": "2026-11-24T10:00:00.000Z", "updated_at": "2026-11-24T10:00:01.000Z",
           "started_at": "2026-11-24T10:00:00.500Z", "finished_at": "2026-11-24T10:00:01.000Z",
           "exit_code": 0 if state == "completed" else 3, "last_error": None if state == "completed" else "exit code 3",
           "worker": "h:1"}
    rec.update(fields)
    path = os.path.join(spool_dir, state, job_id + ".json")
    with open(path, "w") as fh:
        json.dump(rec, fh)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return rec


# ---------------------------------------------------------------- snapshots

def tree_snapshot(root, ignore=SPOOL_LOCK_FILES, mtimes=False):
    """{relative path: bytes | 'dir' | 'link->TARGET' | 'special'} of everything under `root`
    (symlinks not followed), for "nothing was changed" checks. ignore: relative paths left out
    with everything under them; by default the spool's lock files (pass () to see them).
    mtimes: the values of all but folders become (value, mtime_ns), to see a mere touch too."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(rel_dir, d)) not in ignore]
        for name in dirnames + filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel in ignore:
                continue
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                value = "link->" + os.readlink(path)
            elif os.path.isdir(path):
                out[rel] = "dir"
                continue
            elif os.path.isfile(path):
                with open(path, "rb") as fh:
                    value = fh.read()
            else:
                value = "special"
            out[rel] = (value, os.lstat(path).st_mtime_ns) if mtimes else value
    return out


def outside_snapshot(parent, spool_name="spool"):
    """A tree_snapshot, with mtimes, of everything under `parent` but the spool PARENT/SPOOL_NAME:
    to check that nothing outside the spool was written, created or touched."""
    return tree_snapshot(parent, ignore=(spool_name,), mtimes=True)


# ---------------------------------------------------------------- reporting

def report_line(config, line):
    """Print a line on the terminal even under output capture (for measured numbers)."""
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if reporter is None:
        return
    if capman is not None:
        with capman.global_and_fixture_disabled():
            reporter.write_line(line)
    else:
        reporter.write_line(line)
