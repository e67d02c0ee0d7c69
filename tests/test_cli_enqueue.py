"""enqueue's command line (docs/usage.md "enqueue"): bare commands, JSON, `--`, --env and the
captured environment, through click's CliRunner in process; what the job's command then sees,
with real workers."""
import json
import os
import signal

import pytest
from click.testing import CliRunner

from helpers import drop, tree_snapshot, wait_job, wait_until
from queuectl import Spool
from queuectl.cli import cli as cli_group
from queuectl.errors import QueuectlError


class Ran:
    def __init__(self, code, stdout, stderr):
        self.code, self.stdout, self.stderr = code, stdout, stderr


def run(spool_dir, *args, env=None):
    """The CLI in process: exit code as `queuectl` would give it (main() maps QueuectlError)."""
    result = CliRunner().invoke(cli_group, ["--spool", spool_dir, *args], env=env)
    code, stderr = result.exit_code, result.stderr
    if isinstance(result.exception, QueuectlError):  # as main() reports it
        code, stderr = result.exception.exit_code, stderr + f"error: {result.exception}\n"
    elif result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(code, result.stdout, stderr)


def enqueued(spool_dir, *args, env=None):
    """The one record `enqueue ARGS --json` made."""
    r = run(spool_dir, "enqueue", "--json", *args, env=env)
    assert r.code == 0, r.stderr
    [record] = json.loads(r.stdout)
    return record


@pytest.mark.parametrize("args, command", [
    (["echo 'Hello World'"], "echo 'Hello World'"),                       # one word: as it is
    (["make", "-C", "src", "test"], "make -C src test"),                   # several: joined
    (["--", "grep", "-r", "a b", ".", "--count"], "grep -r 'a b' . --count"),  # -- ends ours
    (["du", "-h"], "du -h"),                                               # -h is the command's
    (["ls", "--", "-l"], "ls -- -l"),                                      # the command's own --
    (["git", "checkout", "--", "main.c"], "git checkout -- main.c"),
    (["make", "-C", "src", "--", "--max-retries", "3"], "make -C src -- --max-retries 3"),
    (["--", "[ -f x ] && make"], "[ -f x ] && make"),                      # after --: never JSON
    (["-c", "{ echo a; }"], "{ echo a; }"),
    (["  {\"command\": \"from json\"}"], "from json"),                    # { after blanks: JSON
])
def test_bare_words_become_the_command(spool_dir, args, command):
    assert enqueued(spool_dir, *args)["command"] == command


def test_options_after_a_command_of_one_argument_are_queuectls(spool_dir):
    rec = enqueued(spool_dir, "sleep 5", "--max-retries", "3", "--priority", "2", "--id", "s5")
    assert (rec["command"], rec["max_retries"], rec["priority"], rec["id"]) == ("sleep 5", 3, 2, "s5")
    rec = enqueued(spool_dir, "--run-at", "+1h", "make", "-C", "src", "test")
    assert rec["command"] == "make -C src test" and rec["run_at"] is not None


@pytest.mark.parametrize("args", [
    ["gh", "pr", "list", "--json", "title"],      # would be queuectl's --json: the command changed
    ["curl", "--timeout", "5", "http://x"],
    ["helm", "upgrade", "x", "chart", "--wait"],
    ["make", "-C", "src", "--run-at", "+1h", "test"],
    ["sleep", "5", "--max-retries", "3"],
])
def test_one_of_queuectls_options_among_the_words_of_a_command_is_refused(spool_dir, args):
    """It may be the command's own option: exit 2, saying to put the command after --."""
    Spool(spool_dir)
    before = tree_snapshot(spool_dir)
    r = run(spool_dir, "enqueue", *args)
    assert r.code == 2 and "comes after the words of the command" in r.stderr and "--" in r.stderr
    assert tree_snapshot(spool_dir) == before
    assert enqueued(spool_dir, "--", *args)["command"] == " ".join(args), "after --, it is the command's"


@pytest.mark.parametrize("args, says", [
    (["--bogus", "make"], "put them after --"),
    (["-x"], "put them after --"),
    (["{\"command\": \"x\""], "invalid JSON"),                  # broken JSON is never a command
    (["[ -f x ] && make"], "use -c, or put it after --"),
    (["{\"command\": \"x\"}", "more"], "a JSON job is one argument"),
    (["{\"command\": \"x\"}", "--bogus"], "no such option: --bogus"),
    (["-c", "ls", "ls", "-l"], "give the command once"),
    (["--file", "jobs.jsonl", "make"], "not two of them"),
    (["--env", "NOEQUALS", "true"], "'NOEQUALS' is not KEY=VALUE"),
    (["--env", "=x", "true"], "invalid variable name"),
    (["--env", "A\x00B=x", "true"], "invalid variable name"),
    (["--env", "A=x\x00y", "true"], "NUL"),
    ([], "command: is required"),
])
def test_bad_input_is_exit_2_in_one_line_and_changes_nothing(spool_dir, args, says):
    Spool(spool_dir)
    before = tree_snapshot(spool_dir)
    r = run(spool_dir, "enqueue", *args)
    assert r.code == 2 and says in r.stderr, r.stderr
    assert len([line for line in r.stderr.splitlines() if line.startswith(("Error", "error"))]) == 1
    assert "Traceback" not in r.stderr
    assert tree_snapshot(spool_dir) == before


