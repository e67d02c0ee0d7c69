"""Dependencies (`after`, `enqueue --after`, blocked/): checked at enqueue, released in claim
order, buried down the chain when one ends dead; the API and a burst worker in process, the CLI
through its entry point, and end to end through the real CLI."""
import json
import os

import pytest

from helpers import drop, job_places, read_job_file, tree_snapshot
from queuectl.errors import FieldError, InvalidInput
from queuectl.worker import Worker
from test_wait_retry_pause import finish, invoke


def place(spool, job_id):
    [(state, _)] = job_places(spool.path, job_id)
    return state


def run_burst(spool):
    assert Worker(spool, burst=True).run() == 0


# ---------------------------------------------------------------- at enqueue

def test_a_job_waits_in_blocked_until_its_dependency_completed(spool):
    spool.enqueue("true", id="a")
    record = spool.enqueue("true", id="b", after=["a"])
    assert record["state"] == "blocked" and record["after"] == ["a"]
    assert os.listdir(os.path.join(spool.path, "blocked")) == ["b.json"]
    assert read_job_file(spool.path, "blocked", "b.json")["state"] == "blocked"
    assert spool.get("b")["state"] == "blocked" and spool.counts()["blocked"] == 1
    finish(spool, "a", 0)
    # already completed: straight to pending/
    assert spool.enqueue("true", id="c", after=["a"])["state"] == "pending"


@pytest.mark.parametrize("after, message", [
    (["nope"], "no job 'nope'"),
    (["self"], "cannot wait for itself"),
    ("a", "must be an array"),
    (["a", "b@d"], "invalid id"),
    ([7], "must be a string"),
])
def test_bad_dependencies_are_refused_and_change_nothing(spool, after, message):
    spool.enqueue("true", id="a")
    before = tree_snapshot(spool.path)
    with pytest.raises(FieldError, match=message) as info:
        spool.enqueue("true", id="self", after=after)
    assert info.value.exit_code == 2 and str(info.value).startswith("after:")
    assert tree_snapshot(spool.path) == before


def test_a_batch_may_wait_for_an_earlier_job_of_the_batch_only(spool):
    before = tree_snapshot(spool.path)
    with pytest.raises(FieldError, match=r"job 1: after: no job 'second'"):
        spool.enqueue_many([{"id": "first", "command": "true", "after": ["second"]},
                            {"id": "second", "command": "true"}])
    assert tree_snapshot(spool.path) == before  # a cycle cannot be built: ids must exist first
    records = spool.enqueue_many([{"id": "first", "command": "true"},
                                  {"id": "second", "command": "true", "after": ["first", "first"]}])
    assert [r["state"] for r in records] == ["pending", "blocked"]
    assert records[1]["after"] == ["first"]  # duplicates dropped


def test_the_cli_takes_after_repeatable_and_refuses_an_unknown_id_in_one_line(spool):
    spool.enqueue("true", id="a")
    spool.enqueue("true", id="b")
    ran = invoke(spool, "enqueue", "-c", "true", "--id", "c", "--after", "a", "--after", "b", "--json")
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.output)[0]["after"] == ["a", "b"]
    before = tree_snapshot(spool.path)
    ran = invoke(spool, "enqueue", "-c", "true", "--after", "ghost")
    assert ran.exit_code == 2
    assert ran.output.strip() == "error: after: no job 'ghost' (the jobs it waits for must exist first)"
    assert tree_snapshot(spool.path) == before
    listed = invoke(spool, "list", "--state", "blocked", "--json")
    assert [r["id"] for r in json.loads(listed.output)] == ["c"]
    assert "blocked     1" in invoke(spool, "status").output


def test_a_dropped_file_with_an_unknown_dependency_is_rejected_saying_why(spool):
    spool.enqueue("true", id="a")
    drop(spool.path, "ok.json", json.dumps({"id": "ok", "command": "true", "after": ["a"]}).encode())
    drop(spool.path, "bad.json", json.dumps({"id": "bad", "command": "true", "after": ["ghost"]}).encode())
    from queuectl import ingest
    ingest.ingest_all(spool)
    assert place(spool, "ok") == "blocked"
    assert not job_places(spool.path, "bad")
    with open(os.path.join(spool.path, "rejected", "bad.json.error")) as fh:
        assert "no job 'ghost'" in fh.read()


