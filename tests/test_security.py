"""docs/contract.md "Safety": unsafe spools are refused, symlinks are never followed, no id or file name
escapes the spool, and job files of another user are never run.

Every command a test enqueues that must NOT run touches a marker file outside the spool;
every symlink points at a victim file outside the spool whose content and mtime are checked.

Nearly every test runs the CLI or a worker: the module is in the `process` loop (the two API
tests with it).
"""
import json
import os
import signal
import subprocess
import time

import pytest

from helpers import QUEUECTL, ROOT, cli_env, job_places, outside_snapshot, run_cli, tree_snapshot, wait_until
from queuectl import Spool, ingest, names, registry
from queuectl.errors import FieldError, InvalidInput
from queuectl.job import new_record, validate_input

pytestmark = pytest.mark.process

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown to another user)")
BAD_IDS = ["../x", "a/b", "/etc/passwd", ".", "..", "../../../tmp/qevil", "x/../../y", ""]


@pytest.fixture
def marker(tmp_path):
    """A path outside the spool that a job touches if it runs."""
    return str(tmp_path / "RAN")


@pytest.fixture
def victim(tmp_path):
    """A file outside the spool, the target of planted symlinks. Returns (path, check())."""
    path = str(tmp_path / "victim.json")
    content = b'{"command": "touch ' + str(tmp_path / "RAN-victim").encode() + b'"}\n'
    with open(path, "wb") as fh:
        fh.write(content)
    os.chmod(path, 0o644)
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = os.stat(path)

    def unchanged():
        st = os.stat(path)
        with open(path, "rb") as fh:
            assert fh.read() == content, "the symlink target was written to"
        assert st.st_mtime_ns == before.st_mtime_ns, "the symlink target's mtime changed"
        assert (st.st_mode, st.st_uid, st.st_size) == (before.st_mode, before.st_uid, before.st_size)
        assert not os.path.exists(str(tmp_path / "RAN-victim")), "the symlink target was run as a job"
        return True
    return path, unchanged


