"""Named queues, their limits and GPU slots (docs/contract.md "Queues and limits"): the record's
fields, the settings, the slots in process; the limits with real workers, measured from the
times the jobs write themselves."""
import json
import os
import signal
import time

import pytest
from click.testing import CliRunner

from helpers import pid_gone, tree_snapshot, wait_until
from queuectl import queues, slots
from queuectl.admission import Admission, parse_gpus
from queuectl.cli import cli as cli_group
from queuectl.errors import FieldError, QueuectlError, WrongState
from queuectl.pending import PendingIndex
from queuectl import names


def invoke(spool_dir, *args):
    result = CliRunner().invoke(cli_group, ["--spool", spool_dir, *args])
    code, stderr = result.exit_code, result.stderr
    if isinstance(result.exception, QueuectlError):
        code, stderr = result.exception.exit_code, stderr + f"error: {result.exception}\n"
    return code, result.stdout, stderr


# ---------------------------------------------------------------- fields and settings

def test_a_job_is_in_the_default_queue_and_needs_no_gpu_unless_told(spool):
    rec = spool.enqueue("true")
    assert (rec["queue"], rec["gpus"]) == ("default", 0)
    rec = spool.enqueue("true", queue="gpu-train_2", gpus=2)
    assert (rec["queue"], rec["gpus"]) == ("gpu-train_2", 2)


@pytest.mark.parametrize("args, says", [
    (["enqueue", "-q", "Deploy", "true"], "invalid queue name"),
    (["enqueue", "-q", "-x", "true"], "invalid queue name"),
    (["enqueue", "--queue", "a" * 65, "true"], "invalid queue name"),
    (["enqueue", "--gpus", "two", "true"], "--gpus"),
    (["enqueue", "--gpus", "-1", "true"], "--gpus"),
    (["enqueue", '{"command": "true", "queue": 5}'], "queue: must be a string"),
    (["enqueue", '{"command": "true", "gpus": 1.5}'], "gpus: must be an integer"),
    (["queue", "set", "db", "--limit", "-1"], "--limit: must be between 0"),
    (["queue", "set", "db", "--limit", "two"], "--limit: must be a whole number or none"),
    (["queue", "set", "db", "--per-host", "1.5"], "--per-host: must be a whole number or none"),
    (["queue", "set", "DB", "--limit", "1"], "invalid queue name"),
    (["pause", "--queue", "no way"], "invalid queue name"),
    (["worker", "start", "--gpus", "two"], "not a GPU index"),
    (["worker", "start", "--queue", "Bad"], "invalid queue name"),
])
def test_bad_input_is_exit_2_in_one_line_and_changes_nothing(spool, args, says):
    before = tree_snapshot(spool.path)
    code, _, err = invoke(spool.path, *args)
    assert code == 2 and says in err, err
    assert "Traceback" not in err
    assert tree_snapshot(spool.path) == before


def test_queue_set_list_and_remove(spool):
    assert invoke(spool.path, "queue", "set", "db", "--limit", "2", "--per-host", "1")[0] == 0
    assert invoke(spool.path, "queue", "set", "db", "--per-host", "none")[0] == 0  # the limit stays
    spool.enqueue("true", queue="db")
    spool.enqueue("true", queue="other")
    code, out, _ = invoke(spool.path, "queue", "list", "--json")
    listed = {q["name"]: q for q in json.loads(out)}
    assert (listed["db"]["limit"], listed["db"]["per_host"], listed["db"]["counts"]["pending"]) == (2, None, 1)
    assert listed["other"]["limit"] is None and listed["other"]["counts"]["pending"] == 1
    with pytest.raises(WrongState, match="still has jobs"):
        spool.queue_remove("db")
    spool.cancel([r for r in spool.list("pending") if r["queue"] == "db"][0]["id"])
    spool.purge("dead")
    spool.queue_remove("db")
    assert "db" not in queues.read_all(spool.layout)


def test_pause_and_resume_one_queue(spool):
    spool.pause("deploy")
    assert queues.read(spool.layout, "deploy").paused and spool.paused() is None
    assert spool.resume("deploy") is True and spool.resume("deploy") is False


# ---------------------------------------------------------------- slots, in process

def settings(name="q", limit=None, per_host=None, **kw):
    return queues.Settings(name, limit=limit, per_host=per_host, **kw)


def test_a_limit_of_n_gives_n_slots_and_a_freed_one_is_taken_again(spool):
    pool = slots.Slots(spool.layout, "h1")
    grants = [pool.take(settings(limit=3)) for _ in range(3)]
    assert all(grants) and pool.take(settings(limit=3)) is None
    assert pool.held(settings(limit=3)) == 3
    grants[1].release()
    again = pool.take(settings(limit=3))
    assert again is not None and pool.take(settings(limit=3)) is None


