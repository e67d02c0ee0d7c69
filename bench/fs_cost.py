"""What a worker costs a (shared) filesystem: metadata operations per job, and per second
when idle, counted with `strace -f -c` on a real worker.

    python3 bench/fs_cost.py SPOOL_PARENT [--jobs 300] [--idle 10] [--limit N] [--queues K] [--waiting]

SPOOL_PARENT is a folder on the filesystem to measure (a local disk, or a mount of the
multi-host test bed: /tmp/queuectl-bed/mnt/host1). Prints one table: operations per job
by kind (opens, renames, links, unlinks, fsyncs, listings, stats, locks), and the same per
second for an idle worker (after its start-up). Needs strace (Debian `strace`).
`--limit N`: the jobs are in a queue limited to N (each claim takes a slot); `--queues K`: the
spool has K queues with settings (limits) while the worker idles; `--waiting`: while it idles,
one job waits for a place in a queue limited to 0 (on a shared spool the worker then waits in
the queue's line and tries again every 0.3 s: turns.py).
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parent")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--limit", type=int, help="put the jobs in a queue with this limit")
    parser.add_argument("--queues", type=int, default=0, help="queues with settings while idle")
    parser.add_argument("--waiting", action="store_true", help="a job waits for a place while the worker idles")
    args = parser.parse_args(argv)
    if not shutil.which("strace"):
        print("strace is not installed (apt-get install strace)", file=sys.stderr)
        return 2
    spool = tempfile.mkdtemp(prefix="fscost-", dir=args.parent)
    os.chmod(spool, 0o700)
    out = tempfile.mkdtemp(prefix="fscost-strace-")
    try:
        job = {"command": "true"}
        if args.limit is not None:
            queuectl(spool, "queue", "set", "bench", "--limit", str(args.limit))
            job["queue"] = "bench"
        for i in range(args.queues):
            queuectl(spool, "queue", "set", f"idle-{i}", "--limit", "2")
        jobs = "\n".join(json.dumps(job) for _ in range(args.jobs))
        queuectl(spool, "enqueue", "--no-capture-env", "--file", "-", input=jobs)
        trace = os.path.join(out, "drain")
        started = time.monotonic()
        subprocess.run(["strace", "-f", "-y", "-qq", "-e", TRACED, "-o", trace, sys.executable, "-m", "queuectl",
                        "--spool", spool, "worker", "run", "--burst"], env=env(), cwd=ROOT, capture_output=True, check=True)
        elapsed = time.monotonic() - started
        drain = by_kind(strace_counts(trace, spool))
        if args.waiting:
            queuectl(spool, "queue", "set", "full", "--limit", "0")
            queuectl(spool, "enqueue", "--no-capture-env", "-q", "full", "true")
        idle_trace = os.path.join(out, "idle")
        proc = subprocess.Popen(["strace", "-f", "-y", "-ttt", "-qq", "-e", TRACED, "-o", idle_trace, sys.executable,
                                 "-m", "queuectl", "--spool", spool, "worker", "run"], env=env(), cwd=ROOT,
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(STARTUP)
        window = (time.time(), time.time() + args.idle)  # idle only: start-up and stop left out
        time.sleep(args.idle + 0.5)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        idle = by_kind(strace_counts(idle_trace, spool, window))
    finally:
        shutil.rmtree(spool, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    queue = f"a queue limited to {args.limit}" if args.limit is not None else "the default queue (no limit)"
    print(f"filesystem of {args.parent}: {args.jobs} jobs of {queue} drained by one worker in {elapsed:.1f}s "
          f"(under strace, so slower than without); {args.queues} other queues with settings; "
          + ("while idle, a job waits for a place; " if args.waiting else "") +
          "calls on the spool's files only")
    print(f"{'operation':<12}{'per job':>10}{'idle, per s':>14}")
    for kind in KINDS:
        print(f"{kind:<12}{drain[kind] / args.jobs:>10.1f}{idle[kind] / args.idle:>14.2f}")
    print(f"{'total':<12}{sum(drain.values()) / args.jobs:>10.1f}{sum(idle.values()) / args.idle:>14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
