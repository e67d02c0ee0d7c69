"""Which filesystem a spool is on, from mountinfo lines (as the kernel writes them)."""
import pytest

from queuectl import fsinfo

MOUNTINFO = """\
22 1 252:0 / / rw,relatime - ext4 /dev/vda rw
48 27 0:39 / /mnt/gluster rw,relatime - fuse.glusterfs 10.77.0.1:vol rw,user_id=0
49 27 0:40 / /mnt/moose rw,relatime - fuse mfs\\04310.77.0.1:9421 rw,allow_other
50 27 0:41 / /mnt/with\\040space rw - nfs4 server:/export rw
51 27 0:42 / /home/u/.local/share/containers rw - fuse.fuse-overlayfs fuse-overlayfs rw
"""


@pytest.mark.parametrize("path, kind, shared", [
    ("/work/spool", "ext4", False),
    ("/mnt/gluster/spool", "fuse.glusterfs", True),
    ("/mnt/moose/spool", "fuse", True),              # MooseFS: plain fuse, known by its source
    ("/mnt/with space/spool", "nfs4", True),         # \\040 in a mount point is a space
    ("/home/u/.local/share/containers/x", "fuse.fuse-overlayfs", False),
    ("/mnt/glusterfoo", "ext4", False),              # a prefix of a mount point is not inside it
])
def test_the_longest_mount_point_holding_the_path_decides(path, kind, shared):
    assert fsinfo.mount_of(path, MOUNTINFO)[0] == kind
    assert fsinfo.is_network(path, MOUNTINFO) is shared


def test_moosefs_source_is_unescaped():
    assert fsinfo.mount_of("/mnt/moose", MOUNTINFO)[2] == "mfs#10.77.0.1:9421"
