"""The finish journal: one line of text per end of an attempt or final state change, so that
`metrics` counts recent finishes without an lstat of every completed/ and dead/ file
(docs/protocol.md, "journal/").

    journal/HOST_PID-YYYYMMDDTHH.log    one file per process and UTC hour, appended to
    1795525279.123 completed backup 1 0.005
    EPOCH OUTCOME ID ATTEMPTS RUNTIME    (RUNTIME "-" when the move ended no attempt)

Statistics, not state: lines are appended without fsync, a failed write is ignored, and a
job moved by other means is not in it. Files of hours older than the previous two are
removed by prune().
"""
import heapq
import itertools
import math
import os
import time

from . import fsutil, names, timeutil

SUFFIX = ".log"
OUTCOMES = ("completed", "failed", "dead")
KEEP_HOURS = 2  # prune() keeps the current hour's files and those of the two hours before
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | fsutil.NOFOLLOW | fsutil.CLOEXEC


def hour_text(ts):
    """The UTC hour of Unix time `ts` as in a journal file name: '20261124T13'."""
    return time.strftime("%Y%m%dT%H", time.gmtime(ts))


def file_hour(name):
    """The hour text of a journal file name, or None when the name is not a journal file's."""
    hour = name[-15:-4]
    if name.startswith(".") or not name.endswith(SUFFIX) or name[-16:-15] != "-" or len(hour) != 11 \
            or hour[8] != "T" or not (hour[:8] + hour[9:]).isdigit():
        return None
    return hour


