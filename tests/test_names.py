"""File names of job files: plain byte order of pending/ is claim order, failed/ is retry order."""
import random
import string

import pytest

from queuectl import names
from queuectl.job import ID_PATTERN

MAX_TS_MS = 253402300799_000  # 9999-12-31T23:59:59Z
ID_CHARS = string.ascii_letters + string.digits + "._-"


def random_id(rng):
    first = rng.choice(string.ascii_letters + string.digits)
    return first + "".join(rng.choice(ID_CHARS) for _ in range(rng.randint(0, 40)))


def random_due(rng):
    """Unix seconds with millisecond precision (what a name can hold), sometimes clustered."""
    if rng.random() < 0.5:
        ms = rng.randint(0, MAX_TS_MS)
    else:
        ms = 1_800_000_000_000 + rng.randint(0, 5000)  # many near-ties
    return ms / 1000


def random_seq(rng):
    if rng.random() < 0.5:
        return rng.randint(0, 10**19 - 1)
    return 1_795_957_279_123_456_789 + rng.randint(0, 50)


@pytest.mark.parametrize("seed", range(20))
def test_pending_byte_order_is_claim_order(seed):
    rng = random.Random(seed)
    jobs = []
    for _ in range(300):
        priority = rng.choice([0, 1, 5, 10, 10, 10, 999, rng.randint(0, 999)])
        jobs.append((priority, random_due(rng), random_seq(rng), random_id(rng)))
    by_name = sorted(jobs, key=lambda j: names.pending_name(*j))
    by_claim_order = sorted(jobs, key=lambda j: (j[0], round(j[1] * 1000), j[2]))
    # ids only break exact ties of (priority, due, seq), which never happen in a real spool
    assert [j[:3] for j in by_name] == [j[:3] for j in by_claim_order]


@pytest.mark.parametrize("seed", range(10))
def test_pending_names_fixed_width_prefix(seed):
    rng = random.Random(1000 + seed)
    for _ in range(200):
        name = names.pending_name(rng.randint(0, 999), random_due(rng), random_seq(rng), random_id(rng))
        assert name[3] == "_" and name[24] == "_" and name[44] == "_"
        assert names.pending_due(name) == names.parse_pending(name)[1]


@pytest.mark.parametrize("seed", range(10))
def test_failed_byte_order_is_retry_order(seed):
    rng = random.Random(2000 + seed)
    jobs = [(random_due(rng), random_id(rng)) for _ in range(300)]
    by_name = sorted(jobs, key=lambda j: names.failed_name(*j))
    assert [round(j[0] * 1000) for j in by_name] == sorted(round(j[0] * 1000) for j in jobs)


def test_priority_beats_due_time_and_due_time_beats_seq():
    early_low = names.pending_name(0, 2_000_000_000, 9 * 10**18, "z")
    late_high = names.pending_name(1, 1_000_000_000, 1, "a")
    assert early_low < late_high
    a = names.pending_name(10, 1_000_000_000.001, 1, "a")
    b = names.pending_name(10, 1_000_000_000.002, 0, "a")
    assert a < b
    c = names.pending_name(10, 1_000_000_000, 99, "zzz")
    d = names.pending_name(10, 1_000_000_000, 100, "aaa")
    assert c < d


