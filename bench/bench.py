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
import json, subprocess, sys
for command in json.load(open(sys.argv[1])):
    subprocess.run(["/bin/sh", "-c", command])
"""
med = statistics.median
# task-spooler keeps each queued job as a process connected to its server, which select()s
# over them: past about 1,000 connections it stops taking more (FD_SETSIZE 1024)
TSP_MAX_QUEUED = 900


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


# ---------------------------------------------------------------- the commands' own clock

# Every pickup and drain figure is read from the command's side: the job itself writes its
# clock reading (`date`, then a rename so that the reader never sees half a number), for
# queuectl, task-spooler, nq and a raw spawn alike. Each side pays the same shell and `date`.
MARK = "date +%s.%N > {path}.t && mv {path}.t {path}"


def read_mark(path, timeout=20.0):
    return float(open(_wait(lambda: os.path.exists(path) and path, timeout, f"mark {path}")).read())


# ---------------------------------------------------------------- drain

def warm_up(jobs):
    """Jobs left out at the start of every drain, on every side: the steady state starts once
    the runners are all up (a second worker's start-up on a big spool, tsp's first forks)."""
    return jobs // 10


def drain_commands(jobs, folder, tag):
    """`jobs` commands: the first after the warm-up and the last write their start time, the
    others are `true`. Returns (commands, first mark, last mark)."""
    first, last = os.path.join(folder, f"{tag}-first"), os.path.join(folder, f"{tag}-last")
    warm = warm_up(jobs)
    return (["true"] * warm + [MARK.format(path=first)] + ["true"] * (jobs - warm - 2) + [MARK.format(path=last)],
            first, last)


def steady_rate(jobs, first, last):
    """Jobs started per second between the first marked job's start and the last one's, as
    the commands saw it: the warm-up and the tail of the last jobs are left out."""
    return (jobs - warm_up(jobs) - 1) / (read_mark(last, 600) - read_mark(first, 600))


def raw_rate(jobs, procs=2):
    """The machine's limit: `procs` Python processes spawning /bin/sh -c COMMAND in turn."""
    with Scratch() as tmp:
        rates, children = [], []
        for k in range(procs):
            commands, first, last = drain_commands(jobs // procs, tmp, f"raw{k}")
            listing = os.path.join(tmp, f"raw{k}.json")
            with open(listing, "w") as fh:
                json.dump(commands, fh)
            children.append((subprocess.Popen([sys.executable, "-c", RAW_SPAWNER, listing]), first, last))
        for child, first, last in children:
            child.wait()
            rates.append(steady_rate(jobs // procs, first, last))
        return sum(rates)


def drain_rate(jobs, workers=2, backlog=0, failed_backlog=0, durable_moves=False):
    """Enqueue `jobs` commands (and `backlog` jobs scheduled a day ahead, `failed_backlog`
    retries waiting in failed/ for a day), then run `worker start --count N --burst`, with
    config durable-moves on if asked. Returns (jobs/s as the commands saw it, max worker RSS MB)."""
    with Scratch() as tmp:
        spool = Spool(os.path.join(tmp, "spool"))
        if durable_moves:
            spool.set_config("durable-moves", True)
        if backlog:
            for start in range(0, backlog, 10000):
                spool.enqueue_many([{"command": "true", "run_at": "+1d"} for _ in range(min(10000, backlog - start))])
        if failed_backlog:
            _fill_failed(spool, failed_backlog)
        commands, first, last = drain_commands(jobs, tmp, "q")
        spool.enqueue_many([{"command": c} for c in commands])
        os.sync()  # the set-up's writeback (up to 300,000 new files) must not land in the timed drain
        proc = subprocess.Popen([sys.executable, "-m", "queuectl", "worker", "start", "--count", str(workers),
                                 "--burst"], env=env_for(spool.path), stdout=subprocess.DEVNULL)
        rss = _sample_worker_rss(spool, proc)
        done = spool.counts()["completed"]
        assert done == jobs, f"only {done} of {jobs} completed"
        return steady_rate(jobs, first, last), rss


def _fill_failed(spool, count):
    """`count` retries waiting a day in failed/, as a worker's fail move leaves them: real
    records (enqueued, then moved from pending/ under their failed/ names).

    Rewritten in place and renamed, never deleted: on ext4 without a journal (these
    machines) every file created in the next minutes walks past the inodes just freed, so
    100,000 deletions here would slow the timed drain's log files down, not the backlog."""
    from queuectl import names
    retry_at = time.time() + 86400
    for start in range(0, count, 10000):
        spool.enqueue_many([{"command": "true", "run_at": "+1d", "id": f"retry{i:07d}"}
                            for i in range(start, min(count, start + 10000))])
    for name in os.listdir(spool.layout.pending):
        parsed = names.parse_pending(name)
        if not parsed or not parsed.job_id.startswith("retry"):
            continue
        path = os.path.join(spool.layout.pending, name)
        with open(path) as fh:
            record = json.load(fh)
        record.update(state="failed", attempts=1, last_error="exit code 1", run_at=timeutil.iso(retry_at))
        with open(path, "w") as fh:
            json.dump(record, fh)
        os.rename(path, os.path.join(spool.layout.failed, names.failed_name(retry_at, parsed.job_id)))


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


def nq_available():
    return shutil.which("nq") is not None


def tsp_env(folder, jobs=1000):
    # each job waiting in task-spooler's queue is a process with a connection to the server
    return dict(os.environ, TS_SOCKET=os.path.join(folder, "ts.sock"), TS_SAVELIST_DIR=folder,
                TS_MAXFINISHED=str(jobs + 100), TS_MAXCONN=str(jobs + 100), TMPDIR=folder)


def tsp_rate(jobs, slots=2):
    """task-spooler with `slots` slots: the commands queued behind blockers, then released."""
    with Scratch() as tmp:
        env = tsp_env(tmp, jobs)
        go = os.path.join(tmp, "go")
        run = lambda *a: subprocess.run(["tsp", *a], env=env, capture_output=True, text=True, check=True)
        run("-S", str(slots))
        for _ in range(slots):  # occupy every slot until the queue is full
            run("sh", "-c", f"while [ ! -e {go} ]; do sleep 0.002; done")
        commands, first, last = drain_commands(jobs, tmp, "tsp")
        for command in commands:
            if command == "true":
                run("true")
            else:
                run("sh", "-c", command)
        open(go, "w").close()
        rate = steady_rate(jobs, first, last)
        run("-K")
        return rate


# ---------------------------------------------------------------- latency

class QueuectlPickup:
    """An idle worker. Two samples per round, each from the moment the submitter starts: a
    program writing its job file and renaming it into incoming/, and a `queuectl enqueue` call."""

    def __init__(self, folder):
        self.folder = folder
        self.spool = Spool(os.path.join(folder, "spool"))
        self.worker = subprocess.Popen([sys.executable, "-m", "queuectl", "worker", "run"],
                                       env=env_for(self.spool.path), stdout=subprocess.DEVNULL,
                                       start_new_session=True)
        _wait(lambda: [n for n in os.listdir(self.spool.layout.workers) if n.endswith(".json")], 10, "worker start")
        time.sleep(0.5)

    def drop(self, i):
        mark = os.path.join(self.folder, f"drop{i}")
        staged = os.path.join(self.spool.layout.tmp, f"d{i}.json")
        t0 = time.time()
        with open(staged, "w") as fh:
            json.dump({"id": f"d{i}", "command": MARK.format(path=mark)}, fh)
        os.rename(staged, os.path.join(self.spool.layout.incoming, f"d{i}.json"))
        return (read_mark(mark) - t0) * 1000

    def enqueue(self, i):
        mark = os.path.join(self.folder, f"enq{i}")
        t0 = time.time()
        queuectl("enqueue", "-c", MARK.format(path=mark), "--id", f"c{i}", spool_dir=self.spool.path,
                 stdout=subprocess.DEVNULL, check=True)
        return (read_mark(mark) - t0) * 1000

    def stop(self):
        self.worker.terminate()
        self.worker.wait(10)


def pickup_from_submit(tool, folder, env, i):
    """ms from the moment `TOOL sh -c MARK` is called to the command's own clock reading
    (submit to start: the client's own start-up counts, as a queuectl drop's writing does)."""
    mark = os.path.join(folder, f"{tool}{i}")
    t0 = time.time()
    subprocess.run([tool, "sh", "-c", MARK.format(path=mark)], env=env, capture_output=True, check=True)
    return (read_mark(mark) - t0) * 1000


class TspPickup:
    """task-spooler's server, idle: ms from the moment `tsp CMD` is called to the command's start."""

    def __init__(self, folder):
        self.folder, self.env = folder, tsp_env(folder)
        subprocess.run(["tsp", "-S", "1"], env=self.env, capture_output=True, check=True)

    def sample(self, i):
        return pickup_from_submit("tsp", self.folder, self.env, i)

    def stop(self):
        subprocess.run(["tsp", "-K"], env=self.env, capture_output=True)


class NqPickup:
    """nq (no daemon: `nq CMD` forks the job itself): ms from the moment `nq` is called."""

    def __init__(self, folder):
        self.folder = folder
        self.env = dict(os.environ, NQDIR=os.path.join(folder, "nq"))

    def sample(self, i):
        return pickup_from_submit("nq", self.folder, self.env, i)

    def stop(self):
        pass


def raw_pickup(folder, i):
    """The floor: ms from a Python process's spawn call to its command's start."""
    mark = os.path.join(folder, f"raw{i}")
    t0 = time.time()
    subprocess.Popen(["/bin/sh", "-c", MARK.format(path=mark)]).wait()
    return (read_mark(mark) - t0) * 1000


def pickups(samples, use_tsp, use_nq):
    """Interleaved rounds: each round takes one sample of every side, idle before each."""
    out = {"drop": [], "enqueue": [], "tsp": [], "nq": [], "raw": []}
    with Scratch() as tmp:
        sides = {"queuectl": QueuectlPickup(os.path.join(tmp, "q"))}
        os.makedirs(os.path.join(tmp, "t"))
        os.makedirs(os.path.join(tmp, "n"))
        if use_tsp:
            sides["tsp"] = TspPickup(os.path.join(tmp, "t"))
        if use_nq:
            sides["nq"] = NqPickup(os.path.join(tmp, "n"))
        try:
            for i in range(samples):
                for name, side in sides.items():
                    time.sleep(0.05)  # every side idle again
                    if name == "queuectl":
                        out["drop"].append(side.drop(i))
                        time.sleep(0.05)
                        out["enqueue"].append(side.enqueue(i))
                    else:
                        out[name].append(side.sample(i))
                time.sleep(0.05)
                out["raw"].append(raw_pickup(tmp, i))
        finally:
            for side in sides.values():
                side.stop()
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


def big_folder_commands(completed, pending, journal_lines=50000):
    """`status` and `metrics` with `completed` jobs in completed/ and `journal_lines` finishes
    in this hour's journal (what `metrics` reads for its rates and runtimes), `list --limit 10`
    with `pending` waiting (added after the first two are timed). Median seconds of 5 runs each."""
    with Scratch() as tmp:
        spool = Spool(os.path.join(tmp, "spool"))
        record = json.dumps({"id": "x", "command": "true", "state": "completed"})
        folder = spool.layout.completed
        for i in range(completed):
            with open(os.path.join(folder, f"c{i:07d}.json"), "w") as fh:
                fh.write(record)
        write_journal(spool, journal_lines)
        times = {"status": [], "metrics": [], "list": []}

        def run(keys, rounds=5):
            for _ in range(rounds):
                for key, argv in keys:
                    t = time.perf_counter()
                    queuectl(*argv, spool_dir=spool.path, stdout=subprocess.DEVNULL, check=True)
                    times[key].append(time.perf_counter() - t)
        run((("status", ["status"]), ("metrics", ["metrics"])))  # the target's case: 1,000,000 completed
        for start in range(0, pending, 10000):
            spool.enqueue_many([{"command": "true"} for _ in range(min(10000, pending - start))])
        run((("list", ["list", "--state", "pending", "--limit", "10"]),))
        return med(times["status"]), med(times["metrics"]), med(times["list"])


def write_journal(spool, lines):
    """`lines` journal lines spread over this hour so far, as one worker would append them."""
    from queuectl import journal, names
    now = time.time()
    start = now // 3600 * 3600
    name = f"{names.hostname()}_4242-{journal.hour_text(now)}.log"
    with open(os.path.join(spool.layout.journal, name), "w") as fh:
        for i in range(lines):
            outcome = "completed" if i % 20 else "failed"
            fh.write(f"{start + (now - start) * i / lines:.3f} {outcome} c{i:07d} {1 + (i % 7 == 0)} 0.{i % 1000:03d}\n")


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


CPU_PROBE = """
import os, resource, sys
from queuectl import Spool
from queuectl.worker import Worker
spool = Spool(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF)
Worker(spool, burst=True, emit=lambda *a: None).run()
after = resource.getrusage(resource.RUSAGE_SELF)
print((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
"""


def worker_cpu_ms(jobs):
    """A burst worker's own CPU per job (getrusage of its process: the jobs, its children,
    are not in it), draining `jobs` `true` jobs alone."""
    with Scratch() as tmp:
        spool = Spool(os.path.join(tmp, "spool"))
        spool.enqueue_many([{"command": "true"} for _ in range(jobs)])
        os.sync()
        out = subprocess.run([sys.executable, "-c", CPU_PROBE, spool.path], env=env_for(spool.path),
                             capture_output=True, text=True, check=True).stdout
        return float(out.strip().splitlines()[-1]) / jobs * 1000


def durable_moves_cost(jobs, rounds):
    """The drain with every worker move fsynced (config durable-moves) beside the default one,
    interleaved: what the power-cut safety on weak filesystems costs per job."""
    load = os.getloadavg()
    lazy, durable = [], []
    for _ in range(rounds):
        lazy.append(drain_rate(jobs)[0])
        durable.append(drain_rate(jobs, durable_moves=True)[0])
    extra_ms = (1 / med(durable) - 1 / med(lazy)) * 1000 * 2  # 2 workers: per job of one worker
    print(f"load {load[0]:.2f}; drain of {jobs} `true` jobs, 2 workers, {rounds} rounds (jobs/s)")
    print(f"  durable-moves off: median {med(lazy):.0f}  runs {', '.join(f'{x:.0f}' for x in lazy)}")
    print(f"  durable-moves on:  median {med(durable):.0f}  runs {', '.join(f'{x:.0f}' for x in durable)}")
    print(f"  on/off {med(durable) / med(lazy):.2f}x; about {extra_ms:.2f} ms more per job and worker")
    return {"off": lazy, "on": durable}


def main():
    compile_package()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the script works")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds of the drains (default 3)")
    parser.add_argument("--samples", type=int, default=None, help="pickup rounds (default 40)")
    parser.add_argument("--only", choices=["durable-moves"],
                        help="only the drains with durable-moves off and on, interleaved")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "latest.json"))
    args = parser.parse_args()
    if args.only == "durable-moves":
        return durable_moves_cost(100 if args.quick else 2000, args.rounds or (1 if args.quick else 3))
    q = args.quick
    jobs = 100 if q else 2000
    rounds = args.rounds or (1 if q else 3)
    samples = args.samples or (5 if q else 40)
    use_tsp, use_nq = tsp_available(), nq_available()
    load_before = os.getloadavg()

    raw, drain, tsp, rss = [], [], [], []
    for _ in range(rounds):  # A B C A B C ...
        raw.append(raw_rate(jobs))
        rate, peak = drain_rate(jobs)
        drain.append(rate)
        rss.append(peak)
        if use_tsp:
            tsp.append(tsp_rate(min(jobs, TSP_MAX_QUEUED)))
    lat = pickups(samples, use_tsp, use_nq)
    cpu = [worker_cpu_ms(jobs) for _ in range(rounds)]
    base, ours = cli_startup(3 if q else 15)
    raw_batch, our_batch = batch_enqueue(200 if q else 10000)
    backlog_jobs = 500 if q else 100000
    # each beside an empty-spool drain run right before it: the machine's drift hits both alike
    empty_before_backlog, _ = drain_rate(jobs)
    backlog_rate, _ = drain_rate(jobs, backlog=backlog_jobs)
    empty_before_retries, _ = drain_rate(jobs)
    retries_rate, _ = drain_rate(jobs, backlog=backlog_jobs, failed_backlog=backlog_jobs)
    status_s, metrics_s, list_s = big_folder_commands(2000 if q else 1000000, 1000 if q else 100000)
    long_rss = long_run_rss(300 if q else 100000)

    p50 = lambda xs: med(xs) if xs else None
    r = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "load_before": load_before, "load_after": os.getloadavg(),
        "quick": q, "jobs": jobs, "rounds": rounds, "samples": samples,
        "raw_spawn_per_s": med(raw), "drain_per_s": med(drain), "drain_vs_raw": med(drain) / med(raw),
        "drain_runs": drain, "raw_runs": raw, "tsp_runs": tsp,
        "tsp_per_s": med(tsp) if tsp else None,
        "drain_vs_tsp": med(drain) / med(tsp) if tsp else None,
        "pickup_drop_ms_p50": p50(lat["drop"]), "pickup_enqueue_ms_p50": p50(lat["enqueue"]),
        "tsp_pickup_ms_p50": p50(lat["tsp"]), "nq_pickup_ms_p50": p50(lat["nq"]),
        "raw_pickup_ms_p50": p50(lat["raw"]),
        "pickups_ms": lat,
        "worker_cpu_ms_per_job": med(cpu), "worker_cpu_runs": cpu,
        "click_import_s": med(base), "enqueue_cli_s": med(ours), "enqueue_vs_click": med(ours) / med(base),
        "batch_raw_s": raw_batch, "batch_enqueue_s": our_batch, "batch_vs_raw": raw_batch / our_batch,
        "backlog_jobs": backlog_jobs, "drain_with_backlog_per_s": backlog_rate,
        "backlog_vs_none": backlog_rate / empty_before_backlog, "empty_before_backlog_per_s": empty_before_backlog,
        "drain_with_retries_waiting_per_s": retries_rate, "retries_vs_none": retries_rate / empty_before_retries,
        "empty_before_retries_per_s": empty_before_retries,
        "status_s": status_s, "metrics_s": metrics_s, "list_limit10_s": list_s,
        "worker_rss_mb_max": max(rss + long_rss) if long_rss else max(rss),
        "long_run_rss_mb_first_last": [long_rss[0], long_rss[-1]] if long_rss else None,
    }
    fmt = lambda v, unit="": "-" if v is None else f"{v:.2f}{unit}" if isinstance(v, float) else str(v)
    big = 2000 if q else 1000000
    rows = [
        (f"drain {jobs} jobs, 2 workers (jobs/s)", fmt(r["drain_per_s"]), f"raw spawn {r['raw_spawn_per_s']:.0f}/s",
         fmt(r["drain_vs_raw"], "x")),
        (f"  vs task-spooler, 2 slots, {min(jobs, TSP_MAX_QUEUED)} jobs", fmt(r["drain_per_s"]), f"tsp {fmt(r['tsp_per_s'])}/s",
         fmt(r["drain_vs_tsp"], "x")),
        ("pickup, submit to start: a dropped file, p50 (ms)", fmt(r["pickup_drop_ms_p50"]),
         f"tsp call {fmt(r['tsp_pickup_ms_p50'])} ms",
         fmt(r["pickup_drop_ms_p50"] / r["tsp_pickup_ms_p50"], "x") if r["tsp_pickup_ms_p50"] else ""),
        ("pickup, submit to start: `queuectl enqueue`, p50 (ms)", fmt(r["pickup_enqueue_ms_p50"]),
         f"nq call {fmt(r['nq_pickup_ms_p50'])} ms", ""),
        ("worker's own CPU per job, 1 worker (ms)", fmt(r["worker_cpu_ms_per_job"]), "target 0.7 ms", ""),
        ("pickup of a raw spawn, p50 (ms)", fmt(r["raw_pickup_ms_p50"]), "the floor", ""),
        ("`queuectl enqueue` wall time (s)", fmt(r["enqueue_cli_s"]), f"import click {r['click_import_s']:.3f} s",
         fmt(r["enqueue_vs_click"], "x")),
        (f"batch enqueue of {200 if q else 10000} (s)", fmt(r["batch_enqueue_s"]), f"raw loop {r['batch_raw_s']:.2f} s",
         fmt(r["batch_vs_raw"], "x")),
        (f"drain with {backlog_jobs} scheduled waiting (jobs/s)", fmt(r["drain_with_backlog_per_s"]),
         f"none waiting {empty_before_backlog:.0f}/s", fmt(r["backlog_vs_none"], "x")),
        (f"  and {backlog_jobs} retries waiting in failed/", fmt(r["drain_with_retries_waiting_per_s"]),
         f"none waiting {empty_before_retries:.0f}/s", fmt(r["retries_vs_none"], "x")),
        (f"status, {big} completed (s)", fmt(r["status_s"]), "target 1 s", ""),
        (f"metrics, {big} completed (s)", fmt(r["metrics_s"]), "target 1 s", ""),
        (f"list --limit 10, {1000 if q else 100000} pending (s)", fmt(r["list_limit10_s"]), "target 0.5 s", ""),
        ("worker RSS, max (MB)", fmt(r["worker_rss_mb_max"]), "target 30 MB", ""),
        (f"worker RSS first/last over {300 if q else 100000} jobs (MB)",
         "/".join(f"{v:.1f}" for v in r["long_run_rss_mb_first_last"] or []), "flat", ""),
    ]
    w = max(len(x[0]) for x in rows)
    print(f"load {load_before[0]:.2f} before, {r['load_after'][0]:.2f} after; {os.cpu_count()} cores")
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
