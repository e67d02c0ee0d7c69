"""Turns (turns.py): on a shared spool the places of a limited queue go to the worker that has
waited longest, whatever its host. Two workers of two hosts are two Turns (or Admission)
objects here: their notes' flocks exclude each other as two processes' would."""
import os
import time

from queuectl import queues, turns
from queuectl.admission import Admission
from queuectl.turns import Turns


def notes(spool):
    folder = os.path.join(spool.layout.slots, "waiting")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_the_first_to_wait_has_the_first_turn_and_leaving_passes_it_on(spool):
    a, b, c = Turns(spool.layout, "h1", 1), Turns(spool.layout, "h2", 2), Turns(spool.layout, "h3", 3)
    assert a.first("q") and b.first("q")  # no one waits
    a.wait("q")
    b.wait("q")
    assert a.first("q") and not b.first("q") and not c.first("q")
    assert a.first("other")  # lines are per queue
    a.leave("q")
    assert b.first("q") and not c.first("q")
    assert [n.split("@")[1] for n in notes(spool)] == ["h2"]
    b.clear()
    assert notes(spool) == [] and c.first("q")


def test_a_note_whose_worker_is_gone_is_removed_by_the_next_look(spool):
    a, b = Turns(spool.layout, "h1", 1), Turns(spool.layout, "h2", 2)
    a.wait("q")
    name, fd = a.notes.pop("q")
    os.close(fd)  # as when its process dies: the flock goes, the file stays
    assert notes(spool) == [name]
    assert b.first("q")
    assert notes(spool) == []


def test_a_silent_note_is_passed_over_but_kept_and_a_probe_touches_ours(spool):
    a, b = Turns(spool.layout, "h1", 1), Turns(spool.layout, "h2", 2)
    a.wait("q")
    path = os.path.join(spool.layout.slots, "waiting", a.notes["q"][0])
    long_ago = time.time() - turns.SILENT - 1
    os.utime(path, (long_ago, long_ago))  # its host stopped looking (cut off): its lock lingers
    assert b.first("q")
    assert notes(spool) == [a.notes["q"][0]]
    a.next_probe = 0.0
    assert a.probe_due() and not a.probe_due()  # then not again before PROBE seconds
    assert os.stat(path).st_mtime > long_ago + 1
    assert not b.first("q")
    assert 0 < a.probe_in() <= turns.PROBE and b.probe_in() == float("inf")


def test_only_the_first_in_line_tries_and_a_long_wait_is_looked_at_less_often(spool):
    a, b = Turns(spool.layout, "h1", 1), Turns(spool.layout, "h2", 2)
    a.wait("q")
    b.wait("q")
    a.next_probe = b.next_probe = 0.0
    assert a.probe_due() and not b.probe_due()  # b only touched its note: a is before it
    b.since -= 60  # b has waited a minute: it looks once a PROBE_MAX
    b.next_probe = 0.0
    b.probe_due()
    assert turns.PROBE < b.probe_in() <= turns.PROBE_MAX


def test_a_place_let_go_goes_to_the_host_that_waited_not_back_to_its_holder(spool):
    queues.update(spool.layout, "q", limit=1)
    one = Admission(spool.layout, "h1", turns=Turns(spool.layout, "h1", 1))
    two = Admission(spool.layout, "h2", turns=Turns(spool.layout, "h2", 2))
    grant = one.admit("a", {"queue": "q"})
    assert grant is not None and grant.fds
    assert two.admit("b", {"queue": "q"}) is None  # full: h2 takes its place in line
    assert len(two.turns.notes) == 1
    grant.release()
    one.reopen()
    assert one.admit("c", {"queue": "q"}) is None  # free, but h2 waited first
    two.reopen()
    taken = two.admit("b", {"queue": "q"})
    assert taken is not None and taken.fds
    assert two.turns.notes == {} and [n.split("@")[1] for n in notes(spool)] == ["h1"]
    taken.release()
    one.reopen()
    assert one.admit("c", {"queue": "q"}) is not None and notes(spool) == []


def test_only_a_limit_across_hosts_makes_a_worker_wait_in_line(spool):
    queues.update(spool.layout, "ph", per_host=1)
    queues.update(spool.layout, "off", limit=3, paused=True)
    one = Admission(spool.layout, "h1", turns=Turns(spool.layout, "h1", 1))
    two = Admission(spool.layout, "h1", turns=Turns(spool.layout, "h1", 2))
    assert one.admit("a", {"queue": "ph"}) is not None
    assert two.admit("b", {"queue": "ph"}) is None  # this host's own limit: nothing to wait for
    assert two.admit("c", {"queue": "off"}) is None  # paused
    assert two.admit("d", {"queue": "free"}) is not None
    assert notes(spool) == []


def test_a_worker_leaves_the_lines_of_queues_it_no_longer_has_jobs_for(spool):
    queues.update(spool.layout, "q", limit=0)
    queues.update(spool.layout, "r", limit=0)
    one = Admission(spool.layout, "h1", turns=Turns(spool.layout, "h1", 1))
    assert one.admit("a", {"queue": "q"}) is None and one.admit("b", {"queue": "r"}) is None
    assert len(notes(spool)) == 2
    one.waiting_queues({"b"})
    assert [n.split(".")[0] for n in notes(spool)] == ["r"]
    one.leave_lines()
    assert notes(spool) == []


def test_a_note_left_by_a_crash_before_its_rename_is_removed_once_old(spool):
    folder = os.path.join(spool.layout.slots, "waiting")
    os.makedirs(folder)
    fresh, old = os.path.join(folder, ".q.1.9@h9"), os.path.join(folder, ".q.2.9@h9")
    for path in (fresh, old):
        open(path, "w").close()
    long_ago = time.time() - turns.SILENT - 1
    os.utime(old, (long_ago, long_ago))
    assert Turns(spool.layout, "h1", 1).first("q")
    assert notes(spool) == [".q.1.9@h9"]  # the fresh one may be a worker's, about to be renamed
