"""One spool, several hosts: GlusterFS, MooseFS and CephFS volumes served on this machine, each
host a FUSE client in its own network namespace, its workers under their own host name
(testbed/bed.py). Needs root and /dev/fuse; skips with the reason otherwise.

What is proven here, on each filesystem with its default options but for how long a dead
client's locks are kept (docs/contract.md "Several hosts, one spool"): nothing lost and
nothing run twice without a fault; a worker killed on one host has its job taken back by
another within seconds, and the killed worker's copy does not run on; a host whose FUSE
client dies has its job taken back; a host cut off by a partition kills its own copy before
another host takes the job back (and the place it held in a limited queue), its late finish
changes nothing, and it works again after the heal; `worker stop`, `cancel --kill` and
`status` reach every host; a queue's limit holds across hosts, is reached, and its places go
round the hosts.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT, kill_process_group, pid_gone, run_bounded, wait_until

sys.path.insert(0, os.path.join(ROOT, "testbed"))
import bed as testbed  # noqa: E402

pytestmark = [pytest.mark.process, pytest.mark.multihost]

REASON = testbed.unavailable()
# QUEUECTL_BED_FS=moosefs (a comma-separated list) runs the suite on fewer filesystems
FILESYSTEMS = os.environ.get("QUEUECTL_BED_FS", ",".join(testbed.FILESYSTEMS)).split(",")
# How long a dead client keeps its locks, as the operators' guide recommends: MooseFS keeps
# them for SESSION_SUSTAIN_TIME (a day by default), CephFS until its MDS closes the session
# (session_autoclose, 300 s by default, counted once session_timeout, 60 s, has passed)
OPTIONS = {"moosefs": {"SESSION_SUSTAIN_TIME": "30"},
           "cephfs": {"session_timeout": "30", "session_autoclose": "30"}}
# Files dropped into incoming/ by the 2,000-job test (the rest is enqueued). On CephFS a file
# dropped through one host's client and taken in through another's waits for the MDS's tick
# (5 s) per file (docs/operations.md "Measured"); 100 still prove the path
DROPPED = {"cephfs": 100}


@pytest.fixture(scope="module", params=FILESYSTEMS)
def cluster(request):
    if REASON:
        pytest.skip(REASON)
    state = testbed.up(request.param, hosts=3, options=OPTIONS.get(request.param, {}))
    yield Cluster(state)
    testbed.down()


class Cluster:
    def __init__(self, state):
        self.state = state
        self.fs = state["fs"]
        self.hosts = state["hosts"]
        self.procs = []
        self.n = 0

    def new_spool(self):
        """A fresh spool folder on the volume; returns its name (the same on every host)."""
        self.n += 1
        name = f"spool{self.n}"
        os.makedirs(self.path(0, name), mode=0o700)
        os.makedirs(self.path(0, f"{name}-ran"), mode=0o700)
        return name

    def path(self, host, *parts):
        return os.path.join(self.hosts[host]["mount"], *parts)

    def env(self, **extra):
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("QUEUECTL_SPOOL", None)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def cli(self, host, spool, *args, timeout=120, input=None, name=None):
        """queuectl run on host `host` (under host name `name`, if given, instead of its own)."""
        argv = testbed.host_command(name or self.hosts[host]["name"],
                                    [sys.executable, "-m", "queuectl", "--spool", self.path(host, spool), *args],
                                    machine=self.hosts[host]["name"])
        return run_bounded(argv, timeout, input=input, env=self.env())

    def json(self, host, spool, *args):
        result = self.cli(host, spool, *args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def start(self, host, spool, *args):
        argv = testbed.host_command(self.hosts[host]["name"],
                                    [sys.executable, "-m", "queuectl", "--spool", self.path(host, spool), *args])
        log = open(os.path.join(self.state["dir"], f"proc-{len(self.procs)}.log"), "w+")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        proc.log = log
        self.procs.append(proc)
        return proc

    def output(self, proc):
        proc.log.flush()
        with open(proc.log.name) as fh:
            return fh.read()

    def stop_all(self):
        for proc in self.procs:
            kill_process_group(proc)
            proc.log.close()
        self.procs = []
        # jobs and workers left by a killed process: found by the bed's folder in their command line
        for pid in testbed.pids_matching(self.state["dir"]):
            if pid not in self.fuse_pids() and pid not in self.state["pids"]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def fuse_pids(self):
        return {h.get("fuse_pid") for h in self.hosts}


def workers_up(hosts, spool, count, timeout, what):
    """Wait until `count` workers are registered; on a timeout, say what the started processes
    printed (a worker that refused to start says why there)."""
    try:
        wait_until(lambda: len(hosts.json(0, spool, "status")["workers"]) == count, timeout, what=what)
    except AssertionError as exc:
        said = "\n".join(f"--- process {i}:\n{hosts.output(p)[-1500:]}" for i, p in enumerate(hosts.procs))
        raise AssertionError(f"{exc}\n{said}") from None


@pytest.fixture
def hosts(cluster):
    yield cluster
    cluster.stop_all()
    # a test that cut a host off may leave its client for good (a CephFS session the MDS
    # refused after the heal): the next test gets a working one, and this one says so
    for host in cluster.hosts:
        if not testbed.answers(host):
            print(f"\n{cluster.fs}: {host['name']}'s mount did not answer for 60 s after the test: remounted")
            testbed.remount(cluster.state, host)


def marker_command(hosts, spool, extra=""):
    """A job that leaves one file per run: ran/ID.HOST.PID (so runs are counted, by host)."""
    ran = hosts.path(0, f"{spool}-ran")
    return f'{extra}touch {ran}/$QUEUECTL_JOB_ID.$(hostname).$$'


def runs(hosts, spool):
    """{job id: [host, ...]} from the markers the jobs left."""
    out = {}
    for name in os.listdir(hosts.path(0, f"{spool}-ran")):
        job_id, host, _pid = name.rsplit(".", 2)
        out.setdefault(job_id, []).append(host)
    return out


def explain_runs(hosts, spool, jobs, procs):
    """What the spool and the workers say about `jobs`: enough to tell two claims of one
    attempt from a retry after a fault (lost contact, a take-back)."""
    lines = []
    for job_id in jobs:
        record = hosts.json(0, spool, "show", job_id)
        lines.append(f"{job_id}: {record.get('state')}, attempts {record.get('attempts')}, worker {record.get('worker')}, "
                     f"last_error {record.get('last_error')}")
        log = hosts.path(0, spool, "logs", f"{job_id}.log")
        if os.path.exists(log):
            with open(log, errors="replace") as fh:
                lines += ["  log: " + line for line in fh.read().splitlines()[:20]]
    for i, proc in enumerate(procs):
        said = [line for line in hosts.output(proc).splitlines()
                if any(j in line for j in jobs) or "no answer" in line or "taken back" in line]
        lines += [f"  host {i + 1}: {line}" for line in said[:40]]
    return "\n".join(lines)


def test_2000_jobs_from_two_hosts_run_once_each_on_three(hosts):
    spool = hosts.new_spool()
    cmd = marker_command(hosts, spool)
    dropped = DROPPED.get(hosts.fs, 1000)
    batch = "\n".join(json.dumps({"id": f"e{i:04d}", "command": cmd}) for i in range(2000 - dropped))
    result = hosts.cli(0, spool, "enqueue", "--file", "-", input=batch)
    assert result.returncode == 0, result.stderr
    incoming = hosts.path(1, spool, "incoming")  # dropped on host 2, as a program there would
    staging = hosts.path(1, spool, "tmp")
    for i in range(dropped):
        name = f"d{i:04d}.json"
        with open(os.path.join(staging, "." + name), "w") as fh:
            json.dump({"id": f"d{i:04d}", "command": cmd}, fh)
        os.rename(os.path.join(staging, "." + name), os.path.join(incoming, name))
    started = time.monotonic()
    workers = [hosts.start(h, spool, "worker", "start", "--count", "2", "--burst") for h in range(3)]
    for proc in workers:
        proc.wait(900)
    elapsed = time.monotonic() - started
    for proc in workers:
        assert proc.returncode == 0, hosts.output(proc)[-2000:]
    counts = hosts.json(2, spool, "status")["counts"]
    ran = runs(hosts, spool)
    twice = {job: where for job, where in ran.items() if len(where) > 1}
    print(f"\n{hosts.fs}: 2000 jobs, 3 hosts x 2 workers: {elapsed:.1f}s, {2000 / elapsed:.0f} jobs/s, "
          f"by host {[sum(1 for w in ran.values() for h in w if h == f'host{i}') for i in (1, 2, 3)]}")
    assert counts["completed"] == 2000 and counts["processing"] == 0 and counts["pending"] == 0, counts
    assert len(ran) == 2000 and not twice, f"run twice: {twice}\n" + explain_runs(hosts, spool, twice, workers)
    assert os.listdir(hosts.path(0, spool, "processing")) == []
    assert [n for n in os.listdir(hosts.path(0, spool, "tmp")) if n.endswith(".json")] == []
    fsck = hosts.cli(1, spool, "fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert {h for where in ran.values() for h in where} == {"host1", "host2", "host3"}


def running_on(hosts, spool, job_id, timeout=30, attempt=1):
    """Wait until attempt N of job_id runs; returns (host name, worker pid) from its processing/ name."""
    from queuectl import names

    def find():
        for name in os.listdir(hosts.path(0, spool, "processing")):
            parsed = names.parse_processing(name)
            if parsed and parsed.job_id == job_id and parsed.attempt == attempt:
                return parsed.host, parsed.pid
        return None
    return wait_until(find, timeout, what=f"job {job_id} running")


def job_pids(hosts, spool, job_id):
    """Pids written by each attempt of a job (it echoes $$ into pids/ID.HOST.ATTEMPT)."""
    folder = hosts.path(0, f"{spool}-ran")
    out = {}
    for name in os.listdir(folder):
        if name.startswith(job_id + "."):
            with open(os.path.join(folder, name)) as fh:
                text = fh.read().split()
            if text:
                out[name] = int(text[0])
    return out


def long_job(hosts, spool, job_id, seconds=300):
    ran = hosts.path(0, f"{spool}-ran")
    return {"id": job_id, "command": f"echo $$ > {ran}/$QUEUECTL_JOB_ID.$(hostname).$QUEUECTL_ATTEMPT; "
                                     f"exec sleep {seconds}", "max_retries": 3}


def test_a_worker_killed_on_one_host_has_its_job_taken_back_by_another(hosts):
    spool = hosts.new_spool()
    hosts.start(1, spool, "worker", "run")  # no supervisor on that host
    workers_up(hosts, spool, 1, 30, "host2's worker")
    job = long_job(hosts, spool, "k1")
    assert hosts.cli(0, spool, "enqueue", json.dumps(job)).returncode == 0
    host, pid = running_on(hosts, spool, "k1")
    assert host == "host2"
    first = wait_until(lambda: job_pids(hosts, spool, "k1"), 15, what="the job's pid")
    hosts.start(0, spool, "worker", "run")
    workers_up(hosts, spool, 2, 30, "host1's worker")
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    first_pid = list(first.values())[0]
    wait_until(lambda: pid_gone(first_pid), 5, what="the killed worker's job to die with it")
    host, _ = running_on(hosts, spool, "k1", timeout=20, attempt=2)
    taken_back = time.monotonic() - killed_at
    record = hosts.json(0, spool, "show", "k1")
    print(f"\n{hosts.fs}: kill -9 of a worker: job taken back and running again after {taken_back:.2f}s")
    assert host == "host1" and record["attempts"] == 2
    assert taken_back < 10
    alive = [p for p in job_pids(hosts, spool, "k1").values() if not pid_gone(p)]
    assert len(alive) == 1  # one copy at a time


def test_a_host_whose_filesystem_client_dies_has_its_job_taken_back(hosts):
    spool = hosts.new_spool()
    hosts.start(2, spool, "worker", "run")
    workers_up(hosts, spool, 1, 30, "host3's worker")
    assert hosts.cli(0, spool, "enqueue", json.dumps(long_job(hosts, spool, "c1"))).returncode == 0
    assert running_on(hosts, spool, "c1")[0] == "host3"
    hosts.start(0, spool, "worker", "run")
    workers_up(hosts, spool, 2, 30, "host1's worker")
    fuse = hosts.hosts[2]["fuse_pid"]
    os.kill(fuse, signal.SIGKILL)  # host 3 crashes, as far as the volume can tell
    crashed_at = time.monotonic()
    try:
        # GlusterFS frees a dead client's locks when its connection drops; MooseFS after the
        # session sustain (30 s) and more (seen: 61-95 s); CephFS when the MDS evicts the session, once
        # session_autoclose (30 s) passed without a renewal (seen: about 35 s)
        limit = {"glusterfs": 15, "moosefs": 240, "cephfs": 90}[hosts.fs]
        host, _ = running_on(hosts, spool, "c1", timeout=limit, attempt=2)
        took = time.monotonic() - crashed_at
        print(f"\n{hosts.fs}: FUSE client of host3 killed: job taken back after {took:.1f}s")
        assert host == "host1"
        assert hosts.json(0, spool, "show", "c1")["attempts"] == 2
    finally:
        remount(hosts, 2)


def remount(hosts, index):
    hosts.stop_all()
    testbed.remount(hosts.state, hosts.hosts[index])


def test_a_cut_off_host_kills_its_copy_and_rejoins_after_the_heal(hosts):
    """The job is in a queue limited to 1: its place comes back with its lock, once the
    cut-off host has killed its copy (the take-back's attempt needs the place)."""
    spool = hosts.new_spool()
    assert hosts.cli(0, spool, "config", "set", "contact-timeout", "5").returncode == 0
    assert hosts.cli(0, spool, "queue", "set", "solo", "--limit", "1").returncode == 0
    cut_off = hosts.start(1, spool, "worker", "run")
    workers_up(hosts, spool, 1, 30, "host2's worker")
    job = dict(long_job(hosts, spool, "p1", 600), queue="solo")
    assert hosts.cli(0, spool, "enqueue", json.dumps(job)).returncode == 0
    assert running_on(hosts, spool, "p1")[0] == "host2"
    first_pid = list(wait_until(lambda: job_pids(hosts, spool, "p1"), 15, what="the job's pid").values())[0]
    hosts.start(0, spool, "worker", "run")
    workers_up(hosts, spool, 2, 30, "host1's worker")
    testbed.cut(2)
    cut_at = time.monotonic()
    try:
        wait_until(lambda: pid_gone(first_pid), 15, what="the cut-off host to kill its own copy")
        killed_after = time.monotonic() - cut_at
        # the cut-off host's locks outlive it: GlusterFS's ping-timeout (42 s), MooseFS's
        # session sustain and more (seen: 73-124 s), CephFS's session_autoclose (30 s; seen: about 33 s)
        limit = {"glusterfs": 90, "moosefs": 240, "cephfs": 90}[hosts.fs]
        host, _ = running_on(hosts, spool, "p1", timeout=limit, attempt=2)
        taken_after = time.monotonic() - cut_at
        print(f"\n{hosts.fs}: partition: own copy killed after {killed_after:.1f}s, "
              f"taken back elsewhere after {taken_after:.1f}s")
        assert host == "host1" and killed_after < taken_after
        listed = {q["name"]: q for q in hosts.json(0, spool, "queue", "list")}
        assert listed["solo"]["running_slots"] == 1
    finally:
        testbed.heal(2)
        healed_at = time.monotonic()
    # after the heal: the cut-off worker records nothing over the newer state, and works again
    second = hosts.json(0, spool, "show", "p1")
    assert second["state"] == "processing" and second["attempts"] == 2
    assert hosts.cli(0, spool, "enqueue", json.dumps({"id": "after-heal", "command": "true"})).returncode == 0
    try:
        wait_until(lambda: hosts.json(0, spool, "show", "after-heal")["state"] == "completed", 120,
                   what="a job done after the heal")
    except AssertionError as exc:
        answers = testbed.answers(hosts.hosts[1], 10)
        raise AssertionError(f"{exc}; host2's mount {'answers' if answers else 'does not answer'}; "
                             f"the cut-off worker said:\n{hosts.output(cut_off)[-3000:]}") from None
    print(f"{hosts.fs}: a job done by the cut-off host {time.monotonic() - healed_at:.1f}s after the heal")
    assert cut_off.poll() is None, hosts.output(cut_off)[-2000:]
    assert hosts.json(0, spool, "show", "p1")["attempts"] == 2  # the late finish changed nothing
    assert "killed" in hosts.output(cut_off)


@pytest.mark.skipif(not os.path.isfile("/etc/machine-id"), reason="the bed gives hosts their own machine id "
                    "by binding a file over /etc/machine-id, which this machine lacks")
def test_a_host_that_takes_another_hosts_name_is_refused(hosts):
    spool = hosts.new_spool()
    hosts.start(0, spool, "worker", "run")
    workers_up(hosts, spool, 1, 30, "host1's worker")
    impostor = hosts.cli(1, spool, "worker", "run", "--burst", name="host1", timeout=60)
    assert impostor.returncode == 1
    assert impostor.stderr.count("\n") == 1, impostor.stderr
    assert "host name" in impostor.stderr and "another machine" in impostor.stderr and "fix:" in impostor.stderr
    report = hosts.cli(1, spool, "doctor", "--json", name="host1", timeout=60)
    assert report.returncode == 1
    check = {c["name"]: c for c in json.loads(report.stdout)["checks"]}["host name"]
    assert not check["ok"] and "host1" in check["detail"]
    assert [w["host"] for w in hosts.json(0, spool, "status")["workers"]] == ["host1"]  # nothing registered
    # the same machine under its own name is welcome, and so is another host under its own
    assert hosts.cli(0, spool, "worker", "run", "--burst", timeout=60).returncode == 0
    assert hosts.cli(1, spool, "worker", "run", "--burst", timeout=60).returncode == 0


def test_stop_cancel_and_status_reach_every_host(hosts):
    spool = hosts.new_spool()
    for h in range(3):
        hosts.start(h, spool, "worker", "start", "--count", "2")
    workers_up(hosts, spool, 6, 60, "6 workers")
    status = hosts.json(1, spool, "status")
    assert sorted({w["host"] for w in status["workers"]}) == ["host1", "host2", "host3"]
    for i in range(6):
        assert hosts.cli(0, spool, "enqueue", json.dumps(long_job(hosts, spool, f"s{i}", 600))).returncode == 0
    wait_until(lambda: hosts.json(2, spool, "status")["counts"]["processing"] == 6, 60, what="6 jobs running")
    remote = [w for w in hosts.json(0, spool, "status")["workers"] if w["host"] != "host1" and w["job"]][0]
    result = hosts.cli(0, spool, "cancel", "--kill", remote["job"], "--timeout", "60")
    assert result.returncode == 0, result.stderr
    # cancel has read the final record; another process of the host may still read the one
    # the rename into dead/ replaced for a second (GlusterFS's caches, docs/operations.md)
    wait_until(lambda: hosts.json(0, spool, "show", remote["job"])["last_error"] == "cancelled", 10,
               what="show to read the cancelled record")
    result = hosts.cli(0, spool, "worker", "stop", "--now", "--timeout", "90")
    assert result.returncode == 0, result.stdout + result.stderr
    assert hosts.json(2, spool, "status")["workers"] == []
    counts = hosts.json(1, spool, "status")["counts"]
    assert counts["processing"] == 0 and counts["pending"] == 5 and counts["dead"] == 1, counts


def test_pause_wait_and_retry_reach_every_host(hosts):
    """`pause` on one host holds the workers of the others; `wait` on one host sees jobs
    another runs; `retry` from a third host runs a finished job again."""
    spool = hosts.new_spool()
    workers = [hosts.start(h, spool, "worker", "run") for h in (1, 2)]
    workers_up(hosts, spool, 2, 30, "2 workers")
    assert hosts.cli(0, spool, "pause").returncode == 0
    assert hosts.json(2, spool, "status")["paused"] is True
    for proc in workers:  # each notices the pause (its look after a rescan at the latest)
        wait_until(lambda: "spool paused" in hosts.output(proc), 30, what="a worker seeing the pause")
    assert hosts.cli(0, spool, "enqueue", "-c", "true", "--id", "held").returncode == 0
    with pytest.raises(AssertionError):  # the rescan (2 s) would have claimed it by now
        wait_until(lambda: hosts.json(0, spool, "show", "held")["state"] != "pending", 5, what="a claim")
    assert hosts.cli(2, spool, "resume").returncode == 0
    done = hosts.cli(0, spool, "wait", "held", "--timeout", "60", timeout=90)
    assert done.returncode == 0, done.stderr
    assert hosts.json(0, spool, "show", "held")["worker"].split(":")[0] in ("host2", "host3")
    assert hosts.cli(2, spool, "retry", "held").returncode == 0
    again = hosts.cli(1, spool, "wait", "held", "--timeout", "60", timeout=90)
    assert again.returncode == 0, again.stderr
    wait_until(lambda: hosts.cli(1, spool, "logs", "held").stdout.count("=== queuectl attempt 1/") == 2, 60,
               what="the retried job's second run in its log")


def test_dependencies_and_a_schedule_across_hosts(hosts):
    """A chain enqueued on one host runs in order on workers of three; a dead link buries
    what waits for it; a schedule fires exactly one job per occurrence with workers on three
    hosts: the missed one when they all start at once, then the next real minute."""
    spool = hosts.new_spool()
    assert hosts.cli(0, spool, "schedule", "add", "tick", "* * * * *", "-c", marker_command(hosts, spool)).returncode == 0
    state_path = hosts.path(0, spool, "schedules", "tick.state")
    with open(state_path) as fh:
        state = json.load(fh)
    state["last_occurrence"] = "2026-01-01T00:00:00.000Z"  # missed while no worker ran
    with open(state_path + ".new", "w") as fh:
        json.dump(state, fh)
    os.rename(state_path + ".new", state_path)
    order = hosts.path(0, f"{spool}-order")  # beside the run markers
    for job_id, after in (("a", ()), ("b", ("a",)), ("c", ("b", "a"))):
        flags = [arg for dep in after for arg in ("--after", dep)]
        command = f"sleep 0.5; echo {job_id} >> {order}; " + marker_command(hosts, spool)
        assert hosts.cli(0, spool, "enqueue", "-c", command, "--id", job_id, *flags).returncode == 0
    assert hosts.cli(1, spool, "enqueue", "-c", "exit 1", "--id", "d", "--max-retries", "0").returncode == 0
    assert hosts.cli(1, spool, "enqueue", "-c", marker_command(hosts, spool), "--id", "e", "--after", "d").returncode == 0
    assert hosts.json(2, spool, "status")["counts"]["blocked"] == 3

    started = time.time()
    for h in (0, 1, 2):
        hosts.start(h, spool, "worker", "run")
    done = hosts.cli(2, spool, "wait", "c", "--timeout", "90", timeout=120)
    assert done.returncode == 0, done.stderr
    with open(order) as fh:
        assert fh.read().split() == ["a", "b", "c"]
    dead = hosts.cli(0, spool, "wait", "e", "--timeout", "60", timeout=90)
    assert dead.returncode == 1 and "job e dead: dependency d dead" in dead.stderr

    # the missed occurrence fired once at start; then the next minute's, once
    first = "tick-" + time.strftime("%Y%m%dT%H%MZ", time.gmtime(started))
    wait_until(lambda: len([j for j in runs(hosts, spool) if j.startswith("tick-")]) >= 2, 90,
               what="the missed occurrence and the next one to run")
    ticks = {j: h for j, h in runs(hosts, spool).items() if j.startswith("tick-")}
    assert all(len(h) == 1 for h in ticks.values()), ticks  # each ran once
    assert sorted(ticks)[0] in (first, "tick-" + time.strftime("%Y%m%dT%H%MZ", time.gmtime(started + 60)))
    listed = hosts.json(1, spool, "schedule", "list")[0]
    assert listed["fired"] == len(ticks) and listed["skipped"] > 0
    jobs = [r["id"] for r in hosts.json(2, spool, "list") if r["id"].startswith("tick-")]
    assert sorted(jobs) == sorted(ticks)  # one job per occurrence, each run once
    assert runs(hosts, spool).get("e") is None


# ---------------------------------------------------------------- queues and limits across hosts

def timed_job(hosts, spool, seconds):
    """A job that writes when it started and ended (the machine's one clock) and where it ran;
    the end is renamed into place, so a test that waits for it reads it whole."""
    out = hosts.path(0, f"{spool}-ran")
    return (f"date +%s.%N > {out}/$QUEUECTL_JOB_ID.start; hostname > {out}/$QUEUECTL_JOB_ID.host; "
            f"sleep {seconds}; date +%s.%N > {out}/$QUEUECTL_JOB_ID.end.t && mv {out}/$QUEUECTL_JOB_ID.end.t "
            f"{out}/$QUEUECTL_JOB_ID.end")


def spans(hosts, spool, ids):
    """{id: (start, end, host)} of the jobs' own files."""
    out = hosts.path(0, f"{spool}-ran")

    def read(job_id, what):
        with open(os.path.join(out, f"{job_id}.{what}")) as fh:
            return fh.read().strip()
    return {j: (float(read(j, "start")), float(read(j, "end")), read(j, "host")) for j in ids}


def most_at_once(intervals):
    events = sorted([(s, 1) for s, _e in intervals] + [(e, -1) for _s, e in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def run_queue(hosts, spool, ids, seconds):
    for h in range(3):
        hosts.start(h, spool, "worker", "start", "--count", "2")
    workers_up(hosts, spool, 6, 60, "6 workers")
    batch = "\n".join(json.dumps({"id": j, "queue": "lim", "command": timed_job(hosts, spool, seconds)}) for j in ids)
    assert hosts.cli(0, spool, "enqueue", "--file", "-", input=batch).returncode == 0
    ran = hosts.path(0, f"{spool}-ran")
    wait_until(lambda: all(os.path.exists(os.path.join(ran, f"{j}.end")) for j in ids), 240, what="every job")
    result = hosts.cli(0, spool, "worker", "stop", "--timeout", "90")
    assert result.returncode == 0, result.stdout + result.stderr
    return spans(hosts, spool, ids)


def test_a_queue_limit_holds_across_hosts_and_is_reached_and_shared(hosts):
    """Limit 2 over 12 jobs, 3 hosts x 2 workers: never more than 2 at once, 2 reached, and the
    places go round the hosts (turns.py: a place let go goes to the worker that waited longest)."""
    spool = hosts.new_spool()
    assert hosts.cli(1, spool, "queue", "set", "lim", "--limit", "2").returncode == 0
    ids = [f"q{i:02d}" for i in range(12)]
    found = run_queue(hosts, spool, ids, 1.0)
    assert most_at_once([(s, e) for s, e, _h in found.values()]) == 2
    by_host = sorted(sum(1 for _s, _e, h in found.values() if h == f"host{i}") for i in (1, 2, 3))
    print(f"\n{hosts.fs}: limit 2 over 12 jobs, jobs per host {by_host}")
    assert by_host[0] >= 2, f"a host had {by_host[0]} of the 12 jobs: places did not go round"


def test_a_per_host_limit_holds_on_every_host(hosts):
    """--per-host 1 over 9 jobs, 3 hosts x 2 workers: at most 1 at once on each host, and
    hosts ran theirs at the same time."""
    spool = hosts.new_spool()
    assert hosts.cli(0, spool, "queue", "set", "lim", "--per-host", "1").returncode == 0
    ids = [f"p{i:02d}" for i in range(9)]
    found = run_queue(hosts, spool, ids, 1.0)
    by_host = {}
    for s, e, h in found.values():
        by_host.setdefault(h, []).append((s, e))
    assert all(most_at_once(intervals) == 1 for intervals in by_host.values()), by_host
    assert most_at_once([(s, e) for s, e, _h in found.values()]) >= 2, "the hosts never overlapped"
