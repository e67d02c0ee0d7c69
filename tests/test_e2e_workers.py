"""End to end: workers and the supervisor as processes. Crashes (kill -9), a job that kills
its own worker, graceful and immediate stops (signals and `worker stop`), --detach, --burst,
timeouts with grandchildren, cancel --kill, and a config change seen by a running worker.
"""
import json
import os
import re
import signal
import time

import pytest

from helpers import job_files, pid_gone, read_job, wait_job, wait_until
from queuectl import names, registry

pytestmark = pytest.mark.process


def wait_workers(cli, n, timeout=15):
    return wait_until(lambda: (lambda ws: ws if len(ws) == n else None)(cli.live_workers()),
                      timeout, what=f"{n} live worker(s)")


def wait_running(cli, job_id, timeout=15):
    """The live worker (status --json) running `job_id`."""
    def running():
        for w in cli.live_workers():
            if w["job"] == job_id:
                return w
        return None
    return wait_until(running, timeout, what=f"a worker running {job_id}")


def read_pid(path, timeout=10):
    wait_until(lambda: os.path.exists(path) and open(path).read().strip(), timeout, what=f"pid in {path}")
    return int(open(path).read().split()[0])


# ---------------------------------------------------------------- crashes

def test_kill9_worker_job_taken_back_and_worker_replaced(cli, spool_dir, tmp_path):
    pidfile = str(tmp_path / "job.pid")
    cli.kill_at_teardown(pidfile)  # the job's shell outlives its worker: own process group
    assert cli("enqueue", "-c", f"echo $$ > {pidfile}; sleep 5", "--id", "victim",
               "--max-retries", "0").returncode == 0
    sup = cli.start_tailed("worker", "start")
    w = wait_running(cli, "victim")
    read_pid(pidfile)  # the command runs
    os.kill(w["pid"], signal.SIGKILL)
    t0 = time.monotonic()

    def taken_back():
        state, rec = read_job(spool_dir, "victim")
        return state in ("failed", "dead") and rec
    rec = wait_until(taken_back, timeout=2, what="victim taken back within 2 s")
    elapsed = time.monotonic() - t0
    assert rec["state"] == "dead"  # max_retries 0: the lost attempt was the last one
    assert rec["last_error"].startswith("worker lost"), rec["last_error"]
    assert f"pid {w['pid']}" in rec["last_error"]
    assert rec["exit_code"] is None and rec["attempts"] == 1
    assert job_files(spool_dir, "processing") == []
    assert elapsed < 2

    new = wait_until(lambda: [x for x in cli.live_workers() if x["pid"] != w["pid"]], timeout=10,
                     what="a replacement worker")
    assert len(new) == 1
    assert sup.poll() is None, "the supervisor lives on"
    assert pid_gone(w["pid"])


def test_taking_back_a_lost_job_kills_what_is_left_of_it(cli, spool_dir, tmp_path):
    """At most one copy of a job runs: the dead worker's job (and its grandchild) are killed
    when the job is taken back, before a retry can start."""
    pidfile = str(tmp_path / "job.pid")
    cli.kill_at_teardown(pidfile)
    assert cli("enqueue", "-c", f"sleep 60 & echo $! > {pidfile}; wait", "--id", "orphan",
               "--max-retries", "1").returncode == 0
    cli.start_tailed("worker", "start")
    w = wait_running(cli, "orphan")
    grandchild = read_pid(pidfile)
    os.kill(w["pid"], signal.SIGKILL)
    wait_until(lambda: read_job(spool_dir, "orphan")[0] != "processing" or None, 5, what="take-back")
    wait_until(lambda: pid_gone(grandchild), 5, what="the lost job's grandchild to be killed")


def test_kill9_supervisor_and_worker_next_start_takes_job_back(cli, spool_dir, tmp_path):
    pidfile = str(tmp_path / "job.pid")
    cli.kill_at_teardown(pidfile)
    assert cli("enqueue", "-c", f"echo $$ > {pidfile}; sleep 5", "--id", "orphan",
               "--max-retries", "0").returncode == 0
    sup = cli.start_tailed("worker", "start")
    w = wait_running(cli, "orphan")
    os.kill(sup.pid, signal.SIGKILL)
    sup.wait(timeout=10)
    os.kill(w["pid"], signal.SIGKILL)
    wait_until(lambda: pid_gone(w["pid"]), 5, what="the worker gone")
    # nobody is left to notice: the job stays in processing/ until a worker starts
    assert read_job(spool_dir, "orphan")[0] == "processing"
    assert cli.live_workers() == []

    cli.start_tailed("worker", "start")
    t0 = time.monotonic()
    rec = wait_job(spool_dir, "orphan", ("failed", "dead"), timeout=10)
    assert time.monotonic() - t0 < 10
    assert rec["state"] == "dead"
    assert rec["last_error"] == f"worker lost (host {w['host']}, pid {w['pid']})"
    assert rec["attempts"] == 1
    assert job_files(spool_dir, "processing") == []


