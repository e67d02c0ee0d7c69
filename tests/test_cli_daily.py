"""Daily use: logs --follow across attempts, colours on a terminal only, shell completion."""
import os
import pty
import select
import subprocess
import time

import pytest

from helpers import QUEUECTL, ROOT, cli_env, wait_job
from queuectl import render

# ---------------------------------------------------------------- logs --follow


def test_logs_follow_streams_every_attempt_until_final(cli, spool_dir, tmp_path):
    """Like tail -f: waits for the log to exist, shows attempt 1's output while the job waits to
    retry, then attempt 2's, and exits by itself once the job is completed."""
    marker = tmp_path / "second-time"
    assert cli("config", "set", "backoff-base", "1").returncode == 0
    # $((...)) so that the output differs from the command echoed in the attempt header
    command = f"if [ -e {marker} ]; then echo two-$((20+2)); else touch {marker}; echo one-$((10+1)); exit 1; fi"
    assert cli("enqueue", "--id", "flaky", "-c", command, "--max-retries", "2").returncode == 0
    follower = cli.start_tailed("logs", "flaky", "--follow")
    time.sleep(0.3)  # it is following a log that does not exist yet
    assert follower.poll() is None and follower.tail.text() == ""
    cli.start("worker", "start")
    follower.tail.wait_for("one-11", timeout=15)
    follower.tail.wait_for("two-22", timeout=15)
    assert follower.wait(timeout=15) == 0, "follow ends once the job is completed"
    wait_job(spool_dir, "flaky", "completed")
    out = follower.tail.text()
    assert out.count("=== queuectl attempt") == 2
    assert out.index("attempt 1/3") < out.index("one-11") < out.index("attempt 2/3") < out.index("two-22")
    assert cli("logs", "flaky").stdout == out, "what was followed is the whole log, once"


def test_logs_follow_of_a_final_job_prints_and_exits(cli, spool_dir):
    assert cli("enqueue", "--id", "done", "-c", "echo finished").returncode == 0
    assert cli("worker", "start", "--burst").returncode == 0
    result = cli("logs", "done", "--follow", timeout=15)
    assert result.returncode == 0 and "finished" in result.stdout


# ---------------------------------------------------------------- colours

def test_colour_line_by_event_word():
    assert render.colour_line("13:11:19 vm:1 job a completed in 0.01s") == "\x1b[32m13:11:19 vm:1 job a completed in 0.01s\x1b[0m"
    assert render.colour_line("13:11:19 vm:1 job a failed (exit code 3); retry at x").startswith("\x1b[33m")
    assert render.colour_line("13:11:19 vm:1 job a dead (exit code 3) after 1 attempt(s)").startswith("\x1b[31m")
    assert render.colour_line("13:10:10 supervisor: job a taken back: worker lost -> dead").startswith("\x1b[35m")
    started = "13:11:19 vm:1 job a started (attempt 1/1): echo 'job b failed'"
    assert render.colour_line(started) == started, "words inside the command do not count"
    assert render.colour_line("13:11:18 supervisor vm:3 started 2 worker(s)") == "13:11:18 supervisor vm:3 started 2 worker(s)"


class FakeStream:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


def test_colour_only_on_a_terminal_without_no_color():
    assert render.use_colour(FakeStream(True), {})
    assert not render.use_colour(FakeStream(True), {"NO_COLOR": "1"})
    assert not render.use_colour(FakeStream(False), {})
    assert render.use_colour(FakeStream(True), {"NO_COLOR": ""}), "NO_COLOR counts only when not empty"


def run_on_pty(args, env, timeout=30):
    """Run the CLI with stdout and stderr on a pseudo-terminal; returns everything it printed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*QUEUECTL, *args], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=env, cwd=ROOT, start_new_session=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the pty
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=max(1, deadline - time.monotonic())) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(5)
        os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


def test_worker_start_colours_events_on_a_terminal_only(cli, spool_dir):
    for job in ('{"id":"good","command":"true"}', '{"id":"bad","command":"exit 4","max_retries":0}'):
        assert cli("enqueue", job).returncode == 0
    out = run_on_pty(["worker", "start", "--burst"], cli_env(spool_dir))
    assert "\x1b[32m" in out and "job good completed" in out
    assert "\x1b[31m" in out and "job bad dead" in out
    started = [line for line in out.splitlines() if "job good started" in line]
    assert started and "\x1b[" not in started[0]

    for job in ('{"id":"good2","command":"true"}', '{"id":"bad2","command":"exit 4","max_retries":0}'):
        assert cli("enqueue", job).returncode == 0
    plain = run_on_pty(["worker", "start", "--burst"], cli_env(spool_dir, NO_COLOR="1"))
    assert "job good2 completed" in plain and "job bad2 dead" in plain and "\x1b[" not in plain

    for job in ('{"id":"good3","command":"true"}',):
        assert cli("enqueue", job).returncode == 0
    piped = cli("worker", "start", "--burst")
    assert "job good3 completed" in piped.stdout and "\x1b[" not in piped.stdout


# ---------------------------------------------------------------- shell completion

def complete(spool_dir, words, cword):
    env = cli_env(spool_dir, _QUEUECTL_COMPLETE="bash_complete", COMP_WORDS=words, COMP_CWORD=str(cword))
    result = subprocess.run(QUEUECTL, env=env, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if "," in line]


def test_completion_of_commands_states_and_ids(cli, spool_dir):
    assert complete(spool_dir, "queuectl st", 1) == ["status"]
    assert set(complete(spool_dir, "queuectl d", 1)) == {"dashboard", "dlq", "doctor"}
    states = ["blocked", "pending", "processing", "failed", "completed", "dead"]
    assert complete(spool_dir, "queuectl list --state ", 3) == states
    assert not os.path.exists(spool_dir), "completion does not create the spool"
    assert cli("config", "set", "backoff-base", "600").returncode == 0
    for job in ('{"id":"alpha","command":"true"}', '{"id":"beta","command":"exit 1","max_retries":0}',
                '{"id":"gamma","command":"exit 1","max_retries":2}', '{"id":"alpine","command":"true","run_at":"+1h"}',
                '{"id":"a_b.c","command":"true","priority":3,"run_at":"+1h"}'):
        assert cli("enqueue", job).returncode == 0
    assert cli("worker", "start", "--burst").returncode == 0
    wait_job(spool_dir, "gamma", "failed")
    assert complete(spool_dir, "queuectl show ", 2) == ["a_b.c", "alpha", "alpine", "beta", "gamma"]
    assert complete(spool_dir, "queuectl logs al", 2) == ["alpha", "alpine"]
    assert complete(spool_dir, "queuectl dlq retry ", 3) == ["beta"]
    assert complete(spool_dir, "queuectl cancel ", 2) == ["a_b.c", "alpine", "gamma"]
    assert complete(spool_dir, f"queuectl --spool {spool_dir} show a_", 4) == ["a_b.c"]
    assert complete(spool_dir, "queuectl show zzz", 2) == []
    assert complete(spool_dir, "queuectl enqueue -c true --after al", 5) == ["alpha", "alpine"]


@pytest.mark.process
def test_bash_completion_script_is_generated(tmp_path):
    env = cli_env(str(tmp_path / "spool"), _QUEUECTL_COMPLETE="bash_source")
    result = subprocess.run(QUEUECTL, env=env, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 0 and "_queuectl_completion" in result.stdout and "complete " in result.stdout
