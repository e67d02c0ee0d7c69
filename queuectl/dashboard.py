"""`queuectl dashboard`: a read-only web page of a spool, rendered on the server.

Standard library only (http.server's ThreadingHTTPServer): a page that a person reloads
every few seconds needs no framework, and a dependency would be the only one the workers
never use. Read-only by construction: GET and HEAD only; the spool is opened without
creating it and only the reading methods (inventory.py, metrics.py) are called. Every value
is escaped (html.escape); ids are checked with job.check_id before any path is built.
Bound to 127.0.0.1 by default; on a loopback address the Host header must name a loopback
host too, so a web page of another site cannot read it through DNS rebinding.

    /                      counts, workers, rates, waiting ages, jobs needing attention
    /state/STATE?page=N    one state folder, paginated over its sorted file names: only the
                           records of the page shown are read (a folder may hold millions)
    /job/ID                the record and the tail of the log;  /job/ID/log  the whole log
    /api/status            `status --json`;  /api/metrics  `metrics --json`;  /api/job/ID
    /metrics               the Prometheus text format (`metrics --prometheus`)
"""
import html
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

from . import dependencies, fsutil, metrics, render, timeutil
from .errors import FieldError, JobNotFound
from .inventory import as_read
from .job import STATES, check_id
from .schedules import Schedules

