"""Wakes an idle worker when something changes in the spool (watchdog lives only here).

A wake-up is only a hint: the worker always re-reads the folders, and rescans them every
few seconds anyway, because inotify never sees what another host does on a network
filesystem.

Mechanism: inotify through watchdog's binding (watchdog.observers.inotify_c), read in the
worker's own thread. Two inotify instances: `control` watches workers/ (stop and cancel
requests, which matter while a job runs) and `queue` watches incoming/, pending/ and
failed/ (which matter only between jobs: their events wait in the kernel meanwhile, and an
overflow means "rescan"). Reading them in the worker's loop instead of in watchdog's
observer threads saves the thread hand-offs, about 150 futex calls per job (bench/).
If inotify cannot start (not Linux, no instances or watches left) or QUEUECTL_WAKER=poll,
watchdog's polling observer runs in its threads and writes to `pipe_r`.
QUEUECTL_WAKER=none relies on the periodic rescan alone.
"""
import os
import select
import struct
import threading

CONTROL = "workers"
RESCAN = "rescan"  # a pseudo-folder: events were lost, look at everything
LOST = "lost"      # the same, only from an overflow (the worker's rescan also marks RESCAN)
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len
_READ_SIZE = 65536
_MAX_EVENT = _HEADER.size + 256  # the header and a name of at most NAME_MAX bytes, NUL-terminated


