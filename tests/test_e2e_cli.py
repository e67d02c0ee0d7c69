"""End to end: every command's output and exit codes, through the real CLI in subprocesses.

Enqueue forms and batches, bad input (exit 2, one line on stderr, never a traceback, the
spool unchanged), show/list/status/logs, scheduling, purge, the DLQ, cancel, config, the
drop box, the safety check, --help and --version.
"""
import json
import os
import re
import stat
import subprocess
import textwrap
import time

import pytest

import queuectl
from helpers import QUEUECTL, ROOT, cli_env, drop, job_files, read_job, tree_snapshot, wait_job, wait_until
from queuectl import names, timeutil

pytestmark = pytest.mark.process

RECORD_FIELDS = {"id", "command", "state", "attempts", "max_retries", "priority", "run_at",
                 "timeout_seconds", "cwd", "env", "created_at", "updated_at", "started_at",
                 "finished_at", "exit_code", "last_error", "worker", "after", "captured_env", "on_finish",
                 "queue", "gpus"}
CONFIG_KEYS = ["max-retries", "backoff-base", "backoff-max", "backoff-jitter", "job-timeout",
               "worker-count", "log-max-bytes", "rescan-interval", "contact-timeout", "on-finish",
               "durable-moves"]


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    return result


def error_lines(stderr):
    """The lines of an error message, without click's usage hint."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith(("Usage:", "Try '"))]


def assert_refused(result, *fragments, code=2):
    """Refused with `code`, an error naming each fragment on stderr, never a traceback. Our own
    errors are one line; click's usage errors come with its usage hint (docs/contract.md
    "Commands" allows it)."""
    out = result.stdout + result.stderr
    assert result.returncode == code, f"exit {result.returncode}: {out}"
    assert "Traceback" not in out
    if result.stderr.startswith("Usage:"):
        lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        message = result.stderr
    else:
        lines = error_lines(result.stderr)
        message = lines[0] if lines else ""
    assert len(lines) == 1, f"one error line on stderr, got: {result.stderr!r}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


@pytest.fixture
def seeded(cli, spool_dir):
    """A spool that exists and holds one pending job, `existing`."""
    ok(cli("enqueue", "-c", "true", "--id", "existing"))
    return spool_dir


# ---------------------------------------------------------------- enqueue

def test_enqueue_json_argument_prints_the_id(cli, spool_dir):
    r = ok(cli("enqueue", '{"id": "job1", "command": "echo a", "priority": 7, "max_retries": 1}'))
    assert r.stdout == "job1\n"
    assert r.stderr == ""
    rec = cli.show("job1")
    assert set(rec) == RECORD_FIELDS | {"log_path"}
    assert (rec["command"], rec["state"], rec["attempts"], rec["priority"], rec["max_retries"]) == \
        ("echo a", "pending", 0, 7, 1)
    assert rec["run_at"] is None and rec["exit_code"] is None and rec["last_error"] is None
    assert rec["created_at"] == rec["updated_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["created_at"])
    assert abs(timeutil.parse_iso(rec["created_at"]) - time.time()) < 30


def test_enqueue_flags_give_and_override_fields(cli, spool_dir):
    t0 = time.time()
    ok(cli("enqueue", "-c", "echo b", "--id", "b1", "--priority", "3", "--run-at", "+1h",
           "--max-retries", "7", "--timeout", "2.5"))
    rec = cli.show("b1")
    assert (rec["command"], rec["priority"], rec["max_retries"], rec["timeout_seconds"]) == ("echo b", 3, 7, 2.5)
    assert t0 + 3600 - 1 <= timeutil.parse_iso(rec["run_at"]) <= time.time() + 3600 + 1

    # flags override the JSON argument's fields
    ok(cli("enqueue", '{"id": "c1", "command": "echo json", "priority": 50}', "--priority", "4", "-c", "echo flag"))
    rec = cli.show("c1")
    assert (rec["priority"], rec["command"]) == (4, "echo flag")

    # run_at: Unix seconds, ISO-8601 with an offset, without a zone (UTC)
    ok(cli("enqueue", "-c", "true", "--id", "unix", "--run-at", "1900000000"))
    assert cli.show("unix")["run_at"] == timeutil.iso(1900000000)
    ok(cli("enqueue", "-c", "true", "--id", "offset", "--run-at", "2030-01-01T02:00:00+02:00"))
    assert cli.show("offset")["run_at"] == "2030-01-01T00:00:00.000Z"
    ok(cli("enqueue", '{"id": "nozone", "command": "true", "run_at": "2030-01-01T00:00:00"}'))
    assert cli.show("nozone")["run_at"] == "2030-01-01T00:00:00.000Z"

    # defaults: priority 10, max_retries = config max-retries (3), generated id
    r = ok(cli("enqueue", "-c", "true"))
    gen = r.stdout.strip()
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", gen)
    rec = cli.show(gen)
    assert (rec["priority"], rec["max_retries"], rec["timeout_seconds"], rec["env"]) == (10, 3, None, None)
    later = ok(cli("enqueue", "-c", "true")).stdout.strip()
    assert gen < later, "generated ids sort by creation time"


def test_enqueue_file_object_array_jsonl_and_stdin(cli, spool_dir, tmp_path):
    obj = tmp_path / "one.json"
    obj.write_text(json.dumps({"id": "o1", "command": "echo o"}, indent=2))
    assert ok(cli("enqueue", "--file", str(obj))).stdout == "o1\n"

    arr = tmp_path / "many.json"
    arr.write_text(json.dumps([{"id": "a1", "command": "echo 1"}, {"id": "a2", "command": "echo 2"}]))
    assert ok(cli("enqueue", "--file", str(arr))).stdout.split() == ["a1", "a2"]

    lines = tmp_path / "jobs.jsonl"
    lines.write_text('{"id": "l1", "command": "echo 1"}\n\n{"id": "l2", "command": "echo 2"}\n'
                     '{"id": "l3", "command": "echo 3", "priority": 1}\n')
    assert ok(cli("enqueue", "--file", str(lines))).stdout.split() == ["l1", "l2", "l3"]

    r = ok(cli("enqueue", "--file", "-", input='{"id": "s1", "command": "echo s"}\n{"id": "s2", "command": "echo t"}\n'))
    assert r.stdout.split() == ["s1", "s2"]
    r = ok(cli("enqueue", "--file", "-", "--priority", "2", input='[{"id": "s3", "command": "echo u"}]'))
    assert r.stdout.split() == ["s3"]
    assert cli.show("s3")["priority"] == 2

    ids = {r["id"] for r in cli.json("list", "--state", "pending")}
    assert ids == {"o1", "a1", "a2", "l1", "l2", "l3", "s1", "s2", "s3"}
    assert cli.show("l3")["priority"] == 1
    assert len(job_files(spool_dir, "pending")) == 9


def test_enqueue_json_output_is_an_array_of_records(cli, spool_dir, tmp_path):
    one = cli.json("enqueue", "-c", "echo one", "--id", "one")
    assert isinstance(one, list) and len(one) == 1
    assert set(one[0]) == RECORD_FIELDS
    assert one[0]["id"] == "one" and one[0]["state"] == "pending" and one[0]["attempts"] == 0
    assert one[0] == {k: v for k, v in cli.show("one").items() if k != "log_path"}

    two = cli.json("enqueue", "--file", "-", input='{"command": "echo x"}\n{"command": "echo y"}\n')
    assert [r["command"] for r in two] == ["echo x", "echo y"]
    assert all(set(r) == RECORD_FIELDS for r in two)


def test_enqueue_records_the_callers_cwd_and_the_job_runs_there(cli, spool_dir, tmp_path):
    here = tmp_path / "work dir"
    here.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ok(cli("enqueue", "-c", "pwd; echo $GREETING", "--id", "where", cwd=str(here)))
    assert cli.show("where")["cwd"] == str(here)
    ok(cli("enqueue", json.dumps({"id": "explicit", "command": "pwd", "cwd": str(elsewhere),
                                  "env": {"GREETING": "unused"}}), cwd=str(here)))
    assert cli.show("explicit")["cwd"] == str(elsewhere)
    ok(cli("enqueue", json.dumps({"id": "env", "command": "echo $GREETING-$QUEUECTL_JOB_ID",
                                  "env": {"GREETING": "hello"}})))

    ok(cli("worker", "start", "--burst", timeout=30))
    assert str(here) in cli("logs", "where").stdout
    assert str(elsewhere) in cli("logs", "explicit").stdout
    assert "hello-env" in cli("logs", "env").stdout


def test_job_environment(cli, spool_dir):
    """sh -c in its own process group, stdin /dev/null, QUEUECTL_* variables, env on top."""
    cmd = ('echo "pgid=$(cut -d" " -f5 /proc/$$/stat) pid=$$"; read x; echo "read-rc=$?"; '
           'echo "id=$QUEUECTL_JOB_ID attempt=$QUEUECTL_ATTEMPT spool=$QUEUECTL_SPOOL extra=$EXTRA"')
    ok(cli("enqueue", json.dumps({"id": "envy", "command": cmd, "env": {"EXTRA": "x y"}})))
    ok(cli("worker", "start", "--burst", timeout=30))
    out = ok(cli("logs", "envy")).stdout
    m = re.search(r"^pgid=(\d+) pid=(\d+)$", out, re.M)
    assert m and m.group(1) == m.group(2), out
    assert "read-rc=1" in out.splitlines(), "stdin is /dev/null: read gets EOF at once"
    assert f"id=envy attempt=1 spool={os.path.abspath(spool_dir)} extra=x y" in out.splitlines()
    assert cli.show("envy")["state"] == "completed"


def test_a_missing_cwd_is_a_failed_attempt(cli, spool_dir):
    ok(cli("enqueue", json.dumps({"id": "nowhere", "command": "pwd", "cwd": "/nonexistent/dir",
                                  "max_retries": 0})))
    ok(cli("worker", "start", "--burst", timeout=30))
    rec = cli.show("nowhere")
    assert rec["state"] == "dead" and rec["exit_code"] is None
    assert "/nonexistent/dir" in rec["last_error"]


def test_log_is_capped_at_log_max_bytes(cli, spool_dir):
    ok(cli("config", "set", "log-max-bytes", "1000"))
    ok(cli("enqueue", "-c", "for i in $(seq 1 500); do echo line-$i; done", "--id", "chatty",
           "--max-retries", "0"))
    r = cli("worker", "start", "--burst", timeout=30)
    assert "Traceback" not in r.stdout + r.stderr
    rec = cli.show("chatty")
    assert (rec["state"], rec["last_error"]) == ("completed", None)
    log = ok(cli("logs", "chatty")).stdout
    assert len(log.encode()) <= 1000
    assert "line-500" in log.splitlines() and "line-1" not in log.splitlines()
    assert "bytes of older output cut" in log


# ---------------------------------------------------------------- bad input

BAD_ENQUEUE = [
    (["{"], ["JSON"]),
    (['{"command": "true", "colour": "red"}'], ["colour"]),
    (['{"command": "true", "priority": 1000}'], ["priority"]),
    (["-c", "true", "--priority", "1000"], ["priority"]),
    (["-c", "true", "--priority", "-1"], ["priority"]),
    (['{"command": "true", "max_retries": -1}'], ["max_retries"]),
    (["-c", "true", "--max-retries", "-1"], ["max_retries"]),
    (['{"command": "true", "max_retries": "3"}'], ["max_retries"]),
    (["-c", "true", "--run-at", "tomorrow"], ["run_at"]),
    (['{"command": "true", "run_at": "2026-13-45T00:00:00Z"}'], ["run_at"]),
    (['{"command": "true", "run_at": true}'], ["run_at"]),
    (["-c", "true", "--id", "../etc"], ["id", "../etc"]),
    (['{"command": "true", "id": "../etc"}'], ["id"]),
    (['{"command": "true", "id": ".hidden"}'], ["id"]),
    (["-c", "true", "--id", "x" * 129], ["id"]),
    (["-c", "true", "--id", "a/b"], ["id"]),
    (['{"command": ""}'], ["command"]),
    (['{"id": "nocommand"}'], ["command"]),
    ([], ["command"]),
    (['{"command": "true", "env": {"A": 1}}'], ["env"]),
    (['{"command": "true", "env": {"A=B": "x"}}'], ["env"]),
    (['{"command": "true", "env": ["A=B"]}'], ["env"]),
    (['{"command": "true", "cwd": "relative/dir"}'], ["cwd"]),
    (['{"command": "true", "timeout_seconds": -1}'], ["timeout_seconds"]),
    (["-c", "true", "--timeout", "-1"], ["timeout_seconds"]),
    (['[{"command": "true"}, {"command": "false"}]'], []),
    (["--file", "/nonexistent/jobs.json"], ["/nonexistent/jobs.json"]),
    (['{"command": "true"}', "--file", "/dev/null"], []),
]


@pytest.mark.parametrize("args,fragments", BAD_ENQUEUE, ids=[" ".join(a) or "(nothing)" for a, _ in BAD_ENQUEUE])
def test_bad_enqueue_input_exits_2_and_changes_nothing(cli, seeded, args, fragments):
    before = tree_snapshot(seeded)
    assert_refused(cli("enqueue", *args), *fragments)
    assert tree_snapshot(seeded) == before


def test_bad_stdin_batches_exit_2(cli, seeded):
    before = tree_snapshot(seeded)
    assert_refused(cli("enqueue", "--file", "-", input=""), "no job")
    assert_refused(cli("enqueue", "--file", "-", input="not json at all\n"), "line 1")
    assert_refused(cli("enqueue", "--file", "-", input='[{"command": "true"}, 7]'), "job 2")
    assert_refused(cli("enqueue", "--file", "-", "--id", "one-id",
                       input='{"command": "true"}\n{"command": "false"}\n'), "--id")
    assert_refused(cli("enqueue", "--file", "-", input='{"command": "true"}\n{"command": "true", "priority": "high"}\n'),
                   "job 2", "priority")
    assert tree_snapshot(seeded) == before


def test_batch_is_all_or_nothing(cli, seeded, tmp_path):
    before = tree_snapshot(seeded)
    good = [json.dumps({"id": f"g{i}", "command": "true"}) for i in range(3)]

    bad_json = tmp_path / "bad-json.jsonl"
    bad_json.write_text("\n".join(good[:2] + ['{"id": "g9", "command": '] + good[2:]) + "\n")
    assert_refused(cli("enqueue", "--file", str(bad_json)), "line 3")

    bad_field = tmp_path / "bad-field.jsonl"
    bad_field.write_text("\n".join(good[:1] + ['{"id": "g8", "command": "true", "priority": 1000}'] + good[1:]) + "\n")
    assert_refused(cli("enqueue", "--file", str(bad_field)), "job 2", "priority")

    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps([{"id": "same", "command": "true"}, {"id": "same", "command": "false"}]))
    assert_refused(cli("enqueue", "--file", str(twice)), "same")

    clash = tmp_path / "clash.jsonl"
    clash.write_text("\n".join(good + ['{"id": "existing", "command": "true"}']) + "\n")
    assert_refused(cli("enqueue", "--file", str(clash)), "existing", "pending")

    assert job_files(seeded, "pending") == [n for n in job_files(seeded, "pending") if n.endswith("_existing.json")]
    assert len(job_files(seeded, "pending")) == 1
    assert tree_snapshot(seeded) == before
    for i in range(3):
        assert cli("show", f"g{i}").returncode == 1


def test_duplicate_id_names_the_existing_state(cli, seeded):
    before = tree_snapshot(seeded)
    assert_refused(cli("enqueue", "-c", "echo other", "--id", "existing"), "existing", "pending")
    assert tree_snapshot(seeded) == before
    assert cli.show("existing")["command"] == "true"

    ok(cli("cancel", "existing"))
    before = tree_snapshot(seeded)
    assert_refused(cli("enqueue", '{"id": "existing", "command": "true"}'), "existing", "dead")
    assert tree_snapshot(seeded) == before


BAD_CONFIG = [
    (["set", "colour", "blue"], ["colour"] + CONFIG_KEYS),
    (["get", "colour"], ["colour", "max-retries"]),
    (["unset", "colour"], ["colour", "max-retries"]),
    (["set", "max-retries", "abc"], ["max-retries"]),
    (["set", "max-retries", "1.5"], ["max-retries"]),
    (["set", "backoff-base", "0.5"], ["backoff-base"]),
    (["set", "worker-count", "0"], ["worker-count"]),
    (["set", "backoff-jitter", "2"], ["backoff-jitter"]),
    (["set", "job-timeout", "nan"], ["job-timeout"]),
    (["set", "log-max-bytes", "lots"], ["log-max-bytes"]),
    (["set", "max-retries", "-1"], ["max-retries"]),
    (["set", "backoff-max", "-5"], ["backoff-max"]),
]


@pytest.mark.parametrize("args,fragments", BAD_CONFIG,
                         ids=[" ".join(a) for a, _ in BAD_CONFIG])
def test_bad_config_exits_2_and_changes_nothing(cli, seeded, args, fragments):
    ok(cli("config", "set", "max-retries", "4"))
    before = tree_snapshot(seeded)
    assert_refused(cli("config", *args), *fragments)
    assert tree_snapshot(seeded) == before
    assert ok(cli("config", "get", "max-retries")).stdout == "4\n"


BAD_USAGE = [
    (["show", "../etc"], ["../etc"]),
    (["logs", "../etc"], ["../etc"]),
    (["list", "--state", "bogus"], ["bogus"]),
    (["list", "--limit", "-1"], ["--limit"]),
    (["purge", "--state", "pending"], ["pending"]),
    (["purge", "--state", "completed", "--older-than", "soon"], ["soon"]),
    (["purge"], ["--state"]),
    (["dlq", "retry"], []),
    (["dlq", "retry", "existing", "--all"], []),
    (["worker", "start", "--count", "0"], ["--count"]),
    (["worker", "start", "--count", "100000"], ["--count"]),
    (["worker", "stop", "--timeout", "-1"], ["--timeout"]),
    (["no-such-command"], ["no-such-command"]),
    (["enqueue", "--no-such-flag"], ["--no-such-flag"]),
]


@pytest.mark.parametrize("args,fragments", BAD_USAGE, ids=[" ".join(a) for a, _ in BAD_USAGE])
def test_bad_usage_exits_2_and_changes_nothing(cli, seeded, args, fragments):
    before = tree_snapshot(seeded)
    assert_refused(cli(*args, timeout=30), *fragments)
    assert tree_snapshot(seeded) == before


@pytest.mark.parametrize("args", [["show", "nope"], ["logs", "nope"], ["cancel", "nope"],
                                  ["dlq", "retry", "nope"], ["cancel", "nope", "--kill"]])
def test_unknown_job_exits_1_naming_it(cli, seeded, args):
    before = tree_snapshot(seeded)
    assert_refused(cli(*args), "nope", code=1)
    assert tree_snapshot(seeded) == before


# ---------------------------------------------------------------- reading

def test_show_text_and_json_with_absolute_log_path(cli, spool_dir):
    ok(cli("enqueue", "-c", "echo shown", "--id", "shown"))
    ok(cli("worker", "start", "--burst", timeout=30))
    rec = cli.show("shown")
    assert os.path.isabs(rec["log_path"])
    assert rec["log_path"] == os.path.join(os.path.realpath(spool_dir), "logs", "shown.log") or \
        rec["log_path"] == os.path.join(os.path.abspath(spool_dir), "logs", "shown.log")
    assert os.path.isfile(rec["log_path"])
    assert {k: v for k, v in rec.items() if k != "log_path"} == read_job(spool_dir, "shown")[1]
    text = ok(cli("show", "shown")).stdout
    assert "shown" in text and "completed" in text and rec["log_path"] in text


SLOW_MOVE = textwrap.dedent("""
    # Loaded by every queuectl process of the test (PYTHONPATH): widens the gap between the two
    # renames of a move processing/ -> completed/ (rule 3 a and b of spool.py) to 1.5 s.
    import os, time
    _rename = os.rename
    def rename(src, dst, *args, **kwargs):
        _rename(src, dst, *args, **kwargs)
        if "/processing/" in os.fspath(src) and "/completed/" in os.fspath(dst):
            time.sleep(1.5)
    os.rename = rename