@pytest.mark.slow
def test_poison_pill_that_kills_its_worker_ends_dead(cli, spool_dir):
    assert cli("config", "set", "backoff-max", "0").returncode == 0
    # the job's shell is a direct child of its worker: $PPID is the worker
    assert cli("enqueue", "-c", "kill -9 $PPID", "--id", "poison", "--max-retries", "2").returncode == 0
    sup = cli.start_tailed("worker", "start")
    rec = wait_job(spool_dir, "poison", "dead", timeout=45)
    assert rec["attempts"] == 3 == rec["max_retries"] + 1
    assert rec["last_error"].startswith("worker lost"), rec["last_error"]
    assert rec["exit_code"] is None
    assert cli.log("poison").count("=== queuectl attempt ") == 3
    assert sup.poll() is None
    wait_workers(cli, 1)  # and the queue still has a worker
    # it stays dead: no further attempt
    assert cli.show("poison")["attempts"] == 3


# ---------------------------------------------------------------- stopping

def test_sigint_to_supervisor_lets_running_job_finish(cli, spool_dir):
    sup = cli.start_tailed("worker", "start", "--count", "2")
    workers = wait_workers(cli, 2)
    assert cli("enqueue", "-c", "sleep 2; echo done", "--id", "gentle").returncode == 0
    wait_running(cli, "gentle")
    os.kill(sup.pid, signal.SIGINT)
    assert sup.wait(timeout=20) == 0
    rec = cli.show("gentle")
    assert rec["state"] == "completed" and rec["exit_code"] == 0
    assert "done" in cli.log("gentle")
    assert cli.live_workers() == []
    for w in workers:
        assert pid_gone(w["pid"])


def test_second_sigint_kills_running_job_back_to_pending_uncounted(cli, spool_dir, tmp_path):
    pidfile = str(tmp_path / "job.pid")
    cli.kill_at_teardown(pidfile)
    assert cli("enqueue", "-c", f"echo $$ > {pidfile}; sleep 5", "--id", "rude").returncode == 0
    sup = cli.start_tailed("worker", "start")
    w = wait_running(cli, "rude")
    job_pid = read_pid(pidfile)
    t0 = time.monotonic()
    os.kill(sup.pid, signal.SIGINT)

    def second_sigint_done():
        if sup.poll() is None:
            os.kill(sup.pid, signal.SIGINT)  # again, until it takes: two signals may merge into one
        return read_job(spool_dir, "rude")[0] == "pending"
    wait_until(second_sigint_done, timeout=10, interval=0.3, what="rude back in pending/")
    sup.wait(timeout=15)
    assert time.monotonic() - t0 < 4.5, "the 5 s job was killed, not waited for"
    rec = wait_job(spool_dir, "rude", "pending", timeout=5)
    assert rec["attempts"] == 0
    assert rec["exit_code"] is None
    assert [n for n in job_files(spool_dir, "pending") if n.endswith("_rude.json")]
    assert wait_until(lambda: pid_gone(job_pid), 5, what="the job's process gone")
    assert pid_gone(w["pid"])
    assert cli.live_workers() == []


def test_worker_stop_graceful_waits_for_running_job(cli, spool_dir):
    sup = cli.start_tailed("worker", "start")
    assert cli("enqueue", "-c", "sleep 2; echo done", "--id", "gentle").returncode == 0
    wait_running(cli, "gentle")
    r = cli("worker", "stop", timeout=30)
    assert r.returncode == 0, r.stderr
    assert "stopped 1 worker(s)" in r.stdout
    # `worker stop` returns once the workers have exited, after the job
    rec = wait_job(spool_dir, "gentle", "completed", timeout=1)
    assert rec["exit_code"] == 0
    assert "done" in cli.log("gentle")
    assert cli.live_workers() == []
    assert sup.wait(timeout=10) == 0


