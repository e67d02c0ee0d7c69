"""Power loss: what a crash of the machine can leave of a spool, and whether recovery copes.

    python3 testbed/powerloss.py [--json] [--quick] [--workload NAME]... [--model NAME]...
                                 [--plant no-enqueue-fsync] [--config KEY=VALUE]... [--seed N] [--samples N]

Each workload (WORKLOADS) runs real queuectl code, the API and the CLI, under `strace -f`;
crashfs.py keeps the operations on the spool (creates, writes with their bytes, renames,
links, unlinks, mkdirs, fsyncs) and builds the states a power cut after each of them may
leave, under two persistence models (ext4-ordered, posix-weak). Each distinct state is
written into a fresh folder and recovered as a restarted machine would: `fsck --repair`, a
worker with --burst, then `fsck` again, which must find nothing. Then the invariants:

- a job whose enqueue had returned exists, exactly once (lost: a violation);
- no job in two state folders, no unreadable record, nothing left in processing/;
- a job in completed/ had its command run to its end (before the crash or during the
  recovery); one whose command had finished before the crash and ran again is counted as
  a rerun (at-least-once), not a violation;
- `status`'s counts agree with the folders.

The trace is the seam: every process of a workload is traced, and the replay of all its
operations must give the spool exactly as the workload left it (names and bytes), or the
run fails: nothing bypassed it. `--plant no-enqueue-fsync` drops the fsyncs that enqueue
made from the trace, to show that the explorer finds what they prevent. Exit 1 on any
violation. Needs strace (Debian `strace`).
"""
import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
import crashfs  # noqa: E402

MODELS = ("ext4-ordered", "posix-weak")
STATE_FOLDERS = ("pending", "processing", "failed", "completed", "dead", "blocked")
OLD = 3600  # seconds: recovery runs as if the machine came back an hour after the cut


# ---------------------------------------------------------------- workloads (run under strace)

def mark(text):
    """A marker in the trace: what had returned by this point."""
    os.access(crashfs.MARK_DIR + text, os.F_OK)


def job_command(tail="exit 0"):
    """A job that says in its log that it ran, and leaves a marker once it has finished."""
    return f"echo ran; cat {crashfs.MARK_DIR}ran.$QUEUECTL_JOB_ID 2>/dev/null; {tail}"


