"""One attempt of one command (docs/contract.md "Running a job"): queuectl.runner.run, in process
(it starts the command's shell: these tests are in the `process` loop)."""
import os
import re
import time

import pytest

from helpers import pid_gone, wait_until
from queuectl import runner
from queuectl.job import new_record, validate_input

pytestmark = pytest.mark.process

WORKER = "testhost:4242"


def make_record(command, attempts=1, **fields):
    rec = new_record(validate_input(dict(fields, command=command), {"max_retries": 3}), time.time())
    rec["attempts"] = attempts
    return rec


@pytest.fixture
def log_path(tmp_path):
    return str(tmp_path / "job.log")


@pytest.fixture
def spool_path(tmp_path):
    path = tmp_path / "spool"
    path.mkdir()
    return str(path)


def read(path):
    with open(path, "rb") as fh:
        return fh.read().decode("utf-8", "replace")


def run(command, log_path, spool_path, **kw):
    fields = {k: kw.pop(k) for k in ("env", "cwd", "id", "max_retries") if k in kw}
    attempts = kw.pop("attempts", 1)
    record = make_record(command, attempts=attempts, **fields)
    return record, runner.run(record, log_path, spool_path, WORKER, **kw)


# ---------------------------------------------------------------- outcomes

def test_exit_zero(log_path, spool_path):
    rec, out = run("echo hello", log_path, spool_path)
    assert out.ok and out.exit_code == 0 and out.error is None and out.interrupted is None
    assert out.duration >= 0
    assert "hello\n" in read(log_path)


def test_non_zero_exit(log_path, spool_path):
    _, out = run("echo failing >&2; exit 3", log_path, spool_path)
    assert not out.ok
    assert out.exit_code == 3 and out.error == "exit code 3"
    assert "failing" in read(log_path)  # stderr goes to the log too


def test_missing_command_is_127(log_path, spool_path):
    _, out = run("no-such-command-queuectl-test", log_path, spool_path)
    assert out.exit_code == 127 and out.error == "exit code 127"
    assert "not found" in read(log_path)


def test_killed_by_a_signal(log_path, spool_path):
    _, out = run("kill -KILL $$", log_path, spool_path)
    assert out.exit_code is None
    assert out.error == "killed by signal 9 (SIGKILL)"
    assert "killed by signal 9" in read(log_path)


def test_missing_cwd_is_a_failed_attempt(log_path, spool_path, tmp_path):
    missing = str(tmp_path / "nope")
    _, out = run("true", log_path, spool_path, cwd=missing)
    assert not out.ok and out.exit_code is None
    assert "cannot start" in out.error and missing in out.error
    assert "cannot start" in read(log_path)


# ---------------------------------------------------------------- environment

def test_environment(log_path, spool_path, monkeypatch):
    monkeypatch.setenv("QUEUECTL_TEST_INHERITED", "from-worker")
    monkeypatch.setenv("QUEUECTL_TEST_OVERRIDE", "worker-value")
    cmd = ('printf "id=%s attempt=%s spool=%s my=%s inh=%s ovr=%s\\n" "$QUEUECTL_JOB_ID" '
           '"$QUEUECTL_ATTEMPT" "$QUEUECTL_SPOOL" "$MYVAR" "$QUEUECTL_TEST_INHERITED" '
           '"$QUEUECTL_TEST_OVERRIDE"')
    rec, out = run(cmd, log_path, spool_path, attempts=2, id="env-job",
                   env={"MYVAR": "hello world", "QUEUECTL_TEST_OVERRIDE": "job-value",
                        "QUEUECTL_JOB_ID": "forged"})
    assert out.ok
    line = f"id=env-job attempt=2 spool={spool_path} my=hello world inh=from-worker ovr=job-value\n"
    assert line in read(log_path)


def test_cwd_is_respected(log_path, spool_path, tmp_path):
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    _, out = run("pwd; ls", log_path, spool_path, cwd=str(workdir))
    assert out.ok
    assert f"\n{workdir}\n" in read(log_path)