@pytest.mark.parametrize("job_id", [
    "plain", "a_b", "a__b", "_".join("abc"), "x_1_a2", "x_h_5_a3", "j.json", "a.b_c-d", "a_",
    "1_2_3_4_5", "host_123_a4", "x" * 128, "a." + "_" * 126, "0",
])
def test_ids_round_trip_through_every_name(job_id):
    assert ID_PATTERN.fullmatch(job_id)
    due, seq, prio = 1_795_957_279.123, 1_795_957_279_123_456_789, 7
    assert names.parse_pending(names.pending_name(prio, due, seq, job_id)) == (prio, pytest.approx(due), seq, job_id)
    assert names.id_of("pending", names.pending_name(prio, due, seq, job_id)) == job_id
    got = names.parse_failed(names.failed_name(due, job_id))
    assert got[1] == job_id and got[0] == pytest.approx(due)
    assert names.id_of("failed", names.failed_name(due, job_id)) == job_id
    for host in ("build1", "host-2.example.com", "localhost", "h"):
        name = names.processing_name(job_id, host, 4242, 3, due)
        assert names.parse_processing(name) == (job_id, host, 4242, 3, pytest.approx(due))
        assert names.id_of("processing", name) == job_id
        old = names.processing_name(job_id, host, 4242, 3)  # an earlier version's: no start
        assert old == f"{job_id}_{host}_4242_a3.json"
        assert names.parse_processing(old) == (job_id, host, 4242, 3, None)
        assert names.id_of("processing", old) == job_id
    assert names.id_of("completed", names.final_name(job_id)) == job_id
    assert names.id_of("dead", names.final_name(job_id)) == job_id


@pytest.mark.parametrize("seed", range(5))
def test_random_ids_round_trip(seed):
    rng = random.Random(3000 + seed)
    for _ in range(300):
        job_id = random_id(rng)
        host = names.hostname() if rng.random() < 0.3 else "".join(
            rng.choice(string.ascii_letters + string.digits + ".-") for _ in range(rng.randint(1, 20)))
        pid, attempt = rng.randint(1, 4_000_000), rng.randint(1, 1000)
        assert names.parse_processing(names.processing_name(job_id, host, pid, attempt)) == (job_id, host, pid, attempt, None)
        started = random_due(rng)
        parsed = names.parse_processing(names.processing_name(job_id, host, pid, attempt, started))
        assert parsed[:4] == (job_id, host, pid, attempt) and round(parsed.started * 1000) == round(started * 1000)
        prio, due, seq = rng.randint(0, 999), random_due(rng), random_seq(rng)
        parsed = names.parse_pending(names.pending_name(prio, due, seq, job_id))
        assert parsed[0] == prio and parsed[2] == seq and parsed[3] == job_id
        assert round(parsed[1] * 1000) == round(due * 1000)
        assert names.parse_failed(names.failed_name(due, job_id))[1] == job_id


@pytest.mark.parametrize("name", [
    "random.json", "010_20261124T130119.123Z_1795957279123456789_.json",
    "010_20261124T130119.123Z_1795957279123456789_../x.json",
    "010_20261124T130119.123Z_1795957279123456789_.hidden.json",
    "10_20261124T130119.123Z_1795957279123456789_a.json",
    "010_20261124T130119.123Z_1795957279123456789_a.txt",
    "010_20261124T130119Z_1795957279123456789_a.json",
])
def test_foreign_pending_names_are_not_parsed(name):
    assert names.parse_pending(name) is None
    assert names.id_of("pending", name) is None


def test_foreign_names_of_other_states():
    assert names.parse_failed("x.json") is None
    assert names.parse_failed("20261124T130121.123Z_.hidden.json") is None
    assert names.parse_processing("job.json") is None
    assert names.parse_processing("job_host_12_b3.json") is None
    assert names.id_of("completed", ".hidden.json") is None
    assert names.id_of("completed", "../x.json") is None
    assert names.id_of("dead", "x.txt") is None


def test_hostname_is_safe_in_names():
    host = names.hostname()
    assert host and len(host) <= 64
    assert all(c in string.ascii_letters + string.digits + ".-" for c in host)


def test_stamp_is_fixed_width_across_the_allowed_range():
    for ts in (0, 1, 999.9996, 1_795_957_279.123, 253402300799.999):
        s = names.stamp(ts)
        assert len(s) == len("20261124T130119.123Z"), s
        assert names.parse_stamp(s) == pytest.approx(round(ts * 1000) / 1000, abs=1e-6)