LOG_TAIL = 256 * 1024
PAGE_SIZE = 50
FINAL = ("completed", "dead")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:10px 24px;display:flex;gap:18px;align-items:baseline;flex-wrap:wrap}
header a{color:#fff;text-decoration:none}header .brand{font-weight:700;font-size:18px}
header .spool{font-family:ui-monospace,Menlo,Consolas,monospace;color:#c9d1d9}
header .when{margin-left:auto;color:#8b949e;font-size:13px}
header nav{display:flex;gap:6px;flex-wrap:wrap}header nav a{padding:1px 9px;border-radius:10px;background:#32383f;font-size:13px}
header nav a b{color:var(--c);filter:brightness(1.6)}
main{padding:18px 24px;max-width:1280px}
h1{font-size:20px;margin:4px 0 14px}h2{font-size:16px;margin:26px 0 8px}
.paused{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:8px 14px;font-weight:600}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px}
.card{background:#fff;border:1px solid #d0d7de;border-left:6px solid var(--c);border-radius:6px;padding:8px 14px;
text-decoration:none;color:inherit}.card:hover{border-color:var(--c)}
.card .n{font-size:28px;font-weight:600;display:block;color:var(--c)}.card .l{font-weight:600}
.card .d{display:block;color:#6e7781;font-size:12px}td.zero{color:#c4cbd3}
pre.log .hdr{color:#79c0ff;font-weight:600}
table{border-collapse:collapse;background:#fff;border:1px solid #d0d7de;width:100%}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{background:#f6f8fa;font-size:13px;color:#57606a}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.cmd,td.mono,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;word-break:break-all}
td.err{color:#9a3412}
.badge{display:inline-block;padding:0 8px;border-radius:10px;color:#fff;background:var(--c);font-size:12px}
.s-blocked{--c:#9a6700}.s-incoming{--c:#6e7781}.s-pending{--c:#0969da}.s-scheduled{--c:#54aeff}.s-processing{--c:#8250df}
.s-failed{--c:#bf8700}.s-completed{--c:#1a7f37}.s-dead{--c:#cf222e}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;background:#fff;border:1px solid #d0d7de;
padding:10px 16px;border-radius:6px}.facts dt{color:#57606a}.facts dd{margin:0}
pre.log{background:#0d1117;color:#e6edf3;padding:12px 14px;border-radius:6px;overflow:auto;max-height:70vh;
font:13px/1.4 ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-all}
.pager{margin:10px 0;display:flex;gap:14px;align-items:center}.muted{color:#6e7781}
a{color:#0969da}
.chart{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;display:block;max-width:760px}
.chart text{font:11px system-ui,sans-serif;fill:#57606a}.chart .ok{fill:#1a7f37}.chart .bad{fill:#cf222e}
.chart .grid{stroke:#eaeef2}.waits{display:flex;flex-wrap:wrap;gap:4px 10px}
"""


def esc(value):
    return html.escape("-" if value is None else str(value), quote=True)


def _job_link(job_id):
    return f'<a class="mono" href="/job/{quote(job_id)}">{esc(job_id)}</a>'


def _badge(state):
    return f'<span class="badge s-{esc(state)}">{esc(state)}</span>'


def _ago(iso_text, now):
    """'5m02s ago' or 'in 3m00s' of a record's time; '' when it is not one."""
    try:
        delta = now - timeutil.parse_iso(iso_text)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return ""
    return f"{render.age(delta)} ago" if delta >= 0 else f"in {render.age(-delta)}"


class Pages:
    """HTML of each page from a read-only spool."""

    def __init__(self, spool, refresh=5):
        self.spool, self.refresh = spool, refresh

    def page(self, title, body, refresh=True, counts=None):
        c = counts or metrics.counts(self.spool.layout)
        nav = " ".join(f'<a class="s-{st}" href="/state/{st}">{st} <b>{c[st]}</b></a>' for st in STATES)
        meta = f'<meta http-equiv="refresh" content="{self.refresh}">' if refresh and self.refresh else ""
        return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
                f'<meta name="viewport" content="width=device-width,initial-scale=1">'
                f"<title>{esc(title)} · queuectl</title><style>{CSS}</style></head><body>"
                f'<header><a class="brand" href="/">queuectl</a><span class="spool">{esc(self.spool.path)}</span>'
                f'<nav>{nav}</nav><span class="when">{esc(timeutil.iso(timeutil.now()))} · read-only'
                f"{f' · refreshes every {self.refresh}s' if meta else ''}</span></header>"
                f"<main>{body}</main></body></html>")

    def overview(self):
        spool, now = self.spool, timeutil.now()
        info = metrics.collect(spool, now=now, sample=200)
        c = info["counts"]
        cards = []
        for st in ("incoming", "blocked", "pending", "scheduled", "processing", "failed", "completed", "dead"):
            href = f"/state/{st}" if st in STATES else ("/state/pending" if st == "scheduled" else None)
            label = {"scheduled": "pending, not due yet", "incoming": "dropped, not yet taken",
                     "blocked": "waiting for other jobs",
                     "pending": "waiting to run", "processing": "running now", "failed": "waiting to retry",
                     "completed": "succeeded", "dead": "dead-letter queue"}[st]
            inner = (f'<span class="n" id="count-{st}">{c[st]}</span><span class="l">{esc(st)}</span>'
                     f'<span class="d">{esc(label)}</span>')
            cards.append(f'<a class="card s-{st}" href="{href}">{inner}</a>' if href
                         else f'<div class="card s-{st}">{inner}</div>')
        rt, fin, rate = info["runtime_seconds"], info["finished"], info["success_rate"]
        oldest = info["oldest_waiting"]
        facts = [
            ("success rate", "-" if rate is None else f"{rate * 100:.1f}%  ({c['completed']} completed, {c['dead']} dead)"),
            ("finished", f"last minute: {fin['last_minute']['completed']} completed, {fin['last_minute']['dead']} dead"
                         f" · last hour: {fin['last_hour']['completed']} completed, {fin['last_hour']['dead']} dead"),
            ("runtime", f"avg {render.seconds(rt['avg'])} · p50 {render.seconds(rt['p50'])} · "
                        f"p95 {render.seconds(rt['p95'])} · max {render.seconds(rt['max'])}  ({info['sample']['note']})"),
            ("retries", f"{info['retries']['waiting']} waiting in failed/, {info['retries']['running']} running"),
            ("oldest waiting", f"{oldest['id']} ({oldest['state']}, {render.age(oldest['age_seconds'])})" if oldest else "-"),
        ]
        paused = ('<p class="paused" id="paused">Paused: no worker claims a new job until '
                  '<code>queuectl resume</code>; running jobs finish.</p>' if info.get("paused") else "")
        body = [f'<h1>Spool overview</h1>{paused}<div class="cards">{"".join(cards)}</div>',
                "<h2>Numbers</h2>" + _facts(facts)]
        if info.get("per_minute"):
            body.append("<h2>Finished per minute, last hour</h2>" + chart_svg(info["per_minute"]))
        body.append("<h2>Workers</h2>" + self._workers(now))
        if info.get("queues") and set(info["queues"]) != {"default"}:
            body.append("<h2>Queues</h2>" + _queues_table(info["queues"]))
        blocked = spool.names("blocked")
        if blocked:
            body.append(f'<h2>Blocked: waiting for other jobs · <a href="/state/blocked">all {len(blocked)}</a></h2>'
                        + self._jobs("blocked", blocked[:10], now))
        body.append("<h2>Schedules</h2>" + self._schedules(now))
        wa = info["waiting_age"]
        rows = [[_badge(st)] + [str(n) for n in row] + [str(sum(row))] for st, row in wa["rows"].items()]
        body.append("<h2>Waiting jobs by age (time in their folder)</h2>"
                    + _table(["state"] + wa["buckets"] + ["total"], rows, num_from=1))
        for st, title, take in (("failed", "Waiting to retry (next first)", "first"),
                                ("dead", "Dead-letter queue (last by name)", "last")):
            listed = spool.names(st)
            chosen = listed[:10] if take == "first" else listed[-10:][::-1]
            body.append(f'<h2>{esc(title)} · <a href="/state/{st}">all {len(listed)}</a></h2>'
                        + self._jobs(st, chosen, now))
        return self.page("overview", "".join(body), counts=c)

    def _schedules(self, now):
        entries = Schedules(self.spool.layout).list(now)
        if not entries:
            return '<p class="muted">None (add one: <span class="mono">queuectl schedule add NAME CRON -c CMD</span>).</p>'
        rows = [[f'<span class="mono">{esc(e["name"])}</span>', f'<span class="mono">{esc(e["cron"])}</span>',
                 f'{esc(e["next"])}<br><span class="muted">{esc(_ago(e["next"], now))}</span>',
                 _job_link(e["last_fired_id"]) if e["last_fired_id"] else "-", str(e["fired"]), str(e["skipped"]),
                 f'<span class="cmd">{esc(_cut(e["command"], 160))}</span>'] for e in entries]
        return _table(["name", "cron (UTC)", "next", "last fired", "fired", "skipped", "command"], rows)

    def _waits_for(self, rec):
        """The jobs a blocked job waits for, each with its state."""
        after = rec.get("after") if isinstance(rec.get("after"), list) else []
        items = []
        for dep in after:
            if not isinstance(dep, str):
                continue
            try:
                state = dependencies.dependency_state(self.spool, dep)
                if state == dependencies.WAITING:  # which folder: blocked, pending, processing, failed
                    found = self.spool.find(dep)
                    state = found[0] if found else state
            except FieldError:
                continue
            items.append(f"<span>{_job_link(dep)} {_badge(state)}</span>")
        return f'<div class="waits">{"".join(items)}</div>' if items else "-"

    def _workers(self, now):
        info = {"workers": workers(self.spool)}
        if not info["workers"]:
            return '<p class="muted">No worker running (start them: <span class="mono">queuectl worker start</span>).</p>'
        rows = [[esc(w["host"]), esc(w["pid"]), _job_link(w["job"]) if w["job"] else '<span class="muted">idle</span>',
                 esc(w["since"]) + (f' <span class="muted">({esc(_ago(w["since"], now))})</span>' if w["since"] else ""),
                 esc(w.get("started_at")), esc(",".join(w.get("queues") or ()) or "all"),
                 esc(",".join(map(str, w.get("gpus") or ())) or "-")] for w in info["workers"]]
        return _table(["host", "pid", "job", "since", "worker started", "queues", "GPUs"], rows)

    def _jobs(self, state, listed, now):
        """A table of the jobs behind these file names: one record read per row."""
        if not listed:
            return '<p class="muted">(none)</p>'
        rows = []
        for name in listed:
            try:
                rec = fsutil.read_json(os.path.join(self.spool.layout.state_dir(state), name))
            except (OSError, ValueError):
                continue  # moved meanwhile, or damaged (fsck's business)
            if not isinstance(rec, dict):
                continue
            rec = as_read(state, name, rec)  # in processing/, the running attempt is in the name
            job_id = rec.get("id") if isinstance(rec.get("id"), str) else None
            tries = f"{rec.get('attempts', 0)}/{(rec.get('max_retries') or 0) + 1}"
            when = rec.get("run_at") if state in ("pending", "failed") else rec.get("finished_at") or rec.get("started_at")
            when_html = f'{esc(when)}<br><span class="muted">{esc(_ago(when, now))}</span>' if when else "-"
            rows.append([_job_link(job_id) if job_id else esc(name), esc(rec.get("priority")), esc(tries),
                         self._waits_for(rec) if state == "blocked" else when_html,
                         f'<span class="cmd">{esc(_cut(rec.get("command"), 160))}</span>',
                         f'<span class="err">{esc(_cut(rec.get("last_error"), 200))}</span>' if rec.get("last_error") else ""])
        when_title = {"pending": "run at", "failed": "retry at", "blocked": "waits for"}.get(state, "finished")
        return _table(["id", "pri", "tries", when_title, "command", "last error"], rows, mono=(4,))

    def state(self, state, query):
        if state not in STATES:
            raise BadRequest(f"no such state: {state!r} (one of {', '.join(STATES)})")
        listed = self.spool.names(state)
        per = _int(query, "per", PAGE_SIZE, 1, 500)
        pages = max(1, -(-len(listed) // per))
        page = _int(query, "page", 1, 1, pages)
        desc = query.get("desc", ["0"])[0] == "1"
        ordered = listed[::-1] if desc else listed
        chosen = ordered[(page - 1) * per: page * per]
        order = {"pending": "claim order", "failed": "next retry first"}.get(state, "by file name")
        link = lambda p, text: f'<a href="/state/{state}?page={p}&per={per}{"&desc=1" if desc else ""}">{text}</a>'
        pager = (f'<div class="pager">{link(1, "« first") if page > 1 else ""} {link(page - 1, "‹ prev") if page > 1 else ""}'
                 f' <span>page {page} of {pages} · {len(listed)} job(s) · {esc(order)}{", reversed" if desc else ""}</span> '
                 f'{link(page + 1, "next ›") if page < pages else ""} {link(pages, "last »") if page < pages else ""}'
                 f' <a href="/state/{state}?per={per}{"" if desc else "&desc=1"}">reverse</a></div>')
        body = f"<h1>{_badge(state)} jobs</h1>{pager}{self._jobs(state, chosen, timeutil.now())}{pager}"
        return self.page(state, body)

    def job(self, job_id):
        rec = render.summarized(self.spool.get(job_id))
        state = rec.get("state")
        facts = [(k, json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v) for k, v in rec.items()]
        facts.append(("log", self.spool.log_path(job_id)))
        data, size = read_log_tail(self.spool.log_path(job_id), LOG_TAIL)
        note = f"last {len(data)} of {size} bytes · " if size > len(data) else ""
        body = (f'<h1>Job <span class="mono">{esc(job_id)}</span> {_badge(state)}</h1>' + _facts(facts, mono=True)
                + f'<h2>Log <span class="muted">({note}<a href="/job/{quote(job_id)}/log">raw</a> · '
                  f'<a href="/api/job/{quote(job_id)}">JSON</a>)</span></h2>'
                + (f'<pre class="log" id="log">{_log_html(data)}</pre>' if size
                   else '<p class="muted" id="log">(no output yet)</p>'))
        return self.page(f"job {job_id}", body, refresh=state not in FINAL)


def chart_svg(per_minute, width=720, height=150):
    """Completions (green) and failed attempts (red) per minute as stacked bars: an inline SVG,
    rendered here so the page needs no JavaScript. Each bar has a <title> for a tooltip."""
    ok, bad, minutes = per_minute["completed"], per_minute["failed"], per_minute["minutes"]
    n = len(minutes)
    top = max([a + b for a, b in zip(ok, bad)] + [1])
    top += top % 2 if top > 1 else 0  # even: the middle grid line gets a whole number
    left, bottom, plot_h = 34, 20, height - 30
    step = (width - left - 6) / max(n, 1)
    scale = plot_h / top
    parts = [f'<svg class="chart" id="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" xmlns="http://www.w3.org/2000/svg"><title>jobs finished per minute over the last '
             f'hour: {sum(ok)} completed, {sum(bad)} failed attempts</title>']
    for frac in (0, 0.5, 1):
        y = height - bottom - plot_h * frac
        parts.append(f'<line class="grid" x1="{left}" x2="{width - 4}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{round(top * frac)}</text>')
    for i, (minute, a, b) in enumerate(zip(minutes, ok, bad)):
        x = left + i * step + 1
        h_ok, h_bad = a * scale, b * scale
        base = height - bottom
        tip = f"<title>{esc(minute[11:16])} UTC: {a} completed, {b} failed</title>"
        if a:
            parts.append(f'<rect class="ok" x="{x:.1f}" y="{base - h_ok:.1f}" width="{step - 2:.1f}" '
                         f'height="{h_ok:.1f}">{tip}</rect>')
        if b:
            parts.append(f'<rect class="bad" x="{x:.1f}" y="{base - h_ok - h_bad:.1f}" width="{step - 2:.1f}" '
                         f'height="{h_bad:.1f}">{tip}</rect>')
        ago = n - 1 - i  # the last bar is the current minute
        if ago and ago % 10 == 0:
            parts.append(f'<text x="{x:.1f}" y="{height - 5}">-{ago}m</text>')
    parts.append(f'<text x="{width - 6}" y="{height - 5}" text-anchor="end">now</text>'
                 f'<rect class="ok" x="{width - 230}" y="4" width="10" height="10"/>'
                 f'<text x="{width - 216}" y="13">completed</text>'
                 f'<rect class="bad" x="{width - 140}" y="4" width="10" height="10"/>'
                 f'<text x="{width - 126}" y="13">failed attempts</text></svg>')
    return "".join(parts)


def _queues_table(per_queue):
    rows = [[f'<span class="mono">{esc(q)}</span>', esc(render.short(e["limit"])), esc(render.short(e["per_host"])),
             str(e["pending"]), str(e["processing"]), str(e["blocked"]), str(e["failed"])]
            for q, e in sorted(per_queue.items())]
    return _table(["queue", "limit", "per host", "pending", "running", "blocked", "failed"], rows, num_from=3)


def status(spool):
    """What `status --json` prints."""
    return spool.status()


def workers(spool):
    return spool.workers()


def read_log_tail(path, limit):
    """(last `limit` bytes (None: all), size) of a log, never through a symlink; (b'', 0) when absent."""
    try:
        fd = fsutil.open_nofollow(path)
    except OSError:
        return b"", 0
    try:
        size = os.fstat(fd).st_size
        limit = size if limit is None else limit
        return os.pread(fd, limit, max(0, size - limit)), size
    finally:
        os.close(fd)


def _log_html(data):
    """A log as escaped HTML, the attempt header lines (logs.header) highlighted."""
    out = []
    for line in data.decode("utf-8", "replace").splitlines(keepends=True):
        text = esc(line)
        out.append(f'<span class="hdr">{text}</span>' if line.startswith("=== queuectl attempt ") else text)
    return "".join(out)


def _cut(text, width):
    text = "" if text is None else str(text)
    return text if len(text) <= width else text[:width - 1] + "…"


def _int(query, key, default, low, high):
    raw = query.get(key, [None])[0]
    if raw is None:
        return default
    try:
        return max(low, min(high, int(raw)))
    except ValueError:
        raise BadRequest(f"{key}: not a number: {raw[:40]!r}") from None


def _facts(pairs, mono=False):
    cls = ' class="mono"' if mono else ""
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd{cls}>{esc(v)}</dd>" for k, v in pairs) + "</dl>"


def _table(headers, rows, num_from=None, mono=()):
    """Cells are HTML already escaped by the caller."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = "num" if num_from is not None and i >= num_from else ("cmd" if i in mono else "")
            cls += " zero" if cls == "num" and cell == "0" else ""
            cells.append(f'<td class="{cls}">{cell}</td>' if cls else f"<td>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class BadRequest(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    server_version = "queuectl-dashboard"
    pages = None          # set by make_server
    loopback_only = True

    def log_message(self, format, *args):  # quiet: one line per error only (see send_error)
        pass

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        try:
            status, ctype, body = self.route()
        except BadRequest as exc:
            status, ctype, body = 400, "text/plain", f"bad request: {exc}\n"
        except FieldError as exc:
            status, ctype, body = 400, "text/plain", f"bad request: {exc}\n"
        except JobNotFound as exc:
            status, ctype, body = 404, "text/plain", f"{exc}\n"
        except Exception as exc:  # one line to stderr and to the client, never a traceback page
            print(f"dashboard: {self.path[:200]!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
            status, ctype, body = 500, "text/plain", "internal error (see the dashboard's stderr)\n"
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", f"{ctype}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def route(self):
        if self.loopback_only and not _is_loopback(_host_of(self.headers.get("Host") or "")):
            return 403, "text/plain", "forbidden: this dashboard answers to localhost only\n"
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = parse_qs(url.query)
        pages = self.pages
        if not parts:
            return 200, "text/html", pages.overview()
        if parts[0] == "state" and len(parts) == 2:
            return 200, "text/html", pages.state(parts[1], query)
        if parts[0] == "job" and len(parts) in (2, 3):
            job_id = check_id(parts[1], "id")
            if len(parts) == 2:
                return 200, "text/html", pages.job(job_id)
            if parts[2] == "log":
                pages.spool.get(job_id)  # 404 for an unknown job
                data, _ = read_log_tail(pages.spool.log_path(job_id), None)
                return 200, "text/plain", data
        if parts == ["api", "status"]:
            return 200, "application/json", render.to_json(status(pages.spool))
        if parts == ["api", "metrics"]:
            return 200, "application/json", render.to_json(metrics.collect(pages.spool))
        if parts[:2] == ["api", "job"] and len(parts) == 3:
            job_id = check_id(parts[2], "id")
            rec = render.summarized(pages.spool.get(job_id))  # a web page never shows a captured environment
            return 200, "application/json", render.to_json(dict(rec, log_path=pages.spool.log_path(job_id)))
        if parts == ["metrics"]:
            return 200, "text/plain; version=0.0.4", metrics.prometheus(metrics.collect(pages.spool))
        return 404, "text/plain", "not found\n"


def make_server(spool, host="127.0.0.1", port=8080, refresh=5):
    """A ThreadingHTTPServer serving `spool` read-only; `port` 0 picks a free one."""
    handler = type("BoundHandler", (Handler,),
                   {"pages": Pages(spool, refresh), "loopback_only": _is_loopback(host)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def _host_of(header):
    """The host part of a Host header: 'localhost:8080' -> 'localhost', '[::1]:80' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.split(":", 1)[0]


def _is_loopback(host):
    return host in LOOPBACK_NAMES or host.startswith("127.")


def serve(spool, host, port, refresh=5, out=None):
    """Serve until SIGINT/SIGTERM; prints the URL first (with the real port when 0 was asked)."""
    out = out or sys.stdout
    server = make_server(spool, host, port, refresh)
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    out.write(f"queuectl dashboard: http://{shown}:{bound_port}/ (read-only; spool {spool.path}; Ctrl+C stops)\n")
    out.flush()

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
