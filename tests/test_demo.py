"""The README's first command runs spool_example/demo.sh: it must keep working, end to end."""
import os
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = pytest.mark.process


def test_the_demo_runs_and_shows_what_it_promises(tmp_path):
    here = tmp_path / "spool_example"
    shutil.copytree(os.path.join(ROOT, "spool_example"), here)
    bindir = os.path.dirname(shutil.which("queuectl") or sys.executable)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", PYTHONPATH=ROOT)
    env.pop("QUEUECTL_SPOOL", None)
    try:
        done = subprocess.run(["bash", str(here / "demo.sh")], capture_output=True, text=True, timeout=120, env=env)
    finally:
        subprocess.run([sys.executable, "-m", "queuectl", "--spool", str(here / "spool"), "worker", "stop",
                        "--now", "--timeout", "20"], capture_output=True, timeout=60, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    for line in ("job report released: the jobs it waited for completed",
                 "job flaky dead (exit code 3) after 3 attempt(s)",
                 "job too-slow dead (timed out after 1s)",
                 "every-minute: next at "):
        assert line in out, line
    assert "dependency flaky dead" in out and "never runs" in out
    assert "\nhello from the shell that queued it\n" in out, "the bare command saw the caller's environment"
    for line in ("greet completed", "flaky dead", "too-slow dead", "report completed"):
        assert f"\n{line}\n" in out, f"the on-finish hook's {line!r}"
