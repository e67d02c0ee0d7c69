"""The leak check of conftest.py (the autouse fixture no_leaked_processes): a live process of a
test's spool that outlives the test fails the test, and is killed.

helpers.leaked_processes finds them; the last test runs a small pytest session with the real
conftest.py and helpers.py to see the fixture fail a leaking test (after the `cli` fixture's
cleanup, and without a temporary folder for the tests that use no spool).
"""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from helpers import ROOT, command_line, leaked_processes, pid_gone, pids, process_state, wait_until

pytestmark = pytest.mark.process

HERE = os.path.dirname(os.path.abspath(__file__))


def start(argv, spool_dir):
    """A process with QUEUECTL_SPOOL=spool_dir in its environment, as a job of that spool has."""
    return subprocess.Popen(argv, env=dict(os.environ, QUEUECTL_SPOOL=spool_dir), start_new_session=True)


def stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def test_a_process_with_the_spool_in_its_environment_is_found(tmp_path):
    spool_dir = str(tmp_path / "spool")
    before = pids()
    proc = start(["sleep", "60"], spool_dir)
    try:
        leaked = leaked_processes(spool_dir, among=pids() - before, grace=0.2)
        assert leaked == {proc.pid: "sleep 60"}
        assert leaked_processes(spool_dir, grace=0.2) == leaked  # among every process too
    finally:
        stop(proc)
    assert leaked_processes(spool_dir, grace=0) == {}


def test_a_process_with_the_spool_on_its_command_line_is_found(tmp_path):
    spool_dir = str(tmp_path / "spool")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--spool", spool_dir],
                            start_new_session=True)
    try:
        wait_until(lambda: spool_dir in command_line(proc.pid), 10, what="the child's exec")
        leaked = leaked_processes(spool_dir, grace=0.2)
        assert list(leaked) == [proc.pid] and spool_dir in leaked[proc.pid]
    finally:
        stop(proc)


def test_zombies_other_spools_and_processes_that_exit_in_time_are_no_leak(tmp_path):
    spool_dir = str(tmp_path / "spool")
    neighbour = start(["sleep", "60"], spool_dir + "2")  # another test's spool, named alike
    zombie = start(["true"], spool_dir)  # exits; never waited for, so it stays a zombie
    exiting = start(["sleep", "0.5"], spool_dir)  # still running, but on its way out
    try:
        wait_until(lambda: process_state(zombie.pid) == "Z", 5, what="the zombie")
        assert process_state(exiting.pid) not in (None, "Z")
        assert leaked_processes(spool_dir, grace=5) == {}  # waits for `exiting` only
        assert pid_gone(exiting.pid)
    finally:
        for proc in (neighbour, zombie, exiting):
            stop(proc)


INNER_TESTS = '''
import os
import subprocess


def test_leaks_a_sleep(spool_dir, tmp_path):
    proc = subprocess.Popen(["sleep", "60"], env=dict(os.environ, QUEUECTL_SPOOL=spool_dir),
                            start_new_session=True)
    with open(os.environ["LEAKED_PID_FILE"], "w") as fh:
        fh.write(str(proc.pid))


def test_a_worker_the_cli_fixture_stops_is_no_leak(cli):
    cli.start("worker", "run")  # alive until the `cli` fixture's cleanup kills it


def test_without_a_spool():
    pass
'''


def test_the_fixture_fails_a_leaking_test_and_kills_what_it_left(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    shutil.copy(os.path.join(HERE, "conftest.py"), inner / "conftest.py")
    shutil.copy(os.path.join(HERE, "helpers.py"), inner / "helpers.py")
    (inner / "pytest.ini").write_text("[pytest]\n")
    (inner / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    pid_file = tmp_path / "leaked.pid"
    basetemp = tmp_path / "basetemp"
    env = dict(os.environ, LEAKED_PID_FILE=str(pid_file),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rE",
                             f"--basetemp={basetemp}", "test_inner.py"],
                            cwd=inner, env=env, capture_output=True, text=True, timeout=120)
    out = result.stdout + result.stderr
    leaked = int(pid_file.read_text())
    try:
        assert result.returncode == 1, out
        assert "3 passed, 1 error" in out, out
        assert "ERROR at teardown of test_leaks_a_sleep" in out, out
        assert f"left 1 process(es) of its spool running (now killed): pid {leaked}: sleep 60" in out, out
        wait_until(lambda: pid_gone(leaked), 5, what="the leaked sleep killed by the fixture")
        made = os.listdir(basetemp)
        assert any(d.startswith("test_leaks_a_sleep") for d in made), made
        assert not any(d.startswith("test_without_a_spool") for d in made), made
    finally:
        if not pid_gone(leaked):
            os.kill(leaked, signal.SIGKILL)
