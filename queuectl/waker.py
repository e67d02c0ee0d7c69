"""Wakes an idle worker when something changes in the spool (watchdog lives only here).

A wake-up is only a hint: the worker always re-reads the folders, and rescans them every
few seconds anyway, because inotify never sees what another host does on a network
filesystem. Mechanism: watchdog's native observer (inotify on Linux); if it cannot start
(no inotify, watch limit reached) or QUEUECTL_WAKER=poll, watchdog's polling observer.
QUEUECTL_WAKER=none relies on the periodic rescan alone.
"""
import os
import threading


class Waker:
    """Collects which watched folders changed and sets `event` (and writes `pipe_w`)."""

    def __init__(self, folders):
        self.folders = {os.path.realpath(f): os.path.basename(f) for f in folders}
        self.event = threading.Event()
        self._dirty = set()
        self._added = {}    # folder name -> names created or moved in since take_names()
        self._removed = {}  # folder name -> names deleted or moved out
        self._lock = threading.Lock()
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.observer = None
        self.mechanism = "none"
        self._closed = False

    def start(self):
        choice = os.environ.get("QUEUECTL_WAKER", "auto")
        if choice == "none":
            return self
        import logging
        from watchdog.events import FileSystemEventHandler

        # watchdog logs an error when its thread is stopped mid-read; that is our own stop
        logging.getLogger("watchdog").setLevel(logging.CRITICAL)

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

        for kind in (["native", "poll"] if choice == "auto" else [choice]):
            try:
                observer = self._observer(kind)
                for folder in self.folders:
                    observer.schedule(Handler(), folder, recursive=False)
                observer.daemon = True
                observer.start()
            except (OSError, RuntimeError):
                continue
            self.observer, self.mechanism = observer, kind
            break
        return self

    @staticmethod
    def _observer(kind):
        _no_move_pairing()
        if kind == "poll":
            from watchdog.observers.polling import PollingObserver
            return PollingObserver(timeout=1.0)
        from watchdog.observers import Observer
        return Observer()

    def note(self, path, added=False, removed=False):
        folder, entry = os.path.split(path)
        name = self.folders.get(folder)
        if name is None:
            return
        with self._lock:
            self._dirty.add(name)
            if added:
                self._added.setdefault(name, []).append(entry)
            if removed:
                self._removed.setdefault(name, []).append(entry)
        self.poke()

    def take_names(self, folder):
        """(added, removed) entry names of `folder` seen since the last call: a hint only."""
        with self._lock:
            return self._added.pop(folder, []), self._removed.pop(folder, [])

    def poke(self):
        self.event.set()
        if self._closed:
            return
        try:
            os.write(self.pipe_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def take(self):
        """The names of the folders that changed since the last call."""
        with self._lock:
            self.event.clear()  # before the swap: a note() after it sets the event again
            dirty, self._dirty = self._dirty, set()
        return dirty

    def wait(self, timeout):
        return self.event.wait(timeout)

    def stop(self):
        """Stop watching. watchdog's threads notice within their 1 s poll; a worker stops only
        to exit, so we do not wait for them (they are daemon threads)."""
        self._closed = True
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


def _no_move_pairing():
    """Turn off watchdog's pairing of IN_MOVED_FROM with IN_MOVED_TO.

    It holds every unpaired IN_MOVED_FROM for 0.5 s, and events queued behind it wait too:
    each claim (a move out of pending/ into unwatched processing/) would delay the next
    wake-up by up to half a second. We only need "this folder changed", never the pair.
    """
    try:
        from watchdog.observers import inotify_move_event_grouper as grouper
        grouper.InotifyMoveEventGrouper.delay = 0.0
    except ImportError:  # watchdog < 6 kept the delay on InotifyBuffer
        try:
            from watchdog.observers import inotify_buffer
            inotify_buffer.InotifyBuffer.delay = 0.0
        except ImportError:
            pass
