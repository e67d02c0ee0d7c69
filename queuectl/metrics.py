"""`queuectl metrics`: numbers about a spool, computed from file names and the finish journal.

What is read, so it stays fast on a spool of a million files:
- counts: folder listings (no file opened), as `status`; completed/, dead/ and incoming/ are
  counted without a string per name (fsutil.count_job_files).
- waiting ages (pending/ and failed/): a pending name carries the time the job entered
  pending/ (SEQ, ns); a failed file's mtime is when its failure was recorded (job files are
  written once and renamed, never rewritten: docs/protocol.md, rule 1). So a pending job costs no
  syscall and a failed job one lstat; no record is read.
- finishes in the last minute/hour, per minute, runtimes and retries: the journal files of
  the current and previous hour (journal.py), one line per finish; no job file is looked at.
  The cost grows with the finishes of the last two hours, not with the size of the spool.

The age of a waiting job here is the time since it entered its current folder; `status`
shows the oldest one by `created_at` (a retried job is older there than here).
"""
import math
import os
import time

from . import fsutil, journal, names, queues, registry, timeutil
from .job import queue_of
from .inventory import count_jobs

DEFAULT_SAMPLE = 1000
# qshape-like age buckets of waiting jobs: (label, upper bound in seconds)
AGE_BUCKETS = (("<1m", 60), ("1-5m", 300), ("5-15m", 900), ("15m-1h", 3600), ("1-4h", 14400),
               ("4-24h", 86400), (">1d", math.inf))
WINDOWS = (("last_minute", 60), ("last_hour", 3600))
FINAL = ("completed", "dead")
QUEUE_STATES = ("blocked", "pending", "processing", "failed")  # counted per queue (their records are read)
QUEUE_SCAN_LIMIT = 20_000  # records metrics reads at most for the per-queue counts
MINUTES = 60  # the per_minute block: the last 60 minutes, the current one so far last


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


def _recent(recent, now):
    """Finishes per window and final state, and per minute of the last hour (oldest first,
    the current minute, so far, last): completed, and failed attempts (outcome failed or dead)."""
    # a window has no upper end: a host whose clock runs ahead still counts, as before
    finished = {window: {st: counts[0] for st, counts in recent.counts(FINAL, [now - seconds, math.inf]).items()}
                for window, seconds in WINDOWS}
    first = (now // 60 - MINUTES + 1) * 60  # the start of the oldest minute shown
    edges = [first + 60 * i for i in range(MINUTES + 1)]
    rows = recent.counts(journal.OUTCOMES, edges)
    per_minute = {"minutes": [timeutil.iso(edge) for edge in edges[:-1]], "completed": rows["completed"],
                  "failed": [f + d for f, d in zip(rows["failed"], rows["dead"])]}
    return finished, per_minute


def _runtime(recent, sample):
    """Runtime and retry numbers from the `sample` newest final entries of the journal."""
    newest = recent.latest(sample, FINAL)
    runtimes = sorted(runtime for _, _, _, runtime in newest if runtime is not None)
    retried = sum(1 for _, _, attempts, _ in newest if attempts > 1)
    retries = sum(attempts - 1 for _, _, attempts, _ in newest if attempts > 1)
    stats = {"count": len(runtimes), "sum": round(sum(runtimes), 6),
             "avg": round(sum(runtimes) / len(runtimes), 6) if runtimes else None,
             "p50": percentile(runtimes, 50), "p95": percentile(runtimes, 95),
             "max": runtimes[-1] if runtimes else None}
    # records_read keeps its name: the finished jobs sampled (journal lines now, not records)
    return stats, {"jobs_retried": retried, "retries": retries, "records_read": len(newest)}


def collect(spool, now=None, sample=DEFAULT_SAMPLE):
    """The metrics of a spool as one dict (what `metrics --json` prints)."""
    started = time.monotonic()
    now = timeutil.now() if now is None else now
    lay = spool.layout
    pending = _job_names(lay.pending)
    failed_times = _mtimes(lay.failed)
    processing = _job_names(lay.processing)
    counts = {"incoming": fsutil.count_job_files(lay.incoming), "pending": len(pending),
              "processing": len(processing), "failed": len(failed_times),
              "completed": fsutil.count_job_files(lay.state_dir("completed")),
              "dead": fsutil.count_job_files(lay.state_dir("dead"))}
    rows, sums, oldest, scheduled = _waiting(lay, now, pending, failed_times)
    counts["scheduled"] = scheduled
    counts["blocked"] = fsutil.count_job_files(lay.blocked)
    finished_total = counts["completed"] + counts["dead"]
    recent = journal.Recent(lay.journal, now)
    finished, per_minute = _recent(recent, now)
    journaled = sum(counts[0] for counts in recent.counts(FINAL, [-math.inf, math.inf]).values())
    runtime, retry_sample = _runtime(recent, max(0, sample))
    size = retry_sample["records_read"]
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
        "finished": finished,
        "per_minute": per_minute,
        "retries": {"waiting": counts["failed"], "running": running_retries, **retry_sample},
        "runtime_seconds": runtime,
        "sample": {"size": size, "limit": sample, "of": journaled,
                   "note": f"runtime and retries from the {size} most recently finished of {journaled} "
                           "completed/dead jobs in the journal of this hour and the last"},
        "oldest_waiting": oldest,
        "waiting_age": {"buckets": [label for label, _ in AGE_BUCKETS], "rows": rows,
                        "sum_seconds": {k: round(v, 3) for k, v in sums.items()}},
        "queues": queue_counts(spool, {"pending": pending, "processing": processing}),
        "collect_seconds": round(time.monotonic() - started, 4),
    }


