"""The job record: states, validation of input, new records. No I/O here.

docs/contract.md "The job record" is the contract; every error names the field it is about.
"""
import enum
import json
import math
import os
import re
import threading
import time

from . import timeutil
from .errors import FieldError


class State(str, enum.Enum):
    """A job's state; the value is also the name of the folder it sits in."""

    BLOCKED = "blocked"
    PENDING = "pending"
    PROCESSING = "processing"
    FAILED = "failed"
    COMPLETED = "completed"
    DEAD = "dead"

    def __str__(self):
        return self.value


STATES = [s.value for s in State]
FINAL_STATES = (State.COMPLETED, State.DEAD)

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
INPUT_FIELDS = ("id", "command", "max_retries", "priority", "run_at", "timeout_seconds", "cwd", "env", "after",
                "on_finish", "queue", "gpus")
# captured_env is not input: the CLI passes its caller's environment through the API
RECORD_FIELDS = (
    "id", "command", "state", "attempts", "max_retries", "priority", "run_at", "timeout_seconds",
    "cwd", "env", "captured_env", "created_at", "updated_at", "started_at", "finished_at", "exit_code",
    "last_error", "worker", "after", "on_finish", "queue", "gpus",
)
DEFAULT_QUEUE = "default"
QUEUE_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MAX_GPUS = 64
DEFAULT_PRIORITY = 10
MAX_RETRIES_LIMIT = 1_000_000
MAX_COMMAND_BYTES = 256 * 1024
MAX_AFTER = 1000  # dependencies of one job
_ENV_NAME = re.compile(r"[^=\x00]+")

_id_lock = threading.Lock()
_last_id_us = 0


def new_id():
    """A unique id that sorts by creation time: '20261124-131501-123456-3fa9c'.

    Microseconds are made strictly increasing within a process; the random tail keeps ids of
    different processes (and hosts) apart.
    """
    global _last_id_us
    with _id_lock:
        us = max(time.time_ns() // 1000, _last_id_us + 1)
        _last_id_us = us
    secs, micro = divmod(us, 1_000_000)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(secs))
    return f"{stamp}-{micro:06d}-{os.urandom(3).hex()[:5]}"


def check_id(value, field="id"):
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, got {type_name(value)}")
    if not ID_PATTERN.fullmatch(value):
        raise FieldError(field, f"invalid id {value[:80]!r}: use 1 to 128 of A-Z a-z 0-9 . _ -, "
                                "starting with a letter or digit")
    return value


def type_name(value):
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(value), type(value).__name__)


