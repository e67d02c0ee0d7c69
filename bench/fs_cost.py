"""What a worker costs a (shared) filesystem: metadata operations per job, and per second
when idle, counted with `strace -f -c` on a real worker.

    python3 bench/fs_cost.py SPOOL_PARENT [--jobs 300] [--idle 10] [--limit N] [--queues K] [--waiting] [--outcomes]

SPOOL_PARENT is a folder on the filesystem to measure (a local disk, or a mount of the
multi-host test bed: /tmp/queuectl-bed/mnt/host1). Prints one table: operations per job
by kind (opens, renames, links, unlinks, fsyncs, listings, stats, locks), and the same per
second for an idle worker (after its start-up). Needs strace (Debian `strace`).
`--limit N`: the jobs are in a queue limited to N (each claim takes a slot); `--queues K`: the
spool has K queues with settings (limits) while the worker idles; `--waiting`: while it idles,
one job waits for a place in a queue limited to 0 (on a shared spool the worker then waits in
the queue's line and tries again every 0.3 s: turns.py). Per job is marginal: one worker
drains JOBS, another 2*JOBS, and the difference is divided by JOBS, so start-up and stop
cancel out. `--outcomes`: also per job for a job that fails once and completes on its retry,
and for one that dies on its first attempt (no retries).
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = {
    "open": ("openat", "open", "creat"),
    "rename": ("rename", "renameat", "renameat2"),
    "link": ("link", "linkat"),
    "unlink": ("unlink", "unlinkat"),
    "fsync": ("fsync", "fdatasync", "syncfs"),
    "listing": ("getdents64", "getdents"),
    "stat": ("stat", "lstat", "newfstatat", "statx", "fstat", "access", "faccessat2", "utimensat"),
    "lock": ("flock", "fcntl"),
    "read/write": ("read", "write", "pread64", "pwrite64"),
}


LOCK_COMMAND = re.compile(r"F_(?:OFD_)?(?:SETLKW?|GETLK)\b")
STARTUP = 4.0  # seconds a worker under strace takes to start before it idles
TRACED = "trace=" + ",".join(sorted({c for calls in KINDS.values() for c in calls}))


def strace_counts(path, spool, window=None):
    """{syscall: calls that name a path in the spool} from `strace -f -y` output (-y prints
    the path of each descriptor, so reads of a job file count, the job's own exec does not).
    With `window` (start, end) in Unix seconds, only calls made then (the output needs -ttt)."""
    counts = {}
    call = re.compile(r"^(?:\[pid\s+\d+\]\s+|\d+\s+)?(?:(\d+\.\d+)\s+)?(\w+)\(")
    with open(path, errors="replace") as fh:
        for line in fh:
            m = call.match(line)
            if not m or spool not in line:
                continue
            if window and not (m.group(1) and window[0] <= float(m.group(1)) < window[1]):
                continue
            if m.group(2) == "fcntl" and not LOCK_COMMAND.search(line):
                continue  # F_DUPFD, F_SETFD, F_GETFL...: the process's own descriptors, no filesystem call
            counts[m.group(2)] = counts.get(m.group(2), 0) + 1
    return counts


def by_kind(counts):
    return {kind: sum(counts.get(c, 0) for c in calls) for kind, calls in KINDS.items()}


def env():
    return dict(os.environ, PYTHONPATH=ROOT)


def queuectl(spool, *args, **kw):
    return subprocess.run([sys.executable, "-m", "queuectl", "--spool", spool, *args], env=env(),
                          capture_output=True, text=True, check=True, **kw)


def traced_burst(spool, trace):
    """Run one `worker run --burst` under strace; return its calls on the spool by kind."""
    subprocess.run(["strace", "-f", "-y", "-qq", "-e", TRACED, "-o", trace, sys.executable, "-m", "queuectl",
                    "--spool", spool, "worker", "run", "--burst"], env=env(), cwd=ROOT, capture_output=True, check=True)
    return by_kind(strace_counts(trace, spool))


def drain_calls(parent, out, outcome, jobs, limit=None):
    """Calls on the spool, by kind, of one worker draining `jobs` jobs with this outcome:
    `complete` (`true`), `dead` (`false`, no retry) or `retry` (fails once, then completes:
    a second burst worker runs the retries left once their 1 s backoff is over). Returns
    (calls, seconds, the drained spool, which the caller removes)."""
    spool = tempfile.mkdtemp(prefix="fscost-", dir=parent)
    os.chmod(spool, 0o700)
    job = {"command": "true"}
    if limit is not None:
        queuectl(spool, "queue", "set", "bench", "--limit", str(limit))
        job["queue"] = "bench"
    if outcome == "dead":
        job.update(command="false", max_retries=0)
    elif outcome == "retry":
        queuectl(spool, "config", "set", "backoff-base", "1")  # 1 ** attempts: every retry due after 1 s
        job.update(command='[ "$QUEUECTL_ATTEMPT" -gt 1 ]', max_retries=1)
    queuectl(spool, "enqueue", "--no-capture-env", "--file", "-", input="\n".join(json.dumps(job) for _ in range(jobs)))
    started = time.monotonic()
    calls = traced_burst(spool, os.path.join(out, f"{outcome}-{jobs}"))
    if outcome == "retry":
        time.sleep(1.5)  # the last failure's retry is due 1 s after it
        again = traced_burst(spool, os.path.join(out, f"{outcome}-{jobs}-again"))
        calls = {kind: calls[kind] + again[kind] for kind in calls}
    elapsed = time.monotonic() - started
    left = sum(len(os.listdir(os.path.join(spool, folder))) for folder in ("pending", "processing", "failed"))
    if left:
        raise SystemExit(f"{outcome}: {left} jobs were left undone in {spool}")
    return calls, elapsed, spool


def marginal(parent, out, outcome, jobs, limit=None):
    """Calls per job, by kind, as the difference of a drain of 2*jobs and one of jobs: a
    worker's start and stop cancel out. Also the calls of the first drain over its jobs,
    the seconds of the second, and its spool (left for the caller to remove)."""
    few, _, spool = drain_calls(parent, out, outcome, jobs, limit)
    shutil.rmtree(spool, ignore_errors=True)
    many, elapsed, spool = drain_calls(parent, out, outcome, 2 * jobs, limit)
    steady = {kind: (many[kind] - few[kind]) / jobs for kind in KINDS}
    return steady, {kind: few[kind] / jobs for kind in KINDS}, elapsed, spool


def idle_calls(spool, out, seconds, queues, waiting):
    """Calls on the spool, by kind, per second of an idle worker (after its start-up), on a
    spool a drain has just left (its folders' stamps settled, as a spool's in use are)."""
    try:
        for i in range(queues):
            queuectl(spool, "queue", "set", f"idle-{i}", "--limit", "2")
        if waiting:
            queuectl(spool, "queue", "set", "full", "--limit", "0")
            queuectl(spool, "enqueue", "--no-capture-env", "-q", "full", "true")
        trace = os.path.join(out, "idle")
        proc = subprocess.Popen(["strace", "-f", "-y", "-ttt", "-qq", "-e", TRACED, "-o", trace, sys.executable,
                                 "-m", "queuectl", "--spool", spool, "worker", "run"], env=env(), cwd=ROOT,
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(STARTUP)
        window = (time.time(), time.time() + seconds)  # idle only: start-up and stop left out
        time.sleep(seconds + 0.5)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        return {kind: n / seconds for kind, n in by_kind(strace_counts(trace, spool, window)).items()}
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parent")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--limit", type=int, help="put the jobs in a queue with this limit")
    parser.add_argument("--queues", type=int, default=0, help="queues with settings while idle")
    parser.add_argument("--waiting", action="store_true", help="a job waits for a place while the worker idles")
    parser.add_argument("--outcomes", action="store_true", help="also a job that retries once, and a dead job")
    args = parser.parse_args(argv)
    if not shutil.which("strace"):
        print("strace is not installed (apt-get install strace)", file=sys.stderr)
        return 2
    out = tempfile.mkdtemp(prefix="fscost-strace-")
    try:
        columns = {}
        steady, whole, elapsed, drained = marginal(args.parent, out, "complete", args.jobs, args.limit)
        columns["per job"], columns[f"over {args.jobs}"] = steady, whole
        if args.outcomes:
            for outcome, title in (("retry", "retried once"), ("dead", "dead")):
                columns[title], _, _, spool = marginal(args.parent, out, outcome, args.jobs, args.limit)
                shutil.rmtree(spool, ignore_errors=True)
        columns["idle, per s"] = idle_calls(drained, out, args.idle, args.queues, args.waiting)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    queue = f"a queue limited to {args.limit}" if args.limit is not None else "the default queue (no limit)"
    print(f"filesystem of {args.parent}: one worker drains {args.jobs}, then {2 * args.jobs} jobs of {queue} "
          f"({elapsed:.1f}s for {2 * args.jobs} under strace, so slower than without); calls on the spool's files only. "
          f"Per job: the difference of the two drains over {args.jobs} (a worker's start and stop cancel out); "
          f"over {args.jobs}: the first drain's calls over its jobs, start and stop included. Idle: "
          f"{args.queues} queues with settings" + (", a job waits for a place" if args.waiting else "") + ".")
    print("".join(f"{name:>14}" for name in ["operation", *columns]))
    for kind in [*KINDS, "total"]:
        cells = [sum(column.values()) if kind == "total" else column[kind] for column in columns.values()]
        print(f"{kind:>14}" + "".join(f"{cell:>14.{2 if i == len(cells) - 1 else 1}f}" for i, cell in enumerate(cells)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
