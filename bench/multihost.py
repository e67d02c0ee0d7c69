"""Jobs/s of a shared spool by host count, claim contention, and a worker's operations per
job, on the multi-host test bed (testbed/bed.py; root, /dev/fuse), beside the local disk,
in one run.

    python3 bench/multihost.py [--jobs 400] [--fs glusterfs moosefs] [--baseline REF --rounds 3 [--setups 3x2]]

For each filesystem: 1 host x 2 workers, 3 hosts x 2 workers, and 3 hosts x 4 workers
claiming from one pending/ (contention); each drains N `true` jobs enqueued on host 1
(`worker start --burst`), timed from the workers' start to the last one's exit. Claims lost
to other workers come from the workers' own count (their "stopped" line). Then
bench/fs_cost.py on host 1's mount: operations per job and per idle second. Without
--baseline each figure is one drain, so quote them with the load (printed).

--baseline REF (a git commit, e.g. the last release) measures that version's code in the
same run: each setup drains with the baseline and with this tree in turn, --rounds times,
and the table gives the median of each side and the median of the per-round ratios.
--setups picks some of 1x2, 3x2 and 3x4 (hosts x workers per host).
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "testbed"))
import bed  # noqa: E402


def env(code=ROOT):
    return dict(os.environ, PYTHONPATH=code)


def checkout(ref):
    """The tree of git commit `ref`, extracted into a temporary folder (its `queuectl` package)."""
    folder = tempfile.mkdtemp(prefix="bench-baseline-")
    archive = subprocess.run(["git", "-C", ROOT, "archive", ref, "queuectl"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def drain(mounts, jobs, workers_per_host, code=ROOT):
    """Drain `jobs` enqueued through mounts[0] with workers on every mount. -> (seconds, won, lost)."""
    spool_name = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    spools = [os.path.join(m, spool_name) for m in mounts]
    os.makedirs(spools[0], mode=0o700)
    batch = "\n".join(json.dumps({"command": "true"}) for _ in range(jobs))
    subprocess.run([sys.executable, "-m", "queuectl", "--spool", spools[0], "enqueue", "--file", "-"],
                   input=batch, text=True, env=env(code), cwd=code, check=True, capture_output=True)
    started = time.monotonic()
    procs = []
    for i, spool in enumerate(spools):
        argv = [sys.executable, "-m", "queuectl", "--spool", spool, "worker", "start", "--count",
                str(workers_per_host), "--burst"]
        if len(mounts) > 1:
            argv = bed.host_command(f"host{i + 1}", argv)
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=env(code), cwd=code))
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    elapsed = time.monotonic() - started
    won = sum(int(m) for out in outputs for m in re.findall(r"\((\d+) job\(s\) claimed", out))
    lost = sum(int(m) for out in outputs for m in re.findall(r"(\d+) claim\(s\) lost", out))
    counts = json.loads(subprocess.run([sys.executable, "-m", "queuectl", "--spool", spools[0], "status", "--json"],
                                       env=env(code), check=True, capture_output=True, text=True).stdout)["counts"]
    if counts["completed"] != jobs:
        raise SystemExit(f"only {counts['completed']} of {jobs} completed: {counts}")
    if won != jobs:  # each job claimed once: none lost, none run twice
        raise SystemExit(f"{won} claims won for {jobs} jobs")
    return elapsed, won, lost


def compared(label, jobs, setup, baseline, rounds):
    """A table row: this tree against the baseline's code, `rounds` interleaved pairs."""
    ours, theirs, ratios = [], [], []
    for i in range(rounds):
        pair = {}
        for side in (("base", "new") if i % 2 == 0 else ("new", "base")):
            pair[side] = jobs / setup(ROOT if side == "new" else baseline)[0]
        ours.append(pair["new"])
        theirs.append(pair["base"])
        ratios.append(pair["new"] / pair["base"])
    return (f"| {label} | {statistics.median(ours):.0f} | {statistics.median(theirs):.0f} | "
            f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")


def row(label, jobs, result):
    elapsed, won, lost = result
    return f"| {label} | {jobs / elapsed:.0f} | {elapsed:.1f} | {lost / max(won, 1):.2f} |"


SETUPS = {"1x2": (1, 2), "3x2": (3, 2), "3x4": (3, 4)}  # hosts x workers per host


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--fs", nargs="+", default=list(bed.FILESYSTEMS), choices=bed.FILESYSTEMS)
    parser.add_argument("--baseline", help="a git commit whose code is measured in the same run")
    parser.add_argument("--rounds", type=int, default=3, help="pairs per setup with --baseline")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS),
                        help="hosts x workers per host to measure with --baseline (default: all)")
    args = parser.parse_args(argv)
    reason = bed.unavailable()
    if reason:
        print(f"skipped: {reason}", file=sys.stderr)
        return 2
    if args.baseline:
        return compare(args)
    print(f"load before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores")
    lines = ["| setup | jobs/s | seconds | claims lost per job |", "|---|---|---|---|"]
    local = tempfile.mkdtemp(prefix="bench-local-")
    lines.append(row("local disk, 1 host x 2 workers", args.jobs, drain([local], args.jobs, 2)))
    costs = {}
    for fs in args.fs:
        state = bed.up(fs, hosts=3)
        try:
            mounts = [h["mount"] for h in state["hosts"]]
            lines.append(row(f"{fs}, 1 host x 2 workers", args.jobs, drain(mounts[:1], args.jobs, 2)))
            lines.append(row(f"{fs}, 3 hosts x 2 workers", args.jobs, drain(mounts, args.jobs, 2)))
            lines.append(row(f"{fs}, 3 hosts x 4 workers", args.jobs, drain(mounts, args.jobs, 4)))
            costs[fs] = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "fs_cost.py"), mounts[0],
                                        "--jobs", "200", "--idle", "20"], env=env(), capture_output=True,
                                       text=True).stdout
        finally:
            bed.down()
    print("\n".join(lines))
    for fs, text in costs.items():
        print(f"\n{fs}:\n{text}")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


def compare(args):
    baseline = checkout(args.baseline)
    try:
        return _compare(args, baseline)
    finally:
        shutil.rmtree(baseline, ignore_errors=True)


def _compare(args, baseline):
    print(f"load before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores; baseline {args.baseline}, "
          f"{args.rounds} interleaved pairs per setup, {args.jobs} `true` jobs per drain")
    lines = [f"| setup | jobs/s, this tree | jobs/s, {args.baseline} | ratio (range) |", "|---|---|---|---|"]
    local = tempfile.mkdtemp(prefix="bench-local-")
    lines.append(compared("local disk, 1 host x 2 workers", args.jobs,
                          lambda code: drain([local], args.jobs, 2, code), baseline, args.rounds))
    for fs in args.fs:
        state = bed.up(fs, hosts=3)
        try:
            mounts = [h["mount"] for h in state["hosts"]]
            for hosts, per_host in (SETUPS[name] for name in args.setups):
                lines.append(compared(f"{fs}, {hosts} host(s) x {per_host} workers", args.jobs,
                                      lambda code: drain(mounts[:hosts], args.jobs, per_host, code),
                                      baseline, args.rounds))
                print(lines[-1], flush=True)
        finally:
            bed.down()
    print("\n".join(lines))
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
