"""File names of job files: the claim order lives in the name (docs/contract.md "The spool on disk").

    pending/    PPP_DUE_SEQ_ID.json        010_20261124T130119.123Z_1795957279123456789_backup.json
    failed/     NEXT_ID.json               20261124T130121.123Z_backup.json
    processing/ ID_HOST_PID_aN_START.json  backup_build1_4242_a2_20261124T130121.456Z.json
    completed/, dead/  ID.json

PPP is the priority (000-999, lower first), DUE the time the job may start (UTC,
millisecond, fixed width), SEQ the enqueue time in nanoseconds (19 digits): so plain byte
order of pending/ is priority, then due time, then enqueue order. All fields before ID are
fixed-width, so an id containing '_' still parses. The processing name carries the
attempt's owner, number and start: it is unique per attempt, which is what makes the final
rename of an attempt a fence, and it is the running half of the record, which a claim
does not rewrite (docs/protocol.md). Names of earlier versions lack START and still parse.
"""
import os
import re
import time
from typing import NamedTuple

from .job import ID_PATTERN

SUFFIX = ".json"
_STAMP_LEN = len("20261124T130119.123Z")

# The fixed-width fields of a pending name, for code that must not parse every name of a
# big folder (a worker's pass over pending/, counts, metrics): DUE compares as text in time
# order, SEQ is the enqueue time in nanoseconds.
PENDING_DUE = slice(4, 4 + _STAMP_LEN)
PENDING_SEQ = slice(PENDING_DUE.stop + 1, PENDING_DUE.stop + 1 + 19)


class PendingName(NamedTuple):
    priority: int
    due: float       # Unix seconds
    seq: int         # enqueue time, ns
    job_id: str


class FailedName(NamedTuple):
    next_attempt: float  # Unix seconds
    job_id: str


class ProcessingName(NamedTuple):
    job_id: str
    host: str
    pid: int
    attempt: int
    started: float = None  # Unix seconds; None in a name of an earlier version

    @property
    def worker(self):
        return f"{self.host}:{self.pid}"


_PENDING = re.compile(r"(\d{3})_(\d{8}T\d{6}\.\d{3}Z)_(\d{19})_(.+)\.json")
_FAILED = re.compile(r"(\d{8}T\d{6}\.\d{3}Z)_(.+)\.json")
_PROCESSING = re.compile(r"(.+)_([A-Za-z0-9.-]+)_(\d+)_a(\d+)(?:_(\d{8}T\d{6}\.\d{3}Z))?\.json")


def stamp(ts):
    """Unix seconds -> fixed-width sortable '20261124T130119.123Z'."""
    ms = int(round(ts * 1000))
    secs, ms = divmod(ms, 1000)
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(secs)) + f".{ms:03d}Z"


def parse_stamp(text):
    """'20261122T103000.123Z' -> Unix seconds. ValueError if it is not such a stamp."""
    if len(text) < 20 or text[8] != "T" or text[15] != "." or not text[:8].isdigit() \
            or not text[9:15].isdigit() or not text[16:19].isdigit():
        raise ValueError(f"not a time stamp: {text!r}")
    month, day, hour, minute, second = (int(text[i:i + 2]) for i in (4, 6, 9, 11, 13))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 62):
        raise ValueError(f"not a time stamp: {text!r}")
    return (_days_from_civil(int(text[:4]), month, day) * 86400 + hour * 3600 + minute * 60 + second
            + int(text[16:19]) / 1000)


def _days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm): what
    calendar.timegm computes, without its import on the CLI's path."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def pending_name(priority, due, seq, job_id):
    return f"{priority:03d}_{stamp(due)}_{seq:019d}_{job_id}{SUFFIX}"


def parse_pending(name):
    """-> PendingName(priority, due, seq, job_id), or None when the name is not ours."""
    m = _PENDING.fullmatch(name)
    if not m or not ID_PATTERN.fullmatch(m.group(4)):
        return None
    return PendingName(int(m.group(1)), parse_stamp(m.group(2)), int(m.group(3)), m.group(4))


def looks_pending(name):
    """The shape of a pending name, checked cheaply (a pass looks at every name); whoever
    claims a name parses it in full."""
    return (len(name) > 50 and name[3] == "_" and name[PENDING_DUE.stop] == "_"
            and name[PENDING_SEQ.stop] == "_" and name.endswith(SUFFIX) and name[:3].isdigit())


def pending_due(name):
    """Cheap due time of a pending name (the hot path of the claim loop)."""
    return parse_stamp(name[PENDING_DUE])


def pending_due_text(name):
    """The DUE field as text: compares with stamp(t) in time order, without parsing."""
    return name[PENDING_DUE]


def pending_enqueued_at(name):
    """The enqueue time (Unix seconds) in a pending name's SEQ field. ValueError if absent."""
    return int(name[PENDING_SEQ]) / 1e9


def failed_name(next_attempt, job_id):
    return f"{stamp(next_attempt)}_{job_id}{SUFFIX}"


def parse_failed(name):
    """-> FailedName(next_attempt, job_id), or None."""
    m = _FAILED.fullmatch(name)
    if not m or not ID_PATTERN.fullmatch(m.group(2)):
        return None
    return FailedName(parse_stamp(m.group(1)), m.group(2))


def hostname():
    """This host's name, reduced to [A-Za-z0-9.-] so it can sit in file names."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", os.uname().nodename)[:64] or "localhost"


def processing_name(job_id, host, pid, attempt, started=None):
    """`started` None gives the name of an earlier version (no START)."""
    start = "" if started is None else f"_{stamp(started)}"
    return f"{job_id}_{host}_{pid}_a{attempt}{start}{SUFFIX}"


def parse_processing(name):
    """-> ProcessingName(job_id, host, pid, attempt, started), or None."""
    m = _PROCESSING.fullmatch(name)
    if not m or not ID_PATTERN.fullmatch(m.group(1)):
        return None
    try:
        started = parse_stamp(m.group(5)) if m.group(5) else None
    except ValueError:
        return None
    return ProcessingName(m.group(1), m.group(2), int(m.group(3)), int(m.group(4)), started)


def final_name(job_id):
    return f"{job_id}{SUFFIX}"


def id_of(state, name):
    """The job id in a file name of a state folder, or None when the name is not a job's."""
    if state == "pending":
        p = parse_pending(name)
        return p.job_id if p else None
    if state == "failed":
        p = parse_failed(name)
        return p.job_id if p else None
    if state == "processing":
        p = parse_processing(name)
        return p.job_id if p else None
    if name.endswith(SUFFIX) and ID_PATTERN.fullmatch(name[:-len(SUFFIX)]):
        return name[:-len(SUFFIX)]
    return None
