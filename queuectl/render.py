"""Text output of the CLI: tables, a record, status. No click here, no I/O but returning text."""
import json
import re
import time

from . import timeutil

LIST_COLUMNS = ("ID", "STATE", "PRI", "TRIES", "RUN_AT", "COMMAND", "LAST_ERROR")


def to_json(value):
    return json.dumps(value, indent=2, ensure_ascii=False)


def _cut(text, width):
    text = "" if text is None else str(text).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows, headers):
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers)] + rows:
        cells = [c.ljust(widths[i]) if i < len(row) - 1 else c for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def job_table(records):
    if not records:
        return "(no jobs)"
    rows = []
    for r in records:
        tries = f"{r.get('attempts', 0)}/{(r.get('max_retries') or 0) + 1}"
        rows.append([r.get("id"), r.get("state"), r.get("priority"), tries, r.get("run_at") or "-",
                     _cut(r.get("command"), 40), _cut(r.get("last_error") or "", 40)])
    return table(rows, LIST_COLUMNS)


def short(value, width=48):
    """A value for a table cell: '-' for none, long text cut (the whole: `config get`)."""
    if value is None:
        return "-"
    text = str(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def summarized(rec):
    """A record to show to a person: the captured environment as a count, not its values
    (they may hold secrets; `show --json` has them)."""
    captured = rec.get("captured_env")
    if isinstance(captured, dict):
        return dict(rec, captured_env=f"{len(captured)} variables (values: show --json)")
    return rec


def record(rec, log_path):
    rec = summarized(rec)
    width = max(len(k) for k in rec) + 1
    lines = []
    for key, value in rec.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False)
        lines.append(f"{key + ':':<{width}} {'-' if value is None else value}")
    lines.append(f"{'log:':<{width}} {log_path}")
    return "\n".join(lines)


def age(seconds):
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _spool_line(info):
    paused = "   PAUSED: no job is claimed until `queuectl resume`" if info.get("paused") else ""
    return f"spool  {info['spool']}{paused}"


def status(info):
    c = info["counts"]
    lines = [_spool_line(info), ""]
    rows = [
        ("incoming", c["incoming"], "dropped files not yet taken"),
        ("blocked", c["blocked"], "waiting for the jobs in their `after`" if c["blocked"] else ""),
        ("pending", c["pending"], f"{c['scheduled']} scheduled for later" if c["scheduled"] else ""),
        ("processing", c["processing"], "running now"),
        ("failed", c["failed"], "waiting to retry" if c["failed"] else ""),
        ("completed", c["completed"], ""),
        ("dead", c["dead"], "dead-letter queue: `queuectl dlq list`" if c["dead"] else ""),
    ]
    lines.append(table([[n, v, note] for n, v, note in rows], ("STATE", "JOBS", "")))
    lines.append("")
    workers = info["workers"]
    if workers:
        lines.append(f"workers: {len(workers)}")
        lines.append(table([[w["host"], w["pid"], w["job"] or "idle", w["since"] or "-",
                             ",".join(w.get("queues") or ()) or "all", ",".join(map(str, w.get("gpus") or ())) or "-"]
                            for w in workers], ("HOST", "PID", "JOB", "SINCE", "QUEUES", "GPUS")))
    else:
        lines.append("workers: none running (start them: queuectl worker start)")
    if info.get("queues"):
        lines.append("")
        lines.append("queues: " + "; ".join(
            f"{q['name']} limit {short(q['limit'])}, per host {short(q['per_host'])}" + (", PAUSED" if q["paused"] else "")
            for q in sorted(info["queues"], key=lambda q: q["name"])))
    for waiting in info.get("waiting") or ():
        lines.append(f"waits: {waiting['id']}: {waiting['why']}")
    oldest = info.get("oldest_waiting")
    if oldest:
        lines.append("")
        lines.append(f"oldest waiting: {oldest['id']} ({oldest['state']}, enqueued "
                     f"{age(time.time() - timeutil.parse_iso(oldest['created_at']))} ago)")
    return "\n".join(lines)


def schedules(entries):
    if not entries:
        return "no schedules (add one: queuectl schedule add NAME CRON -c COMMAND)"
    rows = [[e["name"], e["cron"], e["next"], e["last_fired_id"] or "-", e["fired"], e["skipped"],
             _cut(e["command"], 40)] for e in entries]
    return table(rows, ("NAME", "CRON", "NEXT", "LAST FIRED", "FIRED", "SKIPPED", "COMMAND"))


def fsck(problems, root, repaired):
    if not problems:
        return f"{root}: no problems found"
    rows = []
    for p in problems:
        where = p.path[len(root) + 1:] if p.path.startswith(root + "/") else p.path
        note = p.done if repaired else ("repairable: --repair" if p.repair else "needs a person")
        rows.append([p.kind, where, p.detail, note or "-"])
    fixed = sum(1 for p in problems if p.done and not p.done.startswith("not repaired"))
    tail = f"{len(problems)} problem(s)" + (f", {fixed} repaired" if repaired else "")
    return table(rows, ("PROBLEM", "PATH", "DETAIL", "REPAIR")) + "\n" + tail


# ---------------------------------------------------------------- metrics

def seconds(value):
    """A duration for people: 0.012s, 4.20s, 3m05s, 2h10m."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.3f}s" if value < 1 else f"{value:.2f}s"
    return age(value)


def metrics(info):
    """`queuectl metrics` as text: counts, rates, runtimes, and a qshape-like age table."""
    c = info["counts"]
    lines = [_spool_line(info), ""]
    lines.append(table([[st, c[st], f"{c['scheduled']} scheduled for later" if st == "pending" and c["scheduled"] else ""]
                        for st in ("incoming", "blocked", "pending", "processing", "failed", "completed", "dead")],
                       ("STATE", "JOBS", "")))
    lines.append("")
    rate = info["success_rate"]
    lines.append(f"success rate:  {'-' if rate is None else f'{rate * 100:.1f}%'}"
                 f" ({c['completed']} completed, {c['dead']} dead)")
    f = info["finished"]
    lines.append(f"finished:      last minute {f['last_minute']['completed']} completed, {f['last_minute']['dead']} dead;"
                 f" last hour {f['last_hour']['completed']} completed, {f['last_hour']['dead']} dead")
    r = info["retries"]
    lines.append(f"retries:       {r['waiting']} waiting in failed/, {r['running']} running;"
                 f" {r['retries']} retries by {r['jobs_retried']} of the sampled jobs")
    rt = info["runtime_seconds"]
    lines.append(f"runtime:       avg {seconds(rt['avg'])}  p50 {seconds(rt['p50'])}  p95 {seconds(rt['p95'])}"
                 f"  max {seconds(rt['max'])}")
    lines.append(f"               ({info['sample']['note']})")
    lines.append(f"workers:       {info['workers']}")
    oldest = info["oldest_waiting"]
    lines.append("oldest waiting: " + (f"{oldest['id']} ({oldest['state']}, {age(oldest['age_seconds'])} in "
                                       f"{oldest['state']}/)" if oldest else "-"))
    lines.append("")
    wa = info["waiting_age"]
    rows = [[st] + row + [sum(row)] for st, row in wa["rows"].items()]
    totals = [sum(col) for col in zip(*(r[1:] for r in rows))]
    lines.append(table(rows + [["TOTAL"] + totals], ["WAITING"] + wa["buckets"] + ["TOTAL"]))
    per_queue = info.get("queues")
    if per_queue and set(per_queue) != {"default"}:
        lines.append("")
        lines.append(table([[q, short(e["limit"]), e["pending"], e["processing"], e["blocked"], e["failed"]]
                            for q, e in sorted(per_queue.items())],
                           ("QUEUE", "LIMIT", "PENDING", "RUNNING", "BLOCKED", "FAILED")))
    return "\n".join(lines)


# ---------------------------------------------------------------- colour

EVENT_COLOURS = {"completed": "32", "failed": "33", "dead": "31", "taken back": "35"}
_EVENT = re.compile(r"\S+ \S+ job \S+ (completed|failed|dead|taken back)\b")  # TIME WHO job ID EVENT


def use_colour(stream, environ):
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    if environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def colour_line(line):
    """A worker event line coloured by its event word: completed green, failed yellow, dead
    red, taken back magenta; any other line unchanged. The word right after `job ID` counts,
    so a command that prints "failed" does not colour its `started` line."""
    m = _EVENT.match(line)
    return f"\x1b[{EVENT_COLOURS[m.group(1)]}m{line}\x1b[0m" if m else line


def queues(entries):
    """`queue list`: a row per queue."""
    if not entries:
        return "no queue has jobs or settings"
    rows = []
    for e in entries:
        c = e["counts"]
        rows.append([e["name"], short(e["limit"]), short(e["per_host"]), "yes" if e["paused"] else "",
                     c["pending"], c["processing"], c["blocked"], c["failed"], c["completed"], c["dead"]])
    return table(rows, ("QUEUE", "LIMIT", "PER-HOST", "PAUSED", "PENDING", "RUNNING", "BLOCKED", "FAILED",
                        "COMPLETED", "DEAD"))
