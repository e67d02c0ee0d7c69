"""`queuectl metrics`: numbers from names, folder counts and the finish journal (journal/),
and a Prometheus text that the official client's parser accepts."""
import json
import math
import os
import random

import pytest

from helpers import write_final
from queuectl import fsutil, journal, metrics, names, timeutil

NOW = 1_800_000_000.0  # a fixed "now" for the ages: 2027-01-15T08:00:00Z, an hour's start
STARTED = timeutil.parse_iso("2027-01-15T08:00:00.000Z")


def journal_line(spool, ts, outcome, job_id, attempts=1, runtime=None, process="testhost_1"):
    """Append a journal line as a worker's move does, to the file of `ts`'s hour."""
    path = os.path.join(spool.path, "journal", f"{process}-{journal.hour_text(ts)}.log")
    with open(path, "a") as fh:
        fh.write(f"{ts:.3f} {outcome} {job_id} {attempts} {'-' if runtime is None else f'{runtime:.3f}'}\n")


def finished(spool, state, job_id, runtime, at, attempts=1):
    """A completed/ or dead/ job that ran `runtime` s from STARTED, and its journal line at `at`."""
    write_final(spool.path, state, job_id, command="true", attempts=attempts, max_retries=3,
                created_at="2027-01-15T08:00:00.000Z", updated_at="2027-01-15T08:00:00.000Z",
                started_at="2027-01-15T08:00:00.000Z", finished_at=timeutil.iso(STARTED + runtime),
                exit_code=0 if state == "completed" else 1,
                last_error=None if state == "completed" else "exit code 1")
    journal_line(spool, at, state, job_id, attempts, runtime)


def pending(spool, job_id, entered, due=None, priority=10):
    """A pending file that entered pending/ at `entered` (the SEQ of its name)."""
    name = names.pending_name(priority, due if due is not None else entered, int(entered * 1e9), job_id)
    with open(os.path.join(spool.path, "pending", name), "w") as fh:
        json.dump({"id": job_id}, fh)


def failed(spool, job_id, failed_at, retry_at):
    path = os.path.join(spool.path, "failed", names.failed_name(retry_at, job_id))
    with open(path, "w") as fh:
        json.dump({"id": job_id}, fh)
    os.utime(path, (failed_at, failed_at))
    journal_line(spool, failed_at, "failed", job_id, 1, 0.25)


@pytest.fixture
def filled(spool):
    """In time order, as a worker appends its journal lines."""
    pending(spool, "fresh", NOW - 30)                      # <1m
    pending(spool, "tenmin", NOW - 600)                    # 5-15m
    pending(spool, "later", NOW - 7200, due=NOW + 3600)    # 1-4h, scheduled
    pending(spool, "ancient", NOW - 3 * 86400)             # >1d: the oldest
    finished(spool, "completed", "old", 0.5, NOW - 2 * 3600)  # in the journal of 06:00: not read
    finished(spool, "dead", "d1", 7.0, NOW - 1800, attempts=4)
    failed(spool, "retrying", NOW - 120, NOW + 60)         # 1-5m
    for i, runtime in enumerate([1.0, 2.0, 3.0, 4.0, 100.0]):
        finished(spool, "completed", f"c{i}", runtime, NOW - 34 + i, attempts=1 + (i == 4) * 2)
    with open(os.path.join(spool.path, "incoming", "drop.json"), "w") as fh:
        fh.write("{}")
    return spool


def test_counts_rates_runtimes(filled):
    info = metrics.collect(filled, now=NOW)
    assert info["counts"] == {"incoming": 1, "blocked": 0, "pending": 4, "scheduled": 1, "processing": 0,
                              "failed": 1, "completed": 6, "dead": 1}
    assert info["success_rate"] == pytest.approx(6 / 7, abs=1e-6)
    assert info["finished"]["last_minute"] == {"completed": 5, "dead": 0}
    assert info["finished"]["last_hour"] == {"completed": 5, "dead": 1}
    rt = info["runtime_seconds"]
    assert rt["count"] == 6 and rt["max"] == 100.0
    assert rt["p50"] == 3.0 and rt["p95"] == 100.0
    assert rt["avg"] == pytest.approx((1 + 2 + 3 + 4 + 100 + 7) / 6, abs=1e-3)
    assert info["retries"] == {"waiting": 1, "running": 0, "jobs_retried": 2, "retries": 5, "records_read": 6}
    assert info["oldest_waiting"] == {"id": "ancient", "state": "pending", "age_seconds": 3 * 86400}
    pm = info["per_minute"]
    assert len(pm["minutes"]) == len(pm["completed"]) == len(pm["failed"]) == 60
    # the last 60 minutes, the current one (08:00, nothing yet) last
    assert pm["minutes"][0] == "2027-01-15T07:01:00.000Z" and pm["minutes"][-1] == "2027-01-15T08:00:00.000Z"
    assert pm["completed"][58] == 5 and sum(pm["completed"]) == 5
    assert pm["failed"][57] == 1 and pm["failed"][29] == 1 and sum(pm["failed"]) == 2  # retrying, d1


