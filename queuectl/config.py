"""The spool's settings: SPOOL/config.json, written atomically under a spool lock.

Workers re-read it when its mtime changes, so `config set` applies without a restart.
"""
import json
import math
import os
import time

from . import fsutil
from .faults import crashpoint
from .errors import FieldError, InvalidInput
from .job import check_text, shown

# key -> (default, kind, minimum, help)
KEYS = {
    "max-retries": (3, int, 0, "retries after the first attempt"),
    "backoff-base": (2, float, 1, "retry delay is base ** attempts seconds"),
    "backoff-max": (3600, float, 0, "longest retry delay, seconds"),
    "backoff-jitter": (0, float, 0, "random extra share of the delay, 0 to 1"),
    "job-timeout": (0, float, 0, "default timeout_seconds; 0 = none"),
    "worker-count": (1, int, 1, "workers started by `worker start`"),
    "log-max-bytes": (10 * 1024 * 1024, int, 0, "cap of a job's log; 0 = no cap"),
    "rescan-interval": (2, float, 0.05, "seconds between idle workers' looks for what inotify misses"),
    "contact-timeout": (10, float, 1, "shared spool: kill the job after this long without an answer"),
    "on-finish": (None, str, None, "shell command run when a job is completed or dead; none by default"),
    "durable-moves": (False, bool, None, "fsync every move a worker makes (power cuts on weak filesystems)"),
}
BOOLEAN_WORDS = {"on": True, "true": True, "yes": True, "1": True,
                 "off": False, "false": False, "no": False, "0": False}
MAX_TEXT_BYTES = 64 * 1024
MAXIMUM = {"backoff-jitter": 1, "max-retries": 1_000_000, "worker-count": 256}


def canonical_key(key):
    """'max_retries' and 'max-retries' are the same key; unknown keys raise, naming the choices."""
    name = str(key).strip().lower().replace("_", "-")
    if name not in KEYS:
        raise InvalidInput(f"unknown config key {str(key)[:60]!r} (valid keys: {', '.join(KEYS)})")
    return name


def parse_value(key, value):
    """Check a value for `key` (text from the CLI or a JSON number); returns int or float."""
    default, kind, low, _ = KEYS[key]
    if kind is str:
        return _parse_text(key, value)
    if kind is bool:
        return _parse_switch(key, value)
    high = MAXIMUM.get(key, 10**12)
    if isinstance(value, bool):
        raise FieldError(key, f"must be a number, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            number = int(text) if kind is int else float(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise FieldError(key, f"must be {what} between {low} and {high}, got {shown(value)}") from None
    elif isinstance(value, (int, float)):
        number = value
        if kind is int and isinstance(value, float):
            if not value.is_integer():
                raise FieldError(key, f"must be an integer, got {value}")
            number = int(value)
    else:
        raise FieldError(key, f"must be a number, got {type(value).__name__}")
    if isinstance(number, float) and not math.isfinite(number):
        raise FieldError(key, f"must be a finite number, got {value}")
    if not low <= number <= high:
        raise FieldError(key, f"must be between {low} and {high}, got {shown(number)}")
    if kind is float and float(number).is_integer():
        number = int(number)
    return number


def _parse_switch(key, value):
    """An on/off key: a JSON boolean, or on/off (true/false, yes/no, 1/0) as text."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if word not in BOOLEAN_WORDS:
        raise FieldError(key, f"must be on or off, got {shown(value)}")
    return BOOLEAN_WORDS[word]


def shown_value(value):
    """A value as `config` prints it: none for no value, on/off for a switch."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


def _parse_text(key, value):
    """A text key (a shell command): an empty one means none."""
    if value is None:
        return None
    text = check_text(key, value, MAX_TEXT_BYTES)
    return text if text.strip() else None


def defaults():
    return {key: spec[0] for key, spec in KEYS.items()}


def read(path):
    """Settings in effect: defaults overlaid with the valid entries of config.json."""
    values = defaults()
    try:
        stored = fsutil.read_json(path)
    except FileNotFoundError:
        return values
    except (OSError, ValueError):
        return values  # a damaged file never stops workers; `config list` shows defaults
    if isinstance(stored, dict):
        for key, value in stored.items():
            try:
                name = canonical_key(key)
                values[name] = parse_value(name, value)
            except InvalidInput:
                continue
    return values


def stored(path):
    try:
        data = fsutil.read_json(path)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write(path, tmp_dir, data):
    tmp = os.path.join(tmp_dir, f".config.{os.getpid()}.tmp")
    try:
        os.unlink(tmp)  # a leftover of a crashed write
    except FileNotFoundError:
        pass
    fsutil.write_file(tmp, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n")
    crashpoint("config.staged")
    os.rename(tmp, path)
    crashpoint("config.renamed")
    fsutil.fsync_dir(os.path.dirname(path))


class Watched:
    """config.json as a long-running process sees it: read again when its (inode, mtime)
    changes, which a stat tells, and stat'ed at most once per `every` seconds until
    `look_now()` (a busy worker saves a stat per job; an idle one looks before its next).
    `events_trusted()` false (no inotify to tell of a change on this host): a stat each time."""

    def __init__(self, path, every, events_trusted=lambda: True):
        self.path, self.every, self.events_trusted = path, every, events_trusted
        self._settings = self._stamp = self._looked = None

    def get(self):
        now = time.monotonic()
        if self._settings is not None and self._looked is not None and now - self._looked < self.every \
                and self.events_trusted():
            return self._settings
        self._looked = now
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns)  # a new file each write: the inode tells too
        except FileNotFoundError:
            stamp = None
        if self._settings is None or stamp != self._stamp:
            self._settings, self._stamp = read(self.path), stamp
        return self._settings

    def look_now(self):
        self._looked = None
