"""The first hour of a tsp, nq or pueue user (docs/usage.md): a timed run, the on-finish hook,
and the habits of other tools. Parsing through CliRunner; the hook and the timed run with real
workers."""
import json
import os
import signal
import subprocess
import time

import pytest
from click.testing import CliRunner

from helpers import QUEUECTL, ROOT, cli_env, pid_gone, wait_job, wait_until
from queuectl import hooks
from queuectl.cli import cli as cli_group

HOOK_VARS = ("QUEUECTL_JOB_ID", "QUEUECTL_STATE", "QUEUECTL_EXIT_CODE", "QUEUECTL_LAST_ERROR",
             "QUEUECTL_ATTEMPTS", "QUEUECTL_COMMAND", "QUEUECTL_LOG", "QUEUECTL_HOST")


def invoke(spool_dir, *args):
    return CliRunner().invoke(cli_group, ["--spool", spool_dir, *args])


# ---------------------------------------------------------------- habits of other tools

def test_config_alone_lists_the_config(spool_dir):
    alone, listed = invoke(spool_dir, "config"), invoke(spool_dir, "config", "list")
    assert alone.exit_code == 0 and alone.stdout == listed.stdout and "on-finish" in alone.stdout


@pytest.mark.parametrize("flag, purged", [("--completed", "completed"), ("--dead", "dead")])
def test_purge_shorthands(spool, flag, purged):
    from test_wait_retry_pause import finish
    spool.enqueue("true", id="c")
    finish(spool, "c", 0)
    spool.enqueue("false", id="d", max_retries=0)
    finish(spool, "d", 1)
    r = invoke(spool.path, "purge", flag)
    assert r.exit_code == 0 and f"purged 1 {purged} job(s)" in r.stdout
    assert {rec["id"] for rec in spool.list()} == {"c", "d"} - {purged[0]}


@pytest.mark.parametrize("args", [[], ["--completed", "--dead"], ["--dead", "--state", "completed"]])
def test_purge_needs_exactly_one_state(spool, args):
    r = invoke(spool.path, "purge", *args)
    assert r.exit_code == 2 and "--completed, --dead or --state" in r.stderr


def test_dlq_retry_of_a_job_that_is_not_dead_points_to_retry(spool):
    from test_wait_retry_pause import finish
    spool.enqueue("true", id="done")
    finish(spool, "done", 0)
    r = invoke(spool.path, "dlq", "retry", "done")
    assert r.exit_code == 1 and "queuectl retry done" in str(r.exception)
    assert spool.get("done")["state"] == "completed"


def test_worker_start_help_mentions_detach_and_for(spool_dir):
    text = " ".join(invoke(spool_dir, "worker", "start", "--help").stdout.split())
    assert "--detach runs them in the background" in text and "--for DURATION" in text


@pytest.mark.parametrize("value", ["two", "0", "-5m", "10x"])
def test_a_bad_duration_is_exit_2(spool_dir, value):
    r = invoke(spool_dir, "worker", "start", "--for", value)
    assert r.exit_code == 2 and "--for" in r.stderr


def test_which_hook_a_job_gets():
    config = {"on-finish": "from-config"}
    assert hooks.command_for({"on_finish": None}, config) == "from-config"
    assert hooks.command_for({}, config) == "from-config"
    assert hooks.command_for({"on_finish": "own"}, config) == "own"
    assert hooks.command_for({"on_finish": ""}, config) is None, "an empty on_finish: no hook for this job"
    assert hooks.command_for({}, {"on-finish": None}) is None


