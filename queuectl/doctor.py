"""`queuectl doctor`: does the spool's filesystem give what the protocol needs?

Each check makes and removes its own files under tmp/ and workers/ (dot-names, which no
worker reads), and says in one line what holds, what does not, and what to do. Workers run
the same checks when they start and refuse a filesystem that fails one (docs/contract.md
"Several hosts, one spool").
"""
import errno
import fcntl
import os
import time

from . import fsinfo, fsutil, names, registry

CLOCK_SKEW_MAX = 1.0  # seconds between this host's clock and the filesystem's


class Check:
    def __init__(self, name, ok, detail, fix=None):
        self.name, self.ok, self.detail, self.fix = name, ok, detail, fix

    def as_dict(self):
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


def run(layout):
    """Every check, in order; a check that cannot run at all fails with the reason."""
    token = f".doctor-{os.getpid()}-{os.urandom(3).hex()}"
    checks = []
    for check in (_exclusive_create, _rename_between_folders, _locks_exclude, _clock, _host_name):
        try:
            checks.append(check(layout, token))
        except OSError as exc:
            checks.append(Check(check.__name__.strip("_").replace("_", " "), False,
                                f"could not be checked: {exc.strerror or exc}", "see that the spool is mounted and writable"))
        finally:
            for folder in (layout.tmp, layout.workers):
                for suffix in ("", "-a", "-b", "-lock", "-clock"):
                    _unlink(os.path.join(folder, token + suffix))
    return checks


def describe(layout):
    """What the filesystem is (a line for `doctor`, not a check)."""
    kind, point, source = fsinfo.mount_of(layout.root)
    shared = fsinfo.is_network(layout.root)
    where = "shared between hosts" if shared else "local to this host"
    return {"type": kind, "mount_point": point, "source": source, "shared": shared,
            "summary": f"{kind} mounted on {point} ({where})"}


def failures(layout):
    return [c for c in run(layout) if not c.ok]


def _exclusive_create(layout, token):
    path = os.path.join(layout.tmp, token)
    fsutil.write_file(path, b"x", sync=False)
    try:
        fsutil.write_file(path, b"y", sync=False)
    except FileExistsError:
        return Check("exclusive create", True, "O_CREAT|O_EXCL refuses an existing name (ids are reserved this way)")
    return Check("exclusive create", False, "O_CREAT|O_EXCL created a name that exists: two enqueues could "
                 "take one id", "use a filesystem with POSIX create semantics (NFSv3 without locking is not one)")


def _rename_between_folders(layout, token):
    src = os.path.join(layout.tmp, token + "-a")
    dst = os.path.join(layout.workers, token + "-b")
    fsutil.write_file(src, b"moved", sync=False)
    os.rename(src, dst)
    try:
        os.rename(src, dst + "x")
        return Check("rename", False, "a renamed name could be renamed again: a claim would not be exclusive",
                     "use a filesystem whose rename is atomic (a POSIX filesystem, or GlusterFS/MooseFS/CephFS)")
    except FileNotFoundError:
        pass
    with open(dst, "rb") as fh:
        if fh.read() != b"moved":
            return Check("rename", False, "a renamed file lost its content", "use a POSIX filesystem")
    return Check("rename", True, "rename between folders is atomic and exclusive (claims are renames)")


def _locks_exclude(layout, token):
    """flock held here must refuse another process (a child: on GlusterFS flock is mapped to
    POSIX locks, which never conflict within one process)."""
    path = os.path.join(layout.tmp, token + "-lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | fsutil.CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        pid = os.fork()
        if pid == 0:  # the child: tries the lock through its own open file
            code = 3
            try:
                child_fd = os.open(path, os.O_RDWR)
                try:
                    fcntl.flock(child_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    code = 1   # got it: locks do not exclude
                except BlockingIOError:
                    code = 0
                except OSError as exc:
                    code = 4 if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS) else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
    finally:
        fsutil.close_quiet(fd)
    if code == 0:
        return Check("locks", True, "a lock held by one process refuses another (a worker's hold on its job)")
    if code == 4:
        return Check("locks", False, "the filesystem has no locks", "mount it with locking (NFS: lockd or NFSv4; "
                     "not 'nolock'); queuectl cannot tell a live worker from a dead one without them")
    return Check("locks", False, "a lock held by one process did not stop another: two workers could run one job",
                 "mount the filesystem with working locks (GlusterFS and MooseFS have them; NFS needs NFSv4 or lockd)")


def _clock(layout, token):
    path = os.path.join(layout.tmp, token + "-clock")
    before = time.time()
    fsutil.write_file(path, b"t", sync=False)
    after = time.time()
    stamp = os.stat(path).st_mtime
    skew = 0.0 if before - 0.05 <= stamp <= after + 0.05 else min(abs(stamp - before), abs(stamp - after))
    if skew > CLOCK_SKEW_MAX:
        return Check("clock", False, f"this host's clock and the filesystem's differ by {skew:.1f}s: due times "
                     "and take-backs would be off", "run NTP (chrony or systemd-timesyncd) on every host and the servers")
    return Check("clock", True, f"this host's clock agrees with the filesystem's ({skew:.2f}s apart)")


def _host_name(layout, token):
    host, machine = names.hostname(), registry.machine_identity()
    other = registry.same_name_elsewhere(layout, host, machine)
    if other is not None:
        return Check("host name", False, f"workers of another machine (machine {other['machine']}, pid {other['pid']}) "
                     f"run under this host's name {host}: worker ids and requests would collide",
                     "give every host its own host name (hostnamectl set-hostname; a container its own --hostname)")
    return Check("host name", True, f"no other machine runs workers under this host's name ({host})")


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass
