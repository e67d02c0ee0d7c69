"""Recurring jobs (`queuectl schedule add NAME CRON ...`), fired by the workers.

    schedules/NAME.json    {"name", "cron", "template", "created_at"}: written once by `add`
    schedules/NAME.state   {"last_occurrence", "last_id", "fired", "skipped"}: replaced (tmp + rename)
    schedules/NAME.lock    flock-held while a worker fires NAME, and while `add` writes it

At each time the 5-field cron expression names (UTC), one job is enqueued from the template with
id NAME-YYYYMMDDTHHMMZ. Every worker on every host looks; exactly one enqueue succeeds per
occurrence, because the id is reserved like any job id (an O_EXCL create: a second firing is a
duplicate id and changes nothing). The lock only keeps the counters of NAME.state honest.

Missed occurrences (no worker ran): the latest is fired once when a worker looks, the older
ones are counted in `skipped` (counted up to SKIP_COUNT_LIMIT per firing; cron expressions
are walked one occurrence at a time). An occurrence from before the schedule was added is
never fired.

Cron expressions are parsed by croniter, a maintained library: day-of-month/day-of-week
rules, ranges, steps and names are easy to get subtly wrong by hand.
"""
import datetime
import os
import re

from . import fsutil, locks, timeutil
from .errors import Busy, FieldError, InvalidInput, QueuectlError
from .faults import crashpoint
from .job import validate_input

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # + "-YYYYMMDDTHHMMZ" stays a valid id
TEMPLATE_REFUSED = ("id", "run_at", "after")  # each occurrence has its own id and time
SKIP_COUNT_LIMIT = 10_000
_UTC = datetime.timezone.utc


class NoSuchSchedule(QueuectlError):
    def __init__(self, name):
        super().__init__(f"no such schedule: {name!r}")


def check_name(name):
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise FieldError("NAME", f"invalid schedule name {str(name)[:80]!r}: use 1 to 100 of "
                                 "A-Z a-z 0-9 . _ -, starting with a letter or digit")
    return name


def check_cron(expr):
    """A 5-field cron expression (minute hour day-of-month month day-of-week), UTC."""
    from croniter import croniter
    fields = expr.split() if isinstance(expr, str) else []
    if len(fields) != 5:
        raise FieldError("CRON", f"must have 5 fields (minute hour day-of-month month day-of-week), "
                                 f"got {len(fields)} in {str(expr)[:80]!r}")
    normalized = " ".join(fields)
    if not croniter.is_valid(normalized):
        raise FieldError("CRON", f"not a valid cron expression: {normalized!r}")
    return normalized


def _cron(expr, at):
    from croniter import croniter
    return croniter(expr, datetime.datetime.fromtimestamp(at, _UTC))


def latest(expr, now):
    """The last occurrence at or before `now` (Unix seconds)."""
    return _cron(expr, now + 0.001).get_prev(datetime.datetime).timestamp()


def following(expr, now):
    """The first occurrence after `now`."""
    return _cron(expr, now).get_next(datetime.datetime).timestamp()


def occurrence_id(name, at):
    return f"{name}-{datetime.datetime.fromtimestamp(at, _UTC):%Y%m%dT%H%MZ}"


def check_template(template):
    """The fields each occurrence's job is made from: those of `enqueue` but id, run_at, after."""
    if not isinstance(template, dict):
        raise FieldError("job", "must be a JSON object")
    for field in TEMPLATE_REFUSED:
        if template.get(field) is not None:
            raise FieldError(field, "not allowed in a schedule (each occurrence gets its own "
                                    "id NAME-YYYYMMDDTHHMMZ and runs at its time)")
    validate_input(template)
    return {k: v for k, v in template.items() if v is not None}


