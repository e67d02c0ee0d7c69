"""Crash at every step: the process dies right after each filesystem operation of
every transition (QUEUECTL_CRASH_AT, see queuectl/faults.py); after recovery every job is
in exactly one state folder with a record that agrees with it, and nothing is lost.

The injection points are read from the source with ast, so a new crashpoint() without a
scenario here fails test_every_crash_point_has_a_scenario.
"""
import ast
import json
import os
import time

import pytest

from helpers import ROOT, claim_started, drop, job_places, read_job_file, wait_until
from queuectl import Spool, faults, fsck, names
from queuectl.worker import Worker

PACKAGE = os.path.join(ROOT, "queuectl")
KIND_KEYWORDS = {"kind", "retry_kind", "dead_kind"}


def crash_points():
    """Every point the code can crash at: literal crashpoint("x.y") calls, and the
    crashpoint(f"{kind}.step") calls of the shared move, times every kind passed to it."""
    literal, suffixes, kinds = set(), set(), set()
    for filename in sorted(os.listdir(PACKAGE)):
        if not filename.endswith(".py"):
            continue
        with open(os.path.join(PACKAGE, filename), encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name == "crashpoint" and node.args:
                    arg = node.args[0]
                    if isinstance(arg, ast.Constant):
                        literal.add(arg.value)
                    elif isinstance(arg, ast.JoinedStr):
                        tail = arg.values[-1]
                        assert isinstance(tail, ast.Constant), ast.dump(arg)
                        suffixes.add(tail.value)
                for kw in node.keywords:
                    if kw.arg in KIND_KEYWORDS and isinstance(kw.value, ast.Constant):
                        kinds.add(kw.value.value)
            elif isinstance(node, ast.FunctionDef):
                args = node.args.args[-len(node.args.defaults):] if node.args.defaults else []
                for arg, default in zip(args, node.args.defaults):
                    if arg.arg in KIND_KEYWORDS and isinstance(default, ast.Constant):
                        kinds.add(default.value)
    return sorted(literal | {k + s for k in kinds for s in suffixes})


POINTS = crash_points()


# ---------------------------------------------------------------- scenarios
# Each sets up a spool, then runs the command that reaches the point, with the crash armed.
# Returns the ids of the jobs that exist (or may exist) and must survive.

def _dead_job(spool, job_id):
    spool.enqueue("exit 1", id=job_id, max_retries=0)
    held = spool.moves.claim(spool.names("pending")[0], "h", 1)
    spool.moves.finish(held, 1, backoff=(1, 0, 0))


def _completed_job(spool, job_id):
    spool.enqueue("true", id=job_id)
    held = spool.moves.claim(spool.names("pending")[0], "h", 1)
    spool.moves.finish(held, 0)


def _orphan(spool, job_id, max_retries):
    """A processing/ job whose worker died (its lock is free) after the command started."""
    spool.enqueue("true", id=job_id, max_retries=max_retries)
    claim_started(spool, spool.names("pending")[0], "ghosthost", 999999).close()


def run_worker_burst(cli, env):
    return cli("worker", "run", "--burst", env=env, timeout=60)


def scenario(point, cli, spool, tmp_path, env):
    kind = point.split(".")[0]
    if kind == "enqueue":
        lines = "\n".join(json.dumps({"id": f"e{i}", "command": "true"}) for i in range(3))
        return cli("enqueue", "--file", "-", input=lines, env=env), ["e0", "e1", "e2"]
    if kind in ("ingest", "reject", "take"):
        body = b"{not json" if kind == "reject" else b'{"id": "dropped", "command": "true"}'
        if kind == "ingest":  # a job due first: the drop is filed into pending/, not taken at once
            spool.enqueue("true", id="first")
        drop(spool.path, "drop.json", body)
        return run_worker_burst(cli, env), {"ingest": ["first", "dropped"], "take": ["dropped"]}.get(kind, [])
    if kind in ("claim", "complete"):
        spool.enqueue("true", id="j")
        return run_worker_burst(cli, env), ["j"]
    if kind in ("fail", "bury"):
        spool.enqueue("exit 1", id="j", max_retries=1 if kind == "fail" else 0)
        return run_worker_burst(cli, env), ["j"]
    if kind == "promote":
        spool.enqueue("true", id="j", max_retries=3)
        held = spool.moves.claim(spool.names("pending")[0], "h", 1)
        spool.moves.finish(held, 1, backoff=(1, 0, 0))  # due again at once
        return run_worker_burst(cli, env), ["j"]
    if kind in ("takeback", "takeback-dead"):
        _orphan(spool, "j", 2 if kind == "takeback" else 0)
        return run_worker_burst(cli, env), ["j"]
    if kind == "unclaim":
        spool.enqueue("true", id="j")
        name = spool.names("pending")[0]
        os.rename(os.path.join(spool.path, "pending", name),   # a claim cut after its rename (a)
                  os.path.join(spool.path, "processing", names.processing_name("j", "ghosthost", 999999, 1)))
        return run_worker_burst(cli, env), ["j"]
    if kind in ("requeue", "kill"):
        mark = tmp_path / "ran-once"  # the first run waits to be stopped; a rerun is quick
        spool.enqueue(f"if [ -e {mark} ]; then exit 0; fi; touch {mark}; sleep 30", id="j")
        worker = cli.start("worker", "run", env=env)
        wait_until(lambda: spool.names("processing"), 15, what="the job to start")
        if kind == "requeue":
            cli("worker", "stop", "--now", "--timeout", "20")
        else:
            cli("cancel", "j", "--kill", "--timeout", "20")
        worker.wait(30)
        return _Result(worker.returncode), ["j"]
    if kind == "cancel":
        spool.enqueue("true", id="j")
        return cli("cancel", "j", env=env), ["j"]
    if kind == "dlq-retry":
        _dead_job(spool, "j")
        return cli("dlq", "retry", "j", env=env), ["j"]
    if kind == "retry":
        _completed_job(spool, "j")
        return cli("retry", "j", env=env), ["j"]
    if kind == "adopt":
        _dead_job(spool, "j")  # then `mv dead/j.json pending/` by hand
        os.rename(os.path.join(spool.path, "dead", "j.json"), os.path.join(spool.path, "pending", "j.json"))
        return run_worker_burst(cli, env), ["j"]
    if kind in ("release", "cascade"):  # a job waits in blocked/ for one that then ends
        spool.enqueue("true" if kind == "release" else "exit 1", id="a", max_retries=0)
        spool.enqueue("true", id="b", after=["a"])
        held = spool.moves.claim(spool.names("pending")[0], "h", 1)
        spool.moves.finish(held, 0 if kind == "release" else 1, backoff=(1, 0, 0))
        return run_worker_burst(cli, env), ["a", "b"]
    if kind == "schedule":  # a yearly schedule whose last occurrence (1 January) has not fired
        from queuectl.schedules import Schedules, latest, occurrence_id
        Schedules(spool.layout).add("tick", "0 0 1 1 *", {"command": "true"}, now=time.time() - 400 * 86400)
        return run_worker_burst(cli, env), [occurrence_id("tick", latest("0 0 1 1 *", time.time()))]
    if kind == "purge":
        _completed_job(spool, "j")
        return cli("purge", "--state", "completed", env=env), []
    if kind == "config":
        return cli("config", "set", "max-retries", "5", env=env), []
    raise AssertionError(f"no scenario for crash point {point!r}: add one to tests/test_crash_points.py")


class _Result:
    def __init__(self, returncode):
        self.returncode, self.stderr = returncode, ""


def test_every_crash_point_has_a_scenario(tmp_path):
    assert len(POINTS) >= 40, POINTS  # every transition: enqueue, ingest, claim, finish, ...
    for point in POINTS:
        kind = point.split(".")[0]
        assert kind in SCENARIO_KINDS, f"crash point {point!r} has no scenario"


SCENARIO_KINDS = {"enqueue", "ingest", "take", "reject", "claim", "complete", "fail", "bury", "promote",
                  "takeback", "takeback-dead", "unclaim", "requeue", "kill", "cancel", "dlq-retry",
                  "purge", "config", "adopt", "retry", "release", "cascade", "schedule"}


def age_tmp(spool_dir, seconds=7200):
    """Make every leftover look old: recovery leaves young ones to their (live) owners."""
    tmp = os.path.join(spool_dir, "tmp")
    then = time.time() - seconds
    for name in os.listdir(tmp):
        os.utime(os.path.join(tmp, name), (then, then), follow_symlinks=False)


@pytest.mark.parametrize("point", POINTS)
def test_crash_then_recover(point, cli, spool_dir, tmp_path):
    spool = Spool(spool_dir)
    spool.set_config("backoff-base", 1)
    env = {"QUEUECTL_CRASH_AT": point}
    result, ids = scenario(point, cli, spool, tmp_path, env)
    assert result.returncode == faults.EXIT_CODE, \
        f"{point}: the process did not die there (exit {result.returncode}): {result.stderr}"

    # recovery: what an operator (fsck --repair) and the next worker do (in-process: faster)
    age_tmp(spool_dir)
    repaired = fsck.repair(fsck.check(spool))
    assert all(p.done and not p.done.startswith("not repaired") for p in repaired), \
        [(p.kind, p.path, p.done) for p in repaired]
    assert Worker(spool, burst=True).run() == 0

    for job_id in ids:
        places = job_places(spool_dir, job_id)
        if point.startswith("enqueue.") and not places:
            # the enqueue died before reporting success; all of the batch or none of it is
            # visible only once renamed, and a job never half-exists
            continue
        assert len(places) == 1, f"{point}: job {job_id} is in {places}"
        state, name = places[0]
        record = read_job_file(spool_dir, state, name)
        assert record["state"] == state, f"{point}: {state}/{name} says {record['state']}"
        assert record["id"] == job_id
    if point.startswith(("ingest.", "reject.", "take.")):
        # a dropped file is never lost: a job, back in incoming/, or in rejected/
        left = [n for n in os.listdir(os.path.join(spool_dir, "incoming")) if not n.startswith(".")]
        rejected = [n for n in os.listdir(os.path.join(spool_dir, "rejected")) if not n.endswith(".error")]
        jobs = [i for i in ids if job_places(spool_dir, i)]
        assert len(left) + len(rejected) + len(jobs) >= 1, f"{point}: the dropped file is gone"
        if point.startswith(("ingest.", "take.")):
            assert "dropped" in jobs and not left and not rejected, f"{point}: {left} {rejected}"
    assert not os.listdir(os.path.join(spool_dir, "processing")), point
    left = fsck.check(spool)
    assert not left, f"{point}: {[(p.kind, p.path, p.detail) for p in left]}"