def stop_pid(proc, timeout=15):
    """Stop a process we started, by its pid (its own process group): TERM, then KILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    out = proc.stdout.read().decode("utf-8", "replace") if proc.stdout else ""
    if proc.stdout:
        proc.stdout.close()
    return out


def start_worker(spool_dir, *args):
    return subprocess.Popen([*QUEUECTL, "worker", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=ROOT, env=cli_env(spool_dir, QUEUECTL_RESCAN="0.5"),
                            start_new_session=True)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pending_name_of(spool_dir, job_id):
    return next(n for s, n in job_places(spool_dir, job_id) if s == "pending")


# ---------------------------------------------------------------- unsafe spools are refused

def _root_0777(spool_dir, elsewhere):
    os.chmod(spool_dir, 0o777)
    return spool_dir


def _pending_0777(spool_dir, elsewhere):
    os.chmod(os.path.join(spool_dir, "pending"), 0o777)
    return os.path.join(spool_dir, "pending")


def _logs_group_writable(spool_dir, elsewhere):
    os.chmod(os.path.join(spool_dir, "logs"), 0o770)
    return os.path.join(spool_dir, "logs")


def _tmp_others_writable(spool_dir, elsewhere):
    os.chmod(os.path.join(spool_dir, "tmp"), 0o702)
    return os.path.join(spool_dir, "tmp")


def _failed_symlink(spool_dir, elsewhere):
    path = os.path.join(spool_dir, "failed")
    os.rename(path, elsewhere)
    os.symlink(elsewhere, path)
    return path


def _pending_symlink(spool_dir, elsewhere):
    path = os.path.join(spool_dir, "pending")
    os.rename(path, elsewhere)
    os.symlink(elsewhere, path)
    return path


def _root_owned_by_nobody(spool_dir, elsewhere):
    os.chown(spool_dir, NOBODY, NOBODY)
    return spool_dir


UNSAFE = [_root_0777, _pending_0777, _logs_group_writable, _tmp_others_writable, _failed_symlink,
          _pending_symlink, pytest.param(_root_owned_by_nobody, marks=needs_root)]


@pytest.mark.parametrize("command", [["start", "--burst"], ["run", "--burst"], ["start", "--burst", "--detach"]],
                         ids=" ".join)
@pytest.mark.parametrize("make_unsafe", UNSAFE, ids=lambda f: f.__name__.strip("_"))
def test_worker_refuses_an_unsafe_spool_and_runs_nothing(spool_dir, tmp_path, marker, make_unsafe, command):
    spool = Spool(spool_dir)
    spool.enqueue(f"touch {marker}", id="job1")
    with open(os.path.join(spool_dir, "incoming", "drop.json"), "w") as fh:
        json.dump({"command": f"touch {marker}-dropped"}, fh)
    path = make_unsafe(spool_dir, str(tmp_path / "elsewhere"))
    before = tree_snapshot(spool_dir)
    code, out, err = run_cli(spool_dir, ["worker", *command], timeout=60)
    text = out + err
    assert code == 2, (code, text)
    assert "Traceback" not in text
    assert "unsafe spool" in text and path in text, text
    assert not os.path.exists(marker) and not os.path.exists(marker + "-dropped"), "a job ran"
    assert tree_snapshot(spool_dir) == before, "the refused worker changed the spool"
    assert registry.live_workers(spool.layout) == []


# ---------------------------------------------------------------- symlinks are never followed

def test_symlink_dropped_in_incoming_is_rejected_not_followed(spool_dir, victim):
    path, unchanged = victim
    spool = Spool(spool_dir)
    os.symlink(path, os.path.join(spool_dir, "incoming", "evil.json"))
    spool.enqueue("true", id="real")
    code, out, err = run_cli(spool_dir, ["worker", "start", "--burst"], timeout=60)
    assert code == 0, out + err
    assert unchanged()
    assert os.listdir(os.path.join(spool_dir, "incoming")) == []
    rejected = os.path.join(spool_dir, "rejected", "evil.json")
    assert os.path.islink(rejected) and os.readlink(rejected) == path
    with open(rejected + ".error") as fh:
        assert "symlink" in fh.read()
    assert spool.find("real")[0] == "completed"
    assert len(spool.list()) == 1


def _plant_pending_symlink(spool, victim_path, job_id="evil"):
    """A symlink in pending/ with a perfect job name, pointing at a valid record outside."""
    record = new_record(validate_input({"id": job_id, "command": "touch /nonexistent-never"}), time.time() - 60)
    name = names.pending_name(0, time.time() - 60, time.time_ns(), job_id)
    link = os.path.join(spool.path, "pending", name)
    os.symlink(victim_path, link)
    return link, record


def test_symlink_planted_in_pending_is_not_followed_or_run(spool_dir, victim):
    path, unchanged = victim
    spool = Spool(spool_dir)
    link, _ = _plant_pending_symlink(spool, path)
    spool.enqueue("echo real", id="real")
    proc = start_worker(spool_dir, "run")
    try:
        wait_until(lambda: (spool.find("real") or [None])[0] == "completed", 20,  # one look: it moves meanwhile
                   what="the real job completed next to the planted symlink")
    finally:
        out = stop_pid(proc)
    assert "Traceback" not in out, out
    assert unchanged()
    # the link was not replaced by a file (never written through) nor turned into a job
    assert not os.path.exists(link) or os.path.islink(link)
    assert spool.find("evil") is None or os.path.islink(link)


def test_symlink_in_pending_does_not_hang_a_burst_worker(spool_dir, victim):
    path, unchanged = victim
    spool = Spool(spool_dir)
    _plant_pending_symlink(spool, path)
    proc = start_worker(spool_dir, "run", "--burst")
    try:
        deadline = time.monotonic() + 8
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        exited = proc.poll() is not None
        cpu = cpu_seconds(proc.pid) if not exited else 0.0
    finally:
        stop_pid(proc)
    assert unchanged()
    assert exited, f"`worker run --burst` still running after 8 s ({cpu:.1f} s of CPU used)"


def test_symlink_in_pending_does_not_make_an_idle_worker_spin(spool_dir, victim):
    path, _ = victim
    spool = Spool(spool_dir)
    _plant_pending_symlink(spool, path)
    proc = start_worker(spool_dir, "run")
    try:
        time.sleep(2.0)            # start-up
        assert proc.poll() is None
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(3.0)
        used = cpu_seconds(proc.pid) - c0
        elapsed = time.monotonic() - t0
    finally:
        stop_pid(proc)
    assert used < 0.3 * elapsed, f"idle worker used {used:.2f} s of CPU in {elapsed:.2f} s"


def test_symlinked_job_log_is_never_written_through(spool_dir, victim):
    path, unchanged = victim
    spool = Spool(spool_dir)
    spool.enqueue("echo pwned; echo more", id="j1", max_retries=1)
    os.symlink(path, os.path.join(spool_dir, "logs", "j1.log"))
    spool.enqueue("echo fine", id="j2", priority=50)
    code, out, err = run_cli(spool_dir, ["worker", "start", "--burst"], timeout=90, env={"QUEUECTL_RESCAN": "0.5"})
    assert "Traceback" not in out + err
    assert unchanged()
    # the planted link was moved aside (explained, not followed), and the job got a real log
    assert not os.path.islink(os.path.join(spool_dir, "logs", "j1.log"))
    assert os.path.islink(os.path.join(spool_dir, "rejected", "j1.log"))
    assert os.path.exists(os.path.join(spool_dir, "rejected", "j1.log.error"))
    places = job_places(spool_dir, "j1")
    assert len(places) == 1 and places[0][0] != "processing", places
    assert spool.find("j2")[0] == "completed"


def test_symlinked_job_log_fails_the_attempt_without_killing_the_worker(spool_dir, victim):
    path, unchanged = victim
    spool = Spool(spool_dir)
    spool.enqueue("echo pwned", id="j1", max_retries=0)
    os.symlink(path, os.path.join(spool_dir, "logs", "j1.log"))
    code, out, err = run_cli(spool_dir, ["worker", "run", "--burst"], timeout=60)
    assert unchanged()
    assert code == 0, out + err
    state, _ = job_places(spool_dir, "j1")[0]
    assert state == "completed"  # the planted link is set aside, the job runs with a real log
    assert os.path.islink(os.path.join(spool_dir, "rejected", "j1.log"))
    assert "pwned" in open(os.path.join(spool_dir, "logs", "j1.log")).read()


def test_symlinks_in_tmp_are_never_written_through(spool_dir, victim, monkeypatch):
    path, unchanged = victim
    spool = Spool(spool_dir)
    tmp = os.path.join(spool_dir, "tmp")
    # the two predictable tmp/ names: a config write and a worker registration of this process
    os.symlink(path, os.path.join(tmp, f".config.{os.getpid()}.tmp"))
    host = names.hostname()
    os.symlink(path, os.path.join(tmp, f"reg-{host}-{os.getpid()}.json"))
    spool.set_config("max-retries", 1)
    assert spool.config()["max-retries"] == 1
    fd = registry.register(spool.layout, host, os.getpid())
    registry.unregister(spool.layout, host, os.getpid(), fd)
    assert unchanged()
    # names of every kind of leftover that start-up recovery and fsck --repair handle, old
    planted = ["mv-j-1-abcdef.json", "ingest-20260101-000000-000000-abcde-a.json", "enq-1-abcdef01-0.json",
               "enq-1-abcdef01.lock", "enq-1-abcdef01-id-abcdef", "something-else", ".config.1.tmp",
               "reg-otherhost-1.json"]
    for name in planted:
        link = os.path.join(tmp, name)
        if not os.path.lexists(link):
            os.symlink(path, link)
        os.utime(link, ns=(10**18, 10**18), follow_symlinks=False)
    spool.enqueue("echo ok", id="real")
    code, out, err = run_cli(spool_dir, ["worker", "start", "--burst"], timeout=60)
    assert code == 0 and "Traceback" not in out + err, out + err
    assert spool.find("real")[0] == "completed"
    code, out, err = run_cli(spool_dir, ["fsck", "--repair"], timeout=60)
    assert "Traceback" not in out + err
    assert unchanged()


# ---------------------------------------------------------------- ids cannot escape the spool

CLI_ID_COMMANDS = [
    lambda i: ["show", i], lambda i: ["show", "--json", i], lambda i: ["logs", i], lambda i: ["cancel", i],
    lambda i: ["cancel", "--kill", "--timeout", "1", i], lambda i: ["dlq", "retry", i],
    lambda i: ["enqueue", "--id", i, "-c", "true"],
    lambda i: ["enqueue", json.dumps({"id": i, "command": "true"})],
]


@pytest.mark.parametrize("make_args", CLI_ID_COMMANDS, ids=lambda f: " ".join(f("ID")))
def test_cli_refuses_ids_that_could_escape_the_spool(spool_dir, tmp_path, make_args):
    spool = Spool(spool_dir)
    spool.enqueue("true", id="x")
    before, outside = tree_snapshot(spool_dir), outside_snapshot(str(tmp_path))
    for bad in BAD_IDS:
        code, out, err = run_cli(spool_dir, make_args(bad))
        assert code == 2, (bad, code, out, err)
        assert "Traceback" not in err
        assert "id" in err.lower(), (bad, err)
        assert "root:" not in out and out.strip() == "", (bad, out)
    assert tree_snapshot(spool_dir) == before
    assert outside_snapshot(str(tmp_path)) == outside


def test_api_refuses_ids_that_could_escape_the_spool(spool, tmp_path):
    spool.enqueue("true", id="x")
    before, outside = tree_snapshot(spool.path), outside_snapshot(str(tmp_path))
    calls = [spool.get, spool.find, spool.cancel, spool.retry_dead, spool.log_path, lambda i: spool.cancel(i, kill=True),
             lambda i: spool.enqueue("true", id=i), lambda i: spool.enqueue_many([{"command": "true", "id": i}])]
    for bad in BAD_IDS:
        for call in calls:
            with pytest.raises(InvalidInput) as info:
                call(bad)
            assert isinstance(info.value, FieldError) and "id" in str(info.value).lower(), (bad, info.value)
    assert tree_snapshot(spool.path) == before
    assert outside_snapshot(str(tmp_path)) == outside


def test_dropped_files_with_escaping_ids_are_rejected(spool, tmp_path):
    outside = outside_snapshot(str(tmp_path))
    for n, bad in enumerate(BAD_IDS):
        with open(os.path.join(spool.path, "incoming", f"d{n}.json"), "w") as fh:
            json.dump({"id": bad, "command": "true"}, fh)
    accepted, rejected = ingest.ingest_all(spool)
    assert accepted == [] and len(rejected) == len(BAD_IDS)
    assert all("id" in reason for reason in rejected), rejected
    assert os.listdir(os.path.join(spool.path, "pending")) == []
    assert os.listdir(os.path.join(spool.path, "ids")) == []
    assert len(os.listdir(os.path.join(spool.path, "rejected"))) == 2 * len(BAD_IDS)
    assert outside_snapshot(str(tmp_path)) == outside


# ---------------------------------------------------------------- files of another user are not run

@needs_root
def test_pending_job_file_of_another_user_is_moved_aside_not_run(spool_dir, marker):
    """What happens: the worker's claim sees the foreign owner and moves the file to
    rejected/ beside NAME.error ('owned by another user; not run')."""
    spool = Spool(spool_dir)
    spool.enqueue(f"touch {marker}", id="foreign")
    spool.enqueue("echo mine", id="mine", priority=50)
    name = pending_name_of(spool_dir, "foreign")
    os.chown(os.path.join(spool_dir, "pending", name), NOBODY, NOBODY)
    code, out, err = run_cli(spool_dir, ["worker", "start", "--burst"], timeout=60)
    assert code == 0, out + err
    assert not os.path.exists(marker), "a job file owned by another user was run"
    assert not os.path.exists(os.path.join(spool_dir, "logs", "foreign.log"))
    assert job_places(spool_dir, "foreign") == []
    rejected = os.path.join(spool_dir, "rejected", name)
    assert os.stat(rejected).st_uid == NOBODY
    with open(rejected + ".error") as fh:
        assert "another user" in fh.read()
    assert spool.find("mine")[0] == "completed"


@needs_root
def test_dropped_file_of_another_user_is_rejected_not_run(spool_dir, marker):
    spool = Spool(spool_dir)
    path = os.path.join(spool_dir, "incoming", "foreign.json")
    with open(path, "w") as fh:
        json.dump({"command": f"touch {marker}", "id": "foreign"}, fh)
    os.chown(path, NOBODY, NOBODY)
    code, out, err = run_cli(spool_dir, ["worker", "start", "--burst"], timeout=60)
    assert code == 0, out + err
    assert not os.path.exists(marker)
    assert spool.find("foreign") is None
    with open(os.path.join(spool_dir, "rejected", "foreign.json.error")) as fh:
        assert "another user" in fh.read()


def _plant_foreign(spool, state, job_id, command):
    record = new_record(validate_input({"id": job_id, "command": command, "max_retries": 3}), time.time() - 100)
    record.update(state=state, attempts=1, started_at=record["created_at"])
    if state == "failed":
        name = names.failed_name(time.time() - 10, job_id)
    else:
        name = names.processing_name(job_id, "otherhost", 999999, 1)
    path = os.path.join(spool.path, state, name)
    with open(path, "w") as fh:
        json.dump(record, fh)
    os.chown(path, NOBODY, NOBODY)
    with open(os.path.join(spool.path, "ids", job_id), "w") as fh:
        fh.write("planted")
    return path


@needs_root
@pytest.mark.parametrize("state", ["failed", "processing"])
def test_job_file_of_another_user_in_failed_or_processing_is_not_run(spool_dir, marker, state):
    spool = Spool(spool_dir)
    spool.set_config("backoff-max", 0)       # a taken-back job is due again at once
    _plant_foreign(spool, state, "foreign", f"touch {marker}")
    code, out, err = run_cli(spool_dir, ["worker", "start", "--burst"], timeout=60)
    assert "Traceback" not in out + err
    assert not os.path.exists(marker), f"a {state}/ job file owned by uid {NOBODY} was run"
