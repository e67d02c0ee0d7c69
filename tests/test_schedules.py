"""Recurring schedules (`schedule add/list/remove`): checked input, exactly one job per
occurrence however many workers look, missed occurrences fired once and counted; the API in
process (with the clock passed in), the CLI through its entry point, and end to end."""
import json
import os
import threading

import pytest

from helpers import job_places, tree_snapshot
from queuectl import schedules as sched
from queuectl.errors import FieldError, InvalidInput
from queuectl.schedules import Schedules, ScheduleClock
from queuectl.timeutil import iso, parse_iso
from test_wait_retry_pause import invoke

T0 = parse_iso("2026-11-29T08:00:30Z")  # half a minute after an occurrence of '* * * * *'


def add(spool, name="tick", cron="* * * * *", now=T0, **fields):
    fields.setdefault("command", "true")
    return Schedules(spool.layout).add(name, cron, fields, now=now)


def fire(spool, now, names=None):
    book = Schedules(spool.layout)
    entries = [e for e in book.entries() if names is None or e["name"] in names]
    return book.fire_due(spool.enqueue_many, entries, now)


@pytest.mark.parametrize("name, cron, fields, message", [
    ("b@d", "* * * * *", {"command": "x"}, "NAME: invalid schedule name"),
    ("n" * 101, "* * * * *", {"command": "x"}, "NAME: invalid schedule name"),
    ("ok", "* * * *", {"command": "x"}, "CRON: must have 5 fields"),
    ("ok", "* * * * * *", {"command": "x"}, "CRON: must have 5 fields"),
    ("ok", "61 * * * *", {"command": "x"}, "CRON: not a valid cron expression"),
    ("ok", "* * * * *", {}, "command: is required"),
    ("ok", "* * * * *", {"command": "x", "id": "y"}, "id: not allowed in a schedule"),
    ("ok", "* * * * *", {"command": "x", "run_at": "+1h"}, "run_at: not allowed"),
    ("ok", "* * * * *", {"command": "x", "priority": 1000}, "priority: must be between"),
])
def test_bad_input_is_refused_and_changes_nothing(spool, name, cron, fields, message):
    before = tree_snapshot(spool.path)
    with pytest.raises(FieldError, match=message) as info:
        Schedules(spool.layout).add(name, cron, fields)
    assert info.value.exit_code == 2
    assert tree_snapshot(spool.path) == before


def test_a_name_is_taken_once(spool):
    add(spool)
    with pytest.raises(InvalidInput, match="exists already"):
        add(spool, command="other")
    assert [e["template"]["command"] for e in Schedules(spool.layout).entries()] == ["true"]


def test_each_occurrence_fires_once_with_its_id(spool):
    add(spool, cron="*/5 * * * *")
    assert fire(spool, T0) == []  # 08:00 came before the schedule was added
    assert fire(spool, T0 + 270) == [("tick", "tick-20261129T0805Z")]
    assert fire(spool, T0 + 280) == []  # the same occurrence again: nothing
    assert fire(spool, T0 + 570) == [("tick", "tick-20261129T0810Z")]
    record = spool.get("tick-20261129T0810Z")
    assert record["command"] == "true" and record["state"] == "pending"
    [listed] = Schedules(spool.layout).list(now=T0 + 570)
    assert listed["last_fired_id"] == "tick-20261129T0810Z" and listed["fired"] == 2
    assert listed["skipped"] == 0 and listed["next"] == "2026-11-29T08:15:00.000Z"


def test_missed_occurrences_fire_the_latest_once_and_count_the_others(spool):
    add(spool)
    later = T0 + 10 * 60  # 08:10:30: occurrences 08:01 ... 08:10 were due
    assert fire(spool, later) == [("tick", "tick-20261129T0810Z")]
    [listed] = Schedules(spool.layout).list(now=later)
    assert listed["skipped"] == 9 and listed["fired"] == 1
    assert [p[0] for p in job_places(spool.path, "tick-20261129T0809Z")] == []


