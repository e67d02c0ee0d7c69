"""Long-running reliability tests: exactly-once delivery under contention (8 workers, two
concurrent enqueuers, 20,000 jobs), chaos (kill -9 of workers and supervisors while 5,000
jobs run), the 'worker lost' accounting of a single killed attempt, and `worker stop` right
after a crash (a bug the chaos test's shutdown ran into, fixed).

Every job appends its own id to one shared file with O_APPEND (`echo ID >> out.txt`: one
short write), so out.txt is the ground truth of which job ran how many times. Every wait is
bounded and fails with the progress seen so far; processes are stopped by PID only (the
`cli` fixture kills the supervisors it started and every worker still registered).

Run with -s to see the numbers (drain rate, kills, jobs run twice, take-back latencies).
"""
import collections
import json
import os
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time

import pytest

from helpers import (ROOT, STATE_FOLDERS, cli_env, fsck_json, job_files, pid_gone, read_job, read_job_file,
                     state_counts, wait_until)
from queuectl import Spool, registry, supervisor
from queuectl.paths import Layout

pytestmark = [pytest.mark.slow, pytest.mark.process]

HEADER = re.compile(r"^=== queuectl attempt (\d+)/\d+ of job (\S+) · worker (\S+):(\d+) · ", re.M)


# ---------------------------------------------------------------- helpers

def counts(spool_dir):
    return state_counts(spool_dir, ("incoming",) + STATE_FOLDERS)


def live_workers(spool_dir):
    """Registered workers whose registration lock is held (the registry's own notion of live)."""
    return registry.live_workers(Layout(spool_dir))


def ppid_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def out_counts(path):
    """id -> number of lines with it in out.txt (one line per run of a job)."""
    with open(path) as fh:
        lines = fh.read().split("\n")
    assert lines[-1] == "", "out.txt does not end with a newline (a torn write?)"
    return collections.Counter(lines[:-1])


def write_jsonl(path, jobs):
    with open(path, "w") as fh:
        for job in jobs:
            fh.write(json.dumps(job) + "\n")


