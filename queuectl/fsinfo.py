"""What filesystem a spool lives on, from /proc/self/mountinfo (no statfs magic numbers:
FUSE filesystems all share one, and the subtype names GlusterFS or MooseFS)."""
import os

# Filesystems whose clients on several hosts share one namespace. On them hard links are not
# exclusive, another host's caches may be stale for a second, and inotify sees no other host.
NETWORK_TYPES = ("nfs", "nfs4", "ceph", "fuse.glusterfs", "fuse.mfs", "fuse.moosefs", "fuse.ceph-fuse",
                 "fuse.cephfs", "cifs", "smb3", "9p", "fuse.sshfs", "lustre", "gpfs", "beegfs")


def mount_of(path, mountinfo=None):
    """(filesystem type, mount point, source) of the mount holding `path`; `mountinfo` is
    the text of /proc/self/mountinfo (read when not given)."""
    path = os.path.realpath(path)
    best = ("unknown", "/", "")
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
                mountinfo = fh.read()
        except OSError:
            return best
    lines = mountinfo.splitlines()
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        point = _unescape(fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[1]):
            best = (tail[0], point, _unescape(tail[1]))
    return best


# ...and those that show up as plain "fuse", known by their source (MooseFS: "mfs#HOST:PORT")
NETWORK_SOURCES = ("mfs#",)


def is_network(path, mountinfo=None):
    kind, _point, source = mount_of(path, mountinfo)
    return kind in NETWORK_TYPES or kind == "fuse" and source.startswith(NETWORK_SOURCES)


def _unescape(text):
    """mountinfo escapes space, tab, newline, backslash and '#' as \\ooo (octal)."""
    import re
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)
