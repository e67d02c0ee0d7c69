"""bench/scaling_model.py: the claim-contention simulation of docs/scaling.md runs, and its
strategies order as the measurements on the test bed did (head worst, shares best)."""
import os
import sys

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import scaling_model  # noqa: E402


def lost_per_job(strategy, hosts=3, per_host=4):
    lost, won = scaling_model.simulate(hosts, per_host, 600, 0.6, 0.005, 2.0, strategy)
    assert won == 600  # every job claimed exactly once
    return lost


def test_shares_lose_far_fewer_claims_than_taking_the_head():
    head, spread, share = (lost_per_job(s) for s in ("head", "spread", "share"))
    assert head > spread > share
    assert share < 0.2 < head


def test_one_worker_never_loses_a_claim():
    assert lost_per_job("head", hosts=1, per_host=1) == 0


def test_the_script_prints_its_table(capsys):
    assert scaling_model.main(["--jobs", "200", "--sizes", "2x2"]) == 0
    out = capsys.readouterr().out
    assert "| 2 x 2 |" in out and "share" in out