def cli(spool, *args, input=None, check=True):
    result = subprocess.run([sys.executable, "-m", "queuectl", "--spool", spool, *args], input=input,
                            capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    if check and result.returncode != 0:
        raise RuntimeError(f"queuectl {' '.join(args)}: {result.stderr.strip()}")
    return result


def enqueue(spool, **fields):
    from queuectl.spool import Spool
    mark("enqueue-begin")
    record = Spool(spool).enqueue(**fields)
    mark(f"ack.{record['id']}")
    mark("enqueue-end")
    return record


def enqueue_cli(spool, jobs):
    mark("enqueue-begin")
    cli(spool, "enqueue", "--no-capture-env", "--file", "-", input="\n".join(json.dumps(j) for j in jobs))
    for job in jobs:
        mark(f"ack.{job['id']}")
    mark("enqueue-end")


def burst(spool):
    cli(spool, "worker", "run", "--burst")


def w_enqueue(spool):
    enqueue(spool, id="one", command=job_command())
    enqueue_cli(spool, [{"id": f"b{i}", "command": job_command()} for i in range(3)])


def w_drop_and_run(spool):
    tmp, incoming = os.path.join(spool, "tmp", ".drop"), os.path.join(spool, "incoming", "drop.json")
    with open(tmp, "w") as fh:  # a careful dropper: its file and the folder synced
        json.dump({"id": "dropped", "command": job_command()}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, incoming)
    fd = os.open(os.path.dirname(incoming), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    mark("ack.dropped")
    burst(spool)


def w_complete_fail_bury_retry(spool):
    enqueue(spool, id="ok", command=job_command())
    enqueue(spool, id="flaky", command=job_command('[ "$QUEUECTL_ATTEMPT" = 1 ] && exit 1; exit 0'), max_retries=1)
    enqueue(spool, id="bad", command=job_command("exit 3"), max_retries=0)
    burst(spool)  # ok completes, flaky fails (a retry in 1 s), bad is buried in dead/
    time.sleep(1.5)
    burst(spool)  # flaky's retry: promoted, run, completed
    cli(spool, "dlq", "retry", "bad")
    burst(spool)


def w_dependencies(spool):
    enqueue(spool, id="a", command=job_command())
    enqueue(spool, id="b", command=job_command(), after=["a"])
    enqueue(spool, id="x", command=job_command("exit 1"), max_retries=0)
    enqueue(spool, id="c", command=job_command(), after=["x"])
    burst(spool)


def w_take_back(spool):
    enqueue(spool, id="slow", command=job_command('[ "$QUEUECTL_ATTEMPT" = 1 ] && sleep 2; exit 0'))
    worker = subprocess.Popen([sys.executable, "-m", "queuectl", "--spool", spool, "worker", "run"],
                              env=dict(os.environ, PYTHONPATH=ROOT), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.listdir(os.path.join(spool, "processing")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)  # the worker dies; its job runs on, unrecorded
    worker.wait()
    time.sleep(2.5)
    burst(spool)  # takes the job back and runs it again


def w_cancel_purge_config(spool):
    enqueue(spool, id="keep", command=job_command())
    enqueue(spool, id="drop", command=job_command())
    cli(spool, "cancel", "drop")
    burst(spool)
    mark("purged.keep")  # from here on, `keep` may be gone: purge removes it
    cli(spool, "purge", "--completed")
    setting(spool, "config.max-retries", "5", "config", "set", "max-retries", "5")


def w_two_workers(spool):
    enqueue_cli(spool, [{"id": f"w{i}", "command": job_command()} for i in range(6)])
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-m", "queuectl", "--spool", spool, "worker", "run", "--burst"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    for proc in procs:
        proc.wait(120)


def setting(spool, key, value, *args):
    """A user's setting change through the CLI, told in the trace before and after: once it
    has returned, the recovered spool must show `value` for `key` (or a later try's)."""
    mark(f"try.{key}={value}")
    cli(spool, *args)
    mark(f"set.{key}={value}")


def w_schedule_pause_queue(spool):
    from queuectl import timeutil
    from queuectl.schedules import Schedules
    from queuectl.spool import Spool
    layout = Spool(spool).layout
    # added two minutes ago: the current minute's occurrence is due now, without waiting for one
    Schedules(layout).add("tick", "* * * * *", {"command": job_command()}, now=timeutil.now() - 120)
    burst(spool)  # fires the occurrence (an enqueue inside the worker), then runs it
    mark(f"ack.{Schedules(layout).state('tick')['last_id']}")
    setting(spool, "paused", "yes", "pause")
    enqueue(spool, id="held", command=job_command())
    burst(spool)  # paused: claims nothing
    setting(spool, "queue.deploy.limit", "1", "queue", "set", "deploy", "--limit", "1")
    enqueue(spool, id="d1", command=job_command(), queue="deploy")
    enqueue(spool, id="d2", command=job_command(), queue="deploy")
    setting(spool, "paused", "no", "resume")
    burst(spool)


WORKLOADS = {
    "enqueue one and a batch": w_enqueue,
    "a dropped file taken in and run": w_drop_and_run,
    "complete, fail and retry, bury, dlq retry": w_complete_fail_bury_retry,
    "a blocked job released, one buried by its dependency": w_dependencies,
    "a take-back from a dead worker": w_take_back,
    "cancel, purge, config set": w_cancel_purge_config,
    "two workers at once": w_two_workers,
    "a schedule firing, pause and resume, a queue's limit": w_schedule_pause_queue,
}
QUICK = ("enqueue one and a batch", "complete, fail and retry, bury, dlq retry", "a take-back from a dead worker")


# ---------------------------------------------------------------- recording

def snapshot(root):
    """[(relative path, bytes | None for a folder)], parents first."""
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel_folder = os.path.relpath(folder, root)
        for d in dirs:
            out.append((os.path.normpath(os.path.join(rel_folder, d)), None))
        for f in sorted(files):
            with open(os.path.join(folder, f), "rb") as fh:
                out.append((os.path.normpath(os.path.join(rel_folder, f)), fh.read()))
    return out


def record(name, work, settings=()):
    """Run workload `name` under strace on a fresh spool with config `settings` ([(key, value)]):
    (initial snapshot, ops, final tree)."""
    from queuectl.spool import Spool
    spool = os.path.join(work, "spool")
    made = Spool(spool)  # the folders exist before the trace, as on a machine that ran queuectl before
    for key, value in settings:
        made.set_config(key, value)
    initial = snapshot(spool)
    trace = os.path.join(work, "trace")
    subprocess.run(["strace", "-f", "-y", "-xx", "-qq", "-s", "1048576", "-e", "trace=" + crashfs.TRACED,
                    "-o", trace, sys.executable, os.path.abspath(__file__), "--drive", name, spool],
                   check=True, env=dict(os.environ, PYTHONPATH=ROOT), cwd=work)
    recorder = crashfs.Recorder(spool, [(rel, content is None) for rel, content in initial])
    with open(trace, errors="replace") as fh:
        recorder.feed(fh)
    final = dict(snapshot(spool))
    return initial, recorder.ops, final


def check_seam(initial, ops, final):
    """The replay of every operation gives the spool as the workload left it."""
    replayed = crashfs.replay(initial, ops)
    problems = []
    for rel in sorted(set(replayed) | set(final)):
        if rel not in final:
            problems.append(f"{rel}: in the replay, not on disk")
        elif rel not in replayed:
            problems.append(f"{rel}: on disk, not in the replay")
        elif replayed[rel] != final[rel]:
            problems.append(f"{rel}: bytes differ")
    return problems


def plant_no_enqueue_fsync(ops):
    """The trace as if enqueue had synced nothing: its fsyncs and syncfs are dropped."""
    out, inside = [], False
    for op in ops:
        if op.kind == "mark" and op.path in ("enqueue-begin", "enqueue-end"):
            inside = op.path == "enqueue-begin"
        if inside and op.kind in ("fsync", "sync"):
            continue
        out.append(op)
    for i, op in enumerate(out):
        op.index = i
    return out


# ---------------------------------------------------------------- recovery of one state

def recover(args):
    """In a pool process: write `tree` into a fresh folder, recover it, report what is there."""
    tree, folder = args
    from queuectl import fsck, metrics
    from queuectl.spool import Spool
    from queuectl.worker import Worker
    spool_path = os.path.join(folder, "spool")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(spool_path, mode=0o700)
    old = time.time() - OLD
    for rel, content in sorted(tree.items()):
        path = os.path.join(spool_path, rel)
        if content is None:
            os.makedirs(path, mode=0o700, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(content)
            os.chmod(path, 0o600)
    for rel in sorted(tree, key=len, reverse=True):
        os.utime(os.path.join(spool_path, rel), (old, old))
    os.utime(spool_path, (old, old))
    ran_before = _runs(spool_path)
    report = {"error": None}
    try:
        spool = Spool(spool_path)
        fsck.repair(fsck.check(spool))
        Worker(spool, burst=True).run()
        report["fsck_after"] = [f"{p.kind}: {p.path}: {p.detail}" for p in fsck.check(spool)]
        report["counts"] = metrics.counts(spool.layout)
        report["settings"] = _settings(spool)
    except Exception as exc:  # a recovery that fails is a finding, not a crash of the explorer
        report["error"] = f"{type(exc).__name__}: {exc}"
    report["where"], report["unreadable"] = _where(spool_path)
    ran_after = _runs(spool_path)
    report["ran_in_recovery"] = sorted(j for j, n in ran_after.items() if n > ran_before.get(j, 0))
    shutil.rmtree(folder, ignore_errors=True)
    return report


def _settings(spool):
    """The values the `setting` markers name, as the recovered spool has them."""
    from queuectl import queues
    out = {"paused": "yes" if spool.paused() else "no",
           "config.max-retries": str(spool.config()["max-retries"])}
    for name, settings in queues.read_all(spool.layout).items():
        out[f"queue.{name}.limit"] = str(settings.limit)
    return out


def _runs(spool_path):
    """{job id: times its command wrote "ran"} in its log, or in a log fsck moved to rejected/
    (the log of a job whose record a power cut lost is an orphan until the job is filed again)."""
    out = {}
    for folder in ("logs", "rejected"):
        path = os.path.join(spool_path, folder)
        for name in os.listdir(path) if os.path.isdir(path) else ():
            if ".log" not in name or name.endswith(".error"):
                continue
            job_id = name.split(".log")[0]
            with open(os.path.join(path, name), "rb") as fh:
                out[job_id] = out.get(job_id, 0) + fh.read().count(b"ran\n")
    return out


def _where(spool_path):
    from queuectl import names
    where, unreadable = {}, []
    for state in STATE_FOLDERS:
        folder = os.path.join(spool_path, state)
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            if name.startswith("."):
                continue
            where.setdefault(names.id_of(state, name) or name, []).append(state)
            try:
                with open(os.path.join(folder, name), "rb") as fh:
                    json.loads(fh.read())
            except ValueError:
                unreadable.append(f"{state}/{name}")
    return where, unreadable


# ---------------------------------------------------------------- invariants

def judge(ops, k, report):
    """(violations, reruns) of the state cut after ops[:k], once recovered."""
    done = ops[:k]
    acked = {op.path[4:] for op in done if op.kind == "mark" and op.path.startswith("ack.")}
    finished = {op.path[4:] for op in done if op.kind == "mark" and op.path.startswith("ran.")}
    acked -= {op.path[7:] for op in done if op.kind == "mark" and op.path.startswith("purged.")}
    where, violations = report["where"], []
    if report["error"]:
        violations.append(f"recovery failed: {report['error']}")
    for job_id in sorted(acked - set(where)):
        violations.append(f"job {job_id} lost (its enqueue had returned)")
    for job_id, states in sorted(where.items()):
        if len(states) > 1:
            violations.append(f"job {job_id} in {' and '.join(states)}")
        if "processing" in states:
            violations.append(f"job {job_id} left in processing/")
        if "completed" in states and job_id not in finished and job_id not in report["ran_in_recovery"]:
            violations.append(f"job {job_id} completed, but its command never finished")
    violations += [f"unreadable record {p}" for p in report["unreadable"]]
    violations += [f"fsck after recovery: {p}" for p in report.get("fsck_after", [])]
    violations += _settings_lost(done, report.get("settings"))
    counts = report.get("counts")
    if counts:
        for state in STATE_FOLDERS:
            listed = sum(1 for states in where.values() if state in states)
            if counts.get(state, listed) != listed:
                violations.append(f"status counts {counts[state]} {state}, the folder holds {listed}")
    reruns = len(finished & set(report["ran_in_recovery"]))
    return violations, reruns


def _settings_lost(done, found):
    """A setting whose change had returned must hold, or a change tried after it."""
    if found is None:
        return []
    allowed = {}
    for op in done:
        if op.kind == "mark" and op.path.startswith(("set.", "try.")):
            key, _, value = op.path.split(".", 1)[1].partition("=")
            if op.path.startswith("set."):
                allowed[key] = {value}
            elif key in allowed:
                allowed[key].add(value)
    return [f"setting {key} is {found.get(key, 'None')}, though {' or '.join(sorted(values))} had been set"
            for key, values in sorted(allowed.items()) if found.get(key, "None") not in values]


# ---------------------------------------------------------------- the run

def explore(names_, seed, plant, samples, workers, models=MODELS, settings=()):
    results = {model: {"states": 0, "distinct": 0, "violations": [], "reruns": 0} for model in models}
    workloads = []
    work = tempfile.mkdtemp(prefix="qc-powerloss-")
    pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        for w, name in enumerate(names_):
            folder = os.path.join(work, f"w{w}")
            os.makedirs(folder)
            initial, ops, final = record(name, folder, settings)
            seam = check_seam(initial, ops, final)
            if plant == "no-enqueue-fsync":
                ops = plant_no_enqueue_fsync(ops)
            entry = {"name": name, "operations": sum(1 for op in ops if op.kind != "mark"), "seam": seam or "complete"}
            if seam:
                for model in models:
                    results[model]["violations"].append({"workload": name, "what": "trace incomplete: " + seam[0]})
            for model in models:
                rng = crashfs.rng_for(seed)
                cache, jobs = {}, []
                for j, k, variant, tree in crashfs.states(ops, initial, model, rng=rng, samples=samples):
                    key = hashlib.sha1(repr(sorted(tree.items())).encode()).hexdigest()
                    jobs.append((j, k, variant, key))
                    if key not in cache:
                        cache[key] = (tree, os.path.join(work, f"s-{key[:16]}"))
                keys = list(cache)
                reports = dict(zip(keys, pool.map(recover, [cache[key] for key in keys], chunksize=4)))
                found = set()
                for j, k, variant, key in jobs:
                    violations, reruns = judge(ops, k, reports[key])
                    results[model]["reruns"] += reruns
                    for v in violations:
                        if (v, model) not in found and len(results[model]["violations"]) < 200:
                            found.add((v, model))
                            last = ops[j - 1] if j else None
                            results[model]["violations"].append(
                                {"workload": name, "after_operation": j, "operation": repr(last), "state": variant,
                                 "told_up_to_operation": k, "what": v})
                results[model]["states"] += len(jobs)
                results[model]["distinct"] += len(keys)
                entry.setdefault("states", {})[model] = len(jobs)
            workloads.append(entry)
    finally:
        pool.close()
        pool.join()
        shutil.rmtree(work, ignore_errors=True)
    return results, workloads


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--quick", action="store_true", help=f"three workloads only ({', '.join(QUICK)})")
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS), help="only these workloads")
    parser.add_argument("--model", action="append", choices=MODELS, help="only these models")
    parser.add_argument("--plant", choices=["no-enqueue-fsync"], help="a bug planted for the explorer to find")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of every workload's spool, e.g. durable-moves=on")
    parser.add_argument("--seed", type=int, default=20261206)
    parser.add_argument("--samples", type=int, default=4, help="posix-weak: random states per crash point")
    parser.add_argument("--drive", nargs=2, metavar=("WORKLOAD", "SPOOL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:
        WORKLOADS[args.drive[0]](args.drive[1])
        return 0
    if not shutil.which("strace"):
        print("powerloss: strace is not installed (apt-get install strace)", file=sys.stderr)
        return 2
    settings = []
    for item in args.config:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--config {item!r}: expected KEY=VALUE")
        settings.append((key, value))
    started = time.monotonic()
    chosen = args.workload or (QUICK if args.quick else tuple(WORKLOADS))
    models, workloads = explore(chosen, args.seed, args.plant, args.samples, workers=2 * (os.cpu_count() or 2),
                                models=tuple(args.model or MODELS), settings=settings)
    doc = {"models": models, "workloads": workloads, "seed": args.seed, "plant": args.plant,
           "config": dict(settings),
           "seconds": round(time.monotonic() - started, 1)}
    bad = any(m["violations"] for m in models.values())
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        for w in workloads:
            print(f"{w['name']}: {w['operations']} operations, trace {w['seam'] if w['seam'] == 'complete' else 'INCOMPLETE'}")
        for name, m in models.items():
            print(f"{name}: {m['states']} states ({m['distinct']} distinct), {len(m['violations'])} violations, "
                  f"{m['reruns']} reruns")
            for v in m["violations"][:20]:
                print(f"  {v['workload']}: after operation {v.get('after_operation')} {v.get('operation', '')} "
                      f"[{v.get('state', '')}]: {v['what']}")
        print(f"{doc['seconds']} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
