"""Helpers shared by the adversarial tests (test_fuzz.py, test_faults.py, test_security.py)."""
import hashlib
import os
import subprocess
import sys

from conftest import ROOT, cli_env

STATE_FOLDERS = ("pending", "processing", "failed", "completed", "dead")


def outside_snapshot(parent, spool_name="spool"):
    """Everything under `parent` except the spool's own subtree (symlinks not followed),
    with mtimes: {relative path: (kind, digest-or-target, mtime_ns)}."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(parent):
        rel_dir = os.path.relpath(dirpath, parent)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != spool_name]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(path)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path), st.st_mtime_ns)
            elif os.path.isdir(path):
                out[rel] = ("dir", "", 0)
            elif os.path.isfile(path):
                with open(path, "rb") as fh:
                    out[rel] = ("file", hashlib.sha1(fh.read()).hexdigest(), st.st_mtime_ns)
            else:
                out[rel] = ("special", "", st.st_mtime_ns)
    return out


def run_cli(spool_dir, args, timeout=60, env=None, input=None):
    """`python -m queuectl ARGS` against spool_dir; args may be str or bytes. Returns
    (returncode, stdout text, stderr text), decoded leniently."""
    proc = subprocess.run([sys.executable, "-m", "queuectl", *args], input=input,
                          capture_output=True, timeout=timeout, cwd=ROOT,
                          env=cli_env(spool_dir, **(env or {})))
    return (proc.returncode, proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"))


def job_places(spool_dir, job_id):
    """Every (state folder, file name) that holds job `job_id` (by name)."""
    from queuectl import names
    out = []
    for state in STATE_FOLDERS:
        folder = os.path.join(spool_dir, state)
        for name in os.listdir(folder):
            if names.id_of(state, name) == job_id:
                out.append((state, name))
    return out


def is_one_line_error(stderr):
    text = stderr.strip()
    return bool(text) and "\n" not in text and "Traceback" not in stderr


def report_line(config, line):
    """Print a line on the terminal even under output capture (for measured numbers)."""
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if reporter is None:
        return
    if capman is not None:
        with capman.global_and_fixture_disabled():
            reporter.write_line(line)
    else:
        reporter.write_line(line)