class Waker:
    """Collects which watched folders changed, and the names added to or removed from them."""

    def __init__(self, folders, track_names=("pending", "failed")):
        """`folders`: paths, each named by its last part, or (path, name) pairs."""
        self.folders = {}
        for folder in folders:
            path, name = folder if isinstance(folder, tuple) else (folder, os.path.basename(os.path.normpath(folder)))
            self.folders[os.path.realpath(path)] = name
        self.track_names = frozenset(track_names)  # only these folders' names are kept (memory)
        self._dirty = set()
        self._added = {}    # folder name -> names created or moved in since take_names()
        self._removed = {}  # folder name -> names deleted or moved out
        self._lock = threading.Lock()  # the polling fallback calls note() from its threads
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.observer = None
        self.mechanism = "none"
        self._inotify = {}  # "control" / "queue" -> fd
        self._watches = {}  # (fd, wd) -> folder name
        self._poller = select.poll()
        self._poller.register(self.pipe_r, select.POLLIN)
        self._closed = False

    # ---------------------------------------------------------------- start / stop

    def start(self):
        choice = os.environ.get("QUEUECTL_WAKER", "auto")
        if choice == "none":
            return self
        if choice in ("auto", "native", "inotify"):
            try:
                self._start_inotify()
                self.mechanism = "inotify"
                return self
            except (OSError, ImportError, AttributeError):
                self._close_inotify()
        self._start_polling()
        return self

    def _start_inotify(self):
        from watchdog.observers import inotify_c as ic
        c = ic.InotifyConstants
        masks = {
            "incoming": c.IN_CREATE | c.IN_MOVED_TO | c.IN_CLOSE_WRITE,
            "pending": c.IN_CREATE | c.IN_MOVED_TO | c.IN_MOVED_FROM | c.IN_DELETE,
            "failed": c.IN_CREATE | c.IN_MOVED_TO | c.IN_MOVED_FROM | c.IN_DELETE,
            CONTROL: c.IN_CREATE | c.IN_MOVED_TO,  # requests are renamed in; the job note is not
            # settings are renamed in or removed; a worker that lets a slot go touches them (admission.py)
            "queues": c.IN_MOVED_TO | c.IN_DELETE | c.IN_ATTRIB,
            # the spool's own folder: `pause` renames `paused` in, `resume` unlinks it, and
            # `config set` renames config.json in
            "spool": c.IN_CREATE | c.IN_MOVED_TO | c.IN_DELETE,
        }
        for path, name in self.folders.items():
            group = "control" if name == CONTROL else "queue"
            fd = self._inotify.get(group)
            if fd is None:
                fd = ic.inotify_init()
                if fd < 0:
                    _raise_errno()
                os.set_blocking(fd, False)
                os.set_inheritable(fd, False)
                self._inotify[group] = fd
                self._poller.register(fd, select.POLLIN)
            wd = ic.inotify_add_watch(fd, os.fsencode(path),
                                      masks.get(name, c.IN_CREATE | c.IN_MOVED_TO) | c.IN_ONLYDIR | c.IN_DONT_FOLLOW)
            if wd < 0:
                _raise_errno()
            self._watches[(fd, wd)] = name
        self._overflow = c.IN_Q_OVERFLOW
        self._gone = c.IN_MOVED_FROM | c.IN_DELETE
        self._in = c.IN_CREATE | c.IN_MOVED_TO

    def _start_polling(self):
        import logging
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers.polling import PollingObserver

        logging.getLogger("watchdog").setLevel(logging.CRITICAL)  # its own stop mid-read is not an error
        waker = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                kind = event.event_type
                if kind in ("opened", "closed_no_write") or event.is_directory and kind == "modified":
                    return
                src = os.fsdecode(event.src_path)
                if kind == "moved":
                    waker.note(src, removed=True)
                    waker.note(os.fsdecode(event.dest_path), added=True)
                else:
                    waker.note(src, added=kind == "created", removed=kind == "deleted")

        observer = PollingObserver(timeout=1.0)
        try:
            for folder in self.folders:
                observer.schedule(Handler(), folder, recursive=False)
            observer.daemon = True
            observer.start()
        except (OSError, RuntimeError):
            # emitters of the folders scheduled before the failure are running: stop them too
            observer.unschedule_all()
            observer.stop()
            return
        self.observer, self.mechanism = observer, "poll"

    def stop(self):
        """Stop watching. The polling observer's threads notice within their 1 s poll; a
        worker stops only to exit, so we do not wait for them (they are daemon threads)."""
        self._closed = True
        self._close_inotify()
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=0.05)
            if self.observer.is_alive():
                return  # keep the pipe open: a late poke must not hit a reused fd number
        for fd in (self.pipe_r, self.pipe_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _close_inotify(self):
        for fd in self._inotify.values():
            try:
                self._poller.unregister(fd)
            except KeyError:
                pass
            os.close(fd)
        self._inotify = {}
        self._watches = {}

    # ---------------------------------------------------------------- the worker's side

    @property
    def control_fds(self):
        """What a running job's wait should watch: the wake-up pipe and workers/ events."""
        fds = [self.pipe_r]
        if "control" in self._inotify:
            fds.append(self._inotify["control"])
        return fds

    def wait(self, timeout):
        """Sleep until an event, a poke, or `timeout` seconds. True if woken."""
        if self._dirty:
            return True
        return bool(self._poller.poll(max(0.0, timeout) * 1000))

    def take(self):
        """The names of the folders that changed since the last call."""
        self._read_all()
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        return dirty

    def take_names(self, folder):
        """(added, removed) entry names of `folder` seen since the last call: a hint only."""
        self._read_all()
        with self._lock:
            return self._added.pop(folder, []), self._removed.pop(folder, [])

    def note(self, path, added=False, removed=False):
        """Record a change seen by the polling fallback (from its thread)."""
        folder, entry = os.path.split(path)
        name = self.folders.get(folder)
        if name is None:
            return
        with self._lock:
            self._dirty.add(name)
            if name not in self.track_names:
                pass
            elif added:
                self._added.setdefault(name, []).append(entry)
            elif removed:
                self._removed.setdefault(name, []).append(entry)
        self.poke()

    def poke(self):
        """Wake the worker (signal handlers, the polling fallback, tests)."""
        if self._closed:
            return
        try:
            os.write(self.pipe_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _read_all(self):
        if self._closed:
            return
        # one poll says which descriptors have something: a worker takes the news twice per
        # job, and a read of each until EAGAIN cost it five system calls each time
        ready = {fd for fd, _ in self._poller.poll(0)}
        if self.pipe_r in ready:
            try:
                while os.read(self.pipe_r, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        for fd in self._inotify.values():
            if fd not in ready:
                continue
            while True:
                try:
                    data = os.read(fd, _READ_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                if not data:
                    break
                self._parse(fd, data)
                if len(data) <= _READ_SIZE - _MAX_EVENT:
                    break  # the queue was emptied: a fuller read would have held one more event

    def _parse(self, fd, data):
        i, end = 0, len(data)
        watches, dirty = self._watches, self._dirty
        while i + 16 <= end:
            wd, mask, _cookie, length = _HEADER.unpack_from(data, i)
            entry = data[i + 16:i + 16 + length].rstrip(b"\0")
            i += 16 + length
            if mask & self._overflow:
                dirty.update(watches.values())
                dirty.update((RESCAN, LOST))
                continue
            name = watches.get((fd, wd))
            if name is None:
                continue
            dirty.add(name)
            if not entry or name not in self.track_names:
                continue
            if mask & self._in:
                self._added.setdefault(name, []).append(os.fsdecode(entry))
            elif mask & self._gone:
                self._removed.setdefault(name, []).append(os.fsdecode(entry))


def _raise_errno():
    """The error of the libc call just made through watchdog's binding (which sets errno)."""
    import ctypes
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err))