def shown(value):
    """A value for an error message: short, and safe for ints too long to print."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return "a very large integer"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(field, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(field, f"must be an integer, got {type_name(value)}")
    if not low <= value <= high:
        raise FieldError(field, f"must be between {low} and {high}, got {shown(value)}")
    return value


def _number(field, value, low, high):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(field, f"must be a number, got {type_name(value)}")
    if not low <= value <= high or not math.isfinite(value):  # range first: isfinite(10**400) overflows
        raise FieldError(field, f"must be between {low} and {high}, got {shown(value)}")
    return value


def check_text(field, value, max_bytes=4096):
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, got {type_name(value)}")
    if "\x00" in value:
        raise FieldError(field, "must not contain NUL bytes")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise FieldError(field, "is not valid UTF-8 text") from None
    if size > max_bytes:
        raise FieldError(field, f"too long ({size} bytes, at most {max_bytes})")
    return value


def validate_input(data, defaults=None, now=None):
    """Check a job given by a user (enqueue, dropped file) and return the normalized fields.

    `data` must be a dict with only INPUT_FIELDS. Returns a dict with every input field set
    (run_at as Unix seconds or None). Raises FieldError naming the field.
    """
    defaults = defaults or {}
    if not isinstance(data, dict):
        raise FieldError("job", f"must be a JSON object, got {type_name(data)}")
    for key in data:
        if key not in INPUT_FIELDS:
            label = key if isinstance(key, str) else repr(key)
            raise FieldError(str(label)[:80], "unknown field (allowed: " + ", ".join(INPUT_FIELDS) + ")")
    out = {}
    job_id = data.get("id")
    out["id"] = check_id(job_id) if job_id is not None else None
    if "command" not in data or data["command"] is None:
        raise FieldError("command", "is required")
    command = check_text("command", data["command"], MAX_COMMAND_BYTES)
    if not command.strip():
        raise FieldError("command", "must not be empty")
    out["command"] = command
    mr = data.get("max_retries")
    out["max_retries"] = _int("max_retries", mr, 0, MAX_RETRIES_LIMIT) if mr is not None else defaults.get("max_retries", 3)
    pr = data.get("priority")
    out["priority"] = _int("priority", pr, 0, 999) if pr is not None else DEFAULT_PRIORITY
    try:
        out["run_at"] = timeutil.parse_when(data.get("run_at"), reference=now)
    except ValueError as exc:
        raise FieldError("run_at", str(exc)) from None
    ts = data.get("timeout_seconds")
    out["timeout_seconds"] = _number("timeout_seconds", ts, 0, 10**9) if ts is not None else None
    cwd = data.get("cwd")
    if cwd is not None:
        check_text("cwd", cwd)
        if not os.path.isabs(cwd):
            raise FieldError("cwd", f"must be an absolute path, got {cwd[:80]!r}")
    out["cwd"] = cwd
    env = data.get("env")
    if env is not None:
        if not isinstance(env, dict):
            raise FieldError("env", f"must be an object of string to string, got {type_name(env)}")
        if len(env) > 1000:
            raise FieldError("env", "too many variables (at most 1000)")
        for k, v in env.items():
            check_env_name(k)
            check_text("env", k, 4096)  # a name must be UTF-8 too
            check_text(f"env.{k[:40]}", v, 64 * 1024)
    out["env"] = env
    out["after"] = check_after(data.get("after"))
    hook = data.get("on_finish")
    out["on_finish"] = check_text("on_finish", hook, MAX_COMMAND_BYTES) if hook is not None else None
    queue = data.get("queue")
    out["queue"] = check_queue(queue) if queue is not None else DEFAULT_QUEUE
    gpus = data.get("gpus")
    out["gpus"] = _int("gpus", gpus, 0, MAX_GPUS) if gpus is not None else 0
    return out


def check_queue(value, field="queue"):
    """A queue name: 1 to 64 of a-z 0-9 _ -, starting with a letter or digit."""
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, got {type_name(value)}")
    if not QUEUE_PATTERN.fullmatch(value):
        raise FieldError(field, f"invalid queue name {shown(value)}: use 1 to 64 of a-z 0-9 _ -, "
                                "starting with a letter or digit")
    return value


def check_env_name(name, field="env"):
    """A variable name: not empty, no '=' and no NUL (execve could not pass it)."""
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
        raise FieldError(field, f"invalid variable name {shown(name)}")
    return name


def capture_env(environ):
    """The environment to store in a job (`captured_env`): every variable that a JSON record
    can carry, i.e. whose name and value are UTF-8 text (os.environ keeps other bytes as
    surrogates, which would not encode)."""
    captured = {}
    for name, value in environ.items():
        try:
            name.encode("utf-8")
            value.encode("utf-8")
        except UnicodeEncodeError:
            continue
        if _ENV_NAME.fullmatch(name):
            captured[name] = value
    return captured


def check_after(value):
    """The `after` field: None, or a list of job ids (duplicates dropped, order kept)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise FieldError("after", f"must be an array of job ids, got {type_name(value)}")
    if len(value) > MAX_AFTER:
        raise FieldError("after", f"too many dependencies ({len(value)}, at most {MAX_AFTER})")
    ids = []
    for item in value:
        check_id(item, "after")
        if item not in ids:
            ids.append(item)
    return ids or None


