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


def owner(name, count):
    import zlib
    return zlib.crc32(name.encode()) % count


def shared_index(folder, rank, count, spread=16):
    index = PendingIndex(str(folder))
    index.spread, index.share, index.steal_lag = spread, (rank, count), 2.0
    return index


def test_with_a_share_each_worker_takes_only_its_own_names_first(tmp_path):
    """Workers that split the names by hash never try the same name while each has names of
    its own: two views drained side by side take disjoint sets, each in claim order."""
    folder = tmp_path / "pending"
    folder.mkdir()
    made = [names.pending_name(5, NOW - 10, i, f"j{i}") for i in range(40)]
    for name in made:
        (folder / name).write_text("{}")
    for rank in range(2):
        index = shared_index(folder, rank, 2)
        own = [n for n in made if owner(n, 2) == rank]
        assert own and len(own) < len(made)
        picked = [index.pick(NOW)[0] for _ in own]
        assert picked == own  # its own share, in claim order, and nothing else before it


def test_a_worker_whose_share_is_empty_steals_among_all_the_due_names_it_sees(tmp_path):
    """Stealers drawing among the few head names would collide with each other: a worker with
    no name of its own draws among every due name of the best priority in its view."""
    folder = tmp_path / "pending"
    folder.mkdir()
    made = [names.pending_name(5, NOW - 10, i, f"j{i}") for i in range(60)]
    theirs = [n for n in made if owner(n, 3) != 0]
    for name in theirs:
        (folder / name).write_text("{}")
    (folder / names.pending_name(9, NOW - 10, 999, "worse")).write_text("{}")
    firsts = [shared_index(folder, 0, 3, spread=4).pick(NOW)[0] for _ in range(30)]
    assert set(firsts) <= set(theirs)
    assert max(theirs.index(n) for n in firsts) >= 4  # not only the head's few


def test_a_share_whose_head_lags_is_stolen_from(tmp_path):
    """A name of another worker's share that has been due for longer than steal_lag before our
    own best is taken first: its owner is busy or gone, and the job must not wait on it."""
    folder = tmp_path / "pending"
    folder.mkdir()
    old = [names.pending_name(5, NOW - 60, i, f"old{i}") for i in range(20)]
    old = [n for n in old if owner(n, 2) == 1][:3]   # another worker's, due a minute ago
    new = [names.pending_name(5, NOW - 1, 100 + i, f"new{i}") for i in range(20)]
    new = [n for n in new if owner(n, 2) == 0][:3]   # ours, due a second ago
    for name in old + new:
        (folder / name).write_text("{}")
    index = shared_index(folder, 0, 2)
    assert sorted(index.pick(NOW)[0] for _ in range(3)) == sorted(old)
    assert [index.pick(NOW)[0] for _ in range(3)] == new


def test_a_share_that_lags_less_than_steal_lag_is_left_to_its_owner(tmp_path):
    folder = tmp_path / "pending"
    folder.mkdir()
    theirs = [n for n in (names.pending_name(5, NOW - 2.5, i, f"a{i}") for i in range(20)) if owner(n, 2) == 1][:3]
    ours = [n for n in (names.pending_name(5, NOW - 1.5, 100 + i, f"b{i}") for i in range(20)) if owner(n, 2) == 0][:3]
    for name in theirs + ours:
        (folder / name).write_text("{}")
    index = shared_index(folder, 0, 2)
    assert [index.pick(NOW)[0] for _ in range(3)] == ours


def test_a_share_never_breaks_priority_order(tmp_path):
    """Our own name of a worse priority waits while names of a better one are due: we steal
    those instead."""
    folder = tmp_path / "pending"
    folder.mkdir()
    best = [n for n in (names.pending_name(1, NOW - 1, i, f"urgent{i}") for i in range(20)) if owner(n, 2) == 1][:2]
    ours = [n for n in (names.pending_name(9, NOW - 1, 100 + i, f"bulk{i}") for i in range(20)) if owner(n, 2) == 0][:2]
    for name in best + ours:
        (folder / name).write_text("{}")
    index = shared_index(folder, 0, 2)
    assert sorted(index.pick(NOW)[0] for _ in range(2)) == sorted(best)
    assert [index.pick(NOW)[0] for _ in range(2)] == ours


def test_a_name_found_locked_is_tried_again_soon_not_forgotten(folder):
    """A claim that met a held lock defers the name (pending.py): it comes back after
    DEFER_FIRST, then after twice as long each time it is found locked again, up to DEFER_MAX;
    neither a refill nor its own inotify event brings it back early."""
    from queuectl.pending import DEFER_FIRST, DEFER_MAX
    name = put(folder, 10, NOW - 1, 1, "held")
    index = PendingIndex(folder)
    assert index.pick(NOW)[0] == name
    index.defer(name, NOW)
    assert index.pick(NOW) == (None, NOW + DEFER_FIRST), "the wake-up time includes the deferral"
    index.refill(NOW)
    index.add(name, NOW)  # the second rename of the move that holds it
    assert index.pick(NOW)[0] is None
    now, delays = NOW, []
    for _ in range(9):
        again = index.pick(now)[1]
        delays.append(round(again - now, 6))
        now = again
        assert index.pick(now)[0] == name
        index.defer(name, now)
    assert delays == [min(DEFER_MAX, DEFER_FIRST * 2 ** i) for i in range(9)]
    later = index.pick(now)[1]
    assert index.pick(later)[0] == name  # unlocked at last: the claim wins, nothing is left
    assert index.deferred == {} and index.pick(later + 10) == (None, float("inf"))


def test_a_deferred_name_that_leaves_is_forgotten(folder):
    name = put(folder, 10, NOW - 1, 1, "moved")
    index = PendingIndex(folder)
    assert index.pick(NOW)[0] == name
    index.defer(name, NOW)
    index.remove(name)  # its inotify event: claimed by another worker, or cancelled
    assert index.pick(NOW + 5) == (None, float("inf"))