def test_no_cwd_means_home(log_path, spool_path, monkeypatch, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    _, out = run("pwd", log_path, spool_path)
    assert out.ok
    assert f"\n{home}\n" in read(log_path)


def test_stdin_is_dev_null(log_path, spool_path):
    _, out = run("readlink /proc/self/fd/0; cat; echo after-cat", log_path, spool_path, timeout=20)
    assert out.ok
    text = read(log_path)
    assert "\n/dev/null\n" in text
    assert "after-cat" in text


def test_the_job_runs_in_its_own_process_group(log_path, spool_path):
    _, out = run("echo pid=$$ pgid=$(cut -d' ' -f5 /proc/$$/stat) sid=$(cut -d' ' -f6 /proc/$$/stat)",
                 log_path, spool_path)
    assert out.ok
    m = re.search(r"pid=(\d+) pgid=(\d+) sid=(\d+)", read(log_path))
    pid, pgid, sid = map(int, m.groups())
    assert pgid == pid and sid == pid
    assert pgid != os.getpgrp()


# ---------------------------------------------------------------- log

def test_a_header_line_per_attempt(log_path, spool_path):
    for attempt in (1, 2, 3):
        rec = make_record(f"echo output-{attempt}", attempts=attempt, id="hdr", max_retries=3)
        assert runner.run(rec, log_path, spool_path, WORKER).ok
    lines = read(log_path).splitlines()
    headers = [line for line in lines if line.startswith("=== queuectl attempt")]
    assert len(headers) == 3
    for attempt, header in enumerate(headers, 1):
        assert f"attempt {attempt}/4 of job hdr" in header
        assert WORKER in header
    # each attempt's output follows its own header
    for attempt in (1, 2, 3):
        h = lines.index(headers[attempt - 1])
        assert f"output-{attempt}" in lines[h + 1:h + 4]


def test_log_is_private(log_path, spool_path):
    run("true", log_path, spool_path)
    assert os.stat(log_path).st_mode & 0o077 == 0


def test_a_symlinked_log_is_not_followed(log_path, spool_path, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, log_path)
    try:
        _, out = run("echo overwritten", log_path, spool_path)
    except OSError:
        pass
    else:
        assert not out.ok
    assert victim.read_text() == "precious\n"


def test_log_cap_keeps_the_newest_output(log_path, spool_path):
    # seq 1 300000 prints about 2 MB
    _, out = run("seq 1 300000", log_path, spool_path, log_max_bytes=100_000, timeout=30)
    assert out.ok
    size = os.path.getsize(log_path)
    assert 0 < size <= 100_000
    text = read(log_path)
    assert text.endswith("\n".join(str(i) for i in range(299_000, 300_001)) + "\n")
    m = re.search(r"(\d+) bytes of older output cut", text)
    assert m, text[:300]
    total = len(b"".join(f"{i}\n".encode() for i in range(1, 300_001)))
    cut = int(m.group(1))
    kept_output = len(text.encode()) - len(text.splitlines(keepends=True)[0].encode())
    assert cut >= total - kept_output  # at least the output not kept (plus the header)


def test_no_cap_with_zero(log_path, spool_path):
    _, out = run("seq 1 50000", log_path, spool_path, log_max_bytes=0)
    assert out.ok
    text = read(log_path)
    assert "older output cut" not in text
    assert text.count("\n") >= 50000


def test_log_cap_note_counts_every_cut(log_path, spool_path):
    """1 MB of output, a cut while the job runs (the runner caps every tick), then 1 MB more:
    the note at the top must account for all the output that is gone."""
    cmd = (f"head -c 1000000 /dev/zero | tr '\\0' a; echo; "
           f"i=0; while ! head -c 10 '{log_path}' | grep -q queuectl && [ $i -lt 400 ]; do "
           f"sleep 0.02; i=$((i+1)); done; "
           f"head -c 1000000 /dev/zero | tr '\\0' b; echo")
    _, out = run(cmd, log_path, spool_path, log_max_bytes=100_000, timeout=30)
    assert out.ok
    text = read(log_path)
    assert os.path.getsize(log_path) <= 100_000
    assert text.rstrip("\n").endswith("b" * 1000)
    notes = re.findall(r"(\d+) bytes of older output cut", text)
    assert len(notes) == 1
    kept = len(text.encode()) - len(text.splitlines(keepends=True)[0].encode())
    # every cut counts; output appended while a cut is made may escape the count ("at least")
    # (the attempt's header line was cut too: it counts as log bytes)
    assert 0.95 * (2_000_002 - kept) <= int(notes[0]) <= 2_000_002 - kept + 1000


# ---------------------------------------------------------------- timeouts and interrupts

def test_timeout_kills_the_whole_group_including_a_grandchild(log_path, spool_path, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    started = time.monotonic()
    _, out = run(f"sleep 60 & echo $! > '{pidfile}'; sleep 60", log_path, spool_path, timeout=0.5)
    elapsed = time.monotonic() - started
    assert out.exit_code is None and out.error == "timed out after 0.5s"
    assert out.interrupted is None
    assert 0.5 <= elapsed < 10
    assert "[queuectl: timed out after 0.5s]" in read(log_path)
    pid = int(pidfile.read_text())
    wait_until(lambda: pid_gone(pid), timeout=5, what=f"grandchild {pid} to be gone")


def test_timeout_escalates_to_sigkill(log_path, spool_path, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "KILL_GRACE", 0.3)
    pidfile = tmp_path / "stubborn.pid"
    started = time.monotonic()
    _, out = run(f"trap '' TERM; sleep 60 & echo $! > '{pidfile}'; sleep 60; sleep 60",
                 log_path, spool_path, timeout=0.3)
    assert out.error == "timed out after 0.3s" and out.exit_code is None
    assert time.monotonic() - started < 10
    pid = int(pidfile.read_text())
    wait_until(lambda: pid_gone(pid), timeout=5, what=f"stubborn grandchild {pid} to be gone")


def test_no_timeout_by_default(log_path, spool_path):
    _, out = run("sleep 0.3; echo done", log_path, spool_path, timeout=None)
    assert out.ok and "done" in read(log_path)


@pytest.mark.parametrize("request_, reason", [("cancel", "cancelled"), ("now", "stopped (--now)")])
def test_interrupt_kills_the_attempt(log_path, spool_path, request_, reason):
    calls = []

    def interrupt():
        calls.append(time.monotonic())
        return request_

    started = time.monotonic()
    _, out = run("sleep 60", log_path, spool_path, interrupt=interrupt)
    assert out.interrupted == request_
    assert out.error == reason and out.exit_code is None
    assert calls and time.monotonic() - started < 10
    assert f"[queuectl: {reason}]" in read(log_path)


def test_wakeup_fd_makes_the_interrupt_immediate(log_path, spool_path):
    r, w = os.pipe2(os.O_NONBLOCK)
    state = {"asked": False}

    def interrupt():
        return "cancel" if state["asked"] else None

    import threading

    def ask():
        state["asked"] = True
        os.write(w, b"x")

    timer = threading.Timer(0.1, ask)
    timer.start()
    try:
        started = time.monotonic()
        _, out = run("sleep 60", log_path, spool_path, interrupt=interrupt, wakeup_fds=(r,))
        assert out.interrupted == "cancel"
        assert time.monotonic() - started < runner.TICK + 0.4
    finally:
        timer.cancel()
        os.close(r)
        os.close(w)