def test_per_host_slots_are_counted_per_host_and_both_limits_hold(spool):
    one = settings(limit=3, per_host=1)
    h1, h2 = slots.Slots(spool.layout, "h1"), slots.Slots(spool.layout, "h2")
    a = h1.take(one)
    assert a is not None and h1.take(one) is None, "one per host"
    b = h2.take(one)
    assert b is not None
    assert slots.Slots(spool.layout, "h3").take(one) is not None
    assert slots.Slots(spool.layout, "h4").take(one) is None, "and three in all"


def test_a_lowered_limit_counts_the_jobs_still_running_above_it(spool):
    pool = slots.Slots(spool.layout, "h")
    old = [pool.take(settings(limit=3)) for _ in range(3)]
    lowered = settings(limit=1, slots=3)
    assert pool.take(lowered) is None
    old[0].release()
    old[1].release()
    assert pool.take(lowered) is None, "one still runs on slot 2: the new limit 1 is full"
    old[2].release()
    assert pool.take(lowered) is not None


def test_a_paused_or_zero_limit_queue_takes_nothing(spool):
    pool = slots.Slots(spool.layout, "h")
    assert pool.take(settings(limit=2, paused=True)) is None
    assert pool.take(settings(limit=0)) is None


def test_gpu_slots_are_never_shared(spool):
    pool = slots.Slots(spool.layout, "h")
    first, second, third = slots.Grant(), slots.Grant(), slots.Grant()
    assert pool.take_gpus(first, 1, [0, 1])
    assert pool.take_gpus(second, 1, [0, 1])
    assert {first.gpus[0], second.gpus[0]} == {0, 1}
    assert not pool.take_gpus(third, 1, [0, 1]) and third.fds == []
    first.release()
    assert pool.take_gpus(third, 1, [0, 1]) and third.gpus == first.gpus


def test_gpu_indices_are_parsed_strictly():
    assert parse_gpus("0, 1,3,1") == [0, 1, 3]
    with pytest.raises(ValueError, match="not a GPU index"):
        parse_gpus("0,x")


def test_a_full_queue_parks_its_jobs_without_reading_them_and_keeps_their_order(spool, tmp_path):
    """The first job of a full queue is read to learn its queue; once the queue is known full,
    its other names are parked on sight; unparked, they come back in claim order."""
    folder = tmp_path / "pending"
    folder.mkdir()
    made = [names.pending_name(10, 1_800_000_000 + i, i, f"j{i}") for i in range(4)]
    for name in made:
        (folder / name).write_text("")
    index = PendingIndex(str(folder))
    admission = Admission(spool.layout, "h")
    queues.update(spool.layout, "q", limit=0)
    for name in made[:2]:
        assert index.pick(2e9)[0] == name
        assert admission.admit(name, {"queue": "q"}) is None
        index.park(name)
    assert admission.known_closed(made[0]) and "q" in admission.closed
    index.unpark()
    admission.reopen()
    assert [index.pick(2e9)[0] for _ in range(4)] == made


# ---------------------------------------------------------------- with real workers

def timed_job(out, sleep=0.5):
    """A command that writes when it started and ended, and where, by its own clock (the end
    is renamed into place: a test that waits for it reads it whole)."""
    return (f"date +%s.%N > {out}/$QUEUECTL_JOB_ID.start; hostname > {out}/$QUEUECTL_JOB_ID.host; "
            f"echo ${{CUDA_VISIBLE_DEVICES-}} > {out}/$QUEUECTL_JOB_ID.gpus; sleep {sleep}; "
            f"date +%s.%N > {out}/$QUEUECTL_JOB_ID.end.t && mv {out}/$QUEUECTL_JOB_ID.end.t {out}/$QUEUECTL_JOB_ID.end")


def intervals(out, ids):
    spans = {}
    for job_id in ids:
        with open(os.path.join(out, job_id + ".start")) as fh:
            start = float(fh.read())
        with open(os.path.join(out, job_id + ".end")) as fh:
            end = float(fh.read())
        spans[job_id] = (start, end)
    return spans


def most_at_once(spans, among=None):
    events = sorted([(s, 1) for j, (s, e) in spans.items() if among is None or j in among]
                    + [(e, -1) for j, (s, e) in spans.items() if among is None or j in among])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.process