@pytest.mark.process
def test_python_m_queuectl_cli_is_the_cli(spool_dir):
    r = subprocess.run([os.sys.executable, "-m", "queuectl.cli", "status", "--json"], capture_output=True,
                       text=True, env=cli_env(spool_dir), cwd=ROOT, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["spool"] == spool_dir


# ---------------------------------------------------------------- worker start --for

@pytest.mark.process
def test_worker_start_for_stops_gracefully_by_itself(cli, spool_dir, tmp_path):
    """The running job finishes (completed, not killed), then the workers and the supervisor
    exit 0 with no one replaced; the foreground start says how to stop it."""
    assert cli("enqueue", "--id", "long", f"sleep 1.5; touch {tmp_path / 'done'}").returncode == 0
    began = time.monotonic()
    proc = subprocess.run([*QUEUECTL, "worker", "start", "-n", "2", "--for", "0.5s"], capture_output=True,
                          text=True, env=cli_env(spool_dir), cwd=ROOT, timeout=60)
    took = time.monotonic() - began
    assert proc.returncode == 0, proc.stderr
    assert "0.5s are up" in proc.stdout and "Ctrl+C" in proc.stderr and "--detach" in proc.stderr
    assert cli.show("long")["state"] == "completed" and (tmp_path / "done").exists()
    assert 1.5 <= took < 20
    assert proc.stdout.count("stopped (") == 2 and cli.live_workers() == []


@pytest.mark.process
def test_worker_start_detach_for_stops_in_the_background(cli, spool_dir):
    r = cli("worker", "start", "--detach", "-n", "2", "--for", "1")
    assert r.returncode == 0 and "for 1s" in r.stdout, r.stderr
    pid = int(r.stdout.split("supervisor pid ")[1].split(";")[0])
    cli.kill_at_teardown(pid)
    assert len(cli.live_workers()) == 2
    wait_until(lambda: cli.json("status")["workers"] == [], timeout=15, what="the workers to stop")
    wait_until(lambda: pid_gone(pid), timeout=15, what="the supervisor's exit")


# ---------------------------------------------------------------- on-finish

@pytest.mark.process
def test_on_finish_runs_once_per_final_state_with_its_variables(cli, spool_dir, tmp_path):
    out = tmp_path / "hooks"
    record = " ".join(f'{v}=[${v}]' for v in HOOK_VARS)
    assert cli("config", "set", "on-finish", f'echo "config {record} MINE=[${{MINE-}}]" >> {out}').returncode == 0
    assert cli("config", "set", "backoff-base", "1").returncode == 0
    assert cli("enqueue", "--id", "ok", "echo hi", env={"MINE": "from-shell"}).returncode == 0
    assert cli("enqueue", "--id", "flaky", "--max-retries", "1", "exit 3").returncode == 0
    assert cli("enqueue", "--id", "own", "--on-finish", f'echo "own $QUEUECTL_STATE" >> {out}', "true").returncode == 0
    assert cli("enqueue", "--id", "quiet", "--on-finish", "", "true").returncode == 0
    assert cli("enqueue", "--id", "child", "--after", "flaky", "true").returncode == 0
    worker = cli.start_tailed("worker", "start", "-n", "1")
    for job_id in ("ok", "flaky", "own", "quiet", "child"):
        wait_job(spool_dir, job_id, ("completed", "dead"), timeout=15)
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=30) == 0  # a graceful stop waits for the hooks
    assert out.read_text().count("\n") == 4
    lines = sorted(out.read_text().splitlines())
    host = cli.show("ok")["worker"].split(":")[0]
    log = os.path.join(spool_dir, "logs")
    assert lines == sorted([
        f"config QUEUECTL_JOB_ID=[ok] QUEUECTL_STATE=[completed] QUEUECTL_EXIT_CODE=[0] QUEUECTL_LAST_ERROR=[] "
        f"QUEUECTL_ATTEMPTS=[1] QUEUECTL_COMMAND=[echo hi] QUEUECTL_LOG=[{log}/ok.log] QUEUECTL_HOST=[{host}] "
        f"MINE=[from-shell]",
        f"config QUEUECTL_JOB_ID=[flaky] QUEUECTL_STATE=[dead] QUEUECTL_EXIT_CODE=[3] "
        f"QUEUECTL_LAST_ERROR=[exit code 3] QUEUECTL_ATTEMPTS=[2] QUEUECTL_COMMAND=[exit 3] "
        f"QUEUECTL_LOG=[{log}/flaky.log] QUEUECTL_HOST=[{host}] MINE=[]",
        f"config QUEUECTL_JOB_ID=[child] QUEUECTL_STATE=[dead] QUEUECTL_EXIT_CODE=[] "
        f"QUEUECTL_LAST_ERROR=[dependency flaky dead] QUEUECTL_ATTEMPTS=[0] QUEUECTL_COMMAND=[true] "
        f"QUEUECTL_LOG=[{log}/child.log] QUEUECTL_HOST=[{host}] MINE=[]",
        "own completed",
    ]), "once per final state (not for the failed first attempt of flaky), the job's own hook first"


