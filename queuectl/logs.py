"""Per-job logs: logs/ID.log, a header line per attempt, capped at log-max-bytes.

The command writes straight into the log (O_APPEND), so the worker never copies output.
The cap keeps the newest output: when the file outgrows it, its tail is kept behind a line
saying how many bytes were cut.
"""
import os
import re
import stat
import time

from . import fsutil, timeutil


_CHUNK = 1 << 20
_CUT_NOTE = re.compile(rb"\[queuectl: (?:at least )?(\d+) bytes of older output cut")


def open_for_append(path):
    """The log opened for appending, never through a symlink; created 0600."""
    # read-write: cap() reads the tail back through the same descriptor
    return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | fsutil.NOFOLLOW | fsutil.CLOEXEC, 0o600)


def header(record, worker):
    total = record["max_retries"] + 1
    return (f"=== queuectl attempt {record['attempts']}/{total} of job {record['id']} · "
            f"worker {worker} · {timeutil.iso(timeutil.now())} ===\n$ {record['command']}\n").encode("utf-8", "replace")


def attempt_started(path, claim):
    """Whether the command of attempt `claim` (names.ProcessingName) may have started: False
    only when the log at `path` shows it did not, i.e. the log is there, no older output was
    cut from it, and it holds no header of that attempt written by its worker at or after
    its claim (the header is written just before the command starts). A missing log (never
    made, or removed by hand to free space) counts as started, so a job that fills the disk
    still runs out of attempts. Read only by a take-back, which is rare: the whole log is
    searched."""
    since_ms = round(claim.started * 1000) - 1  # the header's time is truncated to the ms, the name's rounded
    header = re.compile(rb"=== queuectl attempt %d/\d+ of job %s \xc2\xb7 worker %s \xc2\xb7 (\S+) ===\n"
                        % (claim.attempt, re.escape(claim.job_id.encode()), re.escape(claim.worker.encode())))
    try:  # never through a symlink, never blocked by a FIFO: anything but a log proves nothing
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return True
        text = os.read(fd, _CHUNK)
        if _CUT_NOTE.match(text):
            return True
        while text:
            for found in header.finditer(text):
                try:
                    if round(timeutil.parse_iso(found.group(1).decode()) * 1000) >= since_ms:
                        return True
                except ValueError:
                    continue
            more = os.read(fd, _CHUNK)
            text = text[-1024:] + more if more else b""  # a header is shorter than 1 KiB
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def append_line(fd, text):
    os.write(fd, (text.rstrip("\n") + "\n").encode("utf-8", "replace"))


def cap(fd, max_bytes, cut_so_far=None):
    """Keep the newest output when the log is over max_bytes (0 = no cap).

    Returns the bytes cut so far in this log: pass it back in on the next call (the runner
    keeps the running total; None the first time, when an earlier attempt's note is read).
    The job keeps appending while we cut, so the count is a close lower bound."""
    if cut_so_far is None:
        earlier = _CUT_NOTE.search(os.pread(fd, 4096, 0))
        cut_so_far = int(earlier.group(1)) if earlier else 0
    if max_bytes <= 0:
        return cut_so_far
    size = os.fstat(fd).st_size
    if size <= max_bytes:
        return cut_so_far
    keep = max(0, (max_bytes * 3) // 4 - 120)  # room to grow before the next cut
    cut = size - keep
    tail = os.pread(fd, keep, cut) if keep else b""
    nl = tail.find(b"\n")
    if 0 <= nl < 200:  # start at a line boundary when one is close
        cut += nl + 1
        tail = tail[nl + 1:]
    head = os.pread(fd, 200, 0)
    note_len = head.find(b"\n") + 1 if _CUT_NOTE.match(head) else 0
    # what the job appended since the fstat above is cut too: count it, just before the cut
    appended = max(0, os.fstat(fd).st_size - size)
    total = cut_so_far + cut + appended - note_len  # the previous note was ours, not output
    os.ftruncate(fd, 0)
    when = timeutil.iso(timeutil.now())
    note = f"[queuectl: at least {total} bytes of older output cut at {when} (log-max-bytes {max_bytes})]\n"
    os.write(fd, note.encode() + tail)
    return total


def read(path):
    """The whole log as bytes; b'' when there is none yet."""
    try:
        fd = fsutil.open_nofollow(path)
    except FileNotFoundError:
        return b""
    try:
        return fsutil.read_fd(fd)
    finally:
        os.close(fd)


def follow(path, is_final, write, poll=0.2, idle_exit=None):
    """Stream the log like tail -f until is_final() says the job reached a final state.

    Follows across attempts and across a cut (the file shrinking): it re-reads from the start.
    """
    offset = 0
    inode = None
    while True:
        finished = is_final()
        try:
            fd = fsutil.open_nofollow(path)
        except FileNotFoundError:
            fd = None
        if fd is not None:
            try:
                st = os.fstat(fd)
                if st.st_ino != inode or st.st_size < offset:
                    inode, offset = st.st_ino, 0
                while True:
                    chunk = os.pread(fd, 1 << 16, offset)
                    if not chunk:
                        break
                    offset += len(chunk)
                    write(chunk)
            finally:
                os.close(fd)
        if finished:
            return
        time.sleep(poll)