def test_a_limit_holds_and_is_reached_and_other_queues_are_not_held_up(cli, spool_dir, tmp_path):
    out = str(tmp_path)
    assert cli("queue", "set", "deploy", "--limit", "2").returncode == 0
    limited = [f"d{i}" for i in range(8)]
    for job_id in limited:
        assert cli("enqueue", "--id", job_id, "-q", "deploy", timed_job(out, 0.4)).returncode == 0
    free = [f"f{i}" for i in range(4)]
    for job_id in free:
        assert cli("enqueue", "--id", job_id, "--priority", "50", timed_job(out, 0.4)).returncode == 0
    r = cli("worker", "start", "-n", "4", "--burst", timeout=120)
    assert r.returncode == 0, r.stderr
    spans = intervals(out, limited + free)
    assert most_at_once(spans, limited) == 2, "at most 2, and 2 reached"
    first_free = min(spans[j][0] for j in free)
    assert first_free < max(spans[j][0] for j in limited), "the other queue ran while deploy waited"
    order = sorted(limited, key=lambda j: spans[j][0])
    assert order[:2] == sorted(order[:2]) and set(order[:2]) == {"d0", "d1"}, "claim order within the queue"


@pytest.mark.process
def test_per_host_limit_of_one_runs_one_at_a_time(cli, spool_dir, tmp_path):
    out = str(tmp_path)
    assert cli("queue", "set", "db", "--per-host", "1").returncode == 0
    ids = [f"j{i}" for i in range(5)]
    for job_id in ids:
        assert cli("enqueue", "--id", job_id, "-q", "db", timed_job(out, 0.2)).returncode == 0
    assert cli("worker", "start", "-n", "3", "--burst", timeout=120).returncode == 0
    assert most_at_once(intervals(out, ids)) == 1


@pytest.mark.process
def test_gpu_jobs_never_share_a_device_and_cpu_jobs_pass_them(cli, spool_dir, tmp_path):
    """2 declared GPUs, 3 workers: GPU jobs that run at once have different devices; a job
    asking for 3 waits (status says why); a CPU job queued last is not stuck behind them."""
    out = str(tmp_path)
    gpu = [f"g{i}" for i in range(6)]
    for job_id in gpu:
        assert cli("enqueue", "--id", job_id, "--gpus", "1", timed_job(out, 0.3)).returncode == 0
    assert cli("enqueue", "--id", "big", "--gpus", "3", "true").returncode == 0
    assert cli("enqueue", "--id", "cpu", "--priority", "50", timed_job(out, 0.1)).returncode == 0
    worker = cli.start_tailed("worker", "start", "-n", "3", "--gpus", "0,1")
    wait_until(lambda: all(os.path.exists(os.path.join(out, j + ".end")) for j in gpu + ["cpu"]), timeout=30,
               what="the GPU and CPU jobs")
    spans = intervals(out, gpu)
    devices = {j: open(os.path.join(out, j + ".gpus")).read().strip() for j in gpu}
    assert set(devices.values()) == {"0", "1"}
    for a in gpu:
        for b in gpu:
            if a < b and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]:
                assert devices[a] != devices[b], f"{a} and {b} ran at once on GPU {devices[a]}"
    assert most_at_once(spans) == 2
    assert intervals(out, ["cpu"])["cpu"][0] < max(s for s, _ in spans.values()), "the CPU job passed"
    shown = cli.show("big")
    assert shown["state"] == "pending"
    why = cli.json("status")["waiting"]
    assert any(w["id"] == "big" and "3 GPUs" in w["why"] for w in why), why
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=30) == 0


@pytest.mark.process
def test_a_worker_killed_while_holding_a_slot_gives_it_back_and_its_job_dies(cli, spool_dir, tmp_path):
    out = str(tmp_path)
    assert cli("queue", "set", "one", "--limit", "1").returncode == 0
    assert cli("enqueue", "--id", "held", "-q", "one", "--max-retries", "0",
               f"echo $$ > {out}/pid; exec sleep 60").returncode == 0
    doomed = cli.start_tailed("worker", "run")
    wait_until(lambda: os.path.exists(f"{out}/pid") and open(f"{out}/pid").read().strip(), timeout=15,
               what="the job to run")
    job_pid = int(open(f"{out}/pid").read())
    cli.kill_at_teardown(job_pid)
    assert cli("enqueue", "--id", "next", "-q", "one", f"touch {out}/next").returncode == 0
    survivor = cli.start_tailed("worker", "run")
    wait_until(lambda: len(cli.live_workers()) == 2, timeout=15, what="the second worker")
    survivor.tail.wait_for("started (wake-ups", timeout=15)
    assert not os.path.exists(f"{out}/next"), "the slot is held: the queue's next job waits"
    doomed.kill()
    doomed.wait(timeout=10)
    wait_until(lambda: os.path.exists(f"{out}/next"), timeout=15, what="the next job, on the freed slot")
    wait_until(lambda: pid_gone(job_pid), timeout=10,
               what="the killed worker's job to die with it")
    survivor.send_signal(signal.SIGINT)
    assert survivor.wait(timeout=30) == 0