def test_many_workers_looking_at_once_fire_one_job(spool):
    add(spool)
    now = T0 + 60
    results, barrier = [], threading.Barrier(8)

    def look():
        barrier.wait()
        results.extend(fire(spool, now))
    threads = [threading.Thread(target=look) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [("tick", "tick-20261129T0801Z")]
    assert len(job_places(spool.path, "tick-20261129T0801Z")) == 1


def test_an_occurrence_whose_job_exists_is_not_fired_again(spool):
    """A firing that died after its enqueue and before its state was written."""
    add(spool)
    spool.enqueue("true", id="tick-20261129T0801Z")
    before = tree_snapshot(spool.path, ignore=("schedules", "tmp", ".ids.lock", ".config.lock"))
    assert fire(spool, T0 + 60) == []
    assert tree_snapshot(spool.path, ignore=("schedules", "tmp", ".ids.lock", ".config.lock")) == before
    [listed] = Schedules(spool.layout).list(now=T0 + 60)
    assert listed["last_fired_id"] == "tick-20261129T0801Z" and listed["fired"] == 0


def test_remove_stops_it_and_keeps_its_jobs(spool):
    add(spool)
    fire(spool, T0 + 60)
    Schedules(spool.layout).remove("tick")
    assert fire(spool, T0 + 600) == []
    assert spool.get("tick-20261129T0801Z")["state"] == "pending"
    with pytest.raises(sched.NoSuchSchedule):
        Schedules(spool.layout).remove("tick")
    assert sorted(os.listdir(spool.layout.schedules)) == []


def test_the_clock_sleeps_until_the_next_occurrence(spool):
    add(spool, cron="0 * * * *")
    clock = ScheduleClock(Schedules(spool.layout))
    clock.reload(T0)
    assert clock.next_at == T0  # look at once after a (re)load: a missed one fires
    assert clock.fire(spool.enqueue_many, T0) == []
    assert clock.next_at == parse_iso("2026-11-29T09:00:00Z")
    assert clock.fire(spool.enqueue_many, T0 + 60) == []  # not due: not even looked at
    assert clock.fire(spool.enqueue_many, clock.next_at) == [("tick", "tick-20261129T0900Z")]


def test_template_fields_reach_the_job(spool):
    add(spool, priority=3, max_retries=0, timeout_seconds=5, env={"A": "1"}, cwd="/tmp")
    fire(spool, T0 + 60)
    record = spool.get("tick-20261129T0801Z")
    assert (record["priority"], record["max_retries"], record["timeout_seconds"], record["env"], record["cwd"]) == \
        (3, 0, 5, {"A": "1"}, "/tmp")


def test_the_cli_adds_lists_and_removes(spool):
    ran = invoke(spool, "schedule", "add", "nightly", "30 2 * * *", "-c", "make backup", "--priority", "2")
    assert ran.exit_code == 0 and ran.output.startswith("nightly: next at "), ran.output
    listed = json.loads(invoke(spool, "schedule", "list", "--json").output)
    assert [(e["name"], e["cron"], e["command"], e["template"]["priority"]) for e in listed] == \
        [("nightly", "30 2 * * *", "make backup", 2)]
    assert listed[0]["next"].endswith("T02:30:00.000Z") and listed[0]["last_fired_id"] is None
    assert listed[0]["template"]["cwd"] == os.getcwd()
    assert "nightly  30 2 * * *" in invoke(spool, "schedule", "list").output
    before = tree_snapshot(spool.path)
    bad = invoke(spool, "schedule", "add", "x", "* * *", "-c", "true")
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "CRON: must have 5 fields" in bad.output
    assert tree_snapshot(spool.path) == before
    assert invoke(spool, "schedule", "remove", "nope").exit_code == 1
    assert invoke(spool, "schedule", "remove", "nightly").exit_code == 0
    assert json.loads(invoke(spool, "schedule", "list", "--json").output) == []


def test_schedule_names_complete(spool):
    from click.shell_completion import ShellComplete
    from queuectl.cli import cli
    add(spool, "nightly")
    add(spool, "hourly")
    comp = ShellComplete(cli, {}, "queuectl", "_QUEUECTL_COMPLETE")
    got = comp.get_completions(["--spool", spool.path, "schedule", "remove"], "n")
    assert [c.value for c in got] == ["nightly"]


# ---------------------------------------------------------------- end to end

def test_a_worker_fires_a_missed_occurrence_at_start(cli, spool_dir, tmp_path):
    out = tmp_path / "out"
    assert cli("schedule", "add", "tick", "* * * * *", "-c", f"echo $QUEUECTL_JOB_ID >> {out}").returncode == 0
    state_path = os.path.join(spool_dir, "schedules", "tick.state")
    with open(state_path) as fh:
        state = json.load(fh)
    state["last_occurrence"] = iso(parse_iso(state["last_occurrence"]) - 300)  # 5 minutes without a worker
    with open(state_path, "w") as fh:
        json.dump(state, fh)
    assert cli("worker", "start", "--burst", timeout=60).returncode == 0
    [job_id] = out.read_text().split()
    assert job_id.startswith("tick-") and job_id.endswith("Z")
    [listed] = json.loads(cli("schedule", "list", "--json").stdout)
    assert listed["last_fired_id"] == job_id and listed["fired"] == 1 and listed["skipped"] in (3, 4, 5)
    assert cli("worker", "start", "--burst", timeout=60).returncode == 0
    assert out.read_text().split() == [job_id]  # a second worker fires nothing new
