"""`queuectl metrics`: numbers about a spool, computed mostly from file names.

What is read, so it stays fast on a spool of a million files:
- counts: folder listings (no file opened), as `status`.
- waiting ages (pending/ and failed/): a pending name carries the time the job entered
  pending/ (SEQ, ns); a failed file's mtime is when its failure was recorded (job files are
  written once and renamed, never rewritten: docs/protocol.md, rule 1). So a pending job costs no
  syscall and a failed job one lstat; no record is read.
- completions in the last minute/hour: the mtime of completed/ and dead/ files (written when
  the job finished): one lstat each, exact, no record read.
- runtime (finished_at - started_at of the last attempt) and retries: records of the
  `sample` most recently finished jobs (by mtime) only; the output says how many.

The age of a waiting job here is the time since it entered its current folder; `status`
shows the oldest one by `created_at` (a retried job is older there than here).
"""
import heapq
import math
import os
import time

from . import fsutil, names, registry, timeutil
from .inventory import count_jobs

DEFAULT_SAMPLE = 1000
# qshape-like age buckets of waiting jobs: (label, upper bound in seconds)
AGE_BUCKETS = (("<1m", 60), ("1-5m", 300), ("5-15m", 900), ("15m-1h", 3600), ("1-4h", 14400),
               ("4-24h", 86400), (">1d", math.inf))
WINDOWS = (("last_minute", 60), ("last_hour", 3600))


def _bucket(age):
    for index, (_, bound) in enumerate(AGE_BUCKETS):
        if age <= bound:  # like Prometheus' `le`
            return index
    return len(AGE_BUCKETS) - 1


def _job_names(folder):
    return [n for n in fsutil.listdir(folder) if n.endswith(names.SUFFIX) and not n.startswith(".")]


def _mtimes(folder):
    """[(mtime, name)] of the job files of a folder: one lstat each, no file opened."""
    out = []
    try:
        it = os.scandir(folder)
    except FileNotFoundError:
        return out
    with it:
        for entry in it:
            name = entry.name
            if not name.endswith(names.SUFFIX) or name.startswith("."):
                continue
            try:
                out.append((entry.stat(follow_symlinks=False).st_mtime, name))
            except FileNotFoundError:  # moved or purged meanwhile
                continue
    return out


def counts(layout, now=None):
    """Jobs per folder and `scheduled`, exactly as `status` counts them (from listings only)."""
    return count_jobs(layout, now)


def percentile(sorted_values, q):
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _waiting(lay, now, pending, failed_times):
    """Histogram rows (pending, failed) and the oldest waiting job, by time in the folder."""
    rows = {"pending": [0] * len(AGE_BUCKETS), "failed": [0] * len(AGE_BUCKETS)}
    sums = {"pending": 0.0, "failed": 0.0}
    oldest = None
    scheduled = 0
    now_stamp = names.stamp(now)
    for name in pending:
        try:
            entered = names.pending_enqueued_at(name)
        except ValueError:
            continue
        if names.pending_due_text(name) > now_stamp:
            scheduled += 1
        age = max(0.0, now - entered)
        rows["pending"][_bucket(age)] += 1
        sums["pending"] += age
        if oldest is None or age > oldest[0]:
            oldest = (age, "pending", name)
    for mtime, name in failed_times:
        age = max(0.0, now - mtime)
        rows["failed"][_bucket(age)] += 1
        sums["failed"] += age
        if oldest is None or age > oldest[0]:
            oldest = (age, "failed", name)
    if oldest:
        oldest = {"id": names.id_of(oldest[1], oldest[2]), "state": oldest[1],
                  "age_seconds": round(oldest[0], 3)}
    return rows, sums, oldest, scheduled


def _runtime(spool, finished, sample):
    """Runtime and retry numbers from the records of the `sample` most recently finished jobs."""
    recent = heapq.nlargest(sample, finished)
    runtimes, retried, retries, read = [], 0, 0, 0
    for _, state, name in recent:
        try:
            rec = fsutil.read_json(os.path.join(spool.layout.state_dir(state), name))
        except (OSError, ValueError):
            continue
        if not isinstance(rec, dict):
            continue
        read += 1
        attempts = rec.get("attempts")
        if isinstance(attempts, int) and attempts > 1:
            retried += 1
            retries += attempts - 1
        try:
            seconds = timeutil.parse_iso(rec["finished_at"]) - timeutil.parse_iso(rec["started_at"])
        except (KeyError, TypeError, ValueError, AttributeError):
            continue  # e.g. cancelled before it ever ran
        runtimes.append(round(max(0.0, seconds), 3))  # the record has milliseconds
    runtimes.sort()
    stats = {"count": len(runtimes), "sum": round(sum(runtimes), 6),
             "avg": round(sum(runtimes) / len(runtimes), 6) if runtimes else None,
             "p50": percentile(runtimes, 50), "p95": percentile(runtimes, 95),
             "max": runtimes[-1] if runtimes else None}
    return stats, {"jobs_retried": retried, "retries": retries, "records_read": read}