class Writer:
    """Appends the journal lines of one process (a Moves instance has one). The file of the
    current hour stays open until the hour changes. With `hold` > 0 (a worker) lines are
    kept up to that many seconds and written together: one write for many finishes. The
    holder calls flush() before it idles and when it stops."""

    def __init__(self, folder):
        self.folder = folder
        self.hold = 0.0
        self._key = None  # (hour number, pid) of the open file: a forked child opens its own
        self._fd = None
        self._held = []   # [(hour key, line)] not yet written
        self._since = 0.0  # time.monotonic() of the first held line

    def append(self, record, ended_attempt, now=None):
        """One line for `record`, just moved to its `state`. Never raises OSError: a full or
        read-only disk must not fail or undo the move it describes (it is statistics)."""
        now = time.time() if now is None else now
        runtime = "-"
        if ended_attempt:  # a cancel of a waiting job has the times of an earlier attempt
            try:
                seconds = timeutil.parse_iso(record["finished_at"]) - timeutil.parse_iso(record["started_at"])
                runtime = f"{max(0.0, seconds):.3f}"
            except (KeyError, TypeError, ValueError, AttributeError):
                pass
        attempts = record.get("attempts")
        line = f"{now:.3f} {record['state']} {record['id']} {attempts if isinstance(attempts, int) else 0} {runtime}\n"
        if not self._held:
            self._since = time.monotonic()
        self._held.append(((int(now // 3600), os.getpid()), now, line))
        self.flush_due()

    def flush_due(self):
        """flush() once the first held line has waited `hold` seconds (a worker calls this on
        the ticks of a running job too, so a finish is never held for a whole next job)."""
        if self._held and (self.hold <= 0 or time.monotonic() - self._since >= self.hold):
            self.flush()

    def flush(self):
        """Write the lines held: one write per hour's file (O_APPEND keeps the lines whole)."""
        held, self._held = self._held, []
        while held:
            key, now = held[0][0], held[0][1]
            lines = [line for k, _, line in held if k == key]
            held = [h for h in held if h[0] != key]
            try:
                if key != self._key:
                    self._close_file()
                    name = f"{names.hostname()}_{key[1]}-{hour_text(now)}{SUFFIX}"
                    self._fd = os.open(os.path.join(self.folder, name), _FLAGS, 0o600)
                    self._key = key
                os.write(self._fd, "".join(lines).encode())
            except OSError:
                pass  # ENOSPC, EROFS, journal/ gone: the moves stand, the statistics miss their lines

    def close(self):
        self.flush()
        self._close_file()

    def _close_file(self):
        if self._fd is not None:
            fsutil.close_quiet(self._fd)
        self._fd = self._key = None


class Recent:
    """The journal files of the current and previous hour, selected by name, for `metrics`.

    No line is parsed to count: the lines of one file are in time order (one process appends
    them as its moves happen), so the ends of a time window are found by bisection, and the
    lines between them are counted with bytes counts (_count). A clock stepped back can
    misplace the few lines around the step."""

    def __init__(self, folder, now, hours=2):
        wanted = {hour_text(now - 3600 * back) for back in range(hours)}
        self.files = []
        try:
            listing = fsutil.listdir(folder)
        except OSError:  # journal/ is not a folder: no statistics, not an error of `metrics`
            listing = []
        for name in listing:
            if file_hour(name) in wanted:
                try:
                    self.files.append(fsutil.read_fd_path(os.path.join(folder, name), limit=None))
                except OSError:  # removed meanwhile, or not a regular file
                    continue
        # the outcome words that are also some line's ID (rare): only then does _count need
        # its corrections; a file without one is counted with one bytes count a window
        self._id_words = [{w for w in (o.encode() for o in OUTCOMES) if b"d " + w + b" " in data}
                          for data in self.files]

    def counts(self, outcomes, edges):
        """{outcome: [entries with edges[i] <= time < edges[i + 1], ...]} (edges ascending;
        -inf and inf allowed)."""
        out = {outcome: [0] * (len(edges) - 1) for outcome in outcomes}
        for data, id_words in zip(self.files, self._id_words):
            offsets = [_first_at(data, edge) for edge in edges]
            for outcome in outcomes:
                word, row = outcome.encode(), out[outcome]
                count = _count if word in id_words else _count_plain
                for i in range(len(edges) - 1):
                    if offsets[i] < offsets[i + 1]:
                        row[i] += count(data, word, offsets[i], offsets[i + 1])
        return out

    def latest(self, n, outcomes):
        """The `n` newest entries whose outcome is in `outcomes`, newest first:
        [(epoch, outcome, attempts, runtime or None)]. Only those lines are parsed."""
        wanted = {outcome.encode() for outcome in outcomes}
        newest = heapq.merge(*(_backwards(data, wanted) for data in self.files), key=lambda e: e[0], reverse=True)
        return list(itertools.islice(newest, n))


def _count(data, word, start, end):
    """Lines of data[start:end] whose OUTCOME is `word`. " WORD " is that field, or an ID
    that happens to be an outcome word; such an ID follows an outcome word, and every one
    ends in "d" (the epoch ends in a digit): those are the "d WORD " ones. When both fields
    are WORD, the two matches share a space and bytes.count sees one: " WORD WORD " adds it
    back."""
    return (data.count(b" " + word + b" ", start, end) - data.count(b"d " + word + b" ", start, end)
            + data.count(b" " + word + b" " + word + b" ", start, end))


def _count_plain(data, word, start, end):
    return data.count(b" " + word + b" ", start, end)


def _time_of(data, start):
    try:
        return float(data[start:data.index(b" ", start)])
    except ValueError:  # a line cut short, or no space at all: sorts first
        return -math.inf


def _first_at(data, ts):
    """The offset of the first line of `data` whose time is >= ts (lines in time order)."""
    if ts == -math.inf:
        return 0
    lo, hi = 0, len(data)  # both are line starts (or the end)
    while lo < hi:
        start = data.rfind(b"\n", lo, (lo + hi) // 2)
        start = lo if start < 0 else start + 1
        if _time_of(data, start) < ts:
            end = data.find(b"\n", start)
            lo = len(data) if end < 0 else end + 1
        else:
            hi = start
    return lo


def _backwards(data, wanted):
    """The parsed lines of `data` whose outcome is in `wanted`, last first."""
    end = len(data)
    while end > 0:
        start = data.rfind(b"\n", 0, end - 1) + 1
        parts = data[start:end].split()
        end = start
        if len(parts) != 5 or parts[1] not in wanted:
            continue
        try:
            yield (float(parts[0]), parts[1].decode(), int(parts[3]), None if parts[4] == b"-" else float(parts[4]))
        except ValueError:
            continue


def prune(folder, now=None):
    """Remove the files of hours before the previous KEEP_HOURS; returns their names. Other
    names are left alone. Never raises OSError: it is housekeeping of statistics."""
    now = time.time() if now is None else now
    oldest_kept = hour_text(now - 3600 * KEEP_HOURS)
    removed = []
    try:
        listing = fsutil.listdir(folder)
    except OSError:
        return removed
    for name in listing:
        hour = file_hour(name)
        if hour is not None and hour < oldest_kept:
            try:
                os.unlink(os.path.join(folder, name))
                removed.append(name)
            except OSError:  # another worker was first, or the disk refuses: next time
                pass
    return removed