def queue_counts(spool, listed, limit=QUEUE_SCAN_LIMIT):
    """{queue: {state: jobs, "limit": n, "per_host": n}} for the jobs that wait or run (blocked,
    pending, processing, failed): their records say their queue, so each is read; None when more
    than `limit` would be (a backlog: the per-state totals above still count them)."""
    lay = spool.layout
    folders = {st: listed.get(st) or _job_names(lay.state_dir(st)) for st in QUEUE_STATES}
    if sum(len(n) for n in folders.values()) > limit:
        return None
    out = {}
    for name, settings in queues.read_all(lay).items():
        out[name] = dict(dict.fromkeys(QUEUE_STATES, 0), limit=settings.limit, per_host=settings.per_host)
    for st, found in folders.items():
        for name in found:
            try:
                record = fsutil.read_json(os.path.join(lay.state_dir(st), name))
            except (OSError, ValueError):
                continue
            if isinstance(record, dict):
                entry = out.setdefault(queue_of(record), dict(dict.fromkeys(QUEUE_STATES, 0), limit=None, per_host=None))
                entry[st] += 1
    return out


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
           [("", [("state", st)], c[st]) for st in ("blocked", "pending", "processing", "failed", "completed", "dead")])
    if info.get("queues") is not None:
        per_queue = sorted(info["queues"].items())
        metric("queuectl_queue_jobs", "gauge", "Jobs per queue and state, for the states that wait or run.",
               [("", [("queue", q), ("state", st)], entry[st]) for q, entry in per_queue for st in QUEUE_STATES])
        metric("queuectl_queue_limit", "gauge", "A queue's limit across all hosts (queue set --limit).",
               [("", [("queue", q)], entry["limit"]) for q, entry in per_queue if entry["limit"] is not None])
    metric("queuectl_scheduled_jobs", "gauge", "Pending jobs not due yet.", [("", [], c["scheduled"])])
    metric("queuectl_incoming_files", "gauge", "Dropped files in incoming/ not yet taken.", [("", [], c["incoming"])])
    metric("queuectl_workers", "gauge", "Live workers.", [("", [], info["workers"])])
    metric("queuectl_paused", "gauge", "1 while the spool is paused (`queuectl pause`).",
           [("", [], 1 if info.get("paused") else 0)])
    metric("queuectl_success_ratio", "gauge", "completed / (completed + dead); NaN when none finished.",
           [("", [], info["success_rate"])])
    metric("queuectl_finished_jobs_recent", "gauge",
           "Jobs that reached completed/ or dead/ within the window (from the journal).",
           [("", [("state", st), ("window", f"{seconds}s")], info["finished"][window][st])
            for window, seconds in WINDOWS for st in ("completed", "dead")])
    r = info["retries"]
    metric("queuectl_retry_waiting_jobs", "gauge", "Jobs in failed/ waiting for a retry.", [("", [], r["waiting"])])
    metric("queuectl_retry_running_jobs", "gauge", "Running jobs on their second or later attempt.",
           [("", [], r["running"])])
    metric("queuectl_sample_retries", "gauge", "Retries among the sampled recently finished jobs (journal).",
           [("", [], r["retries"])])
    rt = info["runtime_seconds"]
    metric("queuectl_job_runtime_seconds", "summary",
           "Runtime of the last attempt of the sampled recently finished jobs.",
           [("", [("quantile", "0.5")], rt["p50"]), ("", [("quantile", "0.95")], rt["p95"]),
            ("_sum", [], rt["sum"]), ("_count", [], rt["count"])])
    metric("queuectl_job_runtime_max_seconds", "gauge", "Longest runtime in the sample.", [("", [], rt["max"])])
    metric("queuectl_sample_jobs", "gauge", "Recently finished jobs sampled from the journal.",
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
