"""Live workers and requests to them, as files in SPOOL/workers/ (works across hosts).

    workers/HOST_PID.json          a worker's (or supervisor's: "role": "supervisor")
                                   registration; it holds a flock on it for life, so
                                   "locked" = alive, whatever host it runs on
    workers/HOST_PID.stop          a stop request: "graceful" or "now" (`worker stop`)
    workers/HOST_PID.cancel.ID     kill job ID and send it to dead/ (`cancel --kill`)
    workers/HOST_PID.job           "PGID ID" of the job the worker runs now, so that whoever
                                   takes the job back after the worker died can kill what
                                   is left of its process group (one copy at a time)

Requests are files, not signals, because a signal cannot reach another host; the worker
watches workers/ (inotify hint) and also checks on each tick while a job runs.
"""
import enum
import json
import os
import re

from . import fsutil, locks, timeutil
from .errors import Busy, OlderWorkers

PROTOCOL = 2  # the on-disk protocol a worker follows (2: a claim is one rename); 0.1.0's is 1


_ENTRY = re.compile(r"(.+_\d+)\.(?:json|stop|job|cancel\..*)$")


class StopMode(str, enum.Enum):
    """How a worker is asked to stop: after its running job, or at once (the job goes back to
    pending/ uncounted). The value is what a stop request file holds."""

    GRACEFUL = "graceful"
    NOW = "now"


def worker_name(host, pid):
    return f"{host}_{pid}"


def owner_of(entry):
    """The worker name (HOST_PID) of a file in workers/: NAME.json, NAME.stop, NAME.job or
    NAME.cancel.ID. Host names may contain dots, so the name is cut at its pid."""
    m = _ENTRY.match(entry)
    return m.group(1) if m else entry.split(".", 1)[0]


def machine_identity():
    """What tells this machine from another one that uses the same host name: its machine id
    (systemd's /etc/machine-id, or D-Bus's) and its pid namespace (a container's pids are its
    own). Empty when neither can be read."""
    machine = ""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path) as fh:
                machine = fh.read(64).strip()
        except OSError:
            continue
        if machine:
            break
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        pid_ns = ""
    return f"{machine}/{pid_ns.strip('pid:[]')}" if machine or pid_ns else ""


def same_name_elsewhere(layout, host, machine):
    """A live registration (worker or supervisor) under the host name `host` made on another
    machine, or None. Registrations that do not say their machine are given the benefit."""
    if not machine:
        return None
    for info in live_workers(layout, supervisors=True):
        if info.get("host") == host and info.get("machine") and info["machine"] != machine:
            return info
    return None


def register(layout, host, pid, extra=None):
    """Create and lock this worker's registration; returns the fd to keep open for life."""
    info = {"host": host, "pid": pid, "started_at": timeutil.iso(timeutil.now()), "machine": machine_identity(),
            "protocol": PROTOCOL}
    info.update(extra or {})
    tmp = os.path.join(layout.tmp, f"reg-{host}-{pid}.json")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = fsutil.write_new(tmp, json.dumps(info).encode(), sync=False)
    locks.hold(fd)  # before it is visible, so a visible registration is never unlocked
    name = worker_name(host, pid)
    for suffix in (".stop",):
        _unlink(os.path.join(layout.workers, name + suffix))
    os.rename(tmp, os.path.join(layout.workers, name + ".json"))
    return fd


def refuse_beside_older_workers(layout):
    """Raise OlderWorkers when a live worker or supervisor of an earlier protocol (0.1.0's
    registrations say none) uses the spool: it would read this version's processing/ names
    as damaged files and set running jobs aside."""
    older = [w for w in live_workers(layout, supervisors=True) if w.get("protocol", 1) < PROTOCOL]
    if older:
        who = ", ".join(f"{w.get('host')}:{w.get('pid')}" for w in older[:3])
        raise OlderWorkers(f"{len(older)} worker(s) of an earlier queuectl version run on this spool ({who}); "
                           "stop them (`queuectl worker stop`) before starting this version's")


def unregister(layout, host, pid, fd):
    name = worker_name(host, pid)
    for entry in fsutil.listdir(layout.workers):
        if entry == name + ".json" or entry.startswith(name + "."):
            _unlink(os.path.join(layout.workers, entry))
    os.close(fd)