def test_worker_stop_now_kills_job_back_to_pending(cli, spool_dir, tmp_path):
    pidfile = str(tmp_path / "job.pid")
    cli.kill_at_teardown(pidfile)
    sup = cli.start_tailed("worker", "start")
    assert cli("enqueue", "-c", f"echo $$ > {pidfile}; sleep 5", "--id", "rude").returncode == 0
    wait_running(cli, "rude")
    job_pid = read_pid(pidfile)
    t0 = time.monotonic()
    r = cli("worker", "stop", "--now", timeout=30)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 4.5
    rec = wait_job(spool_dir, "rude", "pending", timeout=1)
    assert rec["attempts"] == 0
    assert wait_until(lambda: pid_gone(job_pid), 5, what="the job's process gone")
    assert cli.live_workers() == []
    sup.wait(timeout=10)


def test_worker_stop_timeout_exits_1_naming_the_worker(cli, spool_dir):
    sup = cli.start_tailed("worker", "start")
    assert cli("enqueue", "-c", "sleep 3", "--id", "long").returncode == 0
    w = wait_running(cli, "long")
    t0 = time.monotonic()
    r = cli("worker", "stop", "--timeout", "0.5", timeout=30)
    assert r.returncode == 1, r.stdout + r.stderr
    assert read_job(spool_dir, "long")[0] == "processing", "it gave up before the job ended"
    assert time.monotonic() - t0 >= 0.5
    assert "still finishing" in r.stderr
    assert names.hostname() + "_" + str(w["pid"]) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    # the request stands: the worker finishes its job, then stops
    assert sup.wait(timeout=15) == 0
    assert wait_job(spool_dir, "long", "completed", timeout=1)["exit_code"] == 0
    assert cli.live_workers() == []


def test_worker_run_refuses_unsafe_spool_with_exit_2_on_stderr(cli, spool_dir):
    assert cli("status").returncode == 0
    os.chmod(spool_dir, 0o777)
    try:
        r = cli("worker", "run", "--burst", timeout=30)
    finally:
        os.chmod(spool_dir, 0o700)
    assert r.returncode == 2
    assert "writable by group or others" in r.stderr  # errors go to stderr (docs/contract.md "Commands")
    assert "error" not in r.stdout
    assert cli.live_workers() == []


def test_worker_stop_no_wait_returns_at_once(cli, spool_dir):
    sup = cli.start_tailed("worker", "start")
    assert cli("enqueue", "-c", "sleep 1.5", "--id", "long").returncode == 0
    wait_running(cli, "long")
    r = cli("worker", "stop", "--no-wait")
    assert r.returncode == 0, r.stderr
    assert "asked 1 worker(s)" in r.stdout
    assert read_job(spool_dir, "long")[0] == "processing", "it did not wait for the job"
    assert sup.wait(timeout=15) == 0
    assert wait_job(spool_dir, "long", "completed", timeout=1)["exit_code"] == 0


def test_worker_stop_without_workers_is_not_an_error(cli):
    r = cli("worker", "stop")
    assert r.returncode == 0, r.stderr
    assert "no worker" in r.stdout.lower()
    r = cli("worker", "stop", "--now", "--timeout", "1")
    assert r.returncode == 0, r.stderr


def test_detach_returns_workers_run_and_stop_stops_them(cli, spool_dir):
    t0 = time.monotonic()
    r = cli("worker", "start", "--detach", "--count", "2", timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"supervisor pid (\d+)", r.stdout)
    assert m, r.stdout
    sup_pid = int(m.group(1))
    cli.kill_at_teardown(sup_pid)
    assert time.monotonic() - t0 < 15, "--detach returns"
    workers = wait_workers(cli, 2)
    assert sup_pid not in {w["pid"] for w in workers}
    assert not pid_gone(sup_pid)

    assert cli("enqueue", "-c", "echo detached", "--id", "d1").returncode == 0
    assert wait_job(spool_dir, "d1", "completed", timeout=10)["exit_code"] == 0

    r = cli("worker", "stop", timeout=30)
    assert r.returncode == 0, r.stderr
    assert "stopped 2 worker(s)" in r.stdout
    assert cli.live_workers() == []
    wait_until(lambda: pid_gone(sup_pid), 10, what="the detached supervisor gone")
    for w in workers:
        assert pid_gone(w["pid"])


