"""The worker's bounded view of pending/ (queuectl/pending.py), in process, with a tiny limit
so that every cut-short path runs."""
import os

import pytest

from queuectl import names
from queuectl.pending import PendingIndex

NOW = 1_800_000_000.0


def put(folder, priority, due, seq, job_id):
    name = names.pending_name(priority, due, seq, job_id)
    open(os.path.join(folder, name), "w").close()
    return name


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "pending"
    path.mkdir()
    return str(path)


def drain(index, now):
    out = []
    while True:
        name, _ = index.pick(now)
        if name is None:
            return out
        os.unlink(os.path.join(index.folder, name))
        out.append(names.parse_pending(name)[3])


def test_claim_order_with_a_cut_short_list_matches_a_full_sort(folder):
    made = [put(folder, p, NOW - d, s, f"j{p}-{d}-{s}") for p in (5, 10, 20) for d in (1, 7) for s in range(4)]
    index = PendingIndex(folder, limit=3)
    expected = [names.parse_pending(n)[3] for n in sorted(made)]
    assert drain(index, NOW) == expected


def test_memory_is_bounded_by_the_limit(folder):
    for s in range(50):
        put(folder, 10, NOW - 1, s, f"due{s}")
        put(folder, 10, NOW + 100 + s, s, f"later{s}")
    index = PendingIndex(folder, limit=4)
    index.refill(NOW)
    assert len(index.due) == 4 and len(index.later) == 4
    assert not index.due_complete and not index.later_complete


def test_a_due_job_of_a_lower_priority_is_found_behind_many_scheduled_ones(folder):
    for s in range(30):
        put(folder, 10, NOW + 3600, s, f"sched{s}")
    put(folder, 50, NOW - 5, 1, "lowprio")
    index = PendingIndex(folder, limit=4)
    name, _ = index.pick(NOW)
    assert names.parse_pending(name)[3] == "lowprio"
    assert index.pick(NOW) == (None, NOW + 3600)


def test_scheduled_jobs_come_due_in_order_past_the_cut(folder):
    for s in range(10):
        put(folder, 10, NOW + 10 + s, s, f"t{s}")
    index = PendingIndex(folder, limit=3)
    assert index.pick(NOW) == (None, NOW + 10)
    assert drain(index, NOW + 100) == [f"t{s}" for s in range(10)]


def test_events_slot_names_in_without_a_pass(folder):
    index = PendingIndex(folder, limit=8)
    index.refill(NOW)
    b = put(folder, 10, NOW - 1, 2, "b")
    a = put(folder, 5, NOW - 1, 3, "a")
    later = put(folder, 10, NOW + 60, 4, "later")
    for n in (b, a, later):
        index.add(n, NOW)
    assert not index.stale
    assert index.pick(NOW)[0] == a
    index.remove(b)
    assert index.pick(NOW) == (None, NOW + 60)


def test_a_name_beyond_a_cut_list_waits_for_the_next_pass(folder):
    for s in range(6):
        put(folder, 10, NOW - 1, s, f"d{s}")
    index = PendingIndex(folder, limit=2)
    index.refill(NOW)
    late = put(folder, 99, NOW - 1, 1, "last")
    index.add(late, NOW)
    assert late not in index.due
    assert drain(index, NOW)[-1] == "last"


def test_hand_made_names_are_reported_as_strays(folder):
    put(folder, 10, NOW - 1, 1, "ok")
    open(os.path.join(folder, "by-hand.json"), "w").close()
    open(os.path.join(folder, ".hidden"), "w").close()
    index = PendingIndex(folder)
    index.refill(NOW)
    assert index.strays == ["by-hand.json"]
    assert names.parse_pending(index.pick(NOW)[0])[3] == "ok"


def test_a_missing_folder_is_empty(tmp_path):
    index = PendingIndex(str(tmp_path / "nope"))
    assert index.pick(NOW) == (None, float("inf"))


def test_spread_draws_among_the_first_names_of_the_best_priority_only(tmp_path):
    """On a shared spool a worker claims at random among the first due names of the best
    priority (other hosts' claims are invisible to its view); priority order still holds."""
    folder = tmp_path / "pending"
    folder.mkdir()
    for i in range(6):
        (folder / names.pending_name(5, NOW - 10, i, f"high{i}")).write_text("{}")
    for i in range(6):
        (folder / names.pending_name(50, NOW - 10, 10 + i, f"low{i}")).write_text("{}")
    index = PendingIndex(str(folder))
    index.spread = 4
    picked = [names.parse_pending(index.pick(NOW)[0]).job_id for _ in range(12)]
    assert sorted(picked[:6]) == [f"high{i}" for i in range(6)]  # every high one before any low one
    assert sorted(picked[6:]) == [f"low{i}" for i in range(6)]