@pytest.mark.process
def test_a_paused_queue_waits_and_a_lowered_limit_applies_to_the_next_claims(cli, spool_dir, tmp_path):
    out = str(tmp_path)
    assert cli("queue", "set", "q", "--limit", "3").returncode == 0
    assert cli("pause", "--queue", "q").returncode == 0
    ids = [f"j{i}" for i in range(6)]
    for job_id in ids:  # the first three run long enough for the limit to be lowered under them
        sleep = 4.0 if job_id in ("j0", "j1", "j2") else 0.3
        assert cli("enqueue", "--id", job_id, "-q", "q", timed_job(out, sleep)).returncode == 0
    assert cli("enqueue", "--id", "other", f"touch {out}/other").returncode == 0
    worker = cli.start_tailed("worker", "start", "-n", "3")
    wait_until(lambda: os.path.exists(f"{out}/other"), timeout=15, what="another queue's job")
    assert not any(os.path.exists(f"{out}/{j}.start") for j in ids), "a paused queue's jobs wait"
    assert cli("resume", "--queue", "q").returncode == 0
    wait_until(lambda: sum(os.path.exists(f"{out}/{j}.start") for j in ids) == 3, timeout=15,
               what="three jobs of q at once")
    assert cli("queue", "set", "q", "--limit", "1").returncode == 0
    lowered = time.time()
    assert sum(os.path.exists(f"{out}/{j}.end") for j in ids) == 0, "lowered while the first three run"
    wait_until(lambda: all(os.path.exists(f"{out}/{j}.end") for j in ids), timeout=60, what="all of q")
    spans = intervals(out, ids)
    later = {j for j, (s, _) in spans.items() if s > lowered}
    assert len(later) == 3 and most_at_once(spans, later) == 1
    assert min(spans[j][0] for j in later) >= max(e for j, (_, e) in spans.items() if j not in later) - 0.05, \
        "no job started while the three of the old limit ran"
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=30) == 0


@pytest.mark.process
def test_a_worker_serves_only_its_queues(cli, spool_dir, tmp_path):
    assert cli("enqueue", "--id", "mine", "-q", "a", f"touch {tmp_path}/mine").returncode == 0
    assert cli("enqueue", "--id", "theirs", "-q", "b", f"touch {tmp_path}/theirs").returncode == 0
    r = cli("worker", "start", "--burst", "--queue", "a", timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "mine").exists() and not (tmp_path / "theirs").exists()
    assert cli.show("theirs")["state"] == "pending"


def test_queue_names_are_checked_in_dropped_files_and_schedules(spool):
    with pytest.raises(FieldError, match="queue"):
        spool.enqueue("true", queue="No")
    entry = spool.schedule_add("nightly", "0 2 * * *", command="true", queue="night", gpus=1)
    assert entry["template"]["queue"] == "night" and entry["template"]["gpus"] == 1


def test_metrics_count_the_waiting_jobs_of_each_queue_and_label_them(spool):
    from queuectl import metrics
    queues.update(spool.layout, "deploy", limit=1)
    spool.enqueue("true", queue="deploy")
    spool.enqueue("true", queue="deploy")
    spool.enqueue("true")
    info = metrics.collect(spool)
    assert info["queues"]["deploy"]["pending"] == 2 and info["queues"]["deploy"]["limit"] == 1
    assert info["queues"]["default"]["pending"] == 1
    text = metrics.prometheus(info)
    assert f'queuectl_queue_jobs{{spool="{spool.path}",queue="deploy",state="pending"}} 2' in text
    assert f'queuectl_queue_limit{{spool="{spool.path}",queue="deploy"}} 1' in text
    assert metrics.queue_counts(spool, {}, limit=2) is None, "a backlog past the limit is not read"


def test_completion_offers_the_queues_with_settings(spool):
    from click.shell_completion import ShellComplete
    queues.update(spool.layout, "deploy", limit=1)
    queues.update(spool.layout, "db", limit=2)
    complete = ShellComplete(cli_group, {}, "queuectl", "_QUEUECTL_COMPLETE")
    offered = [c.value for c in complete.get_completions(["--spool", spool.path, "enqueue", "-q"], "d")]
    assert offered == ["db", "deploy"]
