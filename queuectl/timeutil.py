"""Wall-clock times as the ISO-8601 UTC strings of the job record (docs/contract.md "The job record").

Durations (timeouts, backoff waits) use time.monotonic() in the worker; only run_at and the
record's timestamps use the wall clock.
"""
import re
import time
from datetime import datetime, timezone

_RELATIVE = re.compile(r"^\+(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def now():
    return time.time()


_last_second = [None, ""]  # the formatted second of the last call: a worker formats a few per job


def iso(ts):
    """Unix seconds -> '2026-11-22T10:30:00.123Z' (milliseconds truncated)."""
    if ts is None:
        return None
    secs, ms = divmod(round(ts * 1e6) // 1000, 1000)  # like datetime: to the microsecond, then down
    cached = _last_second
    if cached[0] != secs:
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(secs))
        cached[0] = secs
    return f"{cached[1]}{ms:03d}Z"


def parse_iso(text):
    """ISO-8601 with 'Z', an offset, or no zone (= UTC) -> Unix seconds. ValueError if bad."""
    t = text.strip()
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    dt = datetime.fromisoformat(t)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def parse_when(value, reference=None):
    """A run_at input: ISO-8601 string, Unix seconds, or '+30s'/'+5m'/'+2h'/'+1d'.

    Returns Unix seconds, or None for None. Raises ValueError with a short reason.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("expected an ISO-8601 time, Unix seconds or +N[smhd]")
    if isinstance(value, (int, float)):
        try:
            ts = float(value)
        except OverflowError:
            raise ValueError("time out of range (1970 to 9999)") from None
    elif isinstance(value, str):
        m = _RELATIVE.match(value.strip())
        if m:
            ts = (reference if reference is not None else now()) + float(m.group(1)) * _UNITS[m.group(2)]
        else:
            try:
                ts = parse_iso(value)
            except (ValueError, OverflowError):
                raise ValueError(f"not a time: {value[:60]!r} (ISO-8601, Unix seconds or +N[smhd])") from None
    else:
        raise ValueError("expected an ISO-8601 time, Unix seconds or +N[smhd]")
    if not (0 <= ts < 253402300800):  # 1970 .. 9999-12-31, so names stay fixed-width
        raise ValueError("time out of range (1970 to 9999)")
    return ts


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text, field="duration"):
    """'90', '30s', '30m', '12h', '7d', '2w' -> seconds. InvalidInput naming `field` otherwise."""
    m = _DURATION.fullmatch(text or "") if isinstance(text, str) else None
    if not m:
        from .errors import InvalidInput
        raise InvalidInput(f"{field}: not a duration: {text!r} (e.g. 30m, 12h, 7d)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