@pytest.mark.process
def test_a_slow_or_failing_hook_never_holds_up_the_next_job_nor_changes_the_job(cli, spool_dir, tmp_path):
    assert cli("enqueue", "--id", "first", "--on-finish", "sleep 60", "true").returncode == 0
    assert cli("enqueue", "--id", "second", "--on-finish", "exit 7", f"date +%s.%N > {tmp_path / 'second'}").returncode == 0
    worker = cli.start_tailed("worker", "start", "-n", "1", env={"QUEUECTL_HOOK_TIMEOUT": "2"})
    wait_job(spool_dir, "second", ("completed",), timeout=15)
    first_done = cli.show("first")["finished_at"]
    from queuectl.timeutil import parse_iso
    assert float((tmp_path / "second").read_text()) - parse_iso(first_done) < 1.0, "the hook ran beside it"
    assert worker.tail.wait_for("job second: on-finish hook failed (exit code 7)", timeout=10)
    assert worker.tail.wait_for("job first: on-finish hook killed after 2s", timeout=10)
    assert [cli.show(j)["state"] for j in ("first", "second")] == ["completed", "completed"]
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=30) == 0


@pytest.mark.process
def test_the_hook_of_a_job_buried_when_its_worker_died_runs(cli, spool_dir, tmp_path):
    """kill -9 of the worker that runs a job with no retry left: the supervisor takes the job
    back into dead/ and runs its hook (the worker that would have run it is gone)."""
    out, pidfile = tmp_path / "hook", tmp_path / "job.pid"
    assert cli("enqueue", "--id", "lost", "--max-retries", "0", "--on-finish",
               f'echo "$QUEUECTL_STATE $QUEUECTL_LAST_ERROR" > {out}', f"echo $$ > {pidfile}; exec sleep 60").returncode == 0
    cli.kill_at_teardown(str(pidfile))
    supervisor = cli.start_tailed("worker", "start", "-n", "1")
    wait_until(pidfile.exists, timeout=15, what="the job to start")
    [worker] = [w for w in cli.live_workers() if w.get("job") == "lost"]
    os.kill(worker["pid"], signal.SIGKILL)
    wait_until(lambda: out.exists() and out.read_text().strip(), timeout=15, what="the hook")
    assert out.read_text().startswith(f"dead worker lost (host {worker['host']}, pid {worker['pid']})")
    wait_until(lambda: [w for w in cli.live_workers() if w["pid"] != worker["pid"]], timeout=15,
               what="the replacement worker")  # a SIGTERM before it has its handlers would kill it
    supervisor.send_signal(signal.SIGINT)
    assert supervisor.wait(timeout=30) == 0, supervisor.tail.text()


@pytest.mark.process
def test_hooks_are_reaped_and_capped_while_the_worker_is_busy(tmp_path, monkeypatch):
    """A stream of short jobs never idles the worker: starting a hook reaps the ended ones, and
    at most MAX_RUNNING run at once (no zombies pile up, no fork fails)."""
    monkeypatch.setattr(hooks, "MAX_RUNNING", 3)
    logged = []
    pool = hooks.Hooks(str(tmp_path), "h", logged.append)
    peak = 0
    for i in range(8):
        pool.start({"id": f"j{i}", "state": "completed", "command": "true", "attempts": 1, "on_finish": "sleep 0.2"}, {},
                   str(tmp_path / "log"))
        peak = max(peak, len(pool.running))
    assert peak == 3
    pool.finish()
    assert pool.running == {} and logged == []


@pytest.mark.process
def test_a_hook_that_cannot_be_passed_to_exec_is_logged_not_raised(tmp_path):
    logged = []
    pool = hooks.Hooks(str(tmp_path), "h", logged.append)
    assert pool.start({"id": "j", "state": "dead", "command": "true", "attempts": 1, "on_finish": "echo \ud800"}, {},
                      str(tmp_path / "log")) is None
    assert logged and "on-finish hook could not start" in logged[0]


def test_an_on_finish_that_is_not_utf8_text_is_refused(spool):
    r = invoke(spool.path, "config", "set", "on-finish", "echo \udcff")
    assert r.exception.exit_code == 2 and "not valid UTF-8" in str(r.exception)
    assert spool.config()["on-finish"] is None


@pytest.mark.process
def test_a_very_short_for_still_stops_cleanly(cli, spool_dir):
    r = cli("worker", "start", "-n", "2", "--for", "0.001", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
