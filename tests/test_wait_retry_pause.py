"""wait, retry, pause/resume and the bare-command hint (docs/contract.md "Commands"): the API
in process, the CLI's parsing through CliRunner, and end to end through the real CLI."""
import contextlib
import io
import json
import os
import threading
import time

import pytest

from helpers import drop, is_one_line_error, job_places, tree_snapshot, wait_until
from queuectl.cli import cli as cli_main, main
from queuectl.errors import InvalidInput, JobNotFound, WrongState


def finish(spool, job_id, exit_code):
    """Run job_id's attempt to its end in process, as a worker's claim and finish do."""
    name = next(n for n in spool.names("pending") if job_id in n)
    held = spool.moves.claim(name, "h", 1)
    return spool.moves.finish(held, exit_code, backoff=(1, 0, 0)).record


class Ran:
    def __init__(self, exit_code, output):
        self.exit_code, self.output = exit_code, output


def invoke(spool, *args):
    """The CLI's entry point in process (its error handling included): exit code, and stdout
    and stderr together."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["--spool", spool.path, *args])
    return Ran(code, out.getvalue())


# ---------------------------------------------------------------- retry

@pytest.mark.parametrize("exit_code, max_retries, state", [(0, 0, "completed"), (1, 3, "failed"), (1, 0, "dead")])
def test_retry_runs_a_finished_job_again(spool, exit_code, max_retries, state):
    spool.enqueue("true", id="j", max_retries=max_retries)
    assert finish(spool, "j", exit_code)["state"] == state
    [record] = spool.retry(["j"])
    assert record["state"] == "pending" and record["attempts"] == 0 and record["exit_code"] is None
    assert [p[0] for p in job_places(spool.path, "j")] == ["pending"]


def test_retry_is_all_or_nothing(spool):
    spool.enqueue("true", id="done")
    finish(spool, "done", 0)
    spool.enqueue("true", id="waiting")
    before = tree_snapshot(spool.path)
    with pytest.raises(WrongState, match="waiting.*pending"):
        spool.retry(["done", "waiting"])
    with pytest.raises(JobNotFound):
        spool.retry(["done", "nope"])
    with pytest.raises(InvalidInput):
        spool.retry([])
    assert tree_snapshot(spool.path) == before


def test_retry_cli_prints_the_ids_and_refuses_bad_input_in_one_line(spool):
    spool.enqueue("true", id="j")
    finish(spool, "j", 0)
    result = invoke(spool, "retry", "j")
    assert result.exit_code == 0 and result.output == "j\n"
    assert invoke(spool, "retry", "j").exit_code == 1  # pending now: not finished
    bad = invoke(spool, "retry", "../x")
    assert bad.exit_code == 2 and "ID" in bad.output


# ---------------------------------------------------------------- wait

def test_wait_returns_once_every_job_is_final(spool):
    spool.enqueue("true", id="a")
    spool.enqueue("true", id="b")
    finish(spool, "a", 0)
    threading.Timer(0.3, finish, (spool, "b", 0)).start()
    started = time.monotonic()
    result = spool.wait(["a", "b"], timeout=10)
    assert result.ok and set(result) == {"a", "b"} and not result.unfinished
    assert 0.25 < time.monotonic() - started < 5


def test_wait_names_dead_and_unfinished_jobs(spool):
    spool.enqueue("false", id="bad", max_retries=0)
    finish(spool, "bad", 1)
    spool.enqueue("true", id="slow")
    result = spool.wait(["bad", "slow"], timeout=0.3)
    assert not result.ok
    assert [r["id"] for r in result.dead] == ["bad"] and result.unfinished == ["slow"]


def test_wait_refuses_an_unknown_id_before_waiting(spool):
    spool.enqueue("true", id="a")
    started = time.monotonic()
    with pytest.raises(JobNotFound):
        spool.wait(["a", "ghost"], timeout=30)
    assert time.monotonic() - started < 5
    result = invoke(spool, "wait", "ghost")
    assert result.exit_code == 1 and "ghost" in result.output


def test_wait_cli_exit_codes(spool):
    spool.enqueue("true", id="ok")
    finish(spool, "ok", 0)
    spool.enqueue("false", id="bad", max_retries=0)
    finish(spool, "bad", 3)
    assert invoke(spool, "wait", "ok").exit_code == 0
    dead = invoke(spool, "wait", "ok", "bad")
    assert dead.exit_code == 1 and "job bad dead: exit code 3" in dead.output
    spool.enqueue("true", id="later")
    timed_out = invoke(spool, "wait", "later", "--timeout", "0.2")
    assert timed_out.exit_code == 1 and "not finished: later" in timed_out.output
    assert invoke(spool, "wait").exit_code == 2  # an id is required


# ---------------------------------------------------------------- pause / resume

def test_pause_persists_and_shows_in_status_and_metrics(spool):
    assert spool.paused() is None and not spool.status()["paused"]
    info = spool.pause()
    assert spool.paused() == info and os.path.exists(os.path.join(spool.path, "paused"))
    assert spool.pause() == info  # pausing again changes nothing
    assert spool.status()["paused"]
    assert "PAUSED" in invoke(spool, "status").output
    assert json.loads(invoke(spool, "status", "--json").output)["paused"] is True
    assert "queuectl_paused{" in invoke(spool, "metrics", "--prometheus").output
    assert spool.resume() is True and spool.paused() is None and spool.resume() is False
    assert "not paused" in invoke(spool, "resume").output


# ---------------------------------------------------------------- habits of other queues

def test_completion_offers_the_ids_each_command_takes(spool):
    from queuectl.cli import complete_job_id
    spool.enqueue("true", id="done1")
    finish(spool, "done1", 0)
    spool.enqueue("false", id="dead1", max_retries=0)
    finish(spool, "dead1", 1)
    spool.enqueue("true", id="pend1")

    def offered(*path):
        ctx = cli_main.make_context("queuectl", ["--spool", spool.path], resilient_parsing=True)
        for name in path:
            command = ctx.command.get_command(ctx, name)
            ctx = command.make_context(name, [], parent=ctx, resilient_parsing=True)
        return sorted(item.value for item in complete_job_id(ctx, None, ""))

    assert offered("retry") == ["dead1", "done1"]
    assert offered("dlq", "retry") == ["dead1"]
    assert offered("wait") == ["pend1"]


# ---------------------------------------------------------------- end to end

def test_enqueue_wait_exits_with_the_jobs_outcome(cli):
    cli.start("worker", "run")
    ok = cli("enqueue", "-c", "true", "--wait", timeout=60)
    assert ok.returncode == 0, ok.stderr
    bad = cli("enqueue", "-c", "exit 3", "--max-retries", "0", "--id", "bad", "--wait", timeout=60)
    assert bad.returncode == 1 and bad.stdout.strip() == "bad"
    assert is_one_line_error(bad.stderr) and "job bad dead: exit code 3" in bad.stderr


def test_pause_stops_claiming_on_a_running_worker_and_resume_goes_on(cli, spool_dir):
    worker = cli.start_tailed("worker", "run")
    cli("pause")
    worker.tail.wait_for("spool paused", timeout=10)
    drop(spool_dir, "held.json", json.dumps({"id": "held", "command": "true"}))
    worker.tail.wait_for("incoming/held.json -> job held", timeout=10)  # the drop box still works
    # the pass that filed it would have claimed it right after; give it a second to be sure
    with pytest.raises(AssertionError):
        wait_until(lambda: cli.json("show", "held")["state"] != "pending", 1.0, what="a claim")
    cli("resume")
    wait_until(lambda: cli.json("show", "held")["state"] == "completed", 15, what="the job after resume")


def test_a_busy_worker_claims_nothing_after_pause_returns(cli, spool_dir):
    """A worker draining a backlog does not look at SPOOL/paused per job: on this host the
    pause's inotify event stops it before its next claim (at most the claim under way goes on)."""
    items = "\n".join(json.dumps({"command": "sleep 0.05"}) for _ in range(300))
    assert cli("enqueue", "--file", "-", input=items).returncode == 0
    pending = os.path.join(spool_dir, "pending")
    worker = cli.start_tailed("worker", "run")
    wait_until(lambda: len(os.listdir(pending)) <= 290, 15, what="a busy worker")
    assert cli("pause").returncode == 0
    left = len(os.listdir(pending))
    worker.tail.wait_for("spool paused", timeout=10)
    time.sleep(1.5)  # longer than a look per second: a worker that missed the event claims on meanwhile
    assert len(os.listdir(pending)) >= left - 1, "claims after `pause` returned"
    cli("resume")


