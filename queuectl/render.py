"""Text output of the CLI: tables, a record, status. No click here, no I/O but returning text."""
import json
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


def record(rec, log_path):
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


def status(info):
    c = info["counts"]
    lines = [f"spool  {info['spool']}", ""]
    rows = [
        ("incoming", c["incoming"], "dropped files not yet taken"),
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
        lines.append(table([[w["host"], w["pid"], w["job"] or "idle", w["since"] or "-"] for w in workers],
                           ("HOST", "PID", "JOB", "SINCE")))
    else:
        lines.append("workers: none running (start them: queuectl worker start)")
    oldest = info.get("oldest_waiting")
    if oldest:
        lines.append("")
        lines.append(f"oldest waiting: {oldest['id']} ({oldest['state']}, enqueued "
                     f"{age(time.time() - timeutil.parse_iso(oldest['created_at']))} ago)")
    return "\n".join(lines)


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
