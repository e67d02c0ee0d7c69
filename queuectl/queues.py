"""Named queues: their settings in the spool, SPOOL/queues/NAME.json (docs/protocol.md "Queues
and slots").

A queue exists as soon as a job names it; a settings file is needed only for a limit, a limit
per host, or a pause. Every host reads the same files, so a change applies everywhere at the
next claim. A settings file is written whole in tmp/ and renamed into place; `slots` records the
highest limit ever set, so that a claim can count the jobs still running on the slots of a
limit since lowered.
"""
import json
import os

from . import fsutil, locks
from .errors import FieldError, InvalidInput, WrongState
from .job import DEFAULT_QUEUE, check_queue, shown

SUFFIX = ".json"
MAX_LIMIT = 10_000


class Settings:
    """A queue's settings: `limit` and `per_host` (None: no limit), `paused`, `slots` (the
    number of slot files there may be: the highest limit ever set)."""

    __slots__ = ("name", "limit", "per_host", "paused", "slots", "host_slots")

    def __init__(self, name, limit=None, per_host=None, paused=False, slots=0, host_slots=0):
        self.name, self.limit, self.per_host, self.paused = name, limit, per_host, paused
        self.slots = max(slots, limit or 0)
        self.host_slots = max(host_slots, per_host or 0)

    @property
    def restricted(self):
        """Whether a claim in this queue must take a slot (or may not happen at all)."""
        return self.paused or self.limit is not None or self.per_host is not None

    def as_dict(self):
        return {"name": self.name, "limit": self.limit, "per_host": self.per_host, "paused": self.paused,
                "slots": self.slots, "host_slots": self.host_slots}

    @classmethod
    def from_dict(cls, name, data):
        def count(key):
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
        return cls(name, limit=count("limit"), per_host=count("per_host"), paused=data.get("paused") is True,
                   slots=count("slots") or 0, host_slots=count("host_slots") or 0)


def limit_value(text, field):
    """A limit from the command line: a whole number >= 0, or 'none' (no limit)."""
    if text is None or isinstance(text, int) and not isinstance(text, bool):
        value = text
    elif isinstance(text, str) and text.strip().lower() == "none":
        return None
    else:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise FieldError(field, f"must be a whole number or none, got {shown(text)}") from None
    if value is not None and not 0 <= value <= MAX_LIMIT:
        raise FieldError(field, f"must be between 0 and {MAX_LIMIT} or none, got {shown(value)}")
    return value


def path_of(layout, name):
    return os.path.join(layout.queues, name + SUFFIX)


def read(layout, name):
    """The settings of queue `name` (defaults when it has no file, or an unreadable one)."""
    try:
        data = fsutil.read_json(path_of(layout, name))
    except (OSError, ValueError):
        return Settings(name)
    return Settings.from_dict(name, data if isinstance(data, dict) else {})


def read_all(layout):
    """{name: Settings} of every queue that has a settings file."""
    found = {}
    for entry in fsutil.listdir(layout.queues):
        if entry.endswith(SUFFIX) and not entry.startswith("."):
            name = entry[:-len(SUFFIX)]
            try:
                check_queue(name)
            except FieldError:
                continue
            found[name] = read(layout, name)
    return found


def update(layout, name, **changes):
    """Change some settings of queue `name` (limit, per_host, paused); returns the new Settings.
    Checked first: a bad value changes nothing."""
    check_queue(name, "NAME")
    for key in ("limit", "per_host"):
        if key in changes:
            changes[key] = limit_value(changes[key], f"--{key.replace('_', '-')}")
    with locks.spool_lock(os.path.join(layout.queues, ".lock")):
        current = read(layout, name)
        values = {k: getattr(current, k) for k in ("limit", "per_host", "paused", "slots", "host_slots")}
        values.update(changes)
        new = Settings(name, **values)
        _write(layout, new)
    return new


def remove(layout, name, has_jobs):
    """Forget the settings of queue `name`; `has_jobs(name)` says whether a job is still in it."""
    check_queue(name, "NAME")
    path = path_of(layout, name)
    if not os.path.lexists(path):
        raise InvalidInput(f"queue {name!r} has no settings to remove")
    if has_jobs(name):
        raise WrongState(f"queue {name!r} still has jobs; nothing was removed (purge or retry them elsewhere first)")
    with locks.spool_lock(os.path.join(layout.queues, ".lock")):
        os.unlink(path)
        fsutil.fsync_dir(layout.queues)


def _write(layout, settings):
    os.makedirs(layout.queues, mode=0o700, exist_ok=True)
    tmp = os.path.join(layout.tmp, f".queue-{settings.name}-{os.getpid()}.json")
    fsutil.write_file(tmp, json.dumps(settings.as_dict(), sort_keys=True).encode() + b"\n")
    os.rename(tmp, path_of(layout, settings.name))
    fsutil.fsync_dir(layout.queues)


__all__ = ["DEFAULT_QUEUE", "Settings", "read", "read_all", "update", "remove", "limit_value"]