# ---------------------------------------------------------------- workers

def test_released_jobs_run_after_their_dependency_in_claim_order(spool, tmp_path):
    out = tmp_path / "order"
    spool.enqueue(f"echo a >> {out}", id="a")
    for job_id, priority in (("low", 50), ("high", 1), ("mid", 20)):
        spool.enqueue(f"echo {job_id} >> {out}", id=job_id, priority=priority, after=["a"])
    spool.enqueue(f"echo last >> {out}", id="last", after=["high", "low"])
    run_burst(spool)
    assert out.read_text().split() == ["a", "high", "mid", "low", "last"]
    assert all(place(spool, j) == "completed" for j in ("a", "high", "mid", "low", "last"))


def test_a_dead_dependency_buries_the_chain_without_running_it(spool, tmp_path):
    ran = tmp_path / "ran"
    spool.enqueue("exit 3", id="a", max_retries=0)
    spool.enqueue(f"touch {ran}", id="b", after=["a"])
    spool.enqueue(f"touch {ran}", id="c", after=["b"])
    spool.enqueue("true", id="free")
    run_burst(spool)
    assert not ran.exists()
    for job_id, cause in (("b", "a"), ("c", "b")):
        record = spool.get(job_id)
        assert record["state"] == "dead" and record["last_error"] == f"dependency {cause} dead"
        assert record["attempts"] == 0 and record["finished_at"] is not None
    assert place(spool, "free") == "completed"


def test_retry_of_the_dependency_does_not_revive_the_buried_but_retry_of_those_works(spool, tmp_path):
    flag = tmp_path / "fixed"
    spool.enqueue(f"test -e {flag}", id="a", max_retries=0)
    spool.enqueue("true", id="b", after=["a"])
    run_burst(spool)
    assert place(spool, "b") == "dead"
    # `retry b` while a is still dead: it waits again, and is buried again by a worker
    assert spool.retry(["b"])[0]["state"] == "blocked"
    run_burst(spool)
    assert spool.get("b")["last_error"] == "dependency a dead"
    flag.touch()
    ran = invoke(spool, "retry", "a")
    assert ran.exit_code == 0
    assert "note: 1 job(s) buried because of them stay dead; to run them too: queuectl retry b" in ran.output
    run_burst(spool)
    assert place(spool, "a") == "completed" and place(spool, "b") == "dead"  # not revived
    assert spool.retry(["b"])[0]["state"] == "pending"  # a completed: straight to pending/
    run_burst(spool)
    assert place(spool, "b") == "completed"


def test_cancel_of_a_blocked_job_buries_what_waits_for_it(spool):
    spool.enqueue("sleep 30", id="slow", run_at="+1h")
    spool.enqueue("true", id="b", after=["slow"])
    spool.enqueue("true", id="c", after=["b"])
    assert spool.cancel("b")["last_error"] == "cancelled"
    run_burst(spool)
    assert spool.get("c")["last_error"] == "dependency b dead"
    assert place(spool, "slow") == "pending"


def test_a_purged_dependency_buries_the_job_waiting_for_it(spool):
    spool.enqueue("true", id="a")
    spool.enqueue("true", id="b", after=["a"])
    os.rename(os.path.join(spool.path, "blocked", "b.json"), os.path.join(spool.path, "b.json.aside"))
    run_burst(spool)  # a completes while b is away
    spool.purge("completed")
    os.rename(os.path.join(spool.path, "b.json.aside"), os.path.join(spool.path, "blocked", "b.json"))
    run_burst(spool)
    assert spool.get("b")["last_error"] == "dependency a not found (purged?)"


def test_wait_on_a_blocked_job_ends_when_it_is_buried(spool):
    spool.enqueue("exit 1", id="a", max_retries=0)
    spool.enqueue("true", id="b", after=["a"])
    run_burst(spool)
    ran = invoke(spool, "wait", "b", "--timeout", "5")
    assert ran.exit_code == 1 and "job b dead: dependency a dead" in ran.output


