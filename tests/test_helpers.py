"""The test helpers that the other suites lean on for their bounds."""
import subprocess
import time

import pytest

from helpers import pid_gone, run_bounded, wait_until

pytestmark = pytest.mark.process


def test_run_bounded_returns_what_the_command_printed():
    result = run_bounded(["sh", "-c", "cat; echo err >&2; exit 3"], 10, input="in\n")
    assert (result.returncode, result.stdout, result.stderr) == (3, "in\n", "err\n")


def test_run_bounded_kills_a_command_past_its_bound_with_its_children():
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as caught:
        run_bounded(["sh", "-c", "sleep 60 & echo $!; wait"], 0.5)
    assert time.monotonic() - started < 5
    child = int(caught.value.output)  # what it printed before the bound
    wait_until(lambda: pid_gone(child), 5, what="the killed child to be gone")  # SIGKILL lands a moment later
