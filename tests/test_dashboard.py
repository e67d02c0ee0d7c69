"""`queuectl dashboard`: read-only, escaped, paginated; end to end in headless Chromium."""
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request

import pytest

from helpers import QUEUECTL, ROOT, cli_env, tree_snapshot, wait_job, wait_until, write_final
from queuectl import Spool, dashboard, fsutil

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1500")


# ---------------------------------------------------------------- in-process server

@pytest.fixture
def served(spool):
    """(spool, base URL) of a dashboard served from a thread; shut down after the test."""
    server = dashboard.make_server(Spool(spool.path, create=False), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield spool, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def get(url, headers=None):
    """(status, content type, body text) of a GET; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode("utf-8")


def test_pages_show_counts_and_escape_everything(served):
    spool, base = served
    spool.enqueue("echo '<script>alert(1)</script>' & true", id="xss")
    spool.enqueue("true", id="later", run_at="+1h")
    write_final(spool.path, "dead", "boom", last_error="<b>bad</b> exit code 3")
    status, ctype, page = get(base + "/")
    assert status == 200 and ctype.startswith("text/html")
    assert re.search(r'id="count-pending">2<', page) and re.search(r'id="count-scheduled">1<', page)
    assert re.search(r'id="count-dead">1<', page)
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "<b>bad</b>" not in page and "&lt;b&gt;bad&lt;/b&gt; exit code 3" in page
    _, _, listing = get(base + "/state/pending")
    assert "<script>" not in listing and "&lt;script&gt;alert(1)&lt;/script&gt;" in listing
    _, _, job = get(base + "/job/xss")
    assert "<script>" not in job and "&lt;script&gt;" in job
    assert "script-src" not in get(base + "/")[2]  # no JavaScript at all


def test_blocked_jobs_show_what_they_wait_for_and_schedules_their_next_run(served):
    spool, base = served
    spool.enqueue("true", id="build")
    spool.enqueue("true", id="test")
    spool.moves.finish(spool.moves.claim(spool.names("pending")[0], "h", 1), 0)  # build completed
    spool.enqueue("make deploy", id="deploy", after=["build", "test"])
    spool.schedule_add("nightly", "30 2 * * *", command="make <backup>")
    _, _, page = get(base + "/")
    assert re.search(r'id="count-blocked">1<', page)
    waits = re.search(r'<div class="waits">(.*?)</div>', page).group(1)
    assert re.findall(r'href="/job/(\w+)".*?class="badge s-(\w+)"', waits) == [("build", "completed"), ("test", "pending")]
    assert "nightly" in page and "30 2 * * *" in page and "make &lt;backup&gt;" in page
    assert re.search(r"T02:30:00.000Z<br><span class=\"muted\">in ", page)
    _, _, listing = get(base + "/state/blocked")
    assert "waits for" in listing and "/job/deploy" in listing


def test_the_chart_draws_one_stacked_bar_per_minute():
    minutes = [f"2026-11-29T08:{m:02d}:00.000Z" for m in range(60)]
    ok = [0] * 60
    bad = [0] * 60
    ok[59], bad[59], ok[0] = 8, 2, 4
    svg = dashboard.chart_svg({"minutes": minutes, "completed": ok, "failed": bad})
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "<script" not in svg
    bars = re.findall(r'<rect class="(ok|bad)" x="([\d.]+)" y="([\d.]+)" width="[\d.]+" height="([\d.]+)"><title>'
                      r'(\d\d:\d\d) UTC: (\d+) completed, (\d+) failed', svg)
    assert [(b[0], b[4]) for b in bars] == [("ok", "08:00"), ("ok", "08:59"), ("bad", "08:59")]
    heights = {(b[0], b[4]): float(b[3]) for b in bars}
    assert heights[("ok", "08:59")] == pytest.approx(4 * heights[("bad", "08:59")])  # to scale
    assert heights[("ok", "08:59")] == pytest.approx(2 * heights[("ok", "08:00")])
    assert "12 completed, 2 failed attempts" in svg


def test_bad_ids_states_and_hosts_are_refused(served):
    spool, base = served
    write_final(spool.path, "completed", "ok")
    assert get(base + "/job/..%2F..%2Fetc%2Fpasswd")[0] == 400
    assert get(base + "/job/.hidden")[0] == 400
    assert get(base + "/api/job/a%00b")[0] == 400
    assert get(base + "/job/nope")[0] == 404
    assert get(base + "/job/nope/log")[0] == 404
    assert get(base + "/state/tmp")[0] == 400
    assert get(base + "/state/completed?page=x")[0] == 400
    assert get(base + "/nothing/here")[0] == 404
    # DNS rebinding: a page of another site reaching 127.0.0.1 carries its own Host header
    assert get(base + "/api/status", {"Host": "evil.example:80"})[0] == 403
    assert get(base + "/api/status", {"Host": "localhost"})[0] == 200
    req = urllib.request.Request(base + "/", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code in (405, 501)


def test_pagination_reads_only_the_page(served, monkeypatch):
    spool, base = served
    for i in range(120):
        write_final(spool.path, "completed", f"job{i:03d}")
    reads = []
    real = fsutil.read_json
    monkeypatch.setattr(fsutil, "read_json", lambda path: reads.append(path) or real(path))
    status, _, page = get(base + "/state/completed?page=2")
    assert status == 200
    assert "page 2 of 3" in page and "120 job(s)" in page
    shown = re.findall(r'href="/job/(job\d+)"', page)
    assert shown == [f"job{i:03d}" for i in range(50, 100)]
    assert len(reads) == 50, "only the records of the page shown are read"
    _, _, last = get(base + "/state/completed?page=99")  # clamped to the last page
    assert re.findall(r'href="/job/(job\d+)"', last) == [f"job{i:03d}" for i in range(100, 120)]
    _, _, rev = get(base + "/state/completed?desc=1&per=5")
    assert re.findall(r'href="/job/(job\d+)"', rev) == ["job119", "job118", "job117", "job116", "job115"]


def test_api_endpoints_and_log(served):
    spool, base = served
    write_final(spool.path, "completed", "ok")
    with open(spool.log_path("ok"), "wb") as fh:
        fh.write(b"=== attempt 1 ===\nhello <world>\n")
    spool.enqueue("true", id="soon", run_at="+1h")
    status, ctype, body = get(base + "/api/status")
    assert status == 200 and ctype.startswith("application/json")
    served, expected = json.loads(body), json.loads(json.dumps(spool.status()))
    for doc in (served, expected):
        doc["oldest_waiting"].pop("age_seconds")  # taken at two different instants
    assert served == expected, "the same document as `status --json`"
    assert json.loads(body)["counts"]["completed"] == 1
    assert json.loads(get(base + "/api/metrics")[2])["counts"]["completed"] == 1
    assert json.loads(get(base + "/api/job/ok")[2])["log_path"] == spool.log_path("ok")
    status, ctype, raw = get(base + "/job/ok/log")
    assert status == 200 and ctype.startswith("text/plain") and raw.endswith("hello <world>\n")
    assert "hello &lt;world&gt;" in get(base + "/job/ok")[2]
    assert "queuectl_jobs{" in get(base + "/metrics")[2]


def test_the_dashboard_never_writes(served, tmp_path):
    spool, base = served
    spool.enqueue("true", id="a")
    write_final(spool.path, "dead", "d")
    before = tree_snapshot(spool.path, ignore=())  # not even a lock file
    for path in ("/", "/state/pending", "/state/dead", "/job/a", "/job/d", "/job/d/log", "/api/status",
                 "/api/metrics", "/metrics", "/job/nope"):
        get(base + path)
    assert tree_snapshot(spool.path, ignore=()) == before
    # and a spool that does not exist is not created
    missing = str(tmp_path / "absent")
    server = dashboard.make_server(Spool(missing, create=False), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        assert get(f"http://127.0.0.1:{server.server_address[1]}/")[0] == 200
    finally:
        server.shutdown()
        server.server_close()
    assert not os.path.exists(missing)


def test_cli_bad_input_exits_2_in_one_line(cli):
    for args in (["dashboard", "--port", "70000"], ["dashboard", "--port", "x"],
                 ["dashboard", "--host", "no.such.host.invalid", "--port", "0"]):
        result = cli(*args, timeout=30)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
    result = cli("dashboard", "--host", "no.such.host.invalid", "--port", "0", timeout=30)
    assert result.stderr.strip().splitlines() == ["error: --host: cannot listen on 'no.such.host.invalid' "
                                                  "(not an address of this host)"]


# ---------------------------------------------------------------- end to end in Chromium

def start_dashboard(spool_dir):
    proc = subprocess.Popen([*QUEUECTL, "dashboard", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(spool_dir), cwd=ROOT, start_new_session=True)
    line = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(15)
    if not line or "http://" not in line[0]:
        proc.kill()
        raise AssertionError(f"dashboard did not start: {line} {proc.stderr.read() if proc.poll() is not None else ''}")
    return proc, re.search(r"http://\S+/", line[0]).group(0)


def chrome(tmp_path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("needs selenium (pip install selenium)")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chrome-profile'}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


@pytest.mark.slow
def save_for_docs(shot, name):
    """QUEUECTL_DOCS_SCREENSHOTS=1 refreshes docs/NAME; a plain test run leaves the tree clean."""
    if os.environ.get("QUEUECTL_DOCS_SCREENSHOTS"):
        shutil.copyfile(shot, os.path.join(ROOT, "docs", name))


def test_dashboard_in_chromium(cli, spool_dir, tmp_path):
    driver = chrome(tmp_path)
    from selenium.webdriver.common.by import By
    dash = None
    try:
        assert cli("config", "set", "backoff-base", "600").returncode == 0  # the retry waits in failed/
        for args in (["--id", "hello", "-c", "echo 'hello from the dashboard test'"],
                     ["--id", "build-42", "-c", "echo compiling; echo done"],
                     ["--id", "broken", "-c", "echo 'about to fail' >&2; exit 3", "--max-retries", "0"],
                     ["--id", "flaky", "-c", "echo 'network unreachable'; exit 7", "--max-retries", "3"],
                     ["--id", "nightly-report", "-c", "make report", "--run-at", "+2h"],
                     ["--id", "html", "-c", "echo '<b>not bold</b>'"],
                     ["--id", "long-job", "-c", "echo working; sleep 60", "--priority", "50"]):
            assert cli("enqueue", *args).returncode == 0
        assert cli("enqueue", "--id", "deploy", "-c", "make deploy", "--after", "long-job",
                   "--after", "build-42").returncode == 0
        assert cli("schedule", "add", "nightly-backup", "30 2 * * *", "-c", "make backup").returncode == 0
        workers = cli.start("worker", "start", "--count", "2")
        wait_job(spool_dir, "long-job", "processing", timeout=20)
        for job_id, state in (("hello", "completed"), ("build-42", "completed"), ("html", "completed"),
                              ("broken", "dead"), ("flaky", "failed")):
            wait_job(spool_dir, job_id, state, timeout=20)
        wait_until(lambda: len(cli.live_workers()) == 2, 15, what="two workers registered")

        from queuectl import metrics  # a busy worker writes its journal lines up to 1 s late
        wait_until(lambda: metrics.collect(Spool(spool_dir, create=False))["finished"]["last_minute"]
                   .get("completed", 0) >= 3, 10, what="the finishes in the journal")
        dash, url = start_dashboard(spool_dir)
        driver.get(url)
        spool = Spool(spool_dir, create=False)
        counts = spool.counts()
        for state in ("blocked", "pending", "scheduled", "processing", "failed", "completed", "dead"):
            shown = driver.find_element(By.ID, f"count-{state}").text
            assert shown == str(counts[state]), (state, shown, counts)
        assert counts["completed"] == 3 and counts["dead"] == 1 and counts["scheduled"] == 1
        assert counts["blocked"] == 1
        waits = driver.find_element(By.CSS_SELECTOR, ".waits").text.split()
        assert waits == ["long-job", "processing", "build-42", "completed"], waits
        assert "nightly-backup" in driver.find_element(By.TAG_NAME, "body").text
        chart = driver.find_element(By.ID, "chart")
        assert chart.size["width"] > 600 and chart.size["height"] > 100  # drawn, at its size
        bars = driver.find_elements(By.CSS_SELECTOR, "#chart rect.ok, #chart rect.bad")
        assert len(bars) >= 3  # this minute's completions and failures, and the legend's two
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "long-job" in body, "the running job is shown with its worker"
        assert "exit code 3" in body and "exit code 7" in body, "last errors shown"
        assert driver.find_elements(By.TAG_NAME, "script") == []
        assert driver.find_element(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]').get_attribute("content") == "5"
        tmp_shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(tmp_shot))
        assert tmp_shot.stat().st_size > 10_000  # a real picture, not an empty page
        save_for_docs(tmp_shot, "dashboard.png")

        driver.find_element(By.LINK_TEXT, "broken").click()  # from the dead-letter table
        wait_until(lambda: "/job/broken" in driver.current_url, 10, what="the job page")
        assert "about to fail" in driver.find_element(By.ID, "log").text
        assert "exit code 3" in driver.find_element(By.TAG_NAME, "body").text
        driver.get(url + "job/html")
        assert "<b>not bold</b>" in driver.find_element(By.ID, "log").text  # shown as text
        assert driver.find_elements(By.CSS_SELECTOR, "#log b") == []
        driver.save_screenshot(str(tmp_path / "job.png"))
        save_for_docs(tmp_path / "job.png", "dashboard-job.png")
        driver.get(url + "state/completed")
        assert {e.text for e in driver.find_elements(By.CSS_SELECTOR, "td a")} == {"hello", "build-42", "html"}

        assert cli("worker", "stop", "--now", "--timeout", "20").returncode == 0
        workers.wait(20)
    finally:
        driver.quit()
        if dash is not None:
            dash.terminate()
            try:
                assert dash.wait(10) == 0, dash.stderr.read()
            finally:
                dash.stdout.close()
                dash.stderr.close()