def test_counts_agree_with_status(filled):
    for now in (NOW, NOW + 7200):
        assert metrics.counts(filled.layout, now) == filled.counts(now)
    assert metrics.collect(filled, now=NOW)["counts"] == filled.counts(NOW)


def test_age_histogram_like_qshape(filled):
    wa = metrics.collect(filled, now=NOW)["waiting_age"]
    assert wa["buckets"] == ["<1m", "1-5m", "5-15m", "15m-1h", "1-4h", "4-24h", ">1d"]
    assert wa["rows"]["pending"] == [1, 0, 1, 0, 1, 0, 1]
    assert wa["rows"]["failed"] == [0, 1, 0, 0, 0, 0, 0]
    assert wa["sum_seconds"]["failed"] == pytest.approx(120, abs=0.01)


def test_no_job_file_is_read_and_the_sample_is_capped(filled, monkeypatch):
    """Finished jobs cost no read and no lstat: their numbers come from the journal, whose
    `sample` newest final entries give the runtimes."""
    real = fsutil.read_json

    def refuse(path):  # waiting and running jobs are read for the per-queue counts; finished ones never
        if os.path.basename(os.path.dirname(path)) in ("completed", "dead"):
            raise AssertionError(f"read {path}")
        return real(path)
    monkeypatch.setattr(fsutil, "read_json", refuse)
    info = metrics.collect(filled, now=NOW, sample=3)
    assert info["sample"]["size"] == 3 and info["sample"]["of"] == 6
    assert "3 most recently finished of 6" in info["sample"]["note"] and "journal" in info["sample"]["note"]
    assert info["runtime_seconds"]["max"] == 100.0 and info["runtime_seconds"]["count"] == 3  # c2, c3, c4
    assert info["retries"]["jobs_retried"] == 1 and info["retries"]["retries"] == 2


def test_windows_and_minutes_follow_the_journal_times(spool):
    """A journal with known times, in two processes' files, ids that are outcome words, and
    files selected by their hour's name: windows and per_minute as counted one by one."""
    now = NOW + 1830.5  # 08:30:30.5: the minutes shown are 07:31 to 08:30 (so far)
    rng = random.Random(3)
    entries = []  # (process, ts, outcome, id, attempts, runtime)
    for process in ("hostA_1", "hostB.example_22"):
        ts = now - 3 * 3600
        while ts < now + 5:
            ts += rng.uniform(0.01, 40)
            outcome = rng.choice(journal.OUTCOMES)
            job_id = rng.choice(["job", "completed", "dead", "failed", "x.y"])
            runtime = None if rng.random() < 0.1 else round(rng.uniform(0, 9), 3)
            entries.append((process, round(ts, 3), outcome, job_id, rng.randint(0, 4), runtime))
    for process, ts, outcome, job_id, attempts, runtime in entries:
        journal_line(spool, ts, outcome, job_id, attempts, runtime, process=process)
    with open(os.path.join(spool.path, "journal", "hostA_1-20270115T05.log"), "a") as fh:
        fh.write(f"{now - 10:.3f} completed named-for-an-old-hour 1 1.000\n")  # selected by name: not read

    info = metrics.collect(spool, now=now, sample=50)
    read = [e for e in entries if journal.hour_text(e[1]) in ("20270115T08", "20270115T07")]
    for window, seconds in metrics.WINDOWS:
        for st in ("completed", "dead"):
            expected = sum(1 for e in read if e[2] == st and now - e[1] <= seconds)
            assert info["finished"][window][st] == expected, (window, st)
    first = NOW - 1740
    pm = info["per_minute"]
    assert pm["minutes"][0] == timeutil.iso(first) == "2027-01-15T07:31:00.000Z"
    for i in range(60):
        inside = [e for e in read if first + 60 * i <= e[1] < first + 60 * (i + 1)]  # a clock ahead counts
        assert pm["completed"][i] == sum(1 for e in inside if e[2] == "completed"), i
        assert pm["failed"][i] == sum(1 for e in inside if e[2] in ("failed", "dead")), i
    final = sorted((e for e in read if e[2] in ("completed", "dead")), key=lambda e: e[1], reverse=True)
    newest = final[:50]
    runtimes = sorted(e[5] for e in newest if e[5] is not None)
    assert info["sample"] == {"size": 50, "limit": 50, "of": len(final), "note": info["sample"]["note"]}
    assert info["runtime_seconds"]["count"] == len(runtimes)
    assert info["runtime_seconds"]["p50"] == metrics.percentile(runtimes, 50)
    assert info["runtime_seconds"]["max"] == runtimes[-1]
    assert info["runtime_seconds"]["sum"] == pytest.approx(math.fsum(runtimes), abs=1e-6)
    assert info["retries"]["jobs_retried"] == sum(1 for e in newest if e[4] > 1)
    assert info["retries"]["retries"] == sum(e[4] - 1 for e in newest if e[4] > 1)