def new_record(fields, now):
    """A pending record from validated input fields (see validate_input) at wall time `now`."""
    stamp = timeutil.iso(now)
    return {
        "id": fields["id"] or new_id(),
        "command": fields["command"],
        "state": State.PENDING.value,
        "attempts": 0,
        "max_retries": fields["max_retries"],
        "priority": fields["priority"],
        "run_at": timeutil.iso(fields["run_at"]),
        "timeout_seconds": fields["timeout_seconds"],
        "cwd": fields["cwd"],
        "env": fields["env"],
        "captured_env": fields.get("captured_env"),
        "created_at": stamp,
        "updated_at": stamp,
        "started_at": None,
        "finished_at": None,
        "exit_code": None,
        "last_error": None,
        "worker": None,
        "after": fields.get("after"),
        "on_finish": fields.get("on_finish"),
        "queue": fields.get("queue") or DEFAULT_QUEUE,
        "gpus": fields.get("gpus") or 0,
    }


def check_record(data):
    """Light check of a record read from a state folder: enough for a worker to run it safely."""
    if not isinstance(data, dict):
        raise FieldError("job", "record is not a JSON object")
    check_id(data.get("id"))
    check_text("command", data.get("command"), MAX_COMMAND_BYTES)
    for field in ("attempts", "max_retries", "priority"):
        _int(field, data.get(field), 0, 10**9)
    for field in ("created_at", "run_at"):
        value = data.get(field)
        if value is None and field == "run_at":
            continue
        try:
            if not isinstance(value, str):
                raise TypeError
            timeutil.parse_iso(value)
        except (ValueError, TypeError, OverflowError):
            raise FieldError(field, "missing or not an ISO-8601 time") from None
    if data.get("timeout_seconds") is not None:
        _number("timeout_seconds", data["timeout_seconds"], 0, 10**9)
    if data.get("cwd") is not None:
        check_text("cwd", data["cwd"])
    for field in ("env", "captured_env"):
        env = data.get(field)
        if env is not None and (not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
            raise FieldError(field, "must be an object of string to string")
    if data.get("on_finish") is not None:
        check_text("on_finish", data["on_finish"], MAX_COMMAND_BYTES)
    if data.get("queue") is not None:
        check_queue(data["queue"])
    if data.get("gpus") is not None:
        _int("gpus", data["gpus"], 0, MAX_GPUS)
    check_after(data.get("after"))
    return data


def queue_of(record):
    """The job's queue (records written before queues existed are in the default one)."""
    return record.get("queue") or DEFAULT_QUEUE


def running_record(record, claim):
    """The record of a job while attempt `claim` (names.ProcessingName, with its start) runs.
    A claim renames the pending record into processing/ as it was: the attempt, its worker
    and its start are in the file name, and readers merge them in here."""
    started = timeutil.iso(claim.started)
    return dict(record, state=State.PROCESSING.value, attempts=claim.attempt, started_at=started,
                finished_at=None, worker=claim.worker, updated_at=max(record.get("updated_at") or "", started))


def due_time(record):
    """When the job may next start: run_at, or for a job without one its creation time."""
    return timeutil.parse_iso(record.get("run_at") or record["created_at"])


def parse_batch(text, source):
    """Jobs given as text: one JSON object, an array of objects, or JSON Lines -> list of
    items (checked later by validate_input). InvalidInput naming `source` and the line."""
    from .errors import InvalidInput
    stripped = text.strip()
    if not stripped:
        raise InvalidInput(f"{source}: no job in it")
    try:
        data = json.loads(stripped)
    except RecursionError:
        raise InvalidInput(f"{source}: JSON nested too deeply") from None
    except ValueError:
        items = []
        for number, line in enumerate(stripped.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except ValueError as exc:
                raise InvalidInput(f"{source}: line {number}: invalid JSON ({getattr(exc, 'msg', exc)})") from None
            except RecursionError:
                raise InvalidInput(f"{source}: line {number}: JSON nested too deeply") from None
        return items
    return data if isinstance(data, list) else [data]


def run_at_option(value):
    """The text of a --run-at option: digits are Unix seconds, anything else is parsed later."""
    if value is not None and re.fullmatch(r"\d+(\.\d+)?", value.strip()):
        return float(value)
    return value
