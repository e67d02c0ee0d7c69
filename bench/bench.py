"""queuectl benchmarks, each beside a baseline measured in the same run (A B A B ...).

    python bench/bench.py            # full run (a few minutes)
    python bench/bench.py --quick    # proves the script works (CI)

Prints a table and the ratios, and writes bench/results/latest.json. The machines are
shared and noisy: read medians and same-run ratios, not single numbers.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from queuectl import Spool, timeutil  # noqa: E402

RAW_SPAWNER = """
import subprocess, sys
for _ in range(int(sys.argv[1])):
    subprocess.run(["/bin/sh", "-c", "true"])
"""


def env_for(spool_dir):
    env = dict(os.environ, QUEUECTL_SPOOL=spool_dir)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def raw_rate(jobs, procs=2):
    """The machine's limit: `procs` Python processes spawning /bin/sh -c true."""
    start = time.perf_counter()
    children = [subprocess.Popen([sys.executable, "-c", RAW_SPAWNER, str(jobs // procs)]) for _ in range(procs)]
    for child in children:
        child.wait()
    return jobs / (time.perf_counter() - start)


def drain_rate(jobs, workers=2):
    """Enqueue `jobs` x `true`, then time `worker start --count N --burst` until it exits."""
    tmp = tempfile.mkdtemp(prefix="qbench-")
    try:
        spool = Spool(os.path.join(tmp, "spool"))
        spool.enqueue_many([{"command": "true"} for _ in range(jobs)])
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "queuectl", "worker", "start", "--count", str(workers), "--burst"],
                       env=env_for(spool.path), stdout=subprocess.DEVNULL, check=True)
        elapsed = time.perf_counter() - start
        done = spool.counts()["completed"]
        assert done == jobs, f"only {done} of {jobs} completed"
        return jobs / elapsed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pickup_latencies(samples):
    """An idle worker; a file dropped into incoming/ (mv from tmp/), or `queuectl enqueue`:
    milliseconds from the drop (or the command's return) to the job's started_at."""
    tmp = tempfile.mkdtemp(prefix="qbench-")
    spool = Spool(os.path.join(tmp, "spool"))
    worker = subprocess.Popen([sys.executable, "-m", "queuectl", "worker", "run"], env=env_for(spool.path),
                              stdout=subprocess.DEVNULL, start_new_session=True)
    drop, cli = [], []
    try:
        _wait(lambda: os.listdir(spool.layout.workers), 10)
        for i in range(samples):
            time.sleep(0.05)  # let the worker go idle again
            staged = os.path.join(spool.layout.tmp, f"d{i}.json")
            with open(staged, "w") as fh:
                json.dump({"id": f"d{i}", "command": "true"}, fh)
            t0 = time.time()
            os.rename(staged, os.path.join(spool.layout.incoming, f"d{i}.json"))
            rec = _wait(lambda: _started(spool, f"d{i}"), 10)
            drop.append((timeutil.parse_iso(rec) - t0) * 1000)
        for i in range(samples):
            time.sleep(0.05)
            subprocess.run([sys.executable, "-m", "queuectl", "enqueue", "-c", "true", "--id", f"c{i}"],
                           env=env_for(spool.path), stdout=subprocess.DEVNULL, check=True)
            t0 = time.time()
            rec = _wait(lambda: _started(spool, f"c{i}"), 10)
            cli.append(max(0.0, (timeutil.parse_iso(rec) - t0) * 1000))
    finally:
        worker.terminate()
        worker.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return drop, cli


def _started(spool, job_id):
    found = spool.find(job_id)
    if found and found[0] == "completed":
        return spool.get(job_id)["started_at"]
    return None


def _wait(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.001)
    raise RuntimeError("benchmark wait timed out")


def cli_startup(runs):
    """Wall time of one `queuectl enqueue` vs `python -c 'import click'` (interleaved)."""
    tmp = tempfile.mkdtemp(prefix="qbench-")
    env = env_for(os.path.join(tmp, "spool"))
    base, ours = [], []
    try:
        for i in range(runs):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import click"], check=True)
            base.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "queuectl", "enqueue", "-c", "true"], env=env,
                           stdout=subprocess.DEVNULL, check=True)
            ours.append(time.perf_counter() - t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return base, ours


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the script works")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    jobs = 100 if args.quick else 2000
    rounds = args.rounds or (1 if args.quick else 3)
    samples = 5 if args.quick else 30

    raw, drain = [], []
    for _ in range(rounds):  # A B A B: drift of the machine hits both alike
        raw.append(raw_rate(jobs))
        drain.append(drain_rate(jobs))
    drop, cli = pickup_latencies(samples)
    base, ours = cli_startup(3 if args.quick else 15)

    med = statistics.median
    results = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "jobs": jobs, "rounds": rounds,
        "raw_spawn_per_s": med(raw), "drain_per_s": med(drain), "drain_vs_raw": med(drain) / med(raw),
        "pickup_drop_ms_p50": med(drop), "pickup_enqueue_ms_p50": med(cli),
        "click_import_s": med(base), "enqueue_cli_s": med(ours), "enqueue_vs_click": med(ours) / med(base),
    }
    rows = [
        ("drain: 2 workers, `true` jobs/s", f"{med(drain):.0f}", f"raw spawn {med(raw):.0f}/s", f"{results['drain_vs_raw']:.2f}x"),
        ("pickup of a dropped file, p50", f"{med(drop):.1f} ms", "", ""),
        ("pickup after `queuectl enqueue`, p50", f"{med(cli):.1f} ms", "", ""),
        ("`queuectl enqueue` wall time", f"{med(ours) * 1000:.0f} ms", f"import click {med(base) * 1000:.0f} ms",
         f"{results['enqueue_vs_click']:.2f}x"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'queuectl':>10}  {'baseline':<24} ratio")
    for name, value, baseline, ratio in rows:
        print(f"{name:<{width}}  {value:>10}  {baseline:<24} {ratio}")
    out_dir = os.path.join(ROOT, "bench", "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "latest.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"\nJSON: {os.path.join(out_dir, 'latest.json')}")


if __name__ == "__main__":
    main()