def test_a_damaged_or_missing_journal_is_no_error(spool):
    """A line cut short by a full disk is lost, the next one glued to it still counts but is
    not sampled; no journal/ at all (a spool of an older version seen by the read-only
    dashboard) or a file in its place gives zeros."""
    path = os.path.join(spool.path, "journal", f"h_1-{journal.hour_text(NOW - 5)}.log")
    with open(path, "w") as fh:
        fh.write(f"{NOW - 9:.3f} completed a 1 0.500\n{NOW - 8:.3f} compl")  # cut mid-line
        fh.write(f"{NOW - 7:.3f} completed b 1 0.700\n{NOW - 6:.3f} dead c 2 -\n")
    info = metrics.collect(spool, now=NOW)
    assert info["finished"]["last_minute"] == {"completed": 2, "dead": 1}  # a, b, c
    assert info["sample"]["size"] == 2 and info["runtime_seconds"]["count"] == 1  # a and c; c ran no attempt
    os.unlink(path)
    os.rmdir(os.path.join(spool.path, "journal"))
    assert metrics.collect(spool, now=NOW)["finished"]["last_hour"] == {"completed": 0, "dead": 0}
    with open(os.path.join(spool.path, "journal"), "w") as fh:
        fh.write("not a folder")
    info = metrics.collect(spool, now=NOW)
    assert info["sample"]["size"] == 0 and sum(info["per_minute"]["completed"]) == 0


def test_empty_spool(spool):
    info = metrics.collect(spool)
    assert info["success_rate"] is None and info["oldest_waiting"] is None
    assert info["runtime_seconds"]["p95"] is None
    metrics.prometheus(info)  # NaN where there is nothing, still valid


def test_prometheus_text_passes_the_official_parser(filled):
    parser = pytest.importorskip("prometheus_client.parser")
    filled_path = filled.path
    info = metrics.collect(filled, now=NOW)
    info["spool"] = filled_path + '/with "quote" \\ and\nnewline'  # label escaping
    families = {f.name: f for f in parser.text_string_to_metric_families(metrics.prometheus(info))}
    jobs = {s.labels["state"]: s.value for s in families["queuectl_jobs"].samples}
    assert jobs == {"blocked": 0, "pending": 4, "processing": 0, "failed": 1, "completed": 6, "dead": 1}
    assert {s.labels["spool"] for s in families["queuectl_jobs"].samples} == {info["spool"]}
    assert families["queuectl_scheduled_jobs"].samples[0].value == 1
    assert families["queuectl_success_ratio"].samples[0].value == pytest.approx(6 / 7, abs=1e-5)
    runtime = families["queuectl_job_runtime_seconds"]
    assert runtime.type == "summary"
    by_name = {(s.name, s.labels.get("quantile")): s.value for s in runtime.samples}
    assert by_name[("queuectl_job_runtime_seconds", "0.95")] == 100.0
    assert by_name[("queuectl_job_runtime_seconds_count", None)] == 6
    hist = families["queuectl_waiting_age_seconds"]
    assert hist.type == "histogram"
    buckets = [(s.labels["le"], s.value) for s in hist.samples
               if s.name.endswith("_bucket") and s.labels["state"] == "pending"]
    assert buckets == [("60.0", 1), ("300.0", 1), ("900.0", 2), ("3600.0", 2), ("14400.0", 3), ("86400.0", 3),
                       ("+Inf", 4)]
    assert families["queuectl_oldest_waiting_seconds"].samples[0].value == 3 * 86400
    recent = {(s.labels["state"], s.labels["window"]): s.value for s in families["queuectl_finished_jobs_recent"].samples}
    assert recent[("completed", "60s")] == 5 and recent[("dead", "3600s")] == 1


def test_cli_text_json_prometheus(cli, filled):
    text = cli("metrics")
    assert text.returncode == 0, text.stderr
    assert "success rate:  85.7% (6 completed, 1 dead)" in text.stdout
    assert "WAITING" in text.stdout and ">1d" in text.stdout
    data = cli.json("metrics")
    assert data["counts"]["completed"] == 6 and data["sample"]["limit"] == 1000
    prom = cli("metrics", "--prometheus", "--sample", "2")
    assert prom.returncode == 0 and 'queuectl_sample_jobs{spool="' in prom.stdout
    assert prom.stdout.endswith("\n") and not prom.stdout.endswith("\n\n")
    for bad in (["metrics", "--json", "--prometheus"], ["metrics", "--sample", "-1"], ["metrics", "--sample", "x"]):
        result = cli(*bad)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (bad, result.stderr)
