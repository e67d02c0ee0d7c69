"""A spool written by an earlier version keeps working: tests/data/spool-VERSION was made by
that version's own CLI (testbed/upgrade_spool.py), with a job in every state folder, a
worker killed mid-job, a dropped file, a schedule, a limited queue and a paused one. This
checkout reads it, repairs it and runs it, and every job ends where that version's
contract says."""
import json
import os
import shutil

import pytest

from helpers import ROOT, fsck_json, run_cli

pytestmark = pytest.mark.process

VERSIONS = sorted(d for d in os.listdir(os.path.join(ROOT, "tests", "data")) if d.startswith("spool-"))


@pytest.fixture(params=VERSIONS)
def old_spool(request, tmp_path):
    path = str(tmp_path / "spool")
    shutil.copytree(os.path.join(ROOT, "tests", "data", request.param), path, symlinks=True)
    os.chmod(path, 0o700)
    return path


def q(spool, *args):
    code, out, err = run_cli(spool, list(args))
    assert code == 0 and "Traceback" not in err, f"{args}: exit {code}: {err}"
    return out


def show(spool, job_id):
    return json.loads(q(spool, "show", job_id, "--json"))


def test_an_earlier_versions_spool_is_read_repaired_and_run(old_spool):
    spool = old_spool
    counts = json.loads(q(spool, "status", "--json"))["counts"]
    assert {k: counts[k] for k in ("pending", "blocked", "processing", "failed", "completed", "dead")} == \
        {"pending": 4, "blocked": 1, "processing": 1, "failed": 1, "completed": 1, "dead": 1}, counts
    running = show(spool, "long-1")
    assert (running["state"], running["attempts"], running["worker"].split(":")[0]) == ("processing", 1, "oldhost")
    assert show(spool, "done-1")["exit_code"] == 0 and "done one" in q(spool, "logs", "done-1")
    assert show(spool, "after-1")["state"] == "blocked"

    # its worker is gone (killed with its command): fsck finds the job and takes it back,
    # the attempt counted, its retry years away (the spool's backoff-base)
    code, report = fsck_json(spool)
    assert code == 1 and "orphan-processing" in {p["kind"] for p in report["problems"]}, report
    code, out, err = run_cli(spool, ["fsck", "--repair"])
    assert code in (0, 1) and "Traceback" not in err, err
    taken_back = show(spool, "long-1")
    assert (taken_back["state"], taken_back["attempts"]) == ("failed", 1)
    assert "worker lost" in taken_back["last_error"]

    q(spool, "worker", "run", "--burst")
    state = {job: show(spool, job)["state"] for job in
             ("urgent-1", "after-1", "solo-1", "dropped-1", "done-1", "held-1", "later-1", "long-1", "dead-1")}
    assert state == {"urgent-1": "completed", "after-1": "completed", "solo-1": "completed",
                     "dropped-1": "completed", "done-1": "completed",
                     "held-1": "pending",   # its queue is paused, and stays so
                     "later-1": "pending",  # due in 2099
                     "long-1": "failed", "dead-1": "dead"}, state
    assert "dropped" in q(spool, "logs", "dropped-1")
    first = show(spool, "retry-1")
    assert (first["state"], first["attempts"]) == ("failed", 1)

    # the user's commands work on the old records: a retry now, a dead job re-run, a paused
    # queue resumed
    q(spool, "retry", "retry-1")
    q(spool, "dlq", "retry", "dead-1")
    q(spool, "resume", "--queue", "held")
    q(spool, "worker", "run", "--burst")
    retried = show(spool, "retry-1")  # `retry` starts its count again
    assert (retried["state"], retried["attempts"], retried["exit_code"]) == ("failed", 1, 4)
    assert retried["finished_at"] > first["finished_at"]
    assert q(spool, "logs", "retry-1").count("=== queuectl attempt 1/3 of job retry-1") == 2
    again = show(spool, "dead-1")
    assert (again["state"], again["attempts"], again["exit_code"]) == ("dead", 1, 3)
    assert q(spool, "logs", "dead-1").count("\nfailing\n") == 2  # its output, once per run
    assert show(spool, "held-1")["state"] == "completed"
    assert [s["name"] for s in json.loads(q(spool, "schedule", "list", "--json"))] == ["nightly"]
    queues = {x["name"]: x for x in json.loads(q(spool, "queue", "list", "--json"))}
    assert queues["solo"]["limit"] == 1
    code, report = fsck_json(spool)
    assert code == 0, report


@pytest.mark.parametrize("command", [["worker", "run", "--burst"], ["worker", "start", "--burst"]])
def test_no_worker_starts_beside_a_live_worker_of_an_earlier_version(tmp_path, command):
    """0.1.0's workers cannot read this version's processing/ names (they would set running
    jobs aside as damaged): a worker or supervisor of this version refuses to start beside
    one, in one line with exit code 2, and starts once it is gone."""
    from queuectl import Spool, locks
    spool = Spool(str(tmp_path / "spool"))
    spool.enqueue("true", id="j")
    registration = os.path.join(spool.layout.workers, "oldhost_4242.json")  # as 0.1.0 writes it
    fd = os.open(registration, os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, json.dumps({"host": "oldhost", "pid": 4242, "started_at": "2026-11-24T13:00:00.000Z"}).encode())
    locks.hold(fd)  # alive: its lock is held
    try:
        code, out, err = run_cli(spool.path, command)
        assert code == 2 and err.count("\n") == 1 and "earlier queuectl version" in err and "oldhost:4242" in err, err
        assert spool.get("j")["state"] == "pending"
    finally:
        os.close(fd)
    os.unlink(registration)
    code, out, err = run_cli(spool.path, command)
    assert code == 0 and spool.get("j")["state"] == "completed", err
