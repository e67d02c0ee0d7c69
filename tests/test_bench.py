"""The benchmark script works: CI runs its --quick mode, so the script a user runs by hand to get
the figures of docs/performance.md cannot rot; the figures themselves never come
from timed assertions."""
import json
import subprocess
import sys

import pytest

from helpers import ROOT, cli_env

pytestmark = pytest.mark.process


@pytest.mark.slow
def test_bench_quick_runs_and_writes_its_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "bench/bench.py", "--quick", "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env=cli_env(str(tmp_path / "unused")))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    for key in ("raw_spawn_per_s", "drain_per_s", "drain_vs_raw", "pickup_drop_ms_p50", "enqueue_vs_click",
                "batch_vs_raw", "backlog_vs_none", "status_s", "list_limit10_s", "worker_rss_mb_max",
                "worker_cpu_ms_per_job"):
        assert isinstance(data[key], (int, float)) and data[key] > 0 or key == "pickup_drop_ms_p50", key
    assert "drain" in result.stdout and "ratio" in result.stdout
