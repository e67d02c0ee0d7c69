"""Shared fixtures: a fresh spool per test, the real CLI in a subprocess, bounded waits."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from queuectl import Spool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Poll `predicate` until it returns a truthy value; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def spool_dir(tmp_path):
    path = tmp_path / "spool"
    return str(path)


@pytest.fixture
def spool(spool_dir):
    return Spool(spool_dir)


def cli_env(spool_dir, **extra):
    env = dict(os.environ)
    env["QUEUECTL_SPOOL"] = spool_dir
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("QUEUECTL_RESCAN", "0.5")
    env.pop("NO_COLOR", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Cli:
    """Runs `python -m queuectl` against one spool; starts background workers and always stops them."""

    def __init__(self, spool_dir):
        self.spool_dir = spool_dir
        self.procs = []

    def __call__(self, *args, input=None, timeout=60, env=None, cwd=None):
        return subprocess.run([sys.executable, "-m", "queuectl", *args], input=input,
                              capture_output=True, text=True, timeout=timeout,
                              env=cli_env(self.spool_dir, **(env or {})), cwd=cwd or ROOT)

    def json(self, *args, **kw):
        result = self(*args, "--json", **kw)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def start(self, *args, env=None):
        """Start a long-running command (e.g. `worker start`) in the background."""
        proc = subprocess.Popen([sys.executable, "-m", "queuectl", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                env=cli_env(self.spool_dir, **(env or {})), cwd=ROOT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def live_workers(self):
        return self.json("status")["workers"]

    def cleanup(self):
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            if proc.stdout:
                proc.stdout.close()
        # workers live in their own process groups: stop any still registered, by pid
        from queuectl import registry
        from queuectl.paths import Layout
        for w in registry.live_workers(Layout(self.spool_dir)):
            try:
                os.killpg(int(w["pid"]), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                try:
                    os.kill(int(w["pid"]), signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def cli(spool_dir):
    runner = Cli(spool_dir)
    yield runner
    runner.cleanup()


def job_files(spool_dir, state):
    return sorted(n for n in os.listdir(os.path.join(spool_dir, state)) if n.endswith(".json"))
