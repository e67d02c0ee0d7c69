"""A multi-host test bed on one machine: a GlusterFS, MooseFS or CephFS volume served in a
network namespace, and several "hosts", each a FUSE client of that volume in a network
namespace of its own. A host's processes run under their own host name (a UTS namespace).

    python3 testbed/bed.py up --fs glusterfs --hosts 3     # or moosefs, cephfs; prints the mounts
    python3 testbed/bed.py down                            # stops all it started, by PID
    python3 testbed/bed.py status

Layout (addresses exist only inside the namespaces made here; nothing is routed):

    namespace qb-sw    a bridge
    namespace qb-srv   10.77.0.1   the file servers (glusterd and bricks, mfsmaster and a chunkserver,
                                   or a one-node Ceph cluster: ceph-mon, ceph-osd in memory, ceph-mds)
    namespace qb-hN    10.77.0.1N  host N's FUSE client; its mount is visible machine-wide at
                                   BED/mnt/hostN (nsenter --net keeps the mount namespace shared)

Cutting host N off the network (a partition) is `cut(N)`; `heal(N)` undoes it. Needs root,
/dev/fuse, iproute2, and the filesystem's Debian packages (installed on first use).
"""
import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

PREFIX = os.environ.get("QUEUECTL_BED_PREFIX", "qb")
BED_DIR = os.environ.get("QUEUECTL_BED_DIR", "/tmp/queuectl-bed")
SUBNET = "10.77.0"
SERVER_IP = f"{SUBNET}.1"
PACKAGES = {
    "glusterfs": (["glusterd", "glusterfs", "gluster"], ["glusterfs-server", "glusterfs-client"]),
    "moosefs": (["mfsmaster", "mfschunkserver", "mfsmount"],
                ["moosefs-master", "moosefs-chunkserver", "moosefs-client"]),
    "cephfs": (["ceph-mon", "ceph-osd", "ceph-mds", "ceph-fuse", "ceph", "monmaptool"],
               ["ceph-mon", "ceph-osd", "ceph-mds", "ceph-fuse", "ceph-common"]),
}
FILESYSTEMS = tuple(PACKAGES)


class BedError(RuntimeError):
    pass


def _run(*argv, check=True, timeout=60, **kw):
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise BedError(f"{' '.join(argv)}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:400]}")
    return proc


def ns(name):
    return f"{PREFIX}-{name}"


def in_net(name, *argv):
    """argv run inside network namespace `name`, mount namespace shared (unlike `ip netns exec`)."""
    return ["nsenter", f"--net=/run/netns/{ns(name)}", *argv]


def unavailable():
    """Why the bed cannot run here, or None."""
    if os.geteuid() != 0:
        return "the multi-host test bed needs root (network namespaces, FUSE mounts)"
    if not os.path.exists("/dev/fuse"):
        return "the multi-host test bed needs /dev/fuse"
    if not shutil.which("ip") or not shutil.which("nsenter") or not shutil.which("unshare"):
        return "the multi-host test bed needs iproute2 and util-linux (ip, nsenter, unshare)"
    return None


def ensure_packages(fs):
    binaries, packages = PACKAGES[fs]
    if all(shutil.which(b) for b in binaries):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run("apt-get", "update", "-qq", timeout=600, env=env)
    _run("apt-get", "install", "-y", "-qq", *packages, timeout=900, env=env)
    missing = [b for b in binaries if not shutil.which(b)]
    if missing:
        raise BedError(f"installed {packages}, but {missing} are still missing")


# ---------------------------------------------------------------- network

def _network_up(hosts):
    _run("ip", "netns", "add", ns("sw"))
    _run("ip", "-n", ns("sw"), "link", "add", "br0", "type", "bridge")
    _run("ip", "-n", ns("sw"), "link", "set", "br0", "up")
    for name, ip in [("srv", SERVER_IP)] + [(f"h{i}", f"{SUBNET}.{10 + i}") for i in range(1, hosts + 1)]:
        _run("ip", "netns", "add", ns(name))
        veth = f"v{PREFIX}-{name}"
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "e0", "netns", ns(name))
        _run("ip", "link", "set", veth, "netns", ns("sw"))
        _run("ip", "-n", ns("sw"), "link", "set", veth, "master", "br0")
        _run("ip", "-n", ns("sw"), "link", "set", veth, "up")
        _run("ip", "-n", ns(name), "addr", "add", f"{ip}/24", "dev", "e0")
        _run("ip", "-n", ns(name), "link", "set", "e0", "up")
        _run("ip", "-n", ns(name), "link", "set", "lo", "up")


