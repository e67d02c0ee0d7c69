"""Jobs that wait for other jobs (the `after` field): where they wait and when they go on.

A job whose `after` names a job that has not completed is stored in blocked/ID.json instead
of pending/. Workers decide for each blocked job, after a job finishes (their own, or one
that another host or a command finished: the stat of completed/ and dead/ changes):

- every job it names is completed: it moves to pending/ (kind "release"), named from its
  record like any pending job, so it takes its place in claim order (priority, then due time);
- one of them is dead, or gone (purged): it moves to dead/ with last_error
  "dependency ID dead" (kind "cascade"). It is dead itself then, so what waits for it
  follows on the same pass, and so on down the chain.

The ids in `after` must exist when the job is enqueued (or come earlier in the same batch),
so a cycle cannot be built. Nothing here keeps state that a crash could lose: blocked/ and
the final folders say everything, and any worker on any host can make the decision again.
"""
import os

from . import fsutil, names
from .errors import FieldError, LostRace
from .moves import Corrupt

COMPLETED, DEAD, WAITING, MISSING = "completed", "dead", "waiting", "missing"


def dependency_state(inventory, job_id):
    """completed, dead, waiting (exists, not final) or missing (no such job, e.g. purged).
    Two lstats for the common cases; a listing only when the id has no marker."""
    lay = inventory.layout
    final = names.final_name(job_id)
    if os.path.lexists(os.path.join(lay.completed, final)):
        return COMPLETED
    if os.path.lexists(os.path.join(lay.dead, final)):
        return DEAD
    if os.path.lexists(os.path.join(lay.ids, job_id)):
        return WAITING
    found = inventory.find(job_id)  # a record placed by hand has no marker until it is locked
    if found is None:
        return MISSING
    return found[0] if found[0] in (COMPLETED, DEAD) else WAITING


def verdict(inventory, after):
    """What to do with a job waiting for `after`: ("release", None), ("bury", reason), or
    None while one of them has still to run."""
    waiting = False
    for dep in after or ():
        state = dependency_state(inventory, dep)
        if state == DEAD:
            return "bury", f"dependency {dep} dead"
        if state == MISSING:
            return "bury", f"dependency {dep} not found (purged?)"
        waiting = waiting or state != COMPLETED
    return None if waiting else ("release", None)


def place(inventory, records, where=lambda index: "after"):
    """Check the `after` lists of new records before anything is written, and set each one's
    `state`: blocked, or pending when every job it names has completed already. An id must be
    a job of the spool or one earlier in `records`. FieldError (named by `where(index)`)."""
    earlier = set()
    for index, record in enumerate(records):
        blocked = False
        for dep in record.get("after") or ():
            if dep == record["id"]:
                raise FieldError(where(index), f"job {dep!r} cannot wait for itself")
            if dep in earlier:
                blocked = True
                continue
            state = dependency_state(inventory, dep)
            if state == MISSING:
                raise FieldError(where(index), f"no job {dep!r} (the jobs it waits for must exist first)")
            blocked = blocked or state != COMPLETED
        record["state"] = "blocked" if blocked else "pending"
        earlier.add(record["id"])
    return records


class BlockedJobs:
    """A worker's view of blocked/: the names, each with its `after` list (read once: a waiting
    record is never rewritten), and for each dependency the names waiting for it, so that a
    finished job costs a look at its own dependents only, not at all of blocked/."""

    def __init__(self, moves):
        self.moves = moves
        self.after = {}     # name -> list of ids ([] until readable)
        self.waiting = {}   # dependency id -> names waiting for it

    def __bool__(self):
        return bool(self.after)

    def relist(self):
        """List blocked/ again; returns the names not seen before."""
        current = {n for n in fsutil.listdir(self.moves.layout.blocked)
                   if n.endswith(names.SUFFIX) and not n.startswith(".")}
        for name in set(self.after) - current:
            self._forget(name)
        new = current - set(self.after)
        for name in new:
            self._learn(name)
        return new

    def dependents(self, job_ids):
        """The blocked names waiting for any of `job_ids`."""
        return {name for job_id in job_ids for name in self.waiting.get(job_id, ())}

    def _learn(self, name):
        try:
            record = fsutil.read_json(os.path.join(self.moves.layout.blocked, name))
            after = record.get("after") if isinstance(record, dict) else None
        except (OSError, ValueError):
            after = None  # gone, or damaged: decided (or set aside) when looked at
        self.after[name] = after = [a for a in after if isinstance(a, str)] if isinstance(after, list) else []
        for dep in after:
            self.waiting.setdefault(dep, set()).add(name)

    def _forget(self, name):
        for dep in self.after.pop(name, None) or ():
            waiting = self.waiting.get(dep)
            if waiting is not None:
                waiting.discard(name)
                if not waiting:
                    del self.waiting[dep]

    def resolve(self, candidates=None, report=None):
        """Release or bury those of `candidates` (None: every blocked job) whose dependencies
        are decided; a burial makes the jobs waiting for the buried one candidates too.
        `report(action, record)` is called for each move. Returns the number of moves."""
        todo = set(self.after) if candidates is None else set(candidates) & set(self.after)
        moved = 0
        while todo:
            name = todo.pop()
            if name not in self.after:
                continue
            outcome = verdict(self.moves, self.after[name])
            if outcome is None:
                continue
            self._forget(name)
            new = self._apply(name, *outcome)
            if new is None:
                continue
            moved += 1
            if new.state == "dead":
                todo |= self.dependents([new.record["id"]])
            if report:
                report(outcome[0], new.record)
        return moved

    def _apply(self, name, action, reason):
        try:
            held = self.moves.lock("blocked", name)
        except Corrupt as exc:
            self.moves.set_aside(exc)
            return None
        except LostRace:  # another worker decided first, or holds it
            return None
        try:
            if action == "release":
                return self.moves.release(held)
            return self.moves.bury_blocked(held, reason)
        except LostRace:
            held.close()
            return None
        except BaseException:
            held.close()
            raise
