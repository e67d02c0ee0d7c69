"""Spare inodes for a worker's moves: a displaced record file is kept and rewritten instead
of freed, and the next staged record is written into it instead of a new file.

Why: every move writes a new record in tmp/ and renames it over the old one (docs/protocol.md, rule
3), so a job would create two files and free two. On ext4 without a journal (the kind of
disk these machines have) a new file skips over every inode freed in the last minutes, so
a drain that frees inodes makes each later create slower: 0.02 ms at first, 0.5-1.4 ms a
few thousand jobs on (bench/). Recycled, a job creates no record file at all.

A spare is a hard link in tmp/ named `free-WORKER-N` (WORKER = HOST_PID of the registered
worker), linked between the two renames of a move while the mover holds the job's lock, and
kept open. It is reused by writing the new record over it and only then renaming it to the
staged `mv-*` name, so a crash never leaves old content under a staged name. A reader that
opened the old name just before may read the new content: readers check the id. Spares of a
worker that is gone are removed by fsck's recovery.

Only on a local filesystem: a hard link is not exclusive on a distributed volume, and
another host may read a reused inode's new content under the old name for a second.
"""
import os

from . import fsutil

PREFIX = "free-"
LIMIT = 8  # spares kept at most: a job displaces two inodes and takes two


class Pool:
    def __init__(self, tmp_dir, owner):
        self.tmp_dir = tmp_dir
        self.prefix = f"{PREFIX}{owner}-"
        self._free = []  # (spare path, open fd whose flock is ours)
        self._n = 0

    def keep(self, path, held):
        """Keep the inode now at `path`, about to be displaced by a rename over it; `held`
        is its moves.Held, whose open fd of that inode the pool takes over. Returns the entry,
        or None."""
        if len(self._free) >= LIMIT or held.fd is None:
            return None
        self._n += 1
        spare = os.path.join(self.tmp_dir, f"{self.prefix}{self._n}")
        try:
            os.link(path, spare)
        except OSError:
            return None
        entry = (spare, held.fd)
        held.fd = None
        self._free.append(entry)
        return entry

    def discard(self, entry):
        """The rename that was to displace the kept inode failed: it is still in use."""
        if entry in self._free:
            self._free.remove(entry)
        fsutil.unlink_quiet(entry[0])
        os.close(entry[1])

    def write_new(self, path, data):
        """Like fsutil.write_new (not synced): `path` created with `data`; its fd returned."""
        while self._free:
            spare, fd = self._free.pop()
            try:
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
                os.rename(spare, path)  # only now, complete, does it carry a staged name
                return fd
            except OSError:
                os.close(fd)
                fsutil.unlink_quiet(spare)
        return fsutil.write_new(path, data, sync=False)

    def close(self):
        """Free the spares (a worker's exit)."""
        for spare, fd in self._free:
            fsutil.unlink_quiet(spare)
            os.close(fd)
        self._free = []


def owner_of(name):
    """The worker name in a spare's file name, or None."""
    if not name.startswith(PREFIX):
        return None
    owner, _, n = name[len(PREFIX):].rpartition("-")
    return owner if owner and n.isdigit() else None