def test_retry_of_a_completed_job_runs_it_again_and_the_log_keeps_both(cli):
    cli("enqueue", "-c", "echo ran", "--id", "twice")
    assert cli("worker", "run", "--burst").returncode == 0
    assert cli("retry", "twice").returncode == 0
    assert cli("worker", "run", "--burst").returncode == 0
    assert cli.json("show", "twice")["state"] == "completed"
    log = cli.log("twice")
    assert log.count("=== queuectl attempt 1/") == 2 and log.splitlines().count("ran") == 2


def test_a_pause_without_an_event_is_seen_within_a_second(tmp_path, monkeypatch):
    """Another host's pause makes no inotify event here: a busy worker looks at the file once
    a second; a paused one at every pass (another host's resume is unseen too)."""
    from queuectl import pausing
    clock = [1000.0]
    monkeypatch.setattr(pausing.time, "monotonic", lambda: clock[0])
    path = str(tmp_path / "paused")
    watch = pausing.PauseWatch(path, events_trusted=lambda: True)
    assert watch.check(event=False) == (False, False)
    open(path, "w").close()  # another host's pause
    clock[0] += pausing.LOOK_EVERY / 2
    assert watch.check(event=False) == (False, False), "no event, looked half a second ago"
    assert watch.check(event=True) == (True, True), "an event: looked at once"
    os.unlink(path)  # another host's resume
    assert watch.check(event=False) == (False, True), "paused: looked at every pass"
    open(path, "w").close()
    clock[0] += pausing.LOOK_EVERY
    assert watch.check(event=False) == (True, True), "a second on: looked again"
    untrusted = pausing.PauseWatch(path, events_trusted=lambda: False)
    assert untrusted.check(event=False)[0] is True
    os.unlink(path)
    assert untrusted.check(event=False)[0] is False, "without inotify: a look at every pass"