def test_help_says_how_to_pass_options_and_what_max_retries_counts(spool_dir):
    r = run(spool_dir, "enqueue", "--help")
    assert r.code == 0
    text = " ".join(r.stdout.split())
    assert "every word after -- does" in text and "queuectl enqueue -- grep" in text
    assert "3 means up to 4 runs" in text and "retries after the first attempt" in text


def test_the_callers_environment_is_captured_with_env_on_top(spool_dir):
    rec = enqueued(spool_dir, "--env", "LEVEL=debug", "--env", "EQ=a=b", "env",
                   env={"MY_VENV": "/opt/venv", "LEVEL": "info"})
    assert rec["captured_env"]["MY_VENV"] == "/opt/venv" and rec["captured_env"]["LEVEL"] == "info"
    assert rec["env"] == {"LEVEL": "debug", "EQ": "a=b"}
    rec = enqueued(spool_dir, "--no-capture-env", "--env", "A=1", "env", env={"MY_VENV": "/opt/venv"})
    assert rec["captured_env"] is None and rec["env"] == {"A": "1"}
    rec = enqueued(spool_dir, '{"command": "env", "env": {"A": "json", "B": "json"}}', "--env", "B=cli")
    assert rec["env"] == {"A": "json", "B": "cli"}


def test_the_api_and_dropped_files_capture_nothing(spool):
    assert spool.enqueue("true")["captured_env"] is None


def test_show_counts_the_captured_variables_and_show_json_has_them(spool_dir):
    rec = enqueued(spool_dir, "--id", "e", "true", env={"SECRET_TOKEN": "hunter2"})
    shown = run(spool_dir, "show", "e")
    assert "captured_env:" in shown.stdout and f"{len(rec['captured_env'])} variables" in shown.stdout
    assert "hunter2" not in shown.stdout
    assert json.loads(run(spool_dir, "show", "e", "--json").stdout)["captured_env"]["SECRET_TOKEN"] == "hunter2"
    mode = os.stat(os.path.join(spool_dir, "pending", os.listdir(os.path.join(spool_dir, "pending"))[0])).st_mode
    assert mode & 0o077 == 0, "a job file holding an environment is the user's alone"


# ---------------------------------------------------------------- with real workers

@pytest.mark.process
def test_a_job_runs_with_the_environment_of_the_shell_that_queued_it(cli, spool_dir, tmp_path):
    """The worker runs with another environment; each job sees its own rule."""
    show = "echo MY_VENV=${MY_VENV-unset} WORKER_ONLY=${WORKER_ONLY-unset} LEVEL=${LEVEL-unset} ID=$QUEUECTL_JOB_ID"
    shell = {"MY_VENV": "/opt/venv", "LEVEL": "shell"}
    assert cli("enqueue", "--id", "captured", show, env=shell).returncode == 0
    assert cli("enqueue", "--id", "plus-env", "--env", "LEVEL=cli", show, env=shell).returncode == 0
    assert cli("enqueue", "--id", "worker-env", "--no-capture-env", "--env", "LEVEL=cli", show, env=shell).returncode == 0
    drop(spool_dir, "dropped.json", json.dumps({"id": "dropped", "command": show, "env": {"LEVEL": "drop"}}))
    worker = cli.start_tailed("worker", "start", "-n", "1", env={"WORKER_ONLY": "yes", "MY_VENV": "/worker/venv"})
    for job_id in ("captured", "plus-env", "worker-env", "dropped"):
        wait_job(spool_dir, job_id, ("completed",), timeout=15)
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=30) == 0
    lines = {job_id: cli.log(job_id).strip().splitlines()[-1] for job_id in ("captured", "plus-env", "worker-env", "dropped")}
    assert lines == {
        "captured": "MY_VENV=/opt/venv WORKER_ONLY=unset LEVEL=shell ID=captured",
        "plus-env": "MY_VENV=/opt/venv WORKER_ONLY=unset LEVEL=cli ID=plus-env",
        "worker-env": "MY_VENV=/worker/venv WORKER_ONLY=yes LEVEL=cli ID=worker-env",
        "dropped": "MY_VENV=/worker/venv WORKER_ONLY=yes LEVEL=drop ID=dropped",
    }
    wait_until(lambda: not cli.live_workers(), timeout=10, what="the worker to unregister")