class Schedules:
    """The schedules of one spool."""

    def __init__(self, layout):
        self.layout = layout
        self.folder = layout.schedules

    def _path(self, name, suffix):
        return os.path.join(self.folder, name + suffix)

    # ------------------------------------------------------------ commands

    def add(self, name, cron, template, now=None):
        """Add a schedule; FieldError for a bad name, expression or template, InvalidInput
        when the name is taken. Nothing is written until all is checked."""
        check_name(name)
        cron = check_cron(cron)
        template = check_template(template)
        now = timeutil.now() if now is None else now
        entry = {"name": name, "cron": cron, "template": template, "created_at": timeutil.iso(now)}
        lock_path = self._path(name, ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | fsutil.NOFOLLOW | fsutil.CLOEXEC, 0o600)
        except OSError as exc:
            raise fsutil.translate(exc, f"schedule {name}") from None
        try:
            try:
                locks.hold(fd)
            except Busy:
                raise InvalidInput(f"NAME: schedule {name!r} is being changed; try again") from None
            if os.path.lexists(self._path(name, ".json")):
                raise InvalidInput(f"NAME: schedule {name!r} exists already (remove it first)")
            self._replace(name, ".state", {"last_occurrence": entry["created_at"], "last_id": None,
                                           "fired": 0, "skipped": 0})
            self._replace(name, ".json", entry)
        except OSError as exc:
            raise fsutil.translate(exc, f"schedule {name}") from None
        finally:
            fsutil.close_quiet(fd)
        return self.describe(entry, now)

    def remove(self, name):
        """Remove a schedule (its jobs already enqueued stay). NoSuchSchedule if unknown."""
        check_name(name)
        try:
            os.unlink(self._path(name, ".json"))
        except FileNotFoundError:
            raise NoSuchSchedule(name) from None
        except OSError as exc:
            raise fsutil.translate(exc, f"schedule {name}") from None
        for suffix in (".state", ".lock"):
            try:
                os.unlink(self._path(name, suffix))
            except FileNotFoundError:
                pass
        fsutil.fsync_dir(self.folder)

    def entries(self):
        """The schedules' definitions, by name; a damaged file is left out."""
        out = []
        for file_name in sorted(fsutil.listdir(self.folder)):
            if not file_name.endswith(".json") or file_name.startswith("."):
                continue
            try:
                entry = fsutil.read_json(os.path.join(self.folder, file_name))
                if isinstance(entry, dict) and entry.get("name") == file_name[:-5]:
                    check_cron(entry.get("cron"))
                    out.append(entry)
            except (OSError, ValueError, QueuectlError):
                continue
        return out

    def state(self, name):
        try:
            state = fsutil.read_json(self._path(name, ".state"))
            if isinstance(state, dict):
                return state
        except (OSError, ValueError):
            pass
        return {"last_occurrence": None, "last_id": None, "fired": 0, "skipped": 0}

    def describe(self, entry, now=None):
        """What `schedule list --json` prints for one schedule."""
        now = timeutil.now() if now is None else now
        state = self.state(entry["name"])
        return {"name": entry["name"], "cron": entry["cron"], "command": entry["template"].get("command"),
                "template": entry["template"], "created_at": entry.get("created_at"),
                "next": timeutil.iso(following(entry["cron"], now)), "last_fired_id": state.get("last_id"),
                "fired": state.get("fired", 0), "skipped": state.get("skipped", 0)}

    def list(self, now=None):
        return [self.describe(entry, now) for entry in self.entries()]

    # ------------------------------------------------------------ the workers' side

    def fire_due(self, enqueue, entries, now=None):
        """Fire the latest due occurrence of each schedule in `entries` that has not fired.
        `enqueue(items)` is Spool.enqueue_many. Returns [(name, job id)] of what this call
        enqueued. A schedule another process is firing right now is left to it."""
        now = timeutil.now() if now is None else now
        fired = []
        for entry in entries:
            try:
                job_id = self._fire(enqueue, entry, now)
            except Busy:
                continue
            if job_id:
                fired.append((entry["name"], job_id))
        return fired

    def _fire(self, enqueue, entry, now):
        from .errors import DuplicateJob
        name, cron = entry["name"], entry["cron"]
        at = latest(cron, now)
        try:
            fd = fsutil.open_nofollow(self._path(name, ".lock"), os.O_RDWR)
        except FileNotFoundError:
            return None  # removed meanwhile
        try:
            locks.hold(fd)
            if not os.path.lexists(self._path(name, ".json")):
                return None
            state = self.state(name)
            since = state.get("last_occurrence") or entry.get("created_at")
            try:
                since = timeutil.parse_iso(since)
            except (TypeError, ValueError, AttributeError):
                since = at - 1
            if at <= since:
                return None
            skipped = count_between(cron, since, at)
            job_id = occurrence_id(name, at)
            try:
                enqueue([dict(entry["template"], id=job_id)])
                enqueued = True
            except DuplicateJob:  # fired already (its state not yet written when that process died)
                enqueued, skipped = False, 0
            crashpoint("schedule.fired")
            self._replace(name, ".state", {
                "last_occurrence": timeutil.iso(at), "last_id": job_id,
                "fired": int(state.get("fired", 0)) + (1 if enqueued else 0),
                "skipped": int(state.get("skipped", 0)) + skipped})
            crashpoint("schedule.recorded")
            return job_id if enqueued else None
        finally:
            fsutil.close_quiet(fd)

    def _replace(self, name, suffix, data):
        tmp = os.path.join(self.layout.tmp, f"sched-{name}{suffix}-{os.getpid()}.tmp")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        fsutil.write_file(tmp, fsutil.dumps(data))
        os.rename(tmp, self._path(name, suffix))
        fsutil.fsync_dir(self.folder)


def count_between(cron, since, at):
    """Occurrences strictly between `since` and `at` (the missed ones), up to SKIP_COUNT_LIMIT."""
    it = _cron(cron, since)
    count = 0
    while count < SKIP_COUNT_LIMIT:
        t = it.get_next(datetime.datetime).timestamp()
        if t >= at:
            break
        count += 1
    return count


class ScheduleClock:
    """A worker's view of the schedules: their definitions, re-read when schedules/ changes,
    and the next time one is due (so an idle worker sleeps until then)."""

    def __init__(self, schedules):
        self.schedules = schedules
        self.entries = []
        self.next_at = float("inf")

    def reload(self, now):
        self.entries = self.schedules.entries()
        self.next_at = now if self.entries else float("inf")  # look at once: a missed one fires

    def fire(self, enqueue, now):
        """Fire what is due; returns [(name, job id)] enqueued here."""
        if now < self.next_at:
            return []
        fired = self.schedules.fire_due(enqueue, self.entries, now)
        self.next_at = min((following(e["cron"], now) for e in self.entries), default=float("inf"))
        return fired