def read_log(spool_dir, job_id):
    try:
        with open(os.path.join(spool_dir, "logs", job_id + ".log"), errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def drain_wait(spool_dir, total, timeout, what, alive=None, every=15.0):
    """Wait until `total` jobs are in completed/; print progress every `every` s. `alive()`
    returns None while all is well, or a reason to fail at once (a crashed process)."""
    start = time.monotonic()
    deadline = start + timeout
    next_print = start + every
    while True:
        c = counts(spool_dir)
        if c["completed"] == total:
            return time.monotonic() - start
        problem = alive() if alive else None
        if problem:
            raise AssertionError(f"{what}: {problem}; counts {c}")
        now = time.monotonic()
        if now >= deadline:
            raise AssertionError(f"{what}: timed out after {timeout:.0f}s with {c['completed']}/{total} "
                                 f"completed; counts {c}")
        if now >= next_print:
            print(f"  [{what}] {now - start:6.1f}s: {c}", flush=True)
            next_print = now + every
        time.sleep(0.25)


# ---------------------------------------------------------------- 1. exactly once under contention

ENQUEUER = r"""
set -e
for f in "$1"/*.jsonl; do
    "$2" -m queuectl enqueue --file "$f" > /dev/null
done
"""


def test_exactly_once_under_contention(cli, spool_dir, tmp_path):
    per_enqueuer, chunk = 10_000, 1_000
    total = 2 * per_enqueuer
    out = tmp_path / "out.txt"
    out.touch()
    command = f'echo "$QUEUECTL_JOB_ID" >> {shlex.quote(str(out))}'
    expected = set()
    for who in ("a", "b"):
        folder = tmp_path / f"enq-{who}"
        folder.mkdir()
        for first in range(0, per_enqueuer, chunk):
            jobs = [{"id": f"{who}{i:05d}", "command": command} for i in range(first, first + chunk)]
            expected.update(job["id"] for job in jobs)
            write_jsonl(folder / f"chunk-{first:05d}.jsonl", jobs)
    assert len(expected) == total

    t0 = time.monotonic()
    sup = cli.start_tailed("worker", "start", "--count", "8")
    wait_until(lambda: len(live_workers(spool_dir)) == 8, 30, what="8 live workers")

    enqueuers = []
    after_enqueue = [None]  # (when both enqueuers were done, jobs completed by then)
    try:
        t_enq = time.monotonic()
        for who in ("a", "b"):
            err = open(tmp_path / f"enq-{who}.err", "w")
            enqueuers.append((who, subprocess.Popen(
                ["/bin/sh", "-c", ENQUEUER, "enqueuer", str(tmp_path / f"enq-{who}"), sys.executable],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=cli_env(spool_dir),
                cwd=ROOT, start_new_session=True), err, [None]))

        def alive():
            if after_enqueue[0] is None and all(p.poll() == 0 for _, p, _, _ in enqueuers):
                after_enqueue[0] = (time.monotonic(), len(job_files(spool_dir, "completed")))
            for who, proc, err, done in enqueuers:
                code = proc.poll()
                if code is not None and done[0] is None:
                    done[0] = time.monotonic() - t_enq
                if code not in (None, 0):
                    return f"enqueuer {who} exited {code}: {open(err.name).read()[-2000:]}"
            if sup.poll() is not None:
                return f"the supervisor exited {sup.returncode}: {sup.tail.text()[-2000:]}"
            return None

        drain = drain_wait(spool_dir, total, 600, "exactly-once", alive=alive)
        t_done = time.monotonic()
        for who, proc, err, done in enqueuers:
            assert proc.wait(timeout=30) == 0
            err.close()
            assert open(err.name).read() == "", f"enqueuer {who} wrote to stderr"
            if done[0] is None:
                done[0] = time.monotonic() - t_enq
    finally:
        for _, proc, err, _ in enqueuers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            err.close()

    # every worker is idle now; a graceful stop must end them all promptly
    stop = cli("worker", "stop", "--timeout", "30")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    wait_until(lambda: sup.poll() is not None, 15, what="the supervisor to exit after worker stop")

    seen = out_counts(out)
    lost = expected - set(seen)
    twice = {job_id: n for job_id, n in seen.items() if n > 1}
    strangers = set(seen) - expected
    c = counts(spool_dir)
    print(f"\n[exactly-once] {total} jobs, 8 workers, 2 concurrent enqueuers x {per_enqueuer} "
          f"(batches of {chunk}): enqueue a {enqueuers[0][3][0]:.1f}s, b {enqueuers[1][3][0]:.1f}s; "
          f"drained in {drain:.1f}s from the first enqueue = {total / drain:.0f} jobs/s; "
          f"total {time.monotonic() - t0:.1f}s")
    if after_enqueue[0]:
        t_at, done_at = after_enqueue[0]
        print(f"[exactly-once] while enqueuing: {done_at} completed in {t_at - t_enq:.1f}s; after: "
              f"{total - done_at} in {t_done - t_at:.1f}s = {(total - done_at) / max(t_done - t_at, 1e-9):.0f} jobs/s")
    print(f"[exactly-once] lines in out.txt {sum(seen.values())}, distinct ids {len(seen)}, "
          f"lost {len(lost)}, run twice {len(twice)}, unknown lines {len(strangers)}; counts {c}")
    assert not strangers, f"lines that are no job id (torn writes?): {sorted(strangers)[:10]}"
    assert not lost, f"{len(lost)} job(s) never ran, e.g. {sorted(lost)[:10]}"
    assert not twice, f"{len(twice)} job(s) ran more than once without any crash, e.g. {sorted(twice.items())[:10]}"
    assert c == {"incoming": 0, "blocked": 0, "pending": 0, "processing": 0, "failed": 0, "completed": total,
                 "dead": 0}, c

    wrong = []
    for name in job_files(spool_dir, "completed"):
        rec = read_job_file(spool_dir, "completed", name)
        if rec["attempts"] != 1 or rec["state"] != "completed" or rec["exit_code"] != 0 \
                or rec["last_error"] is not None or name != rec["id"] + ".json":
            wrong.append(rec)
    assert not wrong, f"{len(wrong)} completed record(s) not a clean single attempt, e.g. {wrong[:3]}"
    _, report = fsck_json(spool_dir)
    assert report["ok"] and not report["problems"], report["problems"][:10]


# ---------------------------------------------------------------- 2. chaos: kill -9 workers and supervisors

def test_chaos_kill9_workers_and_supervisors(cli, spool_dir, tmp_path):
    rng = random.Random(20261124)
    total = 5_000
    out = tmp_path / "out.txt"
    out.touch()
    quoted = shlex.quote(str(out))
    assert cli("config", "set", "max-retries", "10").returncode == 0
    assert cli("config", "set", "backoff-base", "1").returncode == 0
    jobs = [{"id": f"c{i:05d}", "command": f'echo "$QUEUECTL_JOB_ID" >> {quoted}; sleep 0.0{rng.randrange(10)}'}
            for i in range(total)]
    write_jsonl(tmp_path / "jobs.jsonl", jobs)
    r = cli("enqueue", "--file", str(tmp_path / "jobs.jsonl"), timeout=120)
    assert r.returncode == 0, r.stderr
    expected = {job["id"] for job in jobs}

    t0 = time.monotonic()
    supervisors = [cli.start_tailed("worker", "start", "--count", "4")]
    wait_until(lambda: len(live_workers(spool_dir)) == 4, 30, what="4 live workers")

    killed = {}            # worker pid -> (host, supervisor alive at the kill, processing names it held)
    latencies = []         # (seconds until the job file left processing/, bound, name)
    stuck = []             # job files still in processing/ past their bound
    sup_kills = 0
    sup_exits = []         # supervisors that ended on their own (not killed by us)
    max_workers = 4
    deadline = t0 + 300
    next_print = t0 + 15
    processing = os.path.join(spool_dir, "processing")

    def held_by(host, pid):
        marker = f"_{host}_{pid}_a"
        return {n for n in os.listdir(processing) if marker in n and n.endswith(".json")}

    while len(job_files(spool_dir, "completed")) < total:
        now = time.monotonic()
        assert now < deadline, (f"chaos: timed out with {counts(spool_dir)}; {len(killed)} worker kills, "
                                f"{sup_kills} supervisor kills; live workers {live_workers(spool_dir)}")
        if now >= next_print:
            print(f"  [chaos] {now - t0:6.1f}s: {counts(spool_dir)}, {len(killed)} worker kills, "
                  f"{sup_kills} supervisor kills, {len(live_workers(spool_dir))} live workers", flush=True)
            next_print = now + 15
        time.sleep(rng.uniform(0.5, 1.5))  # pacing of the chaos only; no assertion depends on it
        current = supervisors[-1]
        if current.poll() is not None:
            # it gave up or crashed: an operator (or systemd) starts the workers again
            sup_exits.append((current.pid, current.returncode, current.tail.text()[-1500:]))
            supervisors.append(cli.start_tailed("worker", "start", "--count", "4"))
            continue
        if rng.random() < 0.1:
            os.kill(current.pid, signal.SIGKILL)
            current.wait(timeout=10)
            sup_kills += 1
            supervisors.append(cli.start_tailed("worker", "start", "--count", "4"))
            continue
        workers = live_workers(spool_dir)
        max_workers = max(max_workers, len(workers))
        if not workers:
            continue
        victim = rng.choice(workers)
        pid, host = int(victim["pid"]), victim["host"]
        parent = ppid_of(pid)
        sup_alive = any(s.pid == parent and s.poll() is None for s in supervisors)
        before = held_by(host, pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        t_kill = time.monotonic()
        wait_until(lambda: pid_gone(pid) or ppid_of(pid) != parent, 10, what=f"worker {pid} to die")
        held = before | held_by(host, pid)
        killed[pid] = (host, sup_alive, held)
        bound = 2.0 if sup_alive else 10.0
        for name in held:
            path = os.path.join(processing, name)
            limit = t_kill + bound + 5  # look a little past the bound, to report how late it was
            while os.path.lexists(path) and time.monotonic() < limit:
                time.sleep(0.005)
            if os.path.lexists(path):
                stuck.append((name, bound, sup_alive))
            else:
                latencies.append((time.monotonic() - t_kill, bound, name))
    chaos_time = time.monotonic() - t0

    # all completed: nothing is left anywhere else
    c = counts(spool_dir)
    assert c == {"incoming": 0, "blocked": 0, "pending": 0, "processing": 0, "failed": 0, "completed": total,
                 "dead": 0}, c
    # stop every worker before reading out.txt for good: the live supervisor like Ctrl+C (it
    # forwards SIGTERM and replaces no one any more), then `worker stop` for the orphans of
    # the supervisors we killed. (`worker stop` alone can miss a replacement that registers
    # just after it listed the workers: see test_worker_stop_right_after_a_crash_...)
    for sup in supervisors:
        if sup.poll() is None:
            sup.send_signal(signal.SIGTERM)
    for sup in supervisors:
        wait_until(lambda: sup.poll() is not None, 30, what=f"supervisor {sup.pid} to exit after SIGTERM")
    stop = cli("worker", "stop", "--timeout", "30")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    wait_until(lambda: not live_workers(spool_dir), 15, what="every worker to stop")

    seen = out_counts(out)
    lost = expected - set(seen)
    strangers = set(seen) - expected
    killed_pids = set(killed)
    twice, unexplained, retried = {}, [], 0
    for job_id in sorted(expected):
        rec = read_job_file(spool_dir, "completed", job_id + ".json")
        runs = seen.get(job_id, 0)
        headers = [(int(a), int(p)) for a, j, h, p in HEADER.findall(read_log(spool_dir, job_id)) if j == job_id]
        if rec["attempts"] > 1:
            retried += 1
        if runs > 1:
            twice[job_id] = runs
        # every attempt but the last was ended by a kill -9 of its worker (nothing else fails here)
        earlier = headers[:-1]
        ok = (rec["attempts"] >= len(headers) >= runs and headers and headers[-1][0] == rec["attempts"]
              and all(p in killed_pids for _, p in earlier) and rec["last_error"] is None
              and (runs < 2 or rec["attempts"] >= 2))
        if not ok:
            unexplained.append((job_id, runs, rec, headers))

    lat = sorted(x[0] for x in latencies)
    under_sup = [x for x in latencies if x[1] == 2.0]
    orphan = [x for x in latencies if x[1] == 10.0]
    print(f"\n[chaos] {total} jobs in {chaos_time:.1f}s ({total / chaos_time:.0f} jobs/s); kills: "
          f"{len(killed)} workers ({sum(1 for v in killed.values() if v[1])} under a live supervisor, "
          f"{sum(1 for v in killed.values() if not v[1])} orphans), {sup_kills} supervisors; "
          f"supervisors that exited on their own: {len(sup_exits)}; most live workers at once {max_workers}")
    print(f"[chaos] kills that hit a running job: {len(latencies) + len(stuck)}; jobs with >1 attempt "
          f"{retried}; jobs run twice (in out.txt) {len(twice)}, max runs of one job "
          f"{max(twice.values(), default=1)}; lost {len(lost)}; unexplained {len(unexplained)}")
    if lat:
        print(f"[chaos] take-back latency: max {lat[-1]:.3f}s, median {statistics.median(lat):.3f}s "
              f"(live supervisor: n={len(under_sup)}, max {max((x[0] for x in under_sup), default=0):.3f}s; "
              f"supervisor dead: n={len(orphan)}, max {max((x[0] for x in orphan), default=0):.3f}s)")
    for pid, code, tail in sup_exits:
        print(f"[chaos] supervisor {pid} exited {code} by itself; its last output:\n{tail}")

    assert not strangers, f"lines that are no job id: {sorted(strangers)[:10]}"
    assert not lost, f"{len(lost)} job(s) never ran: {sorted(lost)[:10]}"
    assert not stuck, f"job files still in processing/ past their bound after a kill: {stuck}"
    late = [x for x in latencies if x[0] > x[1]]
    assert not late, f"take-backs slower than their bound (s, bound, file): {late}"
    assert not unexplained, (f"{len(unexplained)} job(s) whose extra runs no kill explains "
                             f"(id, runs in out.txt, record, attempt headers (n, pid)): {unexplained[:5]}")
    assert latencies, "no kill hit a running job: the chaos tested nothing"
    # what kill -9 may leave behind: registrations of dead workers, a dead mover's staged copy
    _, report = fsck_json(spool_dir)
    kinds = collections.Counter(p["kind"] for p in report["problems"])
    print(f"[chaos] fsck after the run: {dict(kinds) or 'clean'}")
    serious = [p for p in report["problems"] if p["kind"] not in ("stale-worker", "tmp-leftover")]
    assert not serious, serious[:10]


# ---------------------------------------------------------------- 3. 'worker lost' accounting of one kill

def test_killed_attempt_counts_as_worker_lost_then_completes(cli, spool_dir, tmp_path):
    pidfile = str(tmp_path / "job.pid")
    out = str(tmp_path / "out.txt")
    cli.kill_at_teardown(pidfile)  # the first attempt's shell outlives its worker (own session)
    command = (f'echo "$QUEUECTL_JOB_ID" >> {shlex.quote(out)}; '
               f'if [ "$QUEUECTL_ATTEMPT" = 1 ]; then echo $$ > {shlex.quote(pidfile)}; exec sleep 60; fi')
    assert cli("enqueue", "-c", command, "--id", "lost1", "--max-retries", "3").returncode == 0
    assert cli("config", "set", "backoff-base", "2").returncode == 0  # 2 s in failed/: time to look
    sup = cli.start_tailed("worker", "start", "--count", "1")
    wait_until(lambda: os.path.exists(pidfile) and open(pidfile).read().strip(), 15, what="attempt 1 running")
    [w] = live_workers(spool_dir)
    [name] = job_files(spool_dir, "processing")
    assert name.startswith(f"lost1_{w['host']}_{w['pid']}_a1_")

    os.kill(int(w["pid"]), signal.SIGKILL)
    t_kill = time.monotonic()
    wait_until(lambda: not os.path.lexists(os.path.join(spool_dir, "processing", name)), 2,
               what="the lost job out of processing/ within 2 s (live supervisor)")
    took = time.monotonic() - t_kill

    def failed_record():
        state, rec = read_job(spool_dir, "lost1")
        return rec if state == "failed" and rec else None
    rec = wait_until(failed_record, 2, what="lost1 in failed/ with its new record")
    assert rec["last_error"] == f"worker lost (host {w['host']}, pid {w['pid']})", rec
    assert rec["attempts"] == 1 and rec["exit_code"] is None and rec["finished_at"], rec

    def completed_record():
        state, rec = read_job(spool_dir, "lost1")
        return rec if state == "completed" and rec else None
    final = wait_until(completed_record, 20, what="lost1 completed by the replacement worker")
    assert final["attempts"] == 2 and final["exit_code"] == 0 and final["last_error"] is None, final
    assert final["worker"] != f"{w['host']}:{w['pid']}"
    headers = HEADER.findall(read_log(spool_dir, "lost1"))
    assert [(a, p) for a, _, _, p in headers] == [("1", str(w["pid"])), ("2", final["worker"].rsplit(":", 1)[1])]
    assert out_counts(out) == {"lost1": 2}  # ran twice: the one double run a kill may cause
    assert "taken back: worker lost" in sup.tail.text()
    assert job_files(spool_dir, "processing") == [] and job_files(spool_dir, "dead") == []
    print(f"\n[worker lost] taken back {took:.3f}s after kill -9; record after the kill: "
          f"attempts {rec['attempts']}, last_error {rec['last_error']!r}; final: completed, attempts 2")


# ---------------------------------------------------------------- 4. `worker stop` racing a crash

def test_worker_stop_right_after_a_crash_stops_the_replacement_too(cli, spool_dir):
    """Found by the chaos test's shutdown: an operator runs `worker stop` right after a
    worker crashed. It stops every worker of this spool and waits until they have
    exited (docs/contract.md "Commands"); so afterwards no worker may run, and the supervisor,
    with no worker left, exits.
    The stop is called in-process right after the kill (the CLI is a thin layer over it), so
    the race is hit every time: the replacement takes far longer to start than the listing."""
    sup = cli.start_tailed("worker", "start", "--count", "2")
    workers = wait_until(lambda: (lambda ws: ws if len(ws) == 2 else None)(live_workers(spool_dir)), 30,
                         what="2 live workers")
    victim = workers[0]["name"]
    os.kill(int(workers[0]["pid"]), signal.SIGKILL)
    wait_until(lambda: not registry.is_alive(Layout(spool_dir), victim), 5, what="the killed worker's lock freed")
    remaining, asked = supervisor.stop_workers(Spool(spool_dir), timeout=15)
    assert remaining == [] and workers[1]["name"] in asked and victim not in asked, (remaining, asked)
    deadline = time.monotonic() + 5
    while sup.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    left = live_workers(spool_dir)
    assert sup.poll() is not None and not left, (
        f"5 s after `worker stop` returned (it asked {asked}), still running: supervisor "
        f"{sup.pid} (alive: {sup.poll() is None}), workers {left}; supervisor output:\n{sup.tail.text()}")
