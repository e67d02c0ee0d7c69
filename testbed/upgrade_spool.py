"""Make a spool with the queuectl of this checkout, with a job in every state folder, for the
upgrade test (tests/test_upgrade.py): a later version must run it as it is.

    .venv/bin/python testbed/upgrade_spool.py tests/data/spool-0.1.0     # as root

Run once per on-disk protocol change, with the version that wrote the spools to upgrade
from. Needs root: the workers run under the host name "oldhost" (`unshare --uts`), so the
spool's names are the same whoever makes it. Every command is the real CLI.

What it leaves (ids):
    completed/  done-1                 ran "echo done one"
    dead/       dead-1                 exit 3, no retries
    failed/     retry-1                exit 4 once; its next try in 31 years (backoff-base 10^9)
    processing/ long-1                 its worker and command killed (kill -9) mid-run
    pending/    urgent-1, solo-1 (queue solo, limit 1), held-1 (queue held, paused),
                later-1 (run_at in 2099)
    blocked/    after-1                after urgent-1
    incoming/   dropped-1.json         a dropped file not taken in yet
    and a schedule "nightly", config.json, queues/, journal/, logs/, ids/, workers/.
"""
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "oldhost"


def main(argv):
    if len(argv) != 1 or os.path.exists(argv[0]):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    spool = os.path.abspath(argv[0])
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("QUEUECTL_SPOOL", None)

    def argv_of(*args):
        return ["unshare", "--uts", "sh", "-c", f'hostname {HOST} && exec "$@"', "sh",
                sys.executable, "-m", "queuectl", "--spool", spool, *args]

    def q(*args):  # from /, so that the jobs' cwd exists wherever the spool is used
        subprocess.run(argv_of(*args), env=env, check=True, timeout=120, stdout=subprocess.DEVNULL, cwd="/")

    def add(job_id, command, *options):
        q("enqueue", "--no-capture-env", "--id", job_id, *options, "--", command)

    # retries 10^9 s (31 years) away: no retry comes due while the test runs, whenever it runs
    q("config", "set", "backoff-base", "1000000000")
    q("config", "set", "backoff-max", "1000000000")
    q("queue", "set", "solo", "--limit", "1")
    q("queue", "set", "held")
    q("pause", "--queue", "held")
    q("schedule", "add", "nightly", "0 3 * * *", "-c", "echo nightly")
    add("done-1", "echo done one")
    add("dead-1", "echo failing; exit 3", "--max-retries", "0")
    add("retry-1", "exit 4", "--max-retries", "2")
    q("worker", "run", "--burst")
    # a worker killed with its command: its job stays in processing/, as after a crash
    add("long-1", "echo started; sleep 600")
    worker = subprocess.Popen(argv_of("worker", "run"), env=env, start_new_session=True, cwd="/",
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the worker's job note ("PGID ID") names the command's process group once it runs
    note = os.path.join(spool, "workers", f"{HOST}_{worker.pid}.job")
    deadline = time.monotonic() + 30
    while _read(note).split()[1:2] != [b"long-1"] \
            or b"started" not in _read(os.path.join(spool, "logs", "long-1.log")):
        if time.monotonic() > deadline:
            worker.kill()
            raise SystemExit("long-1 did not start within 30 s")
        time.sleep(0.1)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)
    os.killpg(int(_read(note).split()[0]), signal.SIGKILL)
    add("urgent-1", "echo urgent", "--priority", "5")
    add("solo-1", "echo solo", "--queue", "solo")
    add("held-1", "echo held", "--queue", "held")
    add("later-1", "echo later", "--run-at", "2099-01-01T00:00:00Z")
    add("after-1", "echo after", "--after", "urgent-1")
    staged = os.path.join(spool, "tmp", ".dropped-1.json")
    with open(staged, "w") as fh:
        json.dump({"id": "dropped-1", "command": "echo dropped"}, fh)
    os.rename(staged, os.path.join(spool, "incoming", "dropped-1.json"))
    print(f"made {spool}")
    return 0


def _read(path):
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return b""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
