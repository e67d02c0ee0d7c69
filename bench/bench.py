"""queuectl benchmarks, each beside a baseline measured in the same run.

    python bench/bench.py            # full run (about 10 minutes)
    python bench/bench.py --quick    # tiny sizes: proves the script works (the test suite runs it)

Drain and pickup runs interleave queuectl with its baselines (A B A B ...) so the drift of a
shared machine hits both alike. Prints a table and the ratios, and writes
bench/results/latest.json. Read medians and same-run ratios, not single numbers.

Baselines: the machine's raw rate of spawning /bin/sh -c true from 2 Python processes;
task-spooler (`tsp`, Debian package task-spooler) with 2 slots, when installed; a raw loop
that writes and renames files with the same durability as a batch enqueue; `python -c
"import click"` for start-up.
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
from queuectl.fsutil import syncfs  # noqa: E402

RAW_SPAWNER = """
import subprocess, sys
for _ in range(int(sys.argv[1])):
    subprocess.run(["/bin/sh", "-c", "true"])
"""
med = statistics.median


def env_for(spool_dir, **extra):
    env = dict(os.environ, QUEUECTL_SPOOL=spool_dir, **extra)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def queuectl(*args, spool_dir, **kw):
    return subprocess.run([sys.executable, "-m", "queuectl", *args], env=env_for(spool_dir), **kw)


class Scratch:
    """A scratch folder, removed when the whole benchmark ends, not after each run: on ext4
    without a journal (these machines) every file created in the next few minutes skips over
    the inodes just freed, so deleting one run's spool would slow the next run down (by up to
    1 ms per created file, for queuectl and task-spooler alike)."""
    made = []

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="qbench-")
        Scratch.made.append(self.dir)
        return self.dir

    def __exit__(self, *exc):
        pass

    @classmethod
    def remove_all(cls):
        for path in cls.made:
            shutil.rmtree(path, ignore_errors=True)
        cls.made = []


def _wait(pred, timeout, what="benchmark step"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.0005)
    raise RuntimeError(f"timed out: {what}")


# ---------------------------------------------------------------- drain

def raw_rate(jobs, procs=2):
    """The machine's limit: `procs` Python processes spawning /bin/sh -c true."""
    start = time.perf_counter()
    children = [subprocess.Popen([sys.executable, "-c", RAW_SPAWNER, str(jobs // procs)]) for _ in range(procs)]
    for child in children:
        child.wait()
    return jobs / (time.perf_counter() - start)


def drain_rate(jobs, workers=2, backlog=0):
    """Enqueue `jobs` x `true` (and `backlog` jobs scheduled a day ahead), then time
    `worker start --count N --burst` until it exits. Returns (jobs/s, max worker RSS MB)."""
    with Scratch() as tmp:
        spool = Spool(os.path.join(tmp, "spool"))
        if backlog:
            for start in range(0, backlog, 10000):
                spool.enqueue_many([{"command": "true", "run_at": "+1d"} for _ in range(min(10000, backlog - start))])
        spool.enqueue_many([{"command": "true"} for _ in range(jobs)])
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "queuectl", "worker", "start", "--count", str(workers),
                                 "--burst"], env=env_for(spool.path), stdout=subprocess.DEVNULL)
        rss = _sample_worker_rss(spool, proc)
        elapsed = time.perf_counter() - start
        done = spool.counts()["completed"]
        assert done == jobs, f"only {done} of {jobs} completed"
        return jobs / elapsed, rss


def _sample_worker_rss(spool, proc):
    """Wait for `proc` to exit, sampling the RSS of the spool's workers (MB) meanwhile."""
    peak = []
    while proc.poll() is None:
        for entry in os.listdir(spool.layout.workers):
            if entry.endswith(".json"):
                peak.append(_rss_mb(entry[:-5].rsplit("_", 1)[1]))
        time.sleep(0.05)
    return max([p for p in peak if p] or [0.0])


def _rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def tsp_available():
    return shutil.which("tsp") is not None


def tsp_rate(jobs, slots=2):
    """task-spooler with `slots` slots: `jobs` x `true` queued behind blockers, then released."""
    with Scratch() as tmp:
        env = dict(os.environ, TS_SOCKET=os.path.join(tmp, "ts.sock"), TS_SAVELIST_DIR=tmp,
                   TS_MAXFINISHED=str(jobs + 100), TMPDIR=tmp)
        go = os.path.join(tmp, "go")
        run = lambda *a: subprocess.run(["tsp", *a], env=env, capture_output=True, text=True, check=True)
        run("-S", str(slots))
        for _ in range(slots):  # occupy every slot until the queue is full
            run("sh", "-c", f"while [ ! -e {go} ]; do sleep 0.002; done")
        last = None
        for _ in range(jobs):
            last = run("true").stdout.strip()
        start = time.perf_counter()
        open(go, "w").close()
        run("-w", last)
        elapsed = time.perf_counter() - start
        run("-K")
        return jobs / elapsed


# ---------------------------------------------------------------- latency

def pickup_latencies(samples):
    """An idle worker; milliseconds from a file's move into incoming/ to its job's start, and
    from the moment `queuectl enqueue` returns to the job's start (negative: before it)."""
    with Scratch() as tmp:
        spool = Spool(os.path.join(tmp, "spool"))
        worker = subprocess.Popen([sys.executable, "-m", "queuectl", "worker", "run"], env=env_for(spool.path),
                                  stdout=subprocess.DEVNULL, start_new_session=True)
        drop, cli = [], []
        try:
            _wait(lambda: os.listdir(spool.layout.workers), 10, "worker start")
            for i in range(samples):
                time.sleep(0.05)  # let the worker go idle again
                staged = os.path.join(spool.layout.tmp, f"d{i}.json")
                with open(staged, "w") as fh:
                    json.dump({"id": f"d{i}", "command": "true"}, fh)
                t0 = time.time()
                os.rename(staged, os.path.join(spool.layout.incoming, f"d{i}.json"))
                drop.append((timeutil.parse_iso(_wait(lambda: _started(spool, f"d{i}"), 10)) - t0) * 1000)
            for i in range(samples):
                time.sleep(0.05)
                queuectl("enqueue", "-c", "true", "--id", f"c{i}", spool_dir=spool.path,
                         stdout=subprocess.DEVNULL, check=True)
                t0 = time.time()
                cli.append((timeutil.parse_iso(_wait(lambda: _started(spool, f"c{i}"), 10)) - t0) * 1000)
        finally:
            worker.terminate()
            worker.wait(10)
        return drop, cli


def _started(spool, job_id):
    found = spool.find(job_id)
    if found and found[0] == "completed":
        return spool.get(job_id)["started_at"]
    return None


def tsp_latencies(samples):
    """ms from the moment `tsp CMD` returns to the command's start (its own clock reading)."""
    with Scratch() as tmp:
        env = dict(os.environ, TS_SOCKET=os.path.join(tmp, "ts.sock"), TS_SAVELIST_DIR=tmp, TMPDIR=tmp)
        out = []
        for i in range(samples):
            time.sleep(0.05)
            mark = os.path.join(tmp, f"m{i}")
            subprocess.run(["tsp", "sh", "-c", f"date +%s.%N > {mark}.t; mv {mark}.t {mark}"], env=env,
                           capture_output=True, check=True)
            t0 = time.time()
            started = float(open(_wait(lambda: os.path.exists(mark) and mark, 10)).read())
            out.append((started - t0) * 1000)
        subprocess.run(["tsp", "-K"], env=env, capture_output=True)
        return out


# ---------------------------------------------------------------- start-up, batch, backlog

def cli_startup(runs):
    """Wall time of one `queuectl enqueue` vs `python -c 'import click'` (interleaved)."""
    with Scratch() as tmp:
        spool_dir = os.path.join(tmp, "spool")
        base, ours = [], []
        for _ in range(runs):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import click"], check=True)
            base.append(time.perf_counter() - t)
            t = time.perf_counter()
            queuectl("enqueue", "-c", "true", spool_dir=spool_dir, stdout=subprocess.DEVNULL, check=True)
            ours.append(time.perf_counter() - t)
        return base, ours


def batch_enqueue(jobs):
    """`enqueue --file` of `jobs` jobs vs a raw loop writing and renaming as many files with the
    same durability (write all, one syncfs, rename all, fsync the folder). Seconds each."""
    with Scratch() as tmp:
        path = os.path.join(tmp, "jobs.jsonl")
        with open(path, "w") as fh:
            for i in range(jobs):
                fh.write(json.dumps({"command": f"echo {i}"}) + "\n")
        raw_dir, stage = os.path.join(tmp, "raw"), os.path.join(tmp, "stage")
        os.makedirs(raw_dir)
        os.makedirs(stage)
        t = time.perf_counter()
        with open(path) as fh:
            lines = [json.loads(line) for line in fh]
        for i, item in enumerate(lines):
            with open(os.path.join(stage, f"{i}.json"), "w") as out:
                json.dump(item, out)
        syncfs(stage)
        for i in range(len(lines)):
            os.rename(os.path.join(stage, f"{i}.json"), os.path.join(raw_dir, f"{i:08d}.json"))
        fd = os.open(raw_dir, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        raw = time.perf_counter() - t
        spool_dir = os.path.join(tmp, "spool")
        Spool(spool_dir)
        t = time.perf_counter()
        queuectl("enqueue", "--file", path, spool_dir=spool_dir, stdout=subprocess.DEVNULL, check=True)
        ours = time.perf_counter() - t
        return raw, ours


def big_folder_commands(completed, pending):
    """`status` with `completed` jobs in completed/, `list --limit 10` with `pending` waiting."""
    with Scratch() as tmp:
        spool = Spool(os.path.join(tmp, "spool"))
        record = json.dumps({"id": "x", "command": "true", "state": "completed"})
        folder = spool.layout.completed
        for i in range(completed):
            with open(os.path.join(folder, f"c{i:07d}.json"), "w") as fh:
                fh.write(record)
        for start in range(0, pending, 10000):
            spool.enqueue_many([{"command": "true"} for _ in range(min(10000, pending - start))])
        times = {"status": [], "list": []}
        for _ in range(3):
            t = time.perf_counter()
            queuectl("status", spool_dir=spool.path, stdout=subprocess.DEVNULL, check=True)
            times["status"].append(time.perf_counter() - t)
            t = time.perf_counter()
            queuectl("list", "--state", "pending", "--limit", "10", spool_dir=spool.path,
                     stdout=subprocess.DEVNULL, check=True)
            times["list"].append(time.perf_counter() - t)
        return med(times["status"]), med(times["list"])


def long_run_rss(jobs):
    """One worker draining `jobs` jobs: its RSS at the start and at the end (MB)."""
    with Scratch() as tmp:
        spool = Spool(os.path.join(tmp, "spool"))
        for start in range(0, jobs, 10000):
            spool.enqueue_many([{"command": "true"} for _ in range(min(10000, jobs - start))])
        proc = subprocess.Popen([sys.executable, "-m", "queuectl", "worker", "run", "--burst"],
                                env=env_for(spool.path), stdout=subprocess.DEVNULL)
        samples = []
        while proc.poll() is None:
            rss = _rss_mb(proc.pid)
            # from the first job on: before that the process is still loading Python
            if rss and os.listdir(spool.layout.completed):
                samples.append(rss)
            time.sleep(0.2)
        return samples


# ---------------------------------------------------------------- main

def compile_package():
    """Byte-compile queuectl as `pip install` does: with PYTHONDONTWRITEBYTECODE set (it is on
    these machines) a source tree would otherwise be compiled again by every command timed."""
    import compileall
    compileall.compile_dir(os.path.join(ROOT, "queuectl"), quiet=1)


def main():
    compile_package()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the script works")
    parser.add_argument("--rounds", type=int, default=None, help="A/B rounds of the drain (default 3)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "latest.json"))
    args = parser.parse_args()
    q = args.quick
    jobs, tsp_jobs = (100, 50) if q else (2000, 500)
    rounds = args.rounds or (1 if q else 3)
    samples = 5 if q else 30
    use_tsp = tsp_available()

    raw, drain, tsp, rss = [], [], [], []
    for _ in range(rounds):  # A B C A B C ...
        raw.append(raw_rate(jobs))
        rate, peak = drain_rate(jobs)
        drain.append(rate)
        rss.append(peak)
        if use_tsp:
            tsp.append(tsp_rate(tsp_jobs))
    drop, enq = pickup_latencies(samples)
    tsp_lat = tsp_latencies(samples) if use_tsp else []
    base, ours = cli_startup(3 if q else 15)
    raw_batch, our_batch = batch_enqueue(200 if q else 10000)
    backlog_jobs = 500 if q else 100000
    backlog_rate, _ = drain_rate(jobs, backlog=backlog_jobs)
    status_s, list_s = big_folder_commands(2000 if q else 1000000, 1000 if q else 100000)
    long_rss = long_run_rss(300 if q else 100000)

    r = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "quick": q, "jobs": jobs, "rounds": rounds,
        "raw_spawn_per_s": med(raw), "drain_per_s": med(drain), "drain_vs_raw": med(drain) / med(raw),
        "tsp_per_s": med(tsp) if tsp else None,
        "drain_vs_tsp": med(drain) / med(tsp) if tsp else None,
        "pickup_drop_ms_p50": med(drop), "pickup_after_enqueue_ms_p50": med(enq),
        "tsp_pickup_ms_p50": med(tsp_lat) if tsp_lat else None,
        "click_import_s": med(base), "enqueue_cli_s": med(ours), "enqueue_vs_click": med(ours) / med(base),
        "batch_raw_s": raw_batch, "batch_enqueue_s": our_batch, "batch_vs_raw": raw_batch / our_batch,
        "backlog_jobs": backlog_jobs, "drain_with_backlog_per_s": backlog_rate,
        "backlog_vs_none": backlog_rate / med(drain),
        "status_s": status_s, "list_limit10_s": list_s,
        "worker_rss_mb_max": max(rss + long_rss) if long_rss else max(rss),
        "long_run_rss_mb_first_last": [long_rss[0], long_rss[-1]] if long_rss else None,
    }
    fmt = lambda v, unit="": "-" if v is None else f"{v:.2f}{unit}" if isinstance(v, float) else str(v)
    rows = [
        (f"drain {jobs} x true, 2 workers (jobs/s)", fmt(r["drain_per_s"]), f"raw spawn {r['raw_spawn_per_s']:.0f}/s",
         fmt(r["drain_vs_raw"], "x")),
        (f"  vs task-spooler, 2 slots, {tsp_jobs} jobs", fmt(r["drain_per_s"]), f"tsp {fmt(r['tsp_per_s'])}/s",
         fmt(r["drain_vs_tsp"], "x")),
        ("pickup of a dropped file, p50 (ms)", fmt(r["pickup_drop_ms_p50"]), "", ""),
        ("pickup after `enqueue` returns, p50 (ms)", fmt(r["pickup_after_enqueue_ms_p50"]),
         f"tsp {fmt(r['tsp_pickup_ms_p50'])} ms", ""),
        ("`queuectl enqueue` wall time (s)", fmt(r["enqueue_cli_s"]), f"import click {r['click_import_s']:.3f} s",
         fmt(r["enqueue_vs_click"], "x")),
        (f"batch enqueue of {200 if q else 10000} (s)", fmt(r["batch_enqueue_s"]), f"raw loop {r['batch_raw_s']:.2f} s",
         fmt(r["batch_vs_raw"], "x")),
        (f"drain with {backlog_jobs} scheduled waiting (jobs/s)", fmt(r["drain_with_backlog_per_s"]),
         f"none waiting {r['drain_per_s']:.0f}/s", fmt(r["backlog_vs_none"], "x")),
        (f"status, {2000 if q else 1000000} completed (s)", fmt(r["status_s"]), "target 2 s", ""),
        (f"list --limit 10, {1000 if q else 100000} pending (s)", fmt(r["list_limit10_s"]), "target 0.5 s", ""),
        ("worker RSS, max (MB)", fmt(r["worker_rss_mb_max"]), "target 40 MB", ""),
        (f"worker RSS first/last over {300 if q else 100000} jobs (MB)",
         "/".join(f"{v:.1f}" for v in r["long_run_rss_mb_first_last"] or []), "flat", ""),
    ]
    w = max(len(x[0]) for x in rows)
    print(f"{'measure':<{w}}  {'queuectl':>10}  {'baseline':<26} ratio")
    for name, value, baseline, ratio in rows:
        print(f"{name:<{w}}  {value:>10}  {baseline:<26} {ratio}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(r, fh, indent=2)
    print(f"\nJSON: {args.out}")
    return r


if __name__ == "__main__":
    try:
        main()
    finally:
        Scratch.remove_all()
