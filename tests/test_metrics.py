"""`queuectl metrics`: numbers from names and mtimes, a capped sample of records,
and a Prometheus text that the official client's parser accepts."""
import json
import os

import pytest

from helpers import write_final
from queuectl import fsutil, metrics, names, timeutil

NOW = 1_800_000_000.0  # a fixed "now" for the ages
STARTED = timeutil.parse_iso("2027-01-15T08:00:00.000Z")


def finished(spool, state, job_id, runtime, mtime, attempts=1):
    """A completed/ or dead/ job that ran `runtime` s from STARTED; its file's mtime is `mtime`."""
    write_final(spool.path, state, job_id, mtime=mtime, command="true", attempts=attempts, max_retries=3,
                created_at="2027-01-15T08:00:00.000Z", updated_at="2027-01-15T08:00:00.000Z",
                started_at="2027-01-15T08:00:00.000Z", finished_at=timeutil.iso(STARTED + runtime),
                exit_code=0 if state == "completed" else 1,
                last_error=None if state == "completed" else "exit code 1")


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


@pytest.fixture
def filled(spool):
    pending(spool, "fresh", NOW - 30)                      # <1m
    pending(spool, "tenmin", NOW - 600)                    # 5-15m
    pending(spool, "later", NOW - 7200, due=NOW + 3600)    # 1-4h, scheduled
    pending(spool, "ancient", NOW - 3 * 86400)             # >1d: the oldest
    failed(spool, "retrying", NOW - 120, NOW + 60)         # 1-5m
    for i, runtime in enumerate([1.0, 2.0, 3.0, 4.0, 100.0]):
        finished(spool, "completed", f"c{i}", runtime, NOW - 30 - i, attempts=1 + (i == 4) * 2)
    finished(spool, "completed", "old", 0.5, NOW - 2 * 3600)
    finished(spool, "dead", "d1", 7.0, NOW - 1800, attempts=4)
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
    assert rt["count"] == 7 and rt["max"] == 100.0
    assert rt["p50"] == 3.0 and rt["p95"] == 100.0
    assert rt["avg"] == pytest.approx((1 + 2 + 3 + 4 + 100 + 0.5 + 7) / 7, abs=1e-3)
    assert info["retries"] == {"waiting": 1, "running": 0, "jobs_retried": 2, "retries": 5, "records_read": 7}
    assert info["oldest_waiting"] == {"id": "ancient", "state": "pending", "age_seconds": 3 * 86400}


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


def test_records_read_only_for_the_capped_sample(filled, monkeypatch):
    """Pending and failed cost no read; finished jobs: only the `sample` most recent by mtime."""
    reads = []
    real = fsutil.read_json
    monkeypatch.setattr(fsutil, "read_json", lambda path: reads.append(os.path.basename(path)) or real(path))
    info = metrics.collect(filled, now=NOW, sample=3)
    assert sorted(reads) == ["c0.json", "c1.json", "c2.json"]  # the three finished last
    assert info["sample"]["size"] == 3 and info["sample"]["of"] == 7
    assert "3 most recently finished of 7" in info["sample"]["note"]
    assert info["runtime_seconds"]["max"] == 3.0


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
    assert jobs == {"pending": 4, "processing": 0, "failed": 1, "completed": 6, "dead": 1}
    assert {s.labels["spool"] for s in families["queuectl_jobs"].samples} == {info["spool"]}
    assert families["queuectl_scheduled_jobs"].samples[0].value == 1
    assert families["queuectl_success_ratio"].samples[0].value == pytest.approx(6 / 7, abs=1e-5)
    runtime = families["queuectl_job_runtime_seconds"]
    assert runtime.type == "summary"
    by_name = {(s.name, s.labels.get("quantile")): s.value for s in runtime.samples}
    assert by_name[("queuectl_job_runtime_seconds", "0.95")] == 100.0
    assert by_name[("queuectl_job_runtime_seconds_count", None)] == 7
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
