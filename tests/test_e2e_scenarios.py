"""End to end: the five basic scenarios of a job queue, driving the real CLI in subprocesses.

(1) a basic job completes; (2) a failing job retries with growing backoff into the DLQ and
`dlq retry` brings it back; (3) four workers on 200 jobs run each exactly once; (4) an
invalid command fails with exit code 127 and ends dead; (5) jobs and states survive a
restart of the workers, and completed jobs are not run again.
"""
import collections
import json
import os
import re
import time

import pytest

from helpers import job_files, read_job, state_records, wait_job, wait_until
from queuectl import timeutil

pytestmark = pytest.mark.process

HEADER = re.compile(r"^=== queuectl attempt (\d+)/(\d+) of job (\S+) · worker (\S+) · (\S+) ===$", re.M)


def attempt_headers(cli, job_id):
    """[(attempt, total, worker, started wall time)] from the job's log."""
    return [(int(a), int(t), w, timeutil.parse_iso(ts))
            for a, t, jid, w, ts in HEADER.findall(cli.log(job_id)) if jid == job_id]


# ---------------------------------------------------------------- (1)

def test_basic_job_completes(cli, spool_dir):
    r = cli("enqueue", "-c", "echo hello from $QUEUECTL_JOB_ID attempt $QUEUECTL_ATTEMPT", "--id", "basic")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "basic\n"
    assert cli.show("basic")["state"] == "pending"

    r = cli("worker", "start", "--burst", timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr

    rec = cli.show("basic")
    assert rec["state"] == "completed"
    assert rec["attempts"] == 1
    assert rec["exit_code"] == 0
    assert rec["last_error"] is None
    assert rec["run_at"] is None, "no next attempt"
    assert rec["started_at"] and rec["finished_at"]
    assert timeutil.parse_iso(rec["finished_at"]) >= timeutil.parse_iso(rec["started_at"])
    assert job_files(spool_dir, "completed") == ["basic.json"]
    assert job_files(spool_dir, "pending") == [] and job_files(spool_dir, "processing") == []

    log = cli("logs", "basic")
    assert log.returncode == 0
    assert "hello from basic attempt 1" in log.stdout
    assert len(HEADER.findall(log.stdout)) == 1
    assert os.path.isfile(os.path.join(spool_dir, "logs", "basic.log"))


# ---------------------------------------------------------------- (2)

@pytest.mark.slow
def test_failing_job_backs_off_into_dlq_and_dlq_retry(cli, spool_dir):
    base = 1.5
    assert cli("config", "set", "backoff-base", str(base)).returncode == 0
    worker = cli.start_tailed("worker", "start")
    r = cli("enqueue", "-c", "echo attempt $QUEUECTL_ATTEMPT; exit 3", "--id", "flaky", "--max-retries", "2")
    assert r.returncode == 0, r.stderr

    # Watch the failed/ folder: each failed attempt leaves its retry time in run_at.
    retries = {}

    def dead():
        for rec in state_records(spool_dir, "failed"):
            if rec.get("id") == "flaky" and rec.get("state") == "failed":
                retries[rec["attempts"]] = rec
        state, record = read_job(spool_dir, "flaky")
        return state == "dead" and record

    wait_until(dead, timeout=25, interval=0.01, what="flaky in dead/")
    rec = cli.show("flaky")
    assert rec["state"] == "dead"
    assert rec["attempts"] == rec["max_retries"] + 1 == 3
    assert rec["exit_code"] == 3
    assert rec["last_error"] == "exit code 3"
    assert rec["run_at"] is None, "no next attempt"

    # run_at after attempt n = finished_at + base ** n: the delays grow
    assert sorted(retries) == [1, 2], f"saw failed records for attempts {sorted(retries)}"
    delays = {n: timeutil.parse_iso(r["run_at"]) - timeutil.parse_iso(r["finished_at"]) for n, r in retries.items()}
    for n, delay in delays.items():
        assert abs(delay - base ** n) < 0.01, delays
    assert delays[2] > delays[1]

    # and no attempt started before its run_at: the gaps between attempt starts grow too
    heads = attempt_headers(cli, "flaky")
    assert [h[0] for h in heads] == [1, 2, 3]
    assert all(h[1] == 3 for h in heads)
    gap1, gap2 = heads[1][3] - heads[0][3], heads[2][3] - heads[1][3]
    assert gap1 >= base - 0.01 and gap2 >= base ** 2 - 0.01, (gap1, gap2)
    assert timeutil.parse_iso(retries[1]["run_at"]) <= heads[1][3] + 0.001
    assert timeutil.parse_iso(retries[2]["run_at"]) <= heads[2][3] + 0.001

    dlq = cli.json("dlq", "list")
    assert [d["id"] for d in dlq] == ["flaky"]
    assert dlq[0]["state"] == "dead" and dlq[0]["attempts"] == 3

    # stop the worker so that the retried job stays visible in pending/
    stop = cli("worker", "stop", timeout=30)
    assert stop.returncode == 0, stop.stderr
    assert worker.wait(timeout=15) == 0

    before = time.time()
    r = cli("dlq", "retry", "flaky")
    assert r.returncode == 0, r.stderr
    assert "flaky" in r.stdout
    rec = cli.show("flaky")
    assert rec["state"] == "pending"
    assert rec["attempts"] == 0
    assert before - 1 <= timeutil.parse_iso(rec["run_at"]) <= time.time() + 1
    assert job_files(spool_dir, "dead") == []
    assert [n for n in job_files(spool_dir, "pending") if n.endswith("_flaky.json")]
    assert cli.json("dlq", "list") == []


# ---------------------------------------------------------------- (3)

@pytest.mark.slow
def test_four_workers_run_200_jobs_exactly_once(cli, spool_dir, tmp_path):
    out = tmp_path / "ids.txt"
    ids = [f"job-{i:03d}" for i in range(200)]
    batch = tmp_path / "jobs.jsonl"
    batch.write_text("".join(json.dumps({"id": i, "command": f"echo $QUEUECTL_JOB_ID >> {out}"}) + "\n"
                             for i in ids))
    r = cli("enqueue", "--file", str(batch))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ids
    assert len(job_files(spool_dir, "pending")) == 200

    r = cli("worker", "start", "--count", "4", "--burst", timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert "started 4 worker(s)" in r.stdout

    lines = out.read_text().splitlines()
    counts = collections.Counter(lines)
    assert sorted(counts) == ids, "every line is one whole id (O_APPEND: no torn or mixed lines)"
    assert [i for i, n in counts.items() if n != 1] == [], "each job ran exactly once"
    assert len(lines) == 200

    assert len(job_files(spool_dir, "completed")) == 200
    for state in ("pending", "processing", "failed", "dead"):
        assert job_files(spool_dir, state) == [], state
    records = cli.json("list", "--state", "completed")
    assert len(records) == 200
    assert {r["attempts"] for r in records} == {1}
    workers = collections.Counter(r["worker"] for r in records)
    assert len(workers) >= 2, f"the jobs were shared between workers: {workers}"
    # one attempt header per log: no job was started twice by two workers
    for job_id in ("job-000", "job-099", "job-199"):
        assert len(attempt_headers(cli, job_id)) == 1


# ---------------------------------------------------------------- (4)

def test_invalid_command_fails_with_127_then_dead(cli, spool_dir):
    assert cli("config", "set", "backoff-max", "0").returncode == 0  # retry at once
    cli.start_tailed("worker", "start")
    r = cli("enqueue", '{"id": "badcmd", "command": "nonexistent_cmd_xyz", "max_retries": 1}')
    assert r.returncode == 0, r.stderr
    wait_job(spool_dir, "badcmd", "dead", timeout=20)
    rec = cli.show("badcmd")
    assert rec["state"] == "dead"
    assert rec["attempts"] == 2
    assert rec["exit_code"] == 127
    assert rec["last_error"] == "exit code 127"
    log = cli("logs", "badcmd").stdout
    assert log.count("nonexistent_cmd_xyz: ") >= 2 and "not found" in log
    assert [h[0] for h in attempt_headers(cli, "badcmd")] == [1, 2]
    assert [d["id"] for d in cli.json("dlq", "list")] == ["badcmd"]


# ---------------------------------------------------------------- (5)

def test_data_survives_worker_restart(cli, spool_dir, tmp_path):
    out = tmp_path / "ran.txt"
    cmd = f"echo $QUEUECTL_JOB_ID >> {out}"
    assert cli("config", "set", "backoff-base", "1000").returncode == 0
    for i in range(3):
        assert cli("enqueue", "-c", cmd, "--id", f"early-{i}").returncode == 0
    assert cli("enqueue", "-c", "exit 1", "--id", "retrying", "--max-retries", "1").returncode == 0
    assert cli("enqueue", "-c", cmd, "--id", "tomorrow", "--run-at", "+1d").returncode == 0

    first = cli.start_tailed("worker", "start")
    wait_until(lambda: len(job_files(spool_dir, "completed")) == 3 and job_files(spool_dir, "failed"),
               timeout=15, what="3 completed and 1 failed")
    stop = cli("worker", "stop", timeout=30)
    assert stop.returncode == 0, stop.stderr
    assert first.wait(timeout=15) == 0
    assert cli.live_workers() == []

    for i in range(2):
        assert cli("enqueue", "-c", cmd, "--id", f"late-{i}").returncode == 0

    before = {r["id"]: r for r in cli.json("list")}
    assert {k: v["state"] for k, v in before.items()} == {
        "early-0": "completed", "early-1": "completed", "early-2": "completed",
        "retrying": "failed", "tomorrow": "pending", "late-0": "pending", "late-1": "pending"}
    assert before["retrying"]["attempts"] == 1

    # a new worker, another process: it sees the same spool
    second = cli.start_tailed("worker", "start")
    wait_until(lambda: len(job_files(spool_dir, "completed")) == 5, timeout=15, what="5 completed")
    stop = cli("worker", "stop", timeout=30)
    assert stop.returncode == 0, stop.stderr
    assert second.wait(timeout=15) == 0

    after = {r["id"]: r for r in cli.json("list")}
    assert {k: v["state"] for k, v in after.items()} == {
        "early-0": "completed", "early-1": "completed", "early-2": "completed",
        "retrying": "failed", "tomorrow": "pending", "late-0": "completed", "late-1": "completed"}
    for job_id in ("early-0", "early-1", "early-2"):
        assert after[job_id] == before[job_id], "a completed job is untouched by the restart"
    assert after["retrying"] == before["retrying"], "a waiting retry keeps its record and run_at"
    assert sorted(out.read_text().split()) == ["early-0", "early-1", "early-2", "late-0", "late-1"], \
        "each job ran once: completed ones were not rerun"
    assert {after[j]["worker"] for j in ("late-0", "late-1")} != {before["early-0"]["worker"]}