def test_input_validation_of_after_names_the_field():
    from queuectl.job import validate_input
    assert validate_input({"command": "x", "after": []})["after"] is None
    with pytest.raises(InvalidInput, match="after: too many"):
        validate_input({"command": "x", "after": [f"j{i}" for i in range(1001)]})


# ---------------------------------------------------------------- end to end

def test_a_chain_through_the_real_cli(cli, spool_dir, tmp_path):
    out = tmp_path / "out"
    assert cli("enqueue", "-c", f"sleep 0.3; echo build >> {out}", "--id", "build").returncode == 0
    assert cli("enqueue", "-c", f"echo test >> {out}", "--id", "test", "--after", "build").returncode == 0
    assert cli("enqueue", "-c", f"echo deploy >> {out}", "--id", "deploy", "--after", "test",
               "--after", "build").returncode == 0
    status = json.loads(cli("status", "--json").stdout)
    assert status["counts"]["blocked"] == 2
    worker = cli.start("worker", "start")
    try:
        waited = cli("wait", "deploy", "--timeout", "30")
        assert waited.returncode == 0, waited.stderr
    finally:
        cli("worker", "stop", "--timeout", "20")
        worker.wait(30)
    assert out.read_text().split() == ["build", "test", "deploy"]


def test_fsck_checks_blocked_like_every_state_folder(spool):
    from queuectl import fsck
    spool.enqueue("true", id="a")
    spool.enqueue("true", id="b", after=["a"])
    path = os.path.join(spool.path, "blocked", "b.json")
    with open(path) as fh:
        record = json.load(fh)
    record["state"] = "pending"  # a lagging label, as a crash between a move's renames leaves
    with open(path, "w") as fh:
        json.dump(record, fh)
    with open(os.path.join(spool.path, "blocked", "junk.json"), "w") as fh:
        fh.write("{not json")
    problems = fsck.check(spool)
    assert sorted((p.kind, os.path.relpath(p.path, spool.path)) for p in problems) == \
        [("corrupt", "blocked/junk.json"), ("state-mismatch", "blocked/b.json")]
    fsck.repair(problems)
    assert read_job_file(spool.path, "blocked", "b.json")["state"] == "blocked"
    assert "junk.json" in os.listdir(os.path.join(spool.path, "rejected"))
    assert not fsck.check(spool)


def test_a_finish_looks_only_at_the_jobs_waiting_for_it(spool, monkeypatch):
    from queuectl import dependencies
    spool.enqueue("sleep 60", id="slow", run_at="+1h")
    spool.enqueue("true", id="a")
    spool.enqueue_many([{"command": "true", "id": f"w{i}", "after": ["slow"]} for i in range(300)])
    spool.enqueue("true", id="b", after=["a"])
    spool.enqueue("true", id="c", after=["b"])
    book = dependencies.BlockedJobs(spool.moves)
    assert len(book.relist()) == 302
    looked = []
    real = dependencies.verdict
    monkeypatch.setattr(dependencies, "verdict", lambda inv, after: looked.append(after) or real(inv, after))
    finish(spool, "a", 0)
    assert book.resolve(book.dependents(["a"])) == 1  # b released; c still waits for b
    assert looked == [["a"]]
    assert place(spool, "b") == "pending" and place(spool, "c") == "blocked"
    assert book.dependents(["a"]) == set() and len(book.after) == 301


def test_an_idle_worker_sees_a_dependency_end_elsewhere(cli, spool_dir):
    """A dependency cancelled by a command (no worker finished it): the idle worker's rescan
    sees dead/ change and buries what waits for it."""
    from helpers import wait_until
    assert cli("enqueue", "-c", "true", "--id", "later", "--run-at", "+1h").returncode == 0
    assert cli("enqueue", "-c", "true", "--id", "waits", "--after", "later").returncode == 0
    worker = cli.start_tailed("worker", "start")
    try:
        wait_until(lambda: "started (wake-ups" in worker.tail.text(), 20, what="the worker to start")
        assert cli("cancel", "later").returncode == 0
        wait_until(lambda: "job waits dead (dependency later dead) without running" in worker.tail.text(), 20,
                   what="the worker to bury the waiting job")
    finally:
        cli("worker", "stop", "--timeout", "20")
        worker.wait(30)