def cut(host_index):
    """Cut host N off the network: its link to the switch goes down."""
    _run("ip", "-n", ns("sw"), "link", "set", f"v{PREFIX}-h{host_index}", "down")


def heal(host_index):
    _run("ip", "-n", ns("sw"), "link", "set", f"v{PREFIX}-h{host_index}", "up")


# ---------------------------------------------------------------- servers

def _daemon_pid(pidfile, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(pidfile) as fh:
                return int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            time.sleep(0.1)
    raise BedError(f"no pid in {pidfile} after {timeout:g}s")


def _gluster_up(state, bed):
    bricks = os.path.join(bed, "bricks")
    os.makedirs(bricks, exist_ok=True)
    pidfile = os.path.join(bed, "glusterd.pid")
    # glusterd keeps its state in /var/lib/glusterd: one volume of ours at a time, removed at down
    _run(*in_net("srv", "glusterd", "-p", pidfile))
    state["pids"].append(_daemon_pid(pidfile))
    _save(state, bed)
    deadline = time.monotonic() + 20
    while True:  # glusterd needs a moment before it answers
        probe = _run(*in_net("srv", "gluster", "--mode=script", "volume", "info"), check=False)
        if probe.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    volume = state["volume"]
    _run(*in_net("srv", "gluster", "--mode=script", "volume", "create", volume, "transport", "tcp",
                 f"{SERVER_IP}:{bricks}/b1", f"{SERVER_IP}:{bricks}/b2", "force"))
    for option, value in state.get("options", {}).items():
        _run(*in_net("srv", "gluster", "--mode=script", "volume", "set", volume, option, value))
    _run(*in_net("srv", "gluster", "--mode=script", "volume", "start", volume))
    state["brick_pids"] = pids_matching(f"{bricks}/b")
    state["pids"] += state["brick_pids"]


def _gluster_mount(state, host):
    log = os.path.join(state["dir"], f"{host['name']}-client.log")
    pidfile = os.path.join(state["dir"], f"{host['name']}-client.pid")
    _run(*in_net(host["netns_short"], "glusterfs", f"--volfile-server={SERVER_IP}",
                 f"--volfile-id={state['volume']}", f"--log-file={log}", f"--pid-file={pidfile}", host["mount"]))
    host["fuse_pid"] = _daemon_pid(pidfile)


def _moosefs_up(state, bed):
    conf = os.path.join(bed, "mfs")
    data = os.path.join(bed, "mfs-master")
    chunks = os.path.join(bed, "mfs-chunks")
    cs_data = os.path.join(bed, "mfs-cs")
    for path in (conf, data, chunks, cs_data):
        os.makedirs(path, exist_ok=True)
    shutil.copy("/var/lib/mfs/metadata.mfs.empty", os.path.join(data, "metadata.mfs"))
    sustain = state.get("options", {}).get("SESSION_SUSTAIN_TIME", "86400")
    _write(os.path.join(conf, "mfsexports.cfg"), "*\t/\trw,alldirs,admin,maproot=0:0\n")
    _write(os.path.join(conf, "mfsmaster.cfg"),
           f"WORKING_USER = root\nWORKING_GROUP = root\nDATA_PATH = {data}\n"
           f"EXPORTS_FILENAME = {conf}/mfsexports.cfg\nTOPOLOGY_FILENAME = {conf}/mfstopology.cfg\n"
           f"SESSION_SUSTAIN_TIME = {sustain}\n")
    _write(os.path.join(conf, "mfstopology.cfg"), "")
    _write(os.path.join(conf, "mfshdd.cfg"), f"{chunks}\n")
    _write(os.path.join(conf, "mfschunkserver.cfg"),
           f"WORKING_USER = root\nWORKING_GROUP = root\nDATA_PATH = {cs_data}\nHDD_CONF_FILENAME = {conf}/mfshdd.cfg\n"
           f"MASTER_HOST = {SERVER_IP}\nHDD_LEAVE_SPACE_DEFAULT = 64MiB\n")
    _run(*in_net("srv", "mfsmaster", "-c", f"{conf}/mfsmaster.cfg", "start"))
    state["pids"].append(_pid_of_cmd("mfsmaster", f"{conf}/mfsmaster.cfg"))
    _run(*in_net("srv", "mfschunkserver", "-c", f"{conf}/mfschunkserver.cfg", "start"))
    state["pids"].append(_pid_of_cmd("mfschunkserver", f"{conf}/mfschunkserver.cfg"))


def _moosefs_mount(state, host):
    _run(*in_net(host["netns_short"], "mfsmount", host["mount"], "-H", SERVER_IP, "-o", "mfsioretries=5"))
    host["fuse_pid"] = _pid_of_cmd("mfsmount", host["mount"])


def _ceph_conf(state):
    return os.path.join(state["dir"], "ceph", "ceph.conf")


def _ceph(state, *args, timeout=60):
    """The `ceph` CLI, from the server's namespace (the monitor is reachable only there)."""
    return _run(*in_net("srv", "ceph", "-c", _ceph_conf(state), "--connect-timeout", "20", *args),
                timeout=timeout).stdout


def _ceph_up(state, bed):
    top = os.path.join(bed, "ceph")
    for sub in ("run", "log", "mon-a", "osd-0", "mds-a"):
        os.makedirs(os.path.join(top, sub), exist_ok=True)
    conf = state["ceph_conf"] = _ceph_conf(state)  # for `ceph -c CONF ...` by hand
    fsid = str(uuid.uuid4())
    # auth none, pools of one copy, an OSD in memory (no disk): a cluster for tests only.
    # Every path is in the bed's folder, so /etc/ceph and /var/lib/ceph stay untouched.
    _write(conf, f"""[global]
fsid = {fsid}
mon_host = [v2:{SERVER_IP}:3300,v1:{SERVER_IP}:6789]
public_network = {SUBNET}.0/24
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
osd_objectstore = memstore
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_size_one = true
run_dir = {top}/run
admin_socket = {top}/run/$name.asok
pid_file = {top}/run/$name.pid
log_file = {top}/log/$name.log
[mon]
mon_data = {top}/mon-a
[osd]
osd_data = {top}/osd-0
[mds]
mds_data = {top}/mds-a
# a host cut off past session_autoclose is evicted; by default also blocklisted, and its
# ceph-fuse then stays dead until remounted: here it reconnects after the heal instead
mds_session_blocklist_on_timeout = false
[client]
client_reconnect_stale = true
# one ceph-fuse per host, all named client.admin: sockets and pid files by pid, or the
# second one refuses to start
admin_socket = {top}/run/$name.$pid.asok
pid_file = {top}/run/$name.$pid.pid
log_file = {top}/log/$name.$pid.log
""")
    monmap = os.path.join(top, "monmap")
    _run("monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:{SERVER_IP}:3300,v1:{SERVER_IP}:6789]",
         monmap)
    # --mkfs in the namespace too: public_network must match one of its addresses
    _run(*in_net("srv", "ceph-mon", "-c", conf, "--mkfs", "-i", "a", "--monmap", monmap))
    _run(*in_net("srv", "ceph-mon", "-c", conf, "-i", "a"))
    state["pids"].append(_daemon_pid(os.path.join(top, "run", "mon.a.pid")))
    _save(state, bed)
    osd_uuid = str(uuid.uuid4())
    osd_id = _ceph(state, "osd", "new", osd_uuid).strip()
    _run(*in_net("srv", "ceph-osd", "-c", conf, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid))
    _run(*in_net("srv", "ceph-osd", "-c", conf, "-i", osd_id))
    state["pids"].append(_daemon_pid(os.path.join(top, "run", f"osd.{osd_id}.pid")))
    _save(state, bed)
    volume = state["volume"]
    for pool in ("meta", "data"):
        _ceph(state, "osd", "pool", "create", f"{volume}_{pool}", "8")
        _ceph(state, "osd", "pool", "set", f"{volume}_{pool}", "size", "1", "--yes-i-really-mean-it")
    _ceph(state, "fs", "new", volume, f"{volume}_meta", f"{volume}_data")
    for option, value in state.get("options", {}).items():  # session_timeout, session_autoclose, ...
        _ceph(state, "fs", "set", volume, option, value)
    _run(*in_net("srv", "ceph-mds", "-c", conf, "-i", "a"))
    state["pids"].append(_daemon_pid(os.path.join(top, "run", "mds.a.pid")))
    _save(state, bed)
    deadline = time.monotonic() + 60
    while "up:active" not in _ceph(state, "mds", "stat"):  # `fs status` would need a mgr
        if time.monotonic() > deadline:
            raise BedError(f"ceph-mds not active after 60s: {_ceph(state, 'mds', 'stat').strip()}")
        time.sleep(0.5)


def _ceph_mount(state, host):
    _run(*in_net(host["netns_short"], "ceph-fuse", "-c", _ceph_conf(state), "-m", f"{SERVER_IP}:6789",
                 host["mount"]))
    host["fuse_pid"] = _pid_of_cmd("ceph-fuse", host["mount"])


def _pid_of_cmd(program, needle, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = pids_matching(needle, program)
        if pids:
            return pids[0]
        time.sleep(0.1)
    raise BedError(f"{program} with {needle} did not start")


def pids_matching(needle, program=None):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                args = [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
        except OSError:
            continue
        # mfsmount rewrites its title: "mfsmount (mounted on: PATH)"
        if args and (program is None or os.path.basename(args[0].split()[0]) == program) and any(needle in a for a in args):
            out.append(int(entry))
    return sorted(out)


def _write(path, text):
    with open(path, "w") as fh:
        fh.write(text)


# ---------------------------------------------------------------- up / down

def _save(state, bed):
    _write(os.path.join(bed, "state.json"), json.dumps(state, indent=1))


def load(bed=BED_DIR):
    try:
        with open(os.path.join(bed, "state.json")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def up(fs="glusterfs", hosts=3, bed=BED_DIR, options=None):
    """Start the bed; returns its state: {"fs", "hosts": [{"name", "mount", "fuse_pid", ...}], ...}."""
    reason = unavailable()
    if reason:
        raise BedError(reason)
    if fs not in FILESYSTEMS:
        raise BedError(f"--fs: one of {', '.join(FILESYSTEMS)}")
    ensure_packages(fs)
    down(bed)
    os.makedirs(bed, exist_ok=True)
    state = {"fs": fs, "dir": bed, "prefix": PREFIX, "volume": f"{PREFIX}vol", "pids": [], "hosts": [],
             "options": dict(options or {})}
    _save(state, bed)
    try:
        _network_up(hosts)
        {"glusterfs": _gluster_up, "moosefs": _moosefs_up, "cephfs": _ceph_up}[fs](state, bed)
        for i in range(1, hosts + 1):
            host = {"index": i, "name": f"host{i}", "netns_short": f"h{i}", "ip": f"{SUBNET}.{10 + i}",
                    "mount": os.path.join(bed, "mnt", f"host{i}")}
            os.makedirs(host["mount"], exist_ok=True)
            mount(state, host)
            state["hosts"].append(host)
            _save(state, bed)
        _wait_mounted(state)
    except BaseException:
        _save(state, bed)
        down(bed)
        raise
    _save(state, bed)
    return state


def mount(state, host):
    """Mount the volume for one host (again, after its client was killed) and record it."""
    {"glusterfs": _gluster_mount, "moosefs": _moosefs_mount, "cephfs": _ceph_mount}[state["fs"]](state, host)
    _save(state, state["dir"])


def answers(host, timeout=60.0):
    """Whether host's mount answers a stat within `timeout` s. The stat runs in a child, which
    is left behind if it hangs: a call blocked in a FUSE request its daemon took survives
    SIGKILL until the daemon answers or dies (remount() kills the daemon)."""
    probe = subprocess.Popen(["stat", "-c", "%i", host["mount"]], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        return probe.wait(timeout) == 0
    except subprocess.TimeoutExpired:
        probe.kill()
        return False


def remount(state, host):
    """A host's FUSE client replaced: the mount detached, its daemon killed (which fails every
    call still waiting on it), the volume mounted again."""
    _run("umount", "-l", host["mount"], check=False)
    if host.get("fuse_pid"):
        _kill(host["fuse_pid"])
    mount(state, host)


def _wait_mounted(state, timeout=30.0):
    probe = os.path.join(state["hosts"][0]["mount"], ".bed-probe")
    deadline = time.monotonic() + timeout
    while True:
        try:
            _write(probe, "x")
            if all(os.path.exists(os.path.join(h["mount"], ".bed-probe")) for h in state["hosts"]):
                os.unlink(probe)
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BedError(f"the volume did not become usable on every host within {timeout:g}s")
        time.sleep(0.2)


def down(bed=BED_DIR):
    """Stop what `up` started (by PID), unmount, remove the namespaces. Safe to run twice."""
    state = load(bed) or {"hosts": [], "pids": [], "fs": None}
    for host in state.get("hosts", []):
        _run("umount", "-l", host["mount"], check=False)
        if host.get("fuse_pid"):
            _kill(host["fuse_pid"])
    for pid in reversed(state.get("pids", [])):
        _kill(pid)
    # and any other process started with the bed's own files (seen once: a ceph-mds left
    # running after its recorded pid was killed)
    for pid in pids_matching(bed):
        if pid != os.getpid():
            _kill(pid)
    if state.get("fs") == "glusterfs":
        volume_dir = os.path.join("/var/lib/glusterd/vols", state.get("volume", ""))
        if state.get("volume") and os.path.isdir(volume_dir):
            shutil.rmtree(volume_dir, ignore_errors=True)
    existing = _run("ip", "netns", "list", check=False).stdout
    for line in existing.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX + "-"):
            _run("ip", "netns", "del", name, check=False)
    if os.path.isdir(bed):
        for sub in ("mnt",):
            path = os.path.join(bed, sub)
            if os.path.isdir(path):
                for m in os.listdir(path):
                    _run("umount", "-l", os.path.join(path, m), check=False)
        shutil.rmtree(bed, ignore_errors=True)


def _kill(pid, timeout=10.0):
    """SIGTERM, then SIGKILL; a zombie counts as gone (PID 1 may reap late)."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, timeout)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _gone(pid):
                return
            time.sleep(0.05)


def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def host_command(host_name, argv, machine=None):
    """argv run as on host `host_name`: its own host name (a UTS namespace) and its own machine
    id (a mount namespace in which /etc/machine-id is the host's), as on a machine of its own.
    `machine` names the host whose machine id to use instead (a host that takes another's name)."""
    machine_id = _machine_id_file(machine or host_name)
    if machine_id is None:  # no /etc/machine-id to stand in for: the host name alone
        return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host_name, *argv]
    return ["unshare", "--uts", "--mount", "--propagation", "slave", "sh", "-c",
            'hostname "$0" && mount --bind "$1" /etc/machine-id && shift && exec "$@"',
            host_name, machine_id, *argv]


def _machine_id_file(host_name):
    """A machine id of the host's own (a file in the bed's folder), or None where this machine
    has no /etc/machine-id to bind it over."""
    if not os.path.isfile("/etc/machine-id"):
        return None
    folder = os.path.join(BED_DIR, "machine-ids")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, host_name)
    if not os.path.exists(path):
        with open(path, "w") as fh:
            fh.write(hashlib.md5(f"queuectl-bed {host_name}".encode()).hexdigest() + "\n")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p_up = sub.add_parser("up", help="start a volume and its hosts")
    p_up.add_argument("--fs", choices=FILESYSTEMS, default="glusterfs")
    p_up.add_argument("--hosts", type=int, default=3)
    p_up.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="a volume option (glusterfs), master setting (moosefs) or `ceph fs set` "
                           "setting (cephfs)")
    sub.add_parser("down", help="stop everything the bed started")
    sub.add_parser("status", help="print the bed's state")
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            options = dict(o.split("=", 1) for o in args.option)
            state = up(args.fs, args.hosts, options=options)
            for host in state["hosts"]:
                print(f"{host['name']}: {host['mount']}")
        elif args.action == "down":
            down()
        else:
            print(json.dumps(load(), indent=1))
    except (BedError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
