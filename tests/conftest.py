"""Fixtures and hooks of the test suite; the helper functions and classes are in helpers.py.

Two loops:
    pytest -m "not process"   the fast loop: the core in process, the CLI's parsing via CliRunner
    pytest -m process         the real-process loop: the CLI in subprocesses, workers, jobs,
                              signals, crashes, Chromium

A test is marked `process` automatically when it uses a fixture of PROCESS_FIXTURES (the `cli`
fixture); a module or test that starts processes another way (subprocess, run_cli,
multiprocessing, a worker or runner.run in process: they run jobs) says so itself with
`pytestmark = pytest.mark.process` or `@pytest.mark.process`.

Every test using `spool_dir` (directly, or through `spool`, `cli`, ...) fails if a process of
its spool outlives it: see no_leaked_processes.
"""
import os
import signal

import pytest

from helpers import Cli, leaked_processes, pids
from queuectl import Spool

PROCESS_FIXTURES = {"cli"}  # fixtures that start real processes: their tests are `process`
LEAK_GRACE = 2.0  # seconds a test's processes get to exit after its teardown
MARKERS = {  # as in setup.cfg [tool:pytest] markers; registered here if that file lacks one
    "slow": "long end-to-end tests (CI runs them too)",
    "process": "starts real processes (the CLI in a subprocess, workers, jobs, signals, Chromium); "
               "-m 'not process' is the fast in-process loop",
}


def pytest_configure(config):
    known = {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}
    for name, text in MARKERS.items():
        if name not in known:
            config.addinivalue_line("markers", f"{name}: {text}")


@pytest.hookimpl(tryfirst=True)  # before -m selects on the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.process)


@pytest.fixture
def spool_dir(tmp_path):
    """A path for this test's spool (not created): tmp_path/spool."""
    path = tmp_path / "spool"
    return str(path)


@pytest.fixture
def spool(spool_dir):
    """The in-process API on a fresh spool at spool_dir."""
    return Spool(spool_dir)


@pytest.fixture
def cli(spool_dir):
    """The real CLI on spool_dir (helpers.Cli); kills what it started at teardown."""
    runner = Cli(spool_dir)
    yield runner
    runner.cleanup()


@pytest.fixture(autouse=True)
def no_leaked_processes(request):
    """Fail a test that leaves a live process of its spool behind (a worker, a job, a grandchild
    of a job): after the test's own teardown (the `cli` fixture's cleanup included), any process
    that has QUEUECTL_SPOOL=<spool_dir> in its environment or the spool's path on its command
    line, and is still alive (not a zombie) after up to LEAK_GRACE s, is killed (SIGKILL) and
    named in an error at teardown. Only for tests that use spool_dir: no temporary folder is
    made for the others."""
    if "spool_dir" not in request.fixturenames:
        yield
        return
    before = pids()  # a process of this test's spool is created during the test
    # requested here, so that spool_dir outlives this fixture: torn down after the check below
    spool_dir = request.getfixturevalue("spool_dir")
    yield
    leaked = leaked_processes(spool_dir, among=pids() - before, grace=LEAK_GRACE)
    if leaked:
        for pid in leaked:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(f"the test left {len(leaked)} process(es) of its spool running (now killed): "
                    + "; ".join(f"pid {pid}: {cmd}" for pid, cmd in sorted(leaked.items())), pytrace=False)