def collect(spool, now=None, sample=DEFAULT_SAMPLE):
    """The metrics of a spool as one dict (what `metrics --json` prints)."""
    started = time.monotonic()
    now = timeutil.now() if now is None else now
    lay = spool.layout
    pending = _job_names(lay.pending)
    failed_times = _mtimes(lay.failed)
    processing = _job_names(lay.processing)
    done = {st: _mtimes(lay.state_dir(st)) for st in ("completed", "dead")}
    counts = {"incoming": sum(1 for n in fsutil.listdir(lay.incoming) if n.endswith(".json") and not n.startswith(".")),
              "pending": len(pending), "processing": len(processing), "failed": len(failed_times),
              "completed": len(done["completed"]), "dead": len(done["dead"])}
    rows, sums, oldest, scheduled = _waiting(lay, now, pending, failed_times)
    counts["scheduled"] = scheduled
    counts["blocked"] = len(_job_names(lay.blocked))
    finished_total = counts["completed"] + counts["dead"]
    recent = {}
    for window, seconds in WINDOWS:
        recent[window] = {st: sum(1 for mtime, _ in done[st] if now - mtime <= seconds) for st in done}
    finished = [(mtime, st, name) for st in done for mtime, name in done[st]]
    runtime, retry_sample = _runtime(spool, finished, max(0, sample))
    running_retries = 0
    for name in processing:
        parsed = names.parse_processing(name)
        if parsed and parsed.attempt > 1:
            running_retries += 1
    workers = registry.live_workers(lay)
    return {
        "spool": spool.path,
        "paused": os.path.lexists(lay.paused),
        "generated_at": timeutil.iso(now),
        "counts": counts,
        "workers": len(workers),
        "success_rate": round(counts["completed"] / finished_total, 6) if finished_total else None,
        "finished": recent,
        "retries": {"waiting": counts["failed"], "running": running_retries, **retry_sample},
        "runtime_seconds": runtime,
        "sample": {"size": min(sample, finished_total), "limit": sample, "of": finished_total,
                   "note": f"runtime and retries from the {min(sample, finished_total)} most recently "
                           f"finished of {finished_total} completed/dead jobs"},
        "oldest_waiting": oldest,
        "waiting_age": {"buckets": [label for label, _ in AGE_BUCKETS], "rows": rows,
                        "sum_seconds": {k: round(v, 3) for k, v in sums.items()}},
        "collect_seconds": round(time.monotonic() - started, 4),
    }


# ---------------------------------------------------------------- Prometheus text format

def _label(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value):
    if value is None:
        return "NaN"
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def prometheus(info):
    """The metrics in the Prometheus text exposition format (node_exporter's textfile
    collector). Every sample carries a `spool` label, so several spools can share a host."""
    spool = f'spool="{_label(info["spool"])}"'
    out = []

    def metric(name, kind, help_text, samples):
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            inner = ",".join([spool] + [f'{k}="{_label(v)}"' for k, v in labels])
            out.append(f"{name}{suffix}{{{inner}}} {_num(value)}")

    c = info["counts"]
    metric("queuectl_jobs", "gauge", "Jobs per state folder.",
           [("", [("state", st)], c[st]) for st in ("pending", "processing", "failed", "completed", "dead")])
    metric("queuectl_scheduled_jobs", "gauge", "Pending jobs not due yet.", [("", [], c["scheduled"])])
    metric("queuectl_incoming_files", "gauge", "Dropped files in incoming/ not yet taken.", [("", [], c["incoming"])])
    metric("queuectl_workers", "gauge", "Live workers.", [("", [], info["workers"])])
    metric("queuectl_paused", "gauge", "1 while the spool is paused (`queuectl pause`).",
           [("", [], 1 if info.get("paused") else 0)])
    metric("queuectl_success_ratio", "gauge", "completed / (completed + dead); NaN when none finished.",
           [("", [], info["success_rate"])])
    metric("queuectl_finished_jobs_recent", "gauge", "Jobs that reached completed/ or dead/ within the window.",
           [("", [("state", st), ("window", f"{seconds}s")], info["finished"][window][st])
            for window, seconds in WINDOWS for st in ("completed", "dead")])
    r = info["retries"]
    metric("queuectl_retry_waiting_jobs", "gauge", "Jobs in failed/ waiting for a retry.", [("", [], r["waiting"])])
    metric("queuectl_retry_running_jobs", "gauge", "Running jobs on their second or later attempt.",
           [("", [], r["running"])])
    metric("queuectl_sample_retries", "gauge", "Retries among the sampled recently finished jobs.",
           [("", [], r["retries"])])
    rt = info["runtime_seconds"]
    metric("queuectl_job_runtime_seconds", "summary",
           "Runtime of the last attempt of the sampled recently finished jobs.",
           [("", [("quantile", "0.5")], rt["p50"]), ("", [("quantile", "0.95")], rt["p95"]),
            ("_sum", [], rt["sum"]), ("_count", [], rt["count"])])
    metric("queuectl_job_runtime_max_seconds", "gauge", "Longest runtime in the sample.", [("", [], rt["max"])])
    metric("queuectl_sample_jobs", "gauge", "Finished jobs whose records were sampled.",
           [("", [], info["sample"]["size"])])
    oldest = info["oldest_waiting"]
    metric("queuectl_oldest_waiting_seconds", "gauge", "Age of the oldest pending or failed job in its folder.",
           [("", [], oldest["age_seconds"] if oldest else 0)])
    wa = info["waiting_age"]
    samples = []
    for st, row in wa["rows"].items():
        total = 0
        for (label, bound), n in zip(AGE_BUCKETS, row):
            total += n
            samples.append(("_bucket", [("state", st), ("le", _num(float(bound)))], total))
        samples.append(("_sum", [("state", st)], wa["sum_seconds"][st]))
        samples.append(("_count", [("state", st)], total))
    metric("queuectl_waiting_age_seconds", "histogram", "Time waiting jobs have spent in pending/ or failed/.", samples)
    metric("queuectl_metrics_collect_seconds", "gauge", "Time taken to compute these metrics.",
           [("", [], info["collect_seconds"])])
    return "\n".join(out) + "\n"
