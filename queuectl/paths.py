"""Where the spool is and what is in it; creation (0700) and the safety check of docs/contract.md "Safety"."""
import errno
import os
import stat
import time

from .errors import SpoolError, UnsafeSpool, InvalidInput

STATE_DIRS = ("blocked", "pending", "processing", "failed", "completed", "dead")
ALL_DIRS = ("incoming",) + STATE_DIRS + ("logs", "rejected", "tmp", "ids", "workers", "schedules", "journal") \
    + ("queues", "slots")  # queues' settings, and the lock files of their limits (slots.py)


def default_spool():
    env = os.environ.get("QUEUECTL_SPOOL")
    if env:
        return env
    return os.path.join(os.path.expanduser("~"), ".queuectl", "spool")


class Layout:
    """Absolute paths of a spool's folders and files."""

    def __init__(self, root):
        if not root or "\x00" in str(root):
            raise InvalidInput("spool: not a usable path")
        self.root = os.path.abspath(os.path.expanduser(str(root)))
        for name in ALL_DIRS:
            setattr(self, name, os.path.join(self.root, name))
        self.config = os.path.join(self.root, "config.json")
        self.paused = os.path.join(self.root, "paused")  # present while the spool is paused
        self.config_lock = os.path.join(self.root, ".config.lock")
        self.ids_lock = os.path.join(self.root, ".ids.lock")

    def state_dir(self, state):
        return os.path.join(self.root, str(state))

    def log(self, job_id):
        return os.path.join(self.logs, job_id + ".log")

    def exists(self):
        return os.path.isdir(self.pending)

    def create(self):
        """Create every folder, 0700; an existing spool is left as it is."""
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            for name in ALL_DIRS:
                _mkdir_raced(os.path.join(self.root, name))
        except OSError as exc:
            raise SpoolError(f"cannot create the spool {self.root}: {exc.strerror}") from None

    def check_safe(self):
        """Refuse a spool writable by group/others or owned by someone else (workers run it)."""
        for path in (self.root,) + tuple(os.path.join(self.root, n) for n in ALL_DIRS):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode) and path != self.root:
                raise UnsafeSpool(f"unsafe spool: {path} is a symlink")
            if path == self.root:
                st = os.stat(path)
            if st.st_uid != os.geteuid():
                raise UnsafeSpool(f"unsafe spool: {path} is owned by uid {st.st_uid}, not by you "
                                  f"(uid {os.geteuid()})")
            if st.st_mode & 0o022:
                raise UnsafeSpool(f"unsafe spool: {path} is writable by group or others "
                                  f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod go-w {path}")


def _mkdir_raced(path, tries=5):
    """mkdir 0700 of a folder that another host may be making at the same instant: on
    GlusterFS the loser of that race may get ESTALE instead of EEXIST, and the folder is
    there then, or a moment later. Waits 0.5 s at most."""
    for attempt in range(tries):
        try:
            os.mkdir(path, 0o700)
            return
        except FileExistsError:
            return
        except OSError as exc:
            if exc.errno != errno.ESTALE or attempt == tries - 1:
                raise
            if os.path.isdir(path):
                return
            time.sleep(0.05 * (attempt + 1))