def test_burst_exits_when_nothing_is_due(cli, spool_dir):
    assert cli("config", "set", "backoff-base", "1000").returncode == 0
    assert cli("enqueue", "-c", "echo later", "--id", "later", "--run-at", "+1h").returncode == 0
    assert cli("enqueue", "-c", "echo now", "--id", "now").returncode == 0
    assert cli("enqueue", "-c", "exit 1", "--id", "retry-later", "--max-retries", "1").returncode == 0
    t0 = time.monotonic()
    r = cli("worker", "start", "--burst", "--count", "2", timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.monotonic() - t0 < 15
    assert cli.show("now")["state"] == "completed"
    later = cli.show("later")
    assert later["state"] == "pending" and later["attempts"] == 0
    retry = cli.show("retry-later")
    assert retry["state"] == "failed" and retry["attempts"] == 1
    assert cli.live_workers() == []


def test_timeout_kills_the_whole_process_group(cli, spool_dir, tmp_path):
    pidfile = str(tmp_path / "grandchild.pid")
    cli.kill_at_teardown(pidfile, group=False)
    cmd = f"sh -c 'sleep 60 & echo $! > {pidfile}; wait'"
    assert cli("enqueue", "-c", cmd, "--id", "slowpoke", "--timeout", "1",
               "--max-retries", "0").returncode == 0
    t0 = time.monotonic()
    r = cli("worker", "start", "--burst", timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.monotonic() - t0 < 10
    rec = cli.show("slowpoke")
    assert rec["state"] == "dead"
    assert rec["last_error"] == "timed out after 1s"
    assert rec["exit_code"] is None
    grandchild = read_pid(pidfile, timeout=1)
    wait_until(lambda: pid_gone(grandchild), 5, what="the grandchild `sleep 60` gone")


@pytest.mark.slow
def test_timeout_sigkills_a_job_that_ignores_sigterm(cli, spool_dir, tmp_path):
    pidfile = str(tmp_path / "job.pid")
    cli.kill_at_teardown(pidfile)
    assert cli("enqueue", "-c", f"trap '' TERM; echo $$ > {pidfile}; sleep 30", "--id", "stubborn",
               "--timeout", "0.5", "--max-retries", "0").returncode == 0
    t0 = time.monotonic()
    r = cli("worker", "start", "--burst", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.monotonic() - t0 < 20, "SIGKILL came a few seconds after the SIGTERM"
    rec = cli.show("stubborn")
    assert rec["state"] == "dead" and rec["last_error"] == "timed out after 0.5s"
    wait_until(lambda: pid_gone(read_pid(pidfile, timeout=1)), 5, what="the job's shell gone")


def test_worker_stop_reaches_a_worker_run_process(cli, spool_dir):
    proc = cli.start_tailed("worker", "run")
    wait_workers(cli, 1)
    r = cli("worker", "stop", timeout=30)
    assert r.returncode == 0, r.stderr
    assert "stopped 1 worker(s)" in r.stdout
    assert proc.wait(timeout=10) == 0
    assert cli.live_workers() == []


def test_cancel_running_job_needs_kill(cli, spool_dir, tmp_path):
    pidfile = str(tmp_path / "job.pid")
    cli.kill_at_teardown(pidfile)
    cli.start_tailed("worker", "start")
    assert cli("enqueue", "-c", f"echo $$ > {pidfile}; sleep 5", "--id", "doomed").returncode == 0
    w = wait_running(cli, "doomed")
    job_pid = read_pid(pidfile)

    r = cli("cancel", "doomed")
    assert r.returncode == 1
    assert "--kill" in r.stderr and "doomed" in r.stderr
    assert read_job(spool_dir, "doomed")[0] == "processing"
    assert not pid_gone(job_pid)

    t0 = time.monotonic()
    r = cli("cancel", "doomed", "--kill", timeout=30)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 4.5
    rec = wait_job(spool_dir, "doomed", "dead", timeout=1)
    assert rec["last_error"] == "cancelled"
    assert rec["exit_code"] is None
    wait_until(lambda: pid_gone(job_pid), 5, what="the job's process gone")
    assert [x["pid"] for x in cli.live_workers()] == [w["pid"]], "the worker itself lives on"


def test_config_change_reaches_running_worker(cli, spool_dir):
    cli.start_tailed("worker", "start")
    w = wait_workers(cli, 1)[0]
    assert cli("enqueue", "-c", "true", "--id", "before").returncode == 0
    assert wait_job(spool_dir, "before", "completed")["timeout_seconds"] is None
    assert cli("config", "set", "job-timeout", "1").returncode == 0
    assert cli("enqueue", "-c", "sleep 4", "--id", "after", "--max-retries", "0").returncode == 0
    rec = wait_job(spool_dir, "after", "dead", timeout=10)
    assert rec["last_error"] == "timed out after 1s"
    assert rec["worker"] == cli.show("before")["worker"] == f"{w['host']}:{w['pid']}", "same worker, no restart"
    # a job's own timeout_seconds 0 means none, whatever the config says
    assert cli("enqueue", "-c", "sleep 1.3", "--id", "patient", "--timeout", "0").returncode == 0
    assert wait_job(spool_dir, "patient", ("completed", "failed", "dead"), timeout=10)["state"] == "completed"


def test_a_config_change_on_this_host_reaches_a_busy_worker_before_its_next_job(cli, spool_dir):
    """A worker draining a backlog looks at config.json once a second, but the change's
    inotify event (on the spool's own folder) makes it look before its next claim."""
    items = "\n".join(json.dumps({"command": "sleep 0.05", "max_retries": 0}) for _ in range(300))
    assert cli("enqueue", "--file", "-", input=items).returncode == 0
    completed = os.path.join(spool_dir, "completed")
    cli.start_tailed("worker", "start")
    wait_until(lambda: len(os.listdir(completed)) >= 5, 15, what="a busy worker")
    assert cli("config", "set", "job-timeout", "0.01").returncode == 0
    done = len(os.listdir(completed))
    wait_until(lambda: len(os.listdir(os.path.join(spool_dir, "dead"))) >= 3, 15, what="jobs timed out")
    # the attempt running when the command returned, and the one recorded while it ran
    assert len(os.listdir(completed)) <= done + 2


def test_mv_of_a_dead_job_into_pending_runs_it_again(cli, spool_dir):
    """Plain mv works on the spool (docs/contract.md "The spool on disk"). A dead job moved
    into pending/ by hand is filed under its proper name as a new try (like dlq retry) and runs."""
    assert cli("status").returncode == 0  # creates the spool
    assert cli("enqueue", "-c", "test -e ok-now || exit 1", "--id", "redo", "--max-retries", "0",
               cwd=spool_dir).returncode == 0  # the job runs in the spool folder
    assert cli("worker", "run", "--burst").returncode == 0
    assert read_job(spool_dir, "redo")[0] == "dead"
    open(os.path.join(spool_dir, "ok-now"), "w").close()
    os.rename(os.path.join(spool_dir, "dead", "redo.json"), os.path.join(spool_dir, "pending", "redo.json"))
    r = cli("worker", "run", "--burst")
    assert r.returncode == 0, r.stdout + r.stderr
    state, rec = read_job(spool_dir, "redo")
    assert state == "completed" and rec["attempts"] == 1, (state, rec)
    assert not os.listdir(os.path.join(spool_dir, "rejected"))


def test_the_job_note_is_written_only_for_a_job_that_may_outlive_its_worker(cli, spool_dir):
    """workers/HOST_PID.job names the running job's process group, for a take-back to kill it
    if the worker dies. A job in a limited queue runs guarded (it dies with its worker), so its
    note is not written: one filesystem call less per job on a shared spool, where every job is guarded."""
    assert cli("queue", "set", "one", "--limit", "1").returncode == 0
    assert cli("enqueue", "-c", "sleep 30", "--id", "guarded", "--queue", "one").returncode == 0
    worker = cli.start_tailed("worker", "start")
    worker.tail.wait_for("job guarded started", timeout=15)  # printed once the note would be written
    w = wait_running(cli, "guarded")
    note = os.path.join(spool_dir, "workers", registry.worker_name(w["host"], w["pid"]) + ".job")
    with open(note) as fh:
        assert fh.read().strip() == "", "a guarded job leaves no note"
    assert cli("cancel", "guarded", "--kill").returncode == 0
    wait_job(spool_dir, "guarded", "dead", timeout=10)
    assert cli("enqueue", "-c", "sleep 30", "--id", "plain").returncode == 0
    worker.tail.wait_for("job plain started", timeout=15)
    with open(note) as fh:
        pgid, job_id = fh.read().split()
    assert job_id == "plain" and int(pgid) > 1
    assert cli("cancel", "plain", "--kill").returncode == 0
    wait_job(spool_dir, "plain", "dead", timeout=10)