def live_workers(layout, cleanup=False, supervisors=False, own=None):
    """Registrations whose lock is held, as dicts {host, pid, started_at, name}: the workers,
    and with `supervisors` the supervisors too. With cleanup, files of dead ones are removed.
    `own` names the caller's own registration, which is alive without a probe of its lock."""
    out = []
    for entry in sorted(fsutil.listdir(layout.workers)):
        if not entry.endswith(".json"):
            continue
        path = os.path.join(layout.workers, entry)
        try:
            fd = fsutil.open_nofollow(path)
        except OSError:
            continue
        try:
            alive = entry[:-5] == own or locks.is_locked(fd)
            info = json.loads(fsutil.read_fd(fd, 65536)) if alive else None
        except ValueError:
            info = None
        except OSError:  # replaced under us (GlusterFS reads a file opened lazily): not counted now
            continue
        finally:
            fsutil.close_quiet(fd)
        if alive and isinstance(info, dict):
            info["name"] = entry[:-5]
            if supervisors or info.get("role") != "supervisor":
                out.append(info)
        elif not alive and cleanup:
            name = entry[:-5]
            for other in fsutil.listdir(layout.workers):
                if other == entry or other.startswith(name + "."):
                    _unlink(os.path.join(layout.workers, other))
    return out


def is_alive(layout, name):
    return locks.path_is_locked(os.path.join(layout.workers, name + ".json"))


_NOTE_WIDTH = 160


class JobNote:
    """workers/HOST_PID.job: "PGID JOB_ID" of the job this worker started last, rewritten in
    place per job (no file created per job). It is not cleared after a job: a take-back
    acts on it only if it names the job taken back, and that job's process still says so."""

    def __init__(self, layout, host, pid):
        self.path = os.path.join(layout.workers, f"{worker_name(host, pid)}.job")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | fsutil.NOFOLLOW | fsutil.CLOEXEC, 0o600)

    def set(self, pgid, job_id):
        # one pwrite of a fixed width (ids are at most 128 bytes): no truncate needed
        os.pwrite(self.fd, f"{pgid} {job_id}".ljust(_NOTE_WIDTH).encode() + b"\n", 0)

    def close(self):
        os.close(self.fd)


def kill_leftover_job(layout, host, pid, job_id):
    """The worker HOST:PID died running job_id: kill what is left of the job's process group,
    if it runs on this host and is still that job's (its environment says so). Returns True
    when something was killed."""
    if host != _this_host():
        return False
    try:
        text = fsutil.read_fd_path(os.path.join(layout.workers, f"{worker_name(host, pid)}.job"), 512).decode()
        pgid, noted = text.split()
        pgid = int(pgid)
    except (OSError, ValueError):
        return False
    if noted != job_id or pgid <= 1:
        return False
    marker = f"QUEUECTL_JOB_ID={job_id}".encode()
    killed = False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != pgid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if marker not in fh.read().split(b"\0"):
                    continue
        except (OSError, ProcessLookupError):
            continue
        try:
            os.killpg(pgid, 9)
            killed = True
        except (ProcessLookupError, PermissionError):
            pass
        break
    return killed


def _this_host():
    from .names import hostname
    return hostname()


def request_stop(layout, name, mode=StopMode.GRACEFUL):
    _write(layout, f"{name}.stop", StopMode(mode).value)


def stop_requested(layout, name):
    """None, or the StopMode asked for."""
    try:
        text = fsutil.read_fd_path(os.path.join(layout.workers, name + ".stop"), 64).decode().strip()
    except OSError:
        return None
    return StopMode.NOW if text == StopMode.NOW.value else StopMode.GRACEFUL


def request_cancel(layout, name, job_id, attempt):
    """Ask worker NAME to kill job_id's attempt `attempt` (its processing/ file name). The
    request names the attempt, so one that comes too late cannot touch a later run of the
    job: no worker needs to remove it after each job."""
    _write(layout, f"{name}.cancel.{job_id}", attempt)


def cancel_requested(layout, name, job_id, attempt):
    """Whether a cancel request names this attempt (the processing/ name it runs under). A
    request for another attempt came too late for it: it is removed. `cancel` alone (0.1.0's
    requests) names whichever attempt runs."""
    path = os.path.join(layout.workers, f"{name}.cancel.{job_id}")
    try:
        text = fsutil.read_fd_path(path, 512).decode("utf-8", "replace").strip()
    except OSError:  # none (the usual case), or not a regular file: not a request
        return False
    if text in (attempt, "cancel"):
        return True
    _unlink(path)
    return False


def clear_cancel(layout, name, job_id):
    _unlink(os.path.join(layout.workers, f"{name}.cancel.{job_id}"))


def _write(layout, entry, text):
    tmp = os.path.join(layout.tmp, f"req-{os.getpid()}-{entry}")
    _unlink(tmp)
    fsutil.write_file(tmp, text.encode())
    os.rename(tmp, os.path.join(layout.workers, entry))


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


__all__ = ["Busy", "machine_identity", "same_name_elsewhere", "register", "unregister", "live_workers",
           "request_stop", "stop_requested",
           "request_cancel", "cancel_requested", "clear_cancel", "is_alive", "worker_name"]
