"""What filesystem a spool lives on, from /proc/self/mountinfo (no statfs magic numbers:
FUSE filesystems all share one, and the subtype names GlusterFS or MooseFS)."""
import os

# Filesystems whose clients on several hosts share one namespace. On them hard links are not
# exclusive, another host's caches may be stale for a second, and inotify sees no other host.
NETWORK_TYPES = ("nfs", "nfs4", "ceph", "fuse.glusterfs", "fuse.mfs", "fuse.moosefs", "fuse.ceph-fuse",
                 "fuse.cephfs", "cifs", "smb3", "9p", "fuse.sshfs", "lustre", "gpfs", "beegfs")


def mount_of(path):
    """(filesystem type, mount point, source) of the mount holding `path`."""
    path = os.path.realpath(path)
    best = ("unknown", "/", "")
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
    except OSError:
        return best
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        point = fields[4].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[1]):
            best = (tail[0], point, tail[1])
    return best


def is_network(path):
    return mount_of(path)[0] in NETWORK_TYPES