""")


def test_show_never_returns_a_half_moved_record(cli, spool_dir, tmp_path):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SLOW_MOVE)
    ok(cli("enqueue", "-c", "true", "--id", "moving"))
    cli.start_tailed("worker", "start", "--burst",
                     env={"PYTHONPATH": f"{inject}{os.pathsep}{ROOT}"})
    seen = []

    def completed():
        rec = cli.show("moving")
        seen.append((rec["state"], rec["exit_code"], rec["finished_at"]))
        return rec["state"] == "completed" and rec
    wait_until(completed, 15, what="moving completed")
    wait_job(spool_dir, "moving", "completed", timeout=5)
    completed_views = [v for v in seen if v[0] == "completed"]
    assert all(code == 0 and finished for _, code, finished in completed_views), \
        f"a completed job shown with exit_code/finished_at of the running one: {completed_views[:3]}"


def test_list_pending_is_in_claim_order_like_ls(cli, spool_dir):
    old = "2020-01-01T00:00:00Z"
    # enqueue order scrambled; ids chosen so that their own order says nothing
    ok(cli("enqueue", "-c", "true", "--id", "x-default", "--run-at", old))          # priority 10
    ok(cli("enqueue", "-c", "true", "--id", "e-later", "--priority", "1", "--run-at", "+1h"))
    ok(cli("enqueue", "-c", "true", "--id", "zz-first", "--priority", "5", "--run-at", old))
    ok(cli("enqueue", "-c", "true", "--id", "m-plain", "--priority", "5"))          # due at enqueue
    ok(cli("enqueue", "-c", "true", "--id", "aa-second", "--priority", "5", "--run-at", old))
    ok(cli("enqueue", "-c", "true", "--id", "b-now", "--priority", "1"))
    expected = ["b-now", "e-later", "zz-first", "aa-second", "m-plain", "x-default"]

    assert [r["id"] for r in cli.json("list", "--state", "pending")] == expected
    assert [r["id"] for r in cli.json("list", "--state", "pending", "--limit", "2")] == expected[:2]
    table = ok(cli("list", "--state", "pending")).stdout.splitlines()
    assert table[0].split()[:2] == ["ID", "STATE"]
    assert [line.split()[0] for line in table[1:]] == expected

    ls = subprocess.run(["ls", os.path.join(spool_dir, "pending")], capture_output=True, text=True,
                        env=dict(os.environ, LC_ALL="C"), check=True).stdout.split()
    assert ls == sorted(ls, key=lambda n: n.encode())
    assert [names.id_of("pending", n) for n in ls] == expected

    # and the workers do claim in that order (e-later is not due)
    ok(cli("worker", "start", "--burst", "--count", "1", timeout=30))
    done = [cli.show(i) for i in expected if i != "e-later"]
    assert all(r["state"] == "completed" for r in done)
    starts = [timeutil.parse_iso(r["started_at"]) for r in done]
    assert starts == sorted(starts), [(r["id"], r["started_at"]) for r in done]
    assert cli.show("e-later")["state"] == "pending"


def test_run_at_is_respected_by_a_running_worker(cli, spool_dir):
    cli.start_tailed("worker", "start")
    wait_until(lambda: len(cli.live_workers()) == 1, 15, what="a live worker")
    rec = cli.json("enqueue", "-c", "true", "--id", "soon", "--run-at", "+2s")[0]
    counts = cli.json("status")["counts"]
    assert counts["pending"] == 1 and counts["scheduled"] == 1
    run_at = timeutil.parse_iso(rec["run_at"])
    done = wait_job(spool_dir, "soon", "completed", timeout=10)
    started = timeutil.parse_iso(done["started_at"])
    assert started >= run_at, "never before run_at"
    assert started - run_at < 1.5, f"started {started - run_at:.3f}s after run_at"


def test_status_json_has_the_keys_of_the_contract(cli, spool_dir, tmp_path):
    """The keys docs/contract.md "Commands" gives `status --json`."""
    pidfile = str(tmp_path / "job.pid")
    cli.kill_at_teardown(pidfile)
    ok(cli("enqueue", "-c", f"echo $$ > {pidfile}; sleep 5", "--id", "busy"))
    ok(cli("enqueue", "-c", "true", "--id", "later", "--run-at", "+1h"))
    cli.start_tailed("worker", "start")
    wait_until(lambda: any(w["job"] == "busy" for w in cli.live_workers()), 15, what="busy running")
    st = cli.json("status")
    assert {"spool", "counts", "workers"} <= set(st)
    assert os.path.isabs(st["spool"]) and os.path.samefile(st["spool"], spool_dir)
    assert set(st["counts"]) == {"incoming", "blocked", "pending", "scheduled", "processing", "failed",
                                 "completed", "dead"}
    assert st["counts"] == {"incoming": 0, "blocked": 0, "pending": 1, "scheduled": 1, "processing": 1, "failed": 0,
                            "completed": 0, "dead": 0}
    assert len(st["workers"]) == 1
    w = st["workers"][0]
    assert {"host", "pid", "job", "since"} <= set(w)
    assert w["host"] == names.hostname() and isinstance(w["pid"], int) and w["job"] == "busy"
    assert abs(timeutil.parse_iso(w["since"]) - time.time()) < 30
    text = ok(cli("status")).stdout
    assert "pending" in text and "processing" in text and "busy" in text


def test_status_counts_incoming_and_worker_start_ingests_it(cli, spool_dir):
    ok(cli("status"))
    incoming = os.path.join(spool_dir, "incoming")
    with open(os.path.join(incoming, "drop.json"), "w") as fh:
        json.dump({"id": "dropped", "command": "echo dropped"}, fh)
    with open(os.path.join(incoming, ".partial.json"), "w") as fh:
        fh.write('{"command": "echo never"}')
    with open(os.path.join(incoming, "notes.txt"), "w") as fh:
        fh.write('{"command": "echo never"}')
    counts = cli.json("status")["counts"]
    assert counts["incoming"] == 1 and counts["pending"] == 0

    ok(cli("worker", "start", "--burst", timeout=30))
    assert cli.show("dropped")["state"] == "completed"
    assert "dropped" in cli("logs", "dropped").stdout
    assert sorted(os.listdir(incoming)) == [".partial.json", "notes.txt"], "ignored names stay untouched"
    assert cli.json("status")["counts"]["incoming"] == 0


def test_logs_prints_output_and_nothing_before_a_run(cli, spool_dir):
    ok(cli("enqueue", "-c", "echo line-one; echo line-two >&2; echo 'héllo ✓'", "--id", "talk"))
    r = ok(cli("logs", "talk"))
    assert r.stdout == "", "no log yet: prints nothing"
    ok(cli("worker", "start", "--burst", timeout=30))
    out = ok(cli("logs", "talk")).stdout
    assert "line-one" in out and "line-two" in out
    assert "attempt 1/" in out
    assert out.index("line-one") < out.index("line-two")
    assert "héllo ✓" in out.splitlines()


def test_logs_follow_streams_until_the_job_is_final(cli, spool_dir):
    ok(cli("enqueue", "-c", "echo first; sleep 2; echo second", "--id", "stream"))
    follow = cli.start_tailed("logs", "stream", "--follow")
    cli.start_tailed("worker", "start", "--burst")

    def lines():
        return follow.tail.text().splitlines()
    wait_until(lambda: "first" in lines(), 15, what="the first line of output")
    assert "second" not in lines()
    assert follow.poll() is None, "still following while the job runs"
    assert read_job(spool_dir, "stream")[0] == "processing"
    assert follow.wait(timeout=20) == 0
    wait_until(lambda: "second" in lines(), 5, what="the rest of the log")
    assert lines().count("first") == 1 and lines().index("first") < lines().index("second")
    assert cli.show("stream")["state"] == "completed"


def test_logs_follow_continues_across_retries_until_dead(cli, spool_dir):
    ok(cli("config", "set", "backoff-max", "0.3"))
    ok(cli("enqueue", "-c", "echo try-$QUEUECTL_ATTEMPT; exit 1", "--id", "retrier", "--max-retries", "1"))
    follow = cli.start_tailed("logs", "retrier", "--follow")
    cli.start_tailed("worker", "start")
    assert follow.wait(timeout=20) == 0
    wait_until(lambda: "try-2" in follow.tail.text().splitlines(), 5, what="the second attempt's output")
    lines = follow.tail.text().splitlines()
    assert lines.count("try-1") == 1 and lines.index("try-1") < lines.index("try-2")
    assert cli.show("retrier")["state"] == "dead"


def test_logs_follow_of_a_final_job_returns(cli, spool_dir):
    ok(cli("enqueue", "-c", "echo over", "--id", "over"))
    ok(cli("worker", "start", "--burst", timeout=30))
    r = ok(cli("logs", "over", "--follow", timeout=15))
    assert "over" in r.stdout


# ---------------------------------------------------------------- changing

def test_purge(cli, spool_dir):
    for i in range(2):
        ok(cli("enqueue", "-c", f"echo {i}", "--id", f"done{i}"))
    ok(cli("worker", "start", "--burst", timeout=30))
    ok(cli("enqueue", "-c", "true", "--id", "gone"))
    ok(cli("cancel", "gone"))
    logs = os.path.join(spool_dir, "logs")
    assert {"done0.log", "done1.log"} <= set(os.listdir(logs))

    r = ok(cli("purge", "--state", "completed", "--older-than", "7d"))
    assert "0" in r.stdout
    assert job_files(spool_dir, "completed") == ["done0.json", "done1.json"]

    r = ok(cli("purge", "--state", "completed"))
    assert "2" in r.stdout
    assert job_files(spool_dir, "completed") == []
    assert not {"done0.log", "done1.log"} & set(os.listdir(logs))
    assert cli("show", "done0").returncode == 1
    assert job_files(spool_dir, "dead") == ["gone.json"], "the other state is untouched"

    ok(cli("purge", "--state", "dead"))
    assert job_files(spool_dir, "dead") == []
    assert cli("logs", "gone").returncode == 1
    # a purged job is gone from the spool: its id is free again
    ok(cli("enqueue", "-c", "true", "--id", "done0"))
    assert cli.show("done0")["state"] == "pending"


def test_cancel_pending_and_failed_jobs(cli, spool_dir):
    assert ok(cli("config", "set", "backoff-base", "1000"))
    ok(cli("enqueue", "-c", "exit 1", "--id", "failing", "--max-retries", "1"))
    ok(cli("worker", "start", "--burst", timeout=30))
    assert cli.show("failing")["state"] == "failed"
    ok(cli("enqueue", "-c", "true", "--id", "waiting"))

    for job_id in ("waiting", "failing"):
        r = ok(cli("cancel", job_id))
        assert job_id in r.stdout
        rec = cli.show(job_id)
        assert rec["state"] == "dead" and rec["last_error"] == "cancelled"
    assert job_files(spool_dir, "pending") == [] and job_files(spool_dir, "failed") == []

    before = tree_snapshot(spool_dir)
    msg = assert_refused(cli("cancel", "waiting"), "waiting", code=1)
    assert "dead" in msg
    assert tree_snapshot(spool_dir) == before


def test_dlq_list_and_retry_all(cli, spool_dir):
    for job_id in ("d1", "d2"):
        ok(cli("enqueue", "-c", "true", "--id", job_id))
        ok(cli("cancel", job_id))
    ok(cli("enqueue", "-c", "true", "--id", "alive"))
    dead = cli.json("dlq", "list")
    assert sorted(r["id"] for r in dead) == ["d1", "d2"]
    assert all(r["state"] == "dead" and set(r) == RECORD_FIELDS for r in dead)
    assert "d1" in ok(cli("dlq", "list")).stdout

    assert_refused(cli("dlq", "retry", "alive"), "alive", code=1)
    t0 = time.time()
    r = ok(cli("dlq", "retry", "--all"))
    assert sorted(r.stdout.split()) == ["d1", "d2"]
    for job_id in ("d1", "d2"):
        rec = cli.show(job_id)
        assert rec["state"] == "pending" and rec["attempts"] == 0
        assert t0 - 1 <= timeutil.parse_iso(rec["run_at"]) <= time.time() + 1
    assert cli.json("dlq", "list") == []
    assert job_files(spool_dir, "dead") == []
    assert ok(cli("dlq", "retry", "--all")).stdout == "", "nothing dead: nothing to do"


def test_dlq_retry_of_several_ids_changes_nothing_when_one_is_not_dead(cli, spool_dir):
    for job_id in ("d1", "alive", "d2"):
        ok(cli("enqueue", "-c", "true", "--id", job_id))
    ok(cli("cancel", "d1"))
    ok(cli("cancel", "d2"))
    before = tree_snapshot(spool_dir)
    assert_refused(cli("dlq", "retry", "d1", "alive", "d2"), "alive", code=1)
    assert tree_snapshot(spool_dir) == before


def test_config_list_get_set_unset(cli, spool_dir):
    values = cli.json("config", "list")
    assert list(values) == CONFIG_KEYS or set(values) == set(CONFIG_KEYS)
    assert {k: values[k] for k in CONFIG_KEYS[:6]} == {
        "max-retries": 3, "backoff-base": 2, "backoff-max": 3600, "backoff-jitter": 0,
        "job-timeout": 0, "worker-count": 1}
    assert values["log-max-bytes"] > 0
    assert ok(cli("config", "get", "max_retries")).stdout == "3\n"
    assert "max-retries" in ok(cli("config", "list")).stdout

    ok(cli("config", "set", "max_retries", "5"))
    assert ok(cli("config", "get", "max-retries")).stdout == "5\n"
    assert cli.json("config", "list")["max-retries"] == 5
    assert cli.json("enqueue", "-c", "true")[0]["max_retries"] == 5, "the new default applies"
    ok(cli("config", "set", "backoff-base", "1.5"))
    assert ok(cli("config", "get", "backoff_base")).stdout == "1.5\n"
    with open(os.path.join(spool_dir, "config.json")) as fh:
        stored = json.load(fh)
    assert 5 in stored.values() and 1.5 in stored.values()

    ok(cli("config", "unset", "max_retries"))
    assert ok(cli("config", "get", "max-retries")).stdout == "3\n"
    assert cli.json("config", "list")["backoff-base"] == 1.5


def test_backoff_max_caps_the_delay_and_jitter_adds_up_to_its_share(cli, spool_dir):
    ok(cli("config", "set", "backoff-base", "1000"))
    ok(cli("config", "set", "backoff-max", "10"))
    ok(cli("config", "set", "backoff-jitter", "0.5"))
    for i in range(4):
        ok(cli("enqueue", "-c", "exit 1", "--id", f"j{i}", "--max-retries", "1"))
    ok(cli("worker", "start", "--burst", timeout=30))
    delays = []
    for i in range(4):
        rec = cli.show(f"j{i}")
        assert rec["state"] == "failed" and rec["attempts"] == 1
        delays.append(timeutil.parse_iso(rec["run_at"]) - timeutil.parse_iso(rec["finished_at"]))
    assert all(10 - 0.002 <= d <= 15 + 0.002 for d in delays), delays
    # failed/ names sort by the time of the next attempt
    failed = job_files(spool_dir, "failed")
    order = sorted(range(4), key=lambda i: cli.show(f"j{i}")["run_at"])
    assert [names.id_of("failed", n) for n in failed] == [f"j{i}" for i in order]


def test_config_worker_count_is_the_default_count(cli, spool_dir):
    ok(cli("config", "set", "worker-count", "2"))
    r = ok(cli("worker", "start", "--burst", timeout=30))
    assert "started 2 worker(s)" in r.stdout


# ---------------------------------------------------------------- the drop box

def test_drop_box_with_a_running_worker(cli, spool_dir):
    cli.start_tailed("worker", "start")
    wait_until(lambda: len(cli.live_workers()) == 1, 15, what="a live worker")

    t0 = time.monotonic()
    drop(spool_dir, "job.json", json.dumps({"id": "dropped", "command": "echo from the drop box"}))
    rec = wait_job(spool_dir, "dropped", "completed", timeout=10)
    latency = time.monotonic() - t0
    print(f"drop box: mv to completed in {latency * 1000:.0f} ms")
    assert rec["exit_code"] == 0
    assert "from the drop box" in cli("logs", "dropped").stdout

    rejected = os.path.join(spool_dir, "rejected")
    drop(spool_dir, "bad.json", json.dumps({"command": "true", "priority": 5000}))
    drop(spool_dir, "garbage.json", "this is not JSON")
    drop(spool_dir, "dup.json", json.dumps({"id": "dropped", "command": "true"}))
    wait_until(lambda: {"bad.json.error", "garbage.json.error", "dup.json.error"} <= set(os.listdir(rejected)),
               10, what="three rejections")
    drop(spool_dir, "bad.json", json.dumps({"command": "true", "colour": "red"}))  # same name again
    # the .error is written first, then the file is moved beside it: wait for both
    wait_until(lambda: len([n for n in os.listdir(rejected) if n.endswith(".error")]) == 4
               and "bad.json.1" in os.listdir(rejected), 10, what="the fourth rejection")

    def error(name):
        with open(os.path.join(rejected, name + ".error")) as fh:
            return fh.read()
    assert "priority" in error("bad.json")
    assert "JSON" in error("garbage.json")
    assert "dropped" in error("dup.json") and "exists" in error("dup.json")
    second = [n for n in os.listdir(rejected) if n.startswith("bad.json") and not n.endswith(".error")
              and n != "bad.json"]
    assert len(second) == 1, os.listdir(rejected)
    assert "colour" in error(second[0])
    with open(os.path.join(rejected, "bad.json")) as fh:
        assert "5000" in fh.read(), "the first rejected file was not overwritten"
    assert os.listdir(os.path.join(spool_dir, "incoming")) == []
    assert cli.show("dropped")["command"] == "echo from the drop box"
    assert cli.json("status")["counts"]["pending"] == 0


def test_drop_box_rejects_what_is_not_a_regular_file_or_too_big(cli, spool_dir, tmp_path):
    ok(cli("status"))
    incoming = os.path.join(spool_dir, "incoming")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"command": "echo followed a symlink"}))
    os.symlink(outside, os.path.join(incoming, "link.json"))
    os.mkdir(os.path.join(incoming, "folder.json"))
    os.mkfifo(os.path.join(incoming, "fifo.json"))
    with open(os.path.join(incoming, "big.json"), "w") as fh:
        fh.write(json.dumps({"command": "true", "env": {"PAD": "x" * 60000}})[:-2] + " " * (1 << 20) + "}}")
    ok(cli("worker", "start", "--burst", timeout=30))
    rejected = os.path.join(spool_dir, "rejected")
    assert sorted(os.listdir(rejected)) == sorted(
        n + s for n in ("link.json", "folder.json", "fifo.json", "big.json") for s in ("", ".error"))
    assert os.path.islink(os.path.join(rejected, "link.json")), "moved as it is, never followed"
    with open(os.path.join(rejected, "big.json.error")) as fh:
        assert "large" in fh.read()
    assert os.listdir(incoming) == []
    assert cli.json("list") == [], "nothing became a job"
    assert outside.exists()


# ---------------------------------------------------------------- safety, help, version

@pytest.mark.parametrize("where", [".", "pending"])
def test_worker_start_refuses_a_spool_writable_by_others(cli, spool_dir, where):
    ok(cli("enqueue", "-c", "echo should not run", "--id", "unsafe"))
    path = os.path.join(spool_dir, where)
    os.chmod(path, 0o777)
    try:
        for args in (["worker", "start", "--burst"], ["worker", "start", "--detach"]):
            r = cli(*args, timeout=30)
            msg = assert_refused(r, "writable by group or others")
            assert os.path.normpath(path) in msg
            assert cli.live_workers() == []
    finally:
        os.chmod(path, 0o700)
    assert cli.show("unsafe")["state"] == "pending"


def test_spool_option_beats_the_environment_and_is_created_0700(cli, spool_dir, tmp_path):
    other = tmp_path / "other" / "spool"
    ok(cli("--spool", str(other), "enqueue", "-c", "true", "--id", "elsewhere"))
    assert stat.S_IMODE(os.stat(other).st_mode) == 0o700
    for sub in ("incoming", "pending", "processing", "failed", "completed", "dead", "logs", "rejected", "tmp"):
        assert stat.S_IMODE(os.stat(other / sub).st_mode) == 0o700, sub
    assert cli("show", "elsewhere").returncode == 1
    assert ok(cli("--spool", str(other), "show", "elsewhere", "--json"))


@pytest.mark.parametrize("where", ["a-file", "a-file/sub", "/proc/no-such/spool"])
def test_an_unusable_spool_path_is_one_line_error(cli, tmp_path, where):
    (tmp_path / "a-file").write_text("")
    path = where if where.startswith("/") else str(tmp_path / where)
    r = cli("--spool", path, "enqueue", "-c", "true")
    assert r.returncode in (1, 2)
    assert_refused(r, code=r.returncode)
    assert (tmp_path / "a-file").read_text() == ""


def test_default_spool_is_in_home(cli, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = cli_env("unused")
    env.pop("QUEUECTL_SPOOL")
    env["HOME"] = str(home)
    r = subprocess.run([*QUEUECTL, "enqueue", "-c", "true", "--id", "homed"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=30)
    assert r.returncode == 0, r.stderr
    assert job_files(str(home / ".queuectl" / "spool"), "pending")


COMMANDS = [[], ["enqueue"], ["worker"], ["worker", "start"], ["worker", "stop"], ["worker", "run"],
            ["status"], ["list"], ["show"], ["logs"], ["dlq"], ["dlq", "list"], ["dlq", "retry"],
            ["cancel"], ["purge"], ["config"], ["config", "list"], ["config", "get"], ["config", "set"],
            ["config", "unset"], ["fsck"]]


@pytest.mark.parametrize("command", COMMANDS,
                         ids=lambda c: " ".join(c) or "queuectl")
def test_help_for_every_command(cli, command):
    r = ok(cli(*command, "--help"))
    assert r.stdout.startswith("Usage: queuectl " + " ".join(command)), r.stdout[:200]
    assert "--help" in r.stdout


def test_help_mentions_the_options(cli):
    assert {"--file", "--command", "--priority", "--run-at", "--max-retries", "--timeout", "--json"} <= \
        set(re.findall(r"--[a-z-]+", ok(cli("enqueue", "--help")).stdout))
    assert {"--count", "--detach", "--burst"} <= set(re.findall(r"--[a-z-]+", ok(cli("worker", "start", "--help")).stdout))
    assert {"--timeout", "--now", "--no-wait"} <= set(re.findall(r"--[a-z-]+", ok(cli("worker", "stop", "--help")).stdout))


def test_version(cli):
    r = ok(cli("--version"))
    assert queuectl.__version__ in r.stdout
